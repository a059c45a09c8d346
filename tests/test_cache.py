"""The cache pins what a stage reads by content: a base model whose weights change under the same file names makes
every stage that reads it stale; a Hub name with no commit is reported as unpinned.

    python -m pytest tests/test_cache.py -v
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def hfpipe(*args, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, **OFFLINE, HFPIPE_CACHE_DIR=str(cwd / "cache"))
    return subprocess.run([sys.executable, "-m", "hfpipe.cli", "--runs-dir", str(cwd / "runs"), *args],
                          capture_output=True, text=True, cwd=cwd, env=env)


def test_swapping_the_weights_of_a_local_base_model_makes_every_model_stage_stale(tiny_model_dir, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    base = tmp_path / "base"
    shutil.copytree(tiny_model_dir, base)
    recipe = tmp_path / "one.yaml"
    recipe.write_text(f"name: one\nseed: 3\nbase_model: {base}\n"
                      "sft: {max_steps: 1, max_eval_rows: 4, per_device_batch_size: 2, max_length: 128}\n"
                      "deploy: {check_new_tokens: 2}\n")
    res = hfpipe("run", str(recipe), cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]

    def status() -> dict[str, str]:
        out = hfpipe("status", str(recipe), "--json", cwd=tmp_path)
        assert out.returncode == 0, out.stderr[-2000:]
        return {r["stage"]: r["status"] for r in json.loads(out.stdout)}

    assert status() == {"sft": "done", "deploy": "done"}
    weights = base / "model.safetensors"
    before = weights.read_bytes()
    torch.manual_seed(1)  # same architecture, same file name, other weights
    other = AutoModelForCausalLM.from_config(AutoModelForCausalLM.from_pretrained(base).config)
    other.save_pretrained(base, safe_serialization=True)
    assert weights.read_bytes() != before and sorted(p.name for p in base.iterdir()) == sorted(
        p.name for p in tiny_model_dir.iterdir())
    assert status() == {"sft": "stale", "deploy": "stale"}
    plan = hfpipe("run", str(recipe), "--dry-run", cwd=tmp_path).stdout
    assert "[sft] run (changed: pins)" in plan, plan

    weights.write_bytes(before)  # the old weights back (a new mtime): the digest, not the date, decides
    assert status() == {"sft": "done", "deploy": "done"}


def test_a_hub_name_without_a_commit_is_unpinned_in_status_and_a_commit_pins_it(tmp_path):
    recipe = tmp_path / "hub.yaml"
    recipe.write_text("name: hub\nbase_model: {name_or_path: HuggingFaceTB/SmolLM2-135M}\ndeploy: {}\n")
    rows = json.loads(hfpipe("status", str(recipe), "--json", cwd=tmp_path).stdout)
    assert rows[0]["unpinned"] == ["base_model"]
    assert "unpinned: base_model" in hfpipe("status", str(recipe), cwd=tmp_path).stdout
    recipe.write_text("name: hub\nbase_model: {name_or_path: HuggingFaceTB/SmolLM2-135M, "
                      "revision: 93efa2f097d58c2a74874c7e644dbc9b0cee75a2}\ndeploy: {}\n")
    rows = json.loads(hfpipe("status", str(recipe), "--json", cwd=tmp_path).stdout)
    assert rows[0]["unpinned"] == []


def test_where_the_work_runs_is_not_in_the_fingerprint_but_what_it_computes_is():
    """data.executor/slurm/ray and pretrain.slurm are execution-only (byte-identical output, tests/test_cluster.py):
    moving a finished run to Slurm must not make it stale; data.tasks (one shard per task) must."""
    from hfpipe.recipe import load_recipe
    from hfpipe.runner import plan

    repo = Path(__file__).resolve().parents[1]

    def fingerprints(*overrides):
        recipe = load_recipe(repo / "recipes" / "tiny.yaml", list(overrides))
        return {p.name: p.fingerprint for p in plan(recipe, Path("/nonexistent-runs"))}

    base = fingerprints()
    assert fingerprints("data.executor=slurm", "data.slurm.partition=gpu", "data.ray.cpus_per_task=2") == base
    # Slurm runs the same accelerate launch as a local multi-process run (bit-identical weights, tests/test_cluster.py)
    local = fingerprints("pretrain.num_processes=2")["pretrain"]
    assert fingerprints("pretrain.num_processes=2", "pretrain.slurm.partition=gpu")["pretrain"] == local != base["pretrain"]
    moved = fingerprints("data.tasks=2")
    assert moved["data"] != base["data"] and moved["pretrain"] != base["pretrain"]


def test_the_engine_library_is_not_in_the_fingerprint_but_a_library_that_computes_is(monkeypatch):
    """ray (the hfpipe[ray] extra) only runs the passes: installing it must not make the data stage stale, as it did
    between a machine with the extra and CI; datatrove, which computes them, is in the data stage's versions."""
    from hfpipe import runner

    facts = runner._installed()
    monkeypatch.setitem(facts["names"], "ray", ["ray"])
    monkeypatch.setitem(facts["versions"], "ray", "9.9.9")
    assert "ray" in runner.closure("hfpipe.stages.data").libraries  # the data stage's code does import ray
    versions = runner.library_versions("hfpipe.stages.data")
    assert "ray" not in versions and versions["datatrove"] == facts["versions"]["datatrove"]
