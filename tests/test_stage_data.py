"""Data stage on real data (data/tiny, subsets of data/starter, the pywb crawl WARC fixture): exact duplicates removed,
low-quality prose dropped with its reason, Python code kept, HTML boilerplate stripped (files and WARC), provenance on
every doc, balance shares reached within 5 points, parquet in/out, executors built, bad input -> one-line HfpipeError.

Run: .venv/bin/python -m pytest -q tests/test_stage_data.py
"""

import gzip
import json
import shutil
from pathlib import Path

import pytest

from hfpipe.errors import HfpipeError
from hfpipe.stages import data

REPO = Path(__file__).resolve().parent.parent
RECIPES = REPO / "recipes"
TINY = REPO / "data" / "tiny"
STARTER = REPO / "data" / "starter"
SOURCES = [  # what recipes/tiny.yaml says, paths relative to recipes/
    {"name": "sotu", "path": "../data/tiny/sotu.jsonl", "format": "jsonl", "domain": "prose", "language": "en",
     "license": "PDDL-1.0 AND CC0-1.0"},
    {"name": "moby-dick", "path": "../data/tiny/moby-dick/*.txt", "format": "text", "domain": "prose",
     "language": "en", "license": "PDDL-1.0 AND CC0-1.0"},
    {"name": "python-stdlib", "path": "../data/tiny/python-stdlib.jsonl", "format": "jsonl", "domain": "code",
     "language": "python", "license": "PSF-2.0"},
]
HANDBOOK = {"format": "html", "domain": "web", "language": "from-path", "license": "GPL-2.0-or-later OR CC-BY-SA-3.0"}
_RUNS = {}


def read_output(out_dir):
    docs = []
    for f in sorted((out_dir / "data").glob("*.jsonl.gz")):
        docs += [json.loads(line) for line in gzip.open(f, "rt", encoding="utf-8")]
    return docs


@pytest.fixture
def tiny_run(make_inputs, tmp_path_factory):
    """The stage run once on all of data/tiny, shared by the tests of this file."""
    if "tiny" not in _RUNS:
        out = tmp_path_factory.mktemp("data_stage")
        metrics = data.run(data.Config(sources=SOURCES), make_inputs(recipe_dir=RECIPES), out)
        _RUNS["tiny"] = (out, metrics, read_output(out))
    return _RUNS["tiny"]


def test_input_files_lists_every_raw_file():
    files = data.input_files(data.Config(sources=SOURCES), RECIPES)
    assert len(files) == 2 + len(list((TINY / "moby-dick").glob("*.txt")))
    assert all(f.is_file() for f in files)


