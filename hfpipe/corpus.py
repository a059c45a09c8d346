"""Reading the data stage's output: ``<data stage>/data/*.jsonl.gz``, one JSON document per line with a "text" field."""

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


def iter_texts(stage_dir: Path, max_bytes: int | None = None) -> Iterator[str]:
    """Every document's text, shard by shard, stopping once ``max_bytes`` UTF-8 bytes have been yielded."""
    total = 0
    for path in data_files(stage_dir):
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    text = json.loads(line)["text"]
                except (ValueError, KeyError, TypeError) as e:
                    raise HfpipeError(f"{path}:{lineno}: not a JSON document with a 'text' field ({type(e).__name__})", 1) from e
                if not isinstance(text, str) or not text:
                    continue
                yield text
                total += len(text.encode("utf-8"))
                if max_bytes is not None and total >= max_bytes:
                    return
