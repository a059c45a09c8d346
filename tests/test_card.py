"""The model card: built offline from finished stage folders, read back by huggingface_hub and by hfpipe reproduce.

Run: .venv/bin/python -m pytest tests/test_card.py -q
"""

import hashlib
import json
import re
from pathlib import Path

import pytest

from hfpipe.card import METADATA_KEYS, build_card, read_card, write_card
from hfpipe.errors import HfpipeError

RECIPE_YAML = """\
name: tiny
seed: 0
license: apache-2.0
language: en
# an HTML comment closer in the recipe must not break the hidden block: -->
data:
  sources: [{path: "stdlib:json"}]
pretrain:
  max_steps: 20
  lr: 0.003
sft:
  method: sft
eval:
  tasks: [lambada_openai, arc_easy]
"""

EVAL_RESULTS = {
    "results": {
        "arc_easy": {"metrics": {"acc": {"value": 0.2625, "stderr": 0.0312}, "acc_norm": {"value": 0.25, "stderr": 0.0306}},
                     "version": 1.0, "n_shot": 0, "n_samples": {"original": 2376, "effective": 200}},
        "lambada_openai": {"metrics": {"perplexity": {"value": 4321.5, "stderr": 812.0}, "acc": {"value": 0.0, "stderr": "N/A"}},
                           "version": 1.0, "n_shot": 0, "n_samples": 200},
    },
    "harness_version": "0.4.13",
}

VERSIONS = {"python": "3.11.7", "torch": "2.13.0+cpu", "transformers": "5.24.0"}


def fp(stage: str) -> str:
    return hashlib.sha256(f"fingerprint of {stage}".encode()).hexdigest()


