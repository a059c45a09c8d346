"""Multi-process pretraining: the stage launches ``accelerate launch`` on its own worker entry point.

The runner stays unaware: ``run()`` writes ``worker.json`` (the config and the inputs) into the stage folder, runs
``python -m accelerate.commands.launch --config_file <hfpipe/accelerate/...> --num_processes N -m
hfpipe.stages.pretrain --worker worker.json`` and waits. Every rank trains; rank 0 writes ``worker_result.json``
(metrics, or the one-line error and exit code), which ``run()`` returns or re-raises. SIGTERM/SIGINT sent to the
stage are relayed to the launcher, which relays them to the ranks: they checkpoint and stop together.
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
from hfpipe.stages import Inputs, progress, resolve_path

ACCELERATE_DIR = package_file(ACCELERATE)
SPEC, RESULT = "worker.json", "worker_result.json"


def accelerate_config_path(name_or_path: str, recipe_dir: Path) -> Path:
    """A name under hfpipe/accelerate/ (``ddp``) or a path (relative to the recipe)."""
    if "/" not in name_or_path and not name_or_path.endswith((".yaml", ".yml")):
        path = ACCELERATE_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            have = ", ".join(sorted(p.stem for p in ACCELERATE_DIR.glob("*.yaml")))
            raise HfpipeError(f"pretrain.accelerate_config: no '{name_or_path}' in {ACCELERATE_DIR} (have: {have})", 2)
        return path
    path = resolve_path(name_or_path, recipe_dir)
    if not path.is_file():
        raise HfpipeError(f"pretrain.accelerate_config: file {path} not found", 2)
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(config, inputs: Inputs, out_dir: Path) -> dict:
    from hfpipe.stages.pretrain.checkpoint import StopFlag, TrainingInterrupted, complete

    out_dir.mkdir(parents=True, exist_ok=True)
    spec = {"config": config.model_dump(mode="json"),
            "inputs": {"recipe_name": inputs.recipe_name, "seed": inputs.seed, "recipe_dir": str(inputs.recipe_dir),
                       "upstream": {k: str(v) for k, v in inputs.upstream.items()}, "fingerprint": inputs.fingerprint},
            "out_dir": str(out_dir)}
    (out_dir / SPEC).write_text(json.dumps(spec, indent=2))
    (out_dir / RESULT).unlink(missing_ok=True)
    cfg = accelerate_config_path(config.accelerate_config or "ddp", inputs.recipe_dir)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(cfg),
           "--num_processes", str(config.num_processes), "--main_process_port", str(_free_port()),
           "-m", "hfpipe.stages.pretrain", "--worker", str(out_dir / SPEC)]
    proc = subprocess.Popen(cmd, env={**os.environ, "HFPIPE_PRETRAIN_WORKER": "1"}, start_new_session=True)
    progress(f"training in {config.num_processes} processes", total=config.max_steps, unit="steps")
    with StopFlag(forward=lambda signum: os.killpg(proc.pid, signum)) as stop:  # to the launcher and every rank
        while (rc := proc.poll()) is None:  # the ranks' progress: the last step rank 0 logged to curves.jsonl
            time.sleep(0.5)
            progress(completed=last_logged_step(out_dir / "curves.jsonl"))
    result = json.loads((out_dir / RESULT).read_text()) if (out_dir / RESULT).is_file() else None
    if result and "metrics" in result:
        for name in (SPEC, RESULT):  # launch plumbing with this machine's paths: not part of the promoted result
            (out_dir / name).unlink()
        return result["metrics"]
    if result and "error" in result:
        raise HfpipeError(result["error"], result["exit_code"])
    if stop.signum is not None:
        done = complete(out_dir / "checkpoints")
        raise TrainingInterrupted(stop.signum, -1 if not done else int(done[-1].name.split("-")[1]),
                                  done[-1] if done else None)
    raise HfpipeError(f"pretrain: `accelerate launch` exited with code {rc} and no result "
                      f"(command: {' '.join(cmd)}); see the output above", 1)


def last_logged_step(curves: Path) -> int:
    """The step of the last complete line of a curves.jsonl being written (0 when none)."""
    try:
        with open(curves, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 4096))
            lines = f.read().split(b"\n")[:-1]  # the part after the last newline may be half written
        return int(json.loads(lines[-1])["step"]) if lines else 0
    except (OSError, ValueError, KeyError, IndexError):
        return 0


def worker_main(spec_path: str) -> int:
    """Entry point of every rank: train, and have rank 0 report the outcome for the launching stage."""
    from hfpipe.stages import pretrain

    spec = json.loads(Path(spec_path).read_text())
    i = spec["inputs"]
    inputs = Inputs(recipe_name=i["recipe_name"], seed=i["seed"], recipe_dir=Path(i["recipe_dir"]),
                    upstream={k: Path(v) for k, v in i["upstream"].items()}, fingerprint=i["fingerprint"])
    out_dir = Path(spec["out_dir"])
    rank0 = int(os.environ.get("RANK", "0")) == 0
    try:
        metrics = pretrain.train(pretrain.Config(**spec["config"]), inputs, out_dir)
        outcome, rc = {"metrics": metrics}, 0
    except HfpipeError as e:
        outcome, rc = {"error": str(e), "exit_code": e.exit_code}, e.exit_code
    if rank0:
        tmp = out_dir / (RESULT + ".tmp")
        tmp.write_text(json.dumps(outcome))
        os.replace(tmp, out_dir / RESULT)
    if rc:
        print(f"hfpipe pretrain worker: {outcome['error']}", file=sys.stderr)
    return rc if rc < 256 else 1


def describe_launch(config_name: str, num_processes: int, recipe_dir: Path, module_argv: list[str]) -> dict:
    """For `hfpipe run --dry-run`: the `accelerate launch` command line and the settings of its config file."""
    import yaml

    cfg = accelerate_config_path(config_name, recipe_dir)
    argv = ["python", "-m", "accelerate.commands.launch", "--config_file", str(cfg), "--num_processes",
            str(num_processes), "--main_process_port", "<free port>", *module_argv]
    settings = yaml.safe_load(cfg.read_text()) or {}
    keep = {k: settings[k] for k in ("distributed_type", "mixed_precision", "num_machines") if k in settings}
    if "fsdp_config" in settings:
        keep["fsdp"] = {k.removeprefix("fsdp_"): v for k, v in settings["fsdp_config"].items()}
    if "deepspeed_config" in settings:
        keep["deepspeed"] = settings["deepspeed_config"]
    return {"launch": shlex.join(argv), "accelerate_config": str(cfg), "accelerate_settings": keep}
