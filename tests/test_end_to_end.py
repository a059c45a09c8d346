"""The tiny recipe end to end through the CLI: raw text -> model card, then the cached re-run and selective re-runs.

The first run is in a pseudo-terminal, as `make run` is in a person's terminal: what it shows is checked line by line.

    python -m pytest tests/test_end_to_end.py -v
"""

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "recipes" / "tiny.yaml"
ORDER = ["data", "tokenizer", "pretrain", "sft", "preference", "rl", "eval", "deploy", "serve"]
sys.path.insert(0, str(Path(__file__).parent))
from terminal import run_in_pty, screen_lines  # noqa: E402 (tests/terminal.py)

ENV = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1")


def cli(*args, work: Path) -> list[str]:
    return [sys.executable, "-m", "hfpipe.cli", "--runs-dir", str(work / "runs"), "--cards-dir", str(work / "cards"),
            *args]


def hfpipe(*args, work: Path):
    return subprocess.run(cli(*args, work=work), capture_output=True, text=True, cwd=work, env=ENV)


def ran(result) -> list[str]:
    """The stages the run's summary table says ran, in order."""
    return re.findall(r"^(\w+) +ran +", result.stderr, re.M)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """`hfpipe run recipes/tiny.yaml` from scratch in a pseudo-terminal (res.stderr: what the terminal shows)."""
    work = tmp_path_factory.mktemp("e2e")
    t0 = time.time()
    res = run_in_pty(cli("run", str(TINY), work=work), cwd=work, env=ENV)
    assert res.returncode == 0, res.stderr[-3000:]
    return work, res, time.time() - t0


# what hfpipe itself shows: its stage lines, and the summary table (header, one row per stage, footnote, card)
STAGE = "|".join(ORDER)
PERSON_LINE = re.compile(rf"^(hfpipe \| \[\d/9\] ({STAGE}): (done in |running \()"
                         rf"|stage +result +wall +headline +folder$|({STAGE}) +(ran|skipped|not selected) +"
                         r"|\(\) = |model card: )")
# what the libraries print: loguru's and logging's level columns, warnings, tracebacks, progress bars, pip
LIBRARY_LINE = re.compile(r"\| (DEBUG|INFO|SUCCESS|WARNING|ERROR) +\||(INFO|WARNING|ERROR)[: ]|[Ww]arning|Traceback|"
                          r"it/s\]|examples/s|\d+%\|")


def test_the_terminal_shows_at_most_60_lines_all_for_a_person(tiny_run):
    """What `make run` shows after setup: one line per stage (its live line, finished: done in, headline, folder),
    the summary table and the card; no line from datatrove, transformers, TRL, lm-eval, accelerate or uvicorn."""
    work, res, _ = tiny_run
    lines = screen_lines(res.transcript)
    assert len(lines) <= 60, "\n".join(lines)
    # hfpipe's own warnings are for a person too, but the default recipe may show only the one this machine explains:
    # without llama.cpp (the hfpipe[gguf] extra, as on a fresh clone) q4_k_m is skipped, in one line that says how
    expected = [] if importlib.util.find_spec("llama_cpp") else [
        "hfpipe | warning: deploy.gguf: q4_k_m not made: needs llama.cpp's quantizer: install the hfpipe[gguf] extra "
        "(`make gguf`: builds llama-cpp-python once per machine)"]
    assert [line for line in lines if line.startswith("hfpipe | warning: ")] == expected, "\n".join(lines)
    lines = [line for line in lines if line not in expected]
    assert [line for line in lines if not PERSON_LINE.match(line)] == [], "\n".join(lines)
    assert [line for line in lines if LIBRARY_LINE.search(line)] == [], "\n".join(lines)
    done = [line for line in lines if ": done in " in line]
    assert [re.search(r"\] (\w+): done", line).group(1) for line in done] == ORDER
    for line in done:  # the headline figure, and the stage folder
        stage = re.search(r"\] (\w+): done", line).group(1)
        assert re.search(rf" · \S.* · {re.escape(str(work / 'runs' / 'tiny'))}/{stage}-[0-9a-f]{{12}}", line), line
    assert lines[-1] == f"model card: {work / 'cards' / 'tiny.md'}"
    # the libraries' output went to each stage's log instead
    logs = {s: next((work / "runs" / "tiny").glob(f"{s}-*/stage.log")).read_text(errors="replace") for s in ORDER}
    assert "Launching pipeline for rank=0" in logs["data"]  # datatrove (loguru)
    assert "Running loglikelihood requests" in logs["eval"]  # lm-eval's progress bars
    assert "'pin_memory' argument is set as true" not in "".join(logs.values())  # fixed where hfpipe passes it


