"""``hfpipe export RECIPE --stage S --to trl|lm-eval|accelerate DIR``: one stage of a recipe as the files the
upstream command lines take as they are, with the data in the format they read.

- ``trl`` (sft, preference dpo/kto): ``DIR/<command>.yaml`` for ``trl sft|dpo|kto --config DIR/<command>.yaml``: the
  stage's TRL arguments (the same builder the stage runs: ``trl_kwargs``), the model it starts from
  (``model_name_or_path``; sft's LoRA as TRL's ``use_peft``/``lora_*`` model arguments) and the training rows hfpipe
  trains on, in its order (``DIR/data/train.jsonl``; held-out rows in ``test.jsonl``), in TRL's conversational formats
  (tool calls included);
- ``trl`` (rl): its two phases as two commands, run in order: ``trl reward --config DIR/reward.yaml`` (the reward
  model, on ``DIR/reward_data``; written to ``DIR/reward_model``) then ``trl grpo|rloo --config DIR/grpo.yaml``: the
  prompts (``DIR/data``, with the columns the verifiable rewards read), ``reward_model_name_or_path``, hfpipe's reward
  functions by import path (``hfpipe.stages.rl.rewards.exact_answer``...) and the weights in TRL's order (the reward
  model first);
- ``lm-eval`` (eval): ``DIR/tasks/``, a task folder for ``lm_eval --include_path DIR/tasks`` (the recipe's bundled
  tasks with their data and scorers), and ``DIR/command.txt`` / ``DIR/simple_evaluate.json``: the stage's arguments;
- ``accelerate`` (pretrain): ``DIR/accelerate.yaml`` for ``accelerate launch --config_file``;
- ``datatrove`` (data): ``DIR/pipeline.py``, a datatrove script (``python DIR/pipeline.py``) that runs the stage's
  passes (``recipe.data.to_datatrove()``: the steps the stage builds) on datatrove's LocalPipelineExecutor, an executor
  to swap for Slurm or Ray; it builds them from the recipe file (and overrides) exported, as hfpipe's stage does.

Export the tiny recipe's SFT: ``hfpipe export recipes/tiny.yaml --stage sft --to trl out/sft`` (its upstream model
stage finished: ``hfpipe run recipes/tiny.yaml --until pretrain``).
"""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

import yaml

from hfpipe.errors import HfpipeError

TARGETS = {"trl": ("sft", "preference", "rl"), "lm-eval": ("eval",), "accelerate": ("pretrain",),
           "datatrove": ("data",)}
TRL_COMMANDS = {"sft": "sft", "dpo": "dpo", "kto": "kto", "grpo": "grpo", "rloo": "rloo"}


def export(recipe, stage: str, to: str, out: Path, runs_dir: Path, overrides: list[str] = ()) -> list[Path]:
    """Write the export; returns the files a user runs (the config / script first)."""
    if to not in TARGETS:
        raise HfpipeError(f"export --to {to}: expected one of {', '.join(TARGETS)}", 2)
    if stage not in TARGETS[to]:
        raise HfpipeError(f"export --stage {stage} --to {to}: {to} exports the {' or '.join(TARGETS[to])} stage", 2)
    if getattr(recipe, stage, None) is None:
        raise HfpipeError(f"export --stage {stage}: {recipe.path or recipe.name} has no {stage} section", 2)
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if to == "trl":
        return export_trl_rl(recipe, out, runs_dir) if stage == "rl" else export_trl(recipe, stage, out, runs_dir)
    if to == "lm-eval":
        return export_lm_eval(recipe, out, runs_dir)
    if to == "datatrove":
        return export_datatrove(recipe, out, overrides)
    path = out / "accelerate.yaml"
    path.write_text(yaml.safe_dump(recipe.pretrain.to_accelerate(), sort_keys=False))
    return [path]


# ----------------------------------------------------------------------------------------------------------------------
# Where the stage's model comes from


def stage_inputs(recipe, stage: str, runs_dir: Path):
    """The Inputs hfpipe's runner would hand ``stage``: its upstream folders must be finished."""
    from hfpipe import runner
    from hfpipe.stages import Inputs, read_manifest

    plans = {p.name: p for p in runner.plan(recipe, Path(runs_dir))}
    p = plans[stage]
    missing = [s for s in p.upstream if not plans[s].done]
    if missing:
        raise HfpipeError(f"export --stage {stage}: it reads the finished {', '.join(missing)} stage; run "
                          f"`hfpipe run {recipe.path} --until {missing[-1]}` first", 2)
    upstream = {s: plans[s].folder for s in p.upstream}
    return Inputs(recipe_name=recipe.name, seed=recipe.seed, recipe_dir=recipe.recipe_dir, upstream=upstream,
                  manifests={s: read_manifest(f) for s, f in upstream.items()}, model_stage=p.model_stage,
                  base_model=recipe.base_model, fingerprint=p.fingerprint, recipe_yaml=recipe.to_yaml())


