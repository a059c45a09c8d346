"""The part of a TRL stage that is the same in sft, preference and rl: the recipe keys they share, the arguments
every TRL config gets, the check for a diverged run, the save-and-check tail and the dry-run description."""

from __future__ import annotations

import contextlib
import math
import os
import shutil
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator
from pydantic.fields import FieldInfo

from hfpipe.errors import HfpipeError, first_line
from hfpipe.posttrain.data import DatasetSpec
from hfpipe.stages import StageConfig, Tracker
from hfpipe.posttrain.launch import resolve_precision  # noqa: F401 (the stages import it from here)

# ----------------------------------------------------------------------------------------------------------------------
# Recipe keys. A key's wording or default may differ per stage (the rows it counts, the bundled files); its meaning
# and bounds do not. The class factories add their keys after those of ``base``: a stage chains them (and its own
# classes) so that its section lists its keys in the order the recipe, the schema and the card show them.


def learning_rate_key(default: float) -> FieldInfo:
    return Field(default, gt=0.0, le=1.0, description="peak AdamW learning rate (linear decay)")


def max_steps_key() -> FieldInfo:
    return Field(None, ge=1, description="optimizer steps; null = train num_train_epochs epochs")


def epochs_key(over: str) -> FieldInfo:
    return Field(1.0, gt=0.0, description=f"passes over the {over} when max_steps is null")


def check_one_data_source(config):
    """A stage config's `datasets` (a mixture) or `dataset`/`eval_dataset`, not both (a pydantic after-validator)."""
    # a value equal to the default is what a resolved recipe (the card's copy) writes back: not a conflict
    changed = [k for k in ("dataset", "eval_dataset") if getattr(config, k) != type(config).model_fields[k].default]
    if config.datasets is not None and changed:
        raise ValueError("give either 'datasets' (a mixture) or 'dataset'/'eval_dataset', not both")
    return config


def mixture_keys(base: type[StageConfig], files: tuple[str, str], *, file_format: str, rows: str, held_out: str,
                 grouped_by: str) -> type[StageConfig]:
    """``base`` + the data keys of a mixture stage (sft, preference): one training set, `dataset` + `eval_dataset`
    (default: the bundled ``files``), or a weighted mixture, `datasets`; `mixture_rows`, `eval_fraction`. Worded for
    the stage: ``file_format`` (what a JSONL file holds), ``rows`` (a training row), ``held_out`` (a held-out row),
    ``grouped_by`` (what a held-out split keeps on one side)."""

    from hfpipe.posttrain.decontamination import DecontaminationKeys
    from hfpipe.posttrain.heldout import HeldoutKeys

    # + decontaminate, decontamination_tasks/_ngrams; heldout_bpb_max_rise/_action
    class MixtureKeys(DecontaminationKeys, HeldoutKeys, base):
        dataset: str = Field(files[0], description=f"one training set ({file_format}): 'hfpipe:<file>' for a bundled "
                             "file, else a path relative to the recipe; ignored when `datasets` is given")
        eval_dataset: str | None = Field(files[1], description=f"held-out {held_out} for `dataset`; null = hold out "
                                         f"eval_fraction of it, grouped by {grouped_by}")
        datasets: list[DatasetSpec] | None = Field(None, description="a weighted mixture instead of `dataset`: "
                                                   "[{name: 'hfpipe:<file>' | Hub id, path: local file, weight, split, "
                                                   "eval}]; see hfpipe/datasets/README.md for the bundled sets")
        mixture_rows: int | None = Field(None, ge=1, description=f"training {rows} drawn from the mixture; null = the "
                                         "sum of the sets' sizes")
        eval_fraction: float = Field(0.1, gt=0.0, lt=1.0,
                                     description="share of a set held out when it has no held-out file or split")

        @model_validator(mode="after")
        def _one_data_source(self):
            return check_one_data_source(self)

    return MixtureKeys


