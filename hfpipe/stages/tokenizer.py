"""Tokenizer stage: train a byte-level BPE tokenizer on the data stage's documents with HF `tokenizers`.

Byte-level means every UTF-8 byte is in the base alphabet, so any string (emoji, CJK, combining marks, tabs) encodes
and decodes back to itself; no normalizer runs, for the same reason. The result is saved as a transformers
tokenizer (``out_dir/tokenizer/``) carrying hfpipe's special tokens (BOS/document separator, EOS, PAD) and a chat
template, so every later stage can ``AutoTokenizer.from_pretrained`` it.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from hfpipe.errors import HfpipeError
from hfpipe.modeling import BOS_TOKEN, EOS_TOKEN, PAD_TOKEN, SPECIAL_TOKENS, default_chat_template
from hfpipe.stages import Inputs, StageConfig

READS = ("data",)
CARD = {"name": "byte-level BPE", "paper": "https://arxiv.org/abs/1508.07909",
        "citation": "Sennrich, Haddow, Birch. Neural Machine Translation of Rare Words with Subword Units. ACL 2016."}

# A string that breaks tokenizers which normalise, strip or drop bytes: the self-check round-trips it.
TORTURE = ("naïve café — “quotes” e\u0301 Å 🙂👍🏽👨‍👩‍👧 \u200b\n\tdef f(x):\n\t\treturn x ** 2  # tabs\n"
           "    spaces   trailing   \n123456789012345678901234567890 3.14159 中文字符 日本語のテキスト 한국어 Ελληνικά العربية\r\n")
SAMPLE_CHAT = [{"role": "system", "content": "You are helpful."}, {"role": "user", "content": "Hi!"},
               {"role": "assistant", "content": "Hello."}]


class Config(StageConfig):
    model: Literal["bpe"] = Field("bpe", description="tokenizer model; only byte-level BPE so far")
    vocab_size: int = Field(4096, ge=300, le=1_000_000,
                            description="target vocabulary size incl. 256 byte tokens and the special tokens; "
                                        "small text yields fewer merges than asked")
    min_frequency: int = Field(2, ge=1, description="a pair must occur this many times in the training text to be merged")
    special_tokens: tuple[str, ...] = Field(tuple(SPECIAL_TOKENS),
                                            description="added first (ids 0..n-1), never split; must include hfpipe's")
    split_digits: bool = Field(True, description="pre-split numbers into single digits (Llama-style) so arithmetic "
                                                 "tokens are consistent")
    chat_template: str | None = Field(None, description="inline Jinja chat template; null = hfpipe's ChatML template")
    max_training_bytes: int | None = Field(None, ge=1, description="train on at most this many UTF-8 bytes of text "
                                                                   "(first documents in shard order); null = all")

    @field_validator("special_tokens")
    @classmethod
    def _has_hfpipe_specials(cls, v):
        missing = [t for t in SPECIAL_TOKENS if t not in v]
        if missing:
            raise ValueError(f"must include {missing}")
        if len(set(v)) != len(v):
            raise ValueError("contains duplicates")
        return v


def run(config: Config, inputs: Inputs, out_dir: Path) -> dict:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from hfpipe.corpus import iter_texts

    # ---------------------------------------------------------------- read the training text
    texts = list(iter_texts(inputs.upstream["data"], config.max_training_bytes))
    if not texts:
        raise HfpipeError(f"tokenizer: no non-empty 'text' in {inputs.upstream['data'] / 'data'}", 1)
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)

    # ---------------------------------------------------------------- train byte-level BPE
    tok = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.pre_tokenizer = (pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
                         if config.split_digits else byte_level)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)  # exact char offsets (assistant masks need them)
    trainer = trainers.BpeTrainer(vocab_size=config.vocab_size, min_frequency=config.min_frequency,
                                  special_tokens=list(config.special_tokens), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    t0 = time.perf_counter()
    tok.train_from_iterator(texts, trainer, length=len(texts))
    train_s = time.perf_counter() - t0
    n_tokens = sum(len(e.ids) for e in tok.encode_batch(texts, add_special_tokens=False))

    # ---------------------------------------------------------------- wrap for transformers and save
    template = config.chat_template if config.chat_template is not None else default_chat_template()
    extra = [t for t in config.special_tokens if t not in (BOS_TOKEN, EOS_TOKEN, PAD_TOKEN)]
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS_TOKEN, eos_token=EOS_TOKEN,
                                        pad_token=PAD_TOKEN, extra_special_tokens=extra,
                                        chat_template=template, clean_up_tokenization_spaces=False)
    folder = out_dir / "tokenizer"
    tokenizer.save_pretrained(folder)

    # ---------------------------------------------------------------- self-check on the saved folder
    check(folder)
    return {"vocab_size": len(tokenizer), "training_docs": len(texts), "training_bytes": n_bytes,
            "training_tokens": n_tokens, "bytes_per_token": round(n_bytes / max(n_tokens, 1), 4),
            "train_s": round(train_s, 3), "chat_template_sha256": hashlib.sha256(template.encode()).hexdigest()}


def check(folder: Path) -> None:
    """Reload the saved tokenizer: the torture string round-trips and the chat template renders with atomic specials."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = tokenizer.encode(TORTURE, add_special_tokens=False)
    if tokenizer.decode(ids) != TORTURE:
        raise HfpipeError(f"tokenizer self-check: decode(encode(x)) != x for the test string ({folder})", 1)
    try:
        rendered = tokenizer.apply_chat_template(SAMPLE_CHAT, tokenize=False, add_generation_prompt=True)
    except Exception as e:  # jinja2 raises many types; all mean the template is broken
        raise HfpipeError(f"tokenizer.chat_template does not render: {type(e).__name__}: {e}", 2) from e
    if not all(m["content"] in rendered for m in SAMPLE_CHAT):
        raise HfpipeError("tokenizer.chat_template: the rendered chat lacks the message contents", 2)
    if EOS_TOKEN in rendered and tokenizer.convert_tokens_to_ids(EOS_TOKEN) not in tokenizer.encode(rendered):
        raise HfpipeError(f"tokenizer self-check: {EOS_TOKEN} in the chat is not encoded as one special token", 1)
