"""`hfpipe inspect RECIPE data`: a seeded sample of what the data stage kept (``data/*.jsonl.gz``) or dropped
(``dropped/<step>/**/*.jsonl.gz``, written by datatrove's exclusion writers with ``metadata.filter_reason``), each
document shown with the step and reason that dropped it, its domain, language, quality score and PII redactions.
"""

from __future__ import annotations

import json
import random
import textwrap
from pathlib import Path

from hfpipe.errors import HfpipeError
from hfpipe.stages.data.corpus import data_files, iter_files

DEDUP_STEPS = {"dedup_exact": "exact duplicate of a kept document",
               "dedup_minhash": "near duplicate of a kept document (MinHash)"}
PREVIEW_CHARS = 480


def sample_docs(folder: Path, *, domain: str | None = None, dropped_by: str | None = None, n: int = 3,
                seed: int = 0) -> tuple[list[tuple[str, dict]], int]:
    """(up to ``n`` documents drawn with ``seed`` from the kept ones, or from those step ``dropped_by`` dropped, of
    ``domain`` if given; how many there were to draw from). One pass over the files (reservoir sampling)."""
    files = _dropped_files(folder, dropped_by) if dropped_by else data_files(folder)
    rng, chosen, seen = random.Random(seed), [], 0
    for text, meta in iter_files(files):
        if domain is not None and meta.get("domain") != domain:
            continue
        seen += 1
        if len(chosen) < n:
            chosen.append((text, meta))
        elif (j := rng.randrange(seen)) < n:
            chosen[j] = (text, meta)
    return chosen, seen


def _dropped_files(folder: Path, step: str) -> list[Path]:
    step = step.replace(":", "_")
    root = folder / "dropped"
    if not root.is_dir():
        raise HfpipeError(f"{folder.name}: no dropped/ folder (the stage ran with data.keep_dropped: false); set it "
                          "true and re-run the data stage", 2)
    known = _chain_steps(folder) | set(DEDUP_STEPS)
    if step == "balance":
        raise HfpipeError("--dropped-by balance: the mixture sampler keeps no copy of what it leaves out (a seeded "
                          "share of what the filters kept); inspect the kept documents instead", 2)
    if step not in known and not (root / step).is_dir():
        raise HfpipeError(f"--dropped-by {step}: not a step of this data stage (its steps: "
                          f"{', '.join(sorted(known))})", 2)
    return sorted((root / step).rglob("*.jsonl.gz"))


def _chain_steps(folder: Path) -> set[str]:
    manifest = _read(folder / "manifest.json") or {}
    chains = (manifest.get("config") or {}).get("chains") or {}
    return {step for steps in chains.values() for step in steps}


def _read(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def drop_counts(folder: Path, domain: str | None = None) -> dict[str, dict[str, int]]:
    """step -> {reason: documents} from stats.json (dedup steps: {"duplicate": documents}); with ``domain``, only the
    drops of that domain's chain."""
    out: dict[str, dict[str, int]] = {}
    for row in (_read(folder / "stats.json") or {}).get("steps", []):
        label = str(row.get("step", ""))
        if domain is not None and not label.startswith(f"{domain}:"):
            continue
        if label.startswith("dedup:"):
            removed = int(row.get("docs_in", 0)) - int(row.get("docs_out", 0))
            if removed:
                out.setdefault(label.replace(":", "_"), {})["duplicate"] = removed
            continue
        step = label.split(":")[-1]
        for key, value in row.items():
            if key.startswith("dropped_") and value:
                reasons = out.setdefault(step, {})
                reasons[key.removeprefix("dropped_")] = reasons.get(key.removeprefix("dropped_"), 0) + int(value)
    return out


def render_sample(folder: Path, *, domain: str | None = None, dropped_by: str | None = None, n: int = 3,
                  seed: int = 0) -> list[str]:
    """The lines `hfpipe inspect RECIPE data` prints."""
    stats = _read(folder / "stats.json") or {}
    domains = sorted(stats.get("domains") or {})
    if domain is not None and domains and domain not in domains:
        raise HfpipeError(f"--domain {domain}: no such domain in this data stage (domains: {', '.join(domains)})", 2)
    docs, total = sample_docs(folder, domain=domain, dropped_by=dropped_by, n=n, seed=seed)
    counts = drop_counts(folder)
    balance = sum(counts.pop("balance", {}).values())
    kept = sum(int(r.get("docs_out", 0)) for r in (stats.get("domains") or {}).values())
    summary = ", ".join(f"{step} {n:,}" for step, n in sorted(((s, sum(r.values())) for s, r in counts.items()),
                                                               key=lambda x: -x[1])) or "nothing"
    summary += f"; the balance sampler left out {balance:,}" if balance else ""
    where = f" of domain {domain}" if domain else ""
    what = f"dropped by {dropped_by}" if dropped_by else "kept"
    reasons = drop_counts(folder, domain).get((dropped_by or "").replace(":", "_"), {})
    why = " (" + ", ".join(f"{r} {n:,}" for r, n in sorted(reasons.items(), key=lambda x: -x[1])) + ")" \
        if len(reasons) > 1 else ""
    lines = [f"{folder.name}: {kept:,} documents kept; dropped: {summary}",
             f"{len(docs)} of {total:,} documents {what}{where}{why} (seed {seed}):"]
    for i, (text, meta) in enumerate(docs, 1):
        lines += [""] + describe_doc(i, len(docs), text, meta, dropped_by)
    return lines


def describe_doc(i: int, n: int, text: str, meta: dict, dropped_by: str | None) -> list[str]:
    """One document: why it was dropped (or that it was kept), what the stage knew of it, the start of its text."""
    if dropped_by:
        step = dropped_by.replace(":", "_")
        reason = meta.get("filter_reason") or DEDUP_STEPS.get(step, "no reason recorded")
        verdict = f"dropped by {step}: {reason}"
    else:
        verdict = "kept"
    declared, detected = meta.get("language"), meta.get("detected_language")
    language = f"{declared}" + (f" (detected {detected}, {meta.get('detected_language_score')})" if detected else "")
    quality = meta.get("quality_score")
    pii = meta.get("pii_redacted") or {}
    facts = [f"domain {meta.get('domain', '?')}", f"language {language}",
             f"quality score {quality}" if quality is not None else "quality score - (no quality_classifier step)",
             "PII redacted: " + (", ".join(f"{k} {v}" for k, v in sorted(pii.items())) or "none")]
    origin = meta.get("origin") or meta.get("source") or "?"
    preview = " ".join(text[:PREVIEW_CHARS].split()) + (" …" if len(text) > PREVIEW_CHARS else "")
    body = textwrap.wrap(preview, width=100) or [""]
    return [f"[{i}/{n}] {verdict}", f"      {origin} · {len(text):,} characters", f"      {' · '.join(facts)}",
            *(f"    │ {line}" for line in body)]