def training_keys(base: type[StageConfig], lr: float, *, over: str, batch: FieldInfo,
                  length: FieldInfo) -> type[StageConfig]:
    """``base`` + the optimisation keys of sft and preference: `learning_rate` (default ``lr``), `max_steps`,
    `num_train_epochs` (passes ``over`` the rows), `per_device_batch_size` (``batch``),
    `gradient_accumulation_steps`, `max_length` (``length``)."""

    class TrainingKeys(base):
        learning_rate: float = learning_rate_key(lr)
        max_steps: int | None = max_steps_key()
        num_train_epochs: float = epochs_key(over)
        per_device_batch_size: int = batch
        gradient_accumulation_steps: int = Field(1, ge=1, description="forward passes per optimizer step")
        max_length: int = length

    return TrainingKeys


# ----------------------------------------------------------------------------------------------------------------------
# Training


def job_keys(base: type[StageConfig]) -> type[StageConfig]:
    """``base`` + the keys that shape a TRL stage's job rather than its objective: precision, gradient
    checkpointing, experiment trackers, and ``trainer``, any other argument of the stage's TRL config class."""

    class JobKeys(base):
        precision: Literal["auto", "bf16", "fp16", "fp32"] = Field(
            "auto", description="auto = bf16 where the device supports it (a CUDA GPU with bf16), else fp32; the "
            "card records what was used")
        gradient_checkpointing: bool = Field(False, description="recompute activations in the backward pass: less "
                                             "memory for about a third more compute")
        report_to: list[Tracker] = Field([], description="experiment trackers (installed) the trainer logs to, run "
                                         "name <recipe>-<stage>; tensorboard writes into <stage folder>/trackers")
        save_steps: int | None = Field(500, ge=1, description="optimizer steps between resumable checkpoints "
                                       "(model, optimizer, scheduler, RNG, data position; a re-run resumes from the "
                                       "last complete one); null = none, except the one SIGTERM/SIGINT writes")
        keep_checkpoints: int = Field(2, ge=1, description="complete checkpoints kept (older ones are deleted); all "
                                      "are removed once the stage has finished")
        num_processes: int = Field(1, ge=1, description="training processes; >1 runs `accelerate launch` (one per "
                                   "GPU; gloo on CPU)")
        accelerate_config: str | None = Field(None, description="accelerate config: a name under hfpipe/accelerate "
                                              "(single, ddp, fsdp, deepspeed_zero3) or a path; default ddp when "
                                              "num_processes > 1; set = launched even with one process")
        trainer: dict[str, Any] = Field(default_factory=dict, description="more arguments of the stage's TRL config "
                                        "class (SFTConfig, DPOConfig, ..., e.g. lr_scheduler_type, warmup_ratio, "
                                        "neftune_noise_alpha, loss_type), passed as they are; checked against the "
                                        "class's fields before the run starts")

    return JobKeys


# TRL arguments hfpipe sets from elsewhere: a `trainer:` key naming one of them is refused, pointing there. Every
# field of the stage's own section (beta, max_length, num_generations, ...) is refused the same way, pointing to it.
MANAGED = {"output_dir": "the stage folder (hfpipe chooses it: --runs-dir)", "logging_dir": "report_to",
           "seed": "the recipe's top-level seed", "data_seed": "the recipe's top-level seed", "run_name": "report_to",
           "bf16": "precision", "fp16": "precision", "activation_checkpointing": "gradient_checkpointing",
           "per_device_train_batch_size": "per_device_batch_size",
           "per_device_eval_batch_size": "per_device_batch_size", "logging_nan_inf_filter": "(hfpipe stops a run at "
           "the first non-finite loss or grad norm: the filter must stay off)", "save_strategy": "save_steps",
           "save_total_limit": "keep_checkpoints", "resume_from_checkpoint": "(re-run the same command: hfpipe "
           "resumes from the last complete checkpoint)", "use_cpu": "(hfpipe uses the GPU when there is one)"}


