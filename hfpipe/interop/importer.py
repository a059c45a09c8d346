"""``hfpipe import FILE``: an alignment-handbook / open-r1 recipe (TRL script arguments in YAML: model arguments, a
dataset mixture, the trainer's arguments) -> an hfpipe recipe, printed as YAML.

Every argument is kept: the ones hfpipe has a recipe key for go there (``learning_rate`` -> ``sft.learning_rate``,
``per_device_train_batch_size`` -> ``per_device_batch_size``, ``bf16: true`` -> ``precision: bf16``, the dataset
mixture -> ``datasets``), keys the libraries renamed since the file was written are renamed (``max_seq_length`` ->
``max_length``, ``evaluation_strategy`` -> ``eval_strategy``, ``warmup_ratio`` -> ``warmup_steps``), every other
argument of the stage's TRL config class goes through ``trainer:`` as it is, and arguments hfpipe decides itself
(``output_dir``, ``overwrite_output_dir``) are recorded in a comment. A key that is none of these is a one-line error
naming it. The stage is the file's trainer: ``sft`` (SFTConfig), or ``preference`` (DPOConfig) for a file with DPO
arguments (``beta``, ``loss_type``, a ``prompt``/``chosen`` mixture) or a ``dpo/`` folder.

    hfpipe import recipes/zephyr-7b-beta/sft/config_full.yaml > recipes/zephyr-sft.yaml
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import yaml

from hfpipe.errors import HfpipeError

# model arguments (TRL ModelConfig / the handbook's ModelArguments) -> base_model keys
MODEL_KEYS = {"model_name_or_path": "name_or_path", "model_revision": "revision",
              "trust_remote_code": "trust_remote_code"}
# how the model is loaded: TRL's model_init_kwargs (hfpipe export --to trl carries them to `trl sft|dpo`)
LOAD_KEYS = {"torch_dtype": "dtype", "dtype": "dtype", "attn_implementation": "attn_implementation"}
# renamed since the file was written (transformers 5 / TRL 1.x): old -> new TRL field
RENAMED = {"evaluation_strategy": "eval_strategy", "max_seq_length": "max_length", "warmup_ratio": "warmup_steps",
           "preprocessing_num_workers": "dataset_num_proc"}
# what hfpipe decides itself: recorded, not passed
DECIDED = {"output_dir": "the stage folder under --runs-dir", "overwrite_output_dir": "a stage writes a fresh folder",
           "logging_dir": "report_to (tensorboard: <stage folder>/trackers)"}
# the stage section's own keys, from TRL argument names
SECTION_KEYS = {"learning_rate": "learning_rate", "num_train_epochs": "num_train_epochs",
                "gradient_accumulation_steps": "gradient_accumulation_steps", "max_length": "max_length",
                "gradient_checkpointing": "gradient_checkpointing", "report_to": "report_to",
                "per_device_train_batch_size": "per_device_batch_size", "assistant_only_loss": "assistant_only_loss",
                "packing": "packing", "padding_free": "padding_free", "beta": "beta"}
DATA_KEYS = ("dataset_mixer", "dataset_splits", "dataset_configs", "dataset_name", "dataset_config",
             "dataset_mixture", "dataset_train_split", "dataset_test_split")
DPO_HINTS = ("beta", "loss_type", "max_prompt_length", "rpo_alpha", "ref_model_init_kwargs")


def _stage(path: Path, data: dict) -> str:
    columns = [c for d in (data.get("dataset_mixture") or {}).get("datasets") or [] for c in d.get("columns") or []]
    if "dpo" in path.parts or any(k in data for k in DPO_HINTS) or "chosen" in columns:
        return "preference"
    return "sft"


def _name(path: Path, data: dict) -> str:
    raw = data.get("run_name") or data.get("hub_model_id") or f"{path.parent.parent.name}-{path.parent.name}"
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", str(raw).split("/")[-1]).strip("-.")
    return name or "imported"


def _datasets(data: dict, where: str) -> list[dict]:
    """The file's dataset arguments as hfpipe mixture entries (Hub ids, their config, split, held-out split, weight)."""
    splits = data.get("dataset_splits") or [data.get("dataset_train_split", "train"), data.get("dataset_test_split")]
    configs = data.get("dataset_configs") or ([data["dataset_config"]] if data.get("dataset_config") else [])
    out = []
    if "dataset_mixture" in data:
        mixture = data["dataset_mixture"]
        extra = sorted(set(mixture) - {"datasets", "seed", "test_split_size"})
        if extra or "test_split_size" in mixture:
            raise HfpipeError(f"{where}: dataset_mixture.{(extra or ['test_split_size'])[0]}: hfpipe has no key for it "
                              "(a held-out split is a dataset's 'eval')", 2)
        for i, d in enumerate(mixture.get("datasets") or []):
            unknown = sorted(set(d) - {"id", "path", "config", "name", "split", "columns", "weight", "data_files"})
            if unknown:
                raise HfpipeError(f"{where}: dataset_mixture.datasets[{i}].{unknown[0]}: hfpipe has no key for it", 2)
            bad = sorted(set(d.get("columns") or []) - {"messages", "prompt", "completion", "chosen", "rejected",
                                                         "tools", "label", "chat_template_kwargs"})
            if bad:
                raise HfpipeError(f"{where}: dataset_mixture.datasets[{i}].columns: '{bad[0]}' is not a column of "
                                  "TRL's formats, which hfpipe reads by name", 2)
            entry = {"name": d.get("id") or d.get("path"), "split": d.get("split", "train"),
                     "weight": float(d.get("weight", 1.0))}
            if d.get("config") or d.get("name"):
                entry["subset"] = d.get("config") or d.get("name")
            out.append(entry)
    elif "dataset_mixer" in data:
        mixer = data["dataset_mixer"]
        if not isinstance(mixer, dict):
            raise HfpipeError(f"{where}: dataset_mixer: expected {{dataset id: fraction}}", 2)
        for i, (name, weight) in enumerate(mixer.items()):
            out.append({"name": name, "split": splits[0] or "train", "weight": float(weight),
                        **({"subset": configs[min(i, len(configs) - 1)]} if configs else {})})
    elif "dataset_name" in data:
        out.append({"name": data["dataset_name"], "split": splits[0] or "train", "weight": 1.0,
                    **({"subset": configs[0]} if configs else {})})
    else:
        raise HfpipeError(f"{where}: no dataset (dataset_mixture, dataset_mixer or dataset_name)", 2)
    for entry in out:
        if len(splits) > 1 and splits[1]:
            entry.setdefault("eval", splits[1])
    return out


