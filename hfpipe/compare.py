"""Compare evaluation scores: two runs side by side (``hfpipe compare A B``), with the items whose answers changed,
and the eval stage's regression gate against a baseline card.

A side is a model card written by hfpipe (its model-index ``EvalResult``s, read with huggingface_hub;
``hfpipe.card.read_card`` first checks that the file is an hfpipe card) or an eval stage folder (its results.json and
the per-sample outputs ``samples_<task>.jsonl`` lm-eval logged). Metric keys are ``<task>/<metric>``
(``<metric>:<filter>`` for a non-default lm-eval filter), the same keys the eval stage returns.

Like for like: two scores of a task are comparable only when both runs used the same task version, number of
few-shot examples, samples (``n of N``: an ``eval.limit`` run scores the first n) and chat template (none, or the same
one by sha256); ``like_for_like`` names what differs. A drop counts as a regression only when it exceeds both its
threshold and k standard errors of the difference, sqrt(stderr_baseline² + stderr_now²) (each run's own lm-eval
stderr; k = ``eval.max_drop_stderrs``).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from hfpipe.errors import HfpipeError

# Used when a card does not say which way a metric is better (model-index has no field for it).
LOWER_IS_BETTER = frozenset({"perplexity", "word_perplexity", "byte_perplexity", "bits_per_byte",
                             "over_refusal_rate", "ter"})
FACT_NAMES = {"version": "task version", "n_shot": "n-shot", "samples": "samples (limit)",
              "chat_template": "chat template"}


# ----------------------------------------------------------------------------------------------------------------------
# Reading a side: a card's model-index, or an eval stage folder's results.json and samples

def card_evals(path: str | Path) -> tuple[dict[str, dict], dict[str, dict | None]]:
    """({"task/metric": {"value", "stderr"}}, {task: facts or None}) from a model card written by hfpipe (a
    README.md / <name>.md, or its folder). Facts are None for entries that do not record them (older cards)."""
    from huggingface_hub import metadata_load
    from huggingface_hub.repocard_data import model_index_to_eval_results

    from hfpipe.card import read_card
    from hfpipe.stages.eval.results import facts_from_dataset_args

    path = Path(path)
    read_card(path)  # one-line HfpipeError if it is not an hfpipe card
    path = path / "README.md" if path.is_dir() else path
    meta = metadata_load(path) or {}
    if not meta.get("model-index"):
        return {}, {}
    _, results = model_index_to_eval_results(meta["model-index"])
    scores, facts = {}, {}
    for r in results:
        filt = re.search(r"\[(.+)\]$", r.metric_name or "")
        label = r.metric_type + (f":{filt.group(1)}" if filt else "")
        if isinstance(r.metric_value, (int, float)):
            stderr = (r.metric_args or {}).get("stderr")
            scores[f"{r.dataset_type}/{label}"] = {"value": float(r.metric_value),
                                                   "stderr": float(stderr) if _finite(stderr) else None}
            facts[r.dataset_type] = facts_from_dataset_args(r.dataset_args)
    return scores, facts


def card_metrics(path: str | Path) -> dict[str, float]:
    """{"task/metric": value} from a model card written by hfpipe (a README.md / <name>.md, or its folder)."""
    return {k: v["value"] for k, v in card_evals(path)[0].items()}


def results_evals(results: dict) -> tuple[dict[str, dict], dict[str, dict]]:
    """The same as card_evals, from an eval stage's results.json (already loaded)."""
    from hfpipe.stages.eval.results import task_facts

    scores = {}
    for task, entry in (results.get("tasks") or {}).items():
        for metric, m in (entry.get("metrics") or {}).items():
            if _finite(m.get("value")):
                scores[f"{task}/{metric}"] = {"value": float(m["value"]),
                                              "stderr": float(m["stderr"]) if _finite(m.get("stderr")) else None}
    return scores, task_facts(results)


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _side(path: str | Path) -> dict:
    """One side of `hfpipe compare`: {"name", "scores", "facts", "folder" (eval folder or None), "directions"}."""
    path = Path(path)
    results_file = path / "results.json" if path.is_dir() else path if path.suffix == ".json" else None
    if results_file is not None and results_file.is_file():
        try:
            results = json.loads(results_file.read_text(encoding="utf-8"))
        except ValueError as e:
            raise HfpipeError(f"compare: {results_file}: not JSON ({e})", 2) from e
        if not isinstance(results, dict) or not isinstance(results.get("tasks"), dict):
            raise HfpipeError(f"compare: {results_file}: not an eval stage results.json (no 'tasks')", 2)
        scores, facts = results_evals(results)
        directions = {f"{t}/{m}": hib for t, e in results["tasks"].items()
                      for m, hib in (e.get("higher_is_better") or {}).items()}
        name = results_file.parent.name
        return {"name": name, "scores": scores, "facts": facts, "folder": results_file.parent,
                "directions": directions, "tasks": results["tasks"]}
    scores, facts = card_evals(path)
    return {"name": path.parent.name if path.stem == "README" else path.stem, "scores": scores, "facts": facts,
            "folder": None, "directions": {}, "tasks": {}}


