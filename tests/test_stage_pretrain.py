"""Pretrain stage: a tiny Llama trained from scratch on real stdlib text with the tokenizer stage's BPE.

Run: .venv/bin/python -m pytest tests/test_stage_pretrain.py -q
"""

import gzip
import json
import math

import pytest
from conftest import build_tiny_tokenizer, stdlib_text
from pydantic import ValidationError

from hfpipe.errors import HfpipeError
from hfpipe.stages import pretrain as stage

TINY = {"model": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                  "intermediate_size": 256},
        "seq_len": 64, "batch_size": 8, "learning_rate": 5e-3, "warmup_steps": 5, "eval_blocks": 32, "log_interval": 10}


def write_docs(folder, docs):
    """A folder shaped like the data stage's output (data/*.jsonl.gz, text + metadata); docs = [(domain, text)]."""
    (folder / "data").mkdir(parents=True, exist_ok=True)
    with gzip.open(folder / "data" / "part.jsonl.gz", "wt", encoding="utf-8") as f:
        for i, (domain, text) in enumerate(docs):
            meta = {"source": domain, "domain": domain, "language": "en", "license": "PSF-2.0", "origin": "python"}
            f.write(json.dumps({"text": text, "id": str(i), "metadata": meta}) + "\n")
    return folder


def make_upstream(root):
    """Finished data + tokenizer stage folders from real stdlib code and a real 512-token BPE (tokenizer/ and tokens/
    contract: the tokenizer stage's token shards, written by its own writer)."""
    texts = stdlib_text()
    data = write_docs(root / "data", [("code", t) for t in texts])
    build_tiny_tokenizer(texts, vocab_size=512).save_pretrained(root / "tok" / "tokenizer")
    return {"data": data, "tokenizer": write_token_shards(data, root / "tok")}


def write_token_shards(data, tok):
    """The tokenizer stage's token shards of `data` in the tokenizer stage folder `tok` (returned)."""
    from hfpipe.models import BOS_TOKEN
    from hfpipe.stages.tokenizer.shard_writer import write_shards

    write_shards(data, tok / "tokenizer", tok / "tokens", seed=0, bos_token=BOS_TOKEN)
    return tok


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    return make_upstream(tmp_path_factory.mktemp("upstream"))


@pytest.fixture(scope="module")
def trained(upstream, tmp_path_factory):
    from hfpipe.stages import Inputs

    out = tmp_path_factory.mktemp("pretrain")
    config = stage.Config(**TINY, max_steps=300, eval_interval=100)
    return out, config, stage.run(config, Inputs("t", 0, out, upstream), out)


def run_tiny(upstream, out, seed=0, **overrides):
    from hfpipe.stages import Inputs

    return stage.run(stage.Config(**{**TINY, **overrides}), Inputs("t", seed, out, upstream), out)


def test_learns_beyond_unigram_and_saves_a_loadable_model(trained):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, config, metrics = trained
    assert metrics["val_loss"] < metrics["unigram_entropy_baseline"] - 0.3, metrics
    assert metrics["steps"] == 300 and metrics["train_tokens"] == 300 * 8 * 64 and metrics["tokens_per_s"] > 0
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
    assert [r["step"] for r in train] == list(range(10, 301, 10)) and [r["step"] for r in val] == [100, 200, 300]
    assert val[-1]["val_loss"] == metrics["val_loss"] and train[-1]["train_loss"] == metrics["train_loss"]
    assert train[-1]["train_loss"] < train[0]["train_loss"] - 1.0
    peak = config.learning_rate
    assert train[0]["lr"] == pytest.approx(peak * (1 + math.cos(math.pi * 5 / 295)) / 2 * 0.9 + peak * 0.1, rel=1e-6)
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


def test_wsd_and_curriculum_show_in_the_curves(upstream, tmp_path):
    """WSD: warmup, a flat plateau at the peak, then a linear decay over the last 25%; seq_len 32 then 64 with the
    micro-batch doubled/halved so tokens per step stay 8 x 64."""
    out = tmp_path / "wsd"
    metrics = run_tiny(upstream, out, max_steps=40, warmup_steps=4, lr_schedule="wsd", decay_fraction=0.25,
                       min_lr_ratio=0.1, log_interval=1, eval_interval=20,
                       curriculum=[{"seq_len": 32, "steps": 16}, {"seq_len": 64, "steps": 24}])
    rows = [json.loads(line) for line in (out / "curves.jsonl").read_text().splitlines()]
    train = {r["step"]: r for r in rows if "train_loss" in r}
    peak = TINY["learning_rate"]
    lr = [train[s]["lr"] for s in range(1, 41)]  # LR after step s = schedule(s)
    assert lr[0] < lr[1] < lr[2] < peak  # warmup
    assert all(v == pytest.approx(peak) for v in lr[3:30])  # stable: steps 4..30
    decay = lr[29:]
    assert all(a > b for a, b in zip(decay, decay[1:])) and lr[-1] == pytest.approx(peak * 0.1)  # decay to the floor
    assert [train[s]["seq_len"] for s in range(1, 41)] == [32] * 16 + [64] * 24
    assert [train[s]["phase"] for s in (1, 16, 17, 40)] == [0, 0, 1, 1]
    assert {train[s]["micro_batch"] * train[s]["seq_len"] for s in train} == {8 * 64}
    assert metrics["train_tokens"] == 40 * 8 * 64 and metrics["phases"] == 2
    from transformers import AutoConfig

    assert AutoConfig.from_pretrained(out / "model").max_position_embeddings == 64


