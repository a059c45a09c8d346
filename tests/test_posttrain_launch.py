"""The TRL stages under `accelerate launch`, their job keys in the dry run, and GRPO/RLOO's vLLM keys.

Two processes (ddp.yaml; gloo on CPU), each with per_device_batch_size 4, against one process with 4 x 2 gradient
accumulation steps: the same global batch of 8, the same rows in the same order (the seeded sampler, sharded by
accelerate), the same held-out batches of 4; so the held-out loss after training must agree up to float summation
order (1e-4).

Run: .venv/bin/python -m pytest tests/test_posttrain_launch.py -q   (the DPO pair: -m slow)
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hfpipe.errors import HfpipeError
from hfpipe.stages import preference, rl, sft

REPO = Path(__file__).resolve().parent.parent


def _pair(stage, config: dict, tiny_model_dir, make_inputs, tmp_path) -> tuple[dict, dict]:
    inputs = make_inputs(upstream={"pretrain": tiny_model_dir.parent}, model_stage="pretrain")
    for name in ("one", "two"):  # the runner hands a stage an existing folder
        (tmp_path / name).mkdir()
    one = stage.run(stage.Config(**config, gradient_accumulation_steps=2), inputs, tmp_path / "one")
    two = stage.run(stage.Config(**config, num_processes=2), inputs, tmp_path / "two")
    return one, two


def test_two_process_sft_matches_one_process_with_the_same_global_batch(tiny_model_dir, make_inputs, tmp_path):
    config = dict(max_steps=6, learning_rate=3e-3, per_device_batch_size=4, max_length=128, max_eval_rows=16,
                  group_by_length=False)
    one, two = _pair(sft, config, tiny_model_dir, make_inputs, tmp_path)
    assert one["num_processes"] == 1 and two["num_processes"] == 2 and one["train_steps"] == two["train_steps"] == 6
    assert one["eval_loss_after"] < one["eval_loss_before"] - 0.1  # it trained
    assert two["eval_loss_before"] == pytest.approx(one["eval_loss_before"], abs=1e-4)
    assert two["eval_loss_after"] == pytest.approx(one["eval_loss_after"], abs=1e-4)
    assert (tmp_path / "two" / "model" / "model.safetensors").is_file()
    # the same files as one process (rank 0 alone wrote them); the launch plumbing and the trainer's folder are gone
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())
    assert not list((tmp_path / "two").glob("worker*")) and not (tmp_path / "two" / "trainer").exists()


@pytest.mark.slow
def test_two_process_dpo_matches_one_process_with_the_same_global_batch(tiny_model_dir, make_inputs, tmp_path):
    config = dict(max_steps=4, learning_rate=1e-3, per_device_batch_size=4, max_length=128, mixture_rows=48,
                  max_eval_pairs=16)
    one, two = _pair(preference, config, tiny_model_dir, make_inputs, tmp_path)
    assert one["num_processes"] == 1 and two["num_processes"] == 2 and two["train_steps"] == 4
    assert one["eval_loss_after"] < one["eval_loss_before"]  # it trained
    assert two["eval_loss_after"] == pytest.approx(one["eval_loss_after"], abs=1e-4)
    assert two["eval_margin_after"] == pytest.approx(one["eval_margin_after"], abs=1e-4)


def test_dry_run_shows_the_accelerate_command_of_every_trl_stage(tmp_path):
    overrides = [f"{s}.{k}" for s in ("sft", "preference", "rl") for k in ("num_processes=2", "accelerate_config=fsdp")]
    res = subprocess.run([sys.executable, "-m", "hfpipe.cli", "--runs-dir", str(tmp_path), "run",
                          str(REPO / "recipes" / "tiny.yaml"), *overrides, "--dry-run", "--json"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    plan = json.loads(res.stdout)
    stages = {s["stage"]: s for s in plan["stages"]} if isinstance(plan, dict) else {s["stage"]: s for s in plan}
    for name in ("sft", "preference", "rl"):
        engine = stages[name]["engine"]
        assert "accelerate.commands.launch" in engine["launch"] and "--num_processes 2" in engine["launch"], engine
        assert "-m hfpipe.posttrain --worker" in engine["launch"] and engine["launch"].count("fsdp.yaml") == 1
        assert engine["accelerate_settings"]["distributed_type"] == "FSDP" and engine["num_processes"] == 2
    assert "in process" in json.dumps(stages["pretrain"]["engine"]["launch"])  # one process stays the default


def test_an_unknown_accelerate_config_of_a_trl_stage_is_one_line(tmp_path):
    with pytest.raises(HfpipeError, match=r"^sft.accelerate_config: no 'nope' in .*\(have: ddp, deepspeed_zero3"):
        sft.input_files(sft.Config(num_processes=2, accelerate_config="nope"), tmp_path)


# ------------------------------------------------------------------------------------------------ vLLM generation
def test_vllm_keys_reach_grpo_config(tmp_path):
    from trl import GRPOConfig

    config = rl.Config(use_vllm=True, vllm_mode="server", vllm_server_base_url="http://gpu-2:8000",
                       vllm_gpu_memory_utilization=0.5, max_steps=2)
    args = rl.build_trl_config("rl", GRPOConfig, rl.policy_kwargs(config, tmp_path, 0, "t"), tmp_path)
    assert args.use_vllm and args.vllm_mode == "server" and args.vllm_server_base_url == "http://gpu-2:8000"
    resolved = json.loads((tmp_path / "trainer_config.json").read_text())
    assert resolved["use_vllm"] is True and resolved["vllm_gpu_memory_utilization"] == 0.5
    colocate = rl.policy_kwargs(rl.Config(use_vllm=True, vllm_tensor_parallel_size=2, num_processes=4), tmp_path, 0, "t")
    assert colocate["vllm_mode"] == "colocate" and colocate["vllm_tensor_parallel_size"] == 2
    assert rl.policy_kwargs(rl.Config(), tmp_path, 0, "t")["use_vllm"] is False
    engine = rl.describe(config, type("R", (), {"recipe_dir": tmp_path})())["engine"]
    assert engine["generation"]["engine"] == "vllm" and engine["generation"]["vllm_mode"] == "server"


def test_vllm_keys_are_validated():
    with pytest.raises(ValueError, match="vllm_server_base_url is for use_vllm: true with vllm_mode: server"):
        rl.Config(vllm_server_base_url="http://x:8000")
    with pytest.raises(ValueError, match=r"vllm_tensor_parallel_size \(3\) must divide num_processes \(4\)"):
        rl.Config(use_vllm=True, vllm_tensor_parallel_size=3, num_processes=4)
    import importlib.util

    import torch

    if importlib.util.find_spec("vllm") and torch.cuda.is_available():
        pytest.skip("this machine can run vLLM")
    with pytest.raises(HfpipeError, match=r"^rl.use_vllm: generating with vLLM needs .*; set rl.use_vllm: false"):
        rl.preflight(rl.Config(use_vllm=True, reward_model=None, rewards=[{"name": "exact_answer"}]), REPO)


def test_cluster_recipe_generates_with_vllm():
    from hfpipe.recipe import load_recipe

    recipe = load_recipe(REPO / "recipes" / "cluster-smollm2-360m.yaml")
    assert recipe.rl.use_vllm and recipe.rl.vllm_mode == "colocate" and recipe.rl.num_processes == 8
    assert recipe.sft.num_processes == 8 and recipe.sft.accelerate_config == "fsdp"


@pytest.mark.gpu
def test_grpo_generates_with_vllm_on_a_gpu(tiny_model_dir, make_inputs, tmp_path):
    """The real thing: GRPO with vLLM colocated on the GPU, on the tiny model (needs vllm + CUDA)."""
    pytest.importorskip("vllm")
    config = rl.Config(use_vllm=True, vllm_gpu_memory_utilization=0.2, reward_model=None,
                       rewards=[{"name": "exact_answer"}, {"name": "valid_json"}], max_steps=2,
                       per_device_batch_size=4, num_generations=4, max_completion_length=16, eval_prompts=4,
                       learning_rate=1e-4, save_steps=None)
    inputs = make_inputs(upstream={"pretrain": tiny_model_dir.parent}, model_stage="pretrain")
    metrics = rl.run(config, inputs, tmp_path)
    assert metrics["use_vllm"] and metrics["train_steps"] == 2
    assert json.loads((tmp_path / "trainer_config.json").read_text())["use_vllm"] is True


# ------------------------------------------------------------------------------------------------ QLoRA's load
def test_qlora_loads_through_the_common_loader_with_the_base_models_settings(tiny_model_dir, make_inputs, monkeypatch):
    """QLoRA's 4-bit copy comes from hfpipe.models.load_model_and_tokenizer, like every other load: the base_model's
    revision and trust_remote_code reach from_pretrained beside the extra load arguments (here a CPU device map and
    no quantization; the GPU test below quantizes for real)."""
    import inspect

    import transformers

    from hfpipe import models
    from hfpipe.stages import BaseModelRef

    seen = []
    real = transformers.AutoModelForCausalLM.from_pretrained.__func__

    def spy(cls, *args, **kwargs):
        seen.append(kwargs)
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", classmethod(spy))
    ref = BaseModelRef(name_or_path=str(tiny_model_dir), revision="main", trust_remote_code=False)
    model, _ = models.load_model_and_tokenizer(make_inputs(base_model=ref), quantization_config=None,
                                               device_map={"": "cpu"})
    assert model.config.model_type == "llama"
    assert seen[-1]["revision"] == "main" and seen[-1]["trust_remote_code"] is False
    assert seen[-1]["device_map"] == {"": "cpu"} and "quantization_config" in seen[-1]
    assert "load_model_and_tokenizer(inputs, quantization_config=bnb" in inspect.getsource(sft._quantized_copy)


@pytest.mark.gpu
def test_qlora_sft_on_a_gpu(tiny_model_dir, make_inputs, tmp_path):
    pytest.importorskip("bitsandbytes")
    config = sft.Config(max_steps=2, per_device_batch_size=4, max_length=128, max_eval_rows=8,
                        lora={"r": 4, "alpha": 8, "load_in_4bit": True})
    inputs = make_inputs(upstream={"pretrain": tiny_model_dir.parent}, model_stage="pretrain")
    assert sft.run(config, inputs, tmp_path)["lora"]
    assert not list((tmp_path / "model").glob("adapter_*"))


# ------------------------------------------------------------------------------------------------ pretrain's job keys
def test_pretrain_old_mixed_precision_key_is_one_line_naming_precision(tmp_path):
    from hfpipe.recipe import RecipeError, load_recipe

    with pytest.raises(RecipeError) as e:
        load_recipe(REPO / "recipes" / "tiny.yaml", ["pretrain.mixed_precision=bf16"])
    assert "\n" not in str(e.value) and "'mixed_precision' is now 'precision'" in str(e.value), str(e.value)
    assert load_recipe(REPO / "recipes" / "tiny.yaml", ["pretrain.precision=fp32"]).pretrain.precision == "fp32"


def test_pretrain_gradient_checkpointing_trains_the_same_and_is_recorded(tmp_path):
    """Recomputing activations changes memory, not the maths: the same losses; the metrics (the card) say what ran."""
    from test_stage_pretrain import TINY, make_upstream

    from hfpipe.stages import pretrain

    upstream = make_upstream(tmp_path / "up")
    cfg = {**TINY, "max_steps": 6, "warmup_steps": 1, "eval_interval": 6}
    runs = [pretrain.run(pretrain.Config(**cfg, gradient_checkpointing=gc), Inputs_for(upstream, tmp_path / str(gc)),
                         tmp_path / str(gc)) for gc in (False, True)]
    assert [r["gradient_checkpointing"] for r in runs] == [False, True]
    assert runs[0]["precision"] == runs[1]["precision"] == "fp32"  # auto on a CPU
    assert runs[1]["val_loss"] == pytest.approx(runs[0]["val_loss"], abs=1e-5)
    engine = pretrain.describe(pretrain.Config(**cfg, precision="bf16", num_processes=2),
                               type("R", (), {"recipe_dir": tmp_path})())["engine"]
    assert "--mixed_precision bf16" in engine["launch"] and engine["precision"] == "bf16"


def Inputs_for(upstream, folder):
    from hfpipe.stages import Inputs

    return Inputs("t", 0, folder, upstream)
