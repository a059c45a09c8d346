"""The benchmark protocol (benchmarks/README.md) is one shared helper: every bench measures through it, and the
helper alternates the sides, warms each up, and reports the median of the paired ratios with min, max and n.

    python -m pytest tests/test_benchmarks.py -v
"""

import ast
import sys
from pathlib import Path

BENCHES = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHES))

import bench  # noqa: E402


def test_every_bench_measures_through_the_shared_protocol():
    files = sorted(BENCHES.glob("bench_*.py"))
    assert len(files) >= 10, files
    for f in files:
        tree = ast.parse(f.read_text())
        called = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
        assert called & {"paired", "repeated"}, f"{f.name} measures without bench.paired/bench.repeated"
        assert "write_result" in called, f"{f.name} writes no result"
        # no bench picks its own statistic: no best-of over repetitions
        src = f.read_text()
        assert "max(stage)" not in src and "min(stage" not in src and "best[" not in src, f.name


def test_paired_alternates_warms_up_and_takes_the_median_of_paired_ratios(monkeypatch):
    calls, clock = [], [0.0]
    durations = {"a": iter([9.0, 1.0, 2.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]),
                 "b": iter([9.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0])}

    def side(name):
        def run(rep):
            calls.append((name, rep))
            clock[0] += next(durations[name])
            return 10  # units of work
        return run

    monkeypatch.setattr(bench.time, "perf_counter", lambda: clock[0])
    result = bench.paired("t", {"a": side("a"), "b": side("b")}, reference="b", reps=8)
    assert calls[:2] == [("a", -1), ("b", -1)]  # a warm-up of each, not counted
    assert calls[2:6] == [("a", 0), ("b", 0), ("b", 1), ("a", 1)]  # the order alternates
    wall = result["ratios"]["a"]["wall"]
    # rates: a = 10/1 (10/2 once), b = 10/2 -> ratios 2 x 7 and 1 x 1: median 2, min 1, max 2, n 8
    assert (wall["median"], wall["min"], wall["max"], wall["n"]) == (2.0, 1.0, 2.0, 8)
    assert len(result["runs"]["a"]) == 8


def test_a_target_is_checked_on_the_median_and_a_short_run_is_not_written(tmp_path, monkeypatch):
    t = bench.target("x", {"median": 0.96, "min": 0.5, "max": 1.2, "n": 8}, ">=", 0.97)
    assert (t["met"], t["value"], t["min"], t["max"], t["n"]) == (False, 0.96, 0.5, 1.2, 8)
    monkeypatch.setattr(bench, "RESULTS", tmp_path)
    bench.write_result("smoke", {}, [bench.target("x", {"median": 1.0, "min": 1.0, "max": 1.0, "n": 2}, ">=", 0.9)])
    assert not (tmp_path / "smoke.json").exists()
    bench.write_result("full", {}, [t])
    assert (tmp_path / "full.json").exists()


def test_the_run_helper_passes_overrides_where_hfpipe_run_takes_them(monkeypatch, tmp_path):
    """bench.hfpipe(root, "--only", "data", "data.workers=1") must be a command hfpipe's own parser accepts, with the
    override as an override (a smoke run of bench_data/bench_eval failed on `unrecognized arguments`)."""
    from hfpipe.cli import build_parser

    seen = []
    monkeypatch.setattr(bench.subprocess, "run", lambda cmd, **kw: seen.append(cmd) or type("R", (), {"returncode": 0})())
    bench.hfpipe(tmp_path, "--only", "eval", "--force", "eval", "eval.latency_batch_sizes=[]")
    argv = seen[0][seen[0].index("hfpipe.cli") + 1:]
    args = build_parser().parse_args(argv)
    assert args.overrides == ["eval.latency_batch_sizes=[]"] and args.only == ["eval"] and args.force == ["eval"]


def test_the_recorded_commit_ignores_the_results_a_run_writes_but_not_a_changed_bench(monkeypatch, tmp_path):
    import subprocess

    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t.invalid", *args], cwd=tmp_path, check=True,
                       capture_output=True)

    (tmp_path / "hfpipe").mkdir()
    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    (tmp_path / "hfpipe" / "runner.py").write_text("x = 1\n")
    (tmp_path / "benchmarks" / "bench_x.py").write_text("y = 1\n")
    (tmp_path / "benchmarks" / "results" / "x.json").write_text("{}\n")
    git("init", "-q")
    git("add", "-A")
    git("commit", "-qm", "base")
    monkeypatch.setattr(bench, "REPO", tmp_path)
    clean = bench.commit()
    assert clean and "+" not in clean and clean != "unknown"
    (tmp_path / "benchmarks" / "results" / "x.json").write_text('{"figure": 1}\n')  # a bench's own result
    assert bench.commit() == clean
    (tmp_path / "benchmarks" / "bench_x.py").write_text("y = 2\n")
    assert bench.commit() == clean + "+changes"
