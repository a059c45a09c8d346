"""Reading the data stage's output: ``<data stage>/data/*.jsonl.gz`` (and what it dropped, ``dropped/**/*.jsonl.gz``),
one JSON document per line with a "text" field."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path

from hfpipe.errors import HfpipeError


def data_files(stage_dir: Path) -> list[Path]:
    """The data stage's shards, in a stable order; an error if there are none."""
    files = sorted((stage_dir / "data").glob("*.jsonl.gz"))
    if not files:
        raise HfpipeError(f"no documents: {stage_dir / 'data'} holds no *.jsonl.gz (did the data stage keep anything?)", 1)
    return files


def iter_documents(stage_dir: Path) -> Iterator[tuple[str, dict]]:
    """(text, metadata) of every non-empty document, shard by shard; a line that is not a document is an error."""
    return iter_files(data_files(stage_dir))


def iter_files(paths: list[Path]) -> Iterator[tuple[str, dict]]:
    """(text, metadata) of every non-empty document of these jsonl.gz files, in order."""
    for path in paths:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    text, meta = row["text"], row.get("metadata")
                except (ValueError, KeyError, TypeError, AttributeError) as e:
                    raise HfpipeError(f"{path}:{lineno}: not a JSON document with a 'text' field ({type(e).__name__})", 1) from e
                if isinstance(text, str) and text:
                    yield text, meta if isinstance(meta, dict) else {}
