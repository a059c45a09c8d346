"""Data stage: raw text and code -> quality-filtered, exactly deduplicated jsonl.gz shards, with datatrove.

Phases (each a banner below):
1. resolve + validate the sources: every file exists, every JSON line parses (fail fast, naming file:line);
2. filter pass: one datatrove reader per source (metadata source/domain/language/license/origin on every doc)
   -> Gopher quality filter on the prose domains only (code is never judged by prose heuristics) -> shards in work/;
3. exact dedup, datatrove's three passes: signatures -> find duplicates -> drop them while writing data/*.jsonl.gz;
4. stats.json (per step docs in/out + drop reasons, per domain totals) and a self-check that reads the output back.
"""

from __future__ import annotations

import glob
import gzip
import json
import shutil
from functools import partial
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from hfpipe.errors import HfpipeError
from hfpipe.stages import Inputs, StageConfig

READS: tuple[str, ...] = ()
CARD = {"name": "datatrove", "paper": "Gopher quality rules: Rae et al. 2021, arXiv:2112.11446",
        "citation": "Penedo et al., DataTrove: large scale data processing, 2024"}
REQUIRED_METADATA = ("source", "domain", "language", "license", "origin")


class Source(StageConfig):
    name: str = Field(min_length=1, description="source name, stored as metadata.source on every doc")
    path: str = Field(min_length=1, description="a file, a folder (every file below it) or a glob; relative paths "
                                                "are relative to the recipe file's folder")
    format: Literal["text", "jsonl"] = Field(description="text: one doc per file; jsonl: one doc per line with a "
                                                         "'text' field (optional 'id' and 'metadata')")
    domain: str = Field(min_length=1, description="metadata.domain, e.g. prose or code; routes the quality filter")
    language: str = Field(min_length=1, description="metadata.language: an ISO 639-1 code, or the programming "
                                                    "language for code")
    license: str = Field(min_length=1, description="metadata.license, an SPDX id or a short licence statement")


class QualityFilter(StageConfig):
    """datatrove's GopherQualityFilter; the defaults are the Gopher paper's thresholds."""

    enabled: bool = Field(True, description="apply the filter at all")
    domains: tuple[str, ...] = Field(("prose",), description="only docs whose metadata.domain is listed are judged")
    language: str = Field("en", description="language of the word tokenizer datatrove uses to count words")
    min_doc_words: int = Field(50, ge=0, description="words; shorter docs are dropped (gopher_short_doc)")
    max_doc_words: int = Field(100_000, ge=1, description="words; longer docs are dropped (gopher_long_doc)")
    min_avg_word_length: float = Field(3, ge=0, description="characters; mean word length floor")
    max_avg_word_length: float = Field(10, ge=0, description="characters; mean word length ceiling")
    max_symbol_word_ratio: float = Field(0.1, ge=0, description="'#' or ellipses per word")
    max_bullet_lines_ratio: float = Field(0.9, ge=0, le=1, description="fraction of lines starting with a bullet")
    max_ellipsis_lines_ratio: float = Field(0.3, ge=0, le=1, description="fraction of lines ending with an ellipsis")
    max_non_alpha_words_ratio: float = Field(0.8, ge=0, le=1, description="minimum fraction of words (punctuation "
                                             "tokens count as words) holding a letter, despite the datatrove name")
    min_stop_words: int = Field(2, ge=0, description="distinct English stop words (the, be, to, of, ...) required")


class Config(StageConfig):
    sources: tuple[Source, ...] = Field(min_length=1, description="raw inputs; a doc's metadata says which one")
    quality: QualityFilter = Field(default_factory=QualityFilter, description="prose quality filter")
    dedup: bool = Field(True, description="drop exact duplicates (same text) across all sources, keeping one")
    tasks: int = Field(1, ge=1, le=1024, description="datatrove tasks: each reads every tasks-th file; one output "
                                                     "shard per task")
    workers: int = Field(1, ge=1, le=256, description="processes running tasks at once (1 = in this process)")

    @field_validator("sources")
    @classmethod
    def _unique_names(cls, sources):
        if len({s.name for s in sources}) < len(sources):
            raise ValueError("source names must be unique (they prefix document ids)")
        return sources


# ---------------------------------------------------------------------------------------------------------------------
# 1. resolve + validate the sources


def _resolve(source: Source, recipe_dir: Path, index: int) -> tuple[str, Path, list[str]]:
    """(base folder as written, base folder resolved, sorted file paths relative to it) for a file, folder or glob."""
    where = f"data.sources[{index}] ({source.name}): path {source.path!r}"
    parts = Path(source.path).expanduser().parts
    magic = next((i for i, part in enumerate(parts) if glob.has_magic(part)), len(parts))
    written = Path(*parts[:magic]) if magic else Path(".")
    base = written if written.is_absolute() else recipe_dir / written
    if magic < len(parts):
        files = [f for f in base.glob("/".join(parts[magic:])) if f.is_file()]
    elif base.is_dir():
        files = [f for f in base.rglob("*") if f.is_file() and not f.name.startswith(".")]
    elif base.is_file():
        written, base, files = written.parent, base.parent, [base]
    else:
        raise HfpipeError(f"{where} does not exist (resolved to {base})")
    if not files:
        raise HfpipeError(f"{where} matches no file (resolved under {base})")
    return written.as_posix(), base, sorted(f.relative_to(base).as_posix() for f in files)


