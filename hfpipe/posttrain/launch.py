"""Multi-process training through ``accelerate launch``, shared by pretrain and the TRL stages (sft, preference, rl).

A stage whose section asks for more than one process (``num_processes``) or names an ``accelerate_config`` does not
train in the runner's process: :func:`launch` writes ``worker.json`` (the stage's config and inputs) into the stage
folder, runs ``python -m accelerate.commands.launch --config_file <hfpipe/accelerate/...> --num_processes N
[--mixed_precision P] -m <worker module> --worker worker.json`` and waits. Every rank runs the stage's ``run()``
(``WORKER_ENV`` set, so it trains instead of launching again); rank 0 writes ``worker_result.json`` (the metrics, or
the one-line error and its exit code), which :func:`launch` returns or re-raises, and ``worker_progress.json`` (what
the stage reports through ``hfpipe.stages.progress``), which feeds the console's live line. SIGTERM/SIGINT sent to
the stage are relayed to the launcher's process group: the ranks checkpoint and stop together.

Worker entry points: ``python -m hfpipe.stages.pretrain --worker ...`` and ``python -m hfpipe.posttrain --worker ...``
(the TRL stages); both call :func:`worker_main`.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

from hfpipe.errors import HfpipeError
from hfpipe.resources import ACCELERATE, package_file
from hfpipe.stages import BaseModelRef, Inputs, Reporter, progress, reporting, resolve_path

ACCELERATE_DIR = package_file(ACCELERATE)
SPEC, RESULT, PROGRESS = "worker.json", "worker_result.json", "worker_progress.json"
WORKER_ENV = "HFPIPE_WORKER"  # set in every rank: the stage trains instead of launching again
MIXED_PRECISION = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}  # hfpipe precision -> accelerate's name
AUTO = "<auto: bf16 on a GPU that has it, else no>"  # what the dry run shows for precision: auto (resolved at launch)


def accelerate_config_path(name_or_path: str, recipe_dir: Path, key: str = "pretrain.accelerate_config") -> Path:
    """A name under hfpipe/accelerate/ (``ddp``) or a path (relative to the recipe); errors name ``key``."""
    if "/" not in name_or_path and not name_or_path.endswith((".yaml", ".yml")):
        path = ACCELERATE_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            have = ", ".join(sorted(p.stem for p in ACCELERATE_DIR.glob("*.yaml")))
            raise HfpipeError(f"{key}: no '{name_or_path}' in {ACCELERATE_DIR} (have: {have})", 2)
        return path
    path = resolve_path(name_or_path, recipe_dir)
    if not path.is_file():
        raise HfpipeError(f"{key}: file {path} not found", 2)
    return path


def in_worker() -> bool:
    """True inside a rank started by :func:`launch`."""
    return bool(os.environ.get(WORKER_ENV))


def is_main_process() -> bool:
    """Rank 0 (or no launcher at all): the process that writes the stage's files."""
    return int(os.environ.get("RANK", "0")) == 0


