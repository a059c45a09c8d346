"""Rebuild the post-training datasets bundled in hfpipe/datasets/ from a pinned PyPI package, deterministically.

Source: PyPI `chatterbot-corpus` 1.3.3 (BSD-3-Clause), English topic files: short, real, human-written Q->A exchanges.
Writes (see hfpipe/datasets/README.md for provenance):

- sft_chat.jsonl / sft_chat_eval.jsonl                 {"messages": [...], "source": ...}   (TRL conversational)
- preference_pairs.jsonl / preference_pairs_eval.jsonl
      {"prompt": [...], "chosen": [...], "rejected": [...], "source": ...}

The held-out split is by question: a question (and every answer to it) is either in train or in eval, never both; for
preference pairs, no answer text of an eval pair appears anywhere in the train pairs either.

Usage:  .venv/bin/python scripts/collect_posttrain_data.py [--out hfpipe/datasets]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import yaml

PACKAGE, VERSION = "chatterbot-corpus", "1.3.3"
WHEEL_SHA256 = "86de5300afb9a80826386339d3bec79c0a72eb0358abb8327e2ecef5ae0ce154"
DATA_DIR = "chatterbot_corpus/data/english/"
# trivia.yml is kept out: it is the natural source of a QA eval task, so training on it would contaminate that eval.
EXCLUDED_FILES = {"trivia.yml"}
# In these files a list is one question followed by *alternative* answers, not a dialogue.
ALTERNATIVE_ANSWER_FILES = {"computers.yml", "emotion.yml"}
EVAL_PERCENT = 15  # share of questions held out
PAIRING_SEED = 1234


def fetch_wheel(tmp: Path) -> Path:
    """pip download the pinned wheel (no dependencies, nothing installed) and check its hash."""
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "-q",
                    "-d", str(tmp), f"{PACKAGE}=={VERSION}"], check=True)
    wheel = next(tmp.glob("chatterbot_corpus-*.whl"))
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if digest != WHEEL_SHA256:
        sys.exit(f"{wheel.name}: sha256 {digest} != pinned {WHEEL_SHA256}")
    return wheel


def dialogues(wheel: Path) -> list[tuple[str, list[str]]]:
    """(topic file, turns) for every English conversation, alternatives expanded, exact duplicates dropped."""
    out, seen = [], set()
    with zipfile.ZipFile(wheel) as zf:
        names = sorted(n for n in zf.namelist() if n.startswith(DATA_DIR) and n.endswith(".yml"))
        for name in names:
            topic = name.removeprefix(DATA_DIR)
            if topic in EXCLUDED_FILES:
                continue
            for conv in yaml.safe_load(zf.read(name))["conversations"]:
                turns = [str(t).strip() for t in conv]
                if topic in ALTERNATIVE_ANSWER_FILES and len(turns) > 2:
                    convs = [[turns[0], answer] for answer in turns[1:]]
                else:
                    convs = [turns[: len(turns) // 2 * 2]]  # a dialogue ends on the assistant's turn
                for c in convs:
                    if len(c) >= 2 and all(c) and tuple(c) not in seen:
                        seen.add(tuple(c))
                        out.append((topic, c))
    return out


def is_eval(question: str) -> bool:
    return int(hashlib.sha256(question.strip().lower().encode()).hexdigest(), 16) % 100 < EVAL_PERCENT


def to_messages(turns: list[str]) -> list[dict]:
    return [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)]


def preference_pairs(items: list[tuple[str, list[str]]], rng: random.Random) -> list[dict]:
    """chosen = the real answer; rejected = a real answer to a question from a *different* topic file."""
    pairs = []
    for topic, (question, answer) in items:
        candidates = [a for t, (_, a) in items if t != topic and a != answer]
        rejected = rng.choice(candidates)
        pairs.append({"prompt": [{"role": "user", "content": question}],
                      "chosen": [{"role": "assistant", "content": answer}],
                      "rejected": [{"role": "assistant", "content": rejected}],
                      "source": f"{PACKAGE} {VERSION} english/{topic}"})
    return pairs


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    print(f"{path}: {len(rows)} rows, {path.stat().st_size / 1024:.0f} KiB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "hfpipe" / "datasets")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        convs = dialogues(fetch_wheel(Path(tmp)))

    # ---- SFT: every conversation, split by its first question ----
    sft = {"train": [], "eval": []}
    for topic, turns in convs:
        row = {"messages": to_messages(turns), "source": f"{PACKAGE} {VERSION} english/{topic}"}
        sft["eval" if is_eval(turns[0]) else "train"].append(row)
    write_jsonl(args.out / "sft_chat.jsonl", sft["train"])
    write_jsonl(args.out / "sft_chat_eval.jsonl", sft["eval"])

    # ---- Preference: single-turn Q->A only; pairs are formed inside each split so no text crosses it ----
    qa = [(topic, turns) for topic, turns in convs if len(turns) == 2]
    train_qa = [x for x in qa if not is_eval(x[1][0])]
    train_answers = {a for _, (_, a) in train_qa}
    eval_qa = [x for x in qa if is_eval(x[1][0]) and x[1][1] not in train_answers]
    rng = random.Random(PAIRING_SEED)
    write_jsonl(args.out / "preference_pairs.jsonl", preference_pairs(train_qa, rng))
    write_jsonl(args.out / "preference_pairs_eval.jsonl", preference_pairs(eval_qa, rng))


if __name__ == "__main__":
    main()
