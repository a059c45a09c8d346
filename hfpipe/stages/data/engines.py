"""Where the data stage's datatrove passes run: locally, on Slurm, or on Ray (``data.executor``).

Run the data stage on each engine (the cluster tests, ``make cluster_test``, do this on one machine)::

    make slurm-up && hfpipe run recipes/tiny.yaml --only data data.executor=slurm data.slurm.partition=debug
    hfpipe run recipes/tiny.yaml --only data data.executor=ray

The stage hands every pass to :class:`Passes` in order. ``local`` and ``ray`` run a pass when it is handed over
(datatrove's LocalPipelineExecutor / RayPipelineExecutor); ``slurm`` only builds each pass's
SlurmPipelineExecutor with ``depends=`` the previous one, and :meth:`Passes.wait` submits the whole chain at once
(datatrove launches each dependency first, with ``--dependency=afterok:<job>``) and watches it:

- every job runs inside hfpipe's environment: the recipe's ``slurm.venv_path`` (or ``options.env_command`` /
  ``options.condaenv``), else the virtualenv of the Python running hfpipe, activated by the job script;
- a task that fails, is cancelled (``scancel``), times out or dies with its node ends the stage at the next poll with
  one line naming the pass, the task and its Slurm log; every job of the chain still queued (the dependants Slurm
  would keep pending forever with ``DependencyNeverSatisfied``) is cancelled;
- the whole chain has a time limit (``slurm.max_wait``) besides each task's own (``slurm.time``);
- ``slurm.options`` / ``ray.options`` pass any other argument of datatrove's executor through, checked against its
  signature before the run starts (``preflight``).
"""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from hfpipe.errors import HfpipeError

# states in which a Slurm job has ended without success (squeue --states=all)
SLURM_FAILED = ("FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE", "PREEMPTED",
                "REVOKED", "SPECIAL_EXIT")
# executor arguments hfpipe sets itself: recipe key to use instead
MANAGED = {"pipeline": "data.chains", "tasks": "data.tasks", "workers": "data.workers", "logging_dir": "(the stage "
           "folder's datatrove_logs/)", "skip_completed": "(always false: a re-run redoes every pass)",
           "depends": "(hfpipe chains the passes)", "depends_job_id": "(hfpipe chains the passes)",
           "job_id_retriever": "(hfpipe records the job ids)", "job_name": "(hfpipe-<pass>)",
           "time": "data.slurm.time", "partition": "data.slurm.partition", "cpus_per_task": "cpus_per_task",
           "mem_per_cpu_gb": "mem_per_cpu_gb", "qos": "data.slurm.qos", "venv_path": "data.slurm.venv_path",
           "sbatch_args": "data.slurm.sbatch_args"}


def _executor_class(name: str):
    if name == "slurm":
        from datatrove.executor import SlurmPipelineExecutor as cls
    elif name == "ray":
        from datatrove.executor import RayPipelineExecutor as cls
    else:
        from datatrove.executor import LocalPipelineExecutor as cls
    return cls


def check_options(config) -> None:
    """``data.slurm.options`` / ``data.ray.options``: every key an argument of datatrove's executor that hfpipe does
    not set itself; else one line, exit 2, with the closest argument or the recipe key to use."""
    import difflib

    for engine in ("slurm", "ray"):
        options = getattr(config, engine).options
        if not options:
            continue
        cls = _executor_class(engine)
        accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
        for key in options:
            where = f"data.{engine}.options.{key}"
            if key in MANAGED or key in type(getattr(config, engine)).model_fields:
                use = MANAGED.get(key, key)
                use = use if use.startswith("(") or use.startswith("data.") else f"data.{engine}.{use}"
                raise HfpipeError(f"{where}: hfpipe sets {cls.__name__}({key}=...) itself; use {use} instead", 2)
            if key not in accepted:
                close = difflib.get_close_matches(key, accepted, n=1)
                hint = f"; did you mean '{close[0]}'?" if close else ""
                raise HfpipeError(f"{where}: not an argument of datatrove's {cls.__name__}{hint}", 2)


def job_environment(venv_path: str | None, options: dict) -> dict:
    """The job script's environment activation: the recipe's choice, else the running Python's virtualenv."""
    if options.get("env_command") or options.get("condaenv"):
        return {}
    path = Path(venv_path) if venv_path else Path(sys.prefix) / "bin" / "activate"
    if path.is_dir():  # the virtualenv's folder: its activate script
        path = path / "bin" / "activate"
    if path.is_file():
        return {"venv_path": str(path)}
    if venv_path:
        raise HfpipeError(f"data.slurm.venv_path: {path} is not a virtualenv's activate script (nor its folder)", 2)
    # no virtualenv (a system or conda Python): put the running interpreter's scripts first on the job's PATH
    return {"env_command": f"export PATH={Path(sys.executable).parent}:$PATH"}


