"""Pretraining submitted to Slurm: ``sbatch`` a job whose ``srun`` starts ``accelerate launch`` on every node.

Run it (a single-node Slurm on this machine: ``make slurm-up``)::

    hfpipe run recipes/tiny.yaml --only pretrain pretrain.num_processes=2 pretrain.slurm.partition=debug

With ``pretrain.slurm`` set, the stage writes ``worker.json`` as for a local launch (hfpipe/posttrain/launch.py) and
an sbatch script into the stage folder, submits it and waits. The job activates hfpipe's virtualenv and runs one
``srun`` task per node; each runs ``python -m accelerate.commands.launch --num_processes <total> --num_machines
<nodes> --machine_rank $SLURM_NODEID --main_process_ip <first node>`` on the stage's worker entry point, so rank 0
writes ``worker_result.json`` and ``worker_progress.json`` exactly as in a local launch (the folder must be on a
filesystem every node shares). The stage relays rank 0's progress, and returns its metrics or raises its error.

- Pre-emption: ``scancel --signal=TERM <job>`` (or Slurm's own, e.g. ``sbatch_args: {signal: TERM@120}``) reaches
  every rank: they checkpoint and stop (exit 143); re-running the same command resumes from that checkpoint.
  SIGTERM/SIGINT sent to hfpipe itself are relayed the same way.
- A job that ends without rank 0's result (FAILED, CANCELLED, TIMEOUT, NODE_FAIL, ...) is one line naming the job,
  its state and its log (``slurm-<job>.out`` in the stage folder), exit 1.
"""

from __future__ import annotations

import json
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from pydantic import Field

from hfpipe.errors import HfpipeError
from hfpipe.stages import Inputs, StageConfig, progress

ACTIVE = ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "RESIZING", "SIGNALING",
          "STAGE_OUT", "RESV_DEL_HOLD", "REQUEUE_FED", "REQUEUE_HOLD")
SLURM_TIME = r"^(\d+-)?\d+(:\d{1,2}){0,2}$"


class SlurmJob(StageConfig):
    """``pretrain.slurm``: submit the training to Slurm (sbatch + srun + accelerate launch)."""

    partition: str = Field(min_length=1, description="Slurm partition")
    time: str = Field("24:00:00", pattern=SLURM_TIME, description="job time limit, [D-]HH:MM:SS (sbatch --time)")
    nodes: int = Field(1, ge=1, description="machines; pretrain.num_processes (the total) must be a multiple of it")
    cpus_per_task: int | None = Field(None, ge=1, description="CPUs per node (default: the processes on a node)")
    gpus_per_node: int = Field(0, ge=0, description="GPUs per node (sbatch --gpus-per-node); 0 = none requested")
    venv_path: str | None = Field(None, description="virtualenv (folder or bin/activate, relative to the recipe) the "
                                  "job activates; default: the one running hfpipe")
    sbatch_args: dict[str, str] = Field(default_factory=dict, description="any other #SBATCH option, e.g. "
                                        "{account: a, qos: high, signal: TERM@120, exclusive: ''}")
    srun_args: dict[str, str] = Field(default_factory=dict, description="any other srun option")
    poll_s: float = Field(2, gt=0, description="seconds between checks of the job's state (squeue)")


def script(config, inputs: Inputs, out_dir: Path, spec: Path, mixed_precision: str | None) -> str:
    """The sbatch script: #SBATCH lines, hfpipe's environment, one srun task per node running accelerate launch."""
    from hfpipe.posttrain.launch import WORKER_ENV, accelerate_config_path

    s: SlurmJob = config.slurm
    if config.num_processes % s.nodes:
        raise HfpipeError(f"pretrain.num_processes={config.num_processes} is not a multiple of "
                          f"pretrain.slurm.nodes={s.nodes}", 2)
    per_node = config.num_processes // s.nodes
    cfg = accelerate_config_path(config.accelerate_config or "ddp", inputs.recipe_dir)
    args = {"job-name": f"hfpipe-{inputs.recipe_name}-pretrain", "partition": s.partition, "time": s.time,
            "nodes": s.nodes, "ntasks-per-node": 1, "cpus-per-task": s.cpus_per_task or per_node,
            "output": str(out_dir / "slurm-%j.out"), **({"gpus-per-node": s.gpus_per_node} if s.gpus_per_node else {}),
            **s.sbatch_args}
    # the node rank and the head's address are known only inside the job
    launch = node_command(cfg, config.num_processes, spec, mixed_precision, s.nodes, "$SLURM_NODEID", "$HEAD",
                          "$PORT")
    inner = " ".join(a if a.startswith("$") else shlex.quote(a) for a in launch)
    srun = " ".join(f"--{k}={v}" if v else f"--{k}" for k, v in s.srun_args.items())
    lines = ["#!/bin/bash", *(f"#SBATCH --{k}={v}" if v != "" else f"#SBATCH --{k}" for k, v in args.items()),
             f"source {shlex.quote(str(_activate(s.venv_path, inputs.recipe_dir)))}",
             f"export {WORKER_ENV}=1",
             'HEAD=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
             "PORT=$((20000 + SLURM_JOB_ID % 20000))",
             "export HEAD PORT",
             # every task's shell execs accelerate launch: a signal to the step reaches the launcher and the ranks
             f"srun --kill-on-bad-exit=1 {srun} bash -c {shlex.quote('exec ' + inner)}"]
    return "\n".join(lines) + "\n"


