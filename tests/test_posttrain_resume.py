"""TRL stage checkpoints: SIGTERM in the middle of SFT, DPO and GRPO, then a re-run; and a kill -9 in the middle of a
checkpoint write.

The stage runs in a subprocess (as `hfpipe run` would), gets SIGTERM once it has trained a few steps, saves a
checkpoint at the next step and exits 143; the same stage is then re-run on the same folder (as `hfpipe run` does with
a RESUMABLE stage's work folder) and resumes through transformers' resume_from_checkpoint. Its final weights must
equal those of an uninterrupted run bit for bit (torch.equal) on CPU, one torch thread everywhere.

Run: .venv/bin/python -m pytest tests/test_posttrain_resume.py -q   (DPO and GRPO: -m slow)
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hfpipe.posttrain.checkpoint import MARKER, TrainingInterrupted, trainer_checkpoints
from hfpipe.stages import Inputs, preference, rl, sft

REPO = Path(__file__).resolve().parent.parent
STAGES = {"sft": sft, "preference": preference, "rl": rl}
CONFIGS = {
    "sft": dict(max_steps=12, learning_rate=3e-3, per_device_batch_size=8, max_length=128, max_eval_rows=8,
                save_steps=4, keep_checkpoints=2),
    "preference": dict(max_steps=8, learning_rate=1e-3, per_device_batch_size=4, max_length=128, mixture_rows=48,
                       max_eval_pairs=8, save_steps=4),
    "rl": dict(reward_model=None, algorithm="grpo", tasks=["arithmetic"], rewards=[{"name": "exact_answer"}],
               learning_rate=1e-3, max_steps=8, per_device_batch_size=4, num_generations=2,
               max_completion_length=4, eval_prompts=4, save_steps=4),
}

# The stage in a subprocess; it writes the optimizer step it is at to <out>/.step (for the test to time its SIGTERM).
# kill_at: SIGKILL itself right after the optimizer file of checkpoint-<kill_at> is written, before the rest.
SCRIPT = """
import json, os, signal, sys
from pathlib import Path
import torch
torch.set_num_threads(1)
import transformers
from hfpipe.errors import HfpipeError
from hfpipe.stages import Inputs, load_module
stage, cfg, model_dir, out = sys.argv[1], json.loads(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4])
kill_at = int(sys.argv[5])
step_file = out / ".step"
class Report(transformers.TrainerCallback):
    def on_step_end(self, args, state, control, **kw):
        step_file.write_text(str(state.global_step))
init = transformers.Trainer.__init__
def patched(self, *a, **k):
    init(self, *a, **k)
    self.add_callback(Report())
transformers.Trainer.__init__ = patched
if kill_at:
    real = torch.save
    def save_then_die(obj, f, *a, **k):
        real(obj, f, *a, **k)
        if str(f).endswith("optimizer.pt") and f"checkpoint-{kill_at}" in str(f):
            os.kill(os.getpid(), signal.SIGKILL)
    torch.save = save_then_die
module = load_module(stage)
inputs = Inputs("t", 0, Path(sys.argv[6]), {"pretrain": model_dir.parent}, model_stage="pretrain", fingerprint="0" * 64)
try:
    module.run(module.Config(**cfg), inputs, out)
except HfpipeError as e:
    print(e, file=sys.stderr)
    sys.exit(e.exit_code)
