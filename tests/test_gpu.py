"""GPU paths (marker `gpu`): bf16 SFT with gradient checkpointing, QLoRA, a bitsandbytes int8 variant, serving on the
GPU, GRPO generating with vLLM, lm-eval's vLLM backend against the HF one, vLLM serving through the router.

Every test here needs a CUDA GPU and is skipped without one (so `make test` on a CPU machine skips them, with the
reason); the vLLM and bitsandbytes ones also need that library. They drive the real stage code on a tiny Llama whose
head width (64) every vLLM attention backend takes. scripts/gpu_check.sh runs them on the GPU machine:

    pytest -m gpu tests/test_gpu.py -rs
"""

import gc
import importlib.util
import json
import math
from pathlib import Path

import httpx
import pytest
import torch

from conftest import build_tiny_tokenizer, deploy_variant, stdlib_text
from hfpipe.stages import Inputs, deploy, rl, serve, sft
from hfpipe.stages import eval as eval_stage
from hfpipe.stages.serve import loadtest
from hfpipe.stages.serve import router as serving

REPO = Path(__file__).resolve().parent.parent
CUDA = torch.cuda.is_available()
NO_VLLM = ("vllm is not installed (pip install vllm on a CUDA machine; the lent H200's image has none and its wheel "
           "cannot be carried there: see scripts/gpu_check.sh)")

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU (torch sees none)")]
# (without a GPU the module's reason is the one given)
needs_vllm = pytest.mark.skipif(CUDA and importlib.util.find_spec("vllm") is None, reason=NO_VLLM)
needs_bnb = pytest.mark.skipif(CUDA and importlib.util.find_spec("bitsandbytes") is None,
                               reason="bitsandbytes is not installed (pip install bitsandbytes on a CUDA machine)")
# the bundled tasks scored by log-likelihood (multiple choice and rolling perplexity)
LOGLIKELIHOOD_TASKS = ["capitals", "reasoning_analogies", "multilingual_trivia", "heldout_prose"]


@pytest.fixture(scope="module")
def gpu_model_dir(tmp_path_factory) -> Path:
    """A tiny random Llama (2 layers, 2 heads of 64) + a real trained BPE tokenizer with the ChatML template."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from hfpipe.models import save_model

    torch.manual_seed(0)
    tokenizer = build_tiny_tokenizer(stdlib_text())
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=64, max_position_embeddings=512,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)
    return save_model(LlamaForCausalLM(config), tokenizer, tmp_path_factory.mktemp("gpu") / "model")


def _inputs(model_dir: Path, seed: int = 0) -> Inputs:
    return Inputs(recipe_name="test", seed=seed, recipe_dir=REPO / "recipes", upstream={"pretrain": model_dir.parent},
                  model_stage="pretrain", fingerprint="0" * 64)


def _free_gpu():
    gc.collect()
    torch.cuda.empty_cache()


def _with_trl_args(monkeypatch, module, extra: dict, when: str | None = None) -> list[dict]:
    """Record the TRL arguments the stage builds (only the config whose arguments hold ``when``), with ``extra``
    added, for the test to check what reached TRL."""
    seen = []
    original = module.trl_arguments

    def wrapped(*args, **kwargs):
        out = original(*args, **kwargs)
        if when is None or when in out:
            out.update(extra)
            seen.append(out)
        return out

    monkeypatch.setattr(module, "trl_arguments", wrapped)
    return seen


def test_bf16_sft_with_gradient_checkpointing_lowers_heldout_loss(gpu_model_dir, tmp_path, monkeypatch):
    config = sft.Config(max_steps=12, learning_rate=3e-3, per_device_batch_size=8, max_length=128,
                        precision="bf16", gradient_checkpointing=True)
    used = _with_trl_args(monkeypatch, sft, {})
    torch.cuda.reset_peak_memory_stats()
    metrics = sft.run(config, _inputs(gpu_model_dir), tmp_path)

    assert used and used[-1]["bf16"] is True and used[-1]["activation_checkpointing"] is True
    assert torch.cuda.max_memory_allocated() > 0  # the trainer ran on the GPU
    losses = [metrics[k] for k in ("eval_loss_before", "train_loss", "eval_loss_after")]
    assert all(math.isfinite(v) for v in losses), metrics
    assert metrics["eval_loss_after"] < metrics["eval_loss_before"] - 0.3, metrics
    assert metrics["train_steps"] == 12 and metrics["train_tokens_per_s"] > 0
    from transformers import AutoModelForCausalLM

    trained = AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    assert all(torch.isfinite(p).all() for p in trained.parameters())
    _free_gpu()


@needs_bnb
def test_qlora_sft_trains_on_4bit_and_merges_into_full_precision(gpu_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    config = sft.Config(max_steps=8, learning_rate=1e-2, per_device_batch_size=8, max_length=128,
                        lora={"r": 8, "alpha": 16, "load_in_4bit": True})
    metrics = sft.run(config, _inputs(gpu_model_dir), tmp_path)

    assert metrics["lora"] and all(math.isfinite(metrics[k]) for k in ("eval_loss_before", "eval_loss_after"))
    assert metrics["eval_loss_after"] < metrics["eval_loss_before"], metrics
    out = tmp_path / "model"
    assert not list(out.glob("adapter_*")) and "quantization_config" not in json.loads((out / "config.json").read_text())
    merged = AutoModelForCausalLM.from_pretrained(out)
    base = AutoModelForCausalLM.from_pretrained(gpu_model_dir)
    assert merged.state_dict().keys() == base.state_dict().keys()  # a plain Llama, no lora_A/lora_B, no 4-bit
    assert all(p.dtype == torch.float32 for p in merged.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(merged.parameters(), base.parameters()))
    _free_gpu()


@pytest.fixture(scope="module")
def bnb_deploy_dir(gpu_model_dir, tmp_path_factory) -> Path:
    """The deploy stage's real output with a bitsandbytes LLM.int8 variant: export/ and export/quantized/bnb_int8/."""
    return deploy_variant(gpu_model_dir, tmp_path_factory.mktemp("deploy"), "bnb_int8", parity_max_tokens=512,
                          parity_task_limit=16, latency_repeats=3)


