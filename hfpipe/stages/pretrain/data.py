"""Pretrain data: the tokenizer stage's token shards, memory-mapped -> per-domain train/val split -> a distributed,
resumable block sampler.

The corpus is tokenized once, by the tokenizer stage (hfpipe/stages/tokenizer/shards.py): per domain, datatrove
``.ds`` files of whole documents, each prefixed with the document separator, shuffled with the seed. Here nothing
is tokenized and nothing proportional to the corpus is held in memory: the files are ``numpy.memmap``\\ s, and what
is kept per domain is one number per file.

- **Split.** A domain's token stream is its files in order; its tail ``val_fraction`` is held out (per-domain
  validation loss), the rest is training data. Blocks never straddle two files or two domains.
- **Blocks.** Block ``b`` of a domain at context ``seq_len`` is ``seq_len`` consecutive training tokens of one file;
  a file's ragged tail (< seq_len tokens) is dropped.
- **Sampler.** :class:`ShardSampler` deals *global* micro-batches (all processes together) in an order that is a pure
  function of the seed, the curriculum phase and how many blocks each pool has dealt. Each pass over a pool is a
  keyed pseudo-random permutation of its blocks (a Feistel network with cycle walking: O(1) memory, a new key per
  pass), so the whole state is those counts, and a checkpoint that stores it (``state_dict``) resumes the data
  exactly where it stopped. Natural proportions pool every domain's blocks; with mixture weights each slot of a
  micro-batch first draws its domain (shard set) with the weights, then that domain's next block. Every process
  computes the same global indices (arithmetic only) and reads from the memory maps **only its own slice**: one
  process with batch 2B sees the same blocks as two with B.
"""

from __future__ import annotations

import re
from pathlib import Path

from hfpipe.errors import HfpipeError
from hfpipe.stages.tokenizer.shards import SHARDS, read_index


def domain_key(domain: str) -> str:
    """A domain name usable in a snake_case metric key."""
    return re.sub(r"\W+", "_", domain).strip("_").lower() or "unknown"


# ----------------------------------------------------------------------------------------------------------------
# The shards: memory maps, the train/val split, blocks


