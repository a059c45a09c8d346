"""`hfpipe status` on the tiny recipe, as a user runs it (a fresh process: start-up, planning, fingerprints of every
stage: the import closure of its code and package data, its input files, the pins of the models it reads, library
versions). Cold = an empty hfpipe cache (file digests, installed-library facts); warm = the cache filled.
Target: warm wall <= 1 s (median of 8 repetitions after a warm-up).

Run: .venv/bin/python benchmarks/bench_status.py
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import REPO, target, write_result  # noqa: E402

REPS = 8


def status(cache: Path) -> float:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HFPIPE_CACHE_DIR": str(cache)}
    t0 = time.perf_counter()
    subprocess.run([str(REPO / ".venv" / "bin" / "hfpipe"), "status", "recipes/tiny.yaml"], check=True, env=env,
                   cwd=REPO, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    with tempfile.TemporaryDirectory() as t:
        cold = []
        for i in range(3):  # each with its own empty cache
            cold.append(status(Path(t) / f"cold{i}"))
        warm_cache = Path(t) / "warm"
        status(warm_cache)  # warm-up: fills the cache
        warm = []
        for i in range(REPS):
            warm.append(status(warm_cache))
            print(f"rep {i + 1}/{REPS}: {warm[-1]:.3f} s", flush=True)
    figures = {"warm_median_s": round(statistics.median(warm), 3), "warm_min_s": round(min(warm), 3),
               "warm_max_s": round(max(warm), 3), "cold_median_s": round(statistics.median(cold), 3), "n": REPS}
    write_result("status", figures, [target("hfpipe status, tiny recipe, cache warm (s)", figures["warm_median_s"],
                                            "<=", 1.0)])


if __name__ == "__main__":
    main()
