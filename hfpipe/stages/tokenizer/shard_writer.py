"""The token-shard writer (see shards.py for the format): datatrove's DocumentTokenizer routed by domain, run by a
LocalPipelineExecutor with one task per data-stage shard. Imports datatrove at top level: only the tokenizer stage's
run() imports this module.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from datatrove.pipeline.tokens.tokenizer import DocumentTokenizer, TokenizedFile, get_output_filename

from hfpipe.errors import HfpipeError
from hfpipe.stages.tokenizer.shards import DOMAIN_NAME, INDEX, build_index, domain_folder


class DomainTokenizer(DocumentTokenizer):
    """datatrove's DocumentTokenizer with one output file per domain (``<domain>/<rank>_shuffled.ds``) and each
    document prefixed with ``bos_token`` (a TemplateProcessing post-processor, as the tokenizer's own BOS would)."""

    name = "✍️ Domain token shards"

    def __init__(self, output_folder: str, tokenizer_file: str, bos_token: str, seed: int,
                 max_tokens_per_file: int | None = None, batch_size: int = 1000):
        super().__init__(output_folder, tokenizer_file, save_final_metadata=False, batch_size=batch_size, seed=seed,
                         max_tokens_per_file=max_tokens_per_file, shuffle_documents=True)
        self.bos_token = bos_token

    @property
    def tokenizer(self):
        tok = getattr(self, "_bos_tokenizer", None)
        if tok is None:
            from datatrove.utils.tokenization import load_tokenizer
            from tokenizers.processors import TemplateProcessing

            tok = load_tokenizer(self.tokenizer_name_or_path)
            bos = tok.token_to_id(self.bos_token)
            if bos is None:
                raise HfpipeError(f"token shards: the tokenizer {self.tokenizer_name_or_path} has no {self.bos_token}", 1)
            tok.post_processor = TemplateProcessing(single=f"{self.bos_token} $A", special_tokens=[(self.bos_token, bos)])
            self._bos_tokenizer = tok
        return tok

    def run(self, data, rank: int = 0, world_size: int = 1):
        from collections import defaultdict

        from datatrove.utils.batching import batched

        files: dict[str, TokenizedFile] = {}
        for batch in batched((d for d in data if d.text), self.batch_size):
            by_domain = defaultdict(list)
            for doc in batch:
                by_domain[str(doc.metadata.get("domain") or "unknown")].append(doc)
            for domain, docs in by_domain.items():
                out = files.get(domain)
                if out is None:
                    out = files[domain] = TokenizedFile(self.output_folder, get_output_filename(
                        f"{domain_folder(domain)}/part", rank, "unshuffled"), token_size=self.token_size)
                    with self.output_folder.open(f"{domain_folder(domain)}/{DOMAIN_NAME}", "wt") as f:
                        f.write(domain)
                with self.track_time(unit="batch"):
                    for enc in self.tokenizer.encode_batch([d.text for d in docs]):
                        out.write(enc.ids, None)
                        self.stat_update("tokens", value=len(enc.ids))
                self.stat_update("documents", value=len(docs))
        for domain in sorted(files):  # a fixed order: the shuffles draw from one seeded generator
            out = files[domain]
            out.close()
            out.copy(f"{domain_folder(domain)}/part", self.rand.permutation(len(out.doc_ends)), self.output_folder,
                     max_tokens_per_file=self.max_tokens_per_file, rank=rank, sub_filename="shuffled")
            out.cleanup()


def write_shards(data_stage: Path, tokenizer_dir: Path, out: Path, *, seed: int, bos_token: str,
                 workers: int = 1, max_tokens_per_file: int | None = None) -> dict:
    """Tokenize every document of ``data_stage``/data/*.jsonl.gz with ``tokenizer_dir``/tokenizer.json into
    ``out`` (per-domain .ds shards and index.json); returns the index."""
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.readers import JsonlReader

    from hfpipe.stages.data.corpus import data_files

    files = data_files(data_stage)
    shutil.rmtree(out, ignore_errors=True)
    logs = out.parent / f".{out.name}-logs"
    shutil.rmtree(logs, ignore_errors=True)
    pipeline = [JsonlReader(str(data_stage / "data"), glob_pattern="*.jsonl.gz", compression="gzip"),
                DomainTokenizer(str(out), str(tokenizer_dir / "tokenizer.json"), bos_token, seed, max_tokens_per_file)]
    LocalPipelineExecutor(pipeline, tasks=len(files), workers=min(workers, len(files)), logging_dir=str(logs),
                          skip_completed=False, start_method="fork").run()
    shutil.rmtree(logs, ignore_errors=True)
    index = build_index(out, tokenizer_dir)
    (out / INDEX).write_text(json.dumps(index, indent=1, ensure_ascii=False) + "\n")
    return index
