"""hfpipe reproduce: the recipe read back out of a model card, re-run in a fresh run folder, compared stage by stage.

Fast: the comparison logic, the output digest, and a full reproduce of a one-stage recipe (deploy of the tiny model).
Slow (`-m slow`): the tiny recipe, trimmed by overrides, end to end: every stage identical, weights bit-identical.

Run: .venv/bin/python -m pytest tests/test_reproduce.py -q        (slow one: add -m slow)
"""

import gzip
import json
from pathlib import Path

import pytest

from hfpipe import cli
from hfpipe.card import read_card_block
from hfpipe.reproduce import compare, format_report, output_digest, reproduce

REPO = Path(__file__).resolve().parent.parent
FP = {s: (c * 64) for s, c in (("data", "a"), ("pretrain", "b"), ("deploy", "c"))}
OUT = {"data": "1" * 64, "pretrain": "2" * 64, "deploy": "3" * 64}


def test_compare_identical_and_first_divergence():
    block = {"fingerprints": dict(FP), "outputs": dict(OUT)}
    same = {s: {"fingerprint": FP[s], "outputs": OUT[s]} for s in FP}
    report = compare(block, same)
    assert report["identical"] and report["first_divergence"] is None
    assert [r["fingerprint"] for r in report["stages"]] == ["identical"] * 3
    assert "every stage identical" in format_report(report)

    # weights differ in pretrain only: pretrain is named, later stages with equal digests stay identical
    run = {s: dict(v) for s, v in same.items()}
    run["pretrain"]["outputs"] = "f" * 64
    report = compare(block, run)
    rows = {r["stage"]: r for r in report["stages"]}
    assert not report["identical"] and report["first_divergence"] == "pretrain"
    assert (rows["pretrain"]["fingerprint"], rows["pretrain"]["outputs"]) == ("identical", "different")
    assert rows["data"]["identical"] and rows["deploy"]["identical"]
    assert "first stage that diverges: pretrain" in format_report(report)

    # a changed config changes the fingerprint; a stage the card does not know; one the run lacks
    run = {s: dict(v) for s, v in same.items()}
    run["data"]["fingerprint"] = "e" * 64
    run["eval"] = {"fingerprint": "d" * 64, "outputs": None}
    del run["deploy"]
    rows = {r["stage"]: r for r in compare(block, run)["stages"]}
    assert rows["data"]["fingerprint"] == "different" and compare(block, run)["first_divergence"] == "data"
    assert rows["eval"]["fingerprint"] == "not in card" and rows["deploy"]["fingerprint"] == "missing"

    # a stage with nothing comparable is "not compared", never "identical"; a card without digests: "not recorded"
    block2 = {"fingerprints": {"eval": "d" * 64}, "outputs": {}}
    report = compare(block2, {"eval": {"fingerprint": "d" * 64, "outputs": None}})
    assert report["identical"] and not report["stages"][0]["identical"] and report["not_compared"] == ["eval"]
    assert "not compared (nothing deterministic recorded): eval" in format_report(report)
    assert compare(block2, {"eval": {"fingerprint": "d" * 64, "outputs": "9" * 64}})["stages"][0]["outputs"] == \
        "not recorded"

    # metrics less their timings are compared too: a changed score is named, at an equal fingerprint and digest
    block3 = {"fingerprints": {"eval": "d" * 64}, "outputs": {}, "metrics": {"eval": {"capitals/acc": 0.5}}}
    run = {"eval": {"fingerprint": "d" * 64, "outputs": None, "metrics": {"capitals/acc": 0.625}}}
    report = compare(block3, run)
    assert not report["identical"] and report["first_divergence"] == "eval"
    assert report["stages"][0]["changed_metrics"] == ["capitals/acc"] and "(capitals/acc)" in format_report(report)
    run["eval"]["metrics"]["capitals/acc"] = 0.5
    assert compare(block3, run)["identical"] and compare(block3, run)["stages"][0]["identical"]