def test_tiny_recipe_runs_every_stage_and_writes_a_card(tiny_run):
    from huggingface_hub import ModelCard

    work, res, wall = tiny_run
    assert ran(res) == ["data", "tokenizer", "pretrain", "sft", "preference", "rl", "eval", "deploy", "serve"]
    card_path = work / "cards" / "tiny.md"
    card = ModelCard.load(card_path)
    assert card.data.eval_results, "eval results missing from the card metadata"
    text = card_path.read_text()
    for stage in ("data", "tokenizer", "pretrain", "sft", "preference", "rl", "eval", "deploy", "serve"):
        fp = next((work / "runs" / "tiny").glob(f"{stage}-*")).name.split("-")[1]
        assert fp in text, f"{stage} fingerprint not in the card"
    assert "name: tiny" in text  # the resolved recipe is embedded
    for image in ("tiny_data_mixture.png", "tiny_pretrain_curves.png"):
        assert f"]({image})" in text and (work / "cards" / image).stat().st_size > 1000
    print(f"tiny recipe end to end: {wall:.0f}s")


def test_rerun_skips_everything_and_status_is_done(tiny_run):
    work, _, _ = tiny_run
    t0 = time.time()
    res = hfpipe("run", str(TINY), work=work)
    wall = time.time() - t0
    assert res.returncode == 0, res.stderr[-2000:]
    assert ran(res) == [] and res.stderr.count("skipped") == 9
    # the summary table and nothing else: header, one row per stage with its headline, footnote, the card
    lines = (res.stdout + res.stderr).splitlines()
    assert re.match(r"stage +result +wall +headline +folder$", lines[0]), lines
    assert [line.split()[:2] for line in lines[1:10]] == [[s, "skipped"] for s in ORDER], lines
    assert all(re.search(r" \(\d+\.\ds\) +\S", line) for line in lines[1:10]), lines  # the earlier run's wall
    assert lines[10].startswith("() = ") and lines[11] == f"model card: {work / 'cards' / 'tiny.md'}"
    assert len(lines) == 12
    assert "val_loss" in lines[3] and "docs kept" in lines[1] and "tasks scored" in lines[7]
    in_pty = run_in_pty(cli("run", str(TINY), work=work), cwd=work, env=ENV)  # the same on a terminal
    assert in_pty.returncode == 0 and screen_lines(in_pty.transcript) == lines
    status = json.loads(hfpipe("status", str(TINY), "--json", work=work).stdout)
    assert [s["status"] for s in status] == ["done"] * 9
    print(f"cached re-run: {wall:.1f}s")


# the cache: an edit to the code or package data a stage runs makes that stage and every later one stale, nothing
# earlier (a copy of the installed package is edited, and `hfpipe status` run from it against the finished run)
CODE_EDITS = [
    ("stages/data/steps/quality.py", "data"),  # the Gopher quality filter
    ("stages/data/readers.py", "data"),
    ("templates/chat_template.jinja", "tokenizer"),  # the default chat template: package data, not code
    ("stages/pretrain/data.py", "pretrain"),  # the pretraining data loader
    ("stages/pretrain/checkpoint.py", "pretrain"),
    ("posttrain/data.py", "sft"),  # SFT data loading
    ("stages/rl/rewards.py", "rl"),  # the reward functions
    ("stages/deploy/gguf.py", "deploy"),  # the GGUF writer
]


