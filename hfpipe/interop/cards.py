"""Committed cards: a card in model_cards/ says what its recipe produced, and must keep saying what the recipe plans.

A stage's full fingerprint covers its config, seed, input files, pins, upstream stages, code and library versions. Its
*config fingerprint* leaves out code and library versions (and takes each upstream stage's config fingerprint instead
of its full one): what the recipe decides. The card carries both (``hfpipe.card``); ``card_staleness`` compares a
committed card with what its recipe plans now:

- failures (the card is stale, ``make cards`` regenerates it): the embedded recipe differs from the recipe file as
  resolved now, or a stage's config fingerprint differs (a recipe key, a default, an input file, a pinned model), or a
  stage is in one and not the other;
- notes (reported, not failures): only code or library versions changed since the card was made.

Check a card: ``python -c "from hfpipe.interop.cards import card_staleness as s; print(s('model_cards/tiny.md',
'recipes/tiny.yaml'))"``.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path

# parts of a stage's fingerprint key that the recipe decides (hfpipe.runner.plan); "code" and "versions" are not
CONFIG_PARTS = ("stage", "config", "seed", "files", "base_model", "pins")


def config_fingerprints(keys: dict[str, dict]) -> dict[str, str]:
    """{stage: config fingerprint} from the stages' fingerprint keys (``StagePlan.key``, a manifest's ``key``), in
    pipeline order: sha256 of the key's CONFIG_PARTS and its upstream stages' config fingerprints."""
    out: dict[str, str] = {}
    for stage, key in keys.items():
        upstream = {s: out.get(s, fp) for s, fp in (key.get("upstream") or {}).items()}
        part = {k: key.get(k) for k in CONFIG_PARTS} | {"upstream": upstream}
        out[stage] = hashlib.sha256(json.dumps(part, sort_keys=True, default=str).encode()).hexdigest()
    return out


def planned_keys(recipe) -> dict[str, dict]:
    """{stage: fingerprint key} the recipe plans now, and {stage: full fingerprint}."""
    from hfpipe import runner

    with tempfile.TemporaryDirectory() as runs:
        plans = runner.plan(recipe, Path(runs))
    return {p.name: p.key for p in plans}, {p.name: p.fingerprint for p in plans}


def card_staleness(card: Path, recipe_path: Path, overrides=()) -> tuple[list[str], list[str]]:
    """(failures, notes) of a committed card against its recipe file (see the module docstring). Nothing is run."""
    from hfpipe.card import read_card_block
    from hfpipe.recipe import load_recipe

    block = read_card_block(card)
    recipe = load_recipe(recipe_path, list(overrides))
    failures, notes = [], []
    if block["recipe_yaml"] != recipe.to_yaml():
        failures.append(f"the recipe embedded in {card} differs from {recipe_path} as resolved now")
    keys, full = planned_keys(recipe)
    planned = config_fingerprints(keys)
    have = block.get("config_fingerprints") or {}
    for stage, fp in planned.items():
        if stage not in block["fingerprints"]:
            failures.append(f"{stage}: in the recipe, not in the card")
        elif have.get(stage) != fp:
            failures.append(f"{stage}: card config fingerprint {str(have.get(stage))[:12]} != planned {fp[:12]}")
        elif block["fingerprints"][stage] != full[stage]:
            notes.append(f"{stage}: only code or library versions changed since the card was made (fingerprint "
                         f"{block['fingerprints'][stage][:12]} -> {full[stage][:12]}); `make cards` refreshes it")
    for stage in set(block["fingerprints"]) - set(planned):
        failures.append(f"{stage}: in the card, not in the recipe")
    return failures, notes