def barrier() -> None:
    """Wait for every rank (nothing to wait for in one process)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def shared_dataset(rows: list[dict], folder: Path):
    """``datasets.Dataset.from_list(rows)``; in several ranks, backed by files in ``folder`` that every rank shares
    (rank 0 writes them), so that the caches TRL writes next to a dataset (DPO's reference log-probs) are shared too:
    an in-memory dataset caches into a temporary folder of its own process. Call it after the TRL config is built
    (which sets up the processes' state)."""
    from datasets import Dataset, load_from_disk

    if not in_worker() or int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return Dataset.from_list(rows)
    import shutil

    from accelerate import PartialState

    state = PartialState()  # the one the TRL config set up
    if state.is_main_process:
        shutil.rmtree(folder, ignore_errors=True)
        Dataset.from_list(rows).save_to_disk(str(folder))
    state.wait_for_everyone()
    return load_from_disk(str(folder))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command(config_file: Path, num_processes: int, module: str, spec: str, mixed_precision: str | None = None,
            port: str | int = "<free port>", python: str = "python") -> list[str]:
    """The ``accelerate launch`` command line (``mixed_precision`` overrides the config file's)."""
    mp = ["--mixed_precision", mixed_precision] if mixed_precision else []
    return [python, "-m", "accelerate.commands.launch", "--config_file", str(config_file), "--num_processes",
            str(num_processes), *mp, "--main_process_port", str(port), "-m", module, "--worker", spec]


def inputs_json(inputs: Inputs) -> dict:
    return {"recipe_name": inputs.recipe_name, "seed": inputs.seed, "recipe_dir": str(inputs.recipe_dir),
            "upstream": {k: str(v) for k, v in inputs.upstream.items()}, "manifests": inputs.manifests,
            "model_stage": inputs.model_stage, "fingerprint": inputs.fingerprint, "recipe_yaml": inputs.recipe_yaml,
            "base_model": inputs.base_model.model_dump() if inputs.base_model else None}


def inputs_from_json(i: dict) -> Inputs:
    return Inputs(recipe_name=i["recipe_name"], seed=i["seed"], recipe_dir=Path(i["recipe_dir"]),
                  upstream={k: Path(v) for k, v in i["upstream"].items()}, manifests=i.get("manifests") or {},
                  model_stage=i.get("model_stage"), fingerprint=i.get("fingerprint", ""),
                  recipe_yaml=i.get("recipe_yaml", ""),
                  base_model=BaseModelRef(**i["base_model"]) if i.get("base_model") else None)


def launch(stage: str, config, inputs: Inputs, out_dir: Path, *, module: str, num_processes: int,
           accelerate_config: str, key: str, mixed_precision: str | None = None, interrupted=None) -> dict:
    """Run ``stage`` in ``num_processes`` ranks under ``accelerate launch`` and return rank 0's metrics (or raise its
    error). ``key``: the recipe key of the accelerate config (for errors); ``interrupted(signum)``: the error to raise
    when a signal stopped the ranks and none reported back."""
    from hfpipe.posttrain.checkpoint import StopFlag, TrainingInterrupted

    out_dir.mkdir(parents=True, exist_ok=True)
    spec = {"stage": stage, "config": config.model_dump(mode="json"), "inputs": inputs_json(inputs),
            "out_dir": str(out_dir)}
    (out_dir / SPEC).write_text(json.dumps(spec, indent=2))
    for name in (RESULT, PROGRESS):
        (out_dir / name).unlink(missing_ok=True)
    cfg = accelerate_config_path(accelerate_config, inputs.recipe_dir, key)
    cmd = command(cfg, num_processes, module, str(out_dir / SPEC), mixed_precision, _free_port(), sys.executable)
    proc = subprocess.Popen(cmd, env={**os.environ, WORKER_ENV: "1"}, start_new_session=True)
    progress(f"starting {num_processes} processes")
    shown = None
    with StopFlag(forward=lambda signum: os.killpg(proc.pid, signum)) as stop:  # to the launcher and every rank
        while (rc := proc.poll()) is None:
            time.sleep(0.5)
            shown = _show_progress(out_dir / PROGRESS, shown)
    metrics = collect_result(out_dir)
    if metrics is not None:
        return metrics
    if stop.signum is not None:
        raise interrupted(stop.signum) if interrupted else TrainingInterrupted(stop.signum, -1, None, stage)
    raise HfpipeError(f"{stage}: `accelerate launch` exited with code {rc} and no result "
                      f"(command: {shlex.join(cmd)}); see stage.log", 1)


def _show_progress(path: Path, shown):
    """Relay rank 0's progress (worker_progress.json) to this process's live line; returns what is now shown."""
    try:
        p = json.loads(path.read_text())
    except (OSError, ValueError):
        return shown
    if shown is None or p["description"] != shown["description"]:
        progress(p["description"], total=p["total"], unit=p["unit"], completed=p["completed"])
    elif p["completed"] != shown["completed"]:
        progress(completed=p["completed"])
    return p


class FileReporter(Reporter):
    """Rank 0's ``progress()`` calls, written to worker_progress.json (at most twice a second) for the launcher."""

    def __init__(self, path: Path):
        self.path, self.state, self.written = path, None, 0.0

    def update(self, description, total, advance, completed, unit) -> None:
        if description is not None or self.state is None:
            self.state = {"description": description or "", "total": total, "unit": unit, "completed": completed or 0}
            self.written = 0.0
        else:
            self.state["completed"] = completed if completed is not None else self.state["completed"] + advance
        now = time.monotonic()
        if now - self.written >= 0.5 or description is not None:
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.state))
            os.replace(tmp, self.path)
            self.written = now


