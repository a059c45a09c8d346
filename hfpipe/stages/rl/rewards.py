"""Prompts and reward functions for the `rl` stage.

Prompt datasets are JSONL, one object per line, in TRL's conversational prompt-only format plus the references the
verifiable rewards check against (all optional except `prompt`):

    {"prompt": [{"role": "system"|"user", "content": ...}, ..., {"role": "user", ...}],
     "task": "arithmetic",              # free label; `rl.tasks` keeps only the listed ones
     "answer": "12",                    # reference answer (exact_answer, answer_similarity); JSON text compares as JSON
     "json_schema": {...},              # the JSON Schema the reply must satisfy (valid_json)
     "tools": [{"type": "function", "function": {"name", "description", "parameters": {...}}}]}  # (valid_tool_call)

Reward functions follow TRL's protocol (``f(prompts, completions, **columns) -> list[float | None]``; None = "does not
apply to this row", which TRL leaves out of the mean). ``reward_model`` is not a function here: the stage passes the
trained sequence-classification model to TRL, which scores prompt + completion with it.
"""

from __future__ import annotations

import difflib
import json
import re
from pathlib import Path

from hfpipe.errors import HfpipeError
from hfpipe.posttrain.data import check_prompt, load_split, read_jsonl

PROMPT_ROLES = ("system", "user", "assistant")

# ----------------------------------------------------------------------------------------------------------------
# Prompt data


def load_prompts(path: Path) -> list[dict]:
    """Rows {"prompt", "task", "answer", "json_schema", "tools"}; the last three as strings ('' = none), so that every
    row has the same columns (an Arrow table needs that) and reward functions parse what they use."""
    rows = []
    for lineno, row in read_jsonl(path):
        where = f"{path}:{lineno}"
        if "prompt" not in row:
            hint = " (this looks like a preference pair; RL needs prompts only)" if "chosen" in row else ""
            raise HfpipeError(f"{where}: field 'prompt' is missing{hint}", 2)
        out = {"prompt": check_prompt(row["prompt"], where, PROMPT_ROLES, empty_assistant_ok=True),
               "task": str(row.get("task", "")), "answer": "", "json_schema": "", "tools": ""}
        if row.get("answer") is not None:
            if not isinstance(row["answer"], str | int | float) or isinstance(row["answer"], bool):
                raise HfpipeError(f"{where}: field 'answer' must be a string or a number", 2)
            out["answer"] = str(row["answer"])
        if row.get("json_schema") is not None:
            if not isinstance(row["json_schema"], dict):
                raise HfpipeError(f"{where}: field 'json_schema' must be a JSON Schema object", 2)
            out["json_schema"] = json.dumps(row["json_schema"])
        if row.get("tools") is not None:
            tools = row["tools"]
            if not isinstance(tools, list) or not tools or not all(_tool_name(t) for t in tools):
                raise HfpipeError(f"{where}: field 'tools' must be a non-empty list of {{\"type\": \"function\", "
                                  "\"function\": {\"name\", \"parameters\"}} declarations", 2)
            out["tools"] = json.dumps(tools)
        rows.append(out)
    return rows


def _tool_name(tool) -> str | None:
    fn = tool.get("function") if isinstance(tool, dict) else None
    ok = isinstance(fn, dict) and isinstance(fn.get("name"), str) and isinstance(fn.get("parameters", {}), dict)
    return fn["name"] if ok else None



