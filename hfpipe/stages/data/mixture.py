"""The data stage's bookkeeping steps and mixture balancing (datatrove PipelineSteps + plain planning code).

- ``Meter``: a pass-through step counting docs and UTF-8 bytes; the stage puts one after every step, so stats.json
  has docs and bytes in/out of each step.
- ``Ledger``: a pass-through step writing one line per document (hash, bytes, domain, language) to
  ``<folder>/<rank>.tsv``: the exact composition of the deduplicated corpus, read back by the sampler.
- ``GzipShard``: after a plain-jsonl writer, gzips the task's shard without a timestamp (bit-identical reruns).
- ``DroppedWriter``: datatrove's JsonlWriter as a filter's ``exclusion_writer``: the documents a step drops, with
  ``metadata.filter_reason``, under ``dropped/<step>/`` (``gzip_tree`` compresses them once every pass is done).
- ``plan_mixture``: target shares per domain and per language -> bytes to keep in each (domain, language) cell,
  by alternating down-scaling of rows and columns (iterative proportional fitting that only ever removes data), then
  a hash threshold per cell so that keeping docs with hash <= threshold gives that many bytes (within one doc).
- ``BalanceSampler``: keeps a doc iff its seeded hash is under its cell's threshold. Every task computes the same plan
  from the ledger, so the sampling is deterministic and needs no coordination (works under Slurm or Ray too).
- ``merged_stats``/``step_table``: datatrove's per-task stats files -> rows of stats.json; ``plot_mixture``.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from collections import defaultdict
from pathlib import Path

from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.writers import JsonlWriter

from hfpipe.errors import HfpipeError
from hfpipe.stages import progress

OTHER = "(other)"  # the group of domains/languages not named in a target, sharing the remaining share
FITTING_ROUNDS = 200  # row/column down-scaling rounds; converges far sooner on a handful of cells
# a step's own counters copied into its stats.json row: drop reasons, PII redactions per kind, detected languages,
# documents a routed step skipped (other domain / language), contamination per task, licence headers found
COUNTED = ("dropped", "redacted_", "docs_redacted", "language_", "skipped_", "contaminated_", "license_header_")


def doc_hash(seed: int, doc_id: str) -> int:
    return int(hashlib.sha1(f"{seed}:{doc_id}".encode()).hexdigest()[:15], 16)


class Meter(PipelineStep):
    """Counts docs and UTF-8 bytes flowing through (stats 'docs' and 'bytes'). ``ticks``: the documents that also
    advance the stage's progress (``hfpipe.stages.progress``): True for every one, or the names of the sources
    (metadata.source) whose documents count here; in a worker process the ticks go nowhere."""

    type = "📏 METER"

    def __init__(self, label: str, ticks: bool | frozenset[str] = False):
        self.name = f"meter:{label}"  # before the base init, which names the stats block after it
        super().__init__()
        self.ticks = ticks

    def run(self, data, rank: int = 0, world_size: int = 1):
        for doc in data:
            self.stat_update("docs")
            self.stat_update("bytes", value=len(doc.text.encode("utf-8")))
            if self.ticks is True or (self.ticks and doc.metadata.get("source") in self.ticks):
                progress(advance=1)
            yield doc


class Ledger(PipelineStep):
    """Writes (hash, bytes, domain, language) of every doc passing through to <folder>/<rank>.tsv."""

    type = "📒 LEDGER"
    name = "ledger"

    def __init__(self, folder: str, seed: int):
        super().__init__()
        self.folder, self.seed = folder, seed

    def run(self, data, rank: int = 0, world_size: int = 1):
        Path(self.folder).mkdir(parents=True, exist_ok=True)
        with open(Path(self.folder) / f"{rank:05d}.tsv", "w", encoding="utf-8") as f:
            for doc in data:
                m = doc.metadata
                f.write(f"{doc_hash(self.seed, doc.id)}\t{len(doc.text.encode('utf-8'))}\t"
                        f"{_clean(m['domain'])}\t{_clean(m['language'])}\n")
                yield doc


class GzipShard(PipelineStep):
    """Placed after a JsonlWriter(output_filename="${rank}.jsonl", compression=None): once the writer has closed
    ``<folder>/<rank>.jsonl``, replaces it by ``<rank>.jsonl.gz`` holding ``gzip.compress(text, mtime=0)``. datatrove's
    own gzip output stamps the time (reruns would differ); compressing here keeps that work in the tasks (in parallel)
    rather than in the main process after the pass."""

    type = "🗜 GZIP"
    name = "gzip shard"

    def __init__(self, folder: str):
        super().__init__()
        self.folder = folder

    def run(self, data, rank: int = 0, world_size: int = 1):
        yield from data  # the writer upstream closes its file when this stream ends
        plain = Path(self.folder) / f"{rank:05d}.jsonl"
        if plain.exists():
            with self.track_time():
                gzip_file(plain)


def gzip_file(plain: Path) -> Path:
    """``x.jsonl`` -> ``x.jsonl.gz`` holding ``gzip.compress(text, mtime=0)`` (no timestamp: bit-identical reruns)."""
    packed = plain.with_name(plain.name + ".gz")
    packed.write_bytes(gzip.compress(plain.read_bytes(), mtime=0))
    plain.unlink()
    return packed


def gzip_tree(folder: Path) -> None:
    """Every ``*.jsonl`` below ``folder`` -> ``*.jsonl.gz`` (gzip_file)."""
    for plain in sorted(Path(folder).rglob("*.jsonl")):
        gzip_file(plain)


class DroppedWriter(JsonlWriter):
    """datatrove's JsonlWriter as the ``exclusion_writer`` of a filter: each document the filter drops, with
    ``metadata.filter_reason`` (BaseFilter sets it), to ``<folder>/<rank>.jsonl``. Opened for appending: a filter
    routed to one domain (ForDomain) runs, and opens and closes its exclusion writer, once per stretch of that
    domain's documents; a new stage folder starts empty. Plain jsonl, compressed at the end (gzip_tree)."""

    def __init__(self, folder: str):
        super().__init__(folder, output_filename="${rank}.jsonl", compression=None)
        self.output_mg = self.output_folder.get_output_file_manager(mode="ab", compression=None)


