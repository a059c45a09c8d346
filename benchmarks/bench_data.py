"""Data stage, whole job: MB/s per core with 1 worker, and the speed-up of 2 workers over 1 (protocol: README.md).

Workload: benchmarks/recipes/data.yaml (the starter corpus recipe on one shard of each sharded source: every reader,
trafilatura, the default chains with decontamination and PII in every domain, exact + MinHash dedup, balance), 2
tasks. Each side is `hfpipe run benchmarks/recipes/data.yaml --only data --force data data.workers=N` in a fresh
process (start-up, every pass, stats, mixture plot, card); both sides start cold the same way (a fresh process, the
stage folder replaced). Work = raw input bytes (HTML with its markup, gzip counted decompressed). Both sides must
write the same documents (checked).

Targets: median over the 1-worker runs of input MB / wall / 1 core >= 2 MB/s; median of paired ratios (2-worker
MB/s over 1-worker MB/s, wall) >= 1.8.

Run: .venv/bin/python benchmarks/bench_data.py
"""

from __future__ import annotations

import hashlib
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import REPO, hfpipe, paired, stage_dir, target, write_result  # noqa: E402

RECIPE = REPO / "benchmarks" / "recipes" / "data.yaml"


def output_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted((folder / "data").rglob("*")):
        if p.is_file():
            h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


def main() -> None:
    roots = {w: Path(tempfile.mkdtemp(prefix=f"bench_data_w{w}_")) for w in (1, 2)}
    hfpipe(roots[1], "--only", "data", "data.workers=1", recipe=RECIPE)  # bytes_in (not timed)
    metrics = json.loads((stage_dir(roots[1], "data") / "manifest.json").read_text())["metrics"]
    n_bytes = metrics["bytes_in"]
    walls_1 = []

    def side(workers: int):
        def run(rep: int) -> float:
            hfpipe(roots[workers], "--only", "data", "--force", "data", f"data.workers={workers}", recipe=RECIPE)
            return n_bytes
        return run

    result = paired("data", {"2 workers": side(2), "1 worker": side(1)}, reference="1 worker")
    ratio = result["ratios"]["2 workers"]
    walls_1 = [r["wall_s"] for r in result["runs"]["1 worker"]]
    per_core = [n_bytes / 1e6 / w for w in walls_1]
    mbps = {"median": round(statistics.median(per_core), 4), "min": round(min(per_core), 4),
            "max": round(max(per_core), 4), "n": len(per_core)}
    same = output_digest(stage_dir(roots[1], "data")) == output_digest(stage_dir(roots[2], "data"))
    if not same:
        raise SystemExit("1 and 2 workers wrote different documents: not the same work")
    figures = {"input_mb": round(n_bytes / 1e6, 2), "docs_out": metrics["docs_out"], "same_output": same,
               "mb_per_s_per_core_1_worker": mbps, "speedup_2_workers_wall": ratio["wall"],
               "speedup_2_workers_cpu": ratio["cpu"], "runs": result["runs"]}
    write_result("data", figures,
                 [target("data stage (whole job) MB/s per core, 1 worker", mbps, ">=", 2.0),
                  target("speed-up of 2 workers over 1 (both cold)", ratio["wall"], ">=", 1.8)],
                 notes="hfpipe run --only data in a fresh process per run; 2 tasks on both sides (same shards, same "
                       "output, checked); only the worker count differs.")
    for r in roots.values():
        shutil.rmtree(r, ignore_errors=True)


if __name__ == "__main__":
    main()