def test_output_digest_counts_outputs_not_logs(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for folder, mtime in ((a, 1_000_000), (b, 2_000_000)):
        (folder / "data").mkdir(parents=True)
        (folder / "model").mkdir()
        with open(folder / "data" / "00000.jsonl.gz", "wb") as raw:
            with gzip.GzipFile(fileobj=raw, mode="wb", mtime=mtime) as f:  # same content, different gzip header
                f.write(b'{"text": "hello"}\n')
        (folder / "model" / "model.safetensors").write_bytes(b"w" * 100)
        (folder / "stage.log").write_text(f"started at {mtime}")
        (folder / "manifest.json").write_text(json.dumps({"wall_s": mtime}))
    for stage in ("data", "pretrain"):  # data/*.jsonl.gz and model/* are what these stages declare as outputs
        assert output_digest(a, stage) == output_digest(b, stage) is not None
    (b / "model" / "model.safetensors").write_bytes(b"w" * 99 + b"x")
    assert output_digest(a, "pretrain") != output_digest(b, "pretrain")
    assert output_digest(a, "data") == output_digest(b, "data")
    assert output_digest(tmp_path / "empty", "pretrain") is None


@pytest.fixture
def deployed(tiny_model_dir, tmp_path):
    """A one-stage recipe (deploy of the tiny model) run by the CLI: its card in model_cards/."""
    recipe = tmp_path / "recipes" / "one.yaml"
    recipe.parent.mkdir()
    recipe.write_text(f"name: one\nseed: 3\nbase_model: {tiny_model_dir}\ndeploy: {{check_new_tokens: 2}}\n")
    cards = tmp_path / "model_cards"
    assert cli.main(["--runs-dir", str(tmp_path / "runs"), "--cards-dir", str(cards), "run", str(recipe)]) == 0
    return cards / "one.md"


def test_reproduce_one_stage_recipe(deployed, tmp_path, capsys):
    block = read_card_block(deployed)
    assert set(block["fingerprints"]) == set(block["outputs"]) == {"deploy"}

    report = reproduce(deployed, tmp_path / "again")
    assert report["identical"], format_report(report)
    [row] = report["stages"]
    assert row["run_outputs"] == block["outputs"]["deploy"]  # weights, tokenizer, config: bit-identical
    assert Path(report["runs_dir"]).is_relative_to(tmp_path / "again" / "reproduce")

    # through the CLI, with an override that changes the deploy config: named as the first divergence, exit 1
    code = cli.main(["--runs-dir", str(tmp_path / "third"), "reproduce", str(deployed), "deploy.export_dtype=bfloat16"])
    out = capsys.readouterr().out
    assert code == 1 and "deploy      fingerprint different" in out and "first stage that diverges: deploy" in out


def test_reproduce_detects_changed_weights(deployed, tmp_path):
    """A card whose recorded weights differ from what the recipe now produces is caught, even at equal fingerprints."""
    text = deployed.read_text()
    block = read_card_block(deployed)
    tampered = tmp_path / "model_cards" / "tampered.md"
    tampered.write_text(text.replace(block["outputs"]["deploy"], "0" * 64))
    report = reproduce(tampered, tmp_path / "again")
    [row] = report["stages"]
    assert (row["fingerprint"], row["outputs"], report["first_divergence"]) == ("identical", "different", "deploy")


@pytest.mark.slow
def test_reproduce_tiny_recipe_end_to_end(tmp_path, capsys):
    """recipes/tiny.yaml, trimmed: run, then reproduce its card into a fresh folder; every stage identical."""
    from hfpipe.recipe import load_recipe

    recipe = load_recipe(REPO / "recipes" / "tiny.yaml")
    overrides = [f"{s}.max_steps={n}" for s, n in (("pretrain", 6), ("sft", 2), ("preference", 2), ("rl", 2))
                 if getattr(recipe, s, None) is not None and hasattr(getattr(recipe, s), "max_steps")]
    overrides += ["pretrain.eval_interval=3", "pretrain.warmup_steps=1", "eval.limit=8"] \
        + ["deploy.quantize=[int8]", "deploy.gguf=[f32]", "deploy.parity_task_limit=4", "deploy.parity_max_tokens=256"]
    cards = tmp_path / "model_cards"
    assert cli.main(["--runs-dir", str(tmp_path / "runs"), "--cards-dir", str(cards), "run",
                     str(REPO / "recipes" / "tiny.yaml"), *overrides]) == 0
    card = cards / "tiny.md"
    report = reproduce(card, tmp_path / "runs", recipe_dir=REPO / "recipes")
    assert report["identical"], format_report(report)
    assert {r["stage"] for r in report["stages"]} == set(recipe.stages())
    # every stage compared: weights, data, tokenizer, and eval's scores and serve's command lines less timings
    assert all(r["outputs"] == "identical" and r["metrics"] == "identical" for r in report["stages"])
    assert report["not_compared"] == [] and "every stage identical" in format_report(report)
    ev = next(r for r in report["stages"] if r["stage"] == "eval")
    assert ev["compared"] and ev["identical"]

    # one eval score perturbed in the card: reproduce (reusing the run just made) exits 1 and names eval
    block = read_card_block(card)
    task_metric = next(k for k in block["metrics"]["eval"] if "/" in k)
    value = block["metrics"]["eval"][task_metric]
    text = card.read_text()
    needle = json.dumps(task_metric) + ": " + json.dumps(value)
    assert text.count(needle) == 1, needle
    tampered = cards / "tampered.md"
    tampered.write_text(text.replace(needle, json.dumps(task_metric) + ": " + json.dumps(value + 0.125)))
    capsys.readouterr()
    code = cli.main(["reproduce", str(tampered), "--recipe-dir", str(REPO / "recipes"), "--into", report["runs_dir"]])
    out = capsys.readouterr().out
    assert code == 1 and "first stage that diverges: eval" in out and f"({task_metric})" in out, out
