"""`hfpipe run RECIPE --dry-run`: the cluster recipe and the tiny one resolve offline, with launch commands, engine
settings, expected tokens/steps/checkpoints and run/skip per stage, without importing torch or any engine and without
writing a stage folder.

Run: .venv/bin/python -m pytest tests/test_dry_run.py -q
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hfpipe import cli, dryrun
from hfpipe.recipe import load_recipe

REPO = Path(__file__).resolve().parent.parent
CLUSTER = REPO / "recipes" / "cluster-smollm2-360m.yaml"
TINY = REPO / "recipes" / "tiny.yaml"
HEAVY = ("torch", "transformers", "datatrove", "lm_eval", "accelerate", "trl", "tokenizers", "datasets", "vllm")


def test_cluster_recipe_dry_run_offline_in_a_fresh_process(tmp_path):
    """The CLI, as a user runs it: exit 0, JSON plan; no engine imported, nothing written, no network."""
    code = ("import sys, json; from hfpipe import cli; rc = cli.main(sys.argv[1:]); "
            f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]), file=sys.stderr); sys.exit(rc)")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "NO_PROXY": "*",
           "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"}
    proc = subprocess.run([sys.executable, "-c", code, "--runs-dir", str(tmp_path / "runs"), "run", str(CLUSTER),
                           "--dry-run", "--json"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stderr.strip().splitlines()[-1]) == []  # no engine, no torch: a laptop can check it
    info = json.loads(proc.stdout)
    assert not (tmp_path / "runs").exists()
    stages = {s["stage"]: s for s in info["stages"]}
    assert list(stages) == ["data", "tokenizer", "pretrain", "sft", "preference", "rl", "eval", "deploy", "serve"]
    assert all(s["action"] == "run (never run)" and len(s["fingerprint"]) == 64 for s in stages.values())

    data = stages["data"]
    assert data["engine"]["executor"] == "datatrove.executor.SlurmPipelineExecutor"
    assert data["engine"]["partition"] == "cpu" and data["engine"]["tasks"] == 256 and data["needs_network"]
    assert data["sources"][0]["dataset"] == "HuggingFaceFW/fineweb-edu"

    for trl_stage in ("sft", "preference", "rl"):  # the TRL stages launch through accelerate too (issue 20)
        assert "--num_processes 8" in stages[trl_stage]["engine"]["launch"], stages[trl_stage]["engine"]
    assert stages["rl"]["engine"]["generation"]["engine"] == "vllm"  # GRPO generates with vLLM, colocated
    assert stages["rl"]["engine"]["generation"]["vllm_mode"] == "colocate"

    pre = stages["pretrain"]
    launch = pre["engine"]["launch"]
    assert "accelerate.commands.launch" in launch and "--num_processes 8" in launch
    assert launch.split("--config_file ")[1].split()[0].endswith("hfpipe/accelerate/fsdp.yaml")
    assert pre["engine"]["accelerate_settings"]["distributed_type"] == "FSDP"
    exp = pre["expected"]
    assert exp["tokens_per_step"] == 8 * 2048 * 4 * 8 and exp["tokens"] == exp["tokens_per_step"] * 20000
    assert exp["optimizer_steps"] == 20000 and exp["checkpoints_at_steps"][:2] == [1000, 2000]
    assert len(exp["checkpoints_at_steps"]) == 20 and exp["checkpoints_kept"] == 3
    assert 250e6 < exp["non_embedding_params"] < 400e6  # a 360M-class model (embeddings come on top)
    # tokenize once (the tokenizer stage's token-shard step), read many (the sampler); memory per rank
    shards = stages["tokenizer"]["engine"]["token_shards"]
    assert "DocumentTokenizer" in shards["step"] and shards["tasks"].startswith("256 ") and shards["workers"] == 48
    sampler = pre["engine"]["sampler"]
    assert sampler["class"].endswith("ShardSampler") and "8 rank(s) reads only its slice" in sampler["order"]
    mem = exp["memory_per_rank"]
    assert mem["weights_grads_optimizer_gb"] == pytest.approx(exp["non_embedding_params"] * 16 / 8 / 1024**3, abs=0.01)
    assert 10 < mem["activations_gb"] < 40 and mem["data_mb"] < 64  # the data term: batch-sized, not corpus-sized
    assert mem["total_gb"] == pytest.approx(mem["weights_grads_optimizer_gb"] + mem["activations_gb"], abs=0.03)

    assert stages["sft"]["datasets"][0]["name"] == "HuggingFaceTB/smoltalk"
    ev = stages["eval"]["engine"]
    assert ev["equivalent_cli"].startswith("lm_eval --model ") and "hellaswag" in ev["equivalent_cli"]
    assert ev["model_args"]["pretrained"].endswith("/model") and "rl-" in ev["model_args"]["pretrained"]  # last model

    sv = stages["serve"]["engine"]
    assert sv["server"] == "vllm" and sv["route"] == "size" and sv["variants"] == ["full", "int8"]
    assert sv["int8 (vllm)"].startswith("vllm serve ") and "/export/quantized/int8' " in sv["int8 (vllm)"]
    for flag in ("--enable-prefix-caching", "--max-num-seqs 256", "--max-num-batched-tokens 8192", "--dtype bfloat16"):
        assert flag in sv["full (vllm)"], flag
    assert "--enforce-eager" not in sv["full (vllm)"]  # compile: true keeps CUDA graphs
    assert "-e PREFIX_CACHING=1" in sv["full (tgi)"] and "text-generation-inference" in sv["full (tgi)"]
    assert stages["serve"]["expected"] == {"loadtest_requests": 2000, "loadtest_concurrency": 64}


def test_cluster_dry_run_text_shows_the_token_shards_the_sampler_and_the_memory_per_rank(tmp_path, capsys):
    assert cli.main(["--runs-dir", str(tmp_path / "runs"), "run", str(CLUSTER), "--dry-run"]) == 0
    text = capsys.readouterr().out
    block = {b.split("]")[0].lstrip("["): b for b in text.split("\n\n")}
    assert "  token_shards: {" in block["tokenizer"] and "DocumentTokenizer" in block["tokenizer"]
    assert "  sampler: {" in block["pretrain"] and "  expected memory_per_rank: {\"total_gb\": " in block["pretrain"]


def test_tiny_dry_run_text_and_skip_after_a_finished_stage(tmp_path, capsys):
    runs = tmp_path / "runs"
    assert cli.main(["--runs-dir", str(runs), "run", str(TINY), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "[pretrain] run (never run)" in text and "in process" in text
    assert "expected tokens: 614400" in text  # 300 steps x 16 x 128
    assert "lm-eval: lm_eval --model hf" in text and "--apply_chat_template" in text

    # a finished data stage (manifest with its fingerprint) is reported as skipped, the rest still runs
    recipe = load_recipe(TINY)
    first = dryrun.describe(recipe, runs)["stages"][0]
    folder = Path(first["folder"])
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({"stage": "data", "fingerprint": first["fingerprint"]}))
    again = {s["stage"]: s for s in dryrun.describe(recipe, runs)["stages"]}
    assert again["data"]["action"] == "skip (done)" and again["tokenizer"]["action"].startswith("run")


def test_overrides_and_bad_recipes_are_one_line_errors(tmp_path, capsys):
    runs = str(tmp_path / "runs")
    assert cli.main(["--runs-dir", runs, "run", str(CLUSTER), "pretrain.max_steps=4000", "pretrain.num_processes=4",
                     "--dry-run", "--json"]) == 0
    pre = {s["stage"]: s for s in json.loads(capsys.readouterr().out)["stages"]}["pretrain"]
    assert pre["expected"]["tokens"] == 8 * 2048 * 4 * 4 * 4000 and "--num_processes 4" in pre["engine"]["launch"]
    # the accelerate config must exist: named under hfpipe/accelerate/ or a path
    assert cli.main(["--runs-dir", runs, "run", str(CLUSTER), "pretrain.accelerate_config=nope", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pretrain.accelerate_config: no 'nope'" in err
    assert cli.main(["--runs-dir", runs, "run", str(CLUSTER), "data.executor=ray", "--dry-run"]) == 0
    assert "RayPipelineExecutor" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["ddp", "fsdp", "deepspeed_zero3", "single"])
def test_every_shipped_accelerate_config_resolves(name, tmp_path):
    recipe = load_recipe(CLUSTER, [f"pretrain.accelerate_config={name}"])
    pre = {s["stage"]: s for s in dryrun.describe(recipe, tmp_path)["stages"]}["pretrain"]
    assert pre["engine"]["accelerate_config"].endswith(f"{name}.yaml") and pre["engine"]["accelerate_settings"]


@pytest.mark.parametrize("method, trainer", [("dpo", "trl.DPOTrainer"), ("kto", "trl.KTOTrainer"),
                                             ("orpo", "trl.experimental.orpo.ORPOTrainer")])
def test_dry_run_names_the_trainer_each_preference_method_uses(method, trainer, tmp_path, capsys):
    """The dry run is the stage's own description: it names the class run() builds for `preference.method`."""
    assert cli.main(["--runs-dir", str(tmp_path / "runs"), "run", str(TINY), f"preference.method={method}",
                     "--dry-run"]) == 0
    block = capsys.readouterr().out.split("[preference]")[1].split("\n[")[0]
    assert f"  trainer: {trainer}\n" in block
    from hfpipe.stages import preference

    module, _, name = trainer.rpartition(".")
    assert preference.TRAINERS[method] == trainer and getattr(__import__(module, fromlist=[name]), name)
