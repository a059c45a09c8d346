"""The eval plan of a recipe, as decontamination sees it, and the contamination report every stage that reads
training text writes (``contamination.json``), which the model card shows as one table.

Light on purpose (standard library only): the recipe loader (hfpipe.recipe) asks ``registry_tasks`` which of the
recipe's ``eval.tasks`` are not bundled, and fills them into ``decontamination_tasks`` of every section that has the
key (data, sft, preference, rl) unless the recipe sets it: the index the data stage and the post-training stages
match against is then built from every bundled task (their data ships in hfpipe/tasks) plus the registry tasks the
recipe evaluates (matched when their data is in the local Hugging Face cache; else listed as not checked). Naming
only the non-bundled tasks keeps a change among bundled eval tasks from re-running the data stage.

The index itself and the matching are in hfpipe.stages.data.steps.decontamination (it imports datatrove).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from hfpipe.resources import TASKS, package_file

REPORT = "contamination.json"
DECONTAMINATION_KEY = "decontamination_tasks"
DECONTAMINATED_STAGES = ("data", "sft", "preference", "rl")
_TASK_LINE = re.compile(r"^task:\s*['\"]?([^'\"#\s]+)", re.M)


def bundled_task_names(tasks_dir: str | Path | None = None) -> list[str]:
    """The ``task:`` names of the lm-eval task YAMLs under ``tasks_dir`` (default hfpipe/tasks), sorted."""
    folder = Path(tasks_dir) if tasks_dir is not None else package_file(TASKS)
    names = set()
    for spec in folder.rglob("*.yaml"):
        found = _TASK_LINE.search(spec.read_text(encoding="utf-8"))
        if found:
            names.add(found.group(1))
    return sorted(names)


def registry_tasks(eval_tasks) -> list[str]:
    """The names in ``eval_tasks`` that are not bundled tasks (lm-eval registry tasks, groups or tags), in order."""
    bundled = set(bundled_task_names())
    return [t for t in dict.fromkeys(eval_tasks) if isinstance(t, str) and t not in bundled]


def fill_decontamination_tasks(data: dict) -> None:
    """In a recipe mapping (before validation): every section of ``DECONTAMINATED_STAGES`` without its own
    ``decontamination_tasks`` gets the registry tasks of ``eval.tasks`` (bundled tasks are always indexed)."""
    ev = data.get("eval")
    tasks = ev.get("tasks") if isinstance(ev, dict) else None
    if not isinstance(tasks, list):
        return
    extra = registry_tasks(tasks)
    for stage in DECONTAMINATED_STAGES:
        section = data.get(stage)
        if isinstance(section, dict) and DECONTAMINATION_KEY not in section:
            section[DECONTAMINATION_KEY] = list(extra)


def write_report(out_dir: Path, stage: str, index_info: dict, rows: list[dict]) -> dict:
    """``out_dir/contamination.json``: what the index held (``index_info``: n_grams, tasks indexed, tasks not
    checked with the reason) and per (source, task) the documents/rows checked and dropped, with an overlap found."""
    report = {"stage": stage, **index_info, "rows": rows}
    (Path(out_dir) / REPORT).write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    return report


def summarize(hits: list[dict], checked: dict[str, int]) -> list[dict]:
    """Report rows from hits ({source, task, ngram}, one per dropped document/row) and the documents/rows checked per
    source: one row per (source, task) with a hit, one row (task "-") for a source without any."""
    rows, seen = [], set()
    for source in sorted(set(checked) | {h["source"] for h in hits}):
        mine = [h for h in hits if h["source"] == source]
        for task in sorted({h["task"] for h in mine}):
            of_task = [h for h in mine if h["task"] == task]
            rows.append({"source": source, "task": task, "checked": checked.get(source, 0), "dropped": len(of_task),
                         "distinct_ngrams": len({h["ngram"] for h in of_task}), "overlap": of_task[0]["ngram"]})
            seen.add(source)
        if source not in seen:
            rows.append({"source": source, "task": "-", "checked": checked.get(source, 0), "dropped": 0,
                         "distinct_ngrams": 0, "overlap": ""})
    return rows


def card_rows(stages: dict[str, Path]) -> list[dict]:
    """For the model card: every stage's contamination.json rows, in pipeline order, with the stage and its index."""
    out = []
    for stage, folder in stages.items():
        try:
            report = json.loads((Path(folder) / REPORT).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        for row in report.get("rows", []):
            out.append({"stage": stage, **row})
    return out


def card_index(stages: dict[str, Path]) -> dict | None:
    """For the model card: the tasks the index held and those not checked (the first stage's report that has one)."""
    for folder in stages.values():
        try:
            report = json.loads((Path(folder) / REPORT).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        return {"n_grams": report.get("n_grams"), "tasks": report.get("tasks", []),
                "not_checked": report.get("not_checked", {})}
    return None
