"""Shared helpers for benchmark scripts: the one measuring protocol every bench uses, and the result file.

The protocol (benchmarks/README.md, fixed before any figure is taken):
- each side is a callable that does the whole user-visible job once and returns the amount of work it did
  (tokens, bytes, requests; 1 for a fixed job); `paired()` times it, wall and CPU (this process and its children);
- a warm-up of each side, then at least MIN_REPS alternated repetitions (A B, B A, A B, ...);
- the figure is the **median of the paired ratios** (rep i: side A's rate over side B's rate in the same pair), with
  min, max and n beside it, for wall time and for CPU time; the target is checked on the wall median unless the bench
  says otherwise in its docstring, before it is run;
- `write_result` records the commit, the date and the load average before and after; a missed target is written as
  missed. Nothing here re-runs anything.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parent.parent
MIN_REPS = 8
# Importing this module first sets up every bench: this checkout's hfpipe on sys.path, and the Hub offline (benches
# read only files of the repo and the Python install).
sys.path.insert(0, str(REPO))
for _k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY"):
    os.environ.setdefault(_k, "1")
LOAD_BEFORE = round(os.getloadavg()[0], 2)


def cpu_seconds() -> float:
    """User + system CPU of this process and of its finished (waited-for) children."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - t0, out


def measure(fn: Callable[[int], float | dict], rep: int) -> dict:
    """One run of one side: wall, CPU and the work it reports (rate = work / time). A side may return a dict instead:
    its "work" and any other figures of the run (peak RSS, the stage's own metrics), kept for `metric_ratios`."""
    t0, c0 = time.perf_counter(), cpu_seconds()
    out = fn(rep)
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    extra = dict(out) if isinstance(out, dict) else {"work": out}
    work = extra.pop("work", None)
    return {"wall_s": wall, "cpu_s": cpu, "work": float(1 if work is None else work), **extra}


def spread(values: list[float]) -> dict:
    return {"median": round(statistics.median(values), 4), "min": round(min(values), 4),
            "max": round(max(values), 4), "n": len(values)}


def paired(label: str, sides: dict[str, Callable[[int], float]], reference: str, reps: int = 0) -> dict:
    """Warm up each side, then `reps` repetitions of every side, the order rotated each time; for each side other
    than `reference`, the median/min/max/n of its rate over the reference's rate in the same repetition (wall and
    CPU). Prints one line per repetition. Returns {"ratios": {side: {"wall": ..., "cpu": ...}}, "runs": ...}."""
    reps = reps or int(os.environ.get("BENCH_REPS", MIN_REPS))  # BENCH_REPS=2: a smoke run, refused by write_result
    names = list(sides)
    for name in names:
        r = measure(sides[name], -1)
        print(f"{label} warm-up {name}: {r['wall_s']:.2f} s wall, {r['cpu_s']:.2f} s CPU", flush=True)
    runs = {name: [] for name in names}
    for rep in range(reps):
        k = rep % len(names)
        for name in names[k:] + names[:k]:
            runs[name].append(measure(sides[name], rep))
        ref = runs[reference][-1]
        line = ", ".join(f"{n} {runs[n][-1]['wall_s']:.2f} s" for n in names)
        ratios = ", ".join(f"{n} {rate(runs[n][-1], 'wall_s') / rate(ref, 'wall_s'):.3f}x" for n in names if n != reference)
        print(f"{label} rep {rep + 1}/{reps}: {line} wall -> {ratios}", flush=True)
    out = {}
    for name in names:
        if name != reference:
            out[name] = {k.split("_")[0]: spread([rate(a, k) / rate(b, k) for a, b in zip(runs[name], runs[reference])])
                         for k in ("wall_s", "cpu_s")}
    return {"label": label, "ratios": out,
            "runs": {n: [{k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()} for r in rs]
                     for n, rs in runs.items()}}


def metric_ratios(result: dict, side: str, reference: str, key: str) -> dict:
    """Median/min/max/n of the per-repetition ratio of one figure a side returned (e.g. peak RSS), side over
    reference, from a `paired()` result: the same pairs, the same statistic."""
    return spread([a[key] / b[key] for a, b in zip(result["runs"][side], result["runs"][reference])])


