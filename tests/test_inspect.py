"""`hfpipe inspect RECIPE data`: what the data stage kept and dropped, and why, on the starter corpus, through the CLI.

The data stage of recipes/starter-data.yaml runs once (through `hfpipe run`, two local workers: the run must also
end, which it did not while forked workers turned SIGTERM into the CLI's _Terminated), then `inspect` reads it.

    python -m pytest tests/test_inspect.py -v
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
STARTER = REPO / "recipes" / "starter-data.yaml"
GOPHER_REASONS = ("gopher_short_doc", "gopher_long_doc", "gopher_below_avg_threshold", "gopher_above_avg_threshold",
                  "gopher_too_many_hashes", "gopher_too_many_ellipsis", "gopher_too_many_bullets",
                  "gopher_too_many_end_ellipsis", "gopher_below_alpha_threshold", "gopher_enough_stop_words")


def hfpipe(*args, work: Path, timeout=900):
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "hfpipe.cli", "--runs-dir", str(work / "runs"), "--cards-dir",
                           str(work / "cards"), *map(str, args)], capture_output=True, text=True, cwd=work, env=env,
                          timeout=timeout)


@pytest.fixture(scope="module")
def starter(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("starter")
    res = hfpipe("run", STARTER, work=work)
    assert res.returncode == 0, res.stderr[-3000:]
    return work


def documents(stdout: str) -> list[tuple[str, list[str]]]:
    """(verdict line, the lines under it) per document `inspect` shows."""
    blocks = re.split(r"^(?=\[\d+/\d+\] )", stdout, flags=re.M)[1:]
    return [(b.splitlines()[0], b.splitlines()[1:]) for b in blocks]


def test_inspect_shows_three_documents_gopher_quality_dropped_with_their_reasons(starter):
    res = hfpipe("inspect", STARTER, "data", "--dropped-by", "gopher_quality", "-n", "3", work=starter)
    assert res.returncode == 0, res.stderr
    head = res.stdout.splitlines()
    assert re.match(r"data-[0-9a-f]{12}: [\d,]+ documents kept; dropped: .*gopher_quality [\d,]+", head[0]), head[0]
    assert re.match(r"3 of [\d,]+ documents dropped by gopher_quality \(", head[1]), head[1]
    docs = documents(res.stdout)
    assert len(docs) == 3
    for verdict, lines in docs:
        reason = re.fullmatch(r"\[\d/3\] dropped by gopher_quality: (\w+)", verdict).group(1)
        assert reason in GOPHER_REASONS, verdict
        facts = lines[1]  # domain, language (declared, detected), quality score, PII redactions
        assert re.search(r"domain (prose|web) · language \w+ \(detected \w+, [\d.]+\) · quality score .* · "
                         r"PII redacted: ", facts), facts
        assert any(line.startswith("    │ ") and len(line) > 10 for line in lines)  # the text itself
    # the same three every time (seeded), another three with another seed
    assert hfpipe("inspect", STARTER, "data", "--dropped-by", "gopher_quality", "-n", "3", work=starter).stdout == \
        res.stdout
    other = hfpipe("inspect", STARTER, "data", "--dropped-by", "gopher_quality", "-n", "3", "--seed", "7", work=starter)
    assert other.returncode == 0 and other.stdout != res.stdout


def test_inspect_kept_documents_of_a_domain_and_dedup_drops(starter):
    kept = hfpipe("inspect", STARTER, "data", "--domain", "dialog", "-n", "2", work=starter)
    assert kept.returncode == 0, kept.stderr
    docs = documents(kept.stdout)
    assert [v.split("] ")[1] for v, _ in docs] == ["kept", "kept"]
    assert all(lines[1].startswith("      domain dialog · ") for _, lines in docs)
    dups = hfpipe("inspect", STARTER, "data", "--dropped-by", "dedup_exact", "-n", "1", work=starter)
    assert dups.returncode == 0, dups.stderr
    assert documents(dups.stdout)[0][0] == "[1/1] dropped by dedup_exact: exact duplicate of a kept document"


@pytest.mark.parametrize("args, says", [
    (["--dropped-by", "gopher"], "--dropped-by gopher: not a step of this data stage (its steps: "),
    (["--domain", "webb"], "--domain webb: no such domain in this data stage (domains: code, dialog, prose, web)"),
    (["--dropped-by", "balance"], "--dropped-by balance: the mixture sampler keeps no copy"),
])
def test_inspect_errors_are_one_line(starter, args, says):
    res = hfpipe("inspect", STARTER, "data", *args, work=starter)
    assert res.returncode == 2 and res.stdout == "" and res.stderr.count("\n") == 1, res.stderr
    assert res.stderr.startswith(f"hfpipe: error: {says}"), res.stderr


def test_inspect_before_the_stage_ran_says_what_to_run(tmp_path):
    res = hfpipe("inspect", STARTER, "data", work=tmp_path)
    assert res.returncode == 1 and res.stderr.count("\n") == 1
    assert "the data stage of 'starter-data' has not finished" in res.stderr and "--until data" in res.stderr