def export_model(inputs, stage: str, out: Path) -> tuple[str, dict, object]:
    """(model_name_or_path, model_init_kwargs, tokenizer as the stage loads it): a local model is copied to
    ``out/model`` with that tokenizer (so its chat template is the one hfpipe trains with); a Hub id stays an id."""
    from hfpipe.models import load_tokenizer, model_location

    where, kwargs = model_location(inputs, stage)
    tokenizer = load_tokenizer(where, **kwargs)
    kwargs = {k: v for k, v in kwargs.items() if v not in (None, False)}
    if not Path(where).is_dir() or "gguf_file" in kwargs:
        return where, kwargs, tokenizer
    target = out / "model"
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(where, target, ignore=shutil.ignore_patterns("*.gguf"))
    tokenizer.save_pretrained(target)
    return str(target), kwargs, tokenizer


# ----------------------------------------------------------------------------------------------------------------------
# TRL


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def export_trl(recipe, stage: str, out: Path, runs_dir: Path) -> list[Path]:
    from hfpipe.posttrain.data import load_stage_mixture
    from hfpipe.stages import load_module

    config, module = getattr(recipe, stage), load_module(stage)
    command = TRL_COMMANDS.get(getattr(config, "method", stage))
    if command is None:
        raise HfpipeError(f"export --stage {stage}: the trl command line has no '{config.method}' command "
                          f"(it has {', '.join(TRL_COMMANDS)}); use recipe.{stage}.to_trl() in Python", 2)
    inputs = stage_inputs(recipe, stage, runs_dir)
    model, init_kwargs, tokenizer = export_model(inputs, stage, out)
    args = {k: v for k, v in module.trl_kwargs(config, out / "output", recipe.seed, recipe.name).items()
            if v is not None}
    if stage == "sft":
        mixture, _ = load_stage_mixture(config, "sft", "conversation", recipe.recipe_dir, recipe.seed)
        train, held = mixture.train, [r for rows in mixture.eval.values() for r in rows[: config.max_eval_rows]]
        if config.assistant_only_loss:  # the template the stage trains with: {% generation %} around assistant turns
            from hfpipe.posttrain.templates import training_chat_template

            template = out / "chat_template.jinja"
            template.write_text(training_chat_template(tokenizer, "sft.assistant_only_loss"))
            args["chat_template_path"] = str(template)
    else:
        mixture, _ = load_stage_mixture(config, stage, "preference" if config.method != "kto" else "unpaired",
                                        recipe.recipe_dir, recipe.seed)
        held = [r for rows in mixture.eval.values() for r in rows[: config.max_eval_pairs]]
        train, held = module.fitting(mixture.train, tokenizer, config), module.fitting(held, tokenizer, config)
    _jsonl(out / "data" / "train.jsonl", train)
    _jsonl(out / "data" / "test.jsonl", held)
    if init_kwargs:
        args["model_init_kwargs"] = init_kwargs
    args.update(_peft_arguments(getattr(config, "lora", None)))
    doc = {"model_name_or_path": model, "dtype": "float32", "dataset_name": str(out / "data"),
           "dataset_train_split": "train", "dataset_test_split": "test", **args}
    path = _trl_yaml(recipe, stage, _config_name(stage, config), command, out, doc)
    (out / "README.md").write_text(f"Exported by hfpipe from {recipe.path}, stage {stage}.\n\n"
                                   f"    trl {command} --config {shlex.quote(str(path))}\n")
    return [path]


def _peft_arguments(lora) -> dict:
    """sft's ``lora:`` as the TRL command line's model arguments (trl.ModelConfig: use_peft, lora_*), so that
    ``trl sft`` trains the same adapters (``get_peft_config``) instead of every weight."""
    if lora is None:
        return {}
    return {"use_peft": True, "lora_r": lora.r, "lora_alpha": lora.alpha, "lora_dropout": lora.dropout,
            "lora_target_modules": lora.target_modules, "lora_task_type": "CAUSAL_LM",
            **({"load_in_4bit": True, "bnb_4bit_quant_type": "nf4"} if lora.load_in_4bit else {})}


