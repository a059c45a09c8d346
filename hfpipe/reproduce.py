"""``hfpipe reproduce CARD``: re-run the recipe a model card carries and say, per stage, whether it came out the same.

The card's hidden ``hfpipe-reproduce`` block holds the resolved recipe, every stage's full fingerprint and a digest of
every stage's outputs (``output_digest``: the weights, tokenizer and data it wrote, not its logs or timings). The recipe
is rebuilt from the block (``recipe_from_yaml``; optional ``key=value`` overrides), run by the ordinary runner into a
fresh run folder, and each stage is compared: fingerprint identical/different, outputs identical/different. The first
stage that diverges is named. On the same machine and library versions every stage should be identical and the
weights bit-identical.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import time
from pathlib import Path

from hfpipe.errors import HfpipeError

SKIP_NAMES = ("README.md", "manifest.json")  # the card (written from the results) and the run record
# Figures that measure the machine, not the result: left out of every comparison, by name (wall_s, tokens_per_s,
# latency_p50_s, mfu, cost/..., started_at, ...).
TIMING = re.compile(r"(^|[_/.])(wall|time|times|seconds|elapsed|duration|latency|throughput|speed|per_s|s|ms|mfu|"
                    r"cost|started_at|timestamp|rss|memory|ttft)([_/.]|$)", re.I)


def deterministic(obj, also: tuple[str, ...] = ()):
    """``obj`` (JSON) without its timing figures (keys matched by TIMING, at any depth) and the keys ``also``."""
    if isinstance(obj, dict):
        return {k: deterministic(v, also) for k, v in obj.items() if not TIMING.search(str(k)) and k not in also}
    if isinstance(obj, list):
        return [deterministic(v, also) for v in obj]
    return obj


def stage_metrics(stage: str, metrics: dict) -> dict:
    """What of a stage's metrics must come out the same: all but timings and its ``NOT_COMPARED`` keys."""
    from hfpipe.stages import STAGES, load_module

    also = tuple(getattr(load_module(stage), "NOT_COMPARED", ())) if stage in STAGES else ()
    return deterministic(metrics, also)


