"""Build the bundled RL sets in hfpipe/datasets/, byte for byte: prompts (rl_prompts*.jsonl) and preference pairs on
the same prompts for the reward model (rl_pairs*.jsonl).

Every prompt has a reference the `rl` stage's verifiable rewards check against (hfpipe/stages/rl/rewards.py):

- task "arithmetic": "What is 7 + 5? ..." with `answer` "12" -- sums and differences of the digits 0-9, computed here;
- task "json": describe a character as a JSON object, with `json_schema` and the exact `answer` -- facts from the
  Unicode Character Database that ships with CPython (`unicodedata`, Unicode licence);
- task "tool_call": a system turn declares two tools (JSON schemas in `tools`), the user asks for something one of them
  does, and `answer` is the expected call {"name", "arguments"}.

Each prompt also gives two preference pairs: `chosen` is the reference answer; `rejected` is (1) the same content in a
wrong form (prose instead of the requested number/JSON/tool call, or a Python-style dict that is not JSON), and (2) the
right form with a wrong value (an off-by-one number, a wrong code point, arguments of the wrong type or name). The field
`rejection` says which ("format" / "value").

Synthetic prompts and pairs (templates written here) over real facts; no randomness at all. A prompt (and its pairs)
is held out when sha256(user text) mod 100 < 20. Run: .venv/bin/python scripts/make_rl_prompts.py
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "hfpipe" / "datasets"
HELD_OUT_PERCENT = 20
SOURCE_ARITH = "synthetic: hfpipe scripts/make_rl_prompts.py (digit arithmetic computed by Python)"
SOURCE_UCD = (f"synthetic template over the Unicode Character Database {unicodedata.unidata_version} "
              "(CPython unicodedata; Unicode licence)")

TOOLS = [
    {"type": "function", "function": {
        "name": "add", "description": "Add two integers.",
        "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                       "required": ["a", "b"], "additionalProperties": False}}},
    {"type": "function", "function": {
        "name": "unicode_name", "description": "The Unicode name of one character.",
        "parameters": {"type": "object", "properties": {"char": {"type": "string", "minLength": 1, "maxLength": 1}},
                       "required": ["char"], "additionalProperties": False}}},
]
TOOL_SYSTEM = ("You can call these tools. To call one, reply with only a JSON object "
               '{"name": <tool name>, "arguments": {...}}.\nTools: ' + json.dumps(TOOLS, ensure_ascii=False))
CHAR_SCHEMA = {"type": "object", "properties": {"char": {"type": "string"}, "codepoint": {"type": "integer"}},
               "required": ["char", "codepoint"], "additionalProperties": False}


def characters() -> list[str]:
    """Letters of Latin-1 Supplement and lower-case Greek: named since Unicode 1.1, so stable across Python versions."""
    latin = [chr(c) for c in range(0xC0, 0x100) if unicodedata.category(chr(c)).startswith("L")]
    greek = [chr(c) for c in range(0x3B1, 0x3CA) if unicodedata.category(chr(c)) == "Ll"]
    return latin + greek


def user(text: str, system: str | None = None) -> list[dict]:
    turns = [{"role": "system", "content": system}] if system else []
    return turns + [{"role": "user", "content": text}]


def rows() -> list[dict]:
    out = []
    for a in range(10):
        for b in range(10):
            out.append({"task": "arithmetic", "prompt": user(f"What is {a} + {b}? Reply with the number only."),
                        "answer": str(a + b), "source": SOURCE_ARITH})
            if a >= b:
                out.append({"task": "arithmetic", "prompt": user(f"What is {a} - {b}? Reply with the number only."),
                            "answer": str(a - b), "source": SOURCE_ARITH})
    for ch in characters():
        out.append({"task": "json", "prompt": user(
            f"Describe the character '{ch}' as a JSON object with keys \"char\" (the character) and \"codepoint\" "
            "(its Unicode code point as an integer). Reply with the JSON only."),
            "json_schema": CHAR_SCHEMA, "answer": json.dumps({"char": ch, "codepoint": ord(ch)}, ensure_ascii=False),
            "source": SOURCE_UCD})
        out.append({"task": "tool_call", "prompt": user(f"What is the Unicode name of '{ch}'?", TOOL_SYSTEM),
                    "tools": TOOLS, "answer": json.dumps({"name": "unicode_name", "arguments": {"char": ch}},
                                                         ensure_ascii=False), "source": SOURCE_UCD})
    for a, b in [(a, b) for a in range(10, 100, 7) for b in range(3, 100, 11)]:
        out.append({"task": "tool_call", "prompt": user(f"Use a tool to add {a} and {b}.", TOOL_SYSTEM),
                    "tools": TOOLS, "answer": json.dumps({"name": "add", "arguments": {"a": a, "b": b}}),
                    "source": SOURCE_ARITH})
    return out


NUMBER_WORDS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
                "sixteen seventeen eighteen").split()


def _py_repr(obj: dict) -> str:
    """A Python dict literal: the commonest almost-JSON mistake (single quotes)."""
    return repr(obj)


def rejections(row: dict, i: int) -> list[tuple[str, str]]:
    """(kind, rejected answer) for one prompt row: one wrong in form, one wrong in value."""
    answer = row["answer"]
    if row["task"] == "arithmetic":
        n = int(answer)
        wrong = n + 1 if i % 2 or n == 0 else n - 1
        form = f"The answer is {n}." if i % 2 else NUMBER_WORDS[n]
        return [("format", form), ("value", str(wrong))]
    obj = json.loads(answer)
    if row["task"] == "json":
        ch, cp = obj["char"], obj["codepoint"]
        form = f"The character '{ch}' is code point {cp}." if i % 2 else _py_repr(obj)
        return [("format", form), ("value", json.dumps({"char": ch, "codepoint": cp + 1}, ensure_ascii=False))]
    args = obj["arguments"]
    if obj["name"] == "add":
        form = f"{args['a']} + {args['b']} = {args['a'] + args['b']}." if i % 2 else _py_repr(obj)
        value = {"name": "add", "arguments": {"a": str(args["a"]), "b": str(args["b"])}}
    else:
        form = f"The Unicode name of '{args['char']}' is {unicodedata.name(args['char'])}." if i % 2 else _py_repr(obj)
        value = {"name": "unicode_name", "arguments": {"character": args["char"]}}
    return [("format", form), ("value", json.dumps(value, ensure_ascii=False))]


def pairs(prompt_rows: list[dict]) -> list[dict]:
    out = []
    for i, row in enumerate(prompt_rows):
        for kind, bad in rejections(row, i):
            out.append({"task": row["task"], "prompt": row["prompt"],
                        "chosen": [{"role": "assistant", "content": row["answer"]}],
                        "rejected": [{"role": "assistant", "content": bad}], "rejection": kind,
                        "source": row["source"]})
    return out


def held_out(row: dict) -> bool:
    text = row["prompt"][-1]["content"].strip().lower()
    return int(hashlib.sha256(text.encode()).hexdigest(), 16) % 100 < HELD_OUT_PERCENT


def write(path: Path, items: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in items), encoding="utf-8")
    counts = {t: sum(r["task"] == t for r in items) for t in ("arithmetic", "json", "tool_call")}
    print(f"{path.name}: {len(items)} rows {counts}")


def main() -> None:
    all_rows = rows()
    train, held = [r for r in all_rows if not held_out(r)], [r for r in all_rows if held_out(r)]
    write(OUT / "rl_prompts.jsonl", train)
    write(OUT / "rl_prompts_eval.jsonl", held)
    write(OUT / "rl_pairs.jsonl", pairs(train))
    write(OUT / "rl_pairs_eval.jsonl", pairs(held))


if __name__ == "__main__":
    main()
