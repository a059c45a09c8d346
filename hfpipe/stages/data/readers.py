"""The data stage's readers: raw files (or a Hub dataset) -> datatrove Documents that carry their provenance.

Every document leaves its reader with ``metadata`` = {source, domain, language, license, origin, ...its own fields}:
``origin`` is ``<recipe path>/<file>[:line]`` for files, the record's URL for WARC, ``hub:<id>/<split>:<row>`` for the
Hub. ``language: from-path`` takes the first locale-looking folder of the origin (``de-DE/apt.html`` -> ``de``).

Sources are resolved here (``resolve_source``: a file, a folder, a glob, the running interpreter's stdlib) and raw files
are validated up front in the main process (``validate_file``) so that a bad file fails before any datatrove task
starts, as one line naming the file (and line): malformed JSON, undecodable bytes, a binary file among text, an
unreadable file. ``build_readers`` does both and returns one datatrove reader per source.

This module imports datatrove only inside functions (``WholeFileReader`` is defined on first use), so that the stage
module can import it at top level and ``input_files`` (the runner's fingerprint, ``hfpipe status``, dry runs) never
imports datatrove.
"""

from __future__ import annotations

import glob
import gzip
import json
import re
import sysconfig
from pathlib import Path
from typing import TYPE_CHECKING

from hfpipe.errors import HfpipeError

if TYPE_CHECKING:
    from hfpipe.stages.data import Config, Source

MARKUP_FORMATS = ("html", "warc")  # formats whose documents go through main-text extraction
_LOCALE = re.compile(r"^([a-z]{2})(?:[-_][A-Za-z]{2,4})?$")


def language_from_path(origin: str) -> str:
    """The ISO 639-1 code of the first locale-looking path component: '.../zh-CN/apt.html' -> 'zh'."""
    for part in re.split(r"[/\\]", origin):
        m = _LOCALE.match(part)
        if m:
            return m.group(1)
    raise HfpipeError(f"{origin}: language 'from-path' but no folder of this path looks like a locale (xx or xx-YY)")


# ---------------------------------------------------------------------------------------------------------------------
# sources -> files -> validated readers (main process, before any task)


def resolve_source(source: Source, recipe_dir: Path, index: int) -> tuple[str, Path, list[str]]:
    """(base folder as written, base folder resolved, sorted file paths relative to it) for a file, folder or glob."""
    where = f"data.sources[{index}] ({source.name}): path {source.path!r}"
    if source.format == "python-stdlib":
        base = Path(sysconfig.get_paths()["stdlib"])
        files = [f for f in base.glob(source.path or "*.py") if f.is_file() and "site-packages" not in f.parts]
        if not files:
            raise HfpipeError(f"{where} matches no file in the stdlib folder {base}", 2)
        return "python-stdlib", base, sorted(f.relative_to(base).as_posix() for f in files)
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
        raise HfpipeError(f"{where} does not exist (resolved to {base})", 2)
    if not files:
        raise HfpipeError(f"{where} matches no file (resolved under {base})", 2)
    return written.as_posix(), base, sorted(f.relative_to(base).as_posix() for f in files)


def source_files(sources: tuple[Source, ...], recipe_dir: Path) -> list[Path]:
    """Every raw file the sources name (hub sources name none), sorted and unique."""
    out = []
    for i, source in enumerate(sources):
        if source.format != "hub":
            _, base, rel = resolve_source(source, Path(recipe_dir), i)
            out += [base / r for r in rel]
    return sorted(set(out))


def build_readers(config: Config, recipe_dir: Path, work: Path) -> tuple[dict, dict, dict]:
    """Validate every raw file, then build the readers: ({domain: [(source, reader)]}, docs_in, bytes_in by domain)."""
    readers, docs_in, bytes_in = {}, {}, {}
    for i, src in enumerate(config.sources):
        meta = {"source": src.name, "domain": src.domain, "language": src.language, "license": src.license}
        if src.format == "hub":
            where = f"hub:{src.dataset}/{src.split}"
            adapter = make_adapter(meta, where, "jsonl")
            options = {"split": src.split, **({"name": src.subset} if src.subset else {}),
                       **({"revision": src.revision} if src.revision else {})}
            reader = make_hub_reader(src.dataset, options, adapter, src.text_key)
        else:
            written, base, files = resolve_source(src, recipe_dir, i)
            fmt = "text" if src.format == "python-stdlib" else src.format
            n_docs = 0
            for rel in files:
                n, b = validate_file(base / rel, fmt)
                n_docs += n
                bytes_in[src.domain] = bytes_in.get(src.domain, 0) + b
            if not n_docs:
                raise HfpipeError(f"data.sources[{i}] ({src.name}): empty source: {len(files)} file(s) under {base} "
                                  "hold no document with text")
            docs_in[src.domain] = docs_in.get(src.domain, 0) + n_docs
            paths_file = work / f"paths_{i:03d}.txt"
            paths_file.write_text("".join(f"{r}\n" for r in files))
            reader = make_reader(fmt, str(base), str(paths_file), make_adapter(meta, written, fmt))
        readers.setdefault(src.domain, []).append((src, reader))
    return readers, docs_in, bytes_in


