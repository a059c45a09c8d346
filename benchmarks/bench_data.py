"""Data-stage throughput on the starter corpus: MB/s per core (raw input bytes / wall / cores used) with 1 worker,
and the speed-up of 2 workers (2 tasks) over 1, measured side by side in one run on the same recipe.

The recipe is recipes/starter-data.yaml's data section (every source of data/starter: jsonl.gz, text folders, HTML,
WARC; trafilatura; the default chains: language ID, Gopher quality on English, decontamination, PII redaction, the
code filters; exact + MinHash dedup; balance). Targets: >= 1 MB/s per core, >= 1.8x with 2 workers. The machine's
load average before and after is recorded: figures taken while other jobs share the cores understate both. The CPU
seconds of each run (this process and its children: workers, trafilatura's sandbox) are recorded too, with MB per
CPU second: a figure that other jobs on the machine disturb far less than wall time.

Run: .venv/bin/python benchmarks/bench_data.py [--quick]   (--quick: a third of the corpus)
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench import target, write_result  # noqa: E402

from hfpipe.stages import Inputs, data  # noqa: E402


def cpu_seconds() -> float:
    """User + system CPU of this process and of its finished children."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def run_once(section: dict, workers: int, tmp: Path) -> tuple[float, float, dict]:
    """(wall seconds, CPU seconds, metrics) of one run of the stage."""
    config = data.Config(**{**section, "tasks": max(2, workers), "workers": workers})
    out = tmp / f"w{workers}"
    shutil.rmtree(out, ignore_errors=True)
    t0, c0 = time.perf_counter(), cpu_seconds()
    metrics = data.run(config, Inputs(recipe_name="bench", seed=1234, recipe_dir=REPO / "recipes"), out)
    return time.perf_counter() - t0, cpu_seconds() - c0, metrics


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    section = yaml.safe_load((REPO / "recipes/starter-data.yaml").read_text())["data"]
    if args.quick:  # one shard of each sharded source
        for s in section["sources"]:
            if s["path"].endswith("/sotu") or s["path"].endswith("/brown"):
                s["path"] += f"/{Path(s['path']).name}-00000.jsonl.gz"
    from loguru import logger

    logger.remove()  # datatrove's per-file INFO logging is not what we time
    load_before = round(os.getloadavg()[0], 2)
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        wall1, cpu1, m1 = run_once(section, 1, tmp)
        wall2, cpu2, m2 = run_once(section, 2, tmp)
    mb = m1["bytes_in"] / 1e6
    per_core = mb / wall1
    speedup = wall1 / wall2
    figures = {"input_mb": round(mb, 2), "wall_s_1_worker": round(wall1, 2), "wall_s_2_workers": round(wall2, 2),
               "mb_per_s_per_core": round(per_core, 3), "speedup_2_workers": round(speedup, 3),
               "cpu_s_1_worker": round(cpu1, 2), "cpu_s_2_workers": round(cpu2, 2),
               "mb_per_cpu_s_1_worker": round(mb / cpu1, 3),
               "docs_out": m1["docs_out"], "same_output_docs": m1["docs_out"] == m2["docs_out"],
               "cpu_count": os.cpu_count(), "load_avg_1min_before": load_before,
               "load_avg_1min_after": round(os.getloadavg()[0], 2)}
    targets = [target("data stage MB/s per core (1 worker)", per_core, ">=", 1.0),
               target("speed-up of 2 workers over 1", speedup, ">=", 1.8)]
    notes = ("Both runs use 2 tasks (same shards, same output); only the worker count differs. Raw input bytes "
             "include HTML markup and gzip-compressed jsonl are counted decompressed.")
    write_result("data", figures, targets, notes)


if __name__ == "__main__":
    main()
