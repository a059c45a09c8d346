"""Pretrain data: documents -> per-domain token streams -> train/val split -> packed blocks -> a resumable sampler.

Each domain (the data stage's ``metadata.domain``) is its own token stream: documents are shuffled with the seed,
each is prefixed with the document separator, and the tail ``val_fraction`` of every domain's stream is held out,
so every domain gets its own validation split. Blocks never straddle two domains.

The sampler deals *global* micro-batches (all processes together) in an order that is a pure function of the seed,
the curriculum phase and how many blocks each domain has dealt so far. That count is its whole state, so a
checkpoint that stores it resumes the data exactly where it stopped. Every process builds the same sampler and
takes its own slice of each global micro-batch: one process with batch 2B sees the same blocks as two with B.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from hfpipe.stages.data.corpus import iter_documents
from hfpipe.errors import HfpipeError


def domain_key(domain: str) -> str:
    """A domain name usable in a snake_case metric key."""
    return re.sub(r"\W+", "_", domain).strip("_").lower() or "unknown"


def iter_docs(stage_dir: Path):
    """(domain, text) for every non-empty document of the data stage's output."""
    for text, meta in iter_documents(stage_dir):
        yield str(meta.get("domain") or "unknown"), text


@dataclass
class Corpus:
    """Token streams per domain, already split: train[domain], val[domain] (int64 numpy arrays)."""

    train: dict
    val: dict

    @property
    def domains(self) -> list[str]:
        return sorted(self.train)


def load_corpus(stage_dir: Path, tokenizer, bos: int, seed: int, val_fraction: float) -> Corpus:
    import numpy as np

    docs = list(iter_docs(stage_dir))
    if not docs:
        raise HfpipeError(f"pretrain: no non-empty 'text' in {stage_dir / 'data'}", 1)
    ids = tokenizer([t for _, t in docs], add_special_tokens=False, return_attention_mask=False)["input_ids"]
    order = np.random.default_rng(seed).permutation(len(ids))  # shuffle docs so val matches train's mix
    streams: dict[str, list] = {}
    for i in order:
        streams.setdefault(docs[i][0], []).append(np.asarray([bos] + ids[i], dtype=np.int64))
    train, val = {}, {}
    for domain, parts in streams.items():
        stream = np.concatenate(parts)
        n_val = int(len(stream) * val_fraction)
        train[domain], val[domain] = stream[: len(stream) - n_val], stream[len(stream) - n_val:]
    return Corpus(train, val)


def pack(tokens, seq_len: int):
    """Fixed-length blocks (a torch LongTensor [n, seq_len]); the ragged tail is dropped."""
    import torch

    n = len(tokens) // seq_len
    return torch.from_numpy(tokens[: n * seq_len].reshape(n, seq_len).copy())


class BlockSampler:
    """Deterministic global micro-batches of packed blocks for one curriculum phase.

    ``weights=None``: all domains pooled, one shuffled pass after another (natural proportions). Otherwise each
    block's domain is drawn with the given probabilities, and each domain deals its own shuffled passes.
    """

    def __init__(self, blocks: dict, seq_len: int, seed: int, phase: int, weights: dict | None = None):
        import torch

        self.seed, self.phase, self.seq_len, self.weights = seed, phase, seq_len, weights
        if weights is None:
            self.pools = {"*": torch.cat([blocks[d] for d in sorted(blocks)])}
            self.pool_domain = {"*": torch.cat([torch.full((len(blocks[d]),), i) for i, d in enumerate(sorted(blocks))])}
        else:
            self.pools = {d: blocks[d] for d in weights if weights[d] > 0}
        self.domains = sorted(blocks)
        self.dealt = {name: 0 for name in self.pools}  # blocks dealt per pool: the whole state
        self.batches = 0
        self._perm_cache: dict = {}

    def _perm(self, pool: str, epoch: int):
        import torch

        cached = self._perm_cache.get(pool)
        if cached is None or cached[0] != epoch:  # one pass's order per pool is kept
            g = torch.Generator().manual_seed(hash_seed(self.seed, self.phase, pool, epoch))
            cached = self._perm_cache[pool] = (epoch, torch.randperm(len(self.pools[pool]), generator=g))
        return cached[1]

    def _take(self, pool: str, n: int):
        import torch

        size, start = len(self.pools[pool]), self.dealt[pool]
        j = torch.arange(start, start + n)
        idx = torch.empty(n, dtype=torch.long)
        for epoch in range(start // size, (start + n - 1) // size + 1):  # a batch may span two shuffled passes
            mask = (j // size) == epoch
            idx[mask] = self._perm(pool, epoch)[j[mask] % size]
        self.dealt[pool] += n
        return idx

    def next(self, n: int):
        """The next global micro-batch: (blocks [n, seq_len], domain index of each block [n])."""
        import numpy as np
        import torch

        self.batches += 1
        if self.weights is None:
            idx = self._take("*", n)
            return self.pools["*"][idx], self.pool_domain["*"][idx]
        names = list(self.pools)
        p = np.asarray([self.weights[d] for d in names], dtype=np.float64)
        picks = torch.from_numpy(np.random.default_rng([self.seed, self.phase, self.batches]).choice(len(names), n, p=p / p.sum()))
        x, dom = torch.empty((n, self.seq_len), dtype=torch.long), torch.empty(n, dtype=torch.long)
        for k, name in enumerate(names):
            slots = (picks == k).nonzero().flatten()
            if len(slots):
                x[slots] = self.pools[name][self._take(name, len(slots))]
                dom[slots] = self.domains.index(name)
        return x, dom

    def epochs(self) -> float:
        """Passes over the training blocks dealt so far (over the pooled data, or the most-repeated domain)."""
        return max(self.dealt[p] / max(1, len(self.pools[p])) for p in self.pools)

    def state_dict(self) -> dict:
        return {"phase": self.phase, "dealt": dict(self.dealt), "batches": self.batches}

    def load_state_dict(self, state: dict) -> None:
        self.dealt, self.batches = dict(state["dealt"]), state["batches"]


def hash_seed(*parts) -> int:
    """A stable 63-bit seed from mixed parts (Python's hash() of str is salted per process)."""
    import hashlib

    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") >> 1


def unigram_entropy(blocks, vocab_size: int) -> float:
    """Nats/token of the best unigram model fit on these blocks' targets themselves (a floor a real LM must beat)."""
    import numpy as np

    counts = np.bincount(blocks[:, 1:].numpy().ravel(), minlength=vocab_size)
    freq = counts[counts > 0] / counts.sum()
    return float(-(freq * np.log(freq)).sum())