def test_an_edit_to_the_code_a_stage_runs_makes_it_and_later_stages_stale(tiny_run, tmp_path):
    import hfpipe

    work, _, _ = tiny_run
    package = tmp_path / "pkg" / "hfpipe"
    shutil.copytree(Path(hfpipe.__file__).parent, package, ignore=shutil.ignore_patterns("__pycache__"))
    env = dict(os.environ, PYTHONPATH=str(package.parent), HF_HUB_OFFLINE="1")

    def status() -> dict[str, str]:
        cmd = [sys.executable, "-m", "hfpipe.cli", "--runs-dir", str(work / "runs"), "status", str(TINY), "--json"]
        res = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env)
        assert res.returncode == 0, res.stderr[-2000:]
        return {r["stage"]: r["status"] for r in json.loads(res.stdout)}

    assert status() == dict.fromkeys(ORDER, "done")  # the copy is byte-identical: same fingerprints
    for rel, first in CODE_EDITS:
        path = package / rel
        original = path.read_bytes()
        path.write_bytes(original + (b"{# edited #}\n" if rel.endswith(".jinja") else b"# edited\n"))
        i = ORDER.index(first)
        assert status() == {**dict.fromkeys(ORDER[:i], "done"), **dict.fromkeys(ORDER[i:], "stale")}, rel
        path.write_bytes(original)
    assert status() == dict.fromkeys(ORDER, "done")


def test_no_artifact_names_the_machines_paths(tiny_run):
    """Every file of the finished run (weights included) is free of the run folder's absolute path and of $HOME."""
    work, _, _ = tiny_run
    root = (work / "runs" / "tiny").resolve()
    needles = {str(root).encode(), str(work.resolve()).encode(), os.path.expanduser("~").encode() + b"/"}
    files = [f for f in root.rglob("*") if f.is_file()]
    assert len(files) > 50
    hits = [f"{f.relative_to(root)}: {n.decode()}" for f in files for n in needles if n in f.read_bytes()]
    assert not hits, hits[:10]


def test_eval_override_reruns_only_eval_deploy_and_serve(tiny_run):
    work, _, _ = tiny_run
    res = hfpipe("run", str(TINY), "eval.limit=20", work=work)
    assert res.returncode == 0, res.stderr[-2000:]
    assert ran(res) == ["eval", "deploy", "serve"]


def test_tokenizer_override_invalidates_tokenizer_and_downstream_not_data(tiny_run):
    work, _, _ = tiny_run
    res = hfpipe("status", str(TINY), "tokenizer.vocab_size=1000", "--json", work=work)
    status = {s["stage"]: s["status"] for s in json.loads(res.stdout)}
    assert status["data"] == "done"
    assert all(status[s] != "done" for s in ("tokenizer", "pretrain", "sft", "preference", "rl", "eval", "deploy",
                                             "serve"))


def test_card_command_rerenders(tiny_run):
    work, _, _ = tiny_run
    (work / "cards" / "tiny.md").unlink()
    res = hfpipe("card", str(TINY), work=work)
    assert res.returncode == 0 and (work / "cards" / "tiny.md").is_file()


def test_chat_template_is_byte_identical_from_tokenizer_to_export(tiny_run):
    """One chat template (by sha256 and by rendered bytes) in the tokenizer, every model stage, eval and the export."""
    import hashlib

    from transformers import AutoTokenizer

    work, _, _ = tiny_run
    runs = work / "runs" / "tiny"
    stages = ("tokenizer", "pretrain", "sft", "preference", "rl", "eval", "deploy")
    folder = {s: next(runs.glob(f"{s}-*")) for s in stages}
    tokenizers = {"tokenizer": folder["tokenizer"] / "tokenizer", "pretrain": folder["pretrain"] / "model",
                  "sft": folder["sft"] / "model", "preference": folder["preference"] / "model",
                  "rl": folder["rl"] / "model",
                  "deploy": folder["deploy"] / "export"}
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"},
            {"role": "assistant", "content": "Paris."}, {"role": "user", "content": "And of Peru? 🙂"}]
    shas, rendered = {}, {}
    for stage, path in tokenizers.items():
        tok = AutoTokenizer.from_pretrained(path)
        shas[stage] = hashlib.sha256(tok.chat_template.encode()).hexdigest()
        rendered[stage] = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True).encode()
    expected = json.loads((folder["tokenizer"] / "manifest.json").read_text())["metrics"]["chat_template_sha256"]
    assert set(shas.values()) == {expected}, shas
    assert len(set(rendered.values())) == 1 and b"<|im_start|>assistant\n" in rendered["deploy"]
    results = json.loads((folder["eval"] / "results.json").read_text())
    assert results["chat_template_sha256"] == expected  # eval applied the same template (eval.apply_chat_template)
    card = (work / "cards" / "tiny.md").read_text()
    assert expected in card


