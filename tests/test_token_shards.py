"""Token shards (tokenize once, read many): the tokenizer stage writes per-domain datatrove .ds shards with document
boundaries; pretraining memory-maps them through a distributed, resumable sampler. Real stdlib code and the CPython
licence as two domains, a real BPE, datatrove's DocumentTokenizer, the real pretrain stage.

Run: .venv/bin/python -m pytest tests/test_token_shards.py -q
"""

import gzip
import json
import shutil
import sysconfig
from pathlib import Path

import numpy as np
import pytest
from conftest import build_tiny_tokenizer, stdlib_text
from test_stage_pretrain import TINY, write_docs, write_token_shards

from hfpipe.errors import HfpipeError
from hfpipe.models import BOS_TOKEN
from hfpipe.stages import Inputs
from hfpipe.stages.pretrain.data import ShardSampler, TokenShards, permute
from hfpipe.stages.tokenizer.shards import read_index


def two_domain_docs():
    prose = (Path(sysconfig.get_paths()["stdlib"]) / "LICENSE.txt").read_text().split("\n\n")
    return [("code", t) for t in stdlib_text()] + [("prose", p) for p in prose if p.strip()]


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    docs = two_domain_docs()
    data = write_docs(root / "data", docs)
    build_tiny_tokenizer([t for _, t in docs], vocab_size=512).save_pretrained(root / "tok" / "tokenizer")
    return {"data": data, "tokenizer": write_token_shards(data, root / "tok"), "docs": docs}


def test_shards_hold_every_document_bos_prefixed_with_boundaries(upstream):
    from transformers import AutoTokenizer

    index = read_index(upstream["tokenizer"])
    assert index["token_bytes"] == 2 and index["vocab_size"] == 512 and sorted(index["domains"]) == ["code", "prose"]
    tok = AutoTokenizer.from_pretrained(upstream["tokenizer"] / "tokenizer")
    bos = tok.convert_tokens_to_ids(BOS_TOKEN)
    for domain in ("code", "prose"):
        want = sorted([bos] + tok(t, add_special_tokens=False)["input_ids"] for d, t in upstream["docs"] if d == domain)
        got = []
        for row in index["domains"][domain]:
            path = upstream["tokenizer"] / "tokens" / row["file"]
            ids = np.fromfile(path, dtype="<u2")
            ends = np.fromfile(f"{path}.index", dtype="<u8")  # datatrove's document boundaries
            assert len(ids) == row["tokens"] and len(ends) == row["documents"] and ends[-1] == len(ids)
            got += [ids[a:b].tolist() for a, b in zip([0, *ends[:-1]], ends)]
        assert sorted(got) == want  # every document exactly once, each starting with the separator
    # documents are shuffled inside a file with the seed: same seed, same bytes; another seed, another order
    prose = upstream["tokenizer"] / "tokens" / index["domains"]["prose"][0]["file"]
    again = upstream["tokenizer"].parent / "again"
    shutil.copytree(upstream["tokenizer"] / "tokenizer", again / "tokenizer")
    from hfpipe.stages.tokenizer.shard_writer import write_shards

    write_shards(upstream["data"], again / "tokenizer", again / "tokens", seed=0, bos_token=BOS_TOKEN)
    assert (again / "tokens" / prose.relative_to(upstream["tokenizer"] / "tokens")).read_bytes() == prose.read_bytes()
    write_shards(upstream["data"], again / "tokenizer", again / "tokens", seed=1, bos_token=BOS_TOKEN)
    other = (again / "tokens" / prose.relative_to(upstream["tokenizer"] / "tokens")).read_bytes()
    assert other != prose.read_bytes() and sorted(other) == sorted(prose.read_bytes())


def test_permutation_is_a_bijection_and_keyed():
    for n in (1, 2, 3, 5, 64, 1000, 4097):
        p = permute(np.arange(n), n, 7)
        assert sorted(p.tolist()) == list(range(n)), n
    a, b = permute(np.arange(1000), 1000, 1), permute(np.arange(1000), 1000, 2)
    assert (a != b).mean() > 0.9 and (a != np.arange(1000)).mean() > 0.9


