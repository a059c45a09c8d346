"""eval: score the upstream model with lm-evaluation-harness (``lm_eval.simple_evaluate``).

Tasks are lm-eval task names: the ones bundled with hfpipe (``hfpipe/tasks/*.yaml``, data shipped in the repo, e.g.
``capitals``) and any name from lm-eval's own registry (those download their data from the Hub, so they need a
network). The model is evaluated in memory (``HFLM(pretrained=<model object>)``); nothing is fetched for it.
Writes ``out_dir/results.json`` (per task: metrics with stderr, task version, n-shot, sample counts; plus the
harness version and the chat template's sha256 when one was applied) and returns ``{"<task>/<metric>": value}``.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
from pathlib import Path

from pydantic import Field

from hfpipe.errors import HfpipeError
from hfpipe.stages import Inputs, StageConfig

READS = ("model",)
TASKS_DIR = Path(__file__).resolve().parent.parent / "tasks"  # hfpipe's bundled lm-eval tasks (package data)


class Config(StageConfig):
    tasks: list[str] = Field(["capitals"], min_length=1,
                             description="lm-eval task/group/tag names: bundled (hfpipe/tasks) or lm-eval's registry")
    num_fewshot: int | None = Field(None, ge=0, description="in-context examples per question; None = each task's "
                                    "own default (0 when it sets none)")
    limit: int | None = Field(None, ge=1, description="score only the first N documents of each task (None = all); "
                              "for quick checks, the scores are then not comparable to published ones")
    batch_size: int = Field(8, ge=1, description="sequences per forward pass; memory vs speed, no effect on scores")
    max_length: int | None = Field(None, ge=8, description="tokens per sequence, longer contexts are truncated on the "
                                   "left; None = the model's max_position_embeddings")
    apply_chat_template: bool = Field(False, description="wrap each prompt in the tokenizer's chat template "
                                      "(for chat-tuned models)")
    bootstrap_iters: int = Field(1000, ge=0, description="bootstrap resamples for the stderr of non-mean metrics "
                                 "(perplexity, F1); 0 = no stderr for them. Mean metrics use the closed form")


def input_files(config: Config, recipe_dir: Path) -> list[Path]:
    """The bundled task definitions and data: editing them changes the scores, so they enter the fingerprint."""
    return sorted(p for p in TASKS_DIR.rglob("*") if p.is_file() and "__pycache__" not in p.parts)


def _task_manager(names: list[str]):
    """lm-eval's TaskManager over hfpipe's bundled tasks, plus lm-eval's registry only when a name needs it (the
    registry has ~15k entries and takes seconds to index). Unknown names -> HfpipeError with close matches."""
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(TASKS_DIR), include_defaults=False)
    if not set(names) <= set(manager.all_tasks):
        manager = TaskManager(include_path=str(TASKS_DIR))
    for name in names:
        if name not in manager.all_tasks:
            close = difflib.get_close_matches(name, manager.all_tasks, n=5, cutoff=0.6)
            hint = f"; did you mean {', '.join(close)}?" if close else f"; bundled tasks: {', '.join(_bundled())}"
            raise HfpipeError(f"eval.tasks: unknown lm-eval task '{name}'{hint}", 2)
    return manager


def _bundled() -> list[str]:
    return sorted(p.stem for p in TASKS_DIR.glob("*.yaml"))


def run(config: Config, inputs: Inputs, out_dir: Path) -> dict:
    import lm_eval
    import torch
    import transformers
    from lm_eval.models.huggingface import HFLM

    from hfpipe.modeling import load_model_and_tokenizer

    # ---------------------------------------------------------------- tasks (fail fast, before loading the model)
    task_manager = _task_manager(config.tasks)

    # ---------------------------------------------------------------- model, wrapped for lm-eval in memory
    transformers.set_seed(inputs.seed)
    model, tokenizer = load_model_and_tokenizer(inputs)
    model.to("cuda" if torch.cuda.is_available() else "cpu").eval()
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=config.batch_size, max_length=config.max_length)

    # ---------------------------------------------------------------- evaluate
    try:
        out = lm_eval.simple_evaluate(
            model=lm, tasks=list(config.tasks), task_manager=task_manager, num_fewshot=config.num_fewshot,
            limit=config.limit, bootstrap_iters=config.bootstrap_iters, log_samples=False,
            apply_chat_template=config.apply_chat_template, random_seed=inputs.seed, numpy_random_seed=inputs.seed,
            torch_random_seed=inputs.seed, fewshot_random_seed=inputs.seed)
    except ConnectionError as e:  # a registry task's dataset lives on the Hub
        raise HfpipeError(f"eval.tasks: {e}; offline, only the bundled tasks work ({', '.join(_bundled())})", 1) from e

    # ---------------------------------------------------------------- results.json: one entry per task and group
    tasks, metrics = {}, {}
    for name, row in out["results"].items():
        entry = {"metrics": {}, "version": out["versions"].get(name), "n_shot": out["n-shot"].get(name),
                 "n_samples": out.get("n-samples", {}).get(name), "higher_is_better": {}}
        for key, value in row.items():
            if "," not in key or "_stderr," in key:
                continue  # "alias", "sample_len" and the stderr twin of each metric
            metric, filt = key.split(",", 1)
            label = metric if filt == "none" else f"{metric}:{filt}"
            stderr = row.get(f"{metric}_stderr,{filt}")
            entry["metrics"][label] = {"value": value, "stderr": stderr if isinstance(stderr, float) else None}
            entry["higher_is_better"][label] = out.get("higher_is_better", {}).get(name, {}).get(metric)
            metrics[f"{name}/{label}"] = value
        tasks[name] = entry
    chat_template = lm.chat_template(True) if config.apply_chat_template else None
    results = {
        "harness": {"name": "lm-evaluation-harness", "version": lm_eval.__version__},
        "model": {"stage": inputs.model_stage, "base_model": inputs.base_model.name_or_path if inputs.base_model
                  and not inputs.model_stage else None, "parameters": sum(p.numel() for p in model.parameters())},
        "seed": inputs.seed, "limit": config.limit, "num_fewshot": config.num_fewshot,
        "apply_chat_template": config.apply_chat_template,
        "chat_template_sha256": hashlib.sha256(chat_template.encode()).hexdigest() if chat_template else None,
        "tasks": tasks,
    }
    (out_dir / "results.json").write_text(json.dumps(results, indent=2, sort_keys=True, default=str) + "\n")

    # ---------------------------------------------------------------- self-check: every requested task was scored
    scored = set(out["results"]) | set(out.get("group_subtasks", {}))
    for name in config.tasks:
        if task_manager.task_index[name].kind.name != "TAG" and name not in scored:
            raise HfpipeError(f"eval: task '{name}' produced no result (got {sorted(scored)})", 1)
    bad = [k for k, v in metrics.items() if not (isinstance(v, (int, float)) and math.isfinite(v))]
    if not metrics or bad:
        raise HfpipeError(f"eval: no finite scores in {out_dir / 'results.json'} (bad: {bad})", 1)
    return metrics