def test_card_has_the_tokenizer_fertility_table(tiny_run):
    work, _, _ = tiny_run
    card = (work / "cards" / "tiny.md").read_text()
    assert "#### Tokenizer report" in card
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in card.splitlines()
            if line.startswith(("| language |", "| domain |"))]
    languages = {r[1] for r in rows if r[0] == "language"}
    domains = {r[1] for r in rows if r[0] == "domain"}
    assert len(languages) >= 3 and len(domains) >= 2, (languages, domains)
    assert all(len(r) == 11 and all(r) for r in rows), "a cell is empty (reference tokenizer missing?)"
    for r in rows:  # bytes/token and tokens/word, ours and the reference's, are positive numbers
        assert all(float(v) > 0 for v in r[3:7])


def test_card_has_the_load_test_beside_the_eval_latency(tiny_run):
    work, _, _ = tiny_run
    card = (work / "cards" / "tiny.md").read_text()
    section = card.split("## Serving", 1)[1].split("\n## ", 1)[0]
    lt = json.loads(next((work / "runs" / "tiny").glob("serve-*/loadtest.json")).read_text())
    assert lt["requests_ok"] == 48 and lt["split"]["within_tolerance"]
    for row in ("| latency p50 (s) |", "| latency p95 (s) |", "| requests/s |", "| generated tokens/s |",
                "| eval stage, in-process generate, batch 1, 16 new tokens: latency p50 / p95 (s) |"):
        assert row in section, row
    assert "Router split against its rule over 48 requests" in section and "| int8 | stop |" in section
    served = json.loads(next((work / "runs" / "tiny").glob("serve-*/serve.json")).read_text())
    tokenizer = json.loads(next((work / "runs" / "tiny").glob("tokenizer-*/manifest.json")).read_text())
    assert served["chat_template_sha256"] == tokenizer["metrics"]["chat_template_sha256"]  # the card's template
    assert served["eos_tokens"][0] == "<|im_end|>"


def test_card_eval_table_names_the_capability_area_of_every_task(tiny_run):
    """Every task of the tiny recipe's eval stage has its area (knowledge, reasoning, ...) and says what it measures."""
    import yaml

    from hfpipe.stages.eval.areas import AREAS

    work, _, _ = tiny_run
    card = (work / "cards" / "tiny.md").read_text()
    header = "| area | task | metric | value | ± stderr | samples | task version | what the task measures |"
    table = card.split("## Evaluation", 1)[1].split(header + "\n|---", 1)[1].split("\n\n", 1)[0].splitlines()[1:]
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in table]
    assert rows and all(len(r) == 8 for r in rows), table
    tasks = yaml.safe_load(TINY.read_text())["eval"]["tasks"]
    assert {r[1] for r in rows} == set(tasks)
    assert all(r[0] in AREAS for r in rows), [r[:2] for r in rows]
    first = {r[1]: r for r in reversed(rows)}  # each task's first row says what it measures
    assert all(len(first[t][7]) > 15 for t in tasks), {t: first[t][7] for t in tasks}
    assert set(AREAS) <= {r[0] for r in rows}  # the tiny recipe covers every area
    areas = [AREAS.index(r[0]) for r in rows]
    assert areas == sorted(areas)  # grouped by area


