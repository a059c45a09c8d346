"""Helpers of the tokenizer stage: the training sample (held-out split, language/domain mix), the `tokenizers` pipeline
for each recipe choice (BPE or Unigram; byte-level or Metaspace; byte fallback; digits; whitespace runs), and loading
an existing tokenizer to reuse.

Everything heavy is imported inside the functions; the stage module stays cheap to import.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from hfpipe.errors import HfpipeError, first_line

UNK_TOKEN = "<unk>"  # Metaspace models need one: a character outside the vocabulary (and without byte fallback)
BYTE_TOKENS = [f"<0x{b:02X}>" for b in range(256)]  # SentencePiece byte-fallback pieces


@dataclass(frozen=True)
class Doc:
    text: str
    language: str
    domain: str
    source: str = ""
    nbytes: int = -1  # UTF-8 length, computed once (the split, the mix and the stage's metrics all need it)
    digest: bytes = b""  # sha256 of the text; set by scan_docs, whose documents carry no text
    ordinal: int = -1  # position in the data stage's output (scan_docs): where a streamed pass finds the text

    def __post_init__(self):
        if self.nbytes < 0:
            object.__setattr__(self, "nbytes", len(self.text.encode("utf-8")))

    @property
    def group(self) -> tuple[str, str]:
        return self.language, self.domain


# ----------------------------------------------------------------------------------------------------------------------
# Documents, held-out split, training mix

def read_docs(stage_dir: Path) -> list[Doc]:
    """Every non-empty document of the data stage with its language/domain metadata ("unknown" when absent)."""
    from hfpipe.stages.data.corpus import iter_documents

    return [Doc(text, str(meta.get("language") or "unknown"), str(meta.get("domain") or "unknown"),
                str(meta.get("source") or "")) for text, meta in iter_documents(stage_dir)]


def scan_docs(stage_dir: Path) -> list[Doc]:
    """Every non-empty document of the data stage without its text: group, source, UTF-8 length, sha256 and ordinal
    (~100 bytes each, whatever the document's size). split_heldout and pick_mix plan on these; SampleStream then
    reads the texts the plan needs, one at a time."""
    from hfpipe.stages.data.corpus import iter_documents

    out = []
    for i, (text, meta) in enumerate(iter_documents(stage_dir)):
        raw = text.encode("utf-8")
        out.append(Doc("", str(meta.get("language") or "unknown"), str(meta.get("domain") or "unknown"),
                       str(meta.get("source") or ""), len(raw), hashlib.sha256(raw).digest(), i))
    return out


class SampleStream:
    """The training sample streamed from the data stage, for ``train_from_iterator``: iterating yields each planned
    document's text as many times as the plan repeats it, in the data stage's order (BPE merges depend only on
    the multiset of texts). Meanwhile it keeps the texts of ``wanted`` documents (the held-out report's, bounded by
    its byte cap) in ``kept`` and every ``every``-th yielded text in ``counted`` (the training-stats subset). Nothing
    else is held (one document at a time), and reading stops after the last document the plan needs."""

    def __init__(self, stage_dir: Path, repeats: dict[int, int], wanted: set[int], every: int = 1):
        self.stage_dir, self.repeats, self.wanted, self.every = stage_dir, repeats, wanted, max(1, every)
        self.kept: dict[int, str] = {}
        self.counted: list[str] = []
        self.yielded = 0

    def __iter__(self):
        from hfpipe.stages.data.corpus import iter_documents

        needed = set(self.wanted) | set(self.repeats)
        if not needed:
            return
        last = max(needed)
        for i, (text, _) in enumerate(iter_documents(self.stage_dir)):
            if i in self.wanted:
                self.kept[i] = text
            for _ in range(self.repeats.get(i, 0)):
                if self.yielded % self.every == 0:
                    self.counted.append(text)
                self.yielded += 1
                yield text
            if i == last:  # nothing after it is needed: stop reading
                return

    def drain(self) -> None:
        """Read through without training (a reused tokenizer: only the kept texts are wanted)."""
        for _ in self:
            pass


def read_jsonl_docs(path: Path) -> list[Doc]:
    """Documents of a plain JSONL file shaped like the data stage's lines (e.g. the bundled held-out set)."""
    docs = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                row = json.loads(line)
                meta = row.get("metadata") or {}
                docs.append(Doc(row["text"], str(meta.get("language", "unknown")), str(meta.get("domain", "unknown")),
                                str(meta.get("source", ""))))
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                raise HfpipeError(f"{path}:{lineno}: not a JSON document with 'text' and 'metadata' ({type(e).__name__})", 1) from e
    return docs


def _by_group(docs: list[Doc]) -> dict[tuple[str, str], list[Doc]]:
    groups: dict[tuple[str, str], list[Doc]] = defaultdict(list)
    for d in docs:
        groups[d.group].append(d)
    return dict(sorted(groups.items()))


def split_heldout(docs: list[Doc], fraction: float) -> tuple[list[Doc], list[Doc]]:
    """(train, held-out): per (language, domain) group, the ceil(fraction * n) documents with the smallest sha256 of
    their text are held out (none of a group with a single document), so every group is measured on unseen text and
    the split does not depend on shard order."""
    import math

    train, heldout = [], []
    for group in _by_group(docs).values():
        if fraction <= 0 or len(group) < 2:  # nothing held out: no need to hash
            train += group
            continue
        ordered = sorted(group, key=lambda d: d.digest or hashlib.sha256(d.text.encode("utf-8")).digest())
        k = min(math.ceil(fraction * len(ordered)), len(ordered) - 1) if fraction > 0 else 0
        heldout += ordered[:k]
        train += ordered[k:]
    return train, heldout


def sample_mix(docs: list[Doc], *, language_weights: dict[str, float], domain_weights: dict[str, float],
               alpha: float, max_bytes: int | None, seed: int) -> tuple[list[str], dict[str, dict]]:
    """The training texts of pick_mix's documents, in its order."""
    picked, mix = pick_mix(docs, language_weights=language_weights, domain_weights=domain_weights, alpha=alpha,
                           max_bytes=max_bytes, seed=seed)
    return [d.text for d in picked], mix


def pick_mix(docs: list[Doc], *, language_weights: dict[str, float], domain_weights: dict[str, float],
             alpha: float, max_bytes: int | None, seed: int) -> tuple[list[Doc], dict[str, dict]]:
    """The training documents, drawn by group: group g = (language, domain) gets a share of the byte budget proportional
    to ``bytes(g) ** alpha * language_weights[lang] * domain_weights[domain]`` (weights default to 1; alpha 1 keeps the
    natural proportions, 0 makes groups equal). Within a group documents come in a seeded random order and repeat
    when its share exceeds its text (upsampling). Returns the documents (with repeats) and, per group, natural and
    sampled bytes."""
    groups = _by_group(docs)
    natural = {g: sum(d.nbytes for d in ds) for g, ds in groups.items()}
    weight = {g: (natural[g] ** alpha) * language_weights.get(g[0], 1.0) * domain_weights.get(g[1], 1.0) for g in groups}
    total_w = sum(weight.values())
    if total_w <= 0:
        raise HfpipeError("tokenizer.language_weights/domain_weights: every (language, domain) group has weight 0", 2)
    budget = max_bytes if max_bytes is not None else sum(natural.values())
    rng = random.Random(seed)
    picked, mix = [], {}
    for g, ds in groups.items():
        target = budget * weight[g] / total_w
        order = list(ds)
        rng.shuffle(order)
        taken, i = 0, 0
        while taken < target and weight[g] > 0:
            d = order[i % len(order)]
            picked.append(d)
            taken += d.nbytes
            i += 1
        mix[f"{g[0]}/{g[1]}"] = {"docs": len(ds), "natural_bytes": natural[g], "sampled_bytes": taken, "sampled_docs": i}
    total = sum(m["sampled_bytes"] for m in mix.values())
    for m in mix.values():
        m["share"] = round(m["sampled_bytes"] / max(total, 1), 4)
    return picked, mix


def spread_step(total_bytes: int, max_bytes: int | None) -> int:
    """k of spread_subset: every k-th text keeps about max_bytes of total_bytes (None = all, k = 1)."""
    import math

    return 1 if max_bytes is None or total_bytes <= max_bytes else math.ceil(total_bytes / max_bytes)


def spread_subset(texts: list[str], total_bytes: int, max_bytes: int | None) -> tuple[list[str], int]:
    """Every k-th text, k chosen so about max_bytes UTF-8 bytes are kept (None = all), spread over the sample's
    groups (it is ordered group by group); returns the texts and their byte count."""
    step = spread_step(total_bytes, max_bytes)
    out = texts[::step]
    return out, (total_bytes if step == 1 else sum(len(t.encode("utf-8")) for t in out))


# ----------------------------------------------------------------------------------------------------------------------
# The tokenizers pipeline

def whitespace_runs(max_len: int) -> list[str]:
    """Runs of 2..max_len spaces and of 2..max_len tabs: indentation that becomes one token per run."""
    return [" " * n for n in range(max_len, 1, -1)] + ["\t" * n for n in range(max_len, 1, -1)]


def build(config) -> tuple[object, object, list[str]]:
    """(untrained Tokenizer, its trainer, special tokens) for the stage config.

    byte_level: GPT-2 byte alphabet, every string encodes with no unknown token. metaspace: SentencePiece-style "▁"
    words over Unicode characters (prepend_scheme "never", so decode(encode(x)) == x); unseen characters become
    ``<unk>`` unless byte_fallback adds the 256 ``<0xNN>`` pieces (see ``add_byte_fallback``).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    byte_level = config.pre_tokenizer == "byte_level"
    specials = list(config.special_tokens) + ([] if byte_level or UNK_TOKEN in config.special_tokens else [UNK_TOKEN])
    n_extra = (len(BYTE_TOKENS) if config.byte_fallback else 0) + len(whitespace_runs(config.whitespace_tokens))
    vocab_size = config.vocab_size - n_extra  # what the trainer learns; byte pieces and whitespace runs come on top
    if vocab_size < len(specials) + (256 if byte_level else 1):
        raise HfpipeError(f"tokenizer.vocab_size: {config.vocab_size} leaves no room to learn pieces after "
                          f"{n_extra} byte/whitespace tokens and {len(specials)} special tokens", 2)

    if config.model == "bpe":
        tok = Tokenizer(models.BPE(unk_token=None if byte_level else UNK_TOKEN))
    else:
        tok = Tokenizer(models.Unigram())
    steps = [pre_tokenizers.Digits(individual_digits=True)] if config.split_digits else []
    if byte_level:
        steps.append(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True))
        tok.decoder = decoders.ByteLevel()
        tok.post_processor = processors.ByteLevel(trim_offsets=False)  # exact char offsets (assistant masks need them)
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    else:
        steps.append(pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=True))
        tok.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Metaspace(replacement="▁", prepend_scheme="never")])
        alphabet = []
    tok.pre_tokenizer = steps[0] if len(steps) == 1 else pre_tokenizers.Sequence(steps)

    if config.model == "bpe":
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=config.min_frequency, special_tokens=specials,
                                      initial_alphabet=alphabet, show_progress=False)
    else:
        trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=specials, initial_alphabet=alphabet,
                                          unk_token=None if byte_level else UNK_TOKEN, show_progress=False)
    return tok, trainer, specials


def finish(tok, config):
    """After training: add the byte-fallback pieces (as model vocabulary, so text that spells "<0x41>" is not matched
    as one) and the whitespace-run tokens (added tokens, matched longest-first before pre-tokenization)."""
    from tokenizers import AddedToken, Tokenizer

    if config.byte_fallback:
        j = json.loads(tok.to_str())
        model = j["model"]
        if model["type"] == "Unigram":
            have = {piece for piece, _ in model["vocab"]}
            low = min(score for _, score in model["vocab"]) - 1.0  # never preferred over a learned piece
            model["vocab"] += [[b, low] for b in BYTE_TOKENS if b not in have]
        else:
            nxt = max(model["vocab"].values()) + 1
            for b in BYTE_TOKENS:
                if b not in model["vocab"]:
                    model["vocab"][b], nxt = nxt, nxt + 1
        model["byte_fallback"] = True
        tok = Tokenizer.from_str(json.dumps(j))
    runs = whitespace_runs(config.whitespace_tokens)
    if runs:
        tok.add_tokens([AddedToken(r, normalized=False, special=False, single_word=False, lstrip=False, rstrip=False)
                        for r in runs])
    return tok


# ----------------------------------------------------------------------------------------------------------------------
# Reusing an existing tokenizer

def resolve(name: str, recipe_dir: Path, key: str) -> str:
    """A path, Hub id or ``package:<python package>`` (see hfpipe.models) as from_pretrained accepts it."""
    from hfpipe.models import resolve_model_location

    return resolve_model_location(name, recipe_dir, f"tokenizer.{key}")


def load_pretrained(name: str, gguf_file: str | None, recipe_dir: Path, key: str = "pretrained"):
    """AutoTokenizer for a path / Hub id / package:, optionally from a GGUF file; one-line HfpipeError on failure."""
    where = resolve(name, recipe_dir, key)
    if gguf_file:
        if Path(where).is_dir() and not (Path(where) / gguf_file).is_file():
            raise HfpipeError(f"tokenizer.{'gguf_file' if key == 'pretrained' else key + '_gguf_file'}: "
                              f"'{gguf_file}' not found in {where}", 2)
    try:
        if gguf_file:  # cached; a copy, as the caller may add tokens to it
            return copy.deepcopy(_from_gguf(where, gguf_file))
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(where)
    except (OSError, ValueError, KeyError) as e:
        raise HfpipeError(f"tokenizer.{key} '{name}' could not be loaded: {first_line(e)}", 1) from e


@functools.lru_cache(maxsize=2)
def _from_gguf(where: str, gguf_file: str):
    """Loading from GGUF parses ~100k vocabulary strings (seconds): a process that measures the same reference twice
    (tests, benchmarks, pretrained == reference) pays once."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(where, gguf_file=gguf_file)