def curves_png(path: Path, seed: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = list(range(1, 21))
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.plot(steps, [6.2 - 0.1 * s + 0.01 * ((s * seed) % 7) for s in steps], label="train_loss")
    ax.set_xlabel("step")
    ax.legend()
    fig.savefig(path)
    plt.close(fig)


def finished_stage(root: Path, stage: str, metrics: dict, config: dict | None = None, wall_s: float = 12.5) -> Path:
    folder = root / f"{stage}-{fp(stage)[:12]}"
    folder.mkdir(parents=True)
    manifest = {"stage": stage, "fingerprint": fp(stage), "config": config or {},
                "inputs": {"upstream": {}, "files": {}}, "metrics": metrics, "wall_s": wall_s,
                "versions": VERSIONS, "hfpipe_version": "0.1.0"}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


@pytest.fixture
def stages(tmp_path) -> dict[str, Path]:
    root = tmp_path / "runs"
    data = finished_stage(root, "data", {"docs_in": 120, "docs_out": 97, "bytes_out": 401_233})
    (data / "stats.json").write_text(json.dumps({"docs": 97, "bytes": 401_233, "languages": {"en": 97},
                                                 "by_source": {"stdlib:json": 40, "stdlib:argparse": 57}}))
    tok = finished_stage(root, "tokenizer", {"vocab_size": 512, "bytes_per_token": 3.07})
    pre = finished_stage(root, "pretrain", {"train_loss": 4.8123, "tokens_seen": 40960}, wall_s=190.0)
    curves_png(pre / "curves.png", 1)
    sft = finished_stage(root, "sft", {"train_loss": 3.25}, config={"method": "sft"})
    curves_png(sft / "curves.png", 2)
    ev = finished_stage(root, "eval", {"tasks": 2})
    (ev / "results.json").write_text(json.dumps(EVAL_RESULTS))
    return {"data": data, "tokenizer": tok, "pretrain": pre, "sft": sft, "eval": ev}


def test_full_card_round_trips(stages, tmp_path):
    from huggingface_hub import ModelCard

    card = build_card("tiny", RECIPE_YAML, stages, pending={"deploy": fp("deploy")})
    path = write_card(card, tmp_path / "export" / "README.md")

    loaded = ModelCard.load(path)
    meta = loaded.data.to_dict()
    assert set(meta) <= METADATA_KEYS
    assert meta["license"] == "apache-2.0" and meta["language"] == "en"
    assert meta["pipeline_tag"] == "text-generation" and meta["library_name"] == "transformers"
    assert meta["tags"][0] == "hfpipe" and {"pretrain", "sft"} <= set(meta["tags"])
    assert "base_model" not in meta  # the recipe has none: nothing made up

    # one EvalResult per numeric metric, values as in results.json
    got = {(r.dataset_type, r.metric_type): r.metric_value for r in loaded.data.eval_results}
    assert got == {("arc_easy", "acc"): 0.2625, ("arc_easy", "acc_norm"): 0.25,
                   ("lambada_openai", "perplexity"): 4321.5, ("lambada_openai", "acc"): 0.0}
    # what makes a score comparable travels with it; arc_easy scored 200 of its 2376 items (a limited run)
    arc = {"num_few_shot": 0, "task_version": "1.0", "samples": 200, "total_samples": 2376, "chat_template": "none"}
    assert all(r.dataset_args == (arc if r.dataset_type == "arc_easy" else {**arc, "total_samples": 200})
               for r in loaded.data.eval_results)
    assert loaded.data.model_name == "tiny"

    # the recipe and every full fingerprint come back exactly
    recipe, fps = read_card(path)
    assert recipe == RECIPE_YAML
    assert fps == {s: fp(s) for s in ("data", "tokenizer", "pretrain", "sft", "eval", "deploy")}
    assert read_card(path.parent) == (recipe, fps)

    text = path.read_text()
    # curves copied beside the card and linked relatively
    for stage in ("pretrain", "sft"):
        name = f"tiny_{stage}_curves.png"
        assert (path.parent / name).read_bytes() == (stages[stage] / "curves.png").read_bytes()
        assert f"]({name})" in text
    # tables: per-stage fingerprint prefix and metrics, data statistics, eval stderr, environment
    assert f"`{fp('pretrain')[:12]}`" in text and "| train_loss | 4.8123 |" in text
    assert "| by_source.stdlib:argparse | 57 |" in text
    assert "| arc_easy | acc (0-shot, 200 of 2376 samples) | 0.2625 | 0.0312 | 200 of 2376 | 1.0 |" in text
    assert "| transformers | 5.24.0 |" in text and "3.2 min" in text
    assert "| lambada_openai | perplexity (0-shot) | 4321.5 | 812 | 200 | 1.0 |" in text
    assert "```yaml\n" + RECIPE_YAML in text


def test_empty_card_renders_gaps_as_comments(tmp_path):
    from huggingface_hub import ModelCard

    path = write_card(build_card("nothing", "", {}), tmp_path / "README.md")
    loaded = ModelCard.load(path)
    assert set(loaded.data.to_dict()) == {"tags", "pipeline_tag", "library_name"}
    assert not loaded.data.eval_results
    text = path.read_text()
    for gap in ("<!-- the recipe declares no license", "<!-- the resolved recipe was not available",
                "<!-- no finished stage folders -->", "<!-- this recipe has no eval stage"):
        assert gap in text
    assert read_card(path) == ("", {})


def test_partial_and_broken_folders(stages, tmp_path):
    """A stage folder without manifest, an eval without results.json, a local base_model: gaps, no crash."""
    import shutil

    (stages["sft"] / "manifest.json").unlink()
    (stages["eval"] / "results.json").unlink()
    (tmp_path / "my" / "model").mkdir(parents=True)
    recipe = "name: p\nbase_model: {name_or_path: my/model}\n"
    card = build_card("p", recipe, {k: stages[k] for k in ("sft", "eval")}, recipe_dir=tmp_path)
    assert "base_model" not in card.data.to_dict()  # a local folder, not a Hub id
    text = str(card)
    assert "<!-- sft: manifest.json missing or unreadable -->" in text
    assert "<!-- the eval stage's results.json is missing or has no metrics -->" in text
    assert read_card(write_card(card, tmp_path / "c" / "README.md"))[1] == {"eval": fp("eval")}

    shutil.rmtree(tmp_path / "my")
    hub = build_card("p", "base_model: HuggingFaceTB/SmolLM2-135M\n", {}, recipe_dir=tmp_path)
    assert hub.data.base_model == "HuggingFaceTB/SmolLM2-135M"


def test_read_card_rejects_foreign_card(tmp_path):
    p = tmp_path / "README.md"
    p.write_text("---\nlicense: mit\n---\n# someone else's model\n")
    with pytest.raises(HfpipeError, match="not an hfpipe model card"):
        read_card(p)


def test_eval_results_as_the_eval_stage_writes_them(tmp_path):
    """The eval stage's own layout ("tasks", "harness": {"version"}, "metric:filter" labels) is read as well."""
    ev = finished_stage(tmp_path, "eval", {"gsm8k/exact_match:flexible-extract": 0.05})
    (ev / "results.json").write_text(json.dumps({
        "harness": {"name": "lm-evaluation-harness", "version": "0.4.13"},
        "tasks": {"gsm8k": {"metrics": {"exact_match:flexible-extract": {"value": 0.05, "stderr": 0.0219}},
                            "higher_is_better": {"exact_match:flexible-extract": True},
                            "version": 3.0, "n_shot": 5, "n_samples": {"original": 1319, "effective": 100}}}}))
    card = build_card("g", "", {"eval": ev})
    [r] = card.data.eval_results
    assert (r.dataset_type, r.metric_type, r.metric_value, r.dataset_args) == ("gsm8k", "exact_match", 0.05, {
        "num_few_shot": 5, "task_version": "3.0", "samples": 100, "total_samples": 1319, "chat_template": "none"})
    assert r.metric_args == {"stderr": 0.0219}
    text = str(card)
    assert ("| gsm8k | exact_match (5-shot, 100 of 1319 samples) [flexible-extract] ↑ | 0.05 | 0.0219 | 100 of 1319 "
            "| 3.0 |") in text
    assert "lm-evaluation-harness 0.4.13" in text


def _parity():
    return {"heldout": {"file": "hfpipe/datasets/tokenizer_heldout.jsonl", "language": "en", "docs": 8},
            "task": "hfpipe/tasks/capitals/test.jsonl",
            "quantized": {"int8": {"library": "torchao 0.18.0", "weight_bytes": 1000, "size_ratio": 0.5, "latency_ratio": 1.25,
                                   "perplexity": 101.5, "perplexity_full": 100.0, "perplexity_delta": 1.5,
                                   "argmax_agreement": 0.97, "task_acc": 0.3, "task_acc_full": 0.325,
                                   "task_acc_delta": -0.025, "heldout_tokens": 2048, "task_docs": 40}},
            "gguf": {"q8_0": {"file": "tiny-q8_0.gguf", "writer": "gguf 0.19.0", "bytes": 5000, "max_abs_logit_diff": 0.0123, "logit_rel_rmse": 0.0011, "tolerance": 0.05,
                              "argmax_agreement": 1.0, "token_agreement": 1.0}}}


def test_parity_latency_eval_results_and_environment(stages, tmp_path):
    """Deploy parity (from parity.json), eval latency/cost tables, .eval_results/ for Hub datasets, environment."""
    import yaml
    from huggingface_hub import ModelCard, parse_eval_result_entries

    dep = finished_stage(tmp_path / "runs2", "deploy", {"export_bytes": 1})
    (dep / "parity.json").write_text(json.dumps(_parity()))
    results = json.loads(json.dumps(EVAL_RESULTS))
    results["results"]["arc_easy"]["dataset_path"] = "allenai/ai2_arc"
    results["latency"] = {"device": "cpu", "batch_sizes": {"1": {"decode_tokens_per_s": 250.5, "latency_p50_s": 0.064}},
                          "cost": {"price_per_hour": 0.5, "per_million_output_tokens": 0.554}}
    (stages["eval"] / "results.json").write_text(json.dumps(results))
    card = build_card("tiny", RECIPE_YAML, {**stages, "deploy": dep})
    path = write_card(card, tmp_path / "export" / "README.md")
    text = path.read_text()

    assert "| `quantized/int8` | torchao 0.18.0 | 1000 | 0.5 | 1.25 | 101.5 (100) | 1.5 | 0.97 | 0.3 (0.325) | -0.025 |" in text
    assert "| `gguf/tiny-q8_0.gguf` | q8_0 | gguf 0.19.0 | 5000 | 0.0123 | 0.0011 | 0.05 | 1 | 1 |" in text
    assert 'subfolder="quantized/int8"' in text and 'gguf_file="tiny-q8_0.gguf"' in text
    assert "### Latency" in text and "| 1 | 250.5 | 0.064 |" in text and "| cost.per_million_output_tokens | 0.554 |" in text
    assert re.search(r"lock hash `[0-9a-f]{16}`", text) and "- **Platform:** " in text

    entries = parse_eval_result_entries(yaml.safe_load((path.parent / ".eval_results" / "hfpipe.yaml").read_text()))
    assert {(e.dataset_id, e.task_id, e.value) for e in entries} == {("allenai/ai2_arc", "arc_easy", 0.2625),
                                                                    ("allenai/ai2_arc", "arc_easy", 0.25)}
    ModelCard.load(path)  # still a valid card

    # without parity (no deploy stage, no keys) the section says so instead of inventing numbers
    assert "<!-- no quantized variants or GGUF files" in str(build_card("tiny", RECIPE_YAML, stages))


def test_metadata_validated_by_huggingface_hub(stages, monkeypatch):
    """ModelCard.validate() (the client's call to the Hub's validate-yaml), against the loopback Hub of tests/."""
    import sys

    from huggingface_hub import ModelCard, constants

    sys.path.insert(0, str(Path(__file__).parent))
    from hub_server import HubServer

    card = ModelCard(str(build_card("tiny", RECIPE_YAML, stages, pending={"deploy": fp("deploy")})))
    with HubServer({}) as hub:
        monkeypatch.setattr(constants, "ENDPOINT", hub.url)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        card.validate()  # raises ValueError on metadata errors
        bad = ModelCard(str(card).replace("license: apache-2.0", "license: GPL-3.0-or-later"))
        with pytest.raises(ValueError, match="license"):
            bad.validate()
    assert ("POST", "/api/validate-yaml") in hub.state.requests


REPO = Path(__file__).resolve().parent.parent
COMMITTED = sorted(p for p in (REPO / "model_cards").glob("*.md") if p.name != "README.md")


# Shipped recipes that run on a CPU: each has its card committed (`make cards`). The cluster and GPU recipes need
# their hardware and are checked by --dry-run instead.
CARDED_RECIPES = {"tiny", "smollm2-135m-posttrain"}


def test_every_shipped_cpu_recipe_has_a_committed_card():
    """`make cards` writes them (model_cards/<recipe>.md with its images); the staleness test below runs over them."""
    assert {p.stem for p in COMMITTED} >= CARDED_RECIPES
    for card in COMMITTED:
        for image in re.findall(r"\]\(([^)\s]+\.png)\)", card.read_text()):
            assert (card.parent / image).is_file(), f"{card} links {image}, not committed beside it"


@pytest.mark.parametrize("card", COMMITTED, ids=[p.stem for p in COMMITTED])
def test_committed_cards_are_not_stale(card):
    """A committed card must match what its recipe plans now: the embedded recipe and every stage's config
    fingerprint (`make cards` regenerates it). A card made before a code or library change is only reported."""
    import warnings

    from hfpipe.interop.cards import card_staleness

    recipe = REPO / "recipes" / f"{card.stem}.yaml"
    assert recipe.is_file(), f"{card} has no recipe {recipe}"
    failures, notes = card_staleness(card, recipe)
    assert failures == [], f"{card} is stale (`make cards` regenerates it): {failures}"
    for note in notes:
        warnings.warn(f"{card.name}: {note}")


def _planned_card(recipe_path: Path, tmp_path: Path, **change_key) -> Path:
    """The card the recipe would get now (every stage pending), optionally as if made with another code hash."""
    from hfpipe.interop.cards import config_fingerprints, planned_keys
    from hfpipe.recipe import load_recipe

    recipe = load_recipe(recipe_path)
    keys, full = planned_keys(recipe)
    if change_key:
        full = {s: fp if s not in change_key else hashlib.sha256(change_key[s].encode()).hexdigest()
                for s, fp in full.items()}
    return write_card(build_card(recipe.name, recipe.to_yaml(), {}, pending=full,
                                 planned_config=config_fingerprints(keys)), tmp_path / f"{recipe.name}.md")


def test_staleness_check_fails_on_a_recipe_edit_and_reports_a_code_change(tmp_path):
    from hfpipe.interop.cards import card_staleness

    recipe_path = REPO / "recipes" / "tiny.yaml"
    card = _planned_card(recipe_path, tmp_path)
    assert card_staleness(card, recipe_path) == ([], [])
    # a recipe edit: the embedded recipe and the config fingerprint of the stage (and those after it) differ
    failures, _ = card_staleness(card, recipe_path, ["deploy.export_dtype=bfloat16"])
    assert failures[0].startswith("the recipe embedded in") and any(f.startswith("deploy: card config fingerprint")
                                                                    for f in failures)
    assert not any(f.startswith("pretrain:") for f in failures)  # upstream of the change: still the same
    # the same edit written into a copy of the recipe file: the same failure
    edited = tmp_path / "recipes" / "tiny.yaml"
    edited.parent.mkdir()
    edited.write_text((recipe_path.read_text() + "\n").replace("max_steps: 300", "max_steps: 299"))
    (tmp_path / "data").symlink_to(REPO / "data")
    failures, _ = card_staleness(card, edited)
    assert any(f.startswith("pretrain: card config fingerprint") for f in failures), failures
    # only the code changed (the card's full fingerprint of sft differs, its config fingerprint is the same): reported
    code_only = _planned_card(recipe_path, tmp_path / "other", sft="made by older code")
    failures, notes = card_staleness(code_only, recipe_path)
    assert failures == [] and len(notes) == 1 and notes[0].startswith("sft: only code or library versions changed")