def input_files(config: Config, recipe_dir: Path) -> list[Path]:
    """Every raw file the stage reads: their content hashes enter the fingerprint."""
    out = []
    for i, source in enumerate(config.sources):
        _, base, rel = _resolve(source, Path(recipe_dir), i)
        out += [base / r for r in rel]
    return sorted(set(out))


def _validate(path: Path, fmt: str) -> tuple[int, int]:
    """(docs, UTF-8 bytes of text) in one raw file; a bad file raises HfpipeError naming file (and line)."""
    try:
        if fmt == "text":
            text = path.read_text(encoding="utf-8")
            return int(bool(text)), len(text.encode())
        docs = nbytes = 0
        with (gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else path.open(encoding="utf-8")) as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError as e:
                    raise HfpipeError(f"{path}:{lineno}: malformed JSON line ({e})") from None
                if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                    raise HfpipeError(f"{path}:{lineno}: a JSON object with a string 'text' field is required")
                docs, nbytes = docs + bool(row["text"]), nbytes + len(row["text"].encode())
        return docs, nbytes
    except (UnicodeDecodeError, OSError, EOFError) as e:
        raise HfpipeError(f"{path}: unreadable {fmt} file ({e})") from None


# ---------------------------------------------------------------------------------------------------------------------
# datatrove glue: reader adapter (metadata), routed quality filter, dedup key


def _adapt(reader, data: dict, path: str, id_in_file: int, *, meta: dict, base: str, fmt: str) -> dict:
    """Raw dict -> Document fields. Our metadata wins over the line's own; origin = recipe path[:line]."""
    where = f"{path}:{id_in_file + 1}" if fmt == "jsonl" else path
    doc_id = data.pop("id", None) or where
    own = data.pop("metadata", None) or {}
    own = own if isinstance(own, dict) else {"metadata": own}
    origin = f"{base}/{where}"
    return {"text": data.pop("text", ""), "id": f"{meta['source']}/{doc_id}",
            "metadata": {**own, **data, **meta, "origin": origin}}


def _dedup_key(doc) -> bytes:  # the exact-dedup key: the UTF-8 text (datatrove's xxhash64 wants bytes)
    return doc.text.encode("utf-8")


def _text_reader(**kwargs):
    """datatrove has no plain-text reader: this one makes one document of each file's whole UTF-8 text."""
    from datatrove.pipeline.readers.base import BaseDiskReader

    class TextReader(BaseDiskReader):
        name = "📄 Text"

        def read_file(self, filepath: str):
            with self.track_time(), self.data_folder.open(filepath, "r", encoding="utf-8") as f:
                doc = self.get_document_from_dict({"text": f.read()}, filepath, 0)
            if doc:
                yield doc

    return TextReader(**kwargs)


def _quality_filter(q: QualityFilter):
    from datatrove.pipeline.filters import GopherQualityFilter

    class DomainGopherQualityFilter(GopherQualityFilter):
        """Gopher's rules for docs of the listed domains; every other doc (e.g. code) passes untouched."""

        name = "🥇 Gopher Quality (by domain)"
        domains: tuple[str, ...] = q.domains

        def filter(self, doc):
            return doc.metadata.get("domain") not in self.domains or super().filter(doc)

    return DomainGopherQualityFilter(**q.model_dump(exclude={"enabled", "domains"}))


def _step_stats(logging_dir: Path, labels: list[str | None]) -> list[dict]:
    """datatrove's merged stats.json of one executor -> [{step, docs_in, docs_out, chars_out, dropped_*}].

    labels name the pipeline's steps in order; steps labelled None (intermediate readers/writers) are left out."""
    steps = []
    for label, block in zip(labels, json.loads((logging_dir / "stats.json").read_text())):
        s = {k: (v["total"] if isinstance(v, dict) else v) for k, v in block["stats"].items()}
        if label:  # readers count "documents", filters "total"/"forwarded", writers "total"
            n_in = s.get("documents", 0) if label.startswith("read:") else s.get("total", 0)
            n_out = s.get("forwarded", 0) if label.split(":")[0] in ("quality", "dedup") else n_in
            steps.append({"step": label, "docs_in": n_in, "docs_out": n_out, "chars_out": s.get("doc_len", 0),
                          **{k: v for k, v in s.items() if k.startswith("dropped")}})
    return steps


# ---------------------------------------------------------------------------------------------------------------------
# run


