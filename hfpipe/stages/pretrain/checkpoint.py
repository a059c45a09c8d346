"""Pretrain checkpoints and pre-emption.

A checkpoint is ``accelerator.save_state`` (model, optimizer, RNG states of python/numpy/torch, and the registered
scheduler and training progress incl. the data position) written into ``checkpoints/.tmp-step-NNNNNNNN/``; a
``COMPLETE`` marker is written (and fsynced) last, then the folder is renamed to ``step-NNNNNNNN`` with one
``os.replace``. Only folders with the marker count, so a kill -9 in the middle of a write leaves the previous
checkpoint the one a re-run resumes from. The last ``keep`` complete checkpoints are kept.

SIGTERM (Slurm pre-emption, ``kill``) and SIGINT (Ctrl-C) only raise a flag; the loop saves a checkpoint at the
next step boundary and raises :class:`TrainingInterrupted` (exit code 128 + signal: 143 for SIGTERM, 130 for
SIGINT), whose one-line message says where it stopped and that re-running resumes. The flag, the error and the
marker are shared with the TRL stages (hfpipe/posttrain/checkpoint.py).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from hfpipe.posttrain.checkpoint import MARKER, StopFlag, TrainingInterrupted  # noqa: F401 (shared; re-exported)
from hfpipe.posttrain.checkpoint import fsync_dir as _fsync_dir


class TrainingProgress:
    """Everything about the loop that is not model/optimizer/scheduler/RNG: step, data position, running sums."""

    def __init__(self, samplers: list):
        self.samplers = samplers  # one BlockSampler per curriculum phase
        self.step = 0
        self.sums: dict = {"train_s": 0.0, "window_s": 0.0, "window_loss": 0.0, "window_steps": 0,
                           "last_train_loss": float("nan"), "val_loss": float("nan")}
        self.domain_tokens: dict = {}

    def state_dict(self) -> dict:
        return {"step": self.step, "sums": dict(self.sums), "domain_tokens": dict(self.domain_tokens),
                "samplers": [s.state_dict() for s in self.samplers]}

    def load_state_dict(self, state: dict) -> None:
        self.step, self.sums, self.domain_tokens = state["step"], dict(state["sums"]), dict(state["domain_tokens"])
        for s, st in zip(self.samplers, state["samplers"]):
            s.load_state_dict(st)


def complete(root: Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("step-*") if (p / MARKER).is_file())


def save(accelerator, root: Path, step: int, keep: int) -> Path:
    """Write a checkpoint atomically (all processes call this); returns its folder."""
    final, tmp = root / f"step-{step:08d}", root / f".tmp-step-{step:08d}"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        for f in tmp.rglob("*"):
            if f.is_file():
                with open(f, "rb+") as fh:
                    os.fsync(fh.fileno())
        with open(tmp / MARKER, "w") as f:  # written last: before this exists the folder is not a checkpoint
            json.dump({"step": step}, f)
            f.flush()
            os.fsync(f.fileno())
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        _fsync_dir(root)
        for old in complete(root)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
        for stale in root.glob(".tmp-step-*"):  # left by a kill during an earlier write
            shutil.rmtree(stale, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def step_of(folder: Path) -> int:
    return json.loads((folder / MARKER).read_text())["step"]
