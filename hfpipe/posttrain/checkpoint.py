"""Checkpoints and pre-emption, shared by pretraining and the TRL stages (sft, preference, rl).

Pre-emption: SIGTERM (Slurm, ``kill``) and SIGINT (Ctrl-C) only raise a flag (:class:`StopFlag`); the training loop
saves a checkpoint at the next step boundary and raises :class:`TrainingInterrupted` (exit code 128 + signal: 143
for SIGTERM, 130 for SIGINT), one line saying where it stopped and that re-running the same command resumes.

TRL stages: the trainer (transformers' ``Trainer``) writes ``<stage folder>/trainer/checkpoint-N/`` (model,
optimizer, scheduler, RNG states of every rank, trainer state with the data position) every ``save_steps`` steps and
when a signal arrived (:func:`checkpoint_callback`). transformers writes that folder in place, so the callback writes
the completion marker (``MARKER``, fsynced) once every rank's files are on disk: a folder without it -- a kill -9
in the middle of a write -- never counts, and :func:`last_complete` hands the previous one to transformers' own
``resume_from_checkpoint``. The callback also keeps only the last ``keep`` complete checkpoints.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

from hfpipe.errors import HfpipeError

MARKER = "COMPLETE"


class TrainingInterrupted(HfpipeError):
    """Training stopped on a signal after saving a checkpoint. exit_code = 128 + signal number (143 = SIGTERM)."""

    def __init__(self, signum: int, step: int, where: Path | None, stage: str = "pretrain"):
        name = signal.Signals(signum).name
        saved = f"checkpoint saved in {where}" if where else "no checkpoint saved"
        super().__init__(f"{stage}: stopped by {name} at step {step}; {saved}; re-run the same command to resume "
                         "from it", 128 + signum)
        self.signum, self.step = signum, step


class StopFlag:
    """While active, SIGTERM/SIGINT set ``signum`` instead of killing the process (``forward`` also relays them)."""

    def __init__(self, forward=None):
        self.signum: int | None = None
        self.forward = forward  # e.g. a child process to pass the signal on to
        self._old: dict = {}

    def _handle(self, signum, frame):
        self.signum = signum
        if self.forward is not None:
            self.forward(signum)

    def __enter__(self):
        for s in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread: signals stay with whoever owns them
                pass
        return self

    def __exit__(self, *exc):
        for s, old in self._old.items():
            signal.signal(s, old)
        self._old.clear()


def fsync_tree(folder: Path) -> None:
    """Every file under ``folder`` and the folder itself on disk."""
    for f in folder.rglob("*"):
        if f.is_file():
            with open(f, "rb+") as fh:
                os.fsync(fh.fileno())
    fsync_dir(folder)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_marker(folder: Path, step: int) -> None:
    """The completion marker, written (and fsynced) last: before it exists the folder is not a checkpoint."""
    with open(folder / MARKER, "w") as f:
        json.dump({"step": step}, f)
        f.flush()
        os.fsync(f.fileno())
    fsync_dir(folder)


# ----------------------------------------------------------------------------------------------------------------------
# TRL stages: transformers' checkpoint-N folders, made atomic by the marker


def _step(folder: Path) -> int:
    try:
        return int(folder.name.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return -1


def trainer_checkpoints(work_dir: Path) -> tuple[list[Path], list[Path]]:
    """(complete, torn) ``checkpoint-N`` folders of a Trainer's ``work_dir``, oldest first."""
    if not work_dir.is_dir():
        return [], []
    found = sorted((p for p in work_dir.glob("checkpoint-*") if p.is_dir() and _step(p) >= 0), key=_step)
    return [p for p in found if (p / MARKER).is_file()], [p for p in found if not (p / MARKER).is_file()]


def last_complete(work_dir: Path, main: bool = True) -> Path | None:
    """The newest complete checkpoint (None: start from scratch). ``main`` removes the torn ones (a write killed
    half way), which transformers would otherwise count or write into."""
    complete, torn = trainer_checkpoints(work_dir)
    if main:
        for p in torn:
            shutil.rmtree(p, ignore_errors=True)
    return complete[-1] if complete else None


def _world():
    """(rank, world size, torch.distributed or None when one process)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), dist
    return 0, 1, None


def checkpoint_callback(stop: StopFlag, keep: int):
    """A transformers TrainerCallback: a signal (``stop``) makes the trainer save at the end of the current step and
    stop (every rank at the same step); after each save, the completion marker and the rotation to ``keep``."""
    from transformers import TrainerCallback

    class Checkpoints(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            stopping = stop.signum is not None
            rank, world, dist = _world()
            if world > 1:  # every rank stops at the same step, whichever got the signal
                import torch

                flag = torch.tensor([float(stopping)])
                dist.all_reduce(flag)
                stopping = bool(flag.item())
                if stopping and stop.signum is None:
                    stop.signum = signal.SIGTERM
            if stopping:
                control.should_save = control.should_training_stop = True

        def on_save(self, args, state, control, **kwargs):
            rank, world, dist = _world()
            if world > 1:
                dist.barrier()  # every rank's RNG state is written
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if rank == 0 and folder.is_dir():
                fsync_tree(folder)
                write_marker(folder, state.global_step)
                complete, torn = trainer_checkpoints(Path(args.output_dir))
                for old in complete[:-keep] + [p for p in torn if _step(p) < state.global_step]:
                    shutil.rmtree(old, ignore_errors=True)
            if world > 1:
                dist.barrier()

    return Checkpoints()


def train_resumable(trainer, stage: str, work_dir: Path, keep: int, main: bool = True):
    """``trainer.train()`` from the last complete checkpoint in ``work_dir`` (transformers' resume_from_checkpoint:
    model, optimizer, scheduler, RNG, data position), with SIGTERM/SIGINT saving at the next step. Returns (the
    TrainOutput, the step it resumed from); a signal raises TrainingInterrupted once the checkpoint is written."""
    resume = last_complete(work_dir, main)
    if trainer.model_wrapped is trainer.model and getattr(trainer.model, "_is_accelerate_prepared", False):
        # the held-out score before training (evaluate()) had accelerate prepare the model for inference and mark it
        # prepared: train() would then skip the DistributedDataParallel wrap and the ranks would train apart
        trainer.model._is_accelerate_prepared = False
    with StopFlag() as stop:
        trainer.add_callback(checkpoint_callback(stop, keep))
        out = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    if stop.signum is not None and trainer.state.global_step < trainer.state.max_steps:  # else: it finished
        where = work_dir / f"checkpoint-{trainer.state.global_step}"
        raise TrainingInterrupted(stop.signum, trainer.state.global_step,
                                  where if (where / MARKER).is_file() or not main else None, stage)
    return out, _step(resume) if resume else 0