def test_stage_module_and_input_files_import_no_datatrove():
    """`hfpipe status` and dry runs resolve sources for the fingerprint: that must not import datatrove."""
    import subprocess
    import sys

    code = ("import sys; from pathlib import Path; from hfpipe.stages import data; "
            f"files = data.input_files(data.Config(sources={SOURCES!r}), Path({str(RECIPES)!r})); "
            "print(len(files), 'datatrove' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO).stdout
    assert out.split() == [str(2 + len(list((TINY / "moby-dick").glob("*.txt")))), "False"]


def test_step_names_are_the_registry():
    """The Config validates chains against data.STEP_NAMES (no datatrove import); the one registry,
    hfpipe.stages.data.steps.STEP_BUILDERS, builds exactly those steps, each a datatrove PipelineStep."""
    from datatrove.pipeline.base import PipelineStep

    from hfpipe.stages.data.steps import STEP_BUILDERS

    assert tuple(STEP_BUILDERS) == data.STEP_NAMES
    config = data.Config(sources=SOURCES)
    assert all(isinstance(build(config), PipelineStep) for build in STEP_BUILDERS.values())
    with pytest.raises(ValueError, match="unknown filter step"):
        data.Config(sources=SOURCES, chains={"prose": ["gopher_quality", "no_such_step"]})


def test_whole_file_reader_pickles_by_reference(tmp_path):
    """Workers and Slurm jobs unpickle the readers: the lazily defined WholeFileReader is a module attribute."""
    import pickle

    import dill

    from hfpipe.stages.data import readers as data_readers

    reader = data_readers.make_reader("text", str(TINY), str(tmp_path / "paths.txt"), None)
    assert type(reader) is data_readers.WholeFileReader and type(reader).__qualname__ == "WholeFileReader"
    for module in (pickle, dill):
        assert type(module.loads(module.dumps(reader))) is data_readers.WholeFileReader


def test_exact_duplicates_removed(tiny_run):
    out, metrics, docs = tiny_run
    code = [json.loads(line)["text"] for line in (TINY / "python-stdlib.jsonl").open(encoding="utf-8")]
    n_dups = len(code) - len(set(code))
    assert n_dups >= 10  # CPython ships these duplicates (test_importlib __init__/__main__, __phello__, ...)
    assert metrics["docs_dropped_duplicate"] == n_dups
    texts = [d["text"] for d in docs]
    assert len(texts) == len(set(texts))
    duplicated = {t for t in code if code.count(t) > 1}
    assert duplicated and duplicated <= set(texts)  # one copy of every duplicated module survives
    # (other modules may leave changed: the code chain redacts PII, e.g. authors' e-mail addresses, to <EMAIL>)


def test_low_quality_prose_dropped_with_reason(tiny_run):
    out, metrics, docs = tiny_run
    ids = {d["id"] for d in docs}
    assert "moby-dick/chapter_1.txt" in ids
    assert "moby-dick/contents.txt" not in ids  # the table of contents
    assert metrics["docs_dropped_gopher_below_alpha_threshold"] >= 1
    stats = json.loads((out / "stats.json").read_text())
    quality = next(s for s in stats["steps"] if s["step"] == "prose:gopher_quality")
    assert quality["docs_in"] - quality["docs_out"] == quality["dropped"] >= 1
    assert quality["bytes_in"] > quality["bytes_out"] > 0
    assert stats["domains"]["prose"]["docs_out"] < stats["domains"]["prose"]["docs_in"]


def _jsonl_gz(files) -> list[dict]:
    return [json.loads(line) for f in sorted(files) for line in gzip.open(f, "rt", encoding="utf-8")]


def test_dropped_documents_are_kept_with_their_reason(tiny_run, make_inputs, tmp_path):
    """Every filter keeps what it drops (datatrove's exclusion_writer) in dropped/<step>/<domain>/, with
    metadata.filter_reason; dedup drops in dropped/dedup_exact/. Keeping them changes nothing that is kept: without
    them (keep_dropped: false) the shards and stats.json are byte-identical."""
    out, metrics, docs = tiny_run
    gopher = _jsonl_gz((out / "dropped" / "gopher_quality" / "prose").glob("*.jsonl.gz"))
    reasons = {k.removeprefix("docs_dropped_"): v for k, v in metrics.items() if k.startswith("docs_dropped_gopher")}
    assert len(gopher) == sum(reasons.values()) >= 1
    assert {d["metadata"]["filter_reason"] for d in gopher} == set(reasons)
    assert "moby-dick/contents.txt" in {d["id"] for d in gopher}  # the table of contents, as above
    assert all(d["metadata"]["domain"] == "prose" and d["text"] for d in gopher)
    dups = _jsonl_gz((out / "dropped" / "dedup_exact").glob("*.jsonl.gz"))
    assert len(dups) == metrics["docs_dropped_duplicate"] and {d["text"] for d in dups} <= {d["text"] for d in docs}
    for f in (out / "dropped").rglob("*"):  # gzip without a timestamp, no plain leftovers
        assert f.is_dir() or (f.name.endswith(".jsonl.gz") and f.read_bytes()[4:8] == b"\0\0\0\0"), f
    plain = tmp_path / "without_dropped"
    data.run(data.Config(sources=SOURCES, keep_dropped=False), make_inputs(recipe_dir=RECIPES), plain)
    assert not (plain / "dropped").exists()
    assert sorted(p.name for p in (plain / "data").iterdir()) == sorted(p.name for p in (out / "data").iterdir())
    for f in [*(out / "data").iterdir(), out / "stats.json"]:
        assert f.read_bytes() == (plain / f.relative_to(out)).read_bytes(), f.name


def test_dropped_writer_appends_when_a_routed_filter_reopens_it(tmp_path):
    """A filter routed to one domain (ForDomain) runs once per stretch of that domain's documents, entering and
    leaving its exclusion writer each time: the second stretch must not truncate the first one's file."""
    from datatrove.data import Document

    from hfpipe.stages.data.mixture import DroppedWriter

    writer = DroppedWriter(str(tmp_path / "dropped"))
    for text in ("first stretch", "second stretch"):
        with writer as w:
            w.write(Document(text=text, id=text, metadata={"filter_reason": "r"}), rank=0)
    assert [json.loads(line)["text"] for line in (tmp_path / "dropped" / "00000.jsonl").read_text().splitlines()] == \
        ["first stretch", "second stretch"]


def test_python_code_kept(tiny_run):
    out, metrics, docs = tiny_run
    code = {d["metadata"]["path"]: d["text"] for d in docs if d["metadata"]["domain"] == "code"}
    # short modules that Gopher's 50-word minimum would drop as prose survive: code gets only code filters
    assert code["__phello__/__init__.py"].startswith("initialized = True")
    assert "def dedent(text):" in code["textwrap.py"]
    assert metrics["docs_out_code"] == len(code) == 21
    steps = json.loads((out / "stats.json").read_text())["steps"]
    assert [s["step"] for s in steps if s["step"].startswith("code:")] == [
        "code:malware", "code:secrets", "code:code_quality", "code:decontaminate", "code:license_header", "code:pii"]


def test_metadata_on_every_doc(tiny_run):
    out, metrics, docs = tiny_run
    assert len(docs) == metrics["docs_out"] == metrics["docs_out_prose"] + metrics["docs_out_code"]
    by_source = {s["name"]: s for s in SOURCES}
    for d in docs:
        m = d["metadata"]
        src = by_source[m["source"]]
        assert (m["domain"], m["language"], m["license"]) == (src["domain"], src["language"], src["license"])
        assert d["id"].startswith(m["source"] + "/") and d["text"] and "file_path" not in m
    sotu = next(d for d in docs if d["metadata"]["source"] == "sotu" and d["metadata"]["year"] == 1860)
    path, line = sotu["metadata"]["origin"].rsplit(":", 1)
    assert json.loads((RECIPES / path).read_text(encoding="utf-8").splitlines()[int(line) - 1])["text"] == sotu["text"]
    assert metrics["bytes_out"] == sum(len(d["text"].encode()) for d in docs)
    assert (out / "mixture.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_html_and_warc_boilerplate_stripped(make_inputs, tmp_path):
    sources = [{**HANDBOOK, "name": "html", "path": "../data/starter/web/handbook-html/*/foreword.html"},
               {**HANDBOOK, "name": "warc", "path": "../data/starter/web/handbook.warc.gz", "format": "warc"}]
    config = data.Config(sources=sources, chains={}, dedup={"minhash": {"enabled": False}})  # extraction only
    metrics = data.run(config, make_inputs(recipe_dir=RECIPES), tmp_path)
    docs = read_output(tmp_path)
    raw = (STARTER / "web/handbook-html/en-US/foreword.html").read_text(encoding="utf-8")
    assert "Download the ebook" in raw
    en = next(d for d in docs if d["metadata"]["origin"].endswith("en-US/foreword.html"))
    assert "Linux has been garnering strength for a number of years now" in en["text"]
    assert "Download the ebook" not in en["text"] and "<" not in en["text"]
    assert {d["metadata"]["language"] for d in docs if d["metadata"]["source"] == "html"} == {
        "en", "de", "fr", "es", "ru", "ja"}
    warc = [d for d in docs if d["metadata"]["source"] == "warc"]
    assert len(warc) == metrics["docs_out"] - 6 == 32
    assert {d["metadata"]["language"] for d in warc} == {"it", "pt", "zh", "nl"}
    assert all(d["metadata"]["origin"].startswith("file:///usr/share/doc/debian-handbook/html/") for d in warc)
    extract = next(s for s in json.loads((tmp_path / "stats.json").read_text())["steps"]
                   if s["step"] == "web:extract:trafilatura")
    assert extract["bytes_out"] < extract["bytes_in"] / 2  # markup and navigation gone


def test_real_crawl_warc_fixture(make_inputs, tmp_path):
    """pywb's 2014 crawl of iana.org (a test fixture, not training data): HTML records extracted, assets skipped."""
    src = {"name": "iana", "path": str(REPO / "tests/fixtures/iana.warc.gz"), "format": "warc", "domain": "web",
           "language": "en", "license": "test fixture"}
    data.run(data.Config(sources=[src], chains={}, dedup=False), make_inputs(recipe_dir=RECIPES), tmp_path)
    docs = read_output(tmp_path)
    assert docs and all(d["metadata"]["origin"].startswith("http") for d in docs)
    assert any("Internet Assigned Numbers Authority" in d["text"] for d in docs)


def test_minhash_near_duplicate_caught_and_distinct_docs_kept(make_inputs, tmp_path):
    chapters = [(TINY / "moby-dick" / f"chapter_{i}.txt").read_text(encoding="utf-8") for i in range(1, 7)]
    words = chapters[0].split()
    for i in (10, 200, 400, 600):  # a few words changed: not an exact duplicate
        words[i] = "whale"
    rows = chapters + [" ".join(words), chapters[1]]  # + a near-duplicate of chapter 1, an exact copy of chapter 2
    raw = tmp_path / "raw.jsonl"
    raw.write_text("".join(json.dumps({"text": t, "id": f"row{i}"}) + "\n" for i, t in enumerate(rows)))
    src = {**SOURCES[0], "name": "moby", "path": str(raw)}
    config = data.Config(sources=[src], chains={}, dedup={"minhash": {"num_buckets": 4}})
    metrics = data.run(config, make_inputs(recipe_dir=RECIPES), tmp_path / "out")
    docs = read_output(tmp_path / "out")
    assert metrics["docs_dropped_duplicate"] == 1 and metrics["docs_dropped_near_duplicate"] == 1
    assert sorted(d["text"] for d in docs) == sorted(chapters[1:] + [chapters[0] if "row0" in {
        d["id"].split("/")[1] for d in docs} else " ".join(words)])  # one of the pair kept, every distinct doc kept
    assert len(docs) == 6
    steps = {s["step"]: s for s in json.loads((tmp_path / "out/stats.json").read_text())["steps"]}
    assert steps["dedup:minhash"]["docs_in"] == 7 and steps["dedup:minhash"]["dropped"] == 1
    assert data.Config(sources=[src], dedup=False).dedup.minhash.enabled is False  # `dedup: false` turns both off


def test_default_web_chain_is_language_aware_and_redacts_pii(make_inputs, tmp_path):
    """Gopher's English rules judge only English pages; ja/ru/zh pages pass it, languages are identified, and the
    handbook's real e-mail and IP addresses are redacted and counted per kind."""
    from hfpipe.stages.data.steps.quality import FastGopherQualityFilter

    sources = [{**HANDBOOK, "name": "html", "path": "../data/starter/web/handbook-html/*/[fs]*.html"},
               {**HANDBOOK, "name": "warc", "path": "../data/starter/web/handbook.warc.gz", "format": "warc"}]
    metrics = data.run(data.Config(sources=sources), make_inputs(recipe_dir=RECIPES), tmp_path)
    docs = read_output(tmp_path)
    steps = {s["step"]: s for s in json.loads((tmp_path / "stats.json").read_text())["steps"]}
    assert [k for k in steps if k.startswith("web:")] == [
        "web:extract:trafilatura", "web:language_id", "web:gopher_quality", "web:decontaminate", "web:pii"]
    foreign = [d for d in docs if d["metadata"]["detected_language"] in ("ja", "ru", "zh")]
    assert {d["metadata"]["detected_language"] for d in foreign} == {"ja", "ru", "zh"}
    # translated pages are identified as the language of their locale folder
    assert all(d["metadata"]["detected_language"] == d["metadata"]["language"] for d in foreign)
    gopher = steps["web:gopher_quality"]
    assert gopher["skipped_other_language"] >= len(foreign) and gopher["docs_in"] > gopher["skipped_other_language"]
    # ...most of which the English rules would have dropped
    from datatrove.data import Document

    verdicts = [FastGopherQualityFilter().filter(Document(text=d["text"], id=d["id"])) for d in foreign
                if d["metadata"]["detected_language"] in ("ja", "zh")]
    assert len(verdicts) >= 4 and sum(v is not True for v in verdicts) > len(verdicts) / 2, verdicts
    pii = steps["web:pii"]
    assert pii["redacted_email"] > 0 and pii["redacted_ip"] > 0 and pii["docs_redacted"] > 0
    assert metrics["pii_redacted_email"] == pii["redacted_email"] and metrics["detected_language_ja"] >= 1
    assert not any("@debian.org" in d["text"] for d in docs)


def test_balance_reaches_domain_and_language_shares(make_inputs, tmp_path):
    sources = [{**SOURCES[0], "path": "../data/starter/prose/sotu/sotu-00003.jsonl.gz"},
               {**SOURCES[2], "name": "stdlib", "path": "../data/starter/code/python-stdlib/json", "format": "text"},
               {"name": "chitchat", "path": "../data/starter/dialog/chitchat-00000.jsonl.gz", "format": "jsonl",
                "domain": "dialog", "language": "en", "license": "MIT"},
               {**HANDBOOK, "name": "html", "path": "../data/starter/web/handbook-html/*/[a-f]*.html"}]
    balance = {"enabled": True, "domain_shares": {"prose": 0.4, "code": 0.1, "dialog": 0.2, "web": 0.3},
               "language_shares": {"en": 0.7, "python": 0.1, "de": 0.05, "fr": 0.05}}
    config = data.Config(sources=sources, chains={}, balance=balance)
    metrics = data.run(config, make_inputs(recipe_dir=RECIPES), tmp_path)
    stats = json.loads((tmp_path / "stats.json").read_text())
    achieved = stats["shares"]["achieved"]
    for axis, targets in (("domain", balance["domain_shares"]), ("language", balance["language_shares"])):
        for key, share in targets.items():
            assert abs(achieved[axis][key] - share) <= 0.05, (axis, key, achieved[axis])
    others = sum(v for k, v in achieved["language"].items() if k not in balance["language_shares"])
    assert abs(others - 0.1) <= 0.05  # es/ru/ja share the remaining 10%
    assert metrics["docs_dropped_balance_dialog"] > 0
    docs = read_output(tmp_path)
    assert sum(len(d["text"].encode()) for d in docs) == metrics["bytes_out"]


def test_rerun_is_bit_identical_and_parquet_round_trips(make_inputs, tmp_path):
    config = data.Config(sources=SOURCES[2:], chains={}, parquet=True,
                         balance={"enabled": True, "max_bytes": 150_000})
    outs = [tmp_path / "a", tmp_path / "b"]
    for out in outs:
        data.run(config, make_inputs(recipe_dir=RECIPES), out)
    assert (outs[0] / "data/00000.jsonl.gz").read_bytes() == (outs[1] / "data/00000.jsonl.gz").read_bytes()
    assert sorted(f.suffix for f in (outs[0] / "data").iterdir()) == [".gz", ".parquet"]  # no plain jsonl left
    assert not (outs[0] / "work").exists()  # the passes' plain jsonl hand-offs are gone
    docs = read_output(outs[0])
    assert 100_000 < sum(len(d["text"].encode()) for d in docs) <= 150_000 + max(len(d["text"]) for d in docs)
    # the parquet shard is a readable source in turn, keeping the original provenance fields
    (shard,) = (outs[0] / "data").glob("*.parquet")
    src = {**SOURCES[2], "name": "again", "path": str(shard), "format": "parquet"}
    data.run(data.Config(sources=[src], chains={}), make_inputs(recipe_dir=RECIPES), tmp_path / "c")
    again = read_output(tmp_path / "c")
    assert sorted(d["text"] for d in again) == sorted(d["text"] for d in docs)
    assert all(d["metadata"]["source"] == "again" and d["metadata"]["origin"].endswith(".parquet:" + str(i + 1))
               for i, d in enumerate(sorted(again, key=lambda d: int(d["metadata"]["origin"].rsplit(":", 1)[1]))))


def test_live_python_stdlib_source(make_inputs, tmp_path):
    src = {"name": "stdlib", "format": "python-stdlib", "path": "json/*.py", "domain": "code", "language": "python",
           "license": "PSF-2.0"}
    metrics = data.run(data.Config(sources=[src]), make_inputs(recipe_dir=RECIPES), tmp_path)
    docs = read_output(tmp_path)
    assert {d["metadata"]["origin"] for d in docs} >= {"python-stdlib/json/decoder.py", "python-stdlib/json/__init__.py"}
    assert metrics["docs_out_code"] == len(docs) >= 4


def test_executors_and_hub_reader_are_built_without_running(tmp_path):
    from datatrove.executor import LocalPipelineExecutor, RayPipelineExecutor, SlurmPipelineExecutor
    from datatrove.pipeline.readers import HuggingFaceDatasetReader

    base = {"sources": SOURCES[:1]}
    with pytest.raises(ValueError, match="slurm.partition"):
        data.Config(**base, executor="slurm")
    slurm = data.Config(**base, executor="slurm", tasks=8, slurm={"partition": "cpu", "time": "01:00:00"})
    executor = data.make_executor(slurm, [], 8, tmp_path / "slurm")
    assert isinstance(executor, SlurmPipelineExecutor) and executor.partition == "cpu" and executor.world_size == 8
    ray = data.make_executor(data.Config(**base, executor="ray", workers=3), [], 4, tmp_path / "ray")
    assert isinstance(ray, RayPipelineExecutor) and ray.workers == 3
    assert isinstance(data.make_executor(data.Config(**base), [], 2, tmp_path / "l"), LocalPipelineExecutor)

    hub = {"name": "fw", "format": "hub", "dataset": "HuggingFaceFW/fineweb-edu", "subset": "sample-10BT",
           "domain": "web", "language": "en", "license": "ODC-By-1.0"}
    with pytest.raises(ValueError, match="needs 'dataset'"):
        data.Config(sources=[{**hub, "dataset": ""}])
    readers, _, _ = data.build_readers(data.Config(sources=[hub]), RECIPES, tmp_path)
    reader = readers["web"][0][1]
    assert isinstance(reader, HuggingFaceDatasetReader) and reader.dataset == "HuggingFaceFW/fineweb-edu"
    assert reader.dataset_options == {"split": "train", "name": "sample-10BT"}
    assert data.input_files(data.Config(sources=[hub]), RECIPES) == []
    with pytest.raises(ValueError, match="unknown filter step"):
        data.Config(**base, chains={"prose": ["no_such_step"]})


# ---------------------------------------------------------------------------------------------------------------------
# bad input: one line naming the file (and line) or the step


def _copy_code(tmp_path, n=3):
    folder = tmp_path / "raw"
    folder.mkdir()
    for f in sorted((STARTER / "code/python-stdlib").glob("*.py"))[:n]:
        shutil.copy(f, folder / f.name)
    return folder


def _code_source(folder):
    return {**SOURCES[2], "path": str(folder), "format": "text"}


def test_malformed_jsonl_line_names_file_and_line(make_inputs, tmp_path):
    lines = (TINY / "sotu.jsonl").read_text(encoding="utf-8").splitlines()[:2]
    bad = tmp_path / "raw" / "bad.jsonl"
    bad.parent.mkdir()
    bad.write_text("\n".join(lines + [lines[0][:100]]) + "\n", encoding="utf-8")  # a truncated third line
    config = data.Config(sources=[{**SOURCES[0], "path": str(bad)}])
    with pytest.raises(HfpipeError, match=f"{bad}:3: malformed JSON"):
        data.run(config, make_inputs(recipe_dir=RECIPES), tmp_path / "out")


def test_unreadable_binary_undecodable_and_empty_inputs(make_inputs, tmp_path):
    folder = _copy_code(tmp_path)
    run = lambda src: data.run(data.Config(sources=[src]), make_inputs(recipe_dir=RECIPES), tmp_path / "out")  # noqa
    (folder / "zz.cpython-311.pyc").write_bytes(b"\xa7\r\r\n\x00\x00\x00\x00" + bytes(range(256)))
    with pytest.raises(HfpipeError, match=r"zz.cpython-311.pyc: binary file among text \(NUL byte"):
        run(_code_source(folder))
    (folder / "zz.cpython-311.pyc").unlink()
    (folder / "latin1.py").write_bytes("x = 1\n# café\n".encode("latin-1"))
    with pytest.raises(HfpipeError, match=r"latin1.py:2: undecodable bytes \(not UTF-8 at byte 11"):
        run(_code_source(folder))
    truncated = tmp_path / "cut.jsonl.gz"
    truncated.write_bytes((STARTER / "dialog/chitchat-00000.jsonl.gz").read_bytes()[:5000])
    with pytest.raises(HfpipeError, match=r"cut.jsonl.gz: unreadable file \(EOFError"):
        run({**SOURCES[0], "path": str(truncated)})
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(HfpipeError, match=r"data.sources\[0\] \(sotu\): empty source: 1 file"):
        run({**SOURCES[0], "path": str(tmp_path / "empty.jsonl")})
    with pytest.raises(HfpipeError, match=r"unreadable WARC file"):
        run({**HANDBOOK, "name": "w", "path": str(STARTER / "web/handbook-html/en-US/apt.html"), "format": "warc"})


def test_missing_path_is_an_error(make_inputs, tmp_path):
    config = data.Config(sources=[{**SOURCES[1], "path": "../data/no-such-folder"}])
    with pytest.raises(HfpipeError, match=r"data.sources\[0\] \(moby-dick\): path '../data/no-such-folder' does not"):
        data.input_files(config, RECIPES)
    with pytest.raises(HfpipeError, match="does not exist"):
        data.run(config, make_inputs(recipe_dir=RECIPES), tmp_path / "out")


def test_chain_dropping_a_whole_domain_names_the_step_and_keeps_stats(make_inputs, tmp_path):
    sources = [SOURCES[2], {**SOURCES[1], "path": "../data/tiny/moby-dick/contents.txt"}]
    with pytest.raises(HfpipeError, match=r"step 'prose:gopher_quality' dropped every prose document \(1 in, 0 out"):
        data.run(data.Config(sources=sources), make_inputs(recipe_dir=RECIPES), tmp_path / "out")
    stats = json.loads((tmp_path / "out/stats.json").read_text())  # what was measured so far is kept
    assert any(s["step"] == "prose:gopher_quality" and s["docs_out"] == 0 for s in stats["steps"])


# ---------------------------------------------------------------------------------------------------------------------
# the hfpipe.stages.data.steps filters wired as named chain steps (the STEP_BUILDERS registry)


def test_code_and_prose_chains_drop_malware_secrets_contamination_and_redact_pii(make_inputs, tmp_path):
    from hfpipe.stages.data.steps.patterns import EICAR

    raw = _copy_code(tmp_path, n=4)
    (raw / "eicar_test.py").write_text(f"SIGNATURE = r'{EICAR}'\n")
    shutil.copy(REPO / "tests/fixtures/pii_config.py", raw / "pii_config.py")
    item = json.loads((REPO / "hfpipe/tasks/capitals/test.jsonl").read_text().splitlines()[40])
    leaked = (f"Quiz night notes.\nQuestion: What is the capital of {item['country']}?\n"
              f"Answer: {item['choices'][item['answer']]}\n" + (TINY / "moby-dick" / "chapter_2.txt").read_text())
    contact = "Write to the clerk at clerk@example.com or call +1 555 555 0142.\n" + (TINY / "moby-dick" / "chapter_3.txt").read_text()
    prose = tmp_path / "prose.jsonl"
    prose.write_text("".join(json.dumps({"text": t}) + "\n" for t in (leaked, contact)))
    config = data.Config(
        sources=[_code_source(raw), {**SOURCES[0], "path": str(prose)}],
        chains={"code": ["malware", "secrets", "code_quality", "license_header"], "prose": ["decontaminate", "pii"]})
    metrics = data.run(config, make_inputs(recipe_dir=RECIPES), tmp_path / "out")
    docs = read_output(tmp_path / "out")
    origins = {Path(d["metadata"]["origin"]).name for d in docs if d["metadata"]["domain"] == "code"}
    assert "eicar_test.py" not in origins and "pii_config.py" not in origins  # malware, then the secrets filter
    assert len(origins) == 4  # real stdlib code survives the code chain
    assert metrics["docs_dropped_malware_eicar"] == 1 and metrics["docs_out_prose"] == 1
    text = next(d["text"] for d in docs if d["metadata"]["domain"] == "prose")
    assert "clerk@example.com" not in text and "<EMAIL>" in text and "<PHONE>" in text
    pii = next(s for s in json.loads((tmp_path / "out/stats.json").read_text())["steps"] if s["step"] == "prose:pii")
    assert pii["redacted_email"] == pii["redacted_phone"] == 1 == metrics["pii_redacted_phone"]
    assert metrics["docs_dropped_contaminated"] == 1 and metrics["docs_dropped_secret_aws_access_key"] == 1
