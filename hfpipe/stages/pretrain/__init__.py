"""Pretrain stage: a causal LM from scratch on the data stage's documents, with the tokenizer stage's tokenizer.

Run just this stage (the stages it reads must be done; add --force pretrain to redo it):

    hfpipe run recipes/tiny.yaml --only pretrain

The corpus is the tokenizer stage's token shards (tokenized once, per domain, each document prefixed with the document
separator), memory-mapped and cut into fixed-length blocks; the tail ``val_fraction`` of every domain is held out
(per-domain validation loss).
Blocks are dealt by domain mixture weights (or natural proportions), through an optional context-length
curriculum whose phases keep the tokens per step constant. The model is any transformers causal-LM architecture
built from a config; the loop is plain PyTorch on `accelerate` (device placement, mixed precision, gradient
accumulation, clipping, DDP/FSDP/DeepSpeed, trackers, save_state) with AdamW/Adafactor/SGD and a cosine, WSD,
linear or constant schedule. Checkpoints every ``checkpoint_interval`` steps are atomic and a re-run resumes from
the last one bit-exactly; SIGTERM/SIGINT checkpoint and stop cleanly (exit 143/130). ``num_processes > 1`` makes
the stage run ``accelerate launch`` on its own worker entry point. Writes ``out_dir/model/``, ``curves.jsonl``
and ``curves.png``.

Helpers beside it: data.py (token shards, split, distributed resumable sampler), optim.py (optimizer, schedules, FLOPs, trackers),
checkpoint.py (atomic checkpoints, signals), launch.py (accelerate launch + worker).
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from hfpipe.errors import HfpipeError, first_line
from hfpipe.models import BOS_TOKEN, EOS_TOKEN, save_model
from hfpipe.posttrain.templates import check_template  # the one chat-template contract
from hfpipe.stages import EXECUTION_ONLY, Inputs, StageConfig
from hfpipe.stages.pretrain.slurm import SlurmJob

OUTPUTS = ("model/*",)  # compared by `hfpipe reproduce` (see hfpipe/stages/__init__.py)
RESULTS = ()
READS = ("data", "tokenizer")
RESUMABLE = True  # out_dir keeps its checkpoints across a crash or pre-emption; a re-run resumes from the last one


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


class Phase(StageConfig):
    seq_len: int = Field(ge=8, description="tokens per block in this phase; batch_size*seq_len/this blocks per micro-batch")
    steps: int = Field(ge=1, description="optimizer steps in this phase")


class Config(StageConfig):
    model: ModelConfig = Field(ModelConfig(), description="architecture of the model trained from scratch")
    seq_len: int = Field(128, ge=8, description="tokens per packed block; also the validation context")
    batch_size: int = Field(16, ge=1, description="blocks of seq_len per micro-batch per process")
    gradient_accumulation_steps: int = Field(1, ge=1, description="micro-batches per optimizer step")
    max_steps: int = Field(300, ge=1, description="optimizer steps; the data is repeated (reshuffled) if it runs out")
    curriculum: list[Phase] = Field([], description="context-length phases, e.g. [{seq_len: 64, steps: 100}, "
                                    "{seq_len: 128, steps: 200}]; steps sum to max_steps; tokens/step stay "
                                    "batch_size*seq_len (the micro-batch is rescaled). Empty: seq_len throughout")
    mixture: dict[str, float] = Field({}, description="sampling weight per data domain (metadata.domain), e.g. "
                                      "{prose: 0.7, code: 0.3}; empty = natural proportions")
    optimizer: Literal["adamw", "adafactor", "sgd"] = Field("adamw", description="torch AdamW, transformers Adafactor "
                                                            "or torch SGD (Nesterov)")
    learning_rate: float = Field(3e-3, gt=0, description="peak LR (tiny models tolerate a high one)")
    lr_schedule: Literal["cosine", "wsd", "linear", "constant"] = Field("cosine", description="shape after warmup")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="final LR as a fraction of the peak (cosine/wsd/linear)")
    warmup_steps: int = Field(30, ge=0, description="LR warmup, in optimizer steps")
    decay_fraction: float = Field(0.2, gt=0, le=1, description="wsd: last fraction of max_steps spent decaying")
    decay_type: Literal["linear", "cosine", "1-sqrt"] = Field("linear", description="wsd: shape of the decay")
    weight_decay: float = Field(0.1, ge=0, description="decoupled decay on matrices (not norms/biases)")
    adam_beta1: float = Field(0.9, ge=0, lt=1, description="AdamW first-moment decay")
    adam_beta2: float = Field(0.95, ge=0, lt=1, description="AdamW second-moment decay (0.95: stabler for LMs)")
    adam_eps: float = Field(1e-8, gt=0, description="AdamW denominator epsilon")
    sgd_momentum: float = Field(0.9, ge=0, lt=1, description="sgd: Nesterov momentum")
    max_grad_norm: float = Field(1.0, gt=0, description="clip the global gradient L2 norm to this")
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field("auto", description="accelerate autocast: auto = "
                                                               "bf16 where the device supports it (a CUDA GPU with "
                                                               "bf16), else fp32; the card records what was used")
    gradient_checkpointing: bool = Field(False, description="recompute activations in the backward pass: less "
                                         "memory for about a third more compute")
    val_fraction: float = Field(0.05, gt=0, lt=0.5, description="tail of each domain's token stream held out")
    eval_interval: int = Field(50, ge=1, description="optimizer steps between validation passes (+ one at the end)")
    eval_blocks: int = Field(160, ge=1, description="score at most this many held-out blocks per domain per pass "
                                                     "(the same ones each time, whatever the batch size)")
    log_interval: int = Field(10, ge=1, description="optimizer steps between train-loss rows in curves.jsonl")
    checkpoint_interval: int = Field(100, ge=1, description="optimizer steps between resumable checkpoints")
    keep_checkpoints: int = Field(2, ge=1, description="complete checkpoints kept (older ones are deleted)")
    keep_checkpoints_when_done: bool = Field(False, description="keep checkpoints/ in the finished stage folder")
    report_to: list[Literal["tensorboard", "wandb", "trackio"]] = Field([], description="accelerate trackers to "
                                                                        "log the curves to as well (installed)")
    num_processes: int = Field(1, ge=1, description="training processes; >1 runs `accelerate launch` (one per GPU)")
    accelerate_config: str | None = Field(None, description="accelerate config: a name under hfpipe/accelerate "
                                          "(single, ddp, fsdp, deepspeed_zero3) or a path; default ddp when "
                                          "num_processes > 1; set = launched even with one process")
    slurm: SlurmJob | None = Field(None, description="submit the training to Slurm instead of running it here: sbatch "
                                   "+ srun + accelerate launch on slurm.nodes machines (hfpipe.stages.pretrain.slurm); "
                                   "not in the fingerprint (bit-identical weights, tests/test_cluster.py)",
                                   json_schema_extra=EXECUTION_ONLY)

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data):
        if isinstance(data, dict) and "mixed_precision" in data:
            from pydantic_core import PydanticCustomError

            raise PydanticCustomError("renamed", "'mixed_precision' is now 'precision': auto, bf16, fp16 or fp32 "
                                      "(was 'no' = fp32); rename the key")
        return data

    @model_validator(mode="after")
    def _consistent(self):
        if self.warmup_steps >= self.max_steps:
            raise ValueError("warmup_steps must be smaller than max_steps")
        if self.curriculum and sum(p.steps for p in self.curriculum) != self.max_steps:
            raise ValueError(f"curriculum steps sum to {sum(p.steps for p in self.curriculum)}, not max_steps={self.max_steps}")
        for p in self.curriculum:
            if (self.batch_size * self.seq_len) % p.seq_len:
                raise ValueError(f"curriculum seq_len {p.seq_len} must divide batch_size*seq_len = "
                                 f"{self.batch_size * self.seq_len} (tokens per micro-batch stay constant)")
        if any(w < 0 for w in self.mixture.values()) or (self.mixture and not sum(self.mixture.values()) > 0):
            raise ValueError("mixture weights must be >= 0 with a positive sum")
        return self

    def phases(self) -> list[tuple[int, int, int]]:
        """(seq_len, steps, blocks per micro-batch per process) of each phase."""
        tokens = self.batch_size * self.seq_len
        return [(p.seq_len, p.steps, tokens // p.seq_len) for p in self.curriculum] or [(self.seq_len, self.max_steps, self.batch_size)]

    def launched(self) -> bool:
        return self.num_processes > 1 or self.accelerate_config is not None or self.slurm is not None

    def resolved_precision(self) -> str:
        from hfpipe.posttrain.launch import resolve_precision

        return resolve_precision(self.precision)

    def to_transformers(self, tokenizer=None):
        """The transformers config of the model this section pretrains, as train() builds it: the vocabulary and
        special-token ids from ``tokenizer`` (an object or a folder: the tokenizer stage's output), else as the
        recipe's tokenizer stage lays them out (its vocab_size; hfpipe's special tokens first)."""
        from hfpipe.models import PAD_TOKEN, SPECIAL_TOKENS

        if tokenizer is not None:
            if isinstance(tokenizer, (str, Path)):
                from transformers import AutoTokenizer

                tokenizer = AutoTokenizer.from_pretrained(tokenizer)
            ids = tokenizer.convert_tokens_to_ids([BOS_TOKEN, EOS_TOKEN])
            return build_model_config(self, len(tokenizer), *ids, tokenizer.pad_token_id)
        section = getattr(self._recipe, "tokenizer", None)
        if section is None or getattr(section, "vocab_size", None) is None:
            raise HfpipeError("pretrain.to_transformers(): the recipe trains no tokenizer with a vocab_size; pass "
                              "tokenizer= (a folder or a tokenizer)", 2)
        return build_model_config(self, section.vocab_size, *(SPECIAL_TOKENS.index(t) for t in
                                                               (BOS_TOKEN, EOS_TOKEN, PAD_TOKEN)))

    def to_accelerate(self) -> dict:
        """The accelerate config `hfpipe` launches this section with (``accelerate launch --config_file``): the
        config file it names (default ddp) with the process count and mixed precision the launch passes."""
        import yaml

        from hfpipe.stages.pretrain.launch import MIXED_PRECISION, accelerate_config_path

        _, _, recipe_dir = self.recipe_context()
        path = accelerate_config_path(self.accelerate_config or "ddp", recipe_dir)
        settings = yaml.safe_load(path.read_text()) or {}
        return {**settings, "num_processes": self.num_processes,
                "mixed_precision": MIXED_PRECISION[self.resolved_precision()]}


def build_model_config(config: Config, vocab_size: int, bos: int, eos: int, pad: int | None):
    """The transformers config of the model this section pretrains (AutoConfig.for_model): what train() builds its
    model from, and what ``recipe.pretrain.to_transformers()`` gives."""
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    m = config.model
    if m.model_type not in CONFIG_MAPPING:
        raise HfpipeError(f"pretrain.model.model_type: unknown architecture '{m.model_type}' (e.g. llama, qwen2, gpt2)", 2)
    kwargs = dict(vocab_size=vocab_size, hidden_size=m.hidden_size, num_hidden_layers=m.num_hidden_layers,
                  num_attention_heads=m.num_attention_heads, num_key_value_heads=m.num_key_value_heads,
                  intermediate_size=m.intermediate_size, tie_word_embeddings=m.tie_word_embeddings,
                  max_position_embeddings=max(L for L, _, _ in [(config.seq_len, 0, 0), *config.phases()]),
                  bos_token_id=bos, eos_token_id=eos, pad_token_id=pad)
    return AutoConfig.for_model(m.model_type, **{**kwargs, **m.config_overrides})


def input_files(config: Config, recipe_dir: Path) -> list[Path]:
    from hfpipe.posttrain.launch import accelerate_config_path

    return [accelerate_config_path(config.accelerate_config or "ddp", recipe_dir)] if config.launched() else []


def run(config: Config, inputs: Inputs, out_dir: Path) -> dict:
    from hfpipe.posttrain.launch import in_worker

    if config.slurm is not None and not in_worker():  # sbatch + srun + accelerate launch, waited for
        from hfpipe.posttrain.launch import MIXED_PRECISION
        from hfpipe.stages.pretrain.slurm import launch as submit

        return submit(config, inputs, out_dir, MIXED_PRECISION[config.resolved_precision()])
    if config.launched() and not in_worker():
        from hfpipe.stages.pretrain.launch import launch

        return launch(config, inputs, out_dir)
    return train(config, inputs, out_dir)


def train(config: Config, inputs: Inputs, out_dir: Path) -> dict:
    import torch
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, set_seed

    from hfpipe.stages.pretrain import checkpoint as ckpt
    from hfpipe.stages.pretrain.data import ShardSampler, TokenShards, domain_key, unigram_entropy
    from hfpipe.stages import check_trackers
    from hfpipe.stages import progress as report  # `progress` below is the training state
    from hfpipe.stages.pretrain.optim import build_optimizer, build_scheduler, finite, flops_per_token

    started = time.perf_counter()  # -> startup_s: until the first step begins (tokenizer, shards, model, resume)
    check_trackers(config.report_to, "pretrain.report_to")
    set_seed(inputs.seed)
    AcceleratorState._reset_state()  # an earlier stage in this process may have fixed another mixed_precision (as Trainer does)
    from hfpipe.posttrain.launch import MIXED_PRECISION

    precision = config.resolved_precision()
    accelerator = Accelerator(gradient_accumulation_steps=config.gradient_accumulation_steps,
                              mixed_precision=MIXED_PRECISION[precision], log_with=config.report_to or None,
                              project_dir=out_dir / "trackers" if config.report_to else None,
                              cpu=config.launched() and not torch.cuda.is_available())
    if config.launched() and not torch.cuda.is_available():  # accelerate runs an FSDP config as DDP on CPU
        from hfpipe.stages.pretrain import cpu_fsdp

        cpu_fsdp.enable(accelerator)
    tokenizer = AutoTokenizer.from_pretrained(inputs.upstream["tokenizer"] / "tokenizer")
    check_template("pretrain", inputs, tokenizer.chat_template, out_dir)  # the tokenizer stage's, or fail naming both
    bos, eos = tokenizer.convert_tokens_to_ids(BOS_TOKEN), tokenizer.convert_tokens_to_ids(EOS_TOKEN)
    n_proc, rank = accelerator.num_processes, accelerator.process_index

    # ---------------------------------------------------------------- token shards (memory-mapped), split, sampler
    report("opening the token shards")
    corpus = TokenShards(inputs.upstream["tokenizer"], config.val_fraction)  # tokenized once, by the tokenizer stage
    missing = sorted(set(config.mixture) - set(corpus.domains))
    if missing:
        raise HfpipeError(f"pretrain.mixture: domain(s) {', '.join(missing)} not in the data (it has: "
                          f"{', '.join(corpus.domains)})", 2)
    phases = config.phases()
    val_blocks = {d: corpus.val_blocks(d, config.seq_len, config.eval_blocks) for d in corpus.domains}
    val_blocks = {d: b for d, b in val_blocks.items() if len(b)}  # a domain too small for one block has no val loss
    weights = {d: w for d, w in config.mixture.items()} or None
    samplers = [ShardSampler(corpus, L, inputs.seed, i, weights) for i, (L, _, _) in enumerate(phases)]
    for (L, _, micro), sampler in zip(phases, samplers):
        if not val_blocks or sampler.empty_pools() or sampler.blocks() < micro * n_proc:
            raise HfpipeError(f"pretrain: {corpus.train_tokens()} train tokens give {sampler.blocks()} train / "
                              f"{sum(map(len, val_blocks.values()))} val blocks of seq_len={L}: too few for a "
                              f"micro-batch of {micro}; lower pretrain.seq_len/batch_size, raise val_fraction or add "
                              "data", 2)
    all_val = torch.cat(list(val_blocks.values()))
    baseline = unigram_entropy(all_val, len(tokenizer))

    # ---------------------------------------------------------------- model, optimizer, schedule
    m = config.model
    try:
        model_config = build_model_config(config, len(tokenizer), bos, eos, tokenizer.pad_token_id)
        model = AutoModelForCausalLM.from_config(model_config, dtype=torch.float32)
    except (ValueError, KeyError, TypeError) as e:
        raise HfpipeError(f"pretrain.model: cannot build a '{m.model_type}' causal LM: {first_line(e, empty='')[:300]}", 2) from e
    n_params, flops_tok = sum(p.numel() for p in model.parameters()), flops_per_token(model, config.seq_len)
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    optimizer = build_optimizer(config, model)
    scheduler = build_scheduler(config, optimizer)
    model, optimizer = accelerator.prepare(model, optimizer)  # the scheduler is stepped by hand, once per optimizer step

    # ---------------------------------------------------------------- resume from the last complete checkpoint
    progress = ckpt.TrainingProgress(samplers)  # the samplers' positions are part of every checkpoint
    accelerator.register_for_checkpointing(scheduler, progress)
    ckpt_root = out_dir / "checkpoints"
    done, resumed_from = ckpt.complete(ckpt_root), 0
    if done:
        accelerator.load_state(str(done[-1]))
        resumed_from = progress.step
        accelerator.print(f"pretrain: resuming from {done[-1]} (step {resumed_from}/{config.max_steps})")

    # ---------------------------------------------------------------- curves (kept up to the checkpoint on resume)
    out_dir.mkdir(parents=True, exist_ok=True)
    curves = out_dir / "curves.jsonl"
    rows = [r for r in read_rows(curves) if r["step"] <= resumed_from] if resumed_from else []
    if accelerator.is_main_process:
        curves.write_text("".join(json.dumps(r) + "\n" for r in rows))
    if config.report_to:
        accelerator.init_trackers(f"hfpipe-{inputs.recipe_name}-pretrain",
                                  config={k: v for k, v in config.model_dump().items() if isinstance(v, (int, float, str))})

    def log(row):  # appended as it happens: `tail -f curves.jsonl` follows a run, a crash keeps its curve
        rows.append(row)
        if accelerator.is_main_process:
            with curves.open("a") as f:
                f.write(json.dumps(row) + "\n")
        if config.report_to:
            accelerator.log({k: v for k, v in row.items() if k != "step"}, step=row["step"])

    @torch.no_grad()
    def evaluate() -> dict:
        model.eval()
        out = {}
        for d, blocks in val_blocks.items():
            losses = [model(input_ids=x, labels=x).loss.float() for x in blocks.to(accelerator.device).split(config.batch_size)]
            out[d] = torch.stack(losses).mean().item()  # every process scores the same blocks
        model.train()
        total = sum(out[d] * len(val_blocks[d]) for d in out) / sum(len(b) for b in val_blocks.values())
        return {"val_loss": total, **{f"val_loss_{domain_key(d)}": v for d, v in out.items()}}

    # ---------------------------------------------------------------- train
    tokens_per_step = config.batch_size * config.seq_len * config.gradient_accumulation_steps * n_proc
    ends = [sum(s for _, s, _ in phases[: i + 1]) for i in range(len(phases))]
    s, val = progress.sums, {}
    model.train()
    startup_s = time.perf_counter() - started
    report("training" + (f" (resumed at step {resumed_from})" if resumed_from else ""), total=config.max_steps,
           unit="steps", completed=progress.step)
    with ckpt.StopFlag() as stop:
        for step in range(progress.step + 1, config.max_steps + 1):
            phase = next(i for i, end in enumerate(ends) if step <= end)
            L, _, micro = phases[phase]
            t0 = time.perf_counter()
            loss_sum = torch.zeros((), device=accelerator.device)
            for _ in range(config.gradient_accumulation_steps):
                x, dom = samplers[phase].next(micro * n_proc, rank, n_proc)  # of the global micro-batch, reads its slice
                for i, count in enumerate(dom.bincount(minlength=len(corpus.domains)).tolist()):
                    d = corpus.domains[i]
                    progress.domain_tokens[d] = progress.domain_tokens.get(d, 0) + count * L
                x = x.to(accelerator.device)
                with accelerator.accumulate(model):  # syncs (and lets the optimizer step) on the last micro-batch
                    loss = model(input_ids=x, labels=x).loss
                    accelerator.backward(loss)
                loss_sum += loss.detach()
            grad_norm = accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            if n_proc > 1:
                loss_sum = accelerator.reduce(loss_sum, reduction="mean")
            train_loss, grad = (loss_sum / config.gradient_accumulation_steps).item(), float(grad_norm)
            if not finite(train_loss, grad):
                raise HfpipeError(f"pretrain: non-finite training at step {step} (loss={train_loss}, grad_norm={grad}); "
                                  f"lower pretrain.learning_rate (now {config.learning_rate}) or raise warmup_steps", 1)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            dt = time.perf_counter() - t0
            progress.step = step
            report(completed=step)
            s["train_s"] += dt
            s["window_s"] += dt
            s["window_loss"] += train_loss
            s["window_steps"] += 1
            if step % config.log_interval == 0 or step == config.max_steps:
                log({"step": step, "train_loss": s["window_loss"] / s["window_steps"], "lr": scheduler.get_last_lr()[0],
                     "grad_norm": grad, "tokens_per_s": s["window_steps"] * tokens_per_step / s["window_s"],
                     "epoch": round(samplers[phase].epochs(), 4), "phase": phase, "seq_len": L, "micro_batch": micro})
                s.update(window_s=0.0, window_loss=0.0, window_steps=0, last_train_loss=rows[-1]["train_loss"])
            if step % config.eval_interval == 0 or step == config.max_steps:
                val = evaluate()
                s["val_loss"] = val["val_loss"]
                log({"step": step, **val})
                accelerator.print(f"pretrain step {step}/{config.max_steps} train_loss {s['last_train_loss']:.4f} "
                                  f"val_loss {val['val_loss']:.4f}")
            stopping = stop.signum is not None
            if n_proc > 1:  # every rank stops at the same step, whichever got the signal
                stopping = bool(accelerator.reduce(torch.tensor(float(stopping), device=accelerator.device), "sum").item())
            if step < config.max_steps and (stopping or step % config.checkpoint_interval == 0):
                where = ckpt.save(accelerator, ckpt_root, step, config.keep_checkpoints)
                if stopping:
                    raise ckpt.TrainingInterrupted(stop.signum or 15, step, where)
    if not val:  # resumed at the very end: the last validation happened before the checkpoint
        val = evaluate()
    report("saving the model")
    if accelerator.is_main_process:
        plot(rows, baseline, out_dir / "curves.png")

    # ---------------------------------------------------------------- save
    folder = out_dir / "model"
    state_dict = accelerator.get_state_dict(model)  # gathers FSDP / ZeRO-3 shards (every rank takes part)
    model = accelerator.unwrap_model(model)
    model.generation_config = GenerationConfig(bos_token_id=bos, eos_token_id=[eos, bos], pad_token_id=tokenizer.pad_token_id)
    if accelerator.is_main_process:
        if accelerator.distributed_type.name in ("FSDP", "DEEPSPEED"):
            model.save_pretrained(folder, state_dict=state_dict, safe_serialization=True)
            tokenizer.save_pretrained(folder)
        else:
            save_model(model, tokenizer, folder)
        check(folder)
        if not config.keep_checkpoints_when_done:
            shutil.rmtree(ckpt_root, ignore_errors=True)
    if config.report_to:
        accelerator.end_training()
    accelerator.wait_for_everyone()
    total_tokens = config.max_steps * tokens_per_step
    return {"n_params": n_params, "flops_per_token": flops_tok, "train_tokens": total_tokens, "steps": config.max_steps,
            "phases": len(phases), "resumed_from_step": resumed_from, "num_processes": n_proc,
            "precision": precision, "gradient_checkpointing": config.gradient_checkpointing,
            "epochs": round(total_tokens / corpus.train_tokens(), 3),
            "train_loss": s["last_train_loss"], **val, "unigram_entropy_baseline": baseline,
            **{f"mixture_{domain_key(d)}": round(n / total_tokens, 4) for d, n in sorted(progress.domain_tokens.items())},
            "tokens_per_s": round(total_tokens / s["train_s"], 1),  # train_s: step time summed over runs
            "train_s": round(s["train_s"], 2), "startup_s": round(startup_s, 3)}


def read_rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot(rows: list[dict], baseline: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax_lr) = plt.subplots(1, 2, figsize=(10, 4))
    keys = ["train_loss", "val_loss"] + sorted({k for r in rows for k in r if k.startswith("val_loss_")})
    for key in keys:
        pts = [(r["step"], r[key]) for r in rows if key in r]
        ax.plot(*zip(*pts), marker="." if key != "train_loss" else None, linestyle="--" if key.startswith("val_loss_") else "-",
                label=key)
    ax.axhline(baseline, color="gray", linestyle=":", label="unigram entropy (val)")
    ax.set(xlabel="step", ylabel="loss (nats/token)", title="pretrain loss")
    ax.legend(fontsize=7)
    train = [r for r in rows if "lr" in r]
    ax_lr.plot([r["step"] for r in train], [r["lr"] for r in train], label="learning rate")
    ax_lr.set(xlabel="step", ylabel="learning rate", title="schedule and context length")
    ax_len = ax_lr.twinx()
    ax_len.step([r["step"] for r in train], [r["seq_len"] for r in train], color="tab:orange", where="post")
    ax_len.set_ylabel("seq_len (tokens)", color="tab:orange")
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


def headline(metrics: dict) -> str:
    """The console's figure for this stage: the final validation loss (and the training loss beside it)."""
    return f"val_loss {metrics['val_loss']:.3f} (train_loss {metrics['train_loss']:.3f})"