def load_prompt_split(config, inputs, decontaminator=None) -> tuple[list[dict], list[dict], Path, Path]:
    """The rl stage's train and held-out prompts (rl.Config, Inputs): training prompts sharing an n-gram with the eval
    plan dropped (``decontaminator``, hfpipe.posttrain.decontamination), filtered by `tasks`, checked against the
    rewards that need a field, and cut to whole evaluation batches."""
    train_rows, eval_rows, train_path, eval_path = load_split(
        config.dataset, config.eval_dataset, inputs.recipe_dir, "rl", load_prompts, config.eval_fraction,
        decontaminator=decontaminator)
    if config.tasks is not None:
        have = sorted({r["task"] for r in train_rows + eval_rows})
        train_rows = [r for r in train_rows if r["task"] in config.tasks]
        eval_rows = [r for r in eval_rows if r["task"] in config.tasks]
        if not train_rows or not eval_rows:
            raise HfpipeError(f"rl.tasks: {config.tasks} leaves {len(train_rows)} train / {len(eval_rows)} held-out "
                              f"prompts in {train_path} / {eval_path} (their tasks: {have})", 2)
    if not train_rows or not eval_rows:
        raise HfpipeError(f"rl: {train_path}: holding out eval_fraction={config.eval_fraction} left "
                          f"{len(train_rows)} train / {len(eval_rows)} held-out prompts; change rl.eval_fraction", 2)
    eval_rows = eval_rows[: config.eval_prompts]
    # every verifiable reward must have something to check on the training prompts
    for i, spec in enumerate(config.rewards):
        if spec.name in FUNCTIONS:
            column = FUNCTIONS[spec.name][1]
            if not any(r[column] for r in train_rows):
                raise HfpipeError(f"rl.rewards[{i}]: {spec.name!r} scores prompts that have field '{column}', "
                                  f"but no prompt of {train_path} has one", 2)
    # whole evaluation batches only, so that TRL's per-batch means average to the mean over all prompts
    per_batch = config.per_device_batch_size // config.num_generations
    eval_rows = eval_rows[: max(per_batch, len(eval_rows) // per_batch * per_batch)]
    return train_rows, eval_rows, train_path, eval_path


# ----------------------------------------------------------------------------------------------------------------
# JSON Schema (the same validator as the eval stage's tool-use / structured-output scorers)


def matches_schema(value, schema: dict) -> bool:
    """True when `value` satisfies `schema` (JSON Schema 2020-12, jsonschema)."""
    import jsonschema

    return jsonschema.Draft202012Validator(schema).is_valid(value)


# ----------------------------------------------------------------------------------------------------------------
# Reward functions (TRL signature)


def _text(completion) -> str:
    """A completion as text: TRL passes [{"role": "assistant", "content": ...}] for conversational prompts."""
    if isinstance(completion, list):
        return "".join(m.get("content", "") for m in completion if isinstance(m, dict))
    return str(completion)


def _normalise(text: str) -> str:
    return " ".join(text.strip().casefold().split()).rstrip(".")


_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)
_TOOL_TAG = re.compile(r"^<tool_call>\s*(.*?)\s*</tool_call>$", re.DOTALL)


def _parse_json(text: str):
    """The JSON value a reply consists of (a ```json fence or <tool_call> tags around it are allowed), else raises."""
    text = text.strip()
    for pattern in (_FENCE, _TOOL_TAG):
        m = pattern.match(text)
        if m:
            text = m.group(1)
    return json.loads(text)


def _same_answer(reply: str, reference: str) -> bool:
    try:
        ref = json.loads(reference)
    except ValueError:
        ref = None
    if isinstance(ref, dict | list):
        try:
            return _parse_json(reply) == ref
        except ValueError:
            return False
    return _normalise(reply) == _normalise(reference)


def exact_answer(completions, answer, **kwargs) -> list[float | None]:
    """1 when the reply equals the row's `answer` (case, surrounding space and a final '.' ignored; a JSON reference
    is compared as parsed JSON), else 0; None for rows without an answer."""
    return [None if not ref else float(_same_answer(_text(c), ref)) for c, ref in zip(completions, answer)]


def answer_similarity(completions, answer, **kwargs) -> list[float | None]:
    """Graded answer correctness in [0, 1]: difflib's ratio 2*matches/(len(reply)+len(answer)) between the normalised
    reply and answer, 1 only for an exact answer. Gives a small policy a signal before it is ever exactly right."""
    return [None if not ref else difflib.SequenceMatcher(None, _normalise(_text(c)), _normalise(ref)).ratio()
            for c, ref in zip(completions, answer)]


def valid_json(completions, json_schema, **kwargs) -> list[float | None]:
    """1 when the reply is JSON satisfying the row's `json_schema`, else 0; None for rows without a schema."""
    out = []
    for c, schema in zip(completions, json_schema):
        if not schema:
            out.append(None)
            continue
        try:
            out.append(float(matches_schema(_parse_json(_text(c)), json.loads(schema))))
        except ValueError:
            out.append(0.0)
    return out


def valid_tool_call(completions, tools, **kwargs) -> list[float | None]:
    """1 when the reply is one call {"name", "arguments"} of a tool the row declares, with arguments satisfying that
    tool's parameter schema (optionally inside <tool_call> tags), else 0; None for rows without tools."""
    out = []
    for c, declared in zip(completions, tools):
        if not declared:
            out.append(None)
            continue
        schemas = {_tool_name(t): t["function"].get("parameters", {}) for t in json.loads(declared)}
        try:
            call = _parse_json(_text(c))
        except ValueError:
            out.append(0.0)
            continue
        ok = (isinstance(call, dict) and set(call) <= {"name", "arguments"} and call.get("name") in schemas
              and matches_schema(call.get("arguments", {}), schemas[call["name"]]))
        out.append(float(ok))
    return out


REWARD_MODEL = "reward_model"
# name -> (function, the prompt column it needs on at least one row)
FUNCTIONS = {"exact_answer": (exact_answer, "answer"), "answer_similarity": (answer_similarity, "answer"),
             "valid_json": (valid_json, "json_schema"), "valid_tool_call": (valid_tool_call, "tools")}
NAMES = (REWARD_MODEL, *FUNCTIONS)


def check_name(name: str) -> str:
    """A recipe's reward name, or ValueError naming the closest known ones."""
    if name not in NAMES:
        close = difflib.get_close_matches(name, NAMES, n=2, cutoff=0.5)
        hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
        raise ValueError(f"unknown reward function {name!r}; {hint}known: {', '.join(NAMES)}")
    return name
