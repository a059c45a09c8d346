"""Held out means held out: the eval plan's n-gram index, applied to the data stage (every domain, code included) and
to every post-training set; the shipped held-out and eval sets share no 13-gram with any shipped training source;
PII is redacted in every domain, code included.

    .venv/bin/python -m pytest tests/test_decontamination.py -q
"""

import gzip
import json
import sysconfig
from pathlib import Path

import pytest

from hfpipe.posttrain.data import BUNDLED_DIR
from hfpipe.resources import TASKS, package_file

REPO = Path(__file__).resolve().parent.parent
HELDOUT = package_file(TASKS, "heldout")


def _training_texts():
    """(where, text) of every shipped training source: the data stage's inputs (data/tiny, data/starter, raw bytes of
    every file, gzip opened; jsonl one row at a time), the modules the `python-stdlib` reader reads (the running
    interpreter's top-level stdlib, its default glob), and the post-training and quality-classifier sets in
    hfpipe/datasets (their held-out `_eval` files and the tokenizer's held-out text are held-out sets, not sources)."""
    files = [f for root in (REPO / "data" / "tiny", REPO / "data" / "starter") for f in sorted(root.rglob("*"))
             if f.is_file() and f.suffix not in (".md",) and "LICENSE" not in f.name]
    files += [f for f in sorted(BUNDLED_DIR.glob("*.jsonl"))
              if not f.stem.endswith("_eval") and f.name != "tokenizer_heldout.jsonl"]
    for f in files:
        raw = f.read_bytes()
        raw = gzip.decompress(raw) if f.suffix == ".gz" else raw
        text = raw.decode("utf-8", errors="replace")
        if f.name.endswith((".jsonl", ".jsonl.gz")):
            for n, line in enumerate(text.splitlines(), 1):
                if line.strip():
                    yield f"{f.relative_to(REPO)}:{n}", line
        else:
            yield str(f.relative_to(REPO)), text
    starter = REPO / "data" / "starter" / "code" / "python-stdlib"
    for f in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        text = f.read_text(encoding="utf-8", errors="replace")
        if not ((starter / f.name).is_file() and (starter / f.name).read_text(errors="replace") == text):
            yield f"stdlib:{f.name}", text  # (the starter corpus's copies were read above)


def _overlaps(index, texts) -> list[tuple[str, str, str]]:
    from hfpipe.stages.data.steps.decontamination import find_overlap

    return [(where, *found) for where, text in texts if (found := find_overlap(index, text)) is not None]


def test_no_shipped_heldout_or_eval_item_shares_a_13gram_with_a_shipped_training_source():
    """Every item of every bundled task (the held-out prose/code/UDHR documents, capitals, coding, math, ...; items
    under 13 words matched whole) against every shipped training source: no overlap at all."""
    from hfpipe.stages.data.steps.decontamination import eval_index

    index, info = eval_index(n=13)
    assert {"heldout_code", "heldout_prose", "heldout_udhr", "capitals", "coding"} <= set(info["tasks"])
    texts = list(_training_texts())
    assert len(texts) > 5000  # the starter corpus, tiny corpus, stdlib and post-training rows were all read
    assert _overlaps(index, texts) == []


def test_the_overlap_check_finds_what_it_is_for(tmp_path):
    """The check above can fail: the CPython modules that were the held-out code before (colorsys, fnmatch, ...) are
    found in the starter corpus and the python-stdlib reader's files, and a 13-word span of today's held-out code
    planted in unrelated prose is found."""
    from hfpipe.stages.data.steps.decontamination import eval_index, find_overlap

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "code.jsonl").write_text("".join(
        json.dumps({"text": (stdlib / m).read_text()}) + "\n" for m in ("colorsys.py", "fnmatch.py")))
    (tmp_path / "old_heldout.yaml").write_text(
        "task: old_heldout_code\ndataset_kwargs:\n  data_files:\n    test: old/code.jsonl\n"
        "output_type: loglikelihood_rolling\ndoc_to_text: \"\"\ndoc_to_target: \"{{text}}\"\n")
    old, _ = eval_index(tmp_path, n=13)
    hits = _overlaps(old, [(p.name, p.read_text()) for p in (REPO / "data/starter/code/python-stdlib").glob("*.py")])
    assert {h[0] for h in hits} == {"colorsys.py", "fnmatch.py"}

    index, _ = eval_index(n=13)
    words = json.loads((HELDOUT / "code.jsonl").read_text().splitlines()[2])["text"].split()[40:53]
    assert find_overlap(index, "The whale rose. " + " ".join(words) + " And sank again.")[0] == "heldout_code"
    assert find_overlap(index, "The whale rose. " + " ".join(words[:8]) + " And sank again.") is None