def import_recipe(path: str | Path) -> tuple[str, dict, dict[str, str]]:
    """(YAML text of the hfpipe recipe, its data, {source key: the recipe key it went to}) for an alignment-handbook
    / open-r1 recipe file."""
    from hfpipe.posttrain.trainer import MANAGED
    from hfpipe.stages import load_module

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise HfpipeError(f"{path}: cannot read ({e.strerror})", 2) from None
    except yaml.YAMLError as e:
        raise HfpipeError(f"{path}: invalid YAML: {getattr(e, 'problem', None) or e}", 2) from None
    if not isinstance(data, dict) or "model_name_or_path" not in data:
        raise HfpipeError(f"{path}: not a TRL script-argument recipe (no model_name_or_path)", 2)
    where = str(path)
    stage = _stage(path, data)
    module = load_module(stage)
    config_class = module.trainer_classes("dpo")[1] if stage == "preference" else __import__("trl").SFTConfig
    fields = {f.name for f in dataclasses.fields(config_class) if f.init}
    section_fields = set(module.Config.model_fields)

    base: dict[str, Any] = {}
    section: dict[str, Any] = {"datasets": _datasets(data, where)}
    trainer: dict[str, Any] = {}
    init_kwargs: dict[str, Any] = {}
    notes: list[str] = []
    placed: dict[str, str] = {}  # source key -> where it went
    precision = None
    for key, value in data.items():
        new = RENAMED.get(key, key)
        placed[key] = f"{stage}.trainer.{new}"  # unless a branch below says otherwise
        if key in MODEL_KEYS:
            base[MODEL_KEYS[key]] = value
            placed[key] = f"base_model.{MODEL_KEYS[key]}"
        elif key in LOAD_KEYS or key == "use_flash_attention_2":
            name = "attn_implementation" if key == "use_flash_attention_2" else LOAD_KEYS[key]
            placed[key] = f"{stage}.trainer.model_init_kwargs.{name}"
            if key == "use_flash_attention_2":
                if value:
                    init_kwargs["attn_implementation"] = "flash_attention_2"
            elif value is not None:
                init_kwargs[LOAD_KEYS[key]] = value
        elif key in DATA_KEYS or key == "seed":  # the mixture above; the recipe's seed below
            placed[key] = "seed" if key == "seed" else f"{stage}.datasets"
        elif key in ("bf16", "fp16"):
            placed[key] = f"{stage}.precision"
            if value:
                precision = key
        elif key == "max_steps":
            section["max_steps"] = value if value and value > 0 else None
            placed[key] = f"{stage}.max_steps"
        elif new in SECTION_KEYS and SECTION_KEYS[new] in section_fields:
            section[SECTION_KEYS[new]] = value
            placed[key] = f"{stage}.{SECTION_KEYS[new]}"
        elif key == "per_device_eval_batch_size":
            placed[key] = f"{stage}.per_device_batch_size"
            if value != data.get("per_device_train_batch_size"):
                notes.append(f"per_device_eval_batch_size={value}: hfpipe scores with per_device_batch_size "
                             f"({data.get('per_device_train_batch_size')})")
        elif key == "save_strategy":
            placed[key] = f"{stage}.save_steps"
            if value == "no":
                section["save_steps"] = None
            elif value != "steps":
                raise HfpipeError(f"{where}: key 'save_strategy' cannot be mapped: hfpipe checkpoints every "
                                  f"save_steps optimizer steps, not per '{value}'", 2)
        elif key == "save_steps":
            placed[key] = f"{stage}.save_steps"
            if data.get("save_strategy", "steps") == "steps":
                if not isinstance(value, int) or value < 1:
                    raise HfpipeError(f"{where}: key 'save_steps' cannot be mapped: {value!r} is a fraction of the "
                                      "run; hfpipe's save_steps counts optimizer steps", 2)
                section["save_steps"] = value
        elif key == "save_total_limit":
            placed[key] = f"{stage}.keep_checkpoints"
            if value is not None:
                section["keep_checkpoints"] = value
        elif key in DECIDED:
            placed[key] = "not passed"
            notes.append(f"{key}={value}: hfpipe decides it ({DECIDED[key]})")
        elif key == "run_name":
            placed[key] = "name"
            notes.append(f"run_name={value}: the recipe's name; trackers name the run <name>-{stage}")
        elif new in fields and new not in MANAGED and new not in section_fields:
            trainer[new] = value
        else:
            raise HfpipeError(f"{where}: key '{key}' cannot be mapped: it is no argument of trl."
                              f"{config_class.__name__} (TRL {__import__('trl').__version__}) and hfpipe has no key "
                              "for it", 2)
    if init_kwargs:
        trainer["model_init_kwargs"] = init_kwargs
    if precision:
        section["precision"] = precision
    if trainer:
        section["trainer"] = trainer
    if stage == "preference":
        section = {"method": "dpo", **section}
    recipe = {"name": _name(path, data), "seed": int(data.get("seed", 42)),
              "description": f"imported from {path.name} (TRL script arguments) by hfpipe import",
              "base_model": base, stage: section}
    header = [f"# Imported by `hfpipe import {path.name}`: every argument kept (TRL config arguments hfpipe has no "
              f"key for are under {stage}.trainer)."]
    header += [f"# not passed: {n}" for n in notes]
    return "\n".join(header) + "\n" + yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True), recipe, placed


def check_imported(text: str, source: Path):
    """The imported recipe validated as a recipe file beside the source, and its trainer: keys checked against the
    TRL config class (the run's preflight, without the trackers)."""
    from hfpipe.posttrain.trainer import check_trainer_args
    from hfpipe.recipe import recipe_from_yaml

    recipe = recipe_from_yaml(text, Path(source).with_suffix(".hfpipe.yaml"))
    for stage in ("sft", "preference"):
        config = getattr(recipe, stage, None)
        if config is not None:
            from hfpipe.stages import load_module

            module = load_module(stage)
            cls = (module.trainer_classes(config.method)[1] if stage == "preference"
                   else __import__("trl").SFTConfig)
            check_trainer_args(stage, cls, config)
    return recipe