@pytest.mark.parametrize("weights", [None, {"code": 1.0, "prose": 1.0}])
def test_each_rank_reads_only_its_part_and_the_ranks_together_read_the_global_batch(upstream, weights):
    def sampler():
        shards = TokenShards(upstream["tokenizer"], 0.05)
        return ShardSampler(shards, 32, seed=3, phase=0, weights=weights), shards

    (one, s1), (r0, s0), (r1, s1b) = sampler(), sampler(), sampler()
    index = read_index(upstream["tokenizer"])
    blocks = {}  # every training block of each domain's shards
    for d, rows in index["domains"].items():
        ids = np.fromfile(upstream["tokenizer"] / "tokens" / rows[0]["file"], dtype="<u2").astype(np.int64)
        blocks[d] = {tuple(ids[i: i + 32]) for i in range(0, len(ids) - 31, 32)}
    for _ in range(80):  # more than a pass over the prose blocks: passes roll over inside a batch
        x, dom = one.next(8)
        x0, d0 = r0.next(8, rank=0, world=2)
        x1, d1 = r1.next(8, rank=1, world=2)
        assert x0.shape == (4, 32) and x.shape == (8, 32)
        assert np.array_equal(np.concatenate([x0, x1]), x.numpy()) and dom.tolist() == d0.tolist() == d1.tolist()
        for row, d in zip(x.tolist(), dom.tolist()):  # a slot's block comes from its domain's shards
            assert tuple(row) in blocks[one.domains[d]]
    assert s0.tokens_read == s1b.tokens_read == s1.tokens_read // 2 == 80 * 4 * 32
    assert one.state_dict() == r0.state_dict() == r1.state_dict()
    if weights:
        share = one.dealt["prose"] / (one.dealt["prose"] + one.dealt["code"])
        assert 0.35 < share < 0.65 and one.epochs() > 1  # 1:1 although prose is a few % of the tokens


