"""sft stage: TRL SFTTrainer on the bundled chatterbot conversations, on a tiny random Llama (CPU, seconds).

Run: .venv/bin/python -m pytest tests/test_stage_sft.py -q
"""

import json
from pathlib import Path

import pytest

from hfpipe.posttrain.data import BUNDLED_DIR
from hfpipe.errors import HfpipeError
from hfpipe.stages import sft


REPO = Path(__file__).resolve().parent.parent
FAST = dict(max_steps=12, learning_rate=3e-3, per_device_batch_size=8, max_length=128)


def _files(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def _write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _bundled_rows(n):
    return [json.loads(line) for line in (BUNDLED_DIR / "sft_chat.jsonl").read_text().splitlines()[:n]]


def test_bundled_split_holds_out_whole_questions():
    first_q = lambda name: {json.loads(x)["messages"][0]["content"].lower()  # noqa: E731
                            for x in (BUNDLED_DIR / name).read_text().splitlines()}
    train, held = first_q("sft_chat.jsonl"), first_q("sft_chat_eval.jsonl")
    assert len(train) > 200 and len(held) > 30 and not train & held


def test_sft_lowers_heldout_assistant_loss(tiny_model_dir, make_inputs, tmp_path):
    from transformers import AutoModelForCausalLM

    inputs = make_inputs(upstream={"pretrain": tiny_model_dir.parent}, model_stage="pretrain")
    metrics = sft.run(sft.Config(**FAST), inputs, tmp_path)

    assert metrics["eval_loss_after"] < metrics["eval_loss_before"] - 0.3, metrics
    assert metrics["train_steps"] == FAST["max_steps"] and metrics["eval_conversations"] > 100
    json.dumps(metrics)
    # the output is the model + tokenizer, the mixture report and the resolved TRL arguments: no trainer folder,
    # pickled args or checkpoints
    assert all(f.startswith("model") or f in ("mixture.json", "trainer_config.json", "contamination.json",
                                               "chat_template.sha256") for f in _files(tmp_path)), _files(tmp_path)
    assert json.loads((tmp_path / "contamination.json").read_text())["rows"]  # every training set checked
    for domain in ("prose", "code", "udhr"):  # held-out bits per byte of the language model, before and after
        assert metrics[f"heldout_bpb_{domain}_after"] != metrics[f"heldout_bpb_{domain}_before"], metrics
    assert not list(tmp_path.rglob("training_args.bin")) and not list(tmp_path.rglob("checkpoint-*"))
    # the chat template travels byte for byte
    out = tmp_path / "model"
    assert (out / "chat_template.jinja").read_bytes() == (tiny_model_dir / "chat_template.jinja").read_bytes()
    trained = AutoModelForCausalLM.from_pretrained(out)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert not trained.model.embed_tokens.weight.equal(base.model.embed_tokens.weight)


def test_lora_sft_saves_a_merged_plain_model(tiny_model_dir, make_inputs, tmp_path):
    from transformers import AutoModelForCausalLM

    # a recipe-relative dataset with the held-out part carved out by eval_fraction
    recipe_dir = tmp_path / "recipe"
    recipe_dir.mkdir()
    _write_jsonl(recipe_dir / "chats.jsonl", _bundled_rows(64))
    config = sft.Config(**{**FAST, "max_steps": 4, "learning_rate": 1e-2}, dataset="chats.jsonl", eval_dataset=None,
                        eval_fraction=0.25, lora={"r": 4, "alpha": 8})
    inputs = make_inputs(upstream={"pretrain": tiny_model_dir.parent}, model_stage="pretrain", recipe_dir=recipe_dir)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    metrics = sft.run(config, inputs, out_dir)

    assert metrics["lora"] and metrics["eval_conversations"] > 0 and metrics["train_conversations"] > 0
    out = out_dir / "model"
    assert not list(out.glob("adapter_*")), _files(out)
    merged = AutoModelForCausalLM.from_pretrained(out)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    merged_sd, base_sd = merged.state_dict(), base.state_dict()
    assert merged_sd.keys() == base_sd.keys()  # no lora_A/lora_B left: a plain Llama
    changed = [k for k in base_sd if not merged_sd[k].equal(base_sd[k])]
    assert changed and all(k.endswith("proj.weight") for k in changed), changed  # LoRA touched the linear layers only
    assert (out / "chat_template.jinja").read_bytes() == (tiny_model_dir / "chat_template.jinja").read_bytes()


BAD_ROWS = [
    ({"conversation": [{"role": "user", "content": "hi"}]}, "field 'messages' is missing"),
    ({"messages": [{"role": "bot", "content": "hi"}]}, "field 'messages[0].role' is 'bot'"),
    ({"messages": [{"role": "user", "content": "hi"}]}, "field 'messages' has no assistant turn"),
    ({"messages": [{"role": "user"}, {"role": "assistant", "content": "x"}]}, "field 'messages[0]'"),
    ({"messages": []}, "field 'messages' must be a non-empty list"),
    ('{"messages": [', "not valid JSON"),
]


@pytest.mark.parametrize("bad,expected", BAD_ROWS)
def test_bad_rows_name_file_line_and_field(bad, expected, make_inputs, tmp_path):
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    path = _write_jsonl(tmp_path / "chats.jsonl", [good, good, bad])
    with pytest.raises(HfpipeError, match=r"chats\.jsonl:3: ") as e:
        sft.run(sft.Config(dataset=str(path)), make_inputs(recipe_dir=tmp_path), tmp_path)
    assert expected in str(e.value)


def test_missing_and_unknown_bundled_datasets(make_inputs, tmp_path):
    with pytest.raises(HfpipeError, match="sft.dataset: dataset file 'nope.jsonl' not found"):
        sft.run(sft.Config(dataset="nope.jsonl"), make_inputs(recipe_dir=tmp_path), tmp_path)
    with pytest.raises(HfpipeError, match="no bundled dataset 'hfpipe:nope.jsonl' .*hfpipe:sft_chat.jsonl"):
        sft.run(sft.Config(dataset="hfpipe:nope.jsonl"), make_inputs(recipe_dir=tmp_path), tmp_path)
    bundled = [BUNDLED_DIR / "sft_chat.jsonl", BUNDLED_DIR / "sft_chat_eval.jsonl"]
    assert sft.input_files(sft.Config(), tmp_path) == bundled


def test_max_length_leaving_no_assistant_tokens(tiny_model_dir, make_inputs, tmp_path):
    path = _write_jsonl(tmp_path / "chats.jsonl", _bundled_rows(16))
    config = sft.Config(dataset=str(path), eval_dataset=str(path), max_length=8, max_steps=1)
    inputs = make_inputs(upstream={"pretrain": tiny_model_dir.parent}, model_stage="pretrain")
    with pytest.raises(HfpipeError, match=r"sft.dataset: set 'chats': no conversation has assistant tokens within max_length=8"):
        sft.run(config, inputs, tmp_path)


def test_packing_fills_rows_with_several_conversations(tiny_model_dir, make_inputs, tmp_path):
    path = _write_jsonl(tmp_path / "chats.jsonl", _bundled_rows(64))
    config = sft.Config(dataset=str(path), eval_dataset=str(path), packing=True, max_length=256, max_steps=2,
                        learning_rate=3e-3)
    inputs = make_inputs(upstream={"pretrain": tiny_model_dir.parent}, model_stage="pretrain")
    metrics = sft.run(config, inputs, tmp_path)
    assert metrics["train_sequences"] < metrics["train_conversations"] / 3, metrics
    assert metrics["eval_loss_after"] < metrics["eval_loss_before"]


def test_mixture_lowers_every_sets_heldout_loss_and_records_the_mixture(tiny_model_dir, make_inputs, tmp_path):
    sets = ("sft_chat", "instruct", "reasoning")
    config = sft.Config(datasets=[{"name": f"hfpipe:{s}.jsonl", "weight": w} for s, w in zip(sets, (2, 1, 1))],
                        mixture_rows=96, max_eval_rows=16, **{**FAST, "max_length": 192})
    inputs = make_inputs(upstream={"pretrain": tiny_model_dir.parent}, model_stage="pretrain")
    metrics = sft.run(config, inputs, tmp_path)

    assert metrics["eval_loss_after"] < metrics["eval_loss_before"] - 0.3, metrics
    for s in sets:  # per set: "before -> after"
        before, after = map(float, metrics["eval_loss_by_set"][s].split(" -> "))
        assert after < before, (s, metrics["eval_loss_by_set"])
    report = json.loads((tmp_path / "mixture.json").read_text())
    assert [report[s]["rows_used"] for s in sets] == [48, 24, 24] and report["instruct"]["kind"] == "synthetic"
    assert metrics["mixture"]["sft_chat"].startswith("0.50 of train") and "BSD-3-Clause" in metrics["mixture"]["sft_chat"]
    assert metrics["train_tokens"] > 0 and metrics["train_tokens_per_s"] > 0
    assert sft.input_files(config, tmp_path) == [BUNDLED_DIR / f"{s}{x}.jsonl" for s in sets for x in ("", "_eval")]


def test_qlora_without_gpu_and_mixed_config_are_one_line_errors(tiny_model_dir, make_inputs, tmp_path):
    import importlib.util

    import torch

    with pytest.raises(ValueError, match="either 'datasets'"):
        sft.Config(dataset="my_chats.jsonl", datasets=[{"name": "hfpipe:tool_use.jsonl"}])
    if torch.cuda.is_available() and importlib.util.find_spec("bitsandbytes"):
        pytest.skip("this machine can run QLoRA")
    config = sft.Config(**FAST, lora={"load_in_4bit": True})
    inputs = make_inputs(upstream={"pretrain": tiny_model_dir.parent}, model_stage="pretrain")
    with pytest.raises(HfpipeError, match="sft.lora.load_in_4bit: QLoRA needs bitsandbytes and a CUDA GPU"):
        sft.run(config, inputs, tmp_path)


def test_smollm2_posttrain_recipe_validates_and_its_base_model_loads():
    from transformers import AutoConfig

    from hfpipe.models import resolve_model_location
    from hfpipe.recipe import load_recipe

    path = REPO / "recipes" / "smollm2-135m-posttrain.yaml"
    recipe = load_recipe(path)
    assert recipe.sft.lora is not None and recipe.preference.method == "dpo" and recipe.eval is not None
    ref = recipe.base_model
    where = resolve_model_location(ref.name_or_path, path.parent)
    config = AutoConfig.from_pretrained(where, gguf_file=ref.gguf_file)
    assert config.model_type == "llama" and config.hidden_size == 576 and config.num_hidden_layers == 30
    for i, spec in enumerate(recipe.sft.datasets):
        assert sft.input_files(recipe.sft, path.parent)[2 * i].name == spec.name.removeprefix("hfpipe:")


@pytest.mark.slow
def test_smollm2_posttrain_recipe_runs_and_moves_its_targets(tmp_path):
    """The shipped recipe end to end on the real model (minutes on 2 cores), trimmed a little: fewer eval questions."""
    import subprocess
    import sys

    recipe = REPO / "recipes" / "smollm2-135m-posttrain.yaml"
    cmd = [sys.executable, "-m", "hfpipe.cli", "--runs-dir", str(tmp_path / "runs"), "--cards-dir",
           str(tmp_path / "cards"), "run", str(recipe), "eval.limit=20"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    run_dir = tmp_path / "runs" / "smollm2-135m-posttrain"
    manifest = lambda stage: json.loads(next(run_dir.glob(f"{stage}-*/manifest.json")).read_text())  # noqa: E731
    m_sft, m_pref = manifest("sft")["metrics"], manifest("preference")["metrics"]
    assert m_sft["eval_loss_after"] < m_sft["eval_loss_before"], m_sft
    assert m_pref["eval_accuracy_after"] > m_pref["eval_accuracy_before"] > 0.3, m_pref  # TRL's evaluation
    assert m_pref["eval_margin_after"] > m_pref["eval_margin_before"], m_pref
    card = (tmp_path / "cards" / "smollm2-135m-posttrain.md").read_text()
    assert "synthetic" in card and "BSD-3-Clause" in card


# ------------------------------------------------------------------------------------------------ the job keys
def test_trainer_pass_through_reaches_trl_and_the_job_keys_are_recorded(tiny_model_dir, make_inputs, tmp_path):
    """`sft.trainer` goes to SFTConfig as it is; the resolved arguments are written beside the model."""
    inputs = make_inputs(upstream={"pretrain": tiny_model_dir.parent}, model_stage="pretrain")
    config = sft.Config(**{**FAST, "max_steps": 2}, trainer={"neftune_noise_alpha": 5, "lr_scheduler_type": "cosine"})
    metrics = sft.run(config, inputs, tmp_path)
    resolved = json.loads((tmp_path / "trainer_config.json").read_text())
    assert resolved["class"] == "trl.SFTConfig" and resolved["neftune_noise_alpha"] == 5
    assert resolved["lr_scheduler_type"] == "cosine" and resolved["learning_rate"] == FAST["learning_rate"]
    assert resolved["bf16"] is False and metrics["precision"] == "fp32"  # auto on a CPU
    assert "output_dir" not in resolved and str(tmp_path) not in (tmp_path / "trainer_config.json").read_text()


@pytest.mark.parametrize("override, message", [
    ("sft.trainer.lr_sheduler=cosine", "sft.trainer.lr_sheduler: not an argument of trl.SFTConfig; did you mean "
                                       "'lr_scheduler_type'?"),
    ("sft.trainer.output_dir=x", "sft.trainer.output_dir: hfpipe sets SFTConfig.output_dir itself; use the stage "
                                 "folder"),
    ("sft.trainer.max_length=64", "sft.trainer.max_length: hfpipe sets SFTConfig.max_length itself; use "
                                  "sft.max_length instead"),
    ("preference.trainer.seed=3", "preference.trainer.seed: hfpipe sets DPOConfig.seed itself; use the recipe's "
                                  "top-level seed"),
    ("rl.trainer.num_generation=8", "rl.trainer.num_generation: not an argument of trl.GRPOConfig; did you mean "
                                    "'num_generations'?"),
])
def test_a_bad_trainer_key_stops_the_run_before_any_stage(override, message, tmp_path):
    """Checked against the TRL config class before the first stage starts: nothing runs, one line, exit 2."""
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-m", "hfpipe.cli", "--runs-dir", str(tmp_path / "runs"), "run",
                          str(REPO / "recipes" / "tiny.yaml"), override], capture_output=True, text=True)
    assert res.returncode == 2 and res.stderr.strip().splitlines()[-1].startswith(f"hfpipe: error: {message}"), \
        res.stderr[-2000:]
    assert not [p for p in (tmp_path / "runs" / "tiny").glob("*") if not p.name.startswith(".")]  # nothing ran


def test_a_nan_loss_stops_sft_at_that_step(tiny_model_dir, make_inputs, tmp_path, monkeypatch):
    """Weights that turn NaN at the third training forward pass (a diverged run) stop the stage at optimizer step 3,
    naming the step: the callback, not a check after training."""
    import torch

    from hfpipe import models

    load, calls = models.load_model_and_tokenizer, {"train": 0}

    def poison(module, args):
        if module.training:
            calls["train"] += 1
            if calls["train"] == 3:
                with torch.no_grad():
                    module.model.norm.weight.fill_(float("nan"))

    def load_poisoned(*args, **kwargs):
        model, tokenizer = load(*args, **kwargs)
        model.register_forward_pre_hook(poison)
        return model, tokenizer

    monkeypatch.setattr(models, "load_model_and_tokenizer", load_poisoned)
    inputs = make_inputs(upstream={"pretrain": tiny_model_dir.parent}, model_stage="pretrain")
    with pytest.raises(HfpipeError, match=r"^sft: loss is nan at step 3; training stopped there") as e:
        sft.run(sft.Config(**FAST), inputs, tmp_path)
    assert e.value.exit_code == 1 and calls["train"] == 3 and len(str(e.value).splitlines()) == 1