def export_trl_rl(recipe, out: Path, runs_dir: Path) -> list[Path]:
    """The rl stage's two phases as ``trl reward`` then ``trl grpo|rloo`` configs, with the rows the stage reads."""
    from hfpipe.posttrain.data import load_preferences, load_split
    from hfpipe.posttrain.decontamination import Decontaminator
    from hfpipe.stages.rl import policy_kwargs, reward_kwargs, rewards

    config = recipe.rl
    inputs = stage_inputs(recipe, "rl", runs_dir)
    model, init_kwargs, _ = export_model(inputs, "rl", out)
    decontaminator = Decontaminator.from_config(config)
    train, held, _, _ = rewards.load_prompt_split(config, inputs, decontaminator)
    common = {"model_name_or_path": model, "dtype": "float32", "dataset_train_split": "train",
              "dataset_test_split": "test", **({"model_init_kwargs": init_kwargs} if init_kwargs else {})}
    files, uses_rm = [], any(r.name == rewards.REWARD_MODEL for r in config.rewards)
    rm_dir = out / "reward_model"
    if config.reward_model is not None and uses_rm:  # phase 1: the reward model
        rm = config.reward_model
        rm_train, rm_held, _, _ = load_split(rm.dataset, rm.eval_dataset, recipe.recipe_dir, "rl.reward_model",
                                             load_preferences, rm.eval_fraction, decontaminator=decontaminator)
        _jsonl(out / "reward_data" / "train.jsonl", rm_train)
        _jsonl(out / "reward_data" / "test.jsonl", rm_held)
        args = {k: v for k, v in reward_kwargs(config, rm_dir, recipe.seed, recipe.name).items() if v is not None}
        files.append(_trl_yaml(recipe, "rl.reward_model", "RewardConfig", "reward", out,
                               {**common, "dataset_name": str(out / "reward_data"), **args}))
    # phase 2: the policy. TRL's script puts the reward model first, then the functions in the order given
    funcs = [r for r in config.rewards if r.name != rewards.REWARD_MODEL]
    weights = [r.weight for r in config.rewards if r.name == rewards.REWARD_MODEL] + [r.weight for r in funcs]
    args = {k: v for k, v in policy_kwargs(config, out / "output", recipe.seed, recipe.name).items() if v is not None}
    args["reward_weights"] = weights
    _jsonl(out / "data" / "train.jsonl", train)
    _jsonl(out / "data" / "test.jsonl", held)
    doc = {**common, "dataset_name": str(out / "data"),
           **({"reward_model_name_or_path": str(rm_dir)} if uses_rm else {}),
           "reward_funcs": [f"{rewards.__name__}.{rewards.FUNCTIONS[r.name][0].__name__}" for r in funcs] or None,
           **args}
    files.append(_trl_yaml(recipe, "rl", f"{config.algorithm.upper()}Config", config.algorithm, out,
                           {k: v for k, v in doc.items() if v is not None}))
    (out / "README.md").write_text(f"Exported by hfpipe from {recipe.path}, stage rl: run in this order\n\n"
                                   + "".join(f"    trl {f.stem} --config {shlex.quote(str(f))}\n" for f in files))
    return files


def _trl_yaml(recipe, key: str, config_class: str, command: str, out: Path, doc: dict) -> Path:
    path = out / f"{command}.yaml"
    header = (f"# hfpipe export of {recipe.name}.{key} (hfpipe {_version()}): the trl.{config_class} arguments the "
              f"stage trains with.\n# Run: trl {command} --config {path}\n")
    path.write_text(header + yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))
    return path


def _config_name(stage: str, config) -> str:
    return "SFTConfig" if stage == "sft" else f"{config.method.upper()}Config"


def _version() -> str:
    import hfpipe

    return hfpipe.__version__


# ----------------------------------------------------------------------------------------------------------------------
# lm-eval