def test_blocks_come_from_the_train_split_and_validation_from_the_tail(upstream):
    shards = TokenShards(upstream["tokenizer"], 0.1)
    index = read_index(upstream["tokenizer"])
    for d in ("code", "prose"):
        stream = np.concatenate([np.fromfile(upstream["tokenizer"] / "tokens" / r["file"], dtype="<u2")
                                 for r in index["domains"][d]]).astype(np.int64)
        n_train = len(stream) - int(len(stream) * 0.1)
        val = shards.val_blocks(d, 16, 1000).numpy()
        assert len(val) == (len(stream) - n_train) // 16 and np.array_equal(val.ravel(), stream[n_train: n_train + val.size])
        sampler = ShardSampler(shards, 16, seed=0, phase=0, weights={d: 1.0})
        x, _ = sampler.next(sampler.sizes[d])  # exactly one pass
        train_blocks = sorted(tuple(stream[i: i + 16].tolist()) for i in range(0, n_train // 16 * 16, 16))
        assert sorted(map(tuple, x.tolist())) == train_blocks  # every training block once, none of the held-out tail


def test_memory_does_not_grow_with_the_corpus(upstream, tmp_path):
    """x1 vs x16 copies of the data: the sampler's structures and state are the same size (traced allocations)."""
    import tracemalloc

    big = tmp_path / "x16"
    (big / "data").mkdir(parents=True)
    for i in range(16):
        shutil.copy(upstream["data"] / "data" / "part.jsonl.gz", big / "data" / f"copy{i:02d}.jsonl.gz")
    shutil.copytree(upstream["tokenizer"] / "tokenizer", tmp_path / "tok16" / "tokenizer")
    write_token_shards(big, tmp_path / "tok16")
    peaks, states = {}, {}
    for name, tok in (("x1", upstream["tokenizer"]), ("x16", tmp_path / "tok16")):
        tracemalloc.start()
        shards = TokenShards(tok, 0.05)
        sampler = ShardSampler(shards, 32, seed=0, phase=0)
        for _ in range(20):
            sampler.next(16)
        peaks[name] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        states[name] = (sampler.blocks(), json.dumps(sampler.state_dict()))
    assert states["x16"][0] >= 15 * states["x1"][0]  # 16x the blocks ...
    assert len(states["x16"][1]) == len(states["x1"][1])  # ... the same state ...
    assert peaks["x16"] < 1.5 * peaks["x1"] + 64_000, peaks  # ... and about the same memory (not 16x)


def test_data_position_is_in_the_checkpoint_and_resume_deals_the_next_batch(upstream, tmp_path):
    import torch

    from hfpipe.stages import pretrain as stage

    out = tmp_path / "run"
    cfg = stage.Config(**{**TINY, "max_steps": 6, "warmup_steps": 1, "eval_interval": 6, "checkpoint_interval": 4,
                          "keep_checkpoints_when_done": True, "batch_size": 4, "gradient_accumulation_steps": 2})
    stage.run(cfg, Inputs("t", 0, out, {k: upstream[k] for k in ("data", "tokenizer")}), out)
    ckpt = out / "checkpoints" / "step-00000004"
    states = [torch.load(p, weights_only=False) for p in sorted(ckpt.glob("custom_checkpoint_*.pkl"))]
    progress = next(s for s in states if "samplers" in s)
    assert progress["step"] == 4
    position = progress["samplers"][0]
    assert position == {"phase": 0, "seq_len": 64, "dealt": {"*": 4 * 2 * 4}, "batches": 4 * 2}  # steps x accum x batch
    fresh = ShardSampler(TokenShards(upstream["tokenizer"], cfg.val_fraction), 64, seed=0, phase=0)
    straight = ShardSampler(TokenShards(upstream["tokenizer"], cfg.val_fraction), 64, seed=0, phase=0)
    for _ in range(8):
        straight.next(4)
    fresh.load_state_dict(position)
    assert torch.equal(fresh.next(4)[0], straight.next(4)[0])  # resumes exactly where the checkpoint stopped
    with pytest.raises(HfpipeError, match="does not match this run's sampler"):
        ShardSampler(TokenShards(upstream["tokenizer"], 0.05), 32, seed=0, phase=0).load_state_dict(position)


def test_tokenizer_stage_writes_the_shards_and_pretrain_needs_them(upstream, tmp_path, make_inputs):
    from hfpipe.stages import pretrain
    from hfpipe.stages import tokenizer as stage

    cfg = {"reference": None, "bundled_heldout": False, "vocab_size": 400}
    m = stage.run(stage.Config(**cfg), make_inputs(upstream={"data": upstream["data"]}), tmp_path / "tok")
    index = read_index(tmp_path / "tok")
    assert m["shard_tokens"] == index["tokens"] > 0 and m["shard_files"] == 2 and m["shard_tokens_prose"] > 0
    with gzip.open(upstream["data"] / "data" / "part.jsonl.gz", "rt") as f:
        assert sum(r["documents"] for rows in index["domains"].values() for r in rows) == sum(1 for _ in f)
    stage.run(stage.Config(**cfg, token_shards=False), make_inputs(upstream={"data": upstream["data"]}), tmp_path / "no")
    assert not (tmp_path / "no" / "tokens").exists()
    with pytest.raises(HfpipeError, match=r"no token shards in .*/no/tokens .*tokenizer.token_shards is false"):
        pretrain.run(pretrain.Config(**{**TINY, "max_steps": 1, "warmup_steps": 0}),
                     Inputs("t", 0, tmp_path, {"data": upstream["data"], "tokenizer": tmp_path / "no"}), tmp_path / "p")


def test_tokenizer_stage_streams_the_same_sample_and_a_reused_tokenizer_reads_only_what_it_needs(
        upstream, tmp_path, make_inputs, monkeypatch):
    from collections import Counter

    from hfpipe.stages import tokenizer as stage
    from hfpipe.stages.data import corpus
    from hfpipe.stages.tokenizer import build as tb
    from hfpipe.stages.tokenizer.report import cap_candidates, cap_per_group

    data = upstream["data"]
    # the plan is made on metadata only; the stream yields exactly the in-memory sample (same texts, same repeats)
    mix_args = dict(language_weights={}, domain_weights={"prose": 3.0}, alpha=1.0, max_bytes=150_000, seed=0)
    train, held = tb.split_heldout(tb.read_docs(data), 0.2)
    texts, mix = tb.sample_mix(train, **mix_args)
    refs = tb.scan_docs(data)
    assert refs and all(d.text == "" and len(d.digest) == 32 for d in refs)
    rtrain, rheld = tb.split_heldout(refs, 0.2)
    picked, rmix = tb.pick_mix(rtrain, **mix_args)
    assert rmix == mix and mix["en/prose"]["sampled_bytes"] > mix["en/prose"]["natural_bytes"]  # prose repeats
    stream = tb.SampleStream(data, Counter(d.ordinal for d in picked), cap_candidates(rheld, 2000))
    assert sorted(stream) == sorted(texts)
    kept = cap_per_group([tb.Doc(stream.kept[d.ordinal], d.language, d.domain, d.source) for d in rheld
                          if d.ordinal in stream.kept], 2000)
    assert kept == cap_per_group(held, 2000) and kept

    # what the stage reads: count the documents the data stage's reader hands out
    reads = Counter()
    real = corpus.iter_files

    def counting(paths):
        for doc in real(paths):
            reads["docs"] += 1
            yield doc

    monkeypatch.setattr(corpus, "iter_files", counting)
    n = len(refs)
    cfg = {"reference": None, "token_shards": False, "pretrained": str(upstream["tokenizer"] / "tokenizer")}
    m = stage.run(stage.Config(**cfg, heldout_fraction=0.0), make_inputs(upstream={"data": data}), tmp_path / "a")
    assert reads["docs"] == 0 and m["training_docs"] == 0 and m["bytes_per_token"] > 1  # nothing of the data read
    stage.run(stage.Config(**cfg, heldout_fraction=0.2), make_inputs(upstream={"data": data}), tmp_path / "b")
    last = max(cap_candidates(rheld, stage.Config().heldout_max_bytes))
    assert reads["docs"] == n + last + 1  # one metadata pass, then up to the last held-out document it keeps
    reads.clear()
    first_only = tb.SampleStream(data, {}, {0})
    first_only.drain()
    assert reads["docs"] == 1 and list(first_only.kept) == [0]  # reading stops after the last document needed
    reads.clear()
    m = stage.run(stage.Config(reference=None, token_shards=False, vocab_size=400), make_inputs(upstream={"data": data}),
                  tmp_path / "c")
    assert reads["docs"] <= 2 * n and m["training_docs"] > 0  # training: the metadata pass and one streamed pass
