"""Helpers of the reliability suite (imported by its conftest and test files)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
DATASETS = REPO / "hfpipe" / "datasets"
ERROR_PREFIX = "hfpipe: error: "

# The smallest recipe that still runs every kind of stage on real repo text (a few seconds a stage on one core).
BASE_RECIPE = {
    "name": "rel",
    "seed": 7,
    "data": {
        "sources": [
            {"name": "prose", "path": "prose.jsonl", "format": "jsonl", "domain": "prose", "language": "en",
             "license": "PDDL-1.0"},
            {"name": "code", "path": "code.jsonl", "format": "jsonl", "domain": "code", "language": "python",
             "license": "PSF-2.0"},
        ],
        "chains": {"prose": [], "code": []},
    },
    "tokenizer": {"vocab_size": 400, "reference": None, "bundled_heldout": False, "heldout_fraction": 0.2},
    "pretrain": {
        "model": {"model_type": "llama", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                  "num_key_value_heads": 1, "intermediate_size": 64, "tie_word_embeddings": True},
        "seq_len": 32, "batch_size": 4, "max_steps": 6, "warmup_steps": 1, "eval_interval": 3, "eval_blocks": 4,
        "log_interval": 1, "checkpoint_interval": 2,
    },
    "deploy": {"check_new_tokens": 2, "parity_max_docs": 1, "parity_max_tokens": 64, "parity_seq_len": 32,
               "latency_repeats": 1},
}
SFT = {"dataset": "sft.jsonl", "eval_dataset": "sft_eval.jsonl", "max_steps": 3, "per_device_batch_size": 2,
       "max_length": 64}
PREFERENCE = {"dataset": "pref.jsonl", "eval_dataset": "pref_eval.jsonl", "max_steps": 2, "per_device_batch_size": 2,
              "max_length": 64}


def _head(src: Path, dst: Path, n: int) -> None:
    with open(src, encoding="utf-8") as f:
        dst.write_text("".join(line for _, line in zip(range(n), f)), encoding="utf-8")


def make_workspace(root: Path) -> Path:
    """Copies of the first lines of repo data (the tiny corpus and the bundled chat sets) next to the recipes."""
    root.mkdir(parents=True, exist_ok=True)
    _head(REPO / "data" / "tiny" / "sotu.jsonl", root / "prose.jsonl", 6)
    _head(REPO / "data" / "tiny" / "python-stdlib.jsonl", root / "code.jsonl", 8)
    _head(DATASETS / "sft_chat.jsonl", root / "sft.jsonl", 40)
    _head(DATASETS / "sft_chat_eval.jsonl", root / "sft_eval.jsonl", 8)
    _head(DATASETS / "preference_pairs.jsonl", root / "pref.jsonl", 24)
    _head(DATASETS / "preference_pairs_eval.jsonl", root / "pref_eval.jsonl", 6)
    return root


def write_recipe(root: Path, recipe: dict, filename: str = "recipe.yaml") -> Path:
    path = root / filename
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def cli_env(**extra) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               HF_HUB_DISABLE_TELEMETRY="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1",
               PYTHONPATH=str(REPO))
    env.update(extra)
    return env


def hfpipe(args, work: Path, *, debug=False, env=None, python_prelude: str | None = None, timeout=600):
    """`python -m hfpipe.cli` in a subprocess (optionally after a few lines of Python that set up a fault)."""
    globals_ = ["--runs-dir", str(work / "runs"), "--cards-dir", str(work / "cards")] + (["--debug"] if debug else [])
    if python_prelude is None:
        cmd = [sys.executable, "-m", "hfpipe.cli", *globals_, *map(str, args)]
    else:
        code = python_prelude + "\nimport sys\nfrom hfpipe.cli import main\nsys.exit(main(sys.argv[1:]))\n"
        cmd = [sys.executable, "-c", code, *globals_, *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=work, env=env or cli_env(), timeout=timeout)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith(ERROR_PREFIX)]


def snapshot(run_dir: Path) -> dict[str, str]:
    """sha256 of every file of every finished stage folder of a run (hidden .partial/.lock entries excluded)."""
    out = {}
    for folder in sorted(run_dir.iterdir()) if run_dir.is_dir() else []:
        if folder.name.startswith(".") or not folder.is_dir():
            continue
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                out[str(f.relative_to(run_dir))] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def finished_folders(run_dir: Path) -> set[str]:
    return {f.name for f in run_dir.iterdir() if f.is_dir() and not f.name.startswith(".")} if run_dir.is_dir() else set()
