"""rl stage: reward model (TRL RewardTrainer) + GRPO / RLOO on the bundled RL prompts, on a tiny random Llama (CPU).

Run: .venv/bin/python -m pytest tests/test_stage_rl.py -q
"""

import importlib.util
import json
import math

import pytest

from hfpipe.stages.rl import rewards as rl_rewards
from hfpipe.posttrain.data import BUNDLED_DIR
from hfpipe.errors import HfpipeError, RecipeError
from hfpipe.recipe import load_recipe
from hfpipe.stages import rl

REPO = BUNDLED_DIR.parent.parent
# the reward model learns the bundled preference on these prompts (right answer in the right form); prompts are
# the short arithmetic ones so that generation on CPU stays fast
RM = {"dataset": "hfpipe:rl_pairs.jsonl", "eval_dataset": "hfpipe:rl_pairs_eval.jsonl", "max_steps": 20,
      "learning_rate": 3e-3, "per_device_batch_size": 16, "max_length": 256}


def _rows(name):
    return [json.loads(line) for line in (BUNDLED_DIR / name).read_text(encoding="utf-8").splitlines()]


def _script():
    spec = importlib.util.spec_from_file_location("make_rl_prompts", REPO / "scripts" / "make_rl_prompts.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bundled_sets_regenerate_byte_for_byte_and_split_by_prompt():
    script = _script()
    rows = script.rows()
    train, held = [r for r in rows if not script.held_out(r)], [r for r in rows if script.held_out(r)]
    for name, items in [("rl_prompts.jsonl", train), ("rl_prompts_eval.jsonl", held),
                        ("rl_pairs.jsonl", script.pairs(train)), ("rl_pairs_eval.jsonl", script.pairs(held))]:
        expected = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in items)
        assert (BUNDLED_DIR / name).read_text(encoding="utf-8") == expected, name
    users = lambda rs: {r["prompt"][-1]["content"] for r in rs}  # noqa: E731
    assert not users(train) & users(held) and len(held) > 50
    assert {r["task"] for r in held} == {"arithmetic", "json", "tool_call"}


def test_verifiable_rewards_score_the_bundled_references_and_rejections():
    """Every chosen answer earns full marks from its task's rewards; every rejection loses them."""
    checks = {"arithmetic": ["exact_answer"], "json": ["exact_answer", "valid_json"],
              "tool_call": ["exact_answer", "valid_tool_call"]}
    prompts = {r["prompt"][-1]["content"]: r for r in rl_rewards.load_prompts(BUNDLED_DIR / "rl_prompts_eval.jsonl")}
    pairs = _rows("rl_pairs_eval.jsonl")
    for pair in pairs:
        row = prompts[pair["prompt"][-1]["content"]]
        columns = {k: [row[k]] for k in ("answer", "json_schema", "tools")}
        for name in checks[pair["task"]]:
            fn = rl_rewards.FUNCTIONS[name][0]
            assert fn([pair["chosen"]], **columns) == [1.0], (name, pair)
        lost = [rl_rewards.FUNCTIONS[n][0]([pair["rejected"]], **columns)[0] for n in checks[pair["task"]]]
        assert min(lost) == 0.0, pair
        if pair["task"] != "arithmetic" and pair["rejection"] == "format":  # prose / Python dict: not JSON at all
            assert max(lost) == 0.0, pair


