"""deploy: the export loads with plain transformers, stops at end of turn, carries a model card and no pickles.

Run: .venv/bin/python -m pytest tests/test_stage_deploy.py -q
"""

import dataclasses
import json
import shutil

import pytest
from pydantic import ValidationError

from hfpipe.card import read_card
from hfpipe.errors import HfpipeError
from hfpipe.stages import deploy

RECIPE_YAML = "name: test\nseed: 0\nlicense: apache-2.0\npretrain: {max_steps: 2}\ndeploy: {export_dtype: float32}\n"


def _pickles(folder):
    return [p.name for p in folder.rglob("*") if p.suffix in {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"}]


def test_export_loads_with_plain_transformers(tiny_model_dir, make_inputs, tmp_path):
    import torch
    from huggingface_hub import ModelCard
    from transformers import AutoModelForCausalLM, AutoTokenizer

    inputs = dataclasses.replace(make_inputs(upstream={"pretrain": tiny_model_dir.parent}, model_stage="pretrain"),
                                 recipe_yaml=RECIPE_YAML)
    metrics = deploy.run(deploy.Config(), inputs, tmp_path / "out")
    export = tmp_path / "out" / "export"

    tokenizer = AutoTokenizer.from_pretrained(export)
    model = AutoModelForCausalLM.from_pretrained(export)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert im_end in model.generation_config.eos_token_id
    assert model.generation_config.pad_token_id == tokenizer.convert_tokens_to_ids("<|pad|>")
    assert tokenizer.chat_template and model.dtype == torch.float32

    # same weights as the upstream model
    upstream = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    for (name, a), (_, b) in zip(upstream.state_dict().items(), model.state_dict().items()):
        assert torch.equal(a, b), name

    files = [p for p in export.rglob("*") if p.is_file()]
    assert not _pickles(export) and (export / "model.safetensors").is_file()
    assert metrics["n_files"] == len(files) and metrics["export_bytes"] == sum(p.stat().st_size for p in files)
    assert metrics["n_params"] == sum(p.numel() for p in model.parameters())
    assert 1 <= metrics["check_new_tokens"] <= deploy.Config().check_new_tokens

    card = ModelCard.load(export / "README.md")
    assert card.data.license == "apache-2.0" and "hfpipe" in card.data.tags
    recipe, fps = read_card(export / "README.md")
    assert recipe == RECIPE_YAML and fps == {"deploy": "0" * 64}  # the pretrain folder here has no manifest


def test_bfloat16_sharded_export_with_full_card(tiny_model_dir, make_inputs, tmp_path):
    """An upstream with manifests, curves and eval results: the card in the export carries all of them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch
    from huggingface_hub import ModelCard
    from transformers import AutoModelForCausalLM

    pre = tmp_path / "pretrain"
    shutil.copytree(tiny_model_dir, pre / "model")
    # a pretrained model that stops only at the document separator, as a pretrain stage may leave it
    gen = json.loads((pre / "model" / "generation_config.json").read_text())
    gen.update(eos_token_id=0, pad_token_id=None)
    (pre / "model" / "generation_config.json").write_text(json.dumps(gen))
    (pre / "manifest.json").write_text(json.dumps({"stage": "pretrain", "fingerprint": "a" * 64, "metrics":
                                                   {"train_loss": 5.5}, "wall_s": 3.0, "versions": {"torch": "x"}}))
    fig, ax = plt.subplots()
    ax.plot([1, 2, 3], [6.0, 5.7, 5.5])
    fig.savefig(pre / "curves.png")
    plt.close(fig)
    ev = tmp_path / "eval"
    ev.mkdir()
    (ev / "manifest.json").write_text(json.dumps({"stage": "eval", "fingerprint": "b" * 64, "metrics": {}}))
    (ev / "results.json").write_text(json.dumps({"results": {"arc_easy": {
        "metrics": {"acc": {"value": 0.25, "stderr": 0.03}}, "version": 1, "n_shot": 0, "n_samples": 20}}}))

    inputs = dataclasses.replace(make_inputs(upstream={"pretrain": pre, "eval": ev}, model_stage="pretrain"),
                                 recipe_yaml=RECIPE_YAML, fingerprint="c" * 64)
    config = deploy.Config(export_dtype="bfloat16", max_shard_size="100KB")
    metrics = deploy.run(config, inputs, tmp_path / "out")
    export = tmp_path / "out" / "export"

    shards = sorted(export.glob("model-*.safetensors"))
    assert len(shards) >= 2 and (export / "model.safetensors.index.json").is_file() and not _pickles(export)
    model = AutoModelForCausalLM.from_pretrained(export)
    assert model.dtype == torch.bfloat16
    assert model.generation_config.eos_token_id == [2, 0]  # <|im_end|> first, the old <|endoftext|> kept
    assert model.generation_config.pad_token_id == 3
    assert metrics["export_bytes"] < (tiny_model_dir / "model.safetensors").stat().st_size  # half-size weights

    card = ModelCard.load(export / "README.md")
    [result] = card.data.eval_results
    assert (result.dataset_type, result.metric_type, result.metric_value) == ("arc_easy", "acc", 0.25)
    assert read_card(export)[1] == {"pretrain": "a" * 64, "eval": "b" * 64, "deploy": "c" * 64}
    assert (export / "test_pretrain_curves.png").read_bytes() == (pre / "curves.png").read_bytes()
    assert "](test_pretrain_curves.png)" in (export / "README.md").read_text()


def test_self_check_refuses_pickles(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    (tmp_path / "training_args.bin").write_bytes(b"\x80\x04")
    with pytest.raises(HfpipeError, match="pickled files"):
        deploy._self_check(tmp_path, None, [0], deploy.Config())


@pytest.mark.parametrize("bad", [{"safe_serialization": False}, {"max_shard_size": "2 GB"}, {"export_dtype": "int8"},
                                 {"dtype": "float32"}])
def test_config_rejects(bad):
    with pytest.raises(ValidationError):
        deploy.Config(**bad)


def test_quantized_variants_and_gguf_with_parity(tiny_model_dir, make_inputs, tmp_path):
    """torchao int8/int4 variants and GGUF files: saved, loadable with plain transformers, measured in the card."""
    import torch
    from huggingface_hub import ModelCard
    from transformers import AutoModelForCausalLM, AutoTokenizer

    inputs = dataclasses.replace(make_inputs(upstream={"pretrain": tiny_model_dir.parent}, model_stage="pretrain"),
                                 recipe_yaml=RECIPE_YAML)
    config = deploy.Config(quantize=["int8", "int4"], gguf=["f32", "q8_0"], parity_max_docs=2, parity_max_tokens=256,
                           parity_seq_len=64, parity_task_limit=8, latency_repeats=2, check_new_tokens=2)
    metrics = deploy.run(config, inputs, tmp_path / "out")
    export = tmp_path / "out" / "export"
    parity = json.loads((tmp_path / "out" / "parity.json").read_text())
    full_bytes = (export / "model.safetensors").stat().st_size

    for scheme in ("int8", "int4"):
        q = parity["quantized"][scheme]
        folder = export / "quantized" / scheme
        model = AutoModelForCausalLM.from_pretrained(folder)
        assert type(model.model.layers[0].mlp.up_proj.weight).__module__.startswith("torchao")
        assert q["size_ratio"] == (folder / "model.safetensors").stat().st_size / full_bytes < 1
        assert q["perplexity_delta"] == pytest.approx(q["perplexity"] - q["perplexity_full"])
        assert 0 <= q["argmax_agreement"] <= 1 and q["task_docs"] == 8 and q["heldout_tokens"] == 256
        assert q["latency_ratio"] > 0 and metrics[scheme]["size_ratio"] == q["size_ratio"]
        assert AutoTokenizer.from_pretrained(folder).chat_template
    # 4-bit values are coarser than 8-bit ones: further from the full model's perplexity
    assert abs(parity["quantized"]["int4"]["perplexity_delta"]) > abs(parity["quantized"]["int8"]["perplexity_delta"])

    # GGUF: transformers loads the file back; float32 is exact, q8_0 within its stated tolerance
    source = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    ids = AutoTokenizer.from_pretrained(tiny_model_dir)("def main():\n    return 0\n", return_tensors="pt")["input_ids"]
    for gguf_type, tol in (("f32", 1e-6), ("q8_0", config.gguf_max_logit_rel_rmse["q8_0"])):
        g = parity["gguf"][gguf_type]
        assert g["file"] == f"test-{gguf_type}.gguf" and g["logit_rel_rmse"] <= g["tolerance"] == tol
        back = AutoModelForCausalLM.from_pretrained(export, subfolder="gguf", gguf_file=g["file"]).eval()
        with torch.no_grad():
            a, b = source(ids).logits, back(ids).logits
        rel_rmse = (((a - b) ** 2).sum() / ((a - a.mean(-1, keepdim=True)) ** 2).sum()).sqrt().item()
        assert rel_rmse <= tol
        assert g["token_agreement"] == 1.0 and g["chat_template_kept"]
        assert AutoTokenizer.from_pretrained(export / "gguf", gguf_file=g["file"])(
            "def main():")["input_ids"] == AutoTokenizer.from_pretrained(tiny_model_dir)("def main():")["input_ids"]
    assert parity["gguf"]["f32"]["max_abs_logit_diff"] < 1e-4
    assert (export / "gguf" / "test-q8_0.gguf").stat().st_size < (export / "gguf" / "test-f32.gguf").stat().st_size

    text = (export / "README.md").read_text()
    ModelCard.load(export / "README.md")
    assert "## Quantization and GGUF parity" in text and "| `quantized/int8` | torchao 0.18" in text
    # q8_0: gguf-py's quantizer, or llama.cpp's (from the f16 file) where llama-cpp-python is installed
    writer = "llama.cpp quantize (llama-cpp-python 0.3" if parity["gguf_runtime"]["llama_cpp"] != "not run in llama.cpp" \
        else "gguf 0.19"
    assert f"| `gguf/test-q8_0.gguf` | q8_0 | {writer}" in text and 'subfolder="gguf", gguf_file="test-f32.gguf"' in text
    assert 'subfolder="quantized/int8"' in text


def test_gpu_schemes_refused_without_gpu(tiny_model_dir, make_inputs, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    inputs = make_inputs(upstream={"pretrain": tiny_model_dir.parent}, model_stage="pretrain")
    for scheme in ("bnb_int4", "bnb_int8", "gptq", "awq"):
        with pytest.raises(HfpipeError, match=f"'{scheme}' needs a CUDA GPU"):
            deploy.run(deploy.Config(quantize=[scheme]), inputs, tmp_path / scheme)
        assert not (tmp_path / scheme / "export").exists()  # refused before any work


def test_gguf_refuses_other_architectures(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    from hfpipe.stages.deploy.gguf import write_gguf

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64))
    with pytest.raises(HfpipeError, match="supports model_type 'llama'"):
        write_gguf(model, None, tmp_path / "x.gguf", "f16", "x")