def make_executor(config, pipeline: list, tasks: int, logging_dir: Path, depends=None, recorder=None,
                  recipe_dir: Path | None = None):
    """The datatrove executor of one pass, with every recipe option passed through."""
    common = dict(tasks=tasks, logging_dir=str(logging_dir), skip_completed=False)
    cls = _executor_class(config.executor)
    if config.executor == "slurm":
        s = config.slurm
        venv = str(Path(recipe_dir or ".") / s.venv_path) if s.venv_path else None
        return cls(pipeline, time=s.time, partition=s.partition, cpus_per_task=s.cpus_per_task,
                   mem_per_cpu_gb=s.mem_per_cpu_gb, qos=s.qos, sbatch_args=dict(s.sbatch_args) or None,
                   workers=config.workers if config.workers < tasks else -1, job_name=f"hfpipe-{logging_dir.name}",
                   depends=depends, **({"job_id_retriever": recorder} if recorder else {}),
                   **job_environment(venv, s.options), **s.options, **common)
    if config.executor == "ray":
        r = config.ray
        return cls(pipeline, workers=config.workers, cpus_per_task=r.cpus_per_task, mem_per_cpu_gb=r.mem_per_cpu_gb,
                   **r.options, **common)
    return cls(pipeline, workers=min(config.workers, tasks), start_method="fork", **common)


def incomplete(logging_dir: Path, tasks: int) -> list[int]:
    """Ranks of a pass without datatrove's completion marker."""
    done = {p.name for p in (logging_dir / "completions").glob("*")}
    return [r for r in range(tasks) if f"{r:05d}" not in done]


# ---------------------------------------------------------------------------------------------------------------------
# the passes of one stage run


class Passes:
    """The data stage's passes on the recipe's executor. ``run`` each pass in order, then ``wait`` once."""

    def __init__(self, config, recipe_dir: Path | None = None):
        self.config, self.recipe_dir = config, recipe_dir
        self.deferred = config.executor == "slurm"  # results exist only after wait()
        self.slurm = SlurmChain(config, recipe_dir) if self.deferred else None
        self._ray_started = False

    def run(self, pipeline: list, tasks: int, logging_dir: Path) -> None:
        if self.slurm is not None:
            self.slurm.add(pipeline, tasks, logging_dir)
            return
        if self.config.executor == "ray":
            self._ray_init()
        make_executor(self.config, pipeline, tasks, logging_dir, recipe_dir=self.recipe_dir).run()
        if self.config.executor == "ray":  # datatrove only logs a warning when a Ray task failed
            missing = incomplete(logging_dir, tasks)
            if missing:
                log = logging_dir / "logs" / f"task_{missing[0]:05d}.log"
                raise HfpipeError(f"data: Ray task {missing[0]} of pass {logging_dir.name} did not complete "
                                  f"({len(missing)} of {tasks} incomplete); see {log}{_last_line(log)}", 1)

    def wait(self) -> None:
        """Slurm: submit the chain and wait for it; then (every engine) release what this run started."""
        try:
            if self.slurm is not None:
                self.slurm.wait()
        finally:
            self.close()

    def close(self) -> None:
        if self._ray_started:
            import ray

            ray.shutdown()
            self._ray_started = False

    def _ray_init(self) -> None:
        import ray

        if ray.is_initialized():
            return
        address = self.config.ray.address or os.environ.get("RAY_ADDRESS")
        # a local runtime in this process unless an address is given; the job's workers get hfpipe's interpreter
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
                 configure_logging=True, **({} if address else {"num_cpus": self.config.ray.num_cpus or
                                                                 os.cpu_count()}))
        self._ray_started = True


class _JobIds:
    """datatrove's ``job_id_retriever`` hook: parse sbatch's answer, and remember every job id it submitted (the
    pass's array jobs and its merge_stats job, whose id datatrove itself discards)."""

    def __init__(self, chain: "SlurmChain", name: str):
        self.chain, self.name = chain, name

    def __call__(self, sbatch_output: str) -> str:
        job_id = sbatch_output.split()[-1]
        self.chain.jobs.append((job_id, self.name))
        return job_id

    def __getstate__(self):  # pickled with the executor for the job, which never submits anything
        return {"name": self.name, "chain": None}