def check_trainer_args(stage: str, config_class: type, c) -> None:
    """Every ``<stage>.trainer`` key names a field of ``config_class`` that hfpipe does not set itself: else one line,
    exit 2, with the closest field name or the recipe key to use instead. Before anything runs (the runner's
    preflight)."""
    import dataclasses
    import difflib

    fields = {f.name for f in dataclasses.fields(config_class) if f.init}
    for key in c.trainer:
        where = f"{stage}.trainer.{key}"
        if key in MANAGED or key in type(c).model_fields:
            use = MANAGED.get(key, key)
            use = use if use.startswith(("the ", "(")) else f"{stage}.{use}"
            raise HfpipeError(f"{where}: hfpipe sets {config_class.__name__}.{key} itself; use {use} instead", 2)
        if key not in fields:
            close = difflib.get_close_matches(key, fields, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise HfpipeError(f"{where}: not an argument of trl.{config_class.__name__}{hint}", 2)


def trl_arguments(c, work_dir: Path, seed: int, *, job=None, run_name: str = "", **stage_args) -> dict:
    """The keyword arguments of every TRL config a stage builds (SFT, DPO/KTO/ORPO, Reward, GRPO/RLOO) from its
    section ``c``: checkpoints every ``save_steps`` in ``work_dir`` (which the stage removes once done), one
    seed for the weights and the data order, NaN/inf losses logged as they are and every step logged (so that
    StopOnNonFinite stops at the step); the learning rate, steps and batch size, and the
    epochs, gradient accumulation and max_length where the section has them. ``job`` (the stage section holding the
    job keys, default ``c``) gives precision, gradient checkpointing, trackers (``run_name``) and the ``trainer``
    pass-through; ``stage_args`` are the stage's own and give way to ``trainer``."""
    job = job if job is not None else c
    precision = resolve_precision(job.precision)
    import torch

    from hfpipe.posttrain.launch import in_worker

    args = dict(output_dir=str(work_dir), logging_nan_inf_filter=False, logging_steps=1,
                save_strategy="steps" if job.save_steps else "no", save_steps=job.save_steps or 500,
                save_total_limit=None,  # hfpipe keeps keep_checkpoints complete ones (posttrain/checkpoint.py)
                dataloader_pin_memory=torch.cuda.is_available(),  # pinning only speeds copies to a GPU
                use_cpu=in_worker() and not torch.cuda.is_available(),  # ranks on CPU: gloo (else they train apart)
                seed=seed, data_seed=seed, bf16=precision == "bf16", fp16=precision == "fp16",
                activation_checkpointing=job.gradient_checkpointing,  # transformers 5's name for it
                report_to=list(job.report_to) or "none", run_name=run_name or None,
                learning_rate=c.learning_rate, max_steps=c.max_steps or -1,
                per_device_train_batch_size=c.per_device_batch_size, per_device_eval_batch_size=c.per_device_batch_size)
    args.update({k: getattr(c, k) for k in ("num_train_epochs", "gradient_accumulation_steps", "max_length")
                 if hasattr(c, k)})
    return {**args, **stage_args, **getattr(c, "trainer", {})}


def launched(c) -> bool:
    """The stage section ``c`` asks for `accelerate launch` and this process is not one of its ranks already."""
    from hfpipe.posttrain.launch import in_worker

    return (c.num_processes > 1 or c.accelerate_config is not None) and not in_worker()


def launch_stage(stage: str, c, inputs, out_dir: Path) -> dict:
    """Run the stage in ``c.num_processes`` ranks under `accelerate launch` (hfpipe/posttrain/launch.py): every rank
    runs the stage's run(), rank 0's metrics come back."""
    from hfpipe.posttrain.launch import MIXED_PRECISION, launch

    return launch(stage, c, inputs, out_dir, module="hfpipe.posttrain", num_processes=c.num_processes,
                  accelerate_config=c.accelerate_config or "ddp", key=f"{stage}.accelerate_config",
                  mixed_precision=MIXED_PRECISION[resolve_precision(c.precision)])


def accelerate_files(stage: str, c, recipe_dir: Path) -> list[Path]:
    """The accelerate config file a launched stage reads (its content enters the fingerprint)."""
    from hfpipe.posttrain.launch import accelerate_config_path

    if c.num_processes > 1 or c.accelerate_config is not None:
        return [accelerate_config_path(c.accelerate_config or "ddp", recipe_dir, f"{stage}.accelerate_config")]
    return []


def build_trl_config(stage: str, config_class: type, kwargs: dict, out_dir: Path | None,
                     name: str = "trainer_config.json"):
    """``config_class(**kwargs)``: a value TRL refuses is one line naming the stage (exit 2); the resolved arguments
    are written to ``out_dir/<name>`` (paths of this machine left out), what `hfpipe reproduce` compares and what a
    test or a user reads back (``out_dir`` None: nothing written)."""
    import json

    try:
        args = config_class(**kwargs)
    except (TypeError, ValueError) as e:
        raise HfpipeError(f"{stage}: trl.{config_class.__name__} refused its arguments: {first_line(e)}", 2) from None
    from hfpipe.posttrain.launch import is_main_process

    if out_dir is None or not is_main_process():  # the object only (recipe.<stage>.to_trl(), hfpipe export; rank>0)
        return args
    resolved = {k: v for k, v in args.to_dict().items() if k not in ("output_dir", "logging_dir")}
    (out_dir / name).write_text(json.dumps({"class": f"trl.{config_class.__name__}", **resolved},
                                                            indent=1, sort_keys=True, default=str) + "\n")
    return args


def stop_on_non_finite(stage: str, lr_key: str):
    """A transformers TrainerCallback that stops the run at the first step whose logged loss or grad norm is NaN or
    infinite: one line naming the step (exit 1), instead of training on and finding out at the end."""
    from transformers import TrainerCallback

    class StopOnNonFinite(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            for name in ("loss", "grad_norm"):
                value = (logs or {}).get(name)
                if isinstance(value, float) and not math.isfinite(value):
                    raise HfpipeError(f"{stage}: {name} is {value} at step {state.global_step}; training stopped "
                                      f"there (lower {lr_key}, now {args.learning_rate:g})", 1)

    return StopOnNonFinite()


def report_progress(description: str):
    """A transformers TrainerCallback that reports the run to the console's live line (hfpipe.stages.progress):
    ``description`` with the optimizer steps done of ``max_steps`` while training, and the held-out scoring around
    it."""
    from transformers import TrainerCallback

    from hfpipe.stages import progress

    class ReportProgress(TrainerCallback):
        training = scoring = False

        def on_train_begin(self, args, state, control, **kwargs):
            self.training = True
            progress(description, total=state.max_steps if state.max_steps > 0 else None, unit="steps",
                     completed=state.global_step)

        def on_step_end(self, args, state, control, **kwargs):
            progress(completed=state.global_step)

        def on_train_end(self, args, state, control, **kwargs):
            self.training = False

        def on_prediction_step(self, args, state, control, **kwargs):
            if not self.scoring and not self.training:
                self.scoring = True
                progress("scoring the held-out set" + (" after training" if state.global_step else ""))

        def on_evaluate(self, args, state, control, **kwargs):
            self.scoring = False

    return ReportProgress()


def tracker_env(out_dir: Path, report_to) -> dict[str, str]:
    """Environment for the trackers' own files: tensorboard event files and wandb's run folder in the stage folder."""
    if not report_to:
        return {}
    folder = str(out_dir / "trackers")
    return {"TENSORBOARD_LOGGING_DIR": folder, "WANDB_DIR": folder}


def check_finite(stage: str, metrics: dict, lr_key: str, lr: float) -> None:
    """A NaN or infinite loss or reward means training diverged: one error naming the metric and the learning rate
    to lower (recipe key ``lr_key``, now ``lr``). Values that are not floats are not checked."""
    for name, value in metrics.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise HfpipeError(f"{stage}: {name} is {value}; lower {lr_key} (now {lr})", 1)


def save_and_check(stage: str, model, tokenizer, chat_template: str | None, out_dir: Path, work_dir: Path,
                   merged: bool = False) -> Path:
    """The end of a TRL stage: the tokenizer gets back the chat template the model came with (the stage may have
    trained with another), model and tokenizer are saved to ``out_dir/model``, nothing of the trainer's (``work_dir``:
    pickled args, checkpoints) is kept, and the folder is checked: safetensors weights (``merged``: of a plain model,
    no LoRA adapter) and the chat template read back unchanged."""
    from transformers import AutoTokenizer

    from hfpipe.models import save_model
    from hfpipe.posttrain.launch import barrier, is_main_process

    tokenizer.chat_template = chat_template
    barrier()  # every rank is done with the trainer's folder
    if not is_main_process():  # rank 0 alone writes the stage's files
        return out_dir / "model"
    folder = save_model(model, tokenizer, out_dir / "model")
    shutil.rmtree(work_dir, ignore_errors=True)
    if merged and (not list(folder.glob("*.safetensors")) or (folder / "adapter_config.json").exists()):
        raise HfpipeError(f"{stage}: {folder} does not hold a merged safetensors model", 1)
    if not list(folder.glob("*.safetensors")):
        raise HfpipeError(f"{stage}: {folder} holds no safetensors weights", 1)
    if AutoTokenizer.from_pretrained(folder).chat_template != chat_template:
        raise HfpipeError(f"{stage}: the chat template saved in {folder} differs from the input model's", 1)
    return folder


# ----------------------------------------------------------------------------------------------------------------------
# Dry run


def describe_training(c, trainer: str, per: str, tokens_per_row: int = 1, *, stage: str = "",
                      recipe_dir: Path = Path(".")) -> dict:
    """For `hfpipe run --dry-run`: the TRL trainer a stage runs (``trainer``, e.g. ``trl.DPOTrainer``), its launch,
    batch and learning rate, the datasets, and the expected optimizer steps and tokens (``per``: what one row is)."""
    procs = getattr(c, "num_processes", 1)
    batch = c.per_device_batch_size * getattr(c, "gradient_accumulation_steps", 1) * procs
    steps = c.max_steps
    if procs > 1 or getattr(c, "accelerate_config", None) is not None:
        from hfpipe.posttrain.launch import AUTO, MIXED_PRECISION, describe_launch

        engine = {"trainer": trainer, **describe_launch(c.accelerate_config or "ddp", procs, recipe_dir,
                                                         "hfpipe.posttrain", MIXED_PRECISION.get(c.precision, AUTO),
                                                         f"{stage}.accelerate_config")}
    else:
        engine = {"trainer": trainer, "launch": "in process (one process; num_processes > 1 runs accelerate launch)"}
    engine.update({"num_processes": procs, "per_device_batch_size": c.per_device_batch_size,
                   "learning_rate": c.learning_rate})
    if getattr(c, "lora", None) is not None:
        engine["lora"] = c.lora.model_dump()
    engine.update({k: getattr(c, k) for k in ("precision", "gradient_checkpointing") if hasattr(c, k)})
    if getattr(c, "report_to", None):
        engine["report_to"] = list(c.report_to)
    if getattr(c, "trainer", None):
        engine["trainer_args"] = dict(c.trainer)  # `trainer:`, passed to the TRL config class as it is
    expect = {"optimizer_steps": steps if steps else f"{c.num_train_epochs} epoch(s) over the dataset",
              f"{per}_per_step": batch}
    max_len = getattr(c, "max_length", None)
    if steps and max_len:
        expect["tokens_at_most"] = steps * batch * max_len * tokens_per_row
    datasets = [{"name": s.name or s.path, "split": s.split, "weight": s.weight} for s in getattr(c, "datasets", None) or []]
    if not datasets and hasattr(c, "dataset"):
        datasets = [{"name": c.dataset, "eval": getattr(c, "eval_dataset", None)}]
    save = getattr(c, "save_steps", None)
    if save and steps:
        ckpts = {"at_steps": list(range(save, steps, save))[:50], "kept": c.keep_checkpoints}
    elif save:
        ckpts = {"every_steps": save, "kept": c.keep_checkpoints}
    else:
        ckpts = "none (SIGTERM/SIGINT still saves one)"
    return {"engine": engine, "datasets": datasets, "expected": expect, "checkpoints": ckpts}


def card_facts(folder: Path, stages: dict[str, Path]) -> dict:
    """For the model card (the stage protocol's hook, shared by the TRL stages): the training curves, when written."""
    return {"images": {"curves": folder / "curves.png"}}


@contextlib.contextmanager
def scoped_env(values: dict[str, str]):
    """os.environ with ``values`` set inside the block (the trackers read theirs when the trainer is built)."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
