"""Chat datasets for the post-training stages: locate, read and validate JSONL in TRL's conversational formats.

A dataset is named in a recipe either as ``hfpipe:<file>`` (a file bundled in ``hfpipe/datasets/``, see its README for
provenance) or as a path (relative paths are relative to the recipe's folder). Formats, one JSON object per line:

- conversations (SFT):   {"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}
- preferences (DPO):     {"prompt": [messages], "chosen": [assistant messages], "rejected": [assistant messages]}

Other keys on a line (e.g. "source") are allowed and ignored. Every problem is an HfpipeError naming the file, the
line and the field.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from hfpipe.errors import HfpipeError
from hfpipe.stages import resolve_path

BUNDLED_PREFIX = "hfpipe:"
BUNDLED_DIR = Path(__file__).parent / "datasets"
ROLES = ("system", "user", "assistant")


def resolve_dataset(name: str, recipe_dir: Path, key: str = "dataset") -> Path:
    """The file a recipe's dataset name points to; raises if it does not exist."""
    if name.startswith(BUNDLED_PREFIX):
        file = name.removeprefix(BUNDLED_PREFIX)
        path = BUNDLED_DIR / file
        if "/" in file or "\\" in file or not path.is_file():
            have = ", ".join(BUNDLED_PREFIX + p.name for p in sorted(BUNDLED_DIR.glob("*.jsonl")))
            raise HfpipeError(f"{key}: no bundled dataset '{name}' (bundled: {have})", 2)
        return path
    path = resolve_path(name, recipe_dir)
    if not path.is_file():
        raise HfpipeError(f"{key}: dataset file '{name}' not found (resolved to {path})", 2)
    return path


def read_jsonl(path: Path) -> list[tuple[int, dict]]:
    """(line number, object) for every non-blank line."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as e:
                raise HfpipeError(f"{path}:{lineno}: not valid JSON ({e})", 2) from None
            if not isinstance(row, dict):
                raise HfpipeError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}", 2)
            rows.append((lineno, row))
    if not rows:
        raise HfpipeError(f"{path}: dataset is empty", 2)
    return rows


def _messages(row: dict, field: str, where: str, roles: tuple[str, ...] = ROLES) -> list[dict]:
    """Check one field holds a non-empty list of {"role", "content"} messages; return it reduced to those two keys."""
    if field not in row:
        raise HfpipeError(f"{where}: field '{field}' is missing", 2)
    value = row[field]
    if not isinstance(value, list) or not value:
        raise HfpipeError(f"{where}: field '{field}' must be a non-empty list of messages", 2)
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str):
            raise HfpipeError(f"{where}: field '{field}[{i}]' must be an object with a string 'content'", 2)
        if m.get("role") not in roles:
            raise HfpipeError(f"{where}: field '{field}[{i}].role' is {m.get('role')!r}, expected one of {roles}", 2)
        out.append({"role": m["role"], "content": m["content"]})
    return out


def load_conversations(path: Path) -> list[dict]:
    """SFT rows {"messages": [...]}, each with at least one assistant turn (the only tokens that carry loss)."""
    rows = []
    for lineno, row in read_jsonl(path):
        messages = _messages(row, "messages", f"{path}:{lineno}")
        if not any(m["role"] == "assistant" for m in messages):
            raise HfpipeError(f"{path}:{lineno}: field 'messages' has no assistant turn to learn from", 2)
        rows.append({"messages": messages})
    return rows


def load_preferences(path: Path) -> list[dict]:
    """Preference rows {"prompt", "chosen", "rejected"}; chosen and rejected are assistant turns."""
    rows = []
    for lineno, row in read_jsonl(path):
        where = f"{path}:{lineno}"
        prompt = _messages(row, "prompt", where)
        if prompt[-1]["role"] != "user":
            raise HfpipeError(f"{where}: field 'prompt' must end with a user turn, not {prompt[-1]['role']!r}", 2)
        rows.append({"prompt": prompt, "chosen": _messages(row, "chosen", where, ("assistant",)),
                     "rejected": _messages(row, "rejected", where, ("assistant",))})
    return rows


def split_holdout(rows: list[dict], fraction: float, field: str) -> tuple[list[dict], list[dict]]:
    """Hold out ~fraction of rows, chosen by a hash of the first user message of `field`, so that rows sharing an
    opening question land on the same side (no question is both trained on and evaluated)."""

    def bucket(row: dict) -> float:
        first = next((m for m in row[field] if m["role"] == "user"), row[field][0])
        text = first["content"].strip().lower()
        return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) / 16**8

    train = [r for r in rows if bucket(r) >= fraction]
    held = [r for r in rows if bucket(r) < fraction]
    return train, held
