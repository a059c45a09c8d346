"""Rebuild the chitchat sets bundled in hfpipe/datasets/ from a pinned PyPI package, deterministically.

Source: PyPI `chitchat-dataset` 0.9.0 (MIT, BYU PCC lab "Chit-Chat Challenge"): 7,168 real human-human chats, each
with the participants' 1-10 ratings (witty, upbeat, interesting) and the opening prompt the pair was given.
Writes (see hfpipe/datasets/README.md for provenance):

- chitchat.jsonl / chitchat_eval.jsonl              {"messages": [...], "source", "rating"}   (TRL conversational)
- chitchat_pairs.jsonl / chitchat_pairs_eval.jsonl  {"prompt", "chosen", "rejected", "source", "ratings"}

The split is by conversation id (sha256): a conversation is in train or eval, never both, and a pair is formed only
from conversations of one side.

Usage:  .venv/bin/python scripts/collect_posttrain_chitchat.py [--out hfpipe/datasets]
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

PACKAGE, VERSION = "chitchat-dataset", "0.9.0"
WHEEL_SHA256 = "7bf89f36645e2d5ec87d53370c8e851b5a688479c7beb7079cb4c87fc5acea3e"
SEED = 1234
EVAL_PERCENT = 15
MIN_TURNS, MAX_TURNS = 4, 6  # turns kept per SFT conversation (a turn = one speaker's consecutive messages)
GOOD, POOR = 24, 14  # summed ratings (3..30): >= GOOD is "rated engaging", <= POOR "rated dull"; 15 = all-5 defaults
N_SFT = 360  # conversations before the split
N_PAIRS = {False: 300, True: 60}  # pairs drawn per side (train, eval)


def fetch_dataset(tmp: Path) -> dict:
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "-q",
                    "-d", str(tmp), f"{PACKAGE}=={VERSION}"], check=True)
    wheel = next(tmp.glob("chitchat_dataset-*.whl"))
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if digest != WHEEL_SHA256:
        sys.exit(f"{wheel.name}: sha256 {digest} != pinned {WHEEL_SHA256}")
    with zipfile.ZipFile(wheel) as zf:
        return json.loads(zf.read("chitchat_dataset/dataset.json"))


def turns(conv: dict) -> list[str]:
    """One string per turn: the speaker's consecutive messages joined by newlines, whitespace trimmed."""
    out = []
    for turn in conv["messages"]:
        text = "\n".join(m["text"].strip() for m in turn if m["text"].strip())
        if text:
            out.append(text)
    return out


def to_messages(ts: list[str]) -> list[dict]:
    return [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(ts)]


def is_eval(conv_id: str) -> bool:
    return int(hashlib.sha256(conv_id.encode()).hexdigest(), 16) % 100 < EVAL_PERCENT


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    print(f"{path}: {len(rows)} rows, {path.stat().st_size / 1024:.0f} KiB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "hfpipe" / "datasets")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = fetch_dataset(Path(tmp))
    rng = random.Random(SEED)
    source = f"{PACKAGE} {VERSION}"

    # ---- SFT: well-rated conversations of >= MIN_TURNS turns; the opener is the user, the other speaker the assistant
    rated = {k: c for k, c in sorted(data.items()) if c.get("ratings") and len(turns(c)) >= MIN_TURNS}
    total = {k: sum(c["ratings"].values()) for k, c in rated.items()}
    good = [k for k in rated if total[k] >= GOOD]
    picked = rng.sample(good, min(N_SFT, len(good)))
    sft = {"train": [], "eval": []}
    for k in sorted(picked):
        ts = turns(rated[k])[:MAX_TURNS]
        ts = ts[: len(ts) // 2 * 2]
        sft["eval" if is_eval(k) else "train"].append(
            {"messages": to_messages(ts), "source": f"{source} {k}", "rating": total[k]})

    # ---- Preference: same opening prompt; chosen = the reply in a conversation rated engaging, rejected = the reply
    #      in one rated dull; the context is the engaging conversation's opening turn ----
    by_prompt: dict[tuple[bool, str], dict[str, list[str]]] = {}
    for k, c in rated.items():
        if c.get("prompt") and (total[k] >= GOOD or total[k] <= POOR):
            side = by_prompt.setdefault((is_eval(k), c["prompt"]), {"good": [], "poor": []})
            side["good" if total[k] >= GOOD else "poor"].append(k)
    chosen_pairs = []
    for side in (False, True):
        candidates = [(h, p, held) for (held, _), s in sorted(by_prompt.items()) if held == side
                      for p in s["poor"] for h in s["good"]]
        chosen_pairs += rng.sample(candidates, min(N_PAIRS[side], len(candidates)))
    pairs = {"train": [], "eval": []}
    for h, p, held in sorted(chosen_pairs):
        th, tp = turns(rated[h]), turns(rated[p])
        pairs["eval" if held else "train"].append({
            "prompt": [{"role": "user", "content": th[0]}],
            "chosen": [{"role": "assistant", "content": th[1]}],
            "rejected": [{"role": "assistant", "content": tp[1]}],
            "source": f"{source} {h} vs {p}", "ratings": [total[h], total[p]]})

    args.out.mkdir(parents=True, exist_ok=True)
    write_jsonl(args.out / "chitchat.jsonl", sft["train"])
    write_jsonl(args.out / "chitchat_eval.jsonl", sft["eval"])
    write_jsonl(args.out / "chitchat_pairs.jsonl", pairs["train"])
    write_jsonl(args.out / "chitchat_pairs_eval.jsonl", pairs["eval"])


if __name__ == "__main__":
    main()