class SlurmChain:
    def __init__(self, config, recipe_dir: Path | None):
        self.config, self.recipe_dir = config, recipe_dir
        self.passes: list[tuple[str, Path, int, object]] = []  # (name, logging dir, tasks, executor)
        self.jobs: list[tuple[str, str]] = []  # (job id, pass name), in submission order

    def add(self, pipeline: list, tasks: int, logging_dir: Path) -> None:
        depends = self.passes[-1][3] if self.passes else None
        executor = make_executor(self.config, pipeline, tasks, logging_dir, depends=depends,
                                 recorder=_JobIds(self, logging_dir.name), recipe_dir=self.recipe_dir)
        self.passes.append((logging_dir.name, logging_dir, tasks, executor))

    def wait(self) -> None:
        s = self.config.slurm
        limit = _seconds(s.max_wait)
        started = time.monotonic()
        try:
            try:
                self.passes[-1][3].run()  # submits every pass, each with --dependency=afterok:<previous pass>
            except (subprocess.CalledProcessError, FileNotFoundError) as e:
                raise HfpipeError(f"data: sbatch failed ({e}); is Slurm up (`make slurm-up`, `sinfo`) and "
                                  f"data.slurm.partition={s.partition!r} a partition of it?", 1) from None
            while True:
                states = self._states()
                failure = self._failure(states)
                if failure:
                    raise HfpipeError(failure, 1)
                if self._finished(states):
                    return
                if time.monotonic() - started > limit:
                    raise HfpipeError(f"data: the Slurm passes did not finish within data.slurm.max_wait={s.max_wait}"
                                      f" (waiting: {self._waiting(states)}); its jobs were cancelled", 1)
                time.sleep(s.poll_s)
        except BaseException:
            self.cancel()
            raise

    # ---------------------------------------------------------------- squeue
    def _states(self) -> dict[str, list[tuple[str, str, str]]]:
        """job id -> [(array task id or '', state, reason)] from squeue (records linger MinJobAge after the end)."""
        ids = ",".join(j for j, _ in self.jobs)
        out = subprocess.run(["squeue", "--states=all", "-h", "-o", "%F|%K|%T|%r", "-j", ids],
                             capture_output=True, text=True)
        states: dict[str, list] = {}
        for line in out.stdout.splitlines():
            job, task, state, reason = (line.split("|") + ["", "", "", ""])[:4]
            states.setdefault(job.strip(), []).append((task.strip() if task.strip() != "N/A" else "", state.strip(),
                                                       reason.strip()))
        return states

    def _failure(self, states) -> str | None:
        for job, name in self.jobs:
            for task, state, reason in states.get(job, []):
                if state in SLURM_FAILED:
                    log = self._log(name, job, task)
                    what = f"task {task}" if task else "job"
                    said = _last_line(log) if log.is_file() else " (not written: it ended before it started)"
                    return (f"data: Slurm {what} of pass {name} (job {job}{'_' + task if task else ''}) {state}; "
                            f"see {log}{said}")
        for job, name in self.jobs:  # the failed job's record has aged out: its dependant tells
            for _, state, reason in states.get(job, []):
                if reason == "DependencyNeverSatisfied":
                    return (f"data: Slurm pass {name} (job {job}) can never start: a pass before it failed "
                            f"(DependencyNeverSatisfied); see {self._logging_dir(name) / 'slurm_logs'}")
        return None

    def _finished(self, states) -> bool:
        for job, name in self.jobs:
            records = states.get(job)
            if records is None:  # no record: ended longer than MinJobAge ago, or never listed yet
                if incomplete(self._logging_dir(name), self._tasks(name)):
                    return False
            elif any(state != "COMPLETED" for _, state, _ in records):
                return False
        return all(not incomplete(d, n) for _, d, n, _ in self.passes)

    def _waiting(self, states) -> str:
        left = [f"{name} ({job}: {','.join(sorted({s for _, s, _ in states.get(job, [])})) or '?'})"
                for job, name in self.jobs if any(s != "COMPLETED" for _, s, _ in states.get(job, [("", "?", "")]))]
        return ", ".join(left[:3]) or "?"

    def cancel(self) -> None:
        """scancel every job of the chain (done ones ignore it), and wait briefly until none is left running."""
        ids = [j for j, _ in self.jobs]
        if not ids:
            return
        subprocess.run(["scancel", *ids], capture_output=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            active = subprocess.run(["squeue", "-h", "-o", "%T", "-j", ",".join(ids)], capture_output=True, text=True)
            if not active.stdout.strip():
                return
            time.sleep(1)

    def _logging_dir(self, name: str) -> Path:
        return next(d for n, d, _, _ in self.passes if n == name)

    def _tasks(self, name: str) -> int:
        return next(t for n, _, t, _ in self.passes if n == name)

    def _log(self, name: str, job: str, task: str) -> Path:
        """The Slurm output file of a job (datatrove's slurm_logs/%A_%a.out; the merge job's has no array id)."""
        folder = self._logging_dir(name) / "slurm_logs"
        path = folder / f"{job}_{task or 'N/A'}.out"
        if not path.is_file():
            found = sorted(folder.glob(f"{job}_*.out"))
            path = found[0] if found else path
        return path


def _last_line(log: Path) -> str:
    """`: <the log's last error line>`, else its last line that is not a shell trace (empty when there is none).
    srun's own summary (``srun: error: <node>: task 0: Exited with exit code 2``) says less than the error above it."""
    try:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines()]
    except OSError:
        return ""
    lines = [ln for ln in lines if ln and not ln.startswith("+")]
    errors = [ln for ln in lines if re.search(r"error|exception|killed|cancelled", ln, re.I)
              and not re.search(r"srun: error: .*: task \d+: (Exited with exit code|Killed)", ln)]
    return f": {(errors or lines)[-1][:200]}" if lines else ""


def _seconds(hms: str) -> float:
    """Slurm-style [D-]HH:MM:SS (or MM:SS, or minutes) -> seconds."""
    days, _, rest = hms.rpartition("-")
    parts = [float(p) for p in rest.split(":")]
    if len(parts) == 1:
        parts = [0.0, parts[0], 0.0]
    while len(parts) < 3:
        parts.insert(0, 0.0)
    return (float(days) if days else 0.0) * 86400 + parts[0] * 3600 + parts[1] * 60 + parts[2]
