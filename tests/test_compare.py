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


# ------------------------------------------------------------------------------------------------ like for like
def _baseline_from(tiny_model_dir, tmp_path, name, **kw):
    """A card from a real run of the tiny model with this config (capitals + math)."""
    from hfpipe.stages import Inputs

    folder = tmp_path / f"{name}_eval"
    folder.mkdir()
    inputs = Inputs(recipe_name=name, seed=0, recipe_dir=tmp_path, upstream={"pretrain": tiny_model_dir.parent},
                    model_stage="pretrain")
    stage.run(stage.Config(**{"tasks": ["capitals", "math"], "limit": 20, "latency_batch_sizes": [], **kw}),
              inputs, folder)
    return _card(folder, tmp_path / f"{name}.md")


def test_limited_runs_are_marked_in_the_model_index_and_the_table(run_dir, tmp_path):
    from huggingface_hub import metadata_load

    path = _card(run_dir, tmp_path / "now.md")
    entries = {r["dataset"]["type"]: r for r in metadata_load(path)["model-index"][0]["results"]}
    assert entries["capitals"]["dataset"]["args"] == {"num_few_shot": 0, "task_version": "1.0", "samples": 20,
                                                      "total_samples": 215, "chat_template": "none"}
    names = [m["name"] for m in entries["capitals"]["metrics"]]
    assert names == ["acc (0-shot, 20 of 215 samples)", "acc_norm (0-shot, 20 of 215 samples)"], names
    stderr = json.loads((run_dir / "results.json").read_text())["tasks"]["capitals"]["metrics"]["acc"]["stderr"]
    assert entries["capitals"]["metrics"][0]["args"] == {"stderr": stderr}
    row = next(line for line in path.read_text().splitlines() if line.startswith("| knowledge | capitals | acc "))
    assert "| 20 of 215 |" in row, row


def test_a_baseline_from_a_different_limit_nshot_template_or_version_is_refused(run_dir, tiny_model_dir, tmp_path):
    """Refused before scoring (no results.json), exit 2, one line naming what differs."""
    other_limit = _baseline_from(tiny_model_dir, tmp_path, "limit10", limit=10)
    with pytest.raises(HfpipeError) as e:
        _run_with_baseline(tiny_model_dir, other_limit, tmp_path / "a")
    assert e.value.exit_code == 2 and "\n" not in str(e.value)
    assert str(e.value).startswith("eval.baseline: refusing to compare with limit10.md (before scoring): not like "
                                   "for like: capitals: samples (limit) 10 of 215 there, 20 of 215 here; math: "
                                   "samples (limit) 10 of 40 there, 20 of 40 here"), str(e.value)
    assert not (tmp_path / "a" / "results.json").exists()

    same = _card(run_dir, tmp_path / "same.md")
    with pytest.raises(HfpipeError, match=r"capitals: n-shot 0 there, 2 here; math: n-shot 0 there, 2 here"):
        _run_with_baseline(tiny_model_dir, same, tmp_path / "b", num_fewshot=2)
    with pytest.raises(HfpipeError, match=r"capitals: chat template none there, sha256:[0-9a-f]{64} here"):
        _run_with_baseline(tiny_model_dir, same, tmp_path / "c", apply_chat_template=True)

    results = json.loads((run_dir / "results.json").read_text())
    results["tasks"]["math"]["version"] = 0.9  # an older version of the task
    (tmp_path / "old_eval").mkdir()
    (tmp_path / "old_eval" / "results.json").write_text(json.dumps(results))
    old = card.write_card(card.build_card("old", "name: x\n", {"eval": tmp_path / "old_eval"}), tmp_path / "old.md")
    with pytest.raises(HfpipeError, match=r"not like for like: math: task version 0.9 there, 1.0 here$"):
        _run_with_baseline(tiny_model_dir, old, tmp_path / "d")