def export_lm_eval(recipe, out: Path, runs_dir: Path) -> list[Path]:
    """The recipe's bundled tasks as a folder for ``--include_path`` (task YAMLs, their data and Python helpers),
    the model the stage scores, and the stage's ``simple_evaluate`` arguments as a command line."""
    from hfpipe.stages.eval import TASKS_DIR, evaluate_kwargs

    config = recipe.eval
    if config.backend != "hf":
        raise HfpipeError(f"export --to lm-eval: eval.backend is {config.backend}; the export writes the hf model", 2)
    inputs = stage_inputs(recipe, "eval", runs_dir)
    model, init_kwargs, _ = export_model(inputs, "eval", out)
    tasks = out / "tasks"
    if tasks.exists():
        shutil.rmtree(tasks)
    shutil.copytree(TASKS_DIR, tasks, ignore=shutil.ignore_patterns("__pycache__"))
    kwargs = evaluate_kwargs(config, recipe.seed)
    model_args = {"pretrained": model, **init_kwargs, **_model_args(config)}
    (out / "simple_evaluate.json").write_text(json.dumps({**kwargs, "batch_size": config.batch_size, "model": "hf",
                                                          "model_args": model_args, "include_path": str(tasks)},
                                                         indent=1) + "\n")
    argv = ["lm_eval", "--model", "hf", "--model_args", ",".join(f"{k}={v}" for k, v in model_args.items()),
            "--tasks", ",".join(kwargs["tasks"]), "--include_path", str(tasks),
            *(["--num_fewshot", str(kwargs["num_fewshot"])] if kwargs["num_fewshot"] is not None else []),
            "--batch_size", str(config.batch_size),
            "--seed", str(kwargs["random_seed"])]  # bootstrap_iters: the CLI has no flag (stderr only, not scores)
    if kwargs.get("limit") is not None:
        argv += ["--limit", str(kwargs["limit"])]
    if kwargs.get("gen_kwargs"):
        argv += ["--gen_kwargs", ",".join(f"{k}={v}" for k, v in kwargs["gen_kwargs"].items())]
    if kwargs.get("apply_chat_template"):
        argv.append("--apply_chat_template")
    if kwargs.get("confirm_run_unsafe_code"):
        argv.append("--confirm_run_unsafe_code")
    if kwargs.get("log_samples"):
        argv += ["--log_samples", "--output_path", str(out / "results")]
    path = out / "command.txt"
    path.write_text(shlex.join(argv) + "\n")
    return [path, tasks]


def _model_args(config) -> dict:
    """HFLM's arguments beside the model that the stage passes (max_length, the recipe's model_args), float32."""
    args = {"dtype": "float32", **({"max_length": config.max_length} if config.max_length else {}),
            **dict(config.model_args)}
    return args


# ----------------------------------------------------------------------------------------------------------------------
# datatrove

PIPELINE_SCRIPT = '''"""The data stage of hfpipe recipe {name!r} as a datatrove pipeline (exported by hfpipe {version}).

Run: python {script} [--workers N] [--output DIR]   (default output: {output}; the documents land in DIR/data/)

recipe.data.to_datatrove() builds the passes exactly as hfpipe's data stage builds them, from the recipe file below
(edit it, and this script follows): each pass a list of datatrove steps (readers, filters, formatters, dedup,
writers) run as `tasks` tasks, in order, each reading what the earlier ones wrote. They run here on datatrove's
LocalPipelineExecutor; for a cluster, swap in SlurmPipelineExecutor (chain the passes with depends=) or
RayPipelineExecutor.
"""

import argparse
from pathlib import Path

from datatrove.executor import LocalPipelineExecutor

from hfpipe import Recipe

RECIPE, OVERRIDES = {recipe!r}, {overrides!r}

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default={workers}, help="tasks of a pass running at once")
    parser.add_argument("--output", type=Path, default=Path({output!r}), help="where the passes write")
    args = parser.parse_args()
    recipe = Recipe.load(RECIPE, OVERRIDES)
    for p in recipe.data.to_datatrove(args.output):
        print(f"pass {{p.name}}: {{len(p.pipeline)}} steps x {{p.tasks}} tasks", flush=True)
        LocalPipelineExecutor(p.pipeline, tasks=p.tasks, workers=min(args.workers, p.tasks),
                              logging_dir=str(args.output / "datatrove_logs" / p.name)).run()
'''


def export_datatrove(recipe, out: Path, overrides: list[str] = ()) -> list[Path]:
    """``DIR/pipeline.py``: a datatrove script over ``recipe.data.to_datatrove()`` of the recipe file (and the
    overrides) it was exported from, so that source paths and provenance resolve as in hfpipe's own run."""
    if recipe.path is None:
        raise HfpipeError("export --to datatrove: the recipe was built in code; export one loaded from a file", 2)
    recipe.data.to_datatrove(out / "check")  # the passes build (every source reads) before the script is written
    shutil.rmtree(out / "check", ignore_errors=True)
    script = out / "pipeline.py"
    script.write_text(PIPELINE_SCRIPT.format(name=recipe.name, version=_version(), script=script,
                                             recipe=str(Path(recipe.path).resolve()), overrides=list(overrides),
                                             output=str(out / "output"), workers=recipe.data.workers))
    (out / "README.md").write_text(f"Exported by hfpipe from {recipe.path}, stage data.\n\n"
                                   f"    python {shlex.quote(str(script))}\n")
    return [script]