def test_recipe_fills_the_eval_plans_registry_tasks_into_every_decontaminating_stage(tmp_path):
    from hfpipe.recipe import load_recipe

    tiny = load_recipe(REPO / "recipes" / "tiny.yaml")
    assert tiny.data.decontamination_tasks == () and tiny.rl.decontamination_tasks == ()  # all bundled: always indexed
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: r\ndata: {sources: [{name: s, path: x.jsonl, format: jsonl, domain: prose, language: en, "
                      "license: CC0-1.0}]}\nsft: {}\npreference: {decontamination_tasks: [piqa]}\n"
                      "eval: {tasks: [capitals, hellaswag, arc_easy]}\n")
    r = load_recipe(recipe)
    assert r.data.decontamination_tasks == ("hellaswag", "arc_easy") == r.sft.decontamination_tasks
    assert r.preference.decontamination_tasks == ("piqa",)  # the recipe's own value wins
    assert load_recipe(recipe, ["eval.tasks=[capitals]"]).sft.decontamination_tasks == ()


# ----------------------------------------------------------------------------------------------------------------
# the data stage: decontamination and PII in every domain, code included (the default chains)


def _data_run(tmp_path, make_inputs, docs_by_domain: dict[str, list[str]]):
    from hfpipe.stages import data

    sources = []
    for domain, docs in docs_by_domain.items():
        path = tmp_path / f"{domain}.jsonl"
        path.write_text("".join(json.dumps({"text": t}) + "\n" for t in docs))
        sources.append({"name": f"{domain}-src", "path": str(path), "format": "jsonl", "domain": domain,
                        "language": "python" if domain == "code" else "en", "license": "CC0-1.0"})
    config = data.Config(sources=sources, dedup=False, quality={"min_doc_words": 5})
    out = tmp_path / "out"
    out.mkdir()
    metrics = data.run(config, make_inputs(recipe_dir=tmp_path), out)
    rows = [json.loads(line) for f in sorted((out / "data").glob("*.jsonl.gz"))
            for line in gzip.decompress(f.read_bytes()).decode().splitlines()]
    return metrics, rows, json.loads((out / "contamination.json").read_text())


CODE = '''def area(width, height):
    """Return the area of a rectangle of the given width and height, both in metres, as a float."""
    # maintainer: Jane Roe <jane.roe@example.org>, build host 93.184.216.34
    return float(width) * float(height)
'''
PROSE = ("The harbour was quiet that morning and the boats rocked gently at their moorings while the gulls "
         "circled overhead. Write to the harbour master at harbour.master@example.com for the tide tables.")


def test_default_chains_decontaminate_and_redact_pii_in_code_too(tmp_path, make_inputs):
    words = json.loads((HELDOUT / "code.jsonl").read_text().splitlines()[2])["text"]
    leaked = "def parse(text):\n    '''" + " ".join(words.split()[40:60]) + "'''\n    return text.strip().split()\n"
    metrics, rows, report = _data_run(tmp_path, make_inputs, {"code": [CODE, leaked], "prose": [PROSE]})
    texts = "\n".join(r["text"] for r in rows)
    assert "@example" not in texts and "93.184.216.34" not in texts
    assert "<EMAIL>" in texts and "<IP>" in texts
    code = next(r for r in rows if r["metadata"]["domain"] == "code")
    assert code["metadata"]["pii_redacted"] == {"email": 1, "ip": 1}  # (keys: the secrets step drops the file)
    assert metrics["pii_redacted_email"] == 2 and metrics["pii_redacted_ip"] == 1  # counted per kind, all domains
    assert len(rows) == 2 and "def parse" not in texts  # the leaked held-out code was dropped
    by_source = {(r["source"], r["task"]): r for r in report["rows"]}
    assert by_source[("code-src", "heldout_code")]["dropped"] == 1
    assert by_source[("code-src", "heldout_code")]["checked"] == 2
    assert len(by_source[("code-src", "heldout_code")]["overlap"].split()) == 13
    assert by_source[("prose-src", "-")] == {"source": "prose-src", "task": "-", "checked": 1, "dropped": 0,
                                             "distinct_ngrams": 0, "overlap": ""}
    assert report["n_grams"] == 13 and "heldout_code" in report["tasks"]


# ----------------------------------------------------------------------------------------------------------------
# the post-training sets


def test_post_training_rows_that_hold_an_eval_item_are_dropped_and_reported(tmp_path):
    from hfpipe.posttrain.data import DatasetSpec, load_mixture
    from hfpipe.posttrain.decontamination import Decontaminator

    item = json.loads((package_file(TASKS, "capitals", "test.jsonl")).read_text().splitlines()[0])
    capital = {"country": item["country"], "capital": item["choices"][item["answer"]]}  # Afghanistan, Kabul
    clean = {"prompt": [{"role": "user", "content": "Name a colour."}],
             "chosen": [{"role": "assistant", "content": "Blue."}],
             "rejected": [{"role": "assistant", "content": "I like trains."}]}
    leaked = {"prompt": [{"role": "user", "content": f"Question: What is the capital of {capital['country']}?"}],
              "chosen": [{"role": "assistant", "content": f"Answer: {capital['capital']}"}],
              "rejected": [{"role": "assistant", "content": "No idea."}]}
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [clean, leaked, clean]))
    spec = DatasetSpec(path=str(path), eval=f"{path}")
    mixture = load_mixture([spec], "preference", tmp_path, "preference.datasets", 0, 0.1,
                           decontaminator=Decontaminator())
    assert len(mixture.train) == 2 and leaked not in mixture.train
    assert len(mixture.eval["pairs"]) == 3  # held-out rows are never trained on: left as they are
    mixture.write_report(tmp_path, "preference")
    report = json.loads((tmp_path / "contamination.json").read_text())
    assert report["rows"] == [{"source": "pairs", "task": "capitals", "checked": 3, "dropped": 1,
                               "distinct_ngrams": 1, "overlap": report["rows"][0]["overlap"]}]
    assert capital["capital"].lower() in report["rows"][0]["overlap"]


