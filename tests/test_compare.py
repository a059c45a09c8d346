"""Regression against older versions: `hfpipe compare CARD_A CARD_B` prints the cards' scores side by side, and the
eval stage with `baseline:` fails (or warns) when a metric drops more than its threshold, naming metric and values.

The cards are rendered by hfpipe's own card writer from eval stage folders of real runs on the tiny random model;
the "better baseline" is that run's results.json with capitals accuracy raised by 0.5 (a stand-in for an older,
stronger model).

Run: .venv/bin/python -m pytest -q tests/test_compare.py
"""

import json
import shutil

import pytest

from hfpipe import card, cli
from hfpipe.compare import card_metrics
from hfpipe.errors import HfpipeError
from hfpipe.stages import eval as stage


@pytest.fixture(scope="module")
def run_dir(tiny_model_dir, tmp_path_factory):
    """One real eval run (capitals + math, limit 20) of the tiny random model, and its card."""
    from hfpipe.stages import Inputs

    out = tmp_path_factory.mktemp("eval")
    inputs = Inputs(recipe_name="tiny-test", seed=0, recipe_dir=out, upstream={"pretrain": tiny_model_dir.parent},
                    model_stage="pretrain")
    stage.run(stage.Config(tasks=["capitals", "math"], limit=20, latency_batch_sizes=[]), inputs, out)
    return out


def _card(folder, path, bump=0.0):
    if bump:
        results = json.loads((folder / "results.json").read_text())
        results["tasks"]["capitals"]["metrics"]["acc"]["value"] += bump
        folder = path.parent / (path.stem + "_eval")
        folder.mkdir()
        (folder / "results.json").write_text(json.dumps(results))
    return card.write_card(card.build_card(path.stem, "name: x\n", {"eval": folder}), path)


def _run_with_baseline(tiny_model_dir, base_card, out, **kw):
    from hfpipe.stages import Inputs

    inputs = Inputs(recipe_name="t", seed=0, recipe_dir=base_card.parent, upstream={"pretrain": tiny_model_dir.parent},
                    model_stage="pretrain")
    config = stage.Config(tasks=["capitals", "math"], limit=20, latency_batch_sizes=[], baseline=base_card.name, **kw)
    out.mkdir()
    return stage.run(config, inputs, out)


def test_card_metrics_round_trip_through_the_model_index(run_dir, tmp_path):
    path = _card(run_dir, tmp_path / "now.md")
    results = json.loads((run_dir / "results.json").read_text())
    expected = {f"{t}/{m}": v["value"] for t, e in results["tasks"].items() for m, v in e["metrics"].items()}
    assert card_metrics(path) == pytest.approx(expected)


def test_compare_prints_a_side_by_side_table(run_dir, tmp_path, capsys):
    old, new = _card(run_dir, tmp_path / "old.md", bump=0.5), _card(run_dir, tmp_path / "new.md")
    assert cli.main(["compare", str(old), str(new)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert [c.strip() for c in table[0].strip("|").split("|")][:3] == ["metric", "old", "new"]
    row = next(line for line in table if line.startswith("| capitals/acc ↑"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    acc = card_metrics(new)["capitals/acc"]
    assert cells[1] == f"{acc + 0.5:.4f}" and cells[2] == f"{acc:.4f}" and cells[3] == "-0.5000" and cells[4] == "old"
    assert any(line.startswith("| math/exact_match ↑") for line in table)


def test_compare_rejects_a_file_that_is_not_an_hfpipe_card(tmp_path, capsys):
    (tmp_path / "x.md").write_text("# some readme\n")
    assert cli.main(["compare", str(tmp_path / "x.md"), str(tmp_path / "x.md")]) == 2
    assert "not an hfpipe model card" in capsys.readouterr().err


def test_baseline_with_higher_score_beyond_threshold_fails_naming_metric_and_values(run_dir, tiny_model_dir, tmp_path):
    base = _card(run_dir, tmp_path / "baseline.md", bump=0.5)
    before = card_metrics(base)["capitals/acc"]
    with pytest.raises(HfpipeError) as e:
        _run_with_baseline(tiny_model_dir, base, tmp_path / "out")
    now = json.loads((tmp_path / "out" / "results.json").read_text())["tasks"]["capitals"]["metrics"]["acc"]["value"]
    message = str(e.value)
    assert "capitals/acc" in message and f"{before:.4g}" in message and f"{now:.4g}" in message, message
    assert "math/exact_match" not in message  # unchanged metrics are not reported


def test_warn_mode_records_the_diff_and_passes(run_dir, tiny_model_dir, tmp_path, caplog):
    base = _card(run_dir, tmp_path / "baseline.md", bump=0.5)
    metrics = _run_with_baseline(tiny_model_dir, base, tmp_path / "out", on_regression="warn")
    regression = json.loads((tmp_path / "out" / "results.json").read_text())["regression"]
    assert regression["regressed"] == ["capitals/acc"] and metrics["regression/regressed"] == 1
    assert metrics["regression/delta/capitals/acc"] == pytest.approx(-0.5)
    assert "regression against baseline" in caplog.text


def test_same_scores_or_a_generous_threshold_pass(run_dir, tiny_model_dir, tmp_path):
    same = _card(run_dir, tmp_path / "same.md")
    assert _run_with_baseline(tiny_model_dir, same, tmp_path / "a")["regression/regressed"] == 0
    better = _card(run_dir, tmp_path / "better.md", bump=0.5)
    metrics = _run_with_baseline(tiny_model_dir, better, tmp_path / "b", thresholds={"capitals/acc": 0.6})
    assert metrics["regression/regressed"] == 0


def test_missing_baseline_is_a_user_error(tiny_model_dir, tmp_path):
    shutil.rmtree(tmp_path, ignore_errors=True)
    tmp_path.mkdir()
    with pytest.raises(HfpipeError, match=r"eval.baseline: model card 'gone.md' not found") as e:
        _run_with_baseline(tiny_model_dir, tmp_path / "gone.md", tmp_path / "out")
    assert e.value.exit_code == 2


def test_threshold_for_an_unknown_metric_is_a_user_error(run_dir, tiny_model_dir, tmp_path):
    base = _card(run_dir, tmp_path / "baseline.md")
    with pytest.raises(HfpipeError, match=r"eval.thresholds: 'capitals/accc' is not a metric.*capitals/acc") as e:
        _run_with_baseline(tiny_model_dir, base, tmp_path / "out", thresholds={"capitals/accc": 0.1})
    assert e.value.exit_code == 2
