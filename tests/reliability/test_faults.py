"""Faults mid-run: SIGTERM and kill -9 at a seeded random point of each stage, then `hfpipe run` again (finished stages
skipped, the interrupted one resumed or redone, final artifacts equal to an uninterrupted run); kill -9 never leaves a
folder that looks finished; two runs of one recipe at once (the second refused, naming the first's pid); a lock left
by a dead process cleared; non-finite loss stops pretraining with the step named; a fake HF_TOKEN appears in no byte
the run writes.

    python -m pytest -q tests/reliability/test_faults.py            # fast part
    python -m pytest -q -m slow tests/reliability/test_faults.py    # the signal chains over every stage
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from reliability.relhelpers import (BASE_RECIPE, SFT, cli_env, error_lines, finished_folders, hfpipe, make_workspace,
                        write_recipe)

FAKE_TOKEN = "hf_fakeRELIABILITYtoken0123456789abcdefXYZ"
STAGES = ("data", "tokenizer", "pretrain", "sft", "deploy")
RECIPE = {**{k: v for k, v in BASE_RECIPE.items() if k != "deploy"}, "name": "faults", "sft": SFT,
          "deploy": BASE_RECIPE["deploy"]}
SEED = 20240917  # the random kill points are drawn from this


def cli_cmd(work: Path, runs: Path, *args) -> list[str]:
    return [sys.executable, "-m", "hfpipe.cli", "--runs-dir", str(runs), "--cards-dir", str(work / "cards"),
            "run", str(work / "faults.yaml"), *args]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run of the whole recipe, with a fake HF_TOKEN in the environment."""
    work = make_workspace(tmp_path_factory.mktemp("faults"))
    write_recipe(work, RECIPE, "faults.yaml")
    res = subprocess.run(cli_cmd(work, work / "runs"), capture_output=True, text=True, cwd=work,
                         env=cli_env(HF_TOKEN=FAKE_TOKEN))
    assert res.returncode == 0, res.stderr[-3000:]
    (work / "logs").mkdir()
    (work / "logs" / "stdout.txt").write_text(res.stdout)
    (work / "logs" / "stderr.txt").write_text(res.stderr)
    return work


def run_dir(runs: Path) -> Path:
    return runs / "faults"


def artifacts(runs: Path) -> dict[str, str]:
    """What must be equal to the uninterrupted run: each finished folder's name (stage + fingerprint) with the
    fingerprint of its manifest, and the bytes of every model weight file, tokenizer and data shard (decompressed)."""
    out = {}
    for folder in sorted(finished_folders(run_dir(runs))):
        f = run_dir(runs) / folder
        out[f"{folder}/manifest.fingerprint"] = json.loads((f / "manifest.json").read_text())["fingerprint"]
        for p in sorted(f.rglob("*")):
            if p.suffix == ".safetensors" or p.name == "tokenizer.json":
                out[str(p.relative_to(run_dir(runs)))] = hashlib.sha256(p.read_bytes()).hexdigest()
            elif p.name.endswith(".jsonl.gz"):
                out[str(p.relative_to(run_dir(runs)))] = hashlib.sha256(gzip.decompress(p.read_bytes())).hexdigest()
    return out


def assert_nothing_looks_finished_but_is_not(runs: Path, reference_runs: Path) -> None:
    """Every folder without the .partial prefix has a manifest whose fingerprint is its name's, and holds the same
    files as the uninterrupted run's folder of that name."""
    for name in finished_folders(run_dir(runs)):
        folder = run_dir(runs) / name
        manifest = json.loads((folder / "manifest.json").read_text())
        assert manifest["fingerprint"][:12] == name.rsplit("-", 1)[1]
        ref = run_dir(reference_runs) / name
        assert ref.is_dir(), f"{name}: a finished folder the uninterrupted run does not have"
        listing = lambda d: sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.is_file() and p.name != "stage.log")
        assert listing(folder) == listing(ref), f"{name} looks finished but its files differ"


def partial_of(runs: Path, stage: str) -> Path | None:
    return next(iter(run_dir(runs).glob(f".{stage}-*.partial")), None) if run_dir(runs).is_dir() else None