def node_command(accelerate_config: Path, num_processes: int, spec: Path, mixed_precision: str | None,
                 num_machines: int, machine_rank: int | str, main_process_ip: str, port: int | str,
                 python: str = "python") -> list[str]:
    """One machine's ``accelerate launch`` of the pretrain worker: ``num_processes`` in all, over ``num_machines``
    (accelerate's --num_machines / --machine_rank / --main_process_ip; torchrun's static rendezvous)."""
    from hfpipe.posttrain.launch import command

    argv = command(accelerate_config, num_processes, "hfpipe.stages.pretrain", str(spec), mixed_precision, port, python)
    argv[3:3] = ["--num_machines", str(num_machines), "--machine_rank", str(machine_rank), "--main_process_ip",
                 main_process_ip]
    return argv


def _activate(venv_path: str | None, recipe_dir: Path) -> Path:
    path = (Path(recipe_dir) / venv_path) if venv_path else Path(sys.prefix)
    if path.is_dir():
        path = path / "bin" / "activate"
    if not path.is_file():
        raise HfpipeError(f"pretrain.slurm.venv_path: {path} is not a virtualenv's activate script (nor its folder)", 2)
    return path


def state(job: str) -> tuple[str, str]:
    """(state, reason) of a job from squeue (('', '') once its record is gone)."""
    out = subprocess.run(["squeue", "--states=all", "-h", "-o", "%T|%r", "-j", job], capture_output=True, text=True)
    first = out.stdout.strip().splitlines()[:1]
    return tuple(first[0].split("|", 1)) if first else ("", "")  # type: ignore[return-value]


def launch(config, inputs: Inputs, out_dir: Path, mixed_precision: str | None) -> dict:
    """Submit the training job, relay its progress, and return rank 0's metrics (or raise its error)."""
    from hfpipe.posttrain.checkpoint import StopFlag, TrainingInterrupted
    from hfpipe.stages.pretrain.checkpoint import complete
    from hfpipe.posttrain.launch import PROGRESS, RESULT, SPEC, _show_progress, collect_result, inputs_json

    out_dir.mkdir(parents=True, exist_ok=True)
    spec = {"stage": "pretrain", "config": config.model_dump(mode="json"), "inputs": inputs_json(inputs),
            "out_dir": str(out_dir)}
    (out_dir / SPEC).write_text(json.dumps(spec, indent=2))
    for name in (RESULT, PROGRESS):
        (out_dir / name).unlink(missing_ok=True)
    path = out_dir / "slurm_job.sh"
    path.write_text(script(config, inputs, out_dir, out_dir / SPEC, mixed_precision))
    try:
        submitted = subprocess.run(["sbatch", "--parsable", str(path)], capture_output=True, text=True)
    except FileNotFoundError:
        raise HfpipeError("pretrain.slurm: sbatch is not on PATH (a single-node Slurm here: `make slurm-up`)", 2) from None
    if submitted.returncode:
        raise HfpipeError(f"pretrain.slurm: sbatch refused the job: {submitted.stderr.strip()[:300]}", 2)
    job = submitted.stdout.strip().split(";")[0]
    log = out_dir / f"slurm-{job}.out"
    progress(f"Slurm job {job}: queued")
    shown, now, last = None, "", ("", "")
    def relay(signum: int) -> None:
        """A signal to hfpipe goes to every process of the running job's steps (the ranks checkpoint and stop; the
        batch shell keeps running and reports); a job still queued is cancelled."""
        running = state(job)[0] == "RUNNING"
        subprocess.run(["scancel", *([f"--signal={signal.Signals(signum).name[3:]}"] if running else []), job],
                       capture_output=True)

    with StopFlag(forward=relay) as stop:
        try:
            while True:
                last = state(job)
                if last[0] not in ACTIVE:
                    break
                if last[0] != now:
                    now = last[0]
                    if now != "RUNNING":
                        progress(f"Slurm job {job}: {now.lower()} ({last[1]})")
                shown = _show_progress(out_dir / PROGRESS, shown)
                time.sleep(config.slurm.poll_s)
        except BaseException:
            subprocess.run(["scancel", job], capture_output=True)
            raise
    metrics = collect_result(out_dir)
    if metrics is not None:
        return metrics
    if stop.signum is not None:  # the ranks died before reporting: name the last complete checkpoint
        done = complete(out_dir / "checkpoints")
        raise TrainingInterrupted(stop.signum, int(done[-1].name.split("-")[1]) if done else -1,
                                  done[-1] if done else None)
    raise HfpipeError(f"pretrain: Slurm job {job} ended {last[0] or '(record gone)'} without a result; see {log}"
                      f"{_last_line(log)}", 1)


def _last_line(log: Path) -> str:
    try:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return f": {lines[-1][:200]}" if lines else ""


def describe(config, recipe_dir: Path) -> dict:
    """For `hfpipe run --dry-run`: what would be submitted."""
    s = config.slurm
    return {"launcher": "slurm (sbatch + srun + accelerate launch)", "partition": s.partition, "time": s.time,
            "nodes": s.nodes, "processes_per_node": config.num_processes // s.nodes, "sbatch_args": dict(s.sbatch_args),
            "srun_args": dict(s.srun_args), "venv": s.venv_path or "(the virtualenv running hfpipe)",
            "note": "pre-emption: scancel --signal=TERM <job> checkpoints every rank; re-run to resume"}