def describe(c: Config, recipe) -> dict:
    """For `hfpipe run --dry-run`: the launch, the expected steps, tokens and checkpoints, the parameter count."""
    phases = c.phases()
    procs = c.num_processes
    tokens_per_step = c.batch_size * c.seq_len * c.gradient_accumulation_steps * procs
    if c.launched():
        from hfpipe.stages.pretrain.launch import describe_launch

        engine = describe_launch(c, recipe.recipe_dir)
        if c.slurm is not None:
            from hfpipe.stages.pretrain.slurm import describe as describe_slurm

            engine["slurm"] = describe_slurm(c, recipe.recipe_dir)
    else:
        engine = {"launch": "in process (one Accelerator, no launcher)"}
    engine.update({"num_processes": procs, "precision": c.precision,
                   "gradient_checkpointing": c.gradient_checkpointing, "optimizer": c.optimizer,
                   "lr_schedule": c.lr_schedule, "learning_rate": c.learning_rate})
    params = None
    m = c.model
    if all(hasattr(m, k) for k in ("hidden_size", "num_hidden_layers", "intermediate_size")):
        # decoder blocks: attention (q,o full; k,v grouped) + gated MLP; embeddings counted apart
        h, L, f = m.hidden_size, m.num_hidden_layers, m.intermediate_size
        kv = h * getattr(m, "num_key_value_heads", m.num_attention_heads) // m.num_attention_heads
        params = L * (2 * h * h + 2 * h * kv + 3 * h * f)
    from hfpipe.stages.pretrain.data import describe_data

    data = describe_data(c, recipe, engine, params)  # the sampler over the token shards; memory per rank
    engine.update(data["engine"])
    return {"engine": engine,
            "expected": {**data["expected"], "optimizer_steps": c.max_steps, "tokens_per_step": tokens_per_step,
                         "tokens": tokens_per_step * c.max_steps,
                         "phases": [{"seq_len": s, "steps": n, "blocks_per_micro_batch": b} for s, n, b in phases],
                         "checkpoints_at_steps": list(range(c.checkpoint_interval, c.max_steps + 1, c.checkpoint_interval)),
                         "checkpoints_kept": c.keep_checkpoints,
                         "non_embedding_params": params}}


def card_facts(folder: Path, stages: dict[str, Path]) -> dict:
    """For the model card: the loss and schedule curves."""
    return {"images": {"curves": folder / "curves.png"}}