def interrupt_at(work: Path, runs: Path, stage: str, sig: int, delay_s: float):
    """Start `hfpipe run`, wait until `stage` is running, wait delay_s more, send sig; (exit code, stderr)."""
    proc = subprocess.Popen(cli_cmd(work, runs), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            cwd=work, env=cli_env(), start_new_session=True)
    while proc.poll() is None and partial_of(runs, stage) is None:
        time.sleep(0.02)
    time.sleep(delay_s)
    if proc.poll() is None:
        if sig == signal.SIGKILL:  # a lost machine: every process of the run dies at once (datatrove's workers too)
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
    _, err = proc.communicate(timeout=600)
    return proc.returncode, err


# ----------------------------------------------------------------------------------------------------------------
# Secrets


def test_fake_hf_token_is_in_no_byte_written_or_uploaded(reference):
    """Run folder, stage logs, card, terminal output and every byte `hfpipe push` sent to a (loopback) Hub."""
    from hub_server import HubServer  # tests/hub_server.py

    with HubServer({FAKE_TOKEN: "alice"}) as hub:
        push = subprocess.run([*cli_cmd(reference, reference / "runs")[:-2], "push", str(reference / "faults.yaml"),
                               "--repo-id", "alice/faults"], capture_output=True, text=True, cwd=reference,
                              env=cli_env(HF_ENDPOINT=hub.url, HF_TOKEN=FAKE_TOKEN, HF_HUB_OFFLINE="0"))
        assert push.returncode == 0, push.stderr[-2000:]
        uploaded = hub.files("alice/faults", hub.state.repos["alice/faults"].branches and
                             next(iter(b for b in hub.state.repos["alice/faults"].branches if b != "main"), "main"))
        assert "README.md" in uploaded and any(f.endswith(".safetensors") for f in uploaded)
        (reference / "logs" / "push.txt").write_text(push.stdout + push.stderr)
        (reference / "logs" / "upload.bin").write_bytes(b"".join(hub.state.bodies))
    token = FAKE_TOKEN.encode()
    scanned = hits = 0
    for root in (reference / "runs", reference / "cards", reference / "logs"):
        for p in root.rglob("*"):
            if p.is_file():
                data = p.read_bytes()
                scanned += 1
                for form in (token, FAKE_TOKEN.encode("utf-16-le"), token.hex().encode()):
                    hits += data.count(form)
    assert scanned > 20 and (reference / "cards" / "faults.md").is_file()
    assert hits == 0


# ----------------------------------------------------------------------------------------------------------------
# The lock


def test_second_run_of_the_same_recipe_is_refused_naming_the_pid(reference, tmp_path):
    runs = tmp_path / "runs"
    first = subprocess.Popen(cli_cmd(reference, runs, "--until", "tokenizer"), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True, cwd=reference, env=cli_env())
    try:
        while first.poll() is None and partial_of(runs, "data") is None:
            time.sleep(0.02)
        second = subprocess.run(cli_cmd(reference, runs, "--until", "tokenizer"), capture_output=True, text=True,
                                cwd=reference, env=cli_env())
    finally:
        _, err = first.communicate(timeout=600)
    assert first.returncode == 0, err[-2000:]
    lines = error_lines(second.stderr)
    assert second.returncode == 2 and len(lines) == 1, second.stderr[-2000:]
    assert f"pid {first.pid}" in lines[0] and "already being run" in lines[0]


def test_lock_left_by_a_dead_process_is_cleared(reference, tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(run_dir(reference / "runs"), run_dir(runs), ignore=shutil.ignore_patterns(".lock"))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run_dir(runs) / ".lock").write_text(f"pid {dead.pid} on a-crashed-host")
    res = subprocess.run(cli_cmd(reference, runs), capture_output=True, text=True, cwd=reference, env=cli_env())
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"cleared a lock left by pid {dead.pid}" in res.stderr
    assert "running" not in "".join(l for l in res.stderr.splitlines() if "] " in l)  # every stage skipped


# ----------------------------------------------------------------------------------------------------------------
# kill -9 inside a stage: nothing looks finished, the re-run redoes it and matches the uninterrupted run


