"""`hfpipe run RECIPE --dry-run`: what a run would do, resolved fully offline.

Validates the recipe, plans it (fingerprints, and per stage whether it would run or be skipped as already done) and
prints, per stage, the engine it drives with its settings: the ``accelerate launch`` command line and its config file,
the datatrove executor (local workers, Slurm or Ray), the lm-eval model arguments; plus the expected tokens, optimizer
steps and checkpoints. Nothing is downloaded, no dataset is read (local input files are only hashed for the
fingerprints, as ``hfpipe status`` does) and no accelerator library is imported, so it runs on a laptop for a recipe
meant for a cluster.

What each stage says comes from the stage itself: its ``describe(config, recipe) -> dict`` (engine, sources or
datasets, expected work); this module only plans, merges and renders.
"""

from __future__ import annotations

import json
from pathlib import Path

MODEL_PLACEHOLDER = "<upstream model folder>"  # a stage's describe() may name the model it loads by this


def _fill(value, placeholder: str, text: str):
    """``value`` with ``placeholder`` replaced by ``text`` in every string inside it."""
    if isinstance(value, str):
        return value.replace(placeholder, text)
    if isinstance(value, dict):
        return {k: _fill(v, placeholder, text) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, placeholder, text) for v in value]
    return value


def describe(recipe, runs_dir: Path) -> dict:
    """The whole dry run as data: per stage, run/skip with its fingerprint, engine settings and expectations."""
    from hfpipe import runner

    stages, plans = [], {}
    for p in runner.plan(recipe, runs_dir):
        plans[p.name] = p
        entry = {"stage": p.name, "fingerprint": p.fingerprint, "folder": str(p.folder),
                 "action": "skip (done)" if p.done else f"run ({runner.stale_reason(p)})",
                 "reads": {**{s: f"{s}-{fp[:12]}" for s, fp in p.upstream.items()}},
                 "input_files": len(p.files)}
        entry.update(p.module.describe(p.config, recipe))
        if "model" in getattr(p.module, "READS", ()):  # name the folder the stage will load
            where = (str(plans[p.model_stage].folder / "model") if p.model_stage
                     else recipe.base_model.name_or_path if recipe.base_model else "<no model>")
            entry = _fill(entry, MODEL_PLACEHOLDER, where)
        stages.append(entry)
    return {"recipe": str(recipe.path) if recipe.path else recipe.name, "name": recipe.name, "seed": recipe.seed,
            "base_model": recipe.base_model.model_dump() if recipe.base_model else None, "stages": stages}


def render(info: dict) -> str:
    """Human-readable dry run: one block per stage."""
    lines = [f"dry run of {info['recipe']} ({info['name']}, seed {info['seed']}): nothing is run, read or downloaded"]
    if info["base_model"]:
        lines.append(f"base_model: {info['base_model']['name_or_path']}")
    for s in info["stages"]:
        lines += ["", f"[{s['stage']}] {s['action']}  fingerprint {s['fingerprint'][:12]}  -> {s['folder']}"]
        eng = dict(s.get("engine", {}))
        if "launch" in eng:
            lines.append(f"  launch: {eng.pop('launch')}")
        if "equivalent_cli" in eng:
            lines.append(f"  lm-eval: {eng.pop('equivalent_cli')}")
        for k, v in eng.items():
            lines.append(f"  {k}: {json.dumps(v) if isinstance(v, (dict, list)) else v}")
        for k in ("sources", "datasets", "tasks"):
            if s.get(k):
                lines.append(f"  {k}: {json.dumps(s[k])}")
        for k, v in (s.get("expected") or {}).items():
            lines.append(f"  expected {k}: {json.dumps(v) if isinstance(v, (dict, list)) else v}")
        if "checkpoints" in s:
            lines.append(f"  checkpoints: {s['checkpoints']}")
    return "\n".join(lines)