def _hash_safetensors(path: Path, h) -> None:
    """Tensors by name (dtype, shape, bytes) and the metadata, not the file's bytes: the same tensors can be laid out
    in another order (seen with torchao's int8 export: equal tensors, different files)."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        try:
            header = json.loads(f.read(n)) if 0 < n <= path.stat().st_size - 8 else None
        except ValueError:
            header = None
        if not isinstance(header, dict):  # not a safetensors file after all: its bytes
            f.seek(0)
            h.update(f.read())
            return
        start = 8 + n
        h.update(json.dumps(header.pop("__metadata__", {}), sort_keys=True).encode())
        for name in sorted(header):
            info = header[name]
            begin, end = info["data_offsets"]
            f.seek(start + begin)
            h.update(f"{name}:{info['dtype']}:{info['shape']}".encode() + b"\0" + f.read(end - begin))


def output_digest(folder: Path, stage: str) -> str | None:
    """sha256 over what a stage wrote that must come out the same: the files its ``OUTPUTS`` patterns match (relative
    path + content; .gz decompressed, so a gzip header's timestamp does not count; safetensors by tensors) and its
    ``RESULTS`` JSON files without their timing figures. None when the stage declares nothing (then it is not
    compared)."""
    from hfpipe.stages import load_module

    folder, module = Path(folder), load_module(stage)
    files = sorted({p for pattern in getattr(module, "OUTPUTS", ()) for p in folder.glob(pattern)
                    if p.is_file() and p.name not in SKIP_NAMES})
    results = [folder / name for name in getattr(module, "RESULTS", ()) if (folder / name).is_file()]
    if not files and not results:
        return None
    h = hashlib.sha256()
    for p in files:
        h.update(str(p.relative_to(folder)).encode() + b"\0")
        if p.name.endswith(".safetensors"):
            _hash_safetensors(p, h)
        elif p.name.endswith(".gz"):
            with gzip.open(p, "rb") as f:
                while block := f.read(1 << 20):
                    h.update(block)
        else:
            with open(p, "rb") as f:
                while block := f.read(1 << 20):
                    h.update(block)
        h.update(b"\0")
    for p in results:
        h.update(p.name.encode() + b"\0" + json.dumps(deterministic(json.loads(p.read_text())), sort_keys=True).encode())
    return h.hexdigest()


def _differing(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Keys (a/b/c) whose values differ between two JSON mappings."""
    out = []
    for k in sorted(set(a) | set(b), key=str):
        x, y = a.get(k), b.get(k)
        if isinstance(x, dict) and isinstance(y, dict):
            out += _differing(x, y, f"{prefix}{k}/")
        elif x != y:
            out.append(f"{prefix}{k}")
    return out


def compare(card_block: dict, run: dict[str, dict]) -> dict:
    """Per-stage verdicts. ``card_block`` = the card's hidden block; ``run`` = {stage: {"fingerprint", "outputs",
    "metrics"}}. Outputs: the stage's output digest; metrics: its metrics without timings (eval: the task scores).
    A stage with neither in both the card and the run is "not compared": never counted as identical."""
    card_fps = card_block.get("fingerprints") or {}
    card_out = card_block.get("outputs") or {}
    card_metrics = card_block.get("metrics") or {}
    rows, first = [], None
    for stage in list(dict.fromkeys([*card_fps, *run])):
        mine = run.get(stage, {})
        theirs = {"fingerprint": card_fps.get(stage), "outputs": card_out.get(stage),
                  "metrics": card_metrics.get(stage)}
        changed: list[str] = []
        if stage not in run:
            fp, out, met = "missing", "missing", "missing"  # in the card, not in this run
        elif stage not in card_fps:
            fp, out, met = "not in card", "not in card", "not in card"
        else:
            fp = "identical" if mine.get("fingerprint") == theirs["fingerprint"] else "different"
            out = ("not compared" if theirs["outputs"] is None and mine.get("outputs") is None else
                   "not recorded" if theirs["outputs"] is None else
                   "identical" if mine.get("outputs") == theirs["outputs"] else "different")
            if theirs["metrics"] is None or mine.get("metrics") is None:
                met = "not compared" if theirs["metrics"] is None and mine.get("metrics") is None else "not recorded"
            else:
                changed = _differing(theirs["metrics"], mine["metrics"])
                met = "different" if changed else "identical"
        verdicts = (out, met)
        compared = "identical" in verdicts or "different" in verdicts
        same = fp == "identical" and "different" not in verdicts and compared
        if fp != "identical" and first is None or "different" in verdicts and first is None:
            first = stage
        rows.append({"stage": stage, "fingerprint": fp, "outputs": out, "metrics": met, "identical": same,
                     "compared": compared, "changed_metrics": changed,
                     "card_fingerprint": theirs["fingerprint"], "run_fingerprint": mine.get("fingerprint"),
                     "card_outputs": theirs["outputs"], "run_outputs": mine.get("outputs")})
    return {"stages": rows, "first_divergence": first, "identical": first is None and bool(rows),
            "not_compared": [r["stage"] for r in rows if not r["compared"] and r["fingerprint"] == "identical"]}


def _recipe_dir(card: Path) -> Path:
    """Where the card's relative recipe paths point: model_cards/<x>.md -> ../recipes, else the card's folder."""
    sibling = card.resolve().parent.parent / "recipes"
    return sibling if card.resolve().parent.name == "model_cards" and sibling.is_dir() else card.resolve().parent


def load_card_recipe(card: Path, overrides=(), recipe_dir: Path | None = None):
    """The recipe embedded in a card, validated as if it lived in ``recipe_dir``; plus the card's hidden block."""
    import yaml

    from hfpipe.card import read_card_block
    from hfpipe.recipe import _apply_override, parse_override, recipe_from_yaml

    block = read_card_block(card)
    if not block["recipe_yaml"].strip():
        raise HfpipeError(f"{card}: the card carries no recipe (it was written without one)", 2)
    data = yaml.safe_load(block["recipe_yaml"]) or {}
    for text in overrides:
        keys, value = parse_override(text)
        _apply_override(data, keys, value)
    recipe_dir = Path(recipe_dir) if recipe_dir else _recipe_dir(Path(card))
    recipe = recipe_from_yaml(yaml.safe_dump(data, sort_keys=False), recipe_dir / f"{data.get('name', 'recipe')}.yaml")
    return recipe, block


def reproduce(card: Path, runs_base: Path | None = None, *, overrides=(), recipe_dir: Path | None = None,
              into: Path | None = None, console=None) -> dict:
    """Run the card's recipe into ``<runs_base>/reproduce/<name>-<time>/`` (or ``into``, where stages a previous
    reproduce finished are reused) and compare it with the card; ``console`` draws the stages (runner.run)."""
    from hfpipe import runner
    from hfpipe.stages import read_manifest

    recipe, block = load_card_recipe(Path(card), overrides, recipe_dir)
    base = Path(runs_base) if runs_base else Path("runs")
    fresh = Path(into) if into else base / "reproduce" / f"{recipe.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    n = 1
    while fresh.exists() and not into:
        fresh, n = fresh.with_name(f"{recipe.name}-{time.strftime('%Y%m%d-%H%M%S')}-{n}"), n + 1
    runner.run(recipe, fresh, console=console)
    run = {}
    for p in runner.plan(recipe, fresh):
        if p.done:
            run[p.name] = {"fingerprint": p.fingerprint, "outputs": output_digest(p.folder, p.name),
                           "metrics": stage_metrics(p.name, (read_manifest(p.folder) or {}).get("metrics") or {})}
    report = compare(block, run)
    report.update(card=str(card), runs_dir=str(fresh))
    return report


def format_report(report: dict) -> str:
    lines = [f"reproduce {report.get('card', '')} -> {report.get('runs_dir', '')}"]
    for r in report["stages"]:
        verdict = "identical" if r["identical"] else "not compared" if not r.get("compared", True) and \
            r["fingerprint"] == "identical" else "DIFFERENT"
        changed = f" ({', '.join(r['changed_metrics'][:3])})" if r.get("changed_metrics") else ""
        lines.append(f"  {r['stage']:<11} fingerprint {r['fingerprint']:<12} outputs {r['outputs']:<12} "
                     f"metrics {r.get('metrics', '-'):<12} {verdict}{changed}")
    if report["identical"]:
        left = report.get("not_compared") or []
        lines.append(f"every compared stage identical; weights bit-identical; not compared (nothing deterministic "
                     f"recorded): {', '.join(left)}" if left else "every stage identical; weights bit-identical")
    else:
        lines.append(f"first stage that diverges: {report['first_divergence']}")
    return "\n".join(lines)


def stale_reasons(card: Path, recipe_path: Path, overrides=()) -> list[str]:
    """Why a committed card no longer matches what its recipe and the current code would produce: the embedded
    recipe differs from the resolved recipe, or a stage's planned fingerprint (config, inputs, code, library versions)
    differs from the card's. Nothing is run. Empty list = up to date."""
    import tempfile

    from hfpipe import runner
    from hfpipe.card import read_card_block
    from hfpipe.recipe import load_recipe

    block = read_card_block(card)
    recipe = load_recipe(recipe_path, list(overrides))
    reasons = []
    if block["recipe_yaml"] != recipe.to_yaml():
        reasons.append(f"the recipe embedded in {card} differs from {recipe_path} as resolved now")
    with tempfile.TemporaryDirectory() as runs:
        planned = {p.name: p.fingerprint for p in runner.plan(recipe, Path(runs))}
    for stage, fp in planned.items():
        if block["fingerprints"].get(stage) != fp:
            reasons.append(f"{stage}: card fingerprint {str(block['fingerprints'].get(stage))[:12]} != planned {fp[:12]}")
    for stage in set(block["fingerprints"]) - set(planned):
        reasons.append(f"{stage}: in the card, not in the recipe")
    return reasons
