"""The tiny recipe end to end: wall time per stage (from each stage's manifest.json), the whole run, and a cached
re-run of the same recipe (every stage skipped by fingerprint), side by side in one process tree.
Target: cached re-run wall / first run wall <= 0.05 (skipping costs planning + hashing, not work).

Run: .venv/bin/python benchmarks/bench_recipe.py [--recipe recipes/tiny.yaml]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import target, write_result  # noqa: E402


def run(recipe: str, runs: Path, cards: Path) -> float:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    t0 = time.perf_counter()
    subprocess.run([str(REPO / ".venv" / "bin" / "hfpipe"), "--runs-dir", str(runs), "--cards-dir", str(cards), "run",
                    recipe], check=True, env=env, cwd=REPO, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--recipe", default="recipes/tiny.yaml")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as t:
        runs, cards = Path(t) / "runs", Path(t) / "cards"
        first = run(args.recipe, runs, cards)
        cached = run(args.recipe, runs, cards)
        per_stage = {}
        for m in sorted(runs.glob("*/*/manifest.json"), key=lambda p: p.stat().st_mtime):
            man = json.loads(m.read_text())
            per_stage[man.get("stage", m.parent.name)] = round(float(man.get("wall_s", 0)), 2)
    figures = {"first_run_wall_s": round(first, 2), "cached_rerun_wall_s": round(cached, 2),
               "cached_over_first": round(cached / first, 4), "stage_wall_s": per_stage,
               "stages_sum_s": round(sum(per_stage.values()), 2), "cpu_count": os.cpu_count()}
    write_result("recipe", figures, [target("cached re-run wall / first run wall", cached / first, "<=", 0.05)],
                 notes=f"{args.recipe} with an empty runs dir, then again (every stage skipped by fingerprint); "
                       "first_run - stages_sum = process start, planning, hashing, card")


if __name__ == "__main__":
    main()
