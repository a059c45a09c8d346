"""The distributed engines for real, on this machine (marker `cluster`; `make cluster_test`).

- Slurm: a single-node Slurm brought up by scripts/slurm.sh (`make slurm-up`; this module brings it up itself when it
  is down, and stops what it started at the end). The data stage with `executor: slurm` (datatrove's
  SlurmPipelineExecutor, every pass chained with depends=) writes byte-identical shards and stats.json to
  `executor: local`; a task killed by `scancel` ends `hfpipe run` with one line naming the task and its log, exit 1,
  within a minute, and nothing of the chain is left queued; the chain's time limit (data.slurm.max_wait) holds.
  Pretraining submitted through Slurm (sbatch + srun + `accelerate launch`, 2 processes) trains, is pre-empted by
  `scancel --signal=TERM`, and resumes to the same weights as an uninterrupted run.
- Ray: the data stage with `executor: ray` on a local Ray runtime writes byte-identical output to local.
- Accelerate multi-node on loopback: 2 machines x 1 process (two `accelerate launch`, machine_rank 0/1,
  127.0.0.1, gloo) reach the same losses and weights as 1 machine x 2 processes.
- FSDP on CPU (gloo, FSDP2): the tiny model trains to the DDP loss within 1e-3 and resumes from its sharded
  checkpoint.

Run: make cluster_test   (or .venv/bin/python -m pytest -q -m cluster tests/test_cluster.py -k NAME)
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hfpipe.errors import HfpipeError

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).parent))
from test_stage_data import SOURCES  # noqa: E402 (the tiny recipe's data sources)

ENV = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1")
# the tiny recipe's data section, every pass in 2 tasks run 2 at a time (this machine's 2 CPUs)
DATA = {"sources": [{**s, "path": str((REPO / "recipes" / s["path"]).resolve())} for s in SOURCES],
        "chains": {"prose": ["language_id", "gopher_quality", "decontaminate", "pii"],
                   "code": ["malware", "secrets", "code_quality", "license_header"]},
        "tasks": 2, "workers": 2}


# ---------------------------------------------------------------------------------------------------------------------
# helpers


def write_recipe(folder: Path, name: str, **sections) -> Path:
    import yaml

    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "seed": 1234, **sections}, sort_keys=False))
    return path


def hfpipe(recipe: Path, *args, work: Path, **popen):
    cmd = [sys.executable, "-m", "hfpipe.cli", "--runs-dir", str(work / "runs"), "--cards-dir", str(work / "cards"),
           "run", str(recipe), *args]
    return subprocess.Popen(cmd, cwd=work, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def stage_folder(work: Path, recipe: str, stage: str) -> Path:
    found = [p for p in (work / "runs" / recipe).glob(f"{stage}-*") if p.is_dir() and not p.name.endswith(".partial")]
    assert len(found) == 1, found
    return found[0]


def shards(folder: Path) -> dict[str, bytes]:
    return {p.name: gzip.decompress(p.read_bytes()) for p in sorted((folder / "data").glob("*.jsonl.gz"))}


def run_data_stage(work: Path, **engine) -> Path:
    """The data stage of DATA with `engine` (executor and its options; none: local) through the CLI; its folder."""
    proc = hfpipe(write_recipe(work, "engines", data={**DATA, **engine}), work=work)
    _, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err[-3000:]
    return stage_folder(work, "engines", "data")


def data_stage_matches_local(work: Path, local_data: Path, **engine) -> Path:
    """Run the data stage with `engine` and check its shards and stats are byte for byte the local executor's;
    returns the stage folder."""
    folder = run_data_stage(work, **engine)
    assert shards(folder) == shards(local_data) and len(shards(folder)) == 2
    assert (folder / "stats.json").read_bytes() == (local_data / "stats.json").read_bytes()
    return folder


def squeue(*args) -> list[str]:
    out = subprocess.run(["squeue", "-h", *args], capture_output=True, text=True, check=True)
    return [line for line in out.stdout.splitlines() if line.strip()]


def error_lines(stderr: str) -> list[str]:
    """What hfpipe says about a failure: its error lines (the console's stage lines aside), and any traceback."""
    return [line for line in stderr.splitlines() if line.startswith(("hfpipe: error", "Traceback"))]


@pytest.fixture(scope="session")
def slurm():
    """A single-node Slurm: scripts/slurm.sh up (installs and starts it when it is down); down at the end if this
    session started it."""
    was_up = subprocess.run([str(REPO / "scripts" / "slurm.sh"), "status"], capture_output=True).returncode == 0
    up = subprocess.run([str(REPO / "scripts" / "slurm.sh"), "up"], capture_output=True, text=True)
    assert up.returncode == 0, up.stdout + up.stderr
    yield "debug"
    if not was_up:
        subprocess.run([str(REPO / "scripts" / "slurm.sh"), "down"], capture_output=True)


@pytest.mark.cluster
def test_slurm_up_is_idempotent_and_runs_a_job(slurm):
    again = subprocess.run([str(REPO / "scripts" / "slurm.sh"), "up"], capture_output=True, text=True)
    assert again.returncode == 0 and "already up" in again.stdout, again.stdout + again.stderr
    assert "# written by hfpipe scripts/slurm.sh" in Path("/etc/slurm/slurm.conf").read_text()
    ran = subprocess.run(["srun", "-p", slurm, "-N1", "-n1", "hostname"], capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0 and ran.stdout.strip() == subprocess.run(["hostname"], capture_output=True,
                                                                        text=True).stdout.strip()


@pytest.fixture(scope="module")
def local_data(tmp_path_factory):
    """The data stage with executor: local, through the CLI (the reference for Slurm and Ray)."""
    return run_data_stage(tmp_path_factory.mktemp("local"))


# ---------------------------------------------------------------------------------------------------------------------
# data stage on Slurm and Ray


@pytest.mark.cluster
def test_data_stage_on_slurm_is_byte_identical_to_local(slurm, local_data, tmp_path):
    folder = data_stage_matches_local(tmp_path, local_data, executor="slurm",
                                      slurm={"partition": slurm, "time": "00:10:00"})
    # it really ran as Slurm jobs: one array job per pass, chained with afterok dependencies
    logs = folder / "datatrove_logs"
    script = (logs / "6_dedup" / "launch_script.slurm").read_text()
    assert "#SBATCH --partition=debug" in script and "launch_pickled_pipeline" in script
    assert re.search(r"^source .*/bin/activate$", script, re.M)  # inside hfpipe's environment
    assert list((logs / "1_filter" / "slurm_logs").glob("*_0.out")) and list((logs / "1_filter" / "slurm_logs").glob("*_1.out"))
    assert not squeue("-n", "hfpipe-6_dedup")  # nothing of the chain left in the queue


@pytest.mark.cluster
def test_scancelled_slurm_task_is_one_line_and_exit_1_within_a_minute(slurm, tmp_path):
    recipe = write_recipe(tmp_path, "engines", data={**DATA, "executor": "slurm",
                                                     "slurm": {"partition": slurm, "time": "00:10:00"}})
    proc = hfpipe(recipe, work=tmp_path)
    deadline, victim = time.monotonic() + 300, None
    while victim is None and time.monotonic() < deadline and proc.poll() is None:
        running = squeue("-n", "hfpipe-1_filter", "-t", "RUNNING", "-o", "%i")  # e.g. 52_1
        started = {p.stem for p in tmp_path.glob("runs/engines/.data-*/datatrove_logs/1_filter/slurm_logs/*.out")}
        victim = next((j.strip() for j in running if j.strip() in started), None)  # its job script has begun
        time.sleep(0.2)
    assert victim, "the filter pass never ran on Slurm"
    subprocess.run(["scancel", victim], check=True)
    killed = time.monotonic()
    _, err = proc.communicate(timeout=120)
    took = time.monotonic() - killed
    assert proc.returncode == 1 and took < 60, (proc.returncode, took, err[-2000:])
    errors = error_lines(err)
    assert len(errors) == 1, err[-3000:]
    job, task = victim.split("_")
    assert f"task {task} of pass 1_filter (job {victim}) CANCELLED" in errors[0], errors[0]
    log = re.search(r"see (\S+/slurm_logs/\S+\.out)", errors[0])
    assert log and Path(log.group(1).rstrip(":")).is_file(), errors[0]
    assert "Traceback" not in err
    time.sleep(2)
    assert not [line for line in squeue("-o", "%j") if line.startswith("hfpipe-")], "jobs of the chain left queued"


@pytest.mark.cluster
def test_failed_slurm_task_names_its_log_and_error(slurm, tmp_path):
    """The issue's failure, on purpose: jobs in a virtualenv without datatrove (venv_path) cannot exec
    launch_pickled_pipeline. The first pass fails; hfpipe says so in one line with the log's last line, exit 1, and
    cancels the dependants Slurm would keep pending forever (DependencyNeverSatisfied)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "bare")], check=True)
    recipe = write_recipe(tmp_path, "engines", data={**DATA, "executor": "slurm", "slurm": {
        "partition": slurm, "venv_path": str(tmp_path / "bare")}})
    env = {**ENV, "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"}  # nothing of hfpipe's virtualenv on PATH
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "hfpipe.cli", "--runs-dir", str(tmp_path / "runs"), "run",
                             str(recipe)], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 1 and time.monotonic() - t0 < 120, err[-2000:]
    errors = error_lines(err)
    assert len(errors) == 1, err[-3000:]
    assert re.search(r"Slurm task \d of pass 1_filter \(job \d+_\d\) FAILED; see \S+/slurm_logs/\d+_\d\.out: .*"
                     r"launch_pickled_pipeline: No such file or directory", errors[0]), errors[0]
    time.sleep(2)
    assert not [line for line in squeue("-o", "%j") if line.startswith("hfpipe-")]


@pytest.mark.cluster
def test_slurm_chain_time_limit_cancels_and_fails(slurm, tmp_path):
    recipe = write_recipe(tmp_path, "engines", data={**DATA, "executor": "slurm",
                                                     "slurm": {"partition": slurm, "max_wait": "00:00:03"}})
    t0 = time.monotonic()
    proc = hfpipe(recipe, work=tmp_path)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 1 and time.monotonic() - t0 < 120, err[-2000:]
    errors = error_lines(err)
    assert len(errors) == 1 and "data.slurm.max_wait=00:00:03" in errors[0] and "cancelled" in errors[0], err[-2000:]
    time.sleep(2)
    assert not [line for line in squeue("-o", "%j") if line.startswith("hfpipe-")]


@pytest.mark.cluster
def test_data_stage_on_ray_is_byte_identical_to_local(local_data, tmp_path):
    import importlib.util

    assert importlib.util.find_spec("ray"), "ray is not installed: the hfpipe[ray] extra (make cluster_test installs it)"
    folder = data_stage_matches_local(tmp_path, local_data, executor="ray")
    executor = json.loads((folder / "datatrove_logs" / "1_filter" / "executor.json").read_text())
    assert "ray_remote_kwargs" in executor and "log_first" in executor  # RayPipelineExecutor's own fields


# ---------------------------------------------------------------------------------------------------------------------
# recipe options reach datatrove's executors (no engine needed: fast, in the default suite)


def test_every_slurm_and_ray_option_passes_through(tmp_path):
    from hfpipe.stages import data
    from hfpipe.stages.data.engines import make_executor

    cfg = data.Config(sources=SOURCES, executor="slurm", tasks=8, workers=3,
                      slurm={"partition": "cpu", "time": "01:00:00", "qos": "high", "sbatch_args": {"account": "a"},
                             "options": {"srun_args": {"cpu-bind": "none"}, "tasks_per_job": 2,
                                         "max_array_size": 4, "requeue": False}})
    data.preflight(cfg.model_copy(update={"executor": "local"}), tmp_path)  # options checked without sbatch
    ex = make_executor(cfg, [], 8, tmp_path / "x")
    assert (ex.partition, ex.time, ex.qos, ex.workers, ex.tasks_per_job, ex.max_array_size, ex.requeue) == \
        ("cpu", "01:00:00", "high", 3, 2, 4, False)
    assert ex.srun_args == {"cpu-bind": "none"} and ex._sbatch_args == {"account": "a"}
    assert ex.venv_path == str(Path(sys.prefix) / "bin" / "activate")  # the job runs in hfpipe's environment
    ray = make_executor(data.Config(sources=SOURCES, executor="ray", workers=2,
                                    ray={"options": {"time": 600, "tasks_per_job": 2}}), [], 4, tmp_path / "r")
    assert (ray.workers, ray.time, ray.tasks_per_job) == (2, 600, 2)


@pytest.mark.parametrize("options, message", [
    ({"srun_arg": {}}, r"data.slurm.options.srun_arg: not an argument of datatrove's SlurmPipelineExecutor; "
                       r"did you mean 'srun_args'\?"),
    ({"partition": "x"}, r"data.slurm.options.partition: hfpipe sets SlurmPipelineExecutor\(partition=...\) itself; "
                         r"use data.slurm.partition instead"),
    ({"depends": None}, r"data.slurm.options.depends: hfpipe sets .* itself; use \(hfpipe chains the passes\)"),
])
def test_bad_executor_option_is_one_line_exit_2(tmp_path, options, message):
    from hfpipe.stages import data

    cfg = data.Config(sources=SOURCES, executor="local", slurm={"partition": "p", "options": options})
    with pytest.raises(HfpipeError, match=message) as e:
        data.preflight(cfg, tmp_path)
    assert e.value.exit_code == 2 and "\n" not in str(e.value)


# ---------------------------------------------------------------------------------------------------------------------
# pretraining through Slurm, multi-node on loopback, FSDP on CPU

PRETRAIN = {"model": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                      "intermediate_size": 256},
            "seq_len": 64, "batch_size": 8, "learning_rate": 5e-3, "eval_blocks": 32, "max_steps": 24,
            "warmup_steps": 2, "log_interval": 1, "eval_interval": 8, "checkpoint_interval": 4, "keep_checkpoints": 2,
            "num_processes": 2}


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    from test_stage_pretrain import make_upstream

    return make_upstream(tmp_path_factory.mktemp("upstream"))


@pytest.fixture(scope="module")
def ddp(upstream, tmp_path_factory):
    """The reference: 2 processes on this machine (accelerate launch, ddp.yaml, gloo), uninterrupted."""
    from safetensors.torch import load_file

    from hfpipe.stages import Inputs
    from hfpipe.stages import pretrain as stage

    out = tmp_path_factory.mktemp("ddp")
    metrics = stage.run(stage.Config(**PRETRAIN), Inputs("t", 0, out, upstream), out)
    return load_file(out / "model" / "model.safetensors"), metrics, out


def curve(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "curves.jsonl").read_text().splitlines() if '"train_loss"' in line]


@pytest.mark.cluster
def test_pretrain_through_slurm_trains_is_preempted_and_resumes_exactly(slurm, upstream, ddp, tmp_path):
    import threading

    import torch
    from safetensors.torch import load_file

    from hfpipe.stages import Inputs
    from hfpipe.stages import pretrain as stage
    from hfpipe.stages.pretrain.checkpoint import complete

    reference, ref_metrics, _ = ddp
    cfg = stage.Config(**PRETRAIN, slurm={"partition": slurm, "time": "00:20:00"})
    out, outcome = tmp_path / "run", {}

    def first_run():
        try:
            outcome["metrics"] = stage.run(cfg, Inputs("t", 0, out, upstream), out)
        except HfpipeError as e:
            outcome["error"] = e

    thread = threading.Thread(target=first_run)
    thread.start()
    deadline, job = time.monotonic() + 300, None
    while time.monotonic() < deadline and thread.is_alive():  # wait for step 6 of the curve, then pre-empt the job
        running = squeue("-n", "hfpipe-t-pretrain", "-t", "RUNNING", "-o", "%i")
        if running and (out / "curves.jsonl").exists() and any(r["step"] >= 6 for r in curve(out)):
            job = running[0].strip()
            break
        time.sleep(0.1)
    assert job, f"the Slurm job never reached step 6: {outcome}"
    script = (out / "slurm_job.sh").read_text()
    assert "srun" in script and "accelerate.commands.launch" in script and "--num_processes 2" in script
    subprocess.run(["scancel", "--signal=TERM", job], check=True)  # what Slurm pre-emption sends
    thread.join(timeout=180)
    error = outcome.get("error")
    assert error is not None and error.exit_code == 143, outcome
    assert "stopped by SIGTERM at step" in str(error) and "\n" not in str(error)
    stopped_at = int(str(error).split("at step ")[1].split(";")[0])
    assert 6 <= stopped_at < PRETRAIN["max_steps"] and not (out / "model").exists()
    assert complete(out / "checkpoints")[-1].name == f"step-{stopped_at:08d}"
    assert (out / f"slurm-{job}.out").is_file()

    resumed = stage.run(cfg, Inputs("t", 0, out, upstream), out)  # the same command again: resumes through Slurm
    assert resumed["resumed_from_step"] == stopped_at and resumed["num_processes"] == 2
    final = load_file(out / "model" / "model.safetensors")
    assert all(torch.equal(final[k], reference[k]) for k in reference)  # = the uninterrupted local 2-process run
    assert resumed["val_loss"] == ref_metrics["val_loss"]
    assert [r["step"] for r in curve(out)] == list(range(1, 25))


@pytest.mark.cluster
def test_two_machines_of_one_process_on_loopback_match_one_machine_of_two(upstream, ddp, tmp_path):
    """The command line the Slurm launcher runs on each node (hfpipe.stages.pretrain.slurm.node_command), here on
    127.0.0.1 twice: machine_rank 0 and 1, --num_machines 2, gloo."""
    import socket

    import torch
    from safetensors.torch import load_file

    from hfpipe.posttrain.launch import RESULT, SPEC, WORKER_ENV, accelerate_config_path, inputs_json
    from hfpipe.stages import Inputs
    from hfpipe.stages import pretrain as stage
    from hfpipe.stages.pretrain.slurm import node_command

    reference, ref_metrics, ref_out = ddp
    out = tmp_path / "multinode"
    out.mkdir()
    cfg = stage.Config(**PRETRAIN)
    spec = {"stage": "pretrain", "config": cfg.model_dump(mode="json"),
            "inputs": inputs_json(Inputs("t", 0, out, upstream)), "out_dir": str(out)}
    (out / SPEC).write_text(json.dumps(spec))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    machines = [subprocess.Popen(node_command(accelerate_config_path("ddp", REPO), 2, out / SPEC, "no", 2, rank,
                                              "127.0.0.1", port, sys.executable),
                                 env={**ENV, WORKER_ENV: "1"}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 text=True) for rank in (0, 1)]
    logs = [m.communicate(timeout=600)[0] for m in machines]
    assert [m.returncode for m in machines] == [0, 0], logs[0][-2000:] + logs[1][-2000:]
    metrics = json.loads((out / RESULT).read_text())["metrics"]
    assert metrics["num_processes"] == 2
    assert [r["train_loss"] for r in curve(out)] == pytest.approx([r["train_loss"] for r in curve(ref_out)], abs=1e-6)
    assert metrics["val_loss"] == pytest.approx(ref_metrics["val_loss"], abs=1e-6)
    final = load_file(out / "model" / "model.safetensors")
    assert all(torch.allclose(final[k], reference[k], atol=1e-6) for k in reference)


FSDP_SCRIPT = """
import json, sys
from pathlib import Path
from hfpipe.errors import HfpipeError
from hfpipe.stages import Inputs, pretrain as stage
cfg, up, out = json.loads(sys.argv[1]), json.loads(sys.argv[2]), Path(sys.argv[3])
try:
    stage.run(stage.Config(**cfg), Inputs("t", 0, out, {k: Path(v) for k, v in up.items()}), out)
except HfpipeError as e:
    print(e, file=sys.stderr)
    sys.exit(e.exit_code)
"""


@pytest.mark.cluster
def test_fsdp_on_cpu_matches_ddp_and_resumes_from_its_sharded_checkpoint(upstream, ddp, tmp_path):
    import torch
    from safetensors.torch import load_file

    from hfpipe.stages import Inputs
    from hfpipe.stages import pretrain as stage
    from hfpipe.stages.pretrain.checkpoint import complete

    _, ref_metrics, ref_out = ddp
    cfg = {**PRETRAIN, "accelerate_config": "fsdp"}  # hfpipe/accelerate/fsdp.yaml: FSDP2, sharded state dict
    straight = tmp_path / "straight"
    metrics = stage.run(stage.Config(**cfg), Inputs("t", 0, straight, upstream), straight)
    assert metrics["val_loss"] == pytest.approx(ref_metrics["val_loss"], abs=1e-3)
    assert metrics["train_loss"] == pytest.approx(ref_metrics["train_loss"], abs=1e-3)
    for row, ref in zip(curve(straight), curve(ref_out)):
        assert row["train_loss"] == pytest.approx(ref["train_loss"], abs=1e-3)

    out = tmp_path / "stopped"
    proc = subprocess.Popen([sys.executable, "-c", FSDP_SCRIPT, json.dumps(cfg),
                             json.dumps({k: str(v) for k, v in upstream.items()}), str(out)],
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if (out / "curves.jsonl").exists() and any(r["step"] >= 6 for r in curve(out)):
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err[-3000:]
    stopped_at = int(err.strip().splitlines()[-1].split("at step ")[1].split(";")[0])
    ckpt = complete(out / "checkpoints")[-1]
    assert ckpt.name == f"step-{stopped_at:08d}"
    shards = sorted(p.relative_to(ckpt).as_posix() for p in ckpt.rglob("*.distcp"))
    assert any(s.startswith("pytorch_model_fsdp_0/") for s in shards), shards  # torch.distributed.checkpoint shards
    assert len([s for s in shards if s.startswith("pytorch_model_fsdp_0/")]) == 2  # one per rank

    resumed = stage.run(stage.Config(**cfg), Inputs("t", 0, out, upstream), out)
    assert resumed["resumed_from_step"] == stopped_at
    assert resumed["val_loss"] == pytest.approx(metrics["val_loss"], abs=1e-6)
    a, b = load_file(out / "model" / "model.safetensors"), load_file(straight / "model" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
