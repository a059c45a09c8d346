"""Post-training data: bundled sets (real and synthetic), TRL standard formats, mixtures, errors naming dataset and field.

Run: .venv/bin/python -m pytest tests/test_chatdata.py -q
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hfpipe.posttrain.data import (BUNDLED_DIR, BUNDLED_PROVENANCE, DatasetSpec, load_mixture, load_preferences,
                                   normalize_row)
from hfpipe.posttrain.templates import training_chat_template
from hfpipe.errors import HfpipeError

REPO = Path(__file__).resolve().parent.parent
SYNTHETIC = ("instruct", "tool_use", "safety", "structured", "style", "reasoning")


def _rows(name):
    return [json.loads(x) for x in (BUNDLED_DIR / name).read_text().splitlines()]


def test_synthetic_sets_regenerate_byte_for_byte(tmp_path):
    subprocess.run([sys.executable, str(REPO / "scripts" / "make_synthetic_posttrain.py"), "--out", str(tmp_path)],
                   check=True, capture_output=True)
    made = sorted(p.name for p in tmp_path.glob("*.jsonl"))
    assert len(made) == 4 * len(SYNTHETIC)
    for name in made:
        assert (tmp_path / name).read_bytes() == (BUNDLED_DIR / name).read_bytes(), name


def test_every_bundled_set_has_provenance_in_code_and_readme():
    readme = (BUNDLED_DIR / "README.md").read_text()
    ours = SYNTHETIC + tuple(f"{s}_pairs" for s in SYNTHETIC) + ("sft_chat", "preference_pairs", "chitchat",
                                                                   "chitchat_pairs")
    for path in [p for s in ours for p in (BUNDLED_DIR / f"{s}.jsonl", BUNDLED_DIR / f"{s}_eval.jsonl")]:
        spec = DatasetSpec(name=f"hfpipe:{path.name}")
        kind, licence, source = spec.provenance()
        assert kind in ("real", "synthetic") and licence and source, path.name
        assert f"`{path.stem.removesuffix('_eval')}" in readme, path.name
        rows = _rows(path.name)
        assert all(bool(r.get("synthetic")) == (kind == "synthetic") for r in rows), path.name
    assert set(SYNTHETIC) <= set(BUNDLED_PROVENANCE)


def _validates(obj, schema):
    types = {"string": str, "integer": int, "number": (int, float), "boolean": bool, "array": list, "object": dict}
    if not isinstance(obj, types[schema["type"]]) or (schema["type"] in ("integer", "number") and isinstance(obj, bool)):
        return False
    if schema["type"] == "object":
        if not set(schema["required"]) <= set(obj) or (schema.get("additionalProperties") is False
                                                      and not set(obj) <= set(schema["properties"])):
            return False
        return all(_validates(v, schema["properties"][k]) for k, v in obj.items())
    if schema["type"] == "array":
        return all(_validates(v, schema["items"]) for v in obj)
    return True


def test_structured_answers_match_the_schema_in_the_prompt_and_rejected_ones_do_not():
    for row in _rows("structured.jsonl") + _rows("structured_eval.jsonl"):
        schema = json.loads(row["messages"][0]["content"].split("\n", 1)[1])
        assert _validates(json.loads(row["messages"][-1]["content"]), schema)
    for row in _rows("structured_pairs.jsonl"):
        schema = json.loads(row["prompt"][0]["content"].split("\n", 1)[1])
        assert _validates(json.loads(row["chosen"][0]["content"]), schema)
        try:
            bad = json.loads(row["rejected"][0]["content"])
        except ValueError:
            continue
        assert not _validates(bad, schema)


def test_tool_calls_are_json_calls_of_declared_tools_with_required_arguments():
    calls = 0
    for row in _rows("tool_use.jsonl") + _rows("tool_use_eval.jsonl"):  # the ecosystem's format: tools, tool_calls
        first = row["messages"][1]
        tools = {t["function"]["name"]: t["function"] for t in row["tools"] if t["type"] == "function"}
        if len(row["messages"]) == 2:  # answered without a tool
            assert "tool_calls" not in first
            continue
        [call] = [c["function"] for c in first["tool_calls"]]
        assert call["name"] in tools and set(tools[call["name"]]["parameters"]["required"]) <= set(call["arguments"])
        assert row["messages"][2]["role"] == "tool" and row["messages"][3]["role"] == "assistant"
        calls += 1
    assert calls > 200


def test_safety_refuses_harmful_requests_and_answers_benign_look_alikes_with_unseen_eval_requests():
    train, held = _rows("safety.jsonl"), _rows("safety_eval.jsonl")
    for row in train + held:
        answer = row["messages"][-1]["content"]
        refused = answer.startswith(("I can't", "I won't", "Sorry, I can't"))
        assert refused == (row["behaviour"] == "refuse"), row
    assert {r["behaviour"] for r in held} == {"refuse", "comply"}
    asked = lambda rows: {r["messages"][0]["content"] for r in rows}  # noqa: E731
    assert not asked(train) & asked(held)
    for pair in _rows("safety_pairs_eval.jsonl"):  # benign: the over-refusal is the rejected answer
        if pair["behaviour"] == "comply":
            assert pair["rejected"][0]["content"].startswith("I'm sorry")


def test_reasoning_answers_are_worked_in_steps_and_chitchat_is_real_multi_turn():
    for row in _rows("reasoning.jsonl"):
        lines = row["messages"][-1]["content"].splitlines()
        assert len(lines) >= 4 and lines[0].startswith("Step 1:") and lines[-1].startswith("Answer: ")
    chats = _rows("chitchat.jsonl")
    assert len(chats) > 200 and all(len(r["messages"]) >= 4 and r["messages"][-1]["role"] == "assistant" for r in chats)
    pairs = _rows("chitchat_pairs.jsonl")
    assert all(r["ratings"][0] > r["ratings"][1] for r in pairs)
    assert not {r["source"] for r in _rows("chitchat_eval.jsonl")} & {r["source"] for r in chats}


def test_mixture_follows_weights_deterministically_and_reports_provenance():
    specs = [DatasetSpec(name="hfpipe:sft_chat.jsonl", weight=1), DatasetSpec(name="hfpipe:tool_use.jsonl", weight=3)]
    m = load_mixture(specs, "conversation", REPO, "sft.datasets", seed=7, eval_fraction=0.1, mixture_rows=400)
    again = load_mixture(specs, "conversation", REPO, "sft.datasets", seed=7, eval_fraction=0.1, mixture_rows=400)
    assert m.train == again.train and len(m.train) == 400
    assert m.report["sft_chat"]["rows_used"] == 100 and m.report["tool_use"]["rows_used"] == 300
    assert m.report["tool_use"]["share"] == 0.75 and m.report["tool_use"]["kind"] == "synthetic"
    assert m.report["sft_chat"]["kind"] == "real" and m.report["sft_chat"]["license"] == "BSD-3-Clause"
    assert m.report["tool_use"]["epochs"] == 1.0  # 300 rows wanted from a 300-row set: each once
    assert set(m.eval) == {"sft_chat", "tool_use"} and len(m.eval["sft_chat"]) == 129  # the bundled _eval siblings
    big = load_mixture(specs[1:], "conversation", REPO, "k", seed=7, eval_fraction=0.1, mixture_rows=700)
    assert big.report["tool_use"]["epochs"] == round(700 / 300, 3)
    assert all(len(v) < 80 for v in m.summary().values())


def test_holdout_split_keeps_questions_on_one_side(tmp_path):
    rows = [{"messages": [{"role": "user", "content": f"q{i % 40}"}, {"role": "assistant", "content": f"a{i}"}]}
            for i in range(400)]
    (tmp_path / "mine.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    m = load_mixture([DatasetSpec(path="mine.jsonl")], "conversation", tmp_path, "k", 0, 0.2)
    first = lambda rs: {r["messages"][0]["content"] for r in rs}  # noqa: E731
    assert m.eval["mine"] and not first(m.train) & first(m.eval["mine"])
    assert m.report["mine"]["kind"] == "user"


def test_trl_standard_formats_are_normalised(tmp_path):
    # prompt-completion (plain text) -> conversation
    out = normalize_row({"prompt": "2+2?", "completion": "4"}, "conversation", "w")
    assert out == [{"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]}]
    # implicit prompt: chosen/rejected are whole conversations sharing the prompt
    u, a, b = ({"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
               {"role": "assistant", "content": "go away"})
    assert normalize_row({"chosen": [u, a], "rejected": [u, b]}, "preference", "w") == [
        {"prompt": [u], "chosen": [a], "rejected": [b]}]
    # a pair unpairs into one desirable and one undesirable row (KTO), an unpaired row stays as it is
    assert [r["label"] for r in normalize_row({"prompt": "hi", "chosen": "hello", "rejected": "no"}, "unpaired", "w")] \
        == [True, False]
    assert normalize_row({"prompt": "hi", "completion": "hello", "label": False}, "unpaired", "w")[0]["label"] is False
    # prompt-only (for RL): up to the last user turn
    assert normalize_row({"messages": [u, a, u, a]}, "prompt", "w") == [{"prompt": [u, a, u]}]
    # parquet and .json files load like jsonl
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"prompt": f"q{i}", "chosen": "yes", "rejected": "no"} for i in range(30)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "p.parquet")
    (tmp_path / "p2.json").write_text(json.dumps(rows))
    for f in ("p.parquet", "p2.json"):
        m = load_mixture([DatasetSpec(path=f, eval=f)], "preference", tmp_path, "k", 0, 0.1)
        assert len(m.train) == 30 and m.train[0]["chosen"][0]["role"] == "assistant"


BAD = [
    ({"prompt": [{"role": "user", "content": "hi"}]}, "preference", "field 'chosen' is missing"),
    ({"prompt": "hi", "chosen": "a"}, "preference", "field 'rejected' is missing"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, "conversation", "field 'messages[0].role' is 'robot'"),
    ({"prompt": "hi"}, "conversation", "field 'completion' is missing"),
    ({"text": "just text"}, "conversation", "field 'messages' is missing"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "  "}]}, "conversation",
     "field 'messages[1].content' is an empty assistant turn"),
    ({"prompt": "hi", "completion": "x", "label": "yes"}, "unpaired", "field 'label' must be true"),
]


@pytest.mark.parametrize("row,kind,expected", BAD)
def test_wrong_columns_give_one_line_naming_dataset_and_field(row, kind, expected, tmp_path):
    good = {"conversation": {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
            "preference": {"prompt": "a", "chosen": "b", "rejected": "c"},
            "unpaired": {"prompt": "a", "completion": "b", "label": True}}[kind]
    (tmp_path / "mine.jsonl").write_text(json.dumps(good) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(HfpipeError, match=r"mine\.jsonl:2: ") as e:
        load_mixture([DatasetSpec(path="mine.jsonl")], kind, tmp_path, "k", 0, 0.5)
    assert expected in str(e.value) and "\n" not in str(e.value)


def test_spec_and_source_errors(tmp_path):
    with pytest.raises(ValueError, match="exactly one of 'name'"):
        DatasetSpec(name="hfpipe:sft_chat.jsonl", path="x.jsonl")
    with pytest.raises(HfpipeError, match=r"sft.datasets\[1\]: dataset file 'nope.parquet' not found"):
        load_mixture([DatasetSpec(name="hfpipe:style.jsonl"), DatasetSpec(path="nope.parquet")], "conversation",
                     tmp_path, "sft.datasets", 0, 0.1)
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(HfpipeError, match="unsupported file type '.csv'"):
        load_mixture([DatasetSpec(path="x.csv")], "conversation", tmp_path, "k", 0, 0.1)
    with pytest.raises(HfpipeError, match=r"k: Hub dataset 'someone/missing' split 'train' could not be loaded"):
        load_mixture([DatasetSpec(name="someone/missing")], "conversation", tmp_path, "k", 0, 0.1)
    one = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    (tmp_path / "one.jsonl").write_text(json.dumps(one) + "\n")
    with pytest.raises(HfpipeError, match="set 'one' has 1 training and 0 held-out rows"):
        load_mixture([DatasetSpec(path="one.jsonl")], "conversation", tmp_path, "k", 0, 0.1)
    # the loaders the rl stage uses keep working
    assert len(load_preferences(BUNDLED_DIR / "safety_pairs.jsonl")) == 200


def test_training_template_marks_assistant_turns_and_renders_the_same_text(tiny_model_dir):
    from transformers import AutoTokenizer

    smollm2 = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>"
               "system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}"
               "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
               "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.chat_template = smollm2
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    text = tok.apply_chat_template(msgs, tokenize=False)
    tok.chat_template = training_chat_template(tok, "sft.assistant_only_loss")
    assert "{% generation %}" in tok.chat_template and tok.apply_chat_template(msgs, tokenize=False) == text
    out = tok.apply_chat_template(msgs, return_assistant_tokens_mask=True, return_dict=True)
    masked = [t for t, m in zip(out["input_ids"], out["assistant_masks"]) if m]
    assert tok.decode(masked) == "hello<|im_end|>"
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    with pytest.raises(HfpipeError, match="sft.assistant_only_loss: the model's chat template has no"):
        training_chat_template(tok, "sft.assistant_only_loss")
