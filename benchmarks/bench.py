"""Shared helpers for benchmark scripts: timing and the result file every bench writes."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parent.parent
# Importing this module first sets up every bench: this checkout's hfpipe on sys.path, and the Hub offline (benches
# read only files of the repo and the Python install).
sys.path.insert(0, str(REPO))
for _k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY"):
    os.environ.setdefault(_k, "1")


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - t0, out


def target(what: str, value: float, op: str, bound: float) -> dict:
    """One target line, e.g. target('stage vs plain loop tokens/s', 0.97, '>=', 0.95)."""
    met = value >= bound if op == ">=" else value <= bound
    return {"what": what, "value": round(float(value), 4), "target": f"{op} {bound}", "met": bool(met)}


def write_result(name: str, figures: dict, targets: list[dict], notes: str = "") -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{name}.json"
    record = {"name": name, "command": f"python benchmarks/{Path(sys.argv[0]).name}", "figures": figures,
              "targets": targets, "notes": notes, "machine": {"python": platform.python_version(),
                                                             "cpu_count": __import__("os").cpu_count()},
              "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))
    return out
