"""Shared pieces of the reliability suite: the CLI in a subprocess, a small workspace made of repo data, a finished
tiny run (data -> tokenizer -> pretrain) to check that failures leave finished stages alone, and the matrix summary.

    python -m pytest -q tests/reliability
"""

from __future__ import annotations

import pytest

from reliability.relhelpers import BASE_RECIPE, finished_folders, hfpipe, make_workspace, write_recipe


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A workspace whose recipe 'rel' has finished data, tokenizer, pretrain and deploy (run once per test module)."""
    work = make_workspace(tmp_path_factory.mktemp("rel"))
    recipe = write_recipe(work, BASE_RECIPE, "base.yaml")
    res = hfpipe(["run", recipe], work)
    assert res.returncode == 0, res.stderr[-3000:]
    run_dir = work / "runs" / "rel"
    assert {f.split("-")[0] for f in finished_folders(run_dir)} == {"data", "tokenizer", "pretrain", "deploy"}
    return work


# ----------------------------------------------------------------------------------------------------------------
# The bad-input matrix summary: tried / survived / lost (a case "loses" work if a finished stage changed)

_MATRIX = {"tried": 0, "survived": 0, "lost": 0, "xfail": 0}


def pytest_runtest_logreport(report):
    if "test_bad_inputs.py::test_bad_input[" not in report.nodeid:
        return
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        if report.when == "setup" and report.skipped:
            return
        _MATRIX["tried"] += 1
        if hasattr(report, "wasxfail"):
            _MATRIX["xfail"] += 1
        elif report.passed:
            _MATRIX["survived"] += 1
        if any(k == "lost" and v for k, v in report.user_properties):
            _MATRIX["lost"] += 1


def pytest_terminal_summary(terminalreporter):
    if _MATRIX["tried"]:
        m = _MATRIX
        known = f", {m['xfail']} known gaps (xfail)" if m["xfail"] else ""
        terminalreporter.write_line(f"bad-input matrix: {m['tried']} cases tried, {m['survived']} survived, "
                                    f"{m['lost']} lost{known}")