def test_inspect_the_tiny_runs_dropped_documents_and_tokens(tiny_run):
    work, _, _ = tiny_run
    res = hfpipe("inspect", str(TINY), "data", "--dropped-by", "gopher_quality", "-n", "2", work=work)
    assert res.returncode == 0, res.stderr
    assert re.findall(r"^\[\d/2\] dropped by gopher_quality: (gopher_\w+)$", res.stdout, re.M)
    assert len(re.findall(r"^\[\d/2\] ", res.stdout, re.M)) == 2
    res = hfpipe("inspect", str(TINY), "tokens", "-n", "1", "--domain", "code", work=work)
    assert res.returncode == 0, res.stderr
    head = re.search(r"^\[1/1\] python-stdlib · domain code · language python · (\d+) characters -> (\d+) tokens",
                     res.stdout, re.M)
    assert head and int(head.group(2)) > 10, res.stdout
    marked = [line[4:] for line in res.stdout.splitlines() if line.startswith("    ")]
    assert sum(line.count("|") for line in marked) >= int(head.group(2)) // 2  # boundaries between the tokens


def test_serve_command_serves_until_sigterm(tiny_run):
    """`hfpipe serve` in the foreground: answers on its port, stops its backends on SIGTERM (exit 143)."""
    import signal
    import socket

    import httpx

    work, _, _ = tiny_run
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    cmd = [sys.executable, "-m", "hfpipe.cli", "--runs-dir", str(work / "runs"), "--cards-dir", str(work / "cards"),
           "serve", str(TINY), "--variant", "int8", "--port", str(port)]
    proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        banner = proc.stdout.readline()
        assert f"at http://127.0.0.1:{port}/v1" in banner, (banner, proc.stderr.read() if proc.poll() else "")
        r = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=60,
                       json={"messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 4})
        assert r.status_code == 200 and r.headers["x-hfpipe-variant"] == "int8"
        assert r.json()["choices"][0]["finish_reason"] in ("stop", "length")
        assert "hfpipe_requests_total" in httpx.get(f"http://127.0.0.1:{port}/metrics").text
        log = work / "runs" / "tiny" / "_serve" / "backend-int8.log"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 143
    finally:
        if proc.poll() is None:
            proc.kill()
    assert log.is_file()
    backends = [p for p in Path("/proc").glob("[0-9]*") if _cmdline(p).count("transformers.cli.transformers") and
                str(work) in _cmdline(p)]
    assert backends == [], "a backend outlived `hfpipe serve`"


def _cmdline(proc_dir: Path) -> str:
    try:
        return (proc_dir / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def test_push_uploads_the_card_with_the_serving_section(tiny_run, monkeypatch):
    """The export's own README.md predates the serve stage; the pushed card carries the load test."""
    from huggingface_hub import constants, hf_hub_download

    from hfpipe.hub import push
    from hfpipe.recipe import load_recipe

    sys.path.insert(0, str(Path(__file__).parent))
    from hub_server import HubServer  # tests/hub_server.py, a loopback Hub

    work, _, _ = tiny_run
    token = "hf_e2eTOKEN0123456789abcdef0123456"
    with HubServer({token: "alice"}) as server:
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        for k, v in {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": server.url, "HF_TOKEN": token}.items():
            monkeypatch.setenv(k, v)
        done = push(load_recipe(TINY), work / "runs", "alice/tiny")
        card = Path(hf_hub_download("alice/tiny", "README.md", revision=done["revision"], endpoint=server.url,
                                    token=token, cache_dir=work / "hf-cache")).read_text()
    export = next((work / "runs" / "tiny").glob("deploy-*/export"))
    assert "| requests (ok / sent / planned) | 48 / 48 / 48 |" in card
    assert "## Serving" in (export / "README.md").read_text()  # the section exists, empty: no serve stage then
    assert "requests (ok / sent / planned)" not in (export / "README.md").read_text()
    assert sorted(done["files"]) == sorted(str(p.relative_to(export)) for p in export.rglob("*") if p.is_file())


# ---------------------------------------------------------------------------------------------------------------------
# issue 18: held out means held out, no PII in any domain, post-training that does not wreck the language model

EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)*\.[A-Za-z]{2,}")


def _data_rows(work: Path) -> list[dict]:
    import gzip

    folder = next((work / "runs" / "tiny").glob("data-*"))
    return [json.loads(line) for f in sorted((folder / "data").glob("*.jsonl.gz"))
            for line in gzip.decompress(f.read_bytes()).decode().splitlines()]


def test_no_email_address_survives_in_any_domain_of_the_data_output(tiny_run):
    work, _, _ = tiny_run
    rows = _data_rows(work)
    assert {r["metadata"]["domain"] for r in rows} == {"prose", "code"}
    assert [(r["id"], m.group(0)) for r in rows for m in EMAIL.finditer(r["text"])] == []
    # the CPython modules' author addresses were there and were redacted, counted per kind in the stats
    stats = json.loads(next((work / "runs" / "tiny").glob("data-*/stats.json")).read_text())
    code_pii = next(s for s in stats["steps"] if s["step"] == "code:pii")
    assert code_pii["redacted_email"] >= 8 and code_pii["docs_redacted"] >= 8, code_pii
    assert sum("<EMAIL>" in r["text"] for r in rows if r["metadata"]["domain"] == "code") >= 8


def test_the_data_output_shares_no_13gram_with_any_eval_item(tiny_run):
    from hfpipe.stages.data.steps.decontamination import eval_index, find_overlap

    work, _, _ = tiny_run
    index, _ = eval_index(n=13)
    assert [(r["id"], find_overlap(index, r["text"])) for r in _data_rows(work)
            if find_overlap(index, r["text"]) is not None] == []


def test_card_has_the_contamination_table_for_the_data_and_every_post_training_set(tiny_run):
    work, _, _ = tiny_run
    card = (work / "cards" / "tiny.md").read_text()
    section = card.split("## Contamination", 1)[1].split("\n## ", 1)[0]
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in section.splitlines() if line.startswith("| ")]
    header, rows = rows[0], rows[1:]
    assert header == ["stage", "source", "eval task", "checked", "dropped", "distinct n-grams", "overlap found"]
    sources = {(r[0], r[1]) for r in rows}
    assert {("data", "sotu"), ("data", "moby-dick"), ("data", "python-stdlib"), ("sft", "sft_chat"),
            ("sft", "instruct"), ("sft", "reasoning"), ("preference", "preference_pairs"),
            ("preference", "safety_pairs"), ("preference", "structured_pairs"), ("rl", "rl_prompts"),
            ("rl", "rl_pairs")} <= sources, sources
    assert all(int(r[3]) > 0 and int(r[4]) <= int(r[3]) for r in rows), rows
    assert "`heldout_code`" in section and "`capitals`" in section


def _metrics(work: Path, stage: str) -> dict:
    return json.loads(next((work / "runs" / "tiny").glob(f"{stage}-*/manifest.json")).read_text())["metrics"]


def test_post_training_has_meaningful_baselines_and_keeps_the_language_model(tiny_run):
    """Preference accuracy from TRL's own evaluation starts above 0.3 and rises; RL reports KL to its starting policy
    and held-out bits per byte before and after; no post-training stage leaves held-out bits per byte more than 10%
    above what pretraining left (sft's "before" is the pretrained model's)."""
    work, _, _ = tiny_run
    pref, rl, sft = _metrics(work, "preference"), _metrics(work, "rl"), _metrics(work, "sft")
    assert 0.3 < pref["eval_accuracy_before"] < pref["eval_accuracy_after"], pref
    assert rl["eval_kl_to_start_before"] == 0.0 < rl["eval_kl_to_start_after"], rl
    pretrain = {d: sft[f"heldout_bpb_{d}_before"] for d in ("prose", "code", "udhr")}
    for stage, m in (("sft", sft), ("preference", pref), ("rl", rl)):
        for d, value in pretrain.items():
            assert m[f"heldout_bpb_{d}_after"] <= 1.1 * value, (stage, d, m[f"heldout_bpb_{d}_after"], value)
    assert pref["heldout_bpb_prose_before"] == pytest.approx(sft["heldout_bpb_prose_after"], rel=1e-4)  # one measure
    card = (work / "cards" / "tiny.md").read_text()
    rl_section = card.split("### rl", 1)[1].split("\n### ", 1)[0]
    for key in ("eval_kl_to_start_before", "eval_kl_to_start_after", "heldout_bpb_prose_before",
                "heldout_bpb_prose_after", "heldout_bpb_code_after", "heldout_bpb_udhr_after"):
        assert f"| {key} |" in rl_section, key
    assert "| eval_accuracy_before |" in card.split("### preference", 1)[1].split("\n### ", 1)[0]
