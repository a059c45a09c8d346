"""Token shards: the data stage's documents tokenized once, per domain, for pretraining to read many times.

Written by the tokenizer stage (``tokenizer.token_shards``) into ``<tokenizer stage>/tokens/``:

- ``<domain>/NNNNN_shuffled.ds``: datatrove's ``DocumentTokenizer`` format: the token ids of whole documents,
  little-endian uint16 (uint32 when the vocabulary exceeds 65,536), each document prefixed with the document
  separator (BOS, ``<|endoftext|>``) and documents shuffled inside the file with the recipe's seed;
- ``<domain>/NNNNN_shuffled.ds.index``: the document boundaries (uint64 end offset of each document, in tokens);
- ``index.json``: per domain its files with their token and document counts, and the token width.

- ``<domain>/DOMAIN``: the domain's name as the data stage wrote it (the folder name is made filesystem-safe).

shard_writer.py writes them (datatrove's ``DocumentTokenizer`` on a ``LocalPipelineExecutor``, one task per
data-stage shard; nothing is held in memory but one batch of documents); pretraining memory-maps the files
(hfpipe/stages/pretrain/data.py). This module is the format both sides share, and imports nothing heavy.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from hfpipe.errors import HfpipeError

SHARDS = "tokens"  # the folder inside the tokenizer stage's output
INDEX = "index.json"
FORMAT = "datatrove-ds-v1"
DOMAIN_NAME = "DOMAIN"


def domain_folder(domain: str) -> str:
    """A folder name for a domain (metadata.domain is free text)."""
    return re.sub(r"[^\w.-]+", "_", domain).strip("._") or "unknown"


def build_index(out: Path, tokenizer_dir: Path) -> dict:
    """index.json: the token width and, per domain, every .ds file with its token and document counts."""
    from tokenizers import Tokenizer

    vocab = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json")).get_vocab_size()
    width = 4 if vocab > 65536 else 2
    domains: dict[str, list] = {}
    for ds in sorted(out.glob("*/*.ds")):
        name = (ds.parent / DOMAIN_NAME).read_text(encoding="utf-8")
        domains.setdefault(name, []).append({"file": f"{ds.parent.name}/{ds.name}", "tokens": ds.stat().st_size // width,
                                             "documents": (ds.parent / f"{ds.name}.index").stat().st_size // 8})
    if not domains:
        raise HfpipeError(f"token shards: no token written into {out} (are the data stage's documents empty?)", 1)
    return {"format": FORMAT, "token_bytes": width, "vocab_size": vocab,
            "tokens": sum(r["tokens"] for rows in domains.values() for r in rows), "domains": domains}


def read_index(tokenizer_stage: Path) -> dict:
    """The index.json of a tokenizer stage's token shards; a one-line error when there are none."""
    path = tokenizer_stage / SHARDS / INDEX
    if not path.is_file():
        raise HfpipeError(f"pretrain: no token shards in {tokenizer_stage / SHARDS} (the tokenizer stage writes them "
                          "unless tokenizer.token_shards is false)", 2)
    index = json.loads(path.read_text())
    if index.get("format") != FORMAT:
        raise HfpipeError(f"{path}: token shard format {index.get('format')!r}, expected {FORMAT!r}", 1)
    return index


def describe_shards(config, recipe) -> dict:
    """For `hfpipe run --dry-run`: the token-shard step of the tokenizer stage (nothing is read)."""
    if not config.token_shards:
        return {"token_shards": "off (tokenizer.token_shards: false): no pretrain stage can read this stage"}
    data = getattr(recipe, "data", None)
    return {"token_shards": {
        "step": "datatrove JsonlReader -> DocumentTokenizer routed by metadata.domain "
                "(hfpipe.stages.tokenizer.shard_writer.DomainTokenizer), LocalPipelineExecutor",
        "tasks": f"{data.tasks} (one per data-stage shard)" if data is not None and hasattr(data, "tasks")
                 else "one per data-stage shard",
        "workers": config.token_workers, "max_tokens_per_file": config.max_tokens_per_shard,
        "output": f"<stage folder>/{SHARDS}/<domain>/*.ds (uint16 ids, uint32 above 65,536; BOS-prefixed documents "
                  f"shuffled with the seed) + .ds.index (document ends) + {INDEX}"}}
