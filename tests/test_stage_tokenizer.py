"""Tokenizer stage: byte-level BPE trained on real stdlib text, saved as a transformers tokenizer with a chat template.

Run: .venv/bin/python -m pytest tests/test_stage_tokenizer.py -q
"""

import gzip
import json

import pytest
from conftest import stdlib_text
from pydantic import ValidationError

from hfpipe.errors import HfpipeError
from hfpipe.modeling import BOS_TOKEN, EOS_TOKEN, PAD_TOKEN, default_chat_template
from hfpipe.stages import tokenizer as stage

TORTURE = ("emoji 🙂👍🏽👨‍👩‍👧 🇫🇷, combining e\u0301 a\u0308 vs é ä, ZWJ/ZWSP \u200d\u200b, NBSP\u00a0here\n"
           "\tdef f(x):\n\t\treturn {'k': [1, 2]}  # tab-indented\n        eight spaces\n  \n\n\n"
           "digits 3141592653589793238462643383279502884197 -0.000001e-10 0x7fffffff\n"
           "CJK 中文字符測試 日本語のテキスト 한국어 텍스트 Ελληνικά العربية עברית हिन्दी\r\n\x00\x7f end ")


def write_data_stage(folder, texts):
    """A folder shaped like the data stage's output: data/*.jsonl.gz with text + metadata."""
    (folder / "data").mkdir(parents=True)
    with gzip.open(folder / "data" / "part.jsonl.gz", "wt", encoding="utf-8") as f:
        for i, t in enumerate(texts):
            meta = {"source": "stdlib", "domain": "code", "language": "en", "license": "PSF-2.0", "origin": "python"}
            f.write(json.dumps({"text": t, "id": str(i), "metadata": meta}) + "\n")
    return folder


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_data_stage(tmp_path_factory.mktemp("data"), stdlib_text())


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
    from hfpipe.stages import Inputs

    out = tmp_path_factory.mktemp("tok")
    inputs = Inputs(recipe_name="t", seed=0, recipe_dir=out, upstream={"data": data_dir})
    return out, stage.run(stage.Config(vocab_size=1024), inputs, out)


def test_round_trip_and_specials(trained):
    from transformers import AutoTokenizer

    out, metrics = trained
    tok = AutoTokenizer.from_pretrained(out / "tokenizer")
    ids = tok.encode(TORTURE, add_special_tokens=False)
    assert tok.decode(ids) == TORTURE
    assert tok.unk_token_id not in ids or tok.unk_token is None
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == (BOS_TOKEN, EOS_TOKEN, PAD_TOKEN)
    assert len({tok.bos_token_id, tok.eos_token_id, tok.pad_token_id}) == 3
    assert tok("x = 1")["input_ids"][0] != tok.bos_token_id  # no automatic BOS: pretrain inserts separators itself
    assert tok.encode("a<|im_end|>b", add_special_tokens=False)[1] == tok.eos_token_id  # specials stay atomic
    assert metrics["vocab_size"] == len(tok) == 1024
    assert metrics["bytes_per_token"] > 2.0  # merges learned: real compression on the training text
    assert metrics["training_bytes"] > 100_000


def test_chat_template_survives_reload(trained):
    from transformers import AutoTokenizer

    out, metrics = trained
    tok = AutoTokenizer.from_pretrained(out / "tokenizer")
    assert tok.chat_template == default_chat_template()
    chat = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]
    assert tok.apply_chat_template(chat, tokenize=False) == "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n"
    enc = tok.apply_chat_template(chat, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    assert tok.decode([i for i, m in zip(enc["input_ids"], enc["assistant_masks"]) if m]) == "4<|im_end|>"
    assert len(metrics["chat_template_sha256"]) == 64


def test_deterministic_and_options(data_dir, tmp_path, make_inputs):
    inputs = make_inputs(upstream={"data": data_dir})
    cfg = stage.Config(vocab_size=600, max_training_bytes=50_000, chat_template="{% for m in messages %}{{ m['content'] }}|{% endfor %}")
    a, b = tmp_path / "a", tmp_path / "b"
    ma, mb = stage.run(cfg, inputs, a), stage.run(cfg, inputs, b)
    assert (a / "tokenizer" / "tokenizer.json").read_bytes() == (b / "tokenizer" / "tokenizer.json").read_bytes()
    assert ma == {**mb, "train_s": ma["train_s"]}
    assert ma["training_bytes"] < 50_000 + max(len(t.encode()) for t in stdlib_text())

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(a / "tokenizer")
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False) == "hi|"


def test_bad_input_is_a_one_line_error(data_dir, tmp_path, make_inputs):
    with pytest.raises(ValidationError, match="must include"):
        stage.Config(special_tokens=["<|endoftext|>"])
    with pytest.raises(ValidationError):
        stage.Config(model="unigram")
    with pytest.raises(HfpipeError, match="chat_template"):
        stage.run(stage.Config(vocab_size=300, chat_template="{% for m in messages %}"), make_inputs(upstream={"data": data_dir}), tmp_path / "x")
    (tmp_path / "empty" / "data").mkdir(parents=True)
    with pytest.raises(HfpipeError, match="no .*jsonl.gz"):
        stage.run(stage.Config(), make_inputs(upstream={"data": tmp_path / "empty"}), tmp_path / "y")
