"""The eval stage's results.json as the model card shows it: the score table, the model-index entries
(huggingface_hub ``EvalResult``), the Hub ``.eval_results`` entries, and every other table results.json holds.

What makes two scores comparable travels with each model-index entry (``dataset.args``, read back by
hfpipe.compare for ``hfpipe compare`` and the eval stage's ``baseline:`` gate): ``task_version``, ``num_few_shot``,
``samples`` of ``total_samples`` (a run with ``eval.limit`` scores fewer than the task has: its metric names and the
table's samples column say ``n of N samples``) and ``chat_template`` (``none`` or the sha256 of the applied template);
each metric's standard error is its ``metric.args.stderr``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from hfpipe.card import fmt, is_number, read_json, tables

HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
RESULTS = "results.json"


def read_results(folder: Path) -> Any:
    """The eval stage's results.json (None when missing or not JSON)."""
    return read_json(Path(folder) / RESULTS)


def card_facts(folder: Path, stages: dict[str, Path]) -> dict:
    results = read_results(folder)
    rows, model_index, harness = score_facts(results)
    extra, entries = extra_facts(results)
    return {"card": {"eval_rows": rows, "harness": harness, "eval_extra": extra, "model_index": model_index,
                     "eval_result_entries": entries}}


def samples_of(entry: dict) -> tuple[int | None, int | None]:
    """(scored, total) documents of a results.json task entry (lm-eval's n-samples: effective, original)."""
    n = entry.get("n_samples")
    if isinstance(n, dict):
        eff, orig = n.get("effective"), n.get("original")
        return (eff if isinstance(eff, int) else orig if isinstance(orig, int) else None,
                orig if isinstance(orig, int) else None)
    return (n, n) if isinstance(n, int) else (None, None)


def samples_cell(scored: int | None, total: int | None) -> str:
    """``215``, or ``20 of 215`` for a limited run."""
    if scored is None:
        return ""
    return f"{scored} of {total}" if isinstance(total, int) and scored < total else str(scored)


def task_facts(results: Any) -> dict[str, dict]:
    """{task: {"version", "n_shot", "samples", "total", "chat_template"}} of a results.json: what must match before
    two runs' scores may be compared (hfpipe.compare.like_for_like)."""
    results = results if isinstance(results, dict) else {}
    tasks = results.get("tasks", results.get("results"))
    sha = results.get("chat_template_sha256")
    template = f"sha256:{sha}" if isinstance(sha, str) and sha else "none"
    out = {}
    for task, entry in tasks.items() if isinstance(tasks, dict) else []:
        if isinstance(entry, dict):
            scored, total = samples_of(entry)
            version = entry.get("version")
            out[str(task)] = {"version": None if version is None else str(version), "n_shot": entry.get("n_shot"),
                              "samples": scored, "total": total, "chat_template": template}
    return out


def dataset_args(facts: dict) -> dict:
    """A task's facts as model-index ``dataset.args`` (None values are dropped by huggingface_hub)."""
    return {"num_few_shot": facts["n_shot"], "task_version": facts["version"], "samples": facts["samples"],
            "total_samples": facts["total"], "chat_template": facts["chat_template"]}


def facts_from_dataset_args(args: Any) -> dict | None:
    """The inverse of dataset_args; None when the entry does not record them all (a card of an older hfpipe)."""
    keys = ("num_few_shot", "task_version", "samples", "total_samples", "chat_template")
    if not isinstance(args, dict) or any(k not in args for k in keys):
        return None
    return {"version": str(args["task_version"]), "n_shot": args["num_few_shot"], "samples": args["samples"],
            "total": args["total_samples"], "chat_template": str(args["chat_template"])}