def test_a_drop_inside_k_stderr_passes_and_one_outside_fails(run_dir, tiny_model_dir, tmp_path):
    """Same model, same items: the baseline's capitals accuracy raised by 0.5 and by 1.5 x (k x stderr of the
    difference), with max_drop 0 so that only the stderr rule decides."""
    import math

    acc = json.loads((run_dir / "results.json").read_text())["tasks"]["capitals"]["metrics"]["acc"]
    k = 2.0
    se = math.sqrt(2) * acc["stderr"]  # both runs have the same stderr: the baseline card carries this run's
    assert 0.05 < se < 0.2, acc
    inside = _card(run_dir, tmp_path / "inside.md", bump=0.5 * k * se)
    metrics = _run_with_baseline(tiny_model_dir, inside, tmp_path / "a", max_drop=0.0, max_drop_stderrs=k)
    assert metrics["regression/regressed"] == 0 and metrics["regression/delta/capitals/acc"] == pytest.approx(
        -0.5 * k * se)
    row = next(r for r in json.loads((tmp_path / "a" / "results.json").read_text())["regression"]["rows"]
               if r["metric"] == "capitals/acc")
    assert row["stderr"] == pytest.approx(se) and row["tolerance"] == pytest.approx(k * se) and not row["regressed"]

    outside = _card(run_dir, tmp_path / "outside.md", bump=1.5 * k * se)
    with pytest.raises(HfpipeError, match=r"capitals/acc fell from .* > threshold 0 and 2 x stderr") as e:
        _run_with_baseline(tiny_model_dir, outside, tmp_path / "b", max_drop=0.0, max_drop_stderrs=k)
    assert e.value.exit_code == 1 and "math/exact_match" not in str(e.value)
    # k = 0: the threshold alone decides, so the small drop fails too
    with pytest.raises(HfpipeError, match=r"capitals/acc fell from"):
        _run_with_baseline(tiny_model_dir, inside, tmp_path / "c", max_drop=0.0, max_drop_stderrs=0.0)


# ------------------------------------------------------------------------------------------------ changed items
def test_compare_of_two_eval_runs_lists_the_items_whose_answers_changed(run_dir, tiny_model_dir, tmp_path, capsys):
    """A second model (the tiny one with noise added to every weight) on the same items: compare the two eval
    folders."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hfpipe.models import save_model
    from hfpipe.stages import Inputs

    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * p.std().clamp(min=0.02))
    other = save_model(model, AutoTokenizer.from_pretrained(tiny_model_dir), tmp_path / "other" / "model")
    out = tmp_path / "other_eval"
    out.mkdir()
    stage.run(stage.Config(tasks=["capitals", "math"], limit=20, latency_batch_sizes=[]),
              Inputs(recipe_name="o", seed=0, recipe_dir=tmp_path, upstream={"pretrain": other.parent},
                     model_stage="pretrain"), out)

    def picks(folder):  # the chosen choice per capitals item, straight from lm-eval's per-sample log
        rows = [json.loads(line) for line in (folder / "samples_capitals.jsonl").read_text().splitlines()]
        assert len(rows) == 20 and all("acc" in r and r["doc"]["country"] for r in rows)
        return {r["doc_id"]: max(range(4), key=lambda i: float(r["filtered_resps"][i][0])) for r in rows}

    a, b = picks(run_dir), picks(out)
    changed = sorted(d for d in a if a[d] != b[d])
    assert changed, "the perturbed model should answer some capitals items differently"
    assert cli.main(["compare", str(run_dir), str(out), "--max-items", "100"]) == 0
    text = capsys.readouterr().out
    assert "| capitals/acc ↑" in text and "Not like for like" not in text
    rows = [line for line in text.splitlines() if line.startswith("| capitals | ")]
    assert [int(r.split("|")[2]) for r in rows] == changed, text
    doc = json.loads((run_dir / "samples_capitals.jsonl").read_text().splitlines()[changed[0]])
    assert f'"{a[changed[0]]}: {doc["doc"]["choices"][a[changed[0]]]}"' in rows[0], rows[0]
    assert f"Items whose answers changed: {len(text.split('| capitals | ')) - 1 + text.count('| math | ')}" in text
    # a card and a folder of different limits: compared, flagged as not like for like
    assert cli.main(["compare", str(_card(run_dir, tmp_path / "c20.md")),
                     str(_baseline_from(tiny_model_dir, tmp_path, "l5", limit=5))]) == 0
    assert ("Not like for like (these scores are not comparable): capitals: samples (limit) 20 of 215 there, 5 of "
            "215 here") in capsys.readouterr().out