def rate(run: dict, clock: str) -> float:
    return run["work"] / max(run[clock], 1e-9)


def repeated(label: str, fn: Callable[[int], float], reps: int = 0) -> dict:
    """One side alone (an absolute time, e.g. `hfpipe status`): a warm-up, then `reps` runs; median/min/max/n of
    the wall seconds per unit of work."""
    reps = reps or int(os.environ.get("BENCH_REPS", MIN_REPS))
    measure(fn, -1)
    walls, cpus = [], []
    for rep in range(reps):
        r = measure(fn, rep)
        walls.append(r["wall_s"] / r["work"])
        cpus.append(r["cpu_s"] / r["work"])
        print(f"{label} rep {rep + 1}/{reps}: {walls[-1]:.3f} s wall, {cpus[-1]:.3f} s CPU", flush=True)
    return {"label": label, "wall": spread(walls), "cpu": spread(cpus)}


def target(what: str, value, op: str, bound: float) -> dict:
    """One target line. `value` is a number or a spread from paired()/repeated() (its median is checked)."""
    stats = value if isinstance(value, dict) else {"median": float(value)}
    v = stats["median"]
    met = v >= bound if op == ">=" else v <= bound
    return {"what": what, "value": round(float(v), 4), "min": stats.get("min"), "max": stats.get("max"),
            "n": stats.get("n"), "target": f"{op} {bound}", "met": bool(met)}


def commit() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "hfpipe", "benchmarks",
                                ":!benchmarks/results"],  # the results a run writes are not changes to what it runs
                               cwd=REPO, capture_output=True, text=True).stdout.strip()
        return sha + ("+changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def write_result(name: str, figures: dict, targets: list[dict], notes: str = "") -> Path:
    short = [t["what"] for t in targets if t.get("n") is not None and t["n"] < MIN_REPS]
    if short:
        print(f"not written: fewer than {MIN_REPS} repetitions behind {short} (a smoke run)", flush=True)
        return RESULTS / f"{name}.json"
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{name}.json"
    record = {"name": name, "command": f"python benchmarks/{Path(sys.argv[0]).name}", "figures": figures,
              "targets": targets, "notes": notes, "commit": commit(),
              "machine": {"python": platform.python_version(), "cpu_count": os.cpu_count()},
              "load_avg_1min": {"before": LOAD_BEFORE, "after": round(os.getloadavg()[0], 2)},
              "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))
    return out


BENCH_RECIPE = REPO / "benchmarks" / "recipes" / "bench.yaml"


def hfpipe(root: Path, *args: str, recipe: Path = BENCH_RECIPE) -> None:
    """`hfpipe --runs-dir ROOT/runs --cards-dir ROOT/cards run RECIPE ARGS...` in a fresh process, as a user runs it."""
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(REPO)}  # this checkout's hfpipe
    overrides = [a for a in args if "=" in a and not a.startswith("-")]  # key=value: right after the recipe, where
    options = [a for a in args if a not in overrides]  # `hfpipe run` takes them (not after --only STAGE ...)
    cmd = [sys.executable, "-m", "hfpipe.cli", "--runs-dir", str(root / "runs"), "--cards-dir", str(root / "cards"),
           "run", str(recipe), *overrides, *options]
    done = subprocess.run(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")


def stage_dir(root: Path, stage: str) -> Path:
    """The finished folder of `stage` under ROOT/runs (the newest, if several)."""
    found = sorted((root / "runs").glob(f"*/{stage}-*/manifest.json"), key=lambda p: p.stat().st_mtime)
    if not found:
        found = sorted((root / "runs").rglob(f"{stage}*/manifest.json"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise SystemExit(f"no finished {stage} stage under {root / 'runs'}")
    return found[-1].parent


def python(*args: str) -> None:
    """This interpreter on a script, in a fresh process: the reference side of a bench."""
    subprocess.run([sys.executable, *args], check=True, cwd=REPO,
                   env={**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(REPO)})