@needs_bnb
def test_bnb_int8_variant_is_saved_measured_and_served_on_the_gpu_through_the_router(bnb_deploy_dir, tmp_path):
    """deploy.quantize: [bnb_int8] on the GPU (parity numbers against the full model), then both variants behind the
    router with `transformers serve` on cuda: answers, and a stop at the end-of-turn token on each variant."""
    from openai import OpenAI

    parity = json.loads((bnb_deploy_dir / "parity.json").read_text())["quantized"]["bnb_int8"]
    assert parity["library"].startswith("bitsandbytes") and parity["size_ratio"] < 0.8, parity
    assert all(math.isfinite(parity[k]) for k in ("perplexity", "perplexity_full", "latency_ratio")), parity
    # a random model's next-token scores are near ties, so int8 may flip the argmax often; perplexity stays close
    assert 0 <= parity["argmax_agreement"] <= 1 and abs(parity["perplexity_delta"]) < 0.1 * parity["perplexity_full"]
    export = bnb_deploy_dir / "export"
    assert "quantization_config" in json.loads((export / "quantized" / "bnb_int8" / "config.json").read_text())

    config = serve.Config(variants=["full", "bnb_int8"], device="cuda:0", route={"rule": "header"})
    eos_id = serve.export_checks(export)["eos_token_ids"][0]
    with serving.Stack(serving.variant_dirs(export, config.variants), config, tmp_path, serve.route_rule(config, 0),
                       "test", host="127.0.0.1", port=serving.free_port()) as stack:
        client = OpenAI(base_url=f"{stack.url}/v1", api_key="not-needed", max_retries=0, timeout=120)
        for variant in ("full", "bnb_int8"):
            raw = client.chat.completions.with_raw_response.create(
                model="test", messages=[{"role": "user", "content": "Hello!"}], max_tokens=8, temperature=0.0,
                extra_headers={"x-hfpipe-variant": variant})
            a = raw.parse()
            assert raw.headers.get("x-hfpipe-variant") == variant
            assert a.choices[0].finish_reason in ("stop", "length") and 1 <= a.usage.completion_tokens <= 8
            stop = client.chat.completions.create(model="test", messages=[{"role": "user", "content": "Hi"}],
                                                  max_tokens=8, temperature=0.0, logit_bias={str(eos_id): 100.0},
                                                  extra_headers={"x-hfpipe-variant": variant})
            assert stop.choices[0].finish_reason == "stop" and stop.choices[0].message.content == ""
    _free_gpu()


