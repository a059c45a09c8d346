"""Compare evaluation scores: two model cards side by side (``hfpipe compare A B``), and the eval stage's
regression gate against a baseline card.

A card's scores are its model-index ``EvalResult``s (the YAML front matter the card writer fills from the eval
stage's results.json), read with huggingface_hub; ``hfpipe.card.read_card`` first checks that the file is an hfpipe
card. Metric keys are ``<task>/<metric>`` (``<metric>:<filter>`` for a non-default lm-eval filter), the same keys the
eval stage returns.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from hfpipe.errors import HfpipeError

# Used when a card does not say which way a metric is better (model-index has no field for it).
LOWER_IS_BETTER = frozenset({"perplexity", "word_perplexity", "byte_perplexity", "bits_per_byte",
                             "over_refusal_rate", "ter"})


def card_metrics(path: str | Path) -> dict[str, float]:
    """{"task/metric": value} from a model card written by hfpipe (a README.md / <name>.md, or its folder)."""
    from huggingface_hub import metadata_load
    from huggingface_hub.repocard_data import model_index_to_eval_results

    from hfpipe.card import read_card

    path = Path(path)
    read_card(path)  # one-line HfpipeError if it is not an hfpipe card
    path = path / "README.md" if path.is_dir() else path
    meta = metadata_load(path) or {}
    if not meta.get("model-index"):
        return {}
    _, results = model_index_to_eval_results(meta["model-index"])
    out = {}
    for r in results:
        filt = re.search(r"\[(.+)\]$", r.metric_name or "")
        label = r.metric_type + (f":{filt.group(1)}" if filt else "")
        if isinstance(r.metric_value, (int, float)):
            out[f"{r.dataset_type}/{label}"] = float(r.metric_value)
    return out


def higher_is_better(key: str, known: dict[str, bool | None] | None = None) -> bool:
    if known and known.get(key) is not None:
        return bool(known[key])
    return key.rsplit("/", 1)[-1].split(":")[0] not in LOWER_IS_BETTER


def diff(baseline: dict[str, float], current: dict[str, float], *, default_threshold: float,
         thresholds: dict[str, float] | None = None, directions: dict[str, bool | None] | None = None) -> list[dict]:
    """One row per metric of either side; ``drop`` > 0 means worse than the baseline, ``regressed`` when beyond its
    threshold (absolute, in the metric's own units)."""
    rows = []
    for key in sorted(set(baseline) | set(current)):
        base, cur = baseline.get(key), current.get(key)
        row = {"metric": key, "baseline": base, "current": cur, "delta": None, "drop": None,
               "threshold": (thresholds or {}).get(key, default_threshold), "regressed": False,
               "higher_is_better": higher_is_better(key, directions)}
        if base is not None and cur is not None and math.isfinite(base) and math.isfinite(cur):
            row["delta"] = cur - base
            row["drop"] = (base - cur) if row["higher_is_better"] else (cur - base)
            row["regressed"] = row["drop"] > row["threshold"] + 1e-12
        rows.append(row)
    return rows


def _cell(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 1e5 else f"{v:.4g}"
    return str(v)


def format_table(rows: list[dict], name_a: str, name_b: str) -> str:
    """A markdown table: metric | A | B | B - A | which is better."""
    header = ["metric", name_a, name_b, "delta (B - A)", "better"]
    body = []
    for r in rows:
        better = ""
        if r["delta"] is not None and r["delta"] != 0:
            better = name_b if (r["delta"] > 0) == r["higher_is_better"] else name_a
        arrow = " ↑" if r["higher_is_better"] else " ↓"
        body.append([r["metric"] + arrow, _cell(r["baseline"]), _cell(r["current"]),
                     ("+" if (r["delta"] or 0) > 0 else "") + _cell(r["delta"]), better])
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, body)])


def compare_cards(card_a: str | Path, card_b: str | Path) -> str:
    a, b = card_metrics(card_a), card_metrics(card_b)
    if not a and not b:
        raise HfpipeError(f"compare: neither {card_a} nor {card_b} has evaluation results (model-index)", 1)
    names = [p.parent.name if p.stem == "README" else p.stem for p in (Path(card_a), Path(card_b))]
    names = names if names[0] != names[1] else ["A", "B"]
    return format_table(diff(a, b, default_threshold=0.0), *names)
