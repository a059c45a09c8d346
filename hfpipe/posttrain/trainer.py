"""The part of a TRL stage that is the same in sft, preference and rl: the recipe keys they share, the arguments
every TRL config gets, the check for a diverged run, the save-and-check tail and the dry-run description."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

from pydantic import Field, model_validator
from pydantic.fields import FieldInfo

from hfpipe.errors import HfpipeError
from hfpipe.posttrain.data import DatasetSpec
from hfpipe.stages import StageConfig

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

    class MixtureKeys(base):
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


def trl_arguments(c, work_dir: Path, seed: int, **stage_args) -> dict:
    """The keyword arguments of every TRL config a stage builds (SFT, DPO/KTO/ORPO, Reward, GRPO/RLOO) from its
    section ``c``: the trainer keeps nothing (no report, no checkpoint; it works in ``work_dir``, which the stage
    removes), one seed for the weights and the data order, fp32, NaN/inf losses logged as they are (so that
    check_finite sees them), no activation checkpointing; the learning rate, steps and batch size, and the epochs,
    gradient accumulation and max_length where the section has them. ``stage_args`` add to these or replace them."""
    args = dict(output_dir=str(work_dir), report_to="none", save_strategy="no", logging_nan_inf_filter=False,
                seed=seed, data_seed=seed, bf16=False, activation_checkpointing=False,
                learning_rate=c.learning_rate, max_steps=c.max_steps or -1,
                per_device_train_batch_size=c.per_device_batch_size, per_device_eval_batch_size=c.per_device_batch_size)
    args.update({k: getattr(c, k) for k in ("num_train_epochs", "gradient_accumulation_steps", "max_length")
                 if hasattr(c, k)})
    return {**args, **stage_args}


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

    tokenizer.chat_template = chat_template
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


def describe_training(c, trainer: str, per: str, tokens_per_row: int = 1) -> dict:
    """For `hfpipe run --dry-run`: the TRL trainer a stage runs (``trainer``, e.g. ``trl.DPOTrainer``), its launch,
    batch and learning rate, the datasets, and the expected optimizer steps and tokens (``per``: what one row is)."""
    batch = c.per_device_batch_size * getattr(c, "gradient_accumulation_steps", 1)
    steps = c.max_steps
    engine = {"trainer": trainer, "launch": "in process (single process; the stage has no num_processes key)",
              "per_device_batch_size": c.per_device_batch_size, "learning_rate": c.learning_rate}
    if getattr(c, "lora", None) is not None:
        engine["lora"] = c.lora.model_dump()
    expect = {"optimizer_steps": steps if steps else f"{c.num_train_epochs} epoch(s) over the dataset",
              f"{per}_per_step": batch}
    max_len = getattr(c, "max_length", None)
    if steps and max_len:
        expect["tokens_at_most"] = steps * batch * max_len * tokens_per_row
    datasets = [{"name": s.name or s.path, "split": s.split, "weight": s.weight} for s in getattr(c, "datasets", None) or []]
    if not datasets and hasattr(c, "dataset"):
        datasets = [{"name": c.dataset, "eval": getattr(c, "eval_dataset", None)}]
    return {"engine": engine, "datasets": datasets, "expected": expect, "checkpoints": "none kept (final model only)"}


def card_facts(folder: Path, stages: dict[str, Path]) -> dict:
    """For the model card (the stage protocol's hook, shared by the TRL stages): the training curves, when written."""
    return {"images": {"curves": folder / "curves.png"}}
