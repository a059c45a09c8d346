"""A recipe end to end, then cached re-runs (every stage skipped by fingerprint): skipping costs planning and
hashing, not work. Recipe: benchmarks/recipes/bench.yaml (data, tokenizer, pretrain, eval), run once (wall per stage
from each stage's manifest, not timed by the protocol: a first run cannot be repeated without redoing the work),
then the cached re-run measured by bench.repeated (a warm-up, 8 runs; protocol: README.md).
Target: median cached re-run wall / first-run wall <= 0.05.

Run: .venv/bin/python benchmarks/bench_recipe.py
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import hfpipe, repeated, target, write_result  # noqa: E402


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="bench_recipe_"))
    t0 = time.perf_counter()
    hfpipe(root)
    first = time.perf_counter() - t0
    per_stage = {}
    for m in sorted((root / "runs").glob("*/*/manifest.json"), key=lambda p: p.stat().st_mtime):
        man = json.loads(m.read_text())
        per_stage[man.get("stage", m.parent.name)] = round(float(man.get("wall_s", 0)), 2)
    cached = repeated("cached re-run", lambda rep: hfpipe(root))
    ratio = {k: (round(v / first, 4) if k != "n" else v) for k, v in cached["wall"].items()}
    write_result("recipe", {"first_run_wall_s": round(first, 2), "cached_rerun_wall_s": cached["wall"],
                            "cached_over_first": ratio, "stage_wall_s": per_stage,
                            "stages_sum_s": round(sum(per_stage.values()), 2)},
                 [target("cached re-run wall / first run wall (benchmarks/recipes/bench.yaml)", ratio, "<=", 0.05)],
                 notes="first_run - stages_sum = process start, planning, hashing, card")
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