class TokenShards:
    """The tokenizer stage's token shards of every domain, opened lazily as read-only memory maps."""

    def __init__(self, tokenizer_stage: Path, val_fraction: float):
        import numpy as np

        index = read_index(tokenizer_stage)
        self.root = Path(tokenizer_stage) / SHARDS
        self.dtype = np.dtype("<u2" if index["token_bytes"] == 2 else "<u4")
        self.vocab_size = index["vocab_size"]
        self.domains = sorted(index["domains"])
        self.files = {d: [self.root / r["file"] for r in index["domains"][d]] for d in self.domains}
        self.train = {}  # domain -> training tokens of each file (the rest of the stream is validation)
        self.val_start = {}  # domain -> (file, offset) where its validation tail starts
        for d in self.domains:
            sizes = [int(r["tokens"]) for r in index["domains"][d]]
            n_train = sum(sizes) - int(sum(sizes) * val_fraction)
            starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
            self.train[d] = np.clip(n_train - starts, 0, sizes).astype(np.int64)
            self.val_start[d] = (sizes, n_train)
        self._maps: dict = {}
        self.tokens_read = 0  # training tokens read from the maps by this process (each rank: only its slice)

    def _map(self, path: Path):
        import numpy as np

        m = self._maps.get(path)
        if m is None:
            m = self._maps[path] = np.memmap(path, dtype=self.dtype, mode="r")
        return m

    def train_tokens(self) -> int:
        return int(sum(t.sum() for t in self.train.values()))

    def block_starts(self, domain: str, seq_len: int):
        """Cumulative block counts of the domain's files at this context: block b lives in file
        ``searchsorted(starts, b, 'right') - 1``. One int64 per file."""
        import numpy as np

        return np.concatenate([[0], np.cumsum(self.train[domain] // seq_len)]).astype(np.int64)

    def read_block(self, domain: str, block: int, seq_len: int, starts):
        import numpy as np

        f = int(np.searchsorted(starts, block, side="right")) - 1
        at = (int(block) - int(starts[f])) * seq_len
        self.tokens_read += seq_len
        return np.asarray(self._map(self.files[domain][f])[at: at + seq_len], dtype=np.int64)

    def val_blocks(self, domain: str, seq_len: int, max_blocks: int):
        """The first ``max_blocks`` blocks of the domain's held-out tail (a LongTensor [k, seq_len]; k may be 0)."""
        import numpy as np
        import torch

        sizes, n_train = self.val_start[domain]
        need = min(sum(sizes) - n_train, max_blocks * seq_len) // seq_len * seq_len
        parts, pos = [], 0
        for path, size in zip(self.files[domain], sizes):
            lo, hi = max(n_train, pos), min(pos + size, n_train + need)
            if lo < hi:
                parts.append(np.asarray(self._map(path)[lo - pos: hi - pos], dtype=np.int64))
            pos += size
        tokens = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
        return torch.from_numpy(tokens.reshape(-1, seq_len))


# ----------------------------------------------------------------------------------------------------------------
# The sampler


class ShardSampler:
    """Deterministic global micro-batches of blocks of one curriculum phase, each process reading only its slice.

    ``weights=None``: all domains pooled, one permuted pass after another (natural proportions). Otherwise each
    slot's domain is drawn with the given probabilities, and each domain deals its own permuted passes.
    """

    def __init__(self, shards: TokenShards, seq_len: int, seed: int, phase: int, weights: dict | None = None):
        import numpy as np

        self.shards, self.seed, self.phase, self.seq_len, self.weights = shards, seed, phase, seq_len, weights
        self.domains = shards.domains
        self.starts = {d: shards.block_starts(d, seq_len) for d in self.domains}
        blocks = {d: int(self.starts[d][-1]) for d in self.domains}
        if weights is None:
            self.sizes = {"*": sum(blocks.values())}
            self.offsets = np.concatenate([[0], np.cumsum([blocks[d] for d in self.domains])]).astype(np.int64)
        else:
            self.sizes = {d: blocks[d] for d in weights if weights[d] > 0}
        self.dealt = {name: 0 for name in self.sizes}  # blocks dealt per pool: with `batches`, the whole state
        self.batches = 0

    def _take(self, pool: str, n: int):
        """The pool's next ``n`` block ids (a pass may end inside the batch: the next one is permuted anew)."""
        import numpy as np

        size, start = self.sizes[pool], self.dealt[pool]
        j = np.arange(start, start + n, dtype=np.int64)
        epoch, pos = j // size, j % size
        out = np.empty(n, dtype=np.int64)
        for e in np.unique(epoch):
            mask = epoch == e
            out[mask] = permute(pos[mask], size, hash_seed(self.seed, self.phase, pool, int(e)))
        self.dealt[pool] += n
        return out

    def next(self, n: int, rank: int = 0, world: int = 1):
        """The next global micro-batch of ``n`` blocks: (this process's slice [n // world, seq_len], read from the
        shards, and the domain index of every block of the global batch [n])."""
        import numpy as np
        import torch

        self.batches += 1
        if self.weights is None:
            ids = self._take("*", n)
            dom = np.searchsorted(self.offsets, ids, side="right") - 1
            block = ids - self.offsets[dom]
        else:
            names = list(self.sizes)
            p = np.asarray([self.weights[d] for d in names], dtype=np.float64)
            picks = np.random.default_rng([self.seed, self.phase, self.batches]).choice(len(names), n, p=p / p.sum())
            dom, block = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64)
            for k, name in enumerate(names):
                slots = np.flatnonzero(picks == k)
                if len(slots):
                    block[slots] = self._take(name, len(slots))
                    dom[slots] = self.domains.index(name)
        micro = n // world
        mine = range(rank * micro, (rank + 1) * micro)
        x = np.stack([self.shards.read_block(self.domains[dom[i]], block[i], self.seq_len, self.starts[self.domains[dom[i]]])
                      for i in mine])
        return torch.from_numpy(x), torch.from_numpy(dom)

    def blocks(self) -> int:
        return sum(self.sizes.values())

    def empty_pools(self) -> list[str]:
        return [p for p, s in self.sizes.items() if s == 0]

    def epochs(self) -> float:
        """Passes over the training blocks dealt so far (over the pooled data, or the most-repeated domain)."""
        return max(self.dealt[p] / max(1, self.sizes[p]) for p in self.sizes)

    def state_dict(self) -> dict:
        return {"phase": self.phase, "seq_len": self.seq_len, "dealt": dict(self.dealt), "batches": self.batches}

    def load_state_dict(self, state: dict) -> None:
        if state.get("seq_len", self.seq_len) != self.seq_len or set(state["dealt"]) != set(self.dealt):
            raise HfpipeError(f"pretrain: the checkpoint's data position {state} does not match this run's sampler "
                              f"(seq_len {self.seq_len}, pools {sorted(self.dealt)})", 1)
        self.dealt, self.batches = dict(state["dealt"]), state["batches"]


# ----------------------------------------------------------------------------------------------------------------
# A permutation of range(n) in O(1) memory


def _mix64(x):
    """splitmix64's finaliser on a uint64 array (wrapping arithmetic)."""
    import numpy as np

    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def permute(pos, n: int, key: int, rounds: int = 4):
    """Image of the positions ``pos`` (int array, each in [0, n)) under a pseudo-random permutation of range(n)
    chosen by ``key``: a balanced Feistel network over the next even power of two, cycle-walked back into [0, n).
    A bijection by construction; nothing of size n is built."""
    import numpy as np

    if n <= 1:
        return np.zeros(len(pos), dtype=np.int64)
    bits = max(2, (n - 1).bit_length())
    half = (bits + 1) // 2
    shift, mask = np.uint64(half), np.uint64((1 << half) - 1)
    keys = _mix64(np.asarray([key + r for r in range(rounds)], dtype=np.uint64))
    out = np.asarray(pos, dtype=np.uint64).copy()
    todo = np.ones(len(out), dtype=bool)
    while todo.any():  # cycle walking: re-apply to whatever landed outside [0, n) (expected < 4 times)
        y = out[todo]
        left, right = y >> shift, y & mask
        for k in keys:
            left, right = right, left ^ (_mix64(right ^ k) & mask)
        out[todo] = (left << shift) | right
        todo = out >= np.uint64(n)
    return out.astype(np.int64)


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


# ----------------------------------------------------------------------------------------------------------------
# For `hfpipe run --dry-run`: the sampler and the memory each rank needs (nothing is read)

OPTIMIZER_BYTES = {"adamw": 8, "sgd": 4, "adafactor": 4}  # optimizer state per parameter (fp32; Adafactor ~factored)


def describe_data(c, recipe, engine: dict, non_embedding_params: int | None) -> dict:
    """{"engine": {"sampler": ...}, "expected": {"memory_per_rank": ...}} for the pretrain stage's dry run.

    Memory per rank, in GB: fp32 weights + gradients + optimizer state per parameter (16 bytes with AdamW), divided by
    the processes under FSDP / ZeRO-3; activations of one micro-batch (34 bytes x seq_len x batch x hidden per layer
    in 16-bit, twice that in fp32, ~2 with gradient checkpointing: Korthikanti et al. 2022 without the attention
    matrix, which SDPA does not keep) plus the fp32 logits and their gradient; and the data: one micro-batch of int64
    ids and the validation blocks. The data term depends on the batch, never on the corpus: the shards are memory
    maps (their pages are the OS page cache's, shared by the ranks of a node)."""
    m = c.model
    tok = getattr(recipe, "tokenizer", None)
    vocab = tok.vocab_size if tok is not None and not tok.pretrained else None
    procs, dist = c.num_processes, (engine.get("accelerate_settings") or {}).get("distributed_type", "NO")
    sharded = dist == "FSDP" or (dist == "DEEPSPEED" and (engine.get("accelerate_settings") or {})
                                  .get("deepspeed", {}).get("zero_stage") == 3)
    emb = vocab * m.hidden_size * (1 if m.tie_word_embeddings else 2) if vocab else 0
    params = (non_embedding_params or 0) + emb
    state = params * (4 + 4 + OPTIMIZER_BYTES[c.optimizer]) / (procs if sharded else 1)
    micro = c.batch_size * c.seq_len  # tokens per micro-batch (the curriculum keeps it constant)
    width = 2 if c.precision in ("bf16", "fp16") else 4  # auto: fp32 unless the GPU has bf16 (an upper bound)
    per_layer = (2 * width if c.gradient_checkpointing else 17 * width) * micro * m.hidden_size
    logits = micro * vocab * 8 if vocab else 0
    domains = {getattr(s, "domain", None) for s in getattr(getattr(recipe, "data", None), "sources", []) or []}
    data = (micro + c.eval_blocks * c.seq_len * max(1, len(domains - {None}))) * 8
    gb = 1024**3
    total = state + per_layer * m.num_hidden_layers + logits + data
    weights = c.mixture or "natural proportions (every domain's blocks pooled)"
    return {"engine": {"sampler": {
                "class": "hfpipe.stages.pretrain.data.ShardSampler",
                "reads": "<tokenizer stage>/tokens/<domain>/*.ds, memory-mapped (numpy.memmap); nothing tokenized here",
                "order": "per pass a keyed Feistel permutation of the pool's blocks (O(1) memory); global micro-batches, "
                         f"each of the {procs} rank(s) reads only its slice",
                "mixture": weights, "split": f"tail {c.val_fraction} of each domain's token stream held out",
                "checkpointed": "blocks dealt per pool and micro-batches drawn (TrainingProgress, in every checkpoint)"}},
            "expected": {"memory_per_rank": {
                "total_gb": round(total / gb, 2), "weights_grads_optimizer_gb": round(state / gb, 2),
                "activations_gb": round((per_layer * m.num_hidden_layers + logits) / gb, 2),
                "data_mb": round(data / 1024**2, 2),
                "assumes": f"{'sharded over ' + str(procs) + ' ranks' if sharded else 'replicated'} fp32 weights, "
                           f"{c.optimizer}, {'16' if width == 2 else '32'}-bit activations"
                           + ("" if vocab else "; embeddings and logits left out (a reused tokenizer's vocabulary is "
                                               "known once the tokenizer stage has run)")}}}