def _clean(value) -> str:
    return str(value).replace("\t", " ").replace("\n", " ")


def read_ledger(folder: Path) -> list[tuple[int, int, str, str]]:
    rows = []
    for f in sorted(Path(folder).glob("*.tsv")):
        for line in f.read_text(encoding="utf-8").splitlines():
            h, b, d, lang = line.split("\t")
            rows.append((int(h), int(b), d, lang))
    return rows


# ---------------------------------------------------------------------------------------------------------------------
# planning


def _group(key: str, shares: dict[str, float]) -> str | None:
    """Which target group a domain/language falls in: itself, OTHER (remaining share), or None (dropped)."""
    if not shares or key in shares:
        return key
    return OTHER if sum(shares.values()) < 1 - 1e-9 else None


def _targets(shares: dict[str, float]) -> dict[str, float]:
    rest = 1 - sum(shares.values())
    return {**shares, **({OTHER: rest} if rest > 1e-9 else {})}


def plan_mixture(rows, domain_shares: dict[str, float], language_shares: dict[str, float],
                 max_bytes: int | None) -> dict:
    """rows of (hash, bytes, domain, language) -> {"thresholds": {(d, l): hash}, "available", "planned", ...}."""
    cells: dict[tuple[str, str], int] = defaultdict(int)
    for _, b, d, lang in rows:
        cells[(d, lang)] += b
    x = {c: float(b) for c, b in cells.items() if _group(c[0], domain_shares) and _group(c[1], language_shares)}
    for axis, shares in ((0, domain_shares), (1, language_shares)):
        present = {_group(c[axis], shares) for c in x}
        missing = [g for g, t in _targets(shares).items() if t > 0 and g not in present] if shares else []
        if missing:
            what = ("domain", "language")[axis]
            raise HfpipeError(f"data.balance: {what} target(s) {missing} have no documents after filtering "
                              f"(present: {sorted(str(p) for p in present)})")
    for _ in range(FITTING_ROUNDS):
        for axis, shares in ((0, domain_shares), (1, language_shares)):
            if not shares:
                continue
            targets, sums = _targets(shares), defaultdict(float)
            for c, v in x.items():
                sums[_group(c[axis], shares)] += v
            scale = min(sums[g] / t for g, t in targets.items() if t > 0 and sums[g] > 0)
            for c in x:
                g = _group(c[axis], shares)
                x[c] *= min(1.0, targets.get(g, 0) * scale / sums[g]) if sums[g] else 0.0
    total = sum(x.values())
    if max_bytes is not None and total > max_bytes:
        x = {c: v * max_bytes / total for c, v in x.items()}
    by_cell: dict[tuple[str, str], list[tuple[int, int]]] = defaultdict(list)
    for h, b, d, lang in rows:
        by_cell[(d, lang)].append((h, b))
    thresholds = {}
    for c, docs in by_cell.items():
        quota, kept, thresholds[c] = x.get(c, 0.0), 0, -1
        for h, b in sorted(docs):
            if kept + b / 2 > quota:  # round to the nearest document
                break
            kept, thresholds[c] = kept + b, h
    return {"thresholds": thresholds, "available": dict(cells), "planned": {c: round(v) for c, v in x.items()}}