def test_linear_and_constant_schedules_end_where_they_should(upstream, tmp_path):
    peak = TINY["learning_rate"]
    for schedule, end in (("linear", peak * 0.1), ("constant", peak)):
        out = tmp_path / schedule
        run_tiny(upstream, out, max_steps=12, warmup_steps=2, lr_schedule=schedule, log_interval=1, eval_interval=12)
        lrs = [json.loads(line)["lr"] for line in (out / "curves.jsonl").read_text().splitlines() if '"lr"' in line]
        assert lrs[0] == pytest.approx(peak / 2) and lrs[-1] == pytest.approx(end), (schedule, lrs)


@pytest.mark.parametrize("optimizer", ["adafactor", "sgd"])
def test_other_optimizers_train(upstream, tmp_path, optimizer):
    lr = {"adafactor": 5e-3, "sgd": 0.3}[optimizer]
    metrics = run_tiny(upstream, tmp_path / optimizer, optimizer=optimizer, learning_rate=lr, max_steps=30,
                       eval_interval=30)
    rows = [json.loads(line) for line in (tmp_path / optimizer / "curves.jsonl").read_text().splitlines()]
    train = [r["train_loss"] for r in rows if "train_loss" in r]
    assert train[-1] < train[0] - 0.3, (optimizer, train)
    assert metrics["flops_per_token"] > 6 * metrics["n_params"] - 6 * 512 * 64  # every matmul param counts (tied head)


@pytest.fixture(scope="module")
def two_domains(upstream, tmp_path_factory):
    """A data stage with two domains: stdlib code and the CPython licence (English prose)."""
    import sysconfig
    from pathlib import Path

    prose = (Path(sysconfig.get_paths()["stdlib"]) / "LICENSE.txt").read_text().split("\n\n")
    docs = [("code", t) for t in stdlib_text()] + [("prose", p) for p in prose if p.strip()]
    import shutil

    data, tok = write_docs(tmp_path_factory.mktemp("data2"), docs), tmp_path_factory.mktemp("tok2")
    shutil.copytree(upstream["tokenizer"] / "tokenizer", tok / "tokenizer")
    return {"data": data, "tokenizer": write_token_shards(data, tok)}


def test_mixture_weights_and_per_domain_validation(two_domains, tmp_path):
    natural = run_tiny(two_domains, tmp_path / "natural", max_steps=20, eval_interval=20, val_fraction=0.1)
    mixed = run_tiny(two_domains, tmp_path / "mixed", max_steps=20, eval_interval=20, val_fraction=0.1,
                     mixture={"code": 1.0, "prose": 1.0})
    assert natural["mixture_prose"] < 0.15 and natural["mixture_prose"] + natural["mixture_code"] == pytest.approx(1, abs=1e-3)
    assert 0.4 < mixed["mixture_prose"] < 0.6  # sampled 1:1 although prose is a few % of the tokens
    for m in (natural, mixed):
        assert {"val_loss_code", "val_loss_prose"} <= m.keys() and m["val_loss_code"] != m["val_loss_prose"]
        assert min(m["val_loss_code"], m["val_loss_prose"]) <= m["val_loss"] <= max(m["val_loss_code"], m["val_loss_prose"])
    rows = [json.loads(line) for line in (tmp_path / "mixed" / "curves.jsonl").read_text().splitlines()]
    assert any("val_loss_prose" in r for r in rows)
    with pytest.raises(HfpipeError, match="mixture: domain.*poetry.*it has: code, prose"):
        run_tiny(two_domains, tmp_path / "bad", max_steps=2, warmup_steps=0, mixture={"poetry": 1.0})


def test_missing_tracker_names_the_package(upstream, tmp_path):
    import importlib.util

    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here")
    with pytest.raises(HfpipeError, match=r"report_to: 'wandb' is not installed; `pip install wandb`"):
        run_tiny(upstream, tmp_path / "t", report_to=["wandb"], max_steps=2, warmup_steps=0)
