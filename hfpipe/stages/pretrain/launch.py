"""Multi-process pretraining: the stage runs ``accelerate launch`` on its own worker entry point
(``python -m hfpipe.stages.pretrain --worker <stage folder>/worker.json``), through the launcher it shares with the
TRL stages (hfpipe/posttrain/launch.py: worker.json, rank 0's result, signals relayed to every rank)."""

from __future__ import annotations

from pathlib import Path

from hfpipe.posttrain.launch import (AUTO, MIXED_PRECISION, SPEC, accelerate_config_path,  # noqa: F401 (re-exported)
                                     describe_launch as _describe, launch as _launch, worker_main as _worker_main)
from hfpipe.stages import Inputs

MODULE = "hfpipe.stages.pretrain"


def launch(config, inputs: Inputs, out_dir: Path) -> dict:
    from hfpipe.posttrain.checkpoint import TrainingInterrupted
    from hfpipe.stages.pretrain.checkpoint import complete

    def interrupted(signum: int):  # the ranks died before reporting: name the last complete checkpoint
        done = complete(out_dir / "checkpoints")
        return TrainingInterrupted(signum, int(done[-1].name.split("-")[1]) if done else -1,
                                   done[-1] if done else None)

    return _launch("pretrain", config, inputs, out_dir, module=MODULE, num_processes=config.num_processes,
                   accelerate_config=config.accelerate_config or "ddp", key="pretrain.accelerate_config",
                   mixed_precision=MIXED_PRECISION[config.resolved_precision()], interrupted=interrupted)


def worker_main(spec_path: str) -> int:
    return _worker_main(spec_path)


def describe_launch(config, recipe_dir: Path) -> dict:
    """For `hfpipe run --dry-run`: the `accelerate launch` command line and its config file's settings."""
    return _describe(config.accelerate_config or "ddp", config.num_processes, recipe_dir, MODULE,
                     MIXED_PRECISION.get(config.precision, AUTO), "pretrain.accelerate_config")
