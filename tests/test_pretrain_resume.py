"""Pretrain checkpoints: exact resume after SIGTERM, and a kill -9 in the middle of a checkpoint write.

The stage runs in a subprocess (as `hfpipe run` would), is stopped, and is re-run on the same folder; the final
weights must equal those of an uninterrupted run bit for bit (torch.equal, i.e. atol=0) on CPU.

Run: .venv/bin/python -m pytest tests/test_pretrain_resume.py -q
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_stage_pretrain import TINY, make_upstream

from hfpipe.stages import Inputs
from hfpipe.stages import pretrain as stage
from hfpipe.stages.pretrain.checkpoint import MARKER, TrainingInterrupted, complete

CFG = {**TINY, "max_steps": 24, "warmup_steps": 2, "log_interval": 1, "eval_interval": 8, "checkpoint_interval": 4,
       "keep_checkpoints": 2}

SCRIPT = """
import json, os, signal, sys
from pathlib import Path
import torch
torch.set_num_threads(1)
from hfpipe.errors import HfpipeError
from hfpipe.stages import Inputs, pretrain as stage
from hfpipe.stages.pretrain import checkpoint as ck
cfg, up, out, kill_at = json.loads(sys.argv[1]), json.loads(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
if kill_at:  # kill -9 right after the optimizer file of this step's checkpoint is written, before the rest
    save = ck.save
    def dying_save(acc, root, step, keep):
        if step == kill_at:
            real = torch.save
            def save_then_die(obj, f, *a, **k):
                real(obj, f, *a, **k)
                os.kill(os.getpid(), signal.SIGKILL)
            torch.save = save_then_die
        return save(acc, root, step, keep)
    ck.save = dying_save
try:
    stage.run(stage.Config(**cfg), Inputs("t", 0, out, {k: Path(v) for k, v in up.items()}), out)
except HfpipeError as e:
    print(e, file=sys.stderr)
    sys.exit(e.exit_code)
"""


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    return make_upstream(tmp_path_factory.mktemp("upstream"))


@pytest.fixture(scope="module")
def straight(upstream, tmp_path_factory):
    """The reference: 24 steps without interruption, in this process (1 torch thread, as the subprocesses)."""
    from safetensors.torch import load_file

    out = tmp_path_factory.mktemp("straight")
    metrics = stage.run(stage.Config(**CFG), Inputs("t", 0, out, upstream), out)
    assert not (out / "checkpoints").exists()  # removed once the model is saved
    return load_file(out / "model" / "model.safetensors"), metrics


def start(upstream, out, kill_at=0):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.Popen([sys.executable, "-c", SCRIPT, json.dumps(CFG), json.dumps({k: str(v) for k, v in upstream.items()}),
                             str(out), str(kill_at)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def assert_same_weights(out, reference):
    import torch
    from safetensors.torch import load_file

    final = load_file(out / "model" / "model.safetensors")
    assert final.keys() == reference.keys()
    assert all(torch.equal(final[k], reference[k]) for k in final)


def test_sigterm_checkpoints_exits_143_and_rerun_resumes_bit_identically(upstream, straight, tmp_path):
    reference, metrics = straight
    out = tmp_path / "run"
    proc = start(upstream, out)
    deadline = time.time() + 120
    while time.time() < deadline:  # wait for step 6 in the curve, then pre-empt
        rows = [json.loads(line) for line in (out / "curves.jsonl").read_text().splitlines()] if (out / "curves.jsonl").exists() else []
        if any(r["step"] >= 6 for r in rows):
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    last = err.strip().splitlines()[-1]
    assert "stopped by SIGTERM at step" in last and "re-run the same command to resume" in last, last
    stopped_at = int(last.split("at step ")[1].split(";")[0])
    assert 6 <= stopped_at < CFG["max_steps"] and not (out / "model").exists()
    assert complete(out / "checkpoints")[-1].name == f"step-{stopped_at:08d}"  # saved where it stopped
    assert len(complete(out / "checkpoints")) <= CFG["keep_checkpoints"]

    resumed = stage.run(stage.Config(**CFG), Inputs("t", 0, out, upstream), out)
    assert resumed["resumed_from_step"] == stopped_at
    assert_same_weights(out, reference)
    assert resumed["val_loss"] == metrics["val_loss"] and resumed["train_loss"] == metrics["train_loss"]
    steps = [json.loads(line)["step"] for line in (out / "curves.jsonl").read_text().splitlines() if '"train_loss"' in line]
    assert steps == list(range(1, 25))  # the curve continues where the checkpoint was, no gap, no duplicate


def test_kill_9_during_a_checkpoint_write_leaves_the_previous_one(upstream, straight, tmp_path):
    reference, _ = straight
    out = tmp_path / "run"
    proc = start(upstream, out, kill_at=8)
    proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL
    ckpts = out / "checkpoints"
    assert [p.name for p in complete(ckpts)] == ["step-00000004"]
    torn = ckpts / ".tmp-step-00000008"
    assert torn.is_dir() and not (torn / MARKER).exists() and any(torn.iterdir())  # half written, not counted

    resumed = stage.run(stage.Config(**CFG), Inputs("t", 0, out, upstream), out)
    assert resumed["resumed_from_step"] == 4
    assert_same_weights(out, reference)


def test_interrupted_error_is_one_line_with_its_exit_code():
    e = TrainingInterrupted(signal.SIGINT, 7, Path("/x/checkpoints/step-00000007"))
    assert e.exit_code == 130 and "\n" not in str(e) and "SIGINT at step 7" in str(e)