# ----------------------------------------------------------------------------------------------------------------------
# Like for like, and the differences

def like_for_like(baseline: dict[str, dict | None], current: dict[str, dict], tasks=None) -> list[str]:
    """One phrase per task (of ``tasks``, default: those both sides scored) whose scores are not comparable:
    ``capitals: samples 8 of 215 there, 20 of 215 here``; [] when every shared task matches."""
    from hfpipe.stages.eval.results import samples_cell

    problems = []
    for task in sorted(tasks if tasks is not None else set(baseline) & set(current)):
        a, b = baseline.get(task), current.get(task)
        if a is None or b is None:
            problems.append(f"{task}: the {'baseline' if a is None else 'current'} run does not record task version, "
                            "n-shot, samples and chat template (a card written before hfpipe recorded them)")
            continue
        for key, label in FACT_NAMES.items():
            if key == "samples":
                there, here = samples_cell(a["samples"], a["total"]), samples_cell(b["samples"], b["total"])
            else:
                there, here = a.get(key), b.get(key)
            if there != here:
                problems.append(f"{task}: {label} {there} there, {here} here")
    return problems


def higher_is_better(key: str, known: dict[str, bool | None] | None = None) -> bool:
    if known and known.get(key) is not None:
        return bool(known[key])
    return key.rsplit("/", 1)[-1].split(":")[0] not in LOWER_IS_BETTER


def diff(baseline: dict[str, float], current: dict[str, float], *, default_threshold: float,
         thresholds: dict[str, float] | None = None, directions: dict[str, bool | None] | None = None,
         baseline_stderr: dict[str, float | None] | None = None, current_stderr: dict[str, float | None] | None = None,
         k: float = 0.0) -> list[dict]:
    """One row per metric of either side; ``drop`` > 0 means worse than the baseline. ``stderr`` is the standard error
    of the difference (from the stderrs either side has); ``tolerance`` = max(threshold, k x stderr); ``regressed``
    when the drop exceeds the tolerance (absolute, in the metric's own units)."""
    rows = []
    for key in sorted(set(baseline) | set(current)):
        base, cur = baseline.get(key), current.get(key)
        ses = [s for s in ((baseline_stderr or {}).get(key), (current_stderr or {}).get(key)) if _finite(s)]
        stderr = math.sqrt(sum(s * s for s in ses)) if ses else None
        threshold = (thresholds or {}).get(key, default_threshold)
        row = {"metric": key, "baseline": base, "current": cur, "delta": None, "drop": None,
               "threshold": threshold, "stderr": stderr, "k": k,
               "tolerance": max(threshold, k * stderr) if stderr is not None else threshold, "regressed": False,
               "higher_is_better": higher_is_better(key, directions)}
        if base is not None and cur is not None and math.isfinite(base) and math.isfinite(cur):
            row["delta"] = cur - base
            row["drop"] = (base - cur) if row["higher_is_better"] else (cur - base)
            row["regressed"] = row["drop"] > row["tolerance"] + 1e-12
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------------------------------------------------
# Per-sample outputs: the items whose answers changed

def read_samples(folder: Path, task: str) -> dict[tuple, dict]:
    """{(doc_id, filter): sample} of an eval folder's samples_<task>.jsonl (lm-eval's log_samples format)."""
    path = Path(folder) / f"samples_{task}.jsonl"
    if not path.is_file():
        return {}
    out = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                s = json.loads(line)
            except ValueError as e:
                raise HfpipeError(f"compare: {path}:{n}: not JSON ({e})", 2) from e
            out[(s.get("doc_id"), s.get("filter"))] = s
    return out


def answer(sample: dict, output_type: str | None) -> str | None:
    """What the model answered on one item: the generated text (generate_until), the chosen continuation
    (multiple_choice: the highest log-likelihood), greedy or not (loglikelihood); None for rolling perplexity."""
    resps = sample.get("filtered_resps") or []
    if output_type == "generate_until":
        return str(resps[0]) if resps else ""
    if output_type == "multiple_choice" and resps:
        lls = [float(r[0]) if isinstance(r, (list, tuple)) else float(r) for r in resps]
        best = max(range(len(lls)), key=lls.__getitem__)
        args = sample.get("arguments") or {}
        choice = (args.get(f"gen_args_{best}") or {}).get("arg_1") if isinstance(args, dict) else None
        return f"{best}: {choice.strip()}" if isinstance(choice, str) else str(best)
    if output_type == "loglikelihood" and resps:
        r = resps[0]
        return str(r[1]) if isinstance(r, (list, tuple)) and len(r) > 1 else str(r)
    return None


