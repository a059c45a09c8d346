"""Pretrain stage: a tiny Llama trained from scratch on real stdlib text with the tokenizer stage's BPE.

Run: .venv/bin/python -m pytest tests/test_stage_pretrain.py -q
"""

import json
import math

import pytest
from conftest import stdlib_text
from pydantic import ValidationError
from test_stage_tokenizer import write_data_stage

from hfpipe.errors import HfpipeError
from hfpipe.stages import pretrain as stage
from hfpipe.stages import tokenizer as tokenizer_stage

TINY = {"model": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                  "intermediate_size": 256},
        "seq_len": 64, "batch_size": 8, "learning_rate": 5e-3, "warmup_steps": 5, "eval_blocks": 32, "log_interval": 10}


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    """Finished data + tokenizer stage folders, built from real text by the real tokenizer stage."""
    from hfpipe.stages import Inputs

    data = write_data_stage(tmp_path_factory.mktemp("data"), stdlib_text())
    tok = tmp_path_factory.mktemp("tokenizer")
    tokenizer_stage.run(tokenizer_stage.Config(vocab_size=512), Inputs("t", 0, tok, {"data": data}), tok)
    return {"data": data, "tokenizer": tok}


@pytest.fixture(scope="module")
def trained(upstream, tmp_path_factory):
    from hfpipe.stages import Inputs

    out = tmp_path_factory.mktemp("pretrain")
    config = stage.Config(**TINY, max_steps=200, eval_interval=100)
    return out, config, stage.run(config, Inputs("t", 0, out, upstream), out)


def run_tiny(upstream, out, seed=0, **overrides):
    from hfpipe.stages import Inputs

    return stage.run(stage.Config(**{**TINY, **overrides}), Inputs("t", seed, out, upstream), out)


def test_learns_beyond_unigram_and_saves_a_loadable_model(trained):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, config, metrics = trained
    assert metrics["val_loss"] < metrics["unigram_entropy_baseline"] - 0.3, metrics
    assert metrics["steps"] == 200 and metrics["train_tokens"] == 200 * 8 * 64 and metrics["tokens_per_s"] > 0
    model, tok = AutoModelForCausalLM.from_pretrained(out / "model"), AutoTokenizer.from_pretrained(out / "model")
    assert model.config.model_type == "llama" and model.config.vocab_size == len(tok) == 512
    assert sum(p.numel() for p in model.parameters()) == metrics["n_params"]
    eos_ids = model.generation_config.eos_token_id
    assert tok.convert_tokens_to_ids("<|im_end|>") in eos_ids and tok.convert_tokens_to_ids("<|endoftext|>") in eos_ids
    assert model.generation_config.pad_token_id == tok.pad_token_id and tok.chat_template
    # the reloaded model predicts held-out-like code better than chance (uniform = ln 512 = 6.24 nats)
    ids = tok("<|endoftext|>def add(a, b):\n    return a + b\n", return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        assert model(input_ids=ids, labels=ids).loss.item() < math.log(512)


def test_curves(trained):
    out, config, metrics = trained
    rows = [json.loads(line) for line in (out / "curves.jsonl").read_text().splitlines()]
    train = [r for r in rows if "train_loss" in r]
    val = [r for r in rows if "val_loss" in r]
    assert [r["step"] for r in train] == list(range(10, 201, 10)) and [r["step"] for r in val] == [100, 200]
    assert val[-1]["val_loss"] == metrics["val_loss"] and train[-1]["train_loss"] == metrics["train_loss"]
    assert train[-1]["train_loss"] < train[0]["train_loss"] - 1.0
    peak = config.learning_rate
    assert train[0]["lr"] == pytest.approx(peak * (1 + math.cos(math.pi * 5 / 195)) / 2 * 0.9 + peak * 0.1, rel=1e-6)
    assert train[-1]["lr"] == pytest.approx(peak * config.min_lr_ratio)  # cosine ends at the floor
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_same_seed_gives_bit_identical_weights_and_accumulation_is_exact(upstream, tmp_path):
    import torch
    from safetensors.torch import load_file

    runs = {name: run_tiny(upstream, tmp_path / name, seed=seed, max_steps=12, gradient_accumulation_steps=accum,
                           batch_size=16 // accum, eval_interval=6)
            for name, seed, accum in (("a", 0, 2), ("b", 0, 2), ("c", 1, 2), ("d", 0, 1))}
    a, b, c, d = (load_file(tmp_path / name / "model" / "model.safetensors") for name in "abcd")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)  # the seed matters: the check above can fail
    assert runs["a"]["val_loss"] == runs["b"]["val_loss"]
    # 2 accumulated micro-batches of 8 = one batch of 16 (the same blocks): same update up to float rounding
    assert all(torch.allclose(a[k], d[k], atol=1e-5) for k in a)
    assert not all(torch.allclose(a[k], c[k], atol=1e-5) for k in a)


def test_non_finite_loss_stops_naming_the_step(upstream, tmp_path, monkeypatch):
    from transformers import LlamaForCausalLM

    forward, calls = LlamaForCausalLM.forward, []

    def poisoned(self, *args, **kwargs):  # the third micro-batch's loss turns NaN, as after an overflow
        out = forward(self, *args, **kwargs)
        calls.append(1)
        if len(calls) == 3:
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(LlamaForCausalLM, "forward", poisoned)
    with pytest.raises(HfpipeError, match=r"non-finite training at step 3 \(loss=nan"):
        run_tiny(upstream, tmp_path / "nan", max_steps=10, eval_interval=10)
    assert not (tmp_path / "nan" / "model").exists()
    assert (tmp_path / "nan" / "curves.jsonl").exists()


def test_real_divergence_is_caught(upstream, tmp_path):
    """No mocking: an absurd LR (clipping off) blows the weights up within a few steps."""
    with pytest.raises(HfpipeError, match=r"non-finite training at step \d+ .*learning_rate \(now 10000.0\)"):
        run_tiny(upstream, tmp_path / "div", learning_rate=1e4, warmup_steps=0, max_grad_norm=1e30, max_steps=30)


def test_bad_config_is_a_one_line_error(upstream, tmp_path):
    with pytest.raises(ValidationError, match="must divide hidden_size"):
        stage.Config(model={"hidden_size": 100, "num_attention_heads": 3})
    with pytest.raises(ValidationError, match="warmup_steps"):
        stage.Config(max_steps=10, warmup_steps=10)
    with pytest.raises(HfpipeError, match="seq_len=100000"):
        run_tiny(upstream, tmp_path / "a", seq_len=100_000, max_steps=1, warmup_steps=0)
    with pytest.raises(HfpipeError, match="model_type: unknown architecture 'no-such-arch'"):
        run_tiny(upstream, tmp_path / "b", model={"model_type": "no-such-arch"}, max_steps=1, warmup_steps=0)