@needs_vllm
def test_vllm_serving_answers_through_the_router_and_stops_at_end_of_turn(gpu_model_dir, tmp_path):
    """serve.engine: vllm on the deploy stage's export: `vllm serve` behind the router (OpenAI client), the
    end-of-turn stop from the export's generation_config.json, the load test and the router's metrics."""
    from openai import OpenAI

    out = tmp_path / "deploy"
    out.mkdir()
    inputs = Inputs(recipe_name="test", seed=0, recipe_dir=REPO / "recipes", upstream={"pretrain": gpu_model_dir.parent},
                    model_stage="pretrain", fingerprint="0" * 64, recipe_yaml="name: test\nseed: 0\n")
    deploy.run(deploy.Config(export_dtype="bfloat16"), inputs, out)
    export = out / "export"
    config = serve.Config(engine="vllm", variants=["full"], dtype="bfloat16", max_num_seqs=16, compile=False,
                          start_timeout_s=600, loadtest={"requests": 32, "concurrency": 8, "max_tokens": 16})
    eos_id = serve.export_checks(export)["eos_token_ids"][0]
    with serving.Stack(serving.variant_dirs(export, config.variants), config, tmp_path, serve.route_rule(config, 0),
                       "test", host="127.0.0.1", port=serving.free_port()) as stack:
        client = OpenAI(base_url=f"{stack.url}/v1", api_key="not-needed", max_retries=0, timeout=120)
        a = client.chat.completions.create(model="test", messages=[{"role": "user", "content": "What is AI?"}],
                                           max_tokens=16, temperature=0.0)
        assert a.choices[0].finish_reason in ("stop", "length") and 1 <= a.usage.completion_tokens <= 16
        assert "<|im_end|>" not in a.choices[0].message.content
        stop = client.chat.completions.create(model="test", messages=[{"role": "user", "content": "Hi"}],
                                              max_tokens=8, temperature=0.0, logit_bias={str(eos_id): 100.0})
        assert stop.choices[0].finish_reason == "stop" and stop.choices[0].message.content == ""
        assert stop.usage.completion_tokens <= 1
        result = loadtest.run_loadtest(stack.url, requests=32, concurrency=8, max_seconds=60, max_tokens=16,
                                       prompts_file=None, stream=False, timeout_s=120)
        m = serving.parse_metrics(httpx.get(f"{stack.url}/metrics").text)
    assert result["requests_ok"] == 32 and result["errors"] == 0, result
    assert m['hfpipe_requests_total{status="200",variant="full"}'] == 32 + 2


@needs_vllm
def test_vllm_eval_backend_gives_the_hf_backend_scores(gpu_model_dir, tmp_path):
    """eval.backend: vllm vs hf on the bundled log-likelihood tasks, same model folder, fp32 on both sides: every
    score within 1e-3 (absolute, or relative for perplexities of hundreds)."""
    common = dict(tasks=LOGLIKELIHOOD_TASKS, limit=24, num_fewshot=0, batch_size=8, max_length=512,
                  latency_batch_sizes=[], bootstrap_iters=0)
    hf = eval_stage.run(eval_stage.Config(**common, backend="hf"), _inputs(gpu_model_dir), tmp_path / "hf")
    _free_gpu()
    vl = eval_stage.run(eval_stage.Config(**common, backend="vllm", model_args={
        "dtype": "float32", "gpu_memory_utilization": 0.3, "enforce_eager": True}), _inputs(gpu_model_dir),
        tmp_path / "vllm")
    scores = {k for k in hf if "/" in k and not k.startswith(("latency/", "cost/", "regression/"))}
    assert scores and scores <= set(vl), (sorted(scores), sorted(vl))
    assert {k.split("/")[0] for k in scores} == set(LOGLIKELIHOOD_TASKS)
    off = {k: (hf[k], vl[k]) for k in scores if not math.isclose(hf[k], vl[k], rel_tol=1e-3, abs_tol=1e-3)}
    assert not off, off
    results = json.loads((tmp_path / "vllm" / "results.json").read_text())
    assert results["model"]["parameters"] is None and results["latency"] is None
    _free_gpu()


@needs_vllm
def test_grpo_generating_with_vllm_colocated_raises_heldout_reward(gpu_model_dir, tmp_path, monkeypatch):
    """The rl stage's GRPO with TRL generating through vLLM in the training process (vllm_mode colocate): the held-out
    reward (same sampling seed before and after) rises, as it does with transformers' generate on CPU
    (tests/test_stage_rl.py)."""
    vllm_args = {"use_vllm": True, "vllm_mode": "colocate", "vllm_gpu_memory_utilization": 0.25,
                 "vllm_max_model_length": 512}
    grpo = dict(reward_model={"dataset": "hfpipe:rl_pairs.jsonl", "eval_dataset": "hfpipe:rl_pairs_eval.jsonl",
                              "max_steps": 20, "learning_rate": 3e-3, "per_device_batch_size": 16, "max_length": 256},
                algorithm="grpo", tasks=["arithmetic"],
                rewards=[{"name": "reward_model", "weight": 1.0}, {"name": "exact_answer", "weight": 1.0}],
                learning_rate=1e-2, max_steps=30, per_device_batch_size=16, num_generations=4,
                max_completion_length=6, eval_prompts=16)
    # vLLM in the training process (external_launcher) joins torch.distributed: one process, rank 0 (TRL's docs for
    # colocate on one GPU without `accelerate launch`)
    for k, v in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                 "MASTER_PORT": str(serving.free_port())}.items():
        monkeypatch.setenv(k, v)
    config = rl.Config(**grpo, precision="bf16", trainer=vllm_args)
    used = _with_trl_args(monkeypatch, rl, {}, when="num_generations")
    metrics = rl.run(config, _inputs(gpu_model_dir), tmp_path)

    assert used and used[-1]["use_vllm"] is True and used[-1]["vllm_mode"] == "colocate"
    assert all(math.isfinite(v) for v in metrics.values() if isinstance(v, float)), metrics
    assert metrics["eval_reward_after"] > metrics["eval_reward_before"] + 0.5, metrics
    assert metrics["train_steps"] == 30 and metrics["algorithm"] == "grpo"
    _free_gpu()