def changed_items(folder_a: Path, folder_b: Path, tasks_a: dict, tasks_b: dict) -> list[dict]:
    """Per task both folders scored: the items (same doc_id and document) whose answers differ, with each side's
    answer and per-item metrics. Tasks without a discrete answer (rolling perplexity) have none."""
    rows = []
    for task in sorted(set(tasks_a) & set(tasks_b)):
        kind = tasks_a[task].get("output_type") or tasks_b[task].get("output_type")
        a, b = read_samples(folder_a, task), read_samples(folder_b, task)
        for key in sorted(set(a) & set(b), key=lambda k: (str(k[1]), k[0] if isinstance(k[0], int) else 0)):
            sa, sb = a[key], b[key]
            if sa.get("doc_hash") != sb.get("doc_hash"):
                continue  # not the same document (another task version or data)
            ans_a, ans_b = answer(sa, kind), answer(sb, kind)
            if ans_a is None or ans_a == ans_b:
                continue
            metrics = [m for m in sa.get("metrics") or [] if m in sa and m in sb]
            rows.append({"task": task, "doc_id": key[0], "filter": key[1], "target": sa.get("target"),
                         "a": ans_a, "b": ans_b, "metrics": {m: (sa[m], sb[m]) for m in metrics}})
    return rows


# ----------------------------------------------------------------------------------------------------------------------
# Formatting

def _cell(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 1e5 else f"{v:.4g}"
    return str(v)


def _short(text, width: int = 60) -> str:
    s = json.dumps(text, ensure_ascii=False) if isinstance(text, str) else str(text)
    s = s.replace("|", "\\|")
    return s if len(s) <= width else s[:width - 3] + "..."


def _markdown(header: list[str], body: list[list]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, body)])


def format_table(rows: list[dict], name_a: str, name_b: str) -> str:
    """A markdown table: metric | A | B | B - A | which is better."""
    body = []
    for r in rows:
        better = ""
        if r["delta"] is not None and r["delta"] != 0:
            better = name_b if (r["delta"] > 0) == r["higher_is_better"] else name_a
        arrow = " ↑" if r["higher_is_better"] else " ↓"
        body.append([r["metric"] + arrow, _cell(r["baseline"]), _cell(r["current"]),
                     ("+" if (r["delta"] or 0) > 0 else "") + _cell(r["delta"]), better])
    return _markdown(["metric", name_a, name_b, "delta (B - A)", "better"], body)


def format_items(items: list[dict], name_a: str, name_b: str, max_items: int) -> str:
    """The changed items as a markdown table (at most max_items rows, with a line saying how many were left out)."""
    body = []
    for it in items[:max_items]:
        scores = ", ".join(f"{m} {_cell(x)} → {_cell(y)}" for m, (x, y) in it["metrics"].items())
        body.append([it["task"], it["doc_id"], _short(it["target"], 30), _short(it["a"]), _short(it["b"]), scores])
    text = _markdown(["task", "doc_id", "target", f"answer ({name_a})", f"answer ({name_b})", "item score"], body)
    return text + (f"\n\n({len(items) - max_items} more changed items left out; --max-items N shows more)"
                   if len(items) > max_items else "")


def compare_cards(card_a: str | Path, card_b: str | Path, max_items: int = 20) -> str:
    """Scores side by side, what makes them not like for like, and, when both sides are eval stage folders, the
    items whose answers changed (per task, from the per-sample outputs)."""
    a, b = _side(card_a), _side(card_b)
    if not a["scores"] and not b["scores"]:
        raise HfpipeError(f"compare: neither {card_a} nor {card_b} has evaluation results", 1)
    names = [a["name"], b["name"]] if a["name"] != b["name"] else ["A", "B"]
    directions = {**a["directions"], **b["directions"]}
    rows = diff({k: v["value"] for k, v in a["scores"].items()}, {k: v["value"] for k, v in b["scores"].items()},
                default_threshold=0.0, directions=directions)
    parts = [format_table(rows, *names)]
    problems = like_for_like(a["facts"], b["facts"])
    if problems:
        parts.append("Not like for like (these scores are not comparable): " + "; ".join(problems))
    if a["folder"] is not None and b["folder"] is not None:
        items = changed_items(a["folder"], b["folder"], a["tasks"], b["tasks"])
        shared = sorted(set(a["tasks"]) & set(b["tasks"]))
        parts.append(f"Items whose answers changed: {len(items)} (tasks {', '.join(shared)})" +
                     ("\n\n" + format_items(items, *names, max_items) if items else ""))
    return "\n\n".join(parts)
