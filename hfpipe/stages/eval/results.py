"""The eval stage's results.json as the model card shows it: the score table, the model-index entries
(huggingface_hub ``EvalResult``), the Hub ``.eval_results`` entries, and every other table results.json holds."""

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
    entries = []
    for task, entry in sorted(tasks.items()) if isinstance(tasks, dict) else []:
        if isinstance(entry, dict) and isinstance(entry.get("metrics"), dict):
            area, measures = (entry["area"], entry.get("description") or "") if entry.get("area") else \
                area_of(str(task))
            entries.append((AREAS.index(area) if area in AREAS else len(AREAS), str(area), str(measures), task, entry))
    for _, area, measures, task, entry in sorted(entries, key=lambda e: e[:1] + (str(e[3]),)):
        n_shot, n_samples = entry.get("n_shot"), entry.get("n_samples")
        if isinstance(n_samples, dict):  # lm-eval style {"original": N, "effective": M}
            n_samples = n_samples.get("effective", n_samples.get("original"))
        better = entry.get("higher_is_better") if isinstance(entry.get("higher_is_better"), dict) else {}
        for metric, m in entry["metrics"].items():
            value, stderr = (m.get("value"), m.get("stderr")) if isinstance(m, dict) else (m, None)
            mtype, _, filt = str(metric).replace(",", ":", 1).partition(":")  # "acc,none" / "acc:flex" / "acc"
            name = f"{mtype} ({n_shot}-shot)" if isinstance(n_shot, int) else mtype
            name += f" [{filt}]" if filt and filt != "none" else ""
            arrow = {True: " ↑", False: " ↓"}.get(better.get(metric), "")
            rows.append({"area": fmt(area), "measures": fmt(measures) if not any(r["task"] == fmt(task) for r in rows)
                         else "", "task": fmt(task), "metric": fmt(name) + arrow, "arrow": arrow, "value": fmt(value),
                         "stderr": fmt(stderr) if is_number(stderr) else "", "n_samples": fmt(n_samples or ""),
                         "version": fmt(str(entry.get("version") or ""))})
            if is_number(value):
                evals.append(EvalResult(task_type="text-generation", dataset_type=str(task), dataset_name=str(task),
                                        metric_type=mtype, metric_value=value, metric_name=name,
                                        dataset_args={"num_few_shot": n_shot} if isinstance(n_shot, int) else None))
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
