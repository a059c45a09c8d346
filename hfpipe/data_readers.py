"""The data stage's readers: raw files (or a Hub dataset) -> datatrove Documents that carry their provenance.

Every document leaves its reader with ``metadata`` = {source, domain, language, license, origin, ...its own fields}:
``origin`` is ``<recipe path>/<file>[:line]`` for files, the record's URL for WARC, ``hub:<id>/<split>:<row>`` for the
Hub. ``language: from-path`` takes the first locale-looking folder of the origin (``de-DE/apt.html`` -> ``de``).

Raw files are validated up front in the main process (``validate_file``) so that a bad file fails before any datatrove
task starts, as one line naming the file (and line): malformed JSON, undecodable bytes, a binary file among text, an
unreadable file. This module imports datatrove: the stage imports it inside run() only, so that the stage module stays light.
"""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

from datatrove.pipeline.readers.base import BaseDiskReader

from hfpipe.errors import HfpipeError

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
# validation (main process, before any task)


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
    reader = ParquetReader(**kw) if fmt == "parquet" else WarcReader(**kw) if fmt == "warc" else WholeFileReader(**kw)
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