def test_kill_9_mid_stage_leaves_nothing_finished_and_rerun_matches(reference, tmp_path):
    """The cheap stage of the chain (data), in the fast suite; every stage is covered by the slow chains below."""
    runs = tmp_path / "runs"
    code, _ = interrupt_at(reference, runs, "data", signal.SIGKILL, random.Random(SEED).uniform(0.0, 0.5))
    assert code == -signal.SIGKILL
    assert_nothing_looks_finished_but_is_not(runs, reference / "runs")
    res = subprocess.run(cli_cmd(reference, runs, "--until", "data"), capture_output=True, text=True, cwd=reference,
                         env=cli_env())
    assert res.returncode == 0, res.stderr[-2000:]
    assert "cleared a lock left by pid" in res.stderr
    mine = {k: v for k, v in artifacts(runs).items() if k.startswith("data-")}
    ref = {k: v for k, v in artifacts(reference / "runs").items() if k.startswith("data-")}
    assert mine == ref and mine


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "kill-9"])
def test_signal_at_a_random_point_of_each_stage_then_rerun_equals_uninterrupted(reference, tmp_path, sig):
    ref_runs = reference / "runs"
    walls = {json.loads((run_dir(ref_runs) / f / "manifest.json").read_text())["stage"]:
             json.loads((run_dir(ref_runs) / f / "manifest.json").read_text())["wall_s"]
             for f in finished_folders(run_dir(ref_runs))}
    rng = random.Random(f"{SEED}-{sig}")
    runs = tmp_path / "runs"
    interrupted = []
    for stage in ("data", "tokenizer", "pretrain", "sft"):
        if any(f.startswith(f"{stage}-") for f in finished_folders(run_dir(runs))):
            continue  # an earlier signal landed after this stage had already finished
        code, err = interrupt_at(reference, runs, stage, sig, rng.uniform(0.05, 0.8) * walls[stage])
        if code == 0:
            break  # the whole run finished before the signal: nothing left to interrupt
        assert code == (143 if sig == signal.SIGTERM else -signal.SIGKILL), (code, err[-2000:])
        if sig == signal.SIGTERM:
            lines = [l for l in err.splitlines() if l.startswith("hfpipe: ")]
            assert "Traceback" not in err and lines and ("SIGTERM" in lines[-1]), err[-2000:]
        interrupted.append(stage)
        assert_nothing_looks_finished_but_is_not(runs, ref_runs)
    assert len(interrupted) >= 3, interrupted
    res = subprocess.run(cli_cmd(reference, runs), capture_output=True, text=True, cwd=reference, env=cli_env())
    assert res.returncode == 0, res.stderr[-3000:]
    assert artifacts(runs) == artifacts(ref_runs)


# ----------------------------------------------------------------------------------------------------------------
# Numerical faults

NAN_AT_STEP_3 = """
import torch, transformers
_forward = transformers.LlamaForCausalLM.forward
_calls = {"train": 0}
def forward(self, *a, **k):
    out = _forward(self, *a, **k)
    if self.training:
        _calls["train"] += 1
        if _calls["train"] == 3:
            out.loss = out.loss * float("nan")
    return out
transformers.LlamaForCausalLM.forward = forward
"""


def test_nan_loss_stops_pretraining_with_the_step_named(reference):
    runs = reference / "runs"
    before = finished_folders(run_dir(runs))
    res = hfpipe(["run", reference / "faults.yaml", "pretrain.max_steps=5", "--until", "pretrain"], reference,
                 python_prelude=NAN_AT_STEP_3)
    lines = error_lines(res.stderr)
    assert res.returncode == 1 and len(lines) == 1 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert "non-finite training at step 3" in lines[0] and "loss=nan" in lines[0]
    assert finished_folders(run_dir(runs)) == before  # nothing promoted
    partial = partial_of(runs, "pretrain")
    steps = sorted(p.name for p in (partial / "checkpoints").glob("step-*")) if partial else []
    assert steps == ["step-00000002"], steps  # the last good checkpoint precedes the bad step; none after it
    shutil.rmtree(partial)
