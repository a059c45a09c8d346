"""Pretrain optimizer, LR schedule, compute accounting and experiment trackers (all delegated to the libraries)."""

from __future__ import annotations

import math

from hfpipe.errors import HfpipeError


def build_optimizer(config, model):
    """AdamW (decoupled decay on matrices only), Adafactor (transformers; factored second moments, less memory)
    or SGD with Nesterov momentum (torch)."""
    import torch

    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.learning_rate, betas=(config.adam_beta1, config.adam_beta2),
                                 eps=config.adam_eps)
    if config.optimizer == "adafactor":
        from transformers.optimization import Adafactor

        # fixed LR driven by our schedule (relative_step off), no parameter-scale rescaling
        return Adafactor(groups, lr=config.learning_rate, scale_parameter=False, relative_step=False, warmup_init=False)
    return torch.optim.SGD(groups, lr=config.learning_rate, momentum=config.sgd_momentum, nesterov=True)


def build_scheduler(config, optimizer):
    """LR multiplier per optimizer step: linear warmup from 0 (WSD: from min_lr_ratio, as transformers does), then
    cosine / linear decay to ``min_lr_ratio``, constant, or warmup-stable-decay with the last ``decay_fraction``."""
    from torch.optim.lr_scheduler import LambdaLR
    from transformers import get_scheduler, get_wsd_schedule

    warm, total, floor = config.warmup_steps, config.max_steps, config.min_lr_ratio
    if config.lr_schedule == "cosine":
        return get_scheduler("cosine_with_min_lr", optimizer, num_warmup_steps=warm, num_training_steps=total,
                             scheduler_specific_kwargs={"min_lr_rate": floor})
    if config.lr_schedule == "constant":
        return get_scheduler("constant_with_warmup", optimizer, num_warmup_steps=warm)
    if config.lr_schedule == "wsd":
        decay = max(1, round(config.decay_fraction * total))
        return get_wsd_schedule(optimizer, num_warmup_steps=warm, num_decay_steps=decay, num_training_steps=total,
                                decay_type=config.decay_type, min_lr_ratio=floor)
    return LambdaLR(optimizer, LinearToFloor(warm, total, floor))


class LinearToFloor:
    """Linear warmup 0 -> 1, then linear decay 1 -> floor at the last step (a class, so LambdaLR can checkpoint it)."""

    def __init__(self, warmup: int, total: int, floor: float):
        self.warmup, self.total, self.floor = warmup, total, floor

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return step / max(1, self.warmup)
        progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return 1.0 - (1.0 - self.floor) * progress


def flops_per_token(model, seq_len: int) -> int:
    """Training FLOPs per token, PaLM appendix B: 6 x (matmul parameters) + 12 x layers x width x context.

    Matmul parameters are every weight matrix except an untied input embedding (a lookup, not a matmul); a tied
    embedding is counted once, as the LM head it also is."""
    cfg = model.config
    emb = model.get_input_embeddings().weight
    matmul = sum(p.numel() for p in model.parameters() if p.ndim >= 2)
    if not getattr(cfg, "tie_word_embeddings", False):
        matmul -= emb.numel()
    return 6 * matmul + 12 * cfg.num_hidden_layers * cfg.hidden_size * seq_len


def finite(*values) -> bool:
    return all(math.isfinite(v) for v in values)
