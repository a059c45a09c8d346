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