class BalanceSampler(PipelineStep):
    """Keeps a document iff its seeded hash is at most its (domain, language) cell's threshold."""

    type = "⚖️ SAMPLER"
    name = "balance"

    def __init__(self, ledger: str, seed: int, domain_shares: dict, language_shares: dict, max_bytes: int | None):
        super().__init__()
        self.ledger, self.seed, self.max_bytes = ledger, seed, max_bytes
        self.domain_shares, self.language_shares = dict(domain_shares), dict(language_shares)

    def run(self, data, rank: int = 0, world_size: int = 1):
        plan = plan_mixture(read_ledger(Path(self.ledger)), self.domain_shares, self.language_shares, self.max_bytes)
        for doc in data:
            self.stat_update("total")
            cell = (_clean(doc.metadata["domain"]), _clean(doc.metadata["language"]))
            if doc_hash(self.seed, doc.id) <= plan["thresholds"].get(cell, -1):
                self.stat_update("forwarded")
                yield doc
            else:
                self.stat_update(f"dropped_balance_{cell[0]}")


# ---------------------------------------------------------------------------------------------------------------------
# stats


def merged_stats(logging_dir: Path) -> list[dict[str, float]]:
    """Sum datatrove's per-task stats files (logging_dir/stats/*.json) step by step -> [{stat: total}]."""
    merged: list[dict[str, float]] = []
    for f in sorted((Path(logging_dir) / "stats").glob("*.json")):
        for i, block in enumerate(json.loads(f.read_text())):
            if i == len(merged):
                merged.append(defaultdict(float))
            for k, v in block.get("stats", {}).items():
                merged[i][k] += v["total"] if isinstance(v, dict) else v
    return [dict(m) for m in merged]


def step_table(blocks: list[dict], names: list[str | None]) -> list[dict]:
    """Rows {step, docs_in, bytes_in, docs_out, bytes_out, dropped_*} from a metered pipeline's merged stats.

    names[i] is "meter:<x>" for a Meter, a label for a reported step, None for readers/writers; each reported step's
    in/out are the meters before/after it, plus its own counters named in COUNTED."""
    rows, last, pending = [], None, []
    for name, stats in zip(names, blocks):
        if name is None:
            continue
        if name.startswith("meter:"):
            now = (int(stats.get("docs", 0)), int(stats.get("bytes", 0)))
            for label, own in pending:
                rows.append({"step": label, "docs_in": last[0] if last else now[0],
                             "bytes_in": last[1] if last else now[1], "docs_out": now[0], "bytes_out": now[1],
                             **{k: int(v) for k, v in sorted(own.items()) if k.startswith(COUNTED)}})
            last, pending = now, []
        else:
            pending.append((name, stats))
    return rows


def plot_mixture(path: Path, achieved: dict[str, dict[str, float]], targets: dict[str, dict[str, float]]) -> None:
    """Bars of the achieved byte shares per domain and per language, targets as black ticks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), dpi=100)
    for ax, axis in zip(axes, ("domain", "language")):
        keys = sorted(achieved[axis], key=lambda k: -achieved[axis][k])
        ax.bar(keys, [100 * achieved[axis][k] for k in keys], color="#4c72b0", label="achieved")
        tk = [k for k in keys if k in targets[axis]]
        if tk:
            ax.scatter(tk, [100 * targets[axis][k] for k in tk], marker="_", s=600, color="black", label="target")
            ax.legend(fontsize=8)
        ax.set_title(f"final mixture by {axis} (% of bytes)")
        ax.tick_params(axis="x", rotation=45, labelsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
