"""Pretrain stage: a causal LM from scratch on the data stage's documents, with the tokenizer stage's tokenizer.

Documents are tokenized, joined with the document separator (BOS, ``<|endoftext|>``) in front of each, and packed
into fixed ``seq_len`` blocks; the last ``val_fraction`` of the (shuffled) token stream is held out. The model is
any transformers causal-LM architecture built from a config (``AutoConfig.for_model``), trained with a plain
PyTorch loop on `accelerate` (device placement, mixed precision, gradient accumulation, clipping), AdamW and a
transformers LR schedule. Writes ``out_dir/model/`` (model + tokenizer), ``curves.jsonl`` and ``curves.png``.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from hfpipe.errors import HfpipeError
from hfpipe.modeling import BOS_TOKEN, EOS_TOKEN, save_model
from hfpipe.stages import Inputs, StageConfig

READS = ("data", "tokenizer")


class ModelConfig(StageConfig):
    model_type: str = Field("llama", description="transformers architecture name (AutoConfig.for_model)")
    hidden_size: int = Field(128, ge=8, description="residual stream width")
    num_hidden_layers: int = Field(4, ge=1, description="transformer blocks")
    num_attention_heads: int = Field(4, ge=1, description="query heads; must divide hidden_size")
    num_key_value_heads: int = Field(2, ge=1, description="key/value heads (GQA); must divide num_attention_heads")
    intermediate_size: int = Field(512, ge=8, description="MLP width")
    tie_word_embeddings: bool = Field(True, description="share input embedding and LM head (saves params when small)")
    config_overrides: dict[str, Any] = Field({}, description="extra AutoConfig kwargs passed verbatim, e.g. rope_theta")

    @model_validator(mode="after")
    def _heads_divide(self):
        if self.hidden_size % self.num_attention_heads:
            raise ValueError("num_attention_heads must divide hidden_size")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("num_key_value_heads must divide num_attention_heads")
        return self


class Config(StageConfig):
    model: ModelConfig = Field(ModelConfig(), description="architecture of the model trained from scratch")
    seq_len: int = Field(128, ge=8, description="tokens per packed training block (also max_position_embeddings)")
    batch_size: int = Field(16, ge=1, description="blocks per micro-batch per device")
    gradient_accumulation_steps: int = Field(1, ge=1, description="micro-batches per optimizer step")
    max_steps: int = Field(300, ge=1, description="optimizer steps; the data is repeated (reshuffled) if it runs out")
    learning_rate: float = Field(3e-3, gt=0, description="peak AdamW LR (tiny models tolerate a high one)")
    lr_schedule: Literal["cosine", "linear", "constant"] = Field("cosine", description="decay after warmup")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="cosine floor as a fraction of the peak LR")
    warmup_steps: int = Field(30, ge=0, description="linear LR warmup from 0, in optimizer steps")
    weight_decay: float = Field(0.1, ge=0, description="AdamW decoupled decay on matrices (not norms/biases)")
    adam_beta1: float = Field(0.9, ge=0, lt=1, description="AdamW first-moment decay")
    adam_beta2: float = Field(0.95, ge=0, lt=1, description="AdamW second-moment decay (0.95: stabler for LMs)")
    adam_eps: float = Field(1e-8, gt=0, description="AdamW denominator epsilon")
    max_grad_norm: float = Field(1.0, gt=0, description="clip the global gradient L2 norm to this")
    mixed_precision: Literal["no", "bf16", "fp16"] = Field("no", description="accelerate autocast; 'no' = fp32")
    val_fraction: float = Field(0.05, gt=0, lt=0.5, description="tail of the shuffled token stream held out")
    eval_interval: int = Field(50, ge=1, description="optimizer steps between validation passes (+ one at the end)")
    eval_blocks: int = Field(160, ge=1, description="score at most this many held-out blocks per validation pass "
                                                     "(the same ones each time, whatever the batch size)")
    log_interval: int = Field(10, ge=1, description="optimizer steps between train-loss rows in curves.jsonl")

    @model_validator(mode="after")
    def _warmup_fits(self):
        if self.warmup_steps >= self.max_steps:
            raise ValueError("warmup_steps must be smaller than max_steps")
        return self


def run(config: Config, inputs: Inputs, out_dir: Path) -> dict:
    import numpy as np
    import torch
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig, get_scheduler, set_seed
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    from hfpipe.corpus import iter_texts

    set_seed(inputs.seed)
    AcceleratorState._reset_state()  # an earlier stage in this process may have fixed another mixed_precision (as Trainer does)
    accelerator = Accelerator(gradient_accumulation_steps=config.gradient_accumulation_steps,
                              mixed_precision=config.mixed_precision)
    tokenizer = AutoTokenizer.from_pretrained(inputs.upstream["tokenizer"] / "tokenizer")
    bos, eos = tokenizer.convert_tokens_to_ids(BOS_TOKEN), tokenizer.convert_tokens_to_ids(EOS_TOKEN)

    # ---------------------------------------------------------------- tokenize, join, split, pack
    texts = list(iter_texts(inputs.upstream["data"]))
    if not texts:
        raise HfpipeError(f"pretrain: no non-empty 'text' in {inputs.upstream['data'] / 'data'}", 1)
    ids = tokenizer(texts, add_special_tokens=False, return_attention_mask=False)["input_ids"]
    order = np.random.default_rng(inputs.seed).permutation(len(ids))  # shuffle docs so val matches train's mix
    stream = np.concatenate([np.asarray([bos] + ids[i], dtype=np.int64) for i in order])
    n_val = int(len(stream) * config.val_fraction)

    def pack(tokens):
        n = len(tokens) // config.seq_len
        return torch.from_numpy(tokens[: n * config.seq_len].reshape(n, config.seq_len).copy())

    train_blocks, val_blocks = pack(stream[: len(stream) - n_val]), pack(stream[len(stream) - n_val:])
    if len(val_blocks) == 0 or len(train_blocks) < config.batch_size * accelerator.num_processes:
        raise HfpipeError(f"pretrain: {len(stream)} tokens give {len(train_blocks)} train / {len(val_blocks)} val "
                          f"blocks of seq_len={config.seq_len}: too few for batch_size={config.batch_size}; "
                          "lower pretrain.seq_len/batch_size, raise val_fraction or add data", 2)
    val_blocks = val_blocks[: config.eval_blocks]
    counts = np.bincount(val_blocks[:, 1:].numpy().ravel(), minlength=len(tokenizer))
    freq = counts[counts > 0] / counts.sum()
    unigram_entropy = float(-(freq * np.log(freq)).sum())  # nats/token of the best unigram model *fit on val itself*

    # ---------------------------------------------------------------- model, optimizer, schedule
    m = config.model
    if m.model_type not in CONFIG_MAPPING:
        raise HfpipeError(f"pretrain.model.model_type: unknown architecture '{m.model_type}' (e.g. llama, qwen2, gpt2)", 2)
    kwargs = dict(vocab_size=len(tokenizer), hidden_size=m.hidden_size, num_hidden_layers=m.num_hidden_layers,
                  num_attention_heads=m.num_attention_heads, num_key_value_heads=m.num_key_value_heads,
                  intermediate_size=m.intermediate_size, tie_word_embeddings=m.tie_word_embeddings,
                  max_position_embeddings=config.seq_len, bos_token_id=bos, eos_token_id=eos,
                  pad_token_id=tokenizer.pad_token_id)
    try:
        model_config = AutoConfig.for_model(m.model_type, **{**kwargs, **m.config_overrides})
        model = AutoModelForCausalLM.from_config(model_config, dtype=torch.float32)
    except (ValueError, KeyError, TypeError) as e:
        raise HfpipeError(f"pretrain.model: cannot build a '{m.model_type}' causal LM: {str(e).splitlines()[0][:300]}", 2) from e
    n_params = sum(p.numel() for p in model.parameters())
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=config.learning_rate,
                                  betas=(config.adam_beta1, config.adam_beta2), eps=config.adam_eps)
    schedule = {"cosine": "cosine_with_min_lr", "linear": "linear", "constant": "constant_with_warmup"}[config.lr_schedule]
    scheduler = get_scheduler(schedule, optimizer, num_warmup_steps=config.warmup_steps, num_training_steps=config.max_steps,
                              scheduler_specific_kwargs={"min_lr_rate": config.min_lr_ratio} if config.lr_schedule == "cosine" else None)
    model, optimizer = accelerator.prepare(model, optimizer)  # the scheduler is stepped by hand, once per optimizer step

    # ---------------------------------------------------------------- data order: reshuffled each epoch, sharded per process
    def batches():
        g, epoch = torch.Generator().manual_seed(inputs.seed), 0
        while True:
            local = torch.randperm(len(train_blocks), generator=g)[accelerator.process_index::accelerator.num_processes]
            for i in range(0, len(local) - config.batch_size + 1, config.batch_size):
                yield epoch, train_blocks[local[i: i + config.batch_size]].to(accelerator.device)
            epoch += 1

    @torch.no_grad()
    def evaluate():
        model.eval()
        losses = [model(input_ids=x, labels=x).loss.float()
                  for x in val_blocks.to(accelerator.device).split(config.batch_size)]
        model.train()
        return torch.stack(losses).mean().item()  # every process scores the same blocks

    # ---------------------------------------------------------------- train
    out_dir.mkdir(parents=True, exist_ok=True)
    curves, rows = out_dir / "curves.jsonl", []
    curves.write_text("")

    def log(row):  # appended as it happens: `tail -f curves.jsonl` follows a run, a crash keeps its curve
        rows.append(row)
        if accelerator.is_main_process:
            with curves.open("a") as f:
                f.write(json.dumps(row) + "\n")

    tokens_per_step = config.batch_size * config.seq_len * config.gradient_accumulation_steps * accelerator.num_processes
    data, train_s, window_s, window_loss, epoch = batches(), 0.0, 0.0, 0.0, 0
    val_loss = last_train_loss = float("nan")
    model.train()
    for step in range(1, config.max_steps + 1):
        t0 = time.perf_counter()
        loss_sum = torch.zeros((), device=accelerator.device)
        for _ in range(config.gradient_accumulation_steps):
            epoch, x = next(data)
            with accelerator.accumulate(model):  # syncs (and lets the optimizer step) on the last micro-batch
                loss = model(input_ids=x, labels=x).loss
                accelerator.backward(loss)
            loss_sum += loss.detach()
        grad_norm = accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
        train_loss, grad = (loss_sum / config.gradient_accumulation_steps).item(), float(grad_norm)
        if not (math.isfinite(train_loss) and math.isfinite(grad)):
            raise HfpipeError(f"pretrain: non-finite training at step {step} (loss={train_loss}, grad_norm={grad}); "
                              f"lower pretrain.learning_rate (now {config.learning_rate}) or raise warmup_steps", 1)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t0
        train_s, window_s, window_loss = train_s + dt, window_s + dt, window_loss + train_loss
        if step % config.log_interval == 0 or step == config.max_steps:
            n = config.log_interval if step % config.log_interval == 0 else step % config.log_interval
            log({"step": step, "train_loss": window_loss / n, "lr": scheduler.get_last_lr()[0], "grad_norm": grad,
                 "tokens_per_s": n * tokens_per_step / window_s, "epoch": epoch})
            window_s, window_loss, last_train_loss = 0.0, 0.0, rows[-1]["train_loss"]
        if step % config.eval_interval == 0 or step == config.max_steps:
            val_loss = evaluate()
            log({"step": step, "val_loss": val_loss})
            accelerator.print(f"pretrain step {step}/{config.max_steps} train_loss {last_train_loss:.4f} val_loss {val_loss:.4f}")
    if accelerator.is_main_process:
        plot(rows, unigram_entropy, out_dir / "curves.png")

    # ---------------------------------------------------------------- save
    model = accelerator.unwrap_model(model)
    model.generation_config = GenerationConfig(bos_token_id=bos, eos_token_id=[eos, bos], pad_token_id=tokenizer.pad_token_id)
    folder = out_dir / "model"
    if accelerator.is_main_process:
        save_model(model, tokenizer, folder)
        check(folder)
    return {"n_params": n_params, "train_tokens": config.max_steps * tokens_per_step, "steps": config.max_steps,
            "epochs": round(config.max_steps * tokens_per_step / (len(train_blocks) * config.seq_len), 3),
            "train_loss": last_train_loss, "val_loss": val_loss, "unigram_entropy_baseline": unigram_entropy,
            "tokens_per_s": round(config.max_steps * tokens_per_step / train_s, 1), "train_s": round(train_s, 2)}


def plot(rows: list[dict], baseline: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax_lr) = plt.subplots(1, 2, figsize=(10, 4))
    for key in ("train_loss", "val_loss"):
        pts = [(r["step"], r[key]) for r in rows if key in r]
        ax.plot(*zip(*pts), marker="." if key == "val_loss" else None, label=key)
    ax.axhline(baseline, color="gray", linestyle="--", label="unigram entropy (val)")
    ax.set(xlabel="step", ylabel="loss (nats/token)", title="pretrain loss")
    ax.legend()
    ax_lr.plot(*zip(*[(r["step"], r["lr"]) for r in rows if "lr" in r]))
    ax_lr.set(xlabel="step", ylabel="learning rate", title="schedule")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def check(folder: Path) -> None:
    """The saved folder reloads without hfpipe and greedily generates one token."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tokenizer = AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    prompt = tokenizer(BOS_TOKEN + "def ", return_tensors="pt", add_special_tokens=False)
    out = model.generate(**prompt, max_new_tokens=1, do_sample=False)
    if out.shape[1] != prompt["input_ids"].shape[1] + 1:
        raise HfpipeError(f"pretrain self-check: the model saved in {folder} does not generate", 1)
