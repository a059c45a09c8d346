"""MinHash near-dedup: datatrove's own four passes (``minhash_pipelines`` / ``minhash_tasks`` / ``run_minhash``), with
faster shingles (``FastMinhashDedupSignature``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.dedup import MinhashDedupSignature
from datatrove.utils.hashing import HashConfig

from hfpipe.stages.data.steps.quality import FastWordTokenizer, simplify

# datatrove's default xxhash config hashes n-grams as str, which xxhash>=4 rejects ("Strings must be encoded before
# hashing"): MinHash and n-gram decontamination use datatrove's sha1 hashing, which encodes.
SHA1_HASH = HashConfig(precision=64, hash_fc="sha1")
SHINGLE_BASE = 0x100000001B3  # odd multiplier combining word hashes into an n-gram hash (FNV-1's 64-bit prime)


class FastMinhashDedupSignature(MinhashDedupSignature):
    """datatrove's MinhashDedupSignature with faster shingles: the same word n-grams of the same simplified text,
    split on spaces (``simplify``) instead of by spaCy, each n-gram hashed as a polynomial of its words' xxh64 hashes
    (numpy, mod 2**64) instead of one sha1 per joined n-gram. Shingling SOTU ran at 1.4 MB/s with sha1 on a loaded
    core (and slower with spaCy)."""

    def __init__(self, output_folder, config):
        super().__init__(output_folder, config, language=FastWordTokenizer())  # unused: avoids loading spaCy

    def get_shingles(self, text: str):
        import numpy as np
        import xxhash

        words, n = simplify(text).encode("utf-8").split(), self.config.n_grams
        if len(words) < n:
            return np.empty((0, 1), dtype=np.uint64)
        word_hashes = np.fromiter(map(xxhash.xxh64_intdigest, words), dtype=np.uint64, count=len(words))
        shingles = np.zeros(len(words) - n + 1, dtype=np.uint64)
        for k in range(n):  # uint64 arithmetic wraps: mod 2**64
            shingles = shingles * np.uint64(SHINGLE_BASE) + word_hashes[k: len(words) - n + 1 + k]
        return shingles.reshape((-1, 1))


def minhash_tasks(tasks: int = 1, num_buckets: int = 14) -> list[int]:
    """Tasks each ``minhash_pipelines`` stage must run with: signatures and filter as the reader's ``tasks``, buckets
    one task per bucket (datatrove requires a multiple of num_buckets), clustering a single task."""
    return [tasks, num_buckets, 1, tasks]


def minhash_pipelines(work_dir: str | Path, reader: Callable[[], PipelineStep], writer: PipelineStep, *,
                      n_grams: int = 5, num_buckets: int = 14, hashes_per_bucket: int = 8, seed: int = 1,
                      exclusion_writer=None) -> list[list[PipelineStep]]:
    """datatrove's MinHash near-dedup as four pipelines, to run in order with ``minhash_tasks(tasks, num_buckets)``:

    1. ``reader() -> MinhashDedupSignature`` (work_dir/signatures)
    2. ``MinhashDedupBuckets`` (work_dir/buckets: candidate pairs sharing a bucket)
    3. ``MinhashDedupCluster`` (work_dir/remove_ids: one kept document per cluster)
    4. ``reader() -> MinhashDedupFilter -> writer`` (drops the rest; count ``dropped``)

    ``reader`` is a factory: passes 1 and 4 must read the same files in the same order. Defaults are datatrove's
    (5-gram shingles, 14 bands x 8 hashes: ~0.72 Jaccard threshold) except the hash, sha1 (see SHA1_HASH), and the
    shingling, ``FastMinhashDedupSignature``. ``exclusion_writer`` keeps removed documents.
    """
    from datatrove.pipeline.dedup import MinhashConfig, MinhashDedupBuckets, MinhashDedupCluster, MinhashDedupFilter

    work = Path(work_dir)
    config = MinhashConfig(n_grams=n_grams, num_buckets=num_buckets, hashes_per_bucket=hashes_per_bucket, seed=seed,
                           hash_config=SHA1_HASH)
    return [
        [reader(), FastMinhashDedupSignature(output_folder=str(work / "signatures"), config=config)],
        [MinhashDedupBuckets(input_folder=str(work / "signatures"), output_folder=str(work / "buckets"),
                             config=config)],
        [MinhashDedupCluster(input_folder=str(work / "buckets"), output_folder=str(work / "remove_ids"),
                             config=config)],
        [reader(), MinhashDedupFilter(input_folder=str(work / "remove_ids"), exclusion_writer=exclusion_writer),
         writer],
    ]


def run_minhash(work_dir: str | Path, reader: Callable[[], PipelineStep], writer: PipelineStep, *, tasks: int = 1,
                workers: int = 1, **kwargs) -> list[Path]:
    """Run ``minhash_pipelines`` with datatrove's LocalPipelineExecutor; returns the four logging folders
    (each holds datatrove's stats.json)."""
    from datatrove.executor import LocalPipelineExecutor

    pipelines = minhash_pipelines(work_dir, reader, writer, **kwargs)
    logs = []
    for i, (pipeline, n) in enumerate(zip(pipelines, minhash_tasks(tasks, kwargs.get("num_buckets", 14)))):
        logs.append(Path(work_dir) / "logs" / f"minhash_{i + 1}")
        LocalPipelineExecutor(pipeline, tasks=n, workers=min(workers, n), logging_dir=str(logs[-1]),
                              skip_completed=False).run()
    return logs