def worker_main(spec_path: str) -> int:
    """Entry point of every rank: run the stage, and have rank 0 report the outcome for the launching stage."""
    from hfpipe.stages import load_module

    spec = json.loads(Path(spec_path).read_text())
    stage = load_module(spec["stage"])
    inputs, out_dir = inputs_from_json(spec["inputs"]), Path(spec["out_dir"])
    rank0 = is_main_process()
    try:
        with reporting(FileReporter(out_dir / PROGRESS) if rank0 else Reporter()):
            metrics = stage.run(stage.Config(**spec["config"]), inputs, out_dir)
        outcome, rc = {"metrics": metrics}, 0
    except HfpipeError as e:
        outcome, rc = {"error": str(e), "exit_code": e.exit_code}, e.exit_code
    if rank0:
        tmp = out_dir / (RESULT + ".tmp")
        tmp.write_text(json.dumps(outcome))
        os.replace(tmp, out_dir / RESULT)
    if rc:
        print(f"hfpipe {spec['stage']} worker: {outcome['error']}", file=sys.stderr)
    return rc if rc < 256 else 1


def describe_launch(config_name: str, num_processes: int, recipe_dir: Path, module: str,
                    mixed_precision: str | None = None, key: str = "pretrain.accelerate_config") -> dict:
    """For `hfpipe run --dry-run`: the `accelerate launch` command line and the settings of its config file."""
    import yaml

    cfg = accelerate_config_path(config_name, recipe_dir, key)
    argv = command(cfg, num_processes, module, f"<stage folder>/{SPEC}", mixed_precision)
    settings = yaml.safe_load(cfg.read_text()) or {}
    keep = {k: settings[k] for k in ("distributed_type", "mixed_precision", "num_machines") if k in settings}
    if mixed_precision:
        keep["mixed_precision"] = mixed_precision
    if "fsdp_config" in settings:
        keep["fsdp"] = {k.removeprefix("fsdp_"): v for k, v in settings["fsdp_config"].items()}
    if "deepspeed_config" in settings:
        keep["deepspeed"] = settings["deepspeed_config"]
    return {"launch": shlex.join(argv), "accelerate_config": str(cfg), "accelerate_settings": keep}


def resolve_precision(precision: str) -> str:
    """auto -> bf16 on a CUDA device that supports it, else fp32 (every training stage, pretraining included)."""
    if precision != "auto":
        return precision
    import torch

    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"


def collect_result(out_dir: Path) -> dict | None:
    """After the ranks ended (local launch or Slurm): rank 0's metrics, or its error raised as it was; None when no
    rank reported. Removes the launch plumbing, which names this machine's paths and is not part of the result."""
    result = json.loads((out_dir / RESULT).read_text()) if (out_dir / RESULT).is_file() else None
    for name in (SPEC, RESULT, PROGRESS):
        (out_dir / name).unlink(missing_ok=True)
    if result and "metrics" in result:
        return result["metrics"]
    if result and "error" in result:
        raise HfpipeError(result["error"], result["exit_code"])
    return None