"""


def _inputs(tiny_model_dir):
    return Inputs("t", 0, REPO / "recipes", {"pretrain": tiny_model_dir.parent}, model_stage="pretrain",
                  fingerprint="0" * 64)


def _weights(out: Path):
    from safetensors.torch import load_file

    return load_file(out / "model" / "model.safetensors")


def _straight(stage: str, tiny_model_dir, tmp_path) -> dict:
    out = tmp_path / f"{stage}-straight"
    out.mkdir()
    STAGES[stage].run(STAGES[stage].Config(**CONFIGS[stage]), _inputs(tiny_model_dir), out)
    assert not (out / "trainer").exists()  # the trainer's checkpoints go once the model is saved
    return _weights(out)


def _start(stage: str, tiny_model_dir, out: Path, kill_at: int = 0) -> subprocess.Popen:
    out.mkdir(exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-c", SCRIPT, stage, json.dumps(CONFIGS[stage]), str(tiny_model_dir),
                             str(out), str(kill_at), str(REPO / "recipes")], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _assert_same_weights(out: Path, reference) -> None:
    import torch

    final = _weights(out)
    assert final.keys() == reference.keys()
    assert all(torch.equal(final[k], reference[k]) for k in final), [k for k in final
                                                                     if not torch.equal(final[k], reference[k])]


def sigterm_then_resume(stage: str, tiny_model_dir, tmp_path) -> None:
    reference = _straight(stage, tiny_model_dir, tmp_path)
    out = tmp_path / f"{stage}-run"
    proc = _start(stage, tiny_model_dir, out)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:  # 3 optimizer steps done (of 8-12), then pre-empt
        try:
            if int((out / ".step").read_text() or 0) >= 3:
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert f"{stage}: stopped by SIGTERM at step" in last and "re-run the same command to resume" in last, last
    stopped_at = int(last.split("at step ")[1].split(";")[0])
    max_steps = CONFIGS[stage]["max_steps"]
    assert 3 <= stopped_at < max_steps and not (out / "model").exists()
    complete, torn = trainer_checkpoints(out / "trainer")
    assert complete[-1].name == f"checkpoint-{stopped_at}" and not torn  # saved where it stopped, marker written
    assert len(complete) <= CONFIGS[stage].get("keep_checkpoints", 2)

    module = STAGES[stage]
    metrics = module.run(module.Config(**CONFIGS[stage]), _inputs(tiny_model_dir), out)
    assert metrics["resumed_from_step"] == stopped_at and metrics["train_steps"] == max_steps
    _assert_same_weights(out, reference)
    assert not (out / "trainer").exists()


def test_sft_sigterm_then_rerun_resumes_bit_identically(tiny_model_dir, tmp_path):
    sigterm_then_resume("sft", tiny_model_dir, tmp_path)


@pytest.mark.slow
def test_dpo_sigterm_then_rerun_resumes_bit_identically(tiny_model_dir, tmp_path):
    sigterm_then_resume("preference", tiny_model_dir, tmp_path)


@pytest.mark.slow
def test_grpo_sigterm_then_rerun_resumes_bit_identically(tiny_model_dir, tmp_path):
    sigterm_then_resume("rl", tiny_model_dir, tmp_path)


@pytest.mark.slow
def test_sft_kill_9_during_a_checkpoint_write_resumes_from_the_previous_one(tiny_model_dir, tmp_path):
    reference = _straight("sft", tiny_model_dir, tmp_path)
    out = tmp_path / "sft-run"
    proc = _start("sft", tiny_model_dir, out, kill_at=8)
    proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL
    complete, torn = trainer_checkpoints(out / "trainer")
    assert [p.name for p in complete] == ["checkpoint-4"]
    assert [p.name for p in torn] == ["checkpoint-8"] and (torn[0] / "optimizer.pt").is_file()  # half written
    assert not (torn[0] / MARKER).exists() and not (torn[0] / "trainer_state.json").exists()

    metrics = sft.run(sft.Config(**CONFIGS["sft"]), _inputs(tiny_model_dir), out)
    assert metrics["resumed_from_step"] == 4
    _assert_same_weights(out, reference)


def test_interrupted_error_names_the_stage_in_one_line():
    e = TrainingInterrupted(signal.SIGTERM, 7, Path("/x/trainer/checkpoint-7"), "sft")
    assert e.exit_code == 143 and "\n" not in str(e) and str(e).startswith("sft: stopped by SIGTERM at step 7")


def test_checkpoint_keys_reach_the_trainer_and_the_dry_run(tmp_path):
    from trl import SFTConfig

    config = sft.Config(max_steps=30, save_steps=10, keep_checkpoints=3)
    args = sft.build_trl_config("sft", SFTConfig, sft.trl_kwargs(config, tmp_path / "trainer", 0, "t"), tmp_path)
    assert args.save_strategy == "steps" and args.save_steps == 10 and args.save_total_limit is None
    assert sft.build_trl_config("sft", SFTConfig, sft.trl_kwargs(sft.Config(save_steps=None), tmp_path, 0, "t"),
                                None).save_strategy == "no"
    info = sft.describe(config, type("R", (), {"recipe_dir": tmp_path})())
    assert info["checkpoints"] == {"at_steps": [10, 20], "kept": 3}