def test_reward_functions_on_edge_cases():
    c = lambda text: [{"role": "assistant", "content": text}]  # noqa: E731
    assert rl_rewards.exact_answer([c(" 12. "), c("13"), c("x")], answer=["12", "12", ""]) == [1.0, 0.0, None]
    sim = rl_rewards.answer_similarity([c("12"), c("1"), c("no")], answer=["12", "12", "12"])
    assert sim[0] == 1.0 and 0.0 < sim[1] < 1.0 and sim[2] == 0.0
    schema = json.dumps({"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]})
    got = rl_rewards.valid_json([c('```json\n{"n": 3}\n```'), c('{"n": true}'), c('{"n": 3'), c("{}"), c("1")],
                                json_schema=[schema] * 4 + [""])
    assert got == [1.0, 0.0, 0.0, 0.0, None]
    tools = json.dumps(_rows("rl_prompts.jsonl")[-1]["tools"])
    calls = ['<tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}}</tool_call>',
             '{"name": "add", "arguments": {"a": 1}}', '{"name": "mul", "arguments": {"a": 1, "b": 2}}',
             '{"name": "unicode_name", "arguments": {"char": "ab"}}']
    assert rl_rewards.valid_tool_call([c(t) for t in calls], tools=[tools] * 4) == [1.0, 0.0, 0.0, 0.0]


def test_grpo_raises_heldout_reward_and_reward_model_beats_chance(tiny_model_dir, make_inputs, tmp_path):
    config = rl.Config(reward_model=RM, algorithm="grpo", tasks=["arithmetic"],
                       rewards=[{"name": "reward_model", "weight": 1.0}, {"name": "exact_answer", "weight": 1.0}],
                       learning_rate=1e-2, max_steps=30, per_device_batch_size=16, num_generations=4,
                       max_completion_length=6, eval_prompts=16)
    inputs = make_inputs(upstream={"pretrain": tiny_model_dir.parent}, model_stage="pretrain")
    metrics = rl.run(config, inputs, tmp_path)
    json.dumps(metrics)

    # phase 1: held-out pairs (prompts never trained on) are ranked the right way round well above chance
    assert metrics["rm_eval_accuracy_after"] > 0.6 and metrics["rm_eval_pairs"] > 100, metrics
    assert metrics["rm_eval_accuracy_after"] > metrics["rm_eval_accuracy_before"] + 0.1, metrics
    assert metrics["rm_eval_margin_after"] > metrics["rm_eval_margin_before"], metrics
    # phase 2: the summed reward on held-out prompts (same sampling seed before and after) and during the run rises
    assert metrics["eval_reward_after"] > metrics["eval_reward_before"] + 0.5, metrics
    assert metrics["train_reward_end"] > metrics["train_reward_start"], metrics
    assert metrics["eval_reward_reward_model_after"] > metrics["eval_reward_reward_model_before"], metrics
    assert metrics["train_steps"] == 30 and metrics["eval_prompts"] == 16 and metrics["algorithm"] == "grpo"
    assert all(math.isfinite(v) for v in metrics.values() if isinstance(v, float))
    # next to the reward, what it cost the language model: KL to the starting policy (0 before, computed) and
    # held-out bits per byte before and after
    assert metrics["eval_kl_to_start_before"] == 0.0 < metrics["eval_kl_to_start_after"], metrics
    for domain in ("prose", "code", "udhr"):
        assert metrics[f"heldout_bpb_{domain}_after"] != metrics[f"heldout_bpb_{domain}_before"], metrics

    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "chat_template.sha256") == [
        "contamination.json", "model", "reward_model", "reward_model_trainer_config.json", "trainer_config.json"]
    report = json.loads((tmp_path / "contamination.json").read_text())
    assert {r["source"] for r in report["rows"]} == {"rl_prompts", "rl_pairs"}  # prompts and reward-model pairs
    out = tmp_path / "model"
    assert (out / "chat_template.jinja").read_bytes() == (tiny_model_dir / "chat_template.jinja").read_bytes()
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    AutoModelForCausalLM.from_pretrained(out)
    assert AutoModelForSequenceClassification.from_pretrained(tmp_path / "reward_model").config.num_labels == 1


def test_rloo_with_verifiable_rewards_only(tiny_model_dir, make_inputs, tmp_path):
    """No reward model: RLOO on the JSON / tool-call prompts, scored by their validators; the run completes."""
    config = rl.Config(reward_model=None, algorithm="rloo", tasks=["json", "tool_call"],
                       rewards=[{"name": "valid_json"}, {"name": "valid_tool_call", "weight": 0.5}],
                       learning_rate=1e-3, max_steps=2, per_device_batch_size=4, num_generations=2,
                       max_completion_length=4, eval_prompts=4)
    inputs = make_inputs(upstream={"pretrain": tiny_model_dir.parent}, model_stage="pretrain")
    metrics = rl.run(config, inputs, tmp_path)
    assert metrics["algorithm"] == "rloo" and metrics["train_steps"] == 2 and "rm_eval_accuracy_after" not in metrics
    assert {"eval_reward_valid_json_before", "eval_reward_valid_tool_call_after"} <= set(metrics)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "chat_template.sha256") == [
        "contamination.json", "model", "trainer_config.json"]