def _open_bytes(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
        return gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise HfpipeError(f"{path}: unreadable file ({type(e).__name__}: {e})") from None


def _decode(path: Path, raw: bytes) -> str:
    if b"\x00" in raw[:8192]:
        raise HfpipeError(f"{path}: binary file among text (NUL byte at offset {raw.index(0)}); remove it or "
                          "narrow the source's path glob")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise HfpipeError(f"{path}:{line}: undecodable bytes (not UTF-8 at byte {e.start}: {raw[e.start:e.start + 4]!r})"
                          ) from None


def validate_file(path: Path, fmt: str) -> tuple[int, int]:
    """(documents, raw bytes) of one raw file; anything wrong raises HfpipeError naming the file (and line)."""
    if fmt == "parquet":
        return _validate_parquet(path)
    if fmt == "warc":
        return _validate_warc(path)
    raw = _open_bytes(path)
    text = _decode(path, raw)
    if fmt in ("text", "html"):
        return int(bool(text.strip())), len(raw)
    docs = 0
    for lineno, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:
            raise HfpipeError(f"{path}:{lineno}: malformed JSON line ({e})") from None
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            raise HfpipeError(f"{path}:{lineno}: a JSON object with a string 'text' field is required")
        docs += bool(row["text"])
    return docs, len(raw)


def _validate_parquet(path: Path) -> tuple[int, int]:
    import pyarrow.parquet as pq

    try:
        meta = pq.ParquetFile(path).metadata
    except Exception as e:  # pyarrow raises ArrowInvalid/OSError for anything unreadable
        raise HfpipeError(f"{path}: unreadable parquet file ({type(e).__name__}: {e})".replace("\n", " ")) from None
    if "text" not in meta.schema.names:
        raise HfpipeError(f"{path}: parquet file has no 'text' column (columns: {meta.schema.names})")
    return meta.num_rows, path.stat().st_size


def _validate_warc(path: Path) -> tuple[int, int]:
    from warcio.archiveiterator import ArchiveIterator
    from warcio.exceptions import ArchiveLoadFailed

    docs = 0
    try:
        with path.open("rb") as f:
            for record in ArchiveIterator(f):
                docs += record.rec_type in ("response", "conversion")
    except (ArchiveLoadFailed, OSError, EOFError, ValueError) as e:
        raise HfpipeError(f"{path}: unreadable WARC file ({type(e).__name__}: {e})".replace("\n", " ")) from None
    return docs, path.stat().st_size


# ---------------------------------------------------------------------------------------------------------------------
# datatrove readers


def make_adapter(meta: dict, base: str, fmt: str):
    """The reader adapter: raw dict -> Document fields with our provenance metadata (ours wins over the row's own)."""

    def adapt(reader, data: dict, path: str, id_in_file) -> dict:
        line = f":{id_in_file + 1}" if fmt in ("jsonl", "parquet") else ""
        where = data.pop("url", None) or f"{base}/{path}{line}" if fmt == "warc" else f"{base}/{path}{line}"
        own = data.pop("metadata", None) or {}
        own = own if isinstance(own, dict) else {"metadata": own}
        doc_id = data.pop("id", None) or f"{path}{line}"
        m = {**own, **{k: v for k, v in data.items() if k != "text"}, **meta, "origin": where}
        if m["language"] == "from-path":
            m["language"] = language_from_path(where)
        return {"text": data.get("text", ""), "id": f"{meta['source']}/{doc_id}", "metadata": m}

    return adapt


def make_reader(fmt: str, folder: str, paths_file: str, adapter):
    """A datatrove reader of one source's files (listed in paths_file, relative to folder)."""
    from datatrove.pipeline.readers import JsonlReader, ParquetReader, WarcReader

    kw = dict(data_folder=folder, paths_file=paths_file, adapter=adapter)
    if fmt == "jsonl":
        return JsonlReader(**kw, add_file_path=False)
    reader = (ParquetReader(**kw) if fmt == "parquet" else WarcReader(**kw) if fmt == "warc"
              else _whole_file_reader()(**kw))
    reader.add_file_path = False  # origin (recipe-relative) is the provenance; no absolute machine paths
    return reader


def make_hub_reader(dataset: str, options: dict, adapter, text_key: str):
    """datatrove's HuggingFaceDatasetReader (streams a Hub dataset by id; needs the network)."""
    from datatrove.pipeline.readers import HuggingFaceDatasetReader

    return HuggingFaceDatasetReader(dataset, dataset_options=options, streaming=True, adapter=adapter,
                                    text_key=text_key)


def make_extractor(timeout_s: float):
    """datatrove's Trafilatura extractor: HTML -> main text (navigation, headers, footers dropped)."""
    from datatrove.pipeline.extractors import Trafilatura

    return Trafilatura(favour_precision=True, timeout=timeout_s)


def _whole_file_reader() -> type:
    """``WholeFileReader``, defined on first use: it subclasses datatrove's BaseDiskReader (module docstring)."""
    if "WholeFileReader" in globals():
        return globals()["WholeFileReader"]
    from datatrove.pipeline.readers.base import BaseDiskReader

    class WholeFileReader(BaseDiskReader):
        """One document per file: its whole UTF-8 text (plain text, code, or raw HTML for the extractor)."""

        name = "📄 Whole file"

        def __init__(self, data_folder, paths_file, adapter):
            super().__init__(data_folder, paths_file, adapter=adapter)

        def read_file(self, filepath: str):
            with self.track_time(), self.data_folder.open(filepath, "rb") as f:
                raw = f.read()
            raw = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
            doc = self.get_document_from_dict({"text": raw.decode("utf-8")}, filepath, 0)
            if doc:
                yield doc

    WholeFileReader.__qualname__ = "WholeFileReader"  # pickled by reference (workers, Slurm) as a module attribute
    globals()["WholeFileReader"] = WholeFileReader
    return WholeFileReader


def __getattr__(name: str):  # hfpipe.stages.data.readers.WholeFileReader: built on first access (unpickling included)
    if name == "WholeFileReader":
        return _whole_file_reader()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
