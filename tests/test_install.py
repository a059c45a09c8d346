"""hfpipe as a user gets it: `pip install .` (a wheel, not the checkout) into a fresh venv, run from a folder outside
the checkout, so every file the code reads must be package data reached through hfpipe.resources.

    python -m pytest tests/test_install.py -v

The fresh venv gets hfpipe itself from the wheel; its dependencies (torch, transformers, TRL, ... several GB) come
from the running interpreter's site-packages through a path entry, which adds no hfpipe code: the test checks that
`import hfpipe` in the venv resolves to the installed wheel, outside the checkout.
"""

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
# every stage of the tiny recipe, each made as short as its recipe keys allow (the full run: the slow test below)
SHORT = ["pretrain.max_steps=12", "pretrain.warmup_steps=2", "pretrain.eval_interval=6", "pretrain.log_interval=6",
         "sft.max_steps=2", "sft.max_eval_rows=8", "preference.max_steps=2", "preference.mixture_rows=16",
         "preference.max_eval_pairs=4", "rl.max_steps=1", "rl.reward_model.max_steps=1", "rl.eval_prompts=4",
         "eval.tasks=[capitals,coding,heldout_prose]", "eval.limit=2", "eval.latency_batch_sizes=[1]",
         "eval.latency_repeats=1", "deploy.parity_max_tokens=256", "deploy.parity_task_limit=4",
         "serve.loadtest.requests=4", "serve.route.split_tolerance=0.8"]
TRAINING = ("pretrain", "sft", "preference", "rl")
TRACKED = [f"{stage}.report_to=[tensorboard]" for stage in TRAINING]  # every training stage logs its curves


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path]:
    """(the fresh venv's bin folder, a work folder outside the checkout holding a copy of the tiny recipe and data)."""
    tmp = tmp_path_factory.mktemp("install")
    src = tmp / "src"  # build from a copy: the build writes build/ and *.egg-info next to pyproject.toml
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "hfpipe", src / "hfpipe", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = Path(subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "zz_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    res = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps",
                          "--no-build-isolation", str(src)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    work = tmp / "work"
    (work / "recipes").mkdir(parents=True)
    shutil.copy(REPO / "recipes" / "tiny.yaml", work / "recipes" / "tiny.yaml")
    shutil.copytree(REPO / "data" / "tiny", work / "data" / "tiny")
    return venv / "bin", work


def hfpipe(bin_dir: Path, work: Path, *args) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | OFFLINE
    return subprocess.run([bin_dir / "hfpipe", "--runs-dir", "runs", "--cards-dir", "cards", *args],
                          capture_output=True, text=True, cwd=work, env=env)


def test_the_venv_runs_the_wheel_not_the_checkout(installed):
    bin_dir, work = installed
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([bin_dir / "python", "-c", "import hfpipe, hfpipe.resources as r; print(hfpipe.__file__); "
                          "print(r.package_file(r.ACCELERATE, 'ddp.yaml'))"],
                         capture_output=True, text=True, cwd=work, env=env, check=True).stdout.split()
    assert not Path(out[0]).is_relative_to(REPO) and Path(out[0]).is_relative_to(bin_dir.parent)
    assert Path(out[1]).is_file() and Path(out[1]).is_relative_to(bin_dir.parent)


def test_dry_run_with_an_accelerate_config_from_the_wheel(installed):
    bin_dir, work = installed
    res = hfpipe(bin_dir, work, "run", "recipes/tiny.yaml", "pretrain.accelerate_config=ddp",
                 "pretrain.num_processes=2", "--dry-run")
    assert res.returncode == 0, res.stderr[-3000:]
    launch = next(line for line in res.stdout.splitlines() if "accelerate.commands.launch" in line)
    config = Path(launch.split("--config_file ")[1].split()[0])
    assert config.name == "ddp.yaml" and config.is_file() and config.is_relative_to(bin_dir.parent)


def test_tiny_recipe_runs_every_stage_from_the_wheel(installed):
    bin_dir, work = installed
    res = hfpipe(bin_dir, work, "run", "recipes/tiny.yaml", *SHORT, *TRACKED)
    assert res.returncode == 0, res.stderr[-3000:]
    status = hfpipe(bin_dir, work, "status", "recipes/tiny.yaml", *SHORT, *TRACKED)
    assert status.returncode == 0 and status.stdout.count("done") == 9, status.stdout
    assert list((work / "runs" / "tiny").glob("deploy-*/export/model.safetensors"))
    assert (work / "cards" / "tiny.md").is_file()
    for stage in TRAINING:  # report_to: [tensorboard] left event files in each training stage's folder
        events = list((work / "runs" / "tiny").glob(f"{stage}-*/trackers/**/events.out.tfevents.*"))
        assert events and all(e.stat().st_size > 0 for e in events), stage


@pytest.mark.slow
def test_full_tiny_recipe_from_the_wheel(installed):
    bin_dir, work = installed
    res = hfpipe(bin_dir, work, "run", "recipes/tiny.yaml")
    assert res.returncode == 0, res.stderr[-3000:]
    assert list((work / "runs" / "tiny").glob("deploy-*/export/model.safetensors"))