def test_a_heldout_bits_per_byte_rise_past_the_recipes_limit_fails_or_warns(caplog):
    from hfpipe.posttrain.heldout import check_bpb_rise

    before, after = {"prose": 2.5, "code": 3.0, "udhr": 11.0}, {"prose": 2.6, "code": 3.4, "udhr": 11.0}
    with pytest.raises(HfpipeError, match=r"rl: held-out bits per byte rose more than 10% \(code 3.000 -> 3.400 "
                                          r"\(\+13%\)\); limit rl.heldout_bpb_max_rise") as e:
        check_bpb_rise("rl", before, after, 0.1, "fail", "rl.heldout_bpb_max_rise")
    assert e.value.exit_code == 1
    with caplog.at_level("WARNING", logger="hfpipe"):
        assert check_bpb_rise("rl", before, after, 0.1, "warn", "rl.heldout_bpb_max_rise") == ["code"]
    assert "code 3.000 -> 3.400" in caplog.text
    assert check_bpb_rise("rl", before, after, 0.2, "fail", "k") == [] == check_bpb_rise("rl", before, after, None,
                                                                                          "fail", "k")


GOOD_PAIR = {"prompt": [{"role": "user", "content": "What is 2 + 2?"}],
             "chosen": [{"role": "assistant", "content": "4"}], "rejected": [{"role": "assistant", "content": "5"}]}


@pytest.mark.parametrize("bad,key,expected", [
    ({"chosen": GOOD_PAIR["chosen"], "answer": "4"}, "dataset", "field 'prompt' is missing (this looks like a "
                                                                "preference pair"),
    ({"prompt": GOOD_PAIR["chosen"]}, "dataset", "field 'prompt' must end with a user turn"),
    ({"prompt": [{"role": "tool", "content": "x"}]}, "dataset", "field 'prompt[0].role' is 'tool'"),
    ({"prompt": GOOD_PAIR["prompt"], "json_schema": "object"}, "dataset", "field 'json_schema' must be"),
    ({k: v for k, v in GOOD_PAIR.items() if k != "rejected"}, "pairs", "field 'rejected' is missing"),
    ({k: v for k, v in GOOD_PAIR.items() if k != "prompt"}, "pairs", "field 'prompt' is missing"),
])
def test_bad_rows_name_file_line_and_field(bad, key, expected, make_inputs, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    pairs = tmp_path / "pairs.jsonl"
    good_prompt = {"prompt": GOOD_PAIR["prompt"], "answer": "4"}
    prompts.write_text(json.dumps(good_prompt) + "\n" + json.dumps(bad if key == "dataset" else good_prompt) + "\n")
    pairs.write_text(json.dumps(GOOD_PAIR) + "\n" + json.dumps(bad if key == "pairs" else GOOD_PAIR) + "\n")
    config = rl.Config(dataset="prompts.jsonl", eval_dataset="prompts.jsonl", rewards=[{"name": "reward_model"}],
                       reward_model={"dataset": "pairs.jsonl", "eval_dataset": "pairs.jsonl"})
    name = "prompts" if key == "dataset" else "pairs"
    with pytest.raises(HfpipeError, match=rf"{name}\.jsonl:2: ") as e:
        rl.run(config, make_inputs(recipe_dir=tmp_path), tmp_path)
    assert expected in str(e.value) and "\n" not in str(e.value)


def test_reward_needing_a_missing_field_is_named(make_inputs, tmp_path):
    (tmp_path / "prompts.jsonl").write_text(json.dumps({"prompt": GOOD_PAIR["prompt"], "answer": "4"}) + "\n")
    config = rl.Config(dataset="prompts.jsonl", eval_dataset="prompts.jsonl", reward_model=None,
                       rewards=[{"name": "exact_answer"}, {"name": "valid_tool_call"}])
    with pytest.raises(HfpipeError, match=r"rl\.rewards\[1\]: 'valid_tool_call' .* field 'tools'.*prompts\.jsonl"):
        rl.run(config, make_inputs(recipe_dir=tmp_path), tmp_path)


def test_recipe_errors_name_the_key_with_suggestions(tmp_path):
    bad = tmp_path / "r.yaml"
    bad.write_text("name: x\nrl:\n  rewards:\n    - {name: exact_anwser, weight: 1.0}\n")
    with pytest.raises(RecipeError) as e:
        load_recipe(bad)
    msg = str(e.value)
    assert "rl.rewards.0.name" in msg and "did you mean 'exact_answer'" in msg and "r.yaml:4" in msg, msg
    with pytest.raises(ValueError, match="multiple of num_generations"):
        rl.Config(per_device_batch_size=6, num_generations=4)
    with pytest.raises(ValueError, match="reward_model is null"):
        rl.Config(reward_model=None)
    with pytest.raises(ValueError):
        rl.Config(algorithm="ppo")
    assert [p.name for p in rl.input_files(rl.Config(), BUNDLED_DIR)] == [
        "rl_prompts.jsonl", "rl_prompts_eval.jsonl", "rl_pairs.jsonl", "rl_pairs_eval.jsonl"]
