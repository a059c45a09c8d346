"""Cross-check: the eval stage's scores equal those of lm-evaluation-harness's own command line, run directly on the
same model folder with ``--include_path hfpipe/tasks``, to every digit the CLI prints (and to full precision in its
--output_path JSON), for every bundled task.

The stage holds the model in memory (HFLM around a loaded model); the CLI loads the folder itself. Same tasks, limit,
batch size, seeds and generation cap on both sides. A tiny random model and 3 documents per task keep it short; most
of the time is the CLI indexing lm-eval's ~15k registry tasks.

Run: .venv/bin/python -m pytest -q tests/test_eval_lm_eval_cli.py
"""

import json
import os
import subprocess
import sys
from pathlib import Path

from hfpipe.stages import eval as stage

LIMIT, MAX_GEN_TOKS, BATCH = 3, 16, 8


def _cli_table(stdout: str) -> dict[tuple[str, str], tuple[str, str, str, str]]:
    """{(task, "metric,filter"): (version, n-shot, value, stderr)} from the first markdown table lm_eval prints."""
    rows, task, version = {}, None, None
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.replace(" ", "").startswith("|Tasks|Version|"))
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        name, ver, filt, n_shot, metric, _arrow, value, _pm, stderr = cells
        task, version = (name, ver) if name else (task, version)
        rows[(task, f"{metric},{filt}")] = (version, n_shot, value, stderr)
    return rows


def test_stage_scores_equal_the_lm_eval_cli_to_every_printed_digit(tiny_model_dir, make_inputs, tmp_path):
    tasks = sorted(p.stem for p in stage.TASKS_DIR.glob("*.yaml"))
    assert {"capitals", "coding", "humaneval_offline", "heldout_prose", "math"} <= set(tasks)
    inputs = make_inputs(upstream={"pretrain": tiny_model_dir.parent}, model_stage="pretrain")
    config = stage.Config(tasks=tasks, limit=LIMIT, batch_size=BATCH, max_gen_toks=MAX_GEN_TOKS, latency_batch_sizes=[])
    (tmp_path / "stage").mkdir()
    stage.run(config, inputs, tmp_path / "stage")
    ours = json.loads((tmp_path / "stage" / "results.json").read_text())["tasks"]

    seed = str(inputs.seed)
    cmd = [sys.executable, "-m", "lm_eval", "run", "--model", "hf", "--model_args", f"pretrained={tiny_model_dir}",
           "--device", "cpu", "--tasks", *tasks, "--include_path", str(stage.TASKS_DIR), "--limit", str(LIMIT),
           "--batch_size", str(BATCH), "--seed", ",".join([seed] * 4), "--gen_kwargs", f"max_gen_toks={MAX_GEN_TOKS}",
           "--output_path", str(tmp_path / "cli" / "results.json")]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    printed = _cli_table(done.stdout)

    assert {t for t, _ in printed} == set(tasks), done.stdout  # every bundled task, nothing else
    mine = {}
    for task, entry in ours.items():
        for label, m in entry["metrics"].items():
            metric, _, filt = label.partition(":")
            stderr = f"{m['stderr']:.4f}" if m["stderr"] is not None else "N/A"
            mine[(task, f"{metric},{filt or 'none'}")] = (f"{entry['version']:g}", str(entry["n_shot"]),
                                                          f"{m['value']:.4f}", stderr)
    assert set(mine) == set(printed)
    for key, (version, n_shot, value, stderr) in printed.items():
        # the CLI's table writer prints a column of numbers its own way ("0" for 0.0000): same digits, same number
        assert (version, n_shot) == mine[key][:2], key
        for got, want in ((value, mine[key][2]), (stderr, mine[key][3])):
            assert got == want or float(got) == float(want), (key, got, want)

    # and to full precision, in the JSON the CLI writes
    cli_json = json.loads(next(Path(tmp_path / "cli").rglob("results*.json")).read_text())["results"]
    for task, entry in ours.items():
        for label, m in entry["metrics"].items():
            metric, _, filt = label.partition(":")
            assert cli_json[task][f"{metric},{filt or 'none'}"] == m["value"], (task, label)
