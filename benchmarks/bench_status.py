"""`hfpipe status` on the tiny recipe, as a user runs it (a fresh process: start-up, planning, fingerprints of every
stage: the import closure of its code and package data, its input files, the pins of the models it reads, library
versions). Cold = an empty hfpipe cache (file digests, installed-library facts); warm = the cache filled.
Target: warm wall <= 1 s, the median of 8 runs after a warm-up (bench.repeated; protocol: README.md).

Run: .venv/bin/python benchmarks/bench_status.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import REPO, repeated, target, write_result  # noqa: E402


def status(cache: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HFPIPE_CACHE_DIR": str(cache), "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-m", "hfpipe.cli", "status", "recipes/tiny.yaml"], check=True, env=env, cwd=REPO,
                   stdout=subprocess.DEVNULL)


def main() -> None:
    with tempfile.TemporaryDirectory() as t:
        cold = repeated("status, cache cold", lambda rep: status(Path(t) / f"cold{rep}"))  # each with its own empty cache
        warm = repeated("status, cache warm", lambda rep: status(Path(t) / "warm"))  # the warm-up fills it
    write_result("status", {"warm_s": warm["wall"], "cold_s": cold["wall"], "warm_cpu_s": warm["cpu"]},
                 [target("hfpipe status, tiny recipe, cache warm (s)", warm["wall"], "<=", 1.0)])


if __name__ == "__main__":
    main()