def run(config: Config, inputs: Inputs, out_dir: Path) -> dict:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup import ExactDedupConfig, ExactDedupFilter, ExactDedupSignature, ExactFindDedups
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    out_dir, work, logs = Path(out_dir), Path(out_dir) / "work", Path(out_dir) / "datatrove_logs"
    work.mkdir(parents=True, exist_ok=True)

    # -- 1. resolve + validate ----------------------------------------------------------------------------------------
    readers, docs_in, bytes_in = [], {}, {}
    for i, src in enumerate(config.sources):
        written, base, files = _resolve(src, inputs.recipe_dir, i)
        for rel in files:
            n, b = _validate(base / rel, src.format)
            docs_in[src.domain], bytes_in[src.domain] = docs_in.get(src.domain, 0) + n, bytes_in.get(src.domain, 0) + b
        paths_file = work / f"paths_{i:03d}.txt"
        paths_file.write_text("".join(f"{r}\n" for r in files))
        meta = {"source": src.name, "domain": src.domain, "language": src.language, "license": src.license}
        adapter = partial(_adapt, meta=meta, base=written, fmt=src.format)
        reader = JsonlReader if src.format == "jsonl" else _text_reader
        readers.append(reader(data_folder=str(base), paths_file=str(paths_file), adapter=adapter, add_file_path=False))

    def execute(name: str, pipeline: list, tasks: int) -> Path:
        folder = logs / name
        LocalPipelineExecutor(pipeline, tasks=tasks, workers=min(config.workers, tasks), logging_dir=str(folder),
                              skip_completed=False).run()
        return folder

    # -- 2. filter pass: read -> quality filter (prose only) -> intermediate shards -----------------------------------
    if config.quality.enabled:  # load the word tokenizer now: a bad language fails here, and workers=1 reuses it
        try:
            from datatrove.utils.text import split_into_words

            split_into_words("warm up", config.quality.language)
        except (ImportError, ValueError) as e:
            raise HfpipeError(f"data.quality.language {config.quality.language!r}: {e}".replace("\n", " ")) from None
    filtered = work / "filtered"
    quality = [_quality_filter(config.quality)] if config.quality.enabled else []
    labels = [f"read:{src.name}" for src in config.sources] + ["quality:gopher"] * len(quality) + [None]
    steps = _step_stats(execute("1_filter", readers + quality + [JsonlWriter(str(filtered))], config.tasks), labels)

    # -- 3. exact dedup: signatures -> find duplicates -> drop them while writing the output --------------------------
    def read_filtered():  # passes 2 and 4 must see the same files in the same order: same reader, same tasks
        return JsonlReader(str(filtered), glob_pattern="*.jsonl.gz", add_file_path=False)

    final, labels = [JsonlWriter(str(out_dir / "data"), output_filename="${rank}.jsonl.gz")], [None, "write"]
    if config.dedup and any(filtered.glob("*.jsonl.gz")):
        dedup = ExactDedupConfig(content_getter=_dedup_key)
        execute("2_dedup_signatures", [read_filtered(), ExactDedupSignature(str(work / "sigs"), dedup)], config.tasks)
        execute("3_dedup_find", [ExactFindDedups(str(work / "sigs"), str(work / "dups"), dedup)], 1)
        final, labels = [ExactDedupFilter(str(work / "dups"), dedup)] + final, [None, "dedup:exact", "write"]
    if any(filtered.glob("*.jsonl.gz")):
        steps += _step_stats(execute("4_write", [read_filtered()] + final, config.tasks), labels)

    # -- 4. stats + self-check: the output reads back, every doc carries its metadata ---------------------------------
    domains = {d: {"docs_in": docs_in[d], "bytes_in": bytes_in[d], "docs_out": 0, "bytes_out": 0} for d in docs_in}
    stats = {"steps": steps, "domains": domains}
    (out_dir / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    out_files = sorted((out_dir / "data").glob("*.jsonl.gz"))
    if not out_files:
        empty = next((s["step"] for s in steps if s["docs_in"] and not s["docs_out"]), "read (every doc was empty)")
        raise HfpipeError(f"data: no document survived: step '{empty}' dropped everything (see stats.json)")
    for f in out_files:
        raw = gzip.decompress(f.read_bytes())
        f.write_bytes(gzip.compress(raw, mtime=0))  # no timestamp in the gzip header: reruns are bit-identical
        for lineno, line in enumerate(raw.rstrip(b"\n").split(b"\n"), 1):
            doc = json.loads(line)
            missing = [k for k in REQUIRED_METADATA if k not in doc.get("metadata", {})]
            if not doc.get("text") or missing:
                raise HfpipeError(f"data self-check: {f}:{lineno} has no text or lacks metadata {missing}")
            row = domains[doc["metadata"]["domain"]]
            row["docs_out"], row["bytes_out"] = row["docs_out"] + 1, row["bytes_out"] + len(doc["text"].encode())
    (out_dir / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    shutil.rmtree(work)

    reasons = sorted({k for step in steps for k in step if k.startswith("dropped_")})
    drops = {f"docs_{k}": sum(step.get(k, 0) for step in steps) for k in reasons}
    return {"docs_in": sum(docs_in.values()), "bytes_in": sum(bytes_in.values()),
            "docs_out": sum(d["docs_out"] for d in domains.values()),
            "bytes_out": sum(d["bytes_out"] for d in domains.values()), "output_files": len(out_files),
            "docs_dropped_duplicate": next((s.get("dropped", 0) for s in steps if s["step"] == "dedup:exact"), 0),
            **drops, **{f"docs_out_{d}": row["docs_out"] for d, row in sorted(domains.items())}}