def score_facts(results: Any) -> tuple[list[dict], list, str | None]:
    """Table rows, one huggingface_hub EvalResult per numeric metric, and the harness version, from results.json.

    Reads {"results" (or "tasks"): {task: {"metrics": {metric: {"value", "stderr"}}, "version", "n_shot", "n_samples",
    "higher_is_better"?, "area"?, "description"?}}, "harness_version" (or "harness": {"version"})}; anything else in it
    is ignored. Rows are grouped by capability area (areas.AREAS order, then "other"), each task's first row saying
    what it measures; a task without a recorded area gets it from hfpipe.stages.eval.areas.
    """
    from huggingface_hub import EvalResult

    from hfpipe.stages.eval.areas import AREAS, area_of

    rows, evals = [], []
    results = results if isinstance(results, dict) else {}
    tasks = results.get("results", results.get("tasks"))
    facts = task_facts(results)
    entries = []
    for task, entry in sorted(tasks.items()) if isinstance(tasks, dict) else []:
        if isinstance(entry, dict) and isinstance(entry.get("metrics"), dict):
            area, measures = (entry["area"], entry.get("description") or "") if entry.get("area") else \
                area_of(str(task))
            entries.append((AREAS.index(area) if area in AREAS else len(AREAS), str(area), str(measures), task, entry))
    for _, area, measures, task, entry in sorted(entries, key=lambda e: e[:1] + (str(e[3]),)):
        n_shot = entry.get("n_shot")
        scored, total = samples_of(entry)  # lm-eval style {"original": N, "effective": M}
        limited = isinstance(scored, int) and isinstance(total, int) and scored < total
        args = dataset_args(facts[str(task)]) if str(task) in facts else {}
        better = entry.get("higher_is_better") if isinstance(entry.get("higher_is_better"), dict) else {}
        for metric, m in entry["metrics"].items():
            value, stderr = (m.get("value"), m.get("stderr")) if isinstance(m, dict) else (m, None)
            mtype, _, filt = str(metric).replace(",", ":", 1).partition(":")  # "acc,none" / "acc:flex" / "acc"
            marks = ([f"{n_shot}-shot"] if isinstance(n_shot, int) else []) + \
                ([f"{scored} of {total} samples"] if limited else [])
            name = f"{mtype} ({', '.join(marks)})" if marks else mtype
            name += f" [{filt}]" if filt and filt != "none" else ""
            arrow = {True: " ↑", False: " ↓"}.get(better.get(metric), "")
            rows.append({"area": fmt(area), "measures": fmt(measures) if not any(r["task"] == fmt(task) for r in rows)
                         else "", "task": fmt(task), "metric": fmt(name) + arrow, "arrow": arrow, "value": fmt(value),
                         "stderr": fmt(stderr) if is_number(stderr) else "",
                         "n_samples": fmt(samples_cell(scored, total)),
                         "version": fmt(str(entry.get("version") or ""))})
            if is_number(value):
                evals.append(EvalResult(task_type="text-generation", dataset_type=str(task), dataset_name=str(task),
                                        metric_type=mtype, metric_value=value, metric_name=name,
                                        dataset_args=args or None,
                                        metric_args={"stderr": stderr} if is_number(stderr) else None))
    harness = results.get("harness_version")
    if harness is None and isinstance(results.get("harness"), dict):
        harness = results["harness"].get("version")
    return rows, evals, str(harness) if harness else None


def extra_facts(results: Any) -> tuple[list[dict], list]:
    """Everything else of results.json that is a mapping (latency and cost, regression vs a baseline, ...) as tables;
    and one ``EvalResultEntry`` per metric of a task that names its Hub dataset (``dataset_path``: ``org/name``), for the
    ``.eval_results/`` files the Hub shows on benchmark leaderboards (tasks without a Hub dataset have none)."""
    extra, entries = [], []
    if not isinstance(results, dict):
        return extra, entries
    for key, value in results.items():
        if key in ("tasks", "results", "harness", "model", "sample_counts", "configs", "versions") \
                or not isinstance(value, dict) or not value:
            continue
        extra.append({"title": key, "tables": tables(value)})
    try:
        from huggingface_hub import EvalResultEntry
    except ImportError:  # huggingface_hub < 1.3: no .eval_results support
        return extra, entries
    tasks = results.get("tasks", results.get("results"))
    for task, entry in sorted(tasks.items()) if isinstance(tasks, dict) else []:
        dataset = entry.get("dataset_path") if isinstance(entry, dict) else None
        if not (isinstance(dataset, str) and HUB_ID_RE.match(dataset)) or not isinstance(entry.get("metrics"), dict):
            continue
        for metric, m in entry["metrics"].items():
            value = m.get("value") if isinstance(m, dict) else m
            if is_number(value):
                entries.append(EvalResultEntry(dataset_id=dataset, task_id=str(task), value=value,
                                               notes=f"{metric}; lm-evaluation-harness via hfpipe"))
    return extra, entries