def test_the_card_shows_the_contamination_table(tmp_path):
    from hfpipe.card import build_card
    from hfpipe.stages.data.contamination import write_report

    folder = tmp_path / "data-0"
    folder.mkdir()
    write_report(folder, "data", {"n_grams": 13, "tasks": ["capitals", "heldout_code"],
                                  "not_checked": {"hellaswag": "not in the local cache"}},
                 [{"source": "stdlib", "task": "heldout_code", "checked": 7, "dropped": 2, "distinct_ngrams": 2,
                   "overlap": "this file is dual licensed under the terms of the apache license version"}])
    text = str(build_card("t", "name: t\n", {"data": folder}))
    assert "## Contamination" in text and "`capitals`, `heldout_code`" in text
    assert "| data | stdlib | heldout_code | 7 | 2 | 2 | this file is dual licensed" in text
    assert "`hellaswag` (not in the local cache)" in text


@pytest.mark.slow  # imports lm-eval's whole registry (~30 s)
def test_a_registry_task_whose_data_is_not_local_is_reported_not_checked():
    from hfpipe.stages.data.steps.decontamination import eval_index

    _, info = eval_index(n=13, extra_tasks=("hellaswag",))
    assert "hellaswag" in info["not_checked"] and "capitals" in info["tasks"]
