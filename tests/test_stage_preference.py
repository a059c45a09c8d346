"""preference stage: TRL DPOTrainer on the bundled chatterbot preference pairs, on a tiny random Llama (CPU).

Run: .venv/bin/python -m pytest tests/test_stage_preference.py -q
"""

import json
import math

import pytest

from hfpipe.posttrain.data import BUNDLED_DIR
from hfpipe.errors import HfpipeError
from hfpipe.stages import preference


def _pairs(name):
    return [json.loads(line) for line in (BUNDLED_DIR / name).read_text().splitlines()]


def test_bundled_pairs_share_no_text_across_the_split():
    train, held = _pairs("preference_pairs.jsonl"), _pairs("preference_pairs_eval.jsonl")
    texts = lambda rows, f: {r[f][0]["content"] for r in rows}  # noqa: E731
    assert len(train) > 500 and len(held) > 50
    assert not texts(train, "prompt") & texts(held, "prompt")
    train_answers = texts(train, "chosen") | texts(train, "rejected")
    assert not (texts(held, "chosen") | texts(held, "rejected")) & train_answers
    assert all(r["chosen"] != r["rejected"] for r in train + held)


# The synthetic safety and structured-output pairs: a signal even a random tiny model picks up, so the direction is
# robust across seeds (measured: held-out margin 6.0 / 7.0 / 6.6 for seeds 0 / 1 / 2 with these numbers).
SETS = [{"name": "hfpipe:safety_pairs.jsonl"}, {"name": "hfpipe:structured_pairs.jsonl"}]
FAST = dict(datasets=SETS, max_eval_pairs=40, max_steps=40, learning_rate=1e-3, beta=0.5, per_device_batch_size=8,
            max_length=256)


def test_dpo_raises_heldout_margin_and_accuracy(tiny_model_dir, make_inputs, tmp_path):
    inputs = make_inputs(upstream={"pretrain": tiny_model_dir.parent}, model_stage="pretrain")
    metrics = preference.run(preference.Config(**FAST), inputs, tmp_path)

    # before training the policy *is* DPO's reference: the loss is ln 2. TRL's evaluation against the fixed,
    # length-normalised reference says how the random starting model ranks the pairs (measured: 0.125, margin -0.014:
    # it prefers the shorter wrong answers), not 0 by construction
    assert math.isclose(metrics["eval_loss_before"], math.log(2), rel_tol=1e-4)
    assert metrics["eval_accuracy_before"] < 0.5 and metrics["eval_margin_before"] < 0, metrics
    # after: held-out pairs (requests never seen in training) are preferred the right way round
    assert metrics["eval_accuracy_after"] > metrics["eval_accuracy_before"] + 0.5, metrics
    assert metrics["eval_margin_after"] > 0.1, metrics
    assert metrics["eval_accuracy_vs_start_after"] > 0.9 and metrics["eval_margin_vs_start_after"] > 1.0, metrics
    assert metrics["eval_loss_after"] < metrics["eval_loss_before"] - 0.2, metrics
    for domain in ("prose", "code", "udhr"):  # the language model's held-out bits per byte, before and after
        assert metrics[f"heldout_bpb_{domain}_after"] != metrics[f"heldout_bpb_{domain}_before"]
    assert metrics["train_steps"] == 40 and metrics["eval_pairs"] >= 30  # pairs whose answers fit max_length
    assert set(metrics["mixture"]) == {"safety_pairs", "structured_pairs"}
    json.dumps(metrics)
    assert all(str(p.relative_to(tmp_path)).startswith("model") or p.name in ("mixture.json", "trainer_config.json",
                                                                         "contamination.json", "chat_template.sha256")
               for p in tmp_path.rglob("*"))
    out = tmp_path / "model"
    assert (out / "chat_template.jinja").read_bytes() == (tiny_model_dir / "chat_template.jinja").read_bytes()


@pytest.mark.parametrize("method", ["kto", "orpo"])
def test_kto_and_orpo_raise_heldout_preference(method, tiny_model_dir, make_inputs, tmp_path):
    inputs = make_inputs(upstream={"pretrain": tiny_model_dir.parent}, model_stage="pretrain")
    config = preference.Config(**{**FAST, "max_steps": 30, "max_eval_pairs": 24}, method=method)
    metrics = preference.run(config, inputs, tmp_path)
    assert metrics["eval_accuracy_after"] > metrics["eval_accuracy_before"] + 0.3, metrics
    assert metrics["eval_margin_after"] > metrics["eval_margin_before"], metrics
    assert (tmp_path / "model" / "config.json").is_file()


def test_chatterbot_pairs_still_train_with_the_single_dataset_keys(tiny_model_dir, make_inputs, tmp_path):
    inputs = make_inputs(upstream={"pretrain": tiny_model_dir.parent}, model_stage="pretrain")
    config = preference.Config(max_steps=4, learning_rate=1e-3, max_length=96, max_eval_pairs=16)
    metrics = preference.run(config, inputs, tmp_path)
    assert metrics["train_steps"] == 4 and metrics["eval_pairs"] == 16
    assert "BSD-3-Clause" in metrics["mixture"]["preference_pairs"]


GOOD = {"prompt": [{"role": "user", "content": "What is AI?"}],
        "chosen": [{"role": "assistant", "content": "The study of thinking machines."}],
        "rejected": [{"role": "assistant", "content": "Tell me a joke."}]}
BAD_ROWS = [
    ({k: v for k, v in GOOD.items() if k != "chosen"}, "field 'chosen' is missing"),
    ({k: v for k, v in GOOD.items() if k != "prompt"}, "field 'prompt' is missing"),
    ({**GOOD, "rejected": []}, "field 'rejected' must be a non-empty list"),
    ({**GOOD, "chosen": [{"role": "user", "content": "x"}]}, "field 'chosen[0].role' is 'user'"),
    ({**GOOD, "prompt": GOOD["prompt"] + GOOD["chosen"]}, "field 'prompt' must end with a user turn"),
]


@pytest.mark.parametrize("bad,expected", BAD_ROWS)
def test_bad_rows_name_file_line_and_field(bad, expected, make_inputs, tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in (GOOD, bad)) + "\n")
    with pytest.raises(HfpipeError, match=r"pairs\.jsonl:2: ") as e:
        preference.run(preference.Config(dataset="pairs.jsonl"), make_inputs(recipe_dir=tmp_path), tmp_path)
    assert expected in str(e.value)


def test_config_rejects_unknown_method_and_keys():
    with pytest.raises(ValueError):
        preference.Config(method="ppo")
    with pytest.raises(ValueError):
        preference.Config(bta=0.1)
    assert [p.name for p in preference.input_files(preference.Config(eval_dataset=None), BUNDLED_DIR)] == [
        "preference_pairs.jsonl"]
