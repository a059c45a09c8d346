"""Data stage on the real data/tiny set: exact duplicates removed, low-quality prose dropped with its reason, Python
code kept (never judged by the prose filter), metadata on every doc, bad inputs -> one-line HfpipeError.

Run: .venv/bin/python -m pytest -q tests/test_stage_data.py
"""

import gzip
import json
from pathlib import Path

import pytest

from hfpipe.errors import HfpipeError
from hfpipe.stages import data

REPO = Path(__file__).resolve().parent.parent
RECIPES = REPO / "recipes"
TINY = REPO / "data" / "tiny"
SOURCES = [  # what recipes/tiny.yaml says, paths relative to recipes/
    {"name": "sotu", "path": "../data/tiny/sotu.jsonl", "format": "jsonl", "domain": "prose", "language": "en",
     "license": "PDDL-1.0 AND CC0-1.0"},
    {"name": "moby-dick", "path": "../data/tiny/moby-dick/*.txt", "format": "text", "domain": "prose",
     "language": "en", "license": "PDDL-1.0 AND CC0-1.0"},
    {"name": "python-stdlib", "path": "../data/tiny/python-stdlib.jsonl", "format": "jsonl", "domain": "code",
     "language": "python", "license": "PSF-2.0"},
]
_RUNS = {}


def read_output(out_dir):
    docs = []
    for f in sorted((out_dir / "data").glob("*.jsonl.gz")):
        docs += [json.loads(line) for line in gzip.open(f, "rt", encoding="utf-8")]
    return docs


@pytest.fixture
def tiny_run(make_inputs, tmp_path_factory):
    """The stage run once on all of data/tiny (about 10 s), shared by the tests of this file."""
    if "tiny" not in _RUNS:
        out = tmp_path_factory.mktemp("data_stage")
        metrics = data.run(data.Config(sources=SOURCES), make_inputs(recipe_dir=RECIPES), out)
        _RUNS["tiny"] = (out, metrics, read_output(out))
    return _RUNS["tiny"]


def test_input_files_lists_every_raw_file():
    files = data.input_files(data.Config(sources=SOURCES), RECIPES)
    assert len(files) == 2 + len(list((TINY / "moby-dick").glob("*.txt")))
    assert all(f.is_file() for f in files)


def test_exact_duplicates_removed(tiny_run):
    out, metrics, docs = tiny_run
    code = [json.loads(line)["text"] for line in (TINY / "python-stdlib.jsonl").open(encoding="utf-8")]
    n_dups = len(code) - len(set(code))
    assert n_dups >= 10  # CPython ships these duplicates (test_importlib __init__/__main__, __phello__, ...)
    assert metrics["docs_dropped_duplicate"] == n_dups
    texts = [d["text"] for d in docs]
    assert len(texts) == len(set(texts))
    assert set(code) <= set(texts)  # one copy of every duplicated module survives


def test_low_quality_prose_dropped_with_reason(tiny_run):
    out, metrics, docs = tiny_run
    ids = {d["id"] for d in docs}
    assert "moby-dick/chapter_1.txt" in ids
    assert "moby-dick/contents.txt" not in ids  # the table of contents
    assert metrics["docs_dropped_gopher_below_alpha_threshold"] >= 1
    stats = json.loads((out / "stats.json").read_text())
    quality = next(s for s in stats["steps"] if s["step"] == "quality:gopher")
    assert quality["docs_in"] - quality["docs_out"] == quality["dropped_gopher_below_alpha_threshold"]
    assert stats["domains"]["prose"]["docs_out"] < stats["domains"]["prose"]["docs_in"]


def test_python_code_kept(tiny_run):
    out, metrics, docs = tiny_run
    code = {d["metadata"]["path"]: d["text"] for d in docs if d["metadata"]["domain"] == "code"}
    # short modules that Gopher's 50-word minimum would drop as prose survive: the filter is routed to prose only
    assert code["__phello__/__init__.py"].startswith("initialized = True")
    assert "def dedent(text):" in code["textwrap.py"]
    assert metrics["docs_out_code"] == len(code) == 21
    assert "dropped" not in json.dumps(json.loads((out / "stats.json").read_text())["domains"])


def test_metadata_on_every_doc(tiny_run):
    out, metrics, docs = tiny_run
    assert len(docs) == metrics["docs_out"] == metrics["docs_out_prose"] + metrics["docs_out_code"]
    by_source = {s["name"]: s for s in SOURCES}
    for d in docs:
        m = d["metadata"]
        src = by_source[m["source"]]
        assert (m["domain"], m["language"], m["license"]) == (src["domain"], src["language"], src["license"])
        assert d["id"].startswith(m["source"] + "/") and d["text"]
    sotu = next(d for d in docs if d["metadata"]["source"] == "sotu" and d["metadata"]["year"] == 1860)
    path, line = sotu["metadata"]["origin"].rsplit(":", 1)
    assert json.loads((RECIPES / path).read_text(encoding="utf-8").splitlines()[int(line) - 1])["text"] == sotu["text"]
    assert metrics["bytes_out"] == sum(len(d["text"].encode()) for d in docs)


def test_rerun_is_bit_identical(make_inputs, tmp_path):
    config = data.Config(sources=SOURCES[2:], quality={"enabled": False})
    outs = [tmp_path / "a", tmp_path / "b"]
    for out in outs:
        data.run(config, make_inputs(recipe_dir=RECIPES), out)
    assert (outs[0] / "data/00000.jsonl.gz").read_bytes() == (outs[1] / "data/00000.jsonl.gz").read_bytes()


def test_malformed_jsonl_line_names_file_and_line(make_inputs, tmp_path):
    lines = (TINY / "sotu.jsonl").read_text(encoding="utf-8").splitlines()[:2]
    bad = tmp_path / "raw" / "bad.jsonl"
    bad.parent.mkdir()
    bad.write_text("\n".join(lines + [lines[0][:100]]) + "\n", encoding="utf-8")  # a truncated third line
    config = data.Config(sources=[{**SOURCES[0], "path": str(bad)}])
    with pytest.raises(HfpipeError, match=f"{bad}:3: malformed JSON"):
        data.run(config, make_inputs(recipe_dir=RECIPES), tmp_path / "out")


def test_missing_path_is_an_error(make_inputs, tmp_path):
    config = data.Config(sources=[{**SOURCES[1], "path": "../data/no-such-folder"}])
    with pytest.raises(HfpipeError, match=r"data.sources\[0\] \(moby-dick\): path '../data/no-such-folder' does not"):
        data.input_files(config, RECIPES)
    with pytest.raises(HfpipeError, match="does not exist"):
        data.run(config, make_inputs(recipe_dir=RECIPES), tmp_path / "out")


def test_empty_output_names_the_step(make_inputs, tmp_path):
    config = data.Config(sources=[{**SOURCES[1], "path": "../data/tiny/moby-dick/contents.txt"}])
    with pytest.raises(HfpipeError, match="step 'quality:gopher' dropped everything"):
        data.run(config, make_inputs(recipe_dir=RECIPES), tmp_path / "out")
