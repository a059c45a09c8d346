"""The tiny recipe end to end through the CLI: raw text -> model card, then the cached re-run and selective re-runs.

    python -m pytest tests/test_end_to_end.py -v
"""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "recipes" / "tiny.yaml"


def hfpipe(*args, work: Path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    cmd = [sys.executable, "-m", "hfpipe.cli", "--runs-dir", str(work / "runs"), "--cards-dir", str(work / "cards"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=work, env=env)


def ran(result) -> list[str]:
    return re.findall(r"\] (\w+): running", result.stderr)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("e2e")
    t0 = time.time()
    res = hfpipe("run", str(TINY), work=work)
    assert res.returncode == 0, res.stderr[-3000:]
    return work, res, time.time() - t0


def test_tiny_recipe_runs_every_stage_and_writes_a_card(tiny_run):
    from huggingface_hub import ModelCard

    work, res, wall = tiny_run
    assert ran(res) == ["data", "tokenizer", "pretrain", "sft", "preference", "eval", "deploy"]
    card_path = work / "cards" / "tiny.md"
    card = ModelCard.load(card_path)
    assert card.data.eval_results, "eval results missing from the card metadata"
    text = card_path.read_text()
    for stage in ("data", "tokenizer", "pretrain", "sft", "preference", "eval", "deploy"):
        fp = next((work / "runs" / "tiny").glob(f"{stage}-*")).name.split("-")[1]
        assert fp in text, f"{stage} fingerprint not in the card"
    assert "name: tiny" in text  # the resolved recipe is embedded
    print(f"tiny recipe end to end: {wall:.0f}s")


def test_rerun_skips_everything_and_status_is_done(tiny_run):
    work, _, _ = tiny_run
    t0 = time.time()
    res = hfpipe("run", str(TINY), work=work)
    wall = time.time() - t0
    assert res.returncode == 0, res.stderr[-2000:]
    assert ran(res) == [] and res.stderr.count("skipped") == 7
    status = json.loads(hfpipe("status", str(TINY), "--json", work=work).stdout)
    assert [s["status"] for s in status] == ["done"] * 7
    print(f"cached re-run: {wall:.1f}s")


def test_eval_override_reruns_only_eval_and_deploy(tiny_run):
    work, _, _ = tiny_run
    res = hfpipe("run", str(TINY), "eval.limit=20", work=work)
    assert res.returncode == 0, res.stderr[-2000:]
    assert ran(res) == ["eval", "deploy"]


def test_tokenizer_override_invalidates_tokenizer_and_downstream_not_data(tiny_run):
    work, _, _ = tiny_run
    res = hfpipe("status", str(TINY), "tokenizer.vocab_size=1000", "--json", work=work)
    status = {s["stage"]: s["status"] for s in json.loads(res.stdout)}
    assert status["data"] == "done"
    assert all(status[s] != "done" for s in ("tokenizer", "pretrain", "sft", "preference", "eval", "deploy"))


def test_card_command_rerenders(tiny_run):
    work, _, _ = tiny_run
    (work / "cards" / "tiny.md").unlink()
    res = hfpipe("card", str(TINY), work=work)
    assert res.returncode == 0 and (work / "cards" / "tiny.md").is_file()
