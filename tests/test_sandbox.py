"""hfpipe.stages.eval.sandbox: model-written code runs in a separate interpreter that is killed on timeout, gets no network,
cannot write outside its temporary folder nor use more memory than allowed; the coding task's reference solutions
pass their tests in it.

Run: .venv/bin/python -m pytest -q tests/test_sandbox.py
"""

import json
import os

from hfpipe.stages.eval import sandbox
from hfpipe.stages import eval as stage


def test_ordinary_code_runs_and_may_write_inside_its_folder():
    r = sandbox.run_python("open('out.txt', 'w').write('hi')\nprint(open('out.txt').read(), sum(range(10)))")
    assert r.passed and r.stdout.split() == ["hi", "45"], r


def test_infinite_loop_is_killed():
    r = sandbox.run_python("while True:\n    pass\n", timeout_s=1.5)
    assert r.timed_out and not r.passed and r.returncode is None


def test_network_is_blocked():
    code = ("import socket\n"
            "s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)\n"
            "s.settimeout(2)\n"
            "s.connect(('127.0.0.1', 9))\n"
            "print('connected')\n")
    r = sandbox.run_python(code)
    assert not r.passed and "connected" not in r.stdout
    assert "sandbox: socket" in r.stderr, r.stderr


def test_write_outside_its_folder_is_blocked(tmp_path):
    target = tmp_path / "escape.txt"
    for code in (f"open({str(target)!r}, 'w').write('x')",
                 f"import os\nos.chdir({str(tmp_path)!r})\nopen('escape.txt', 'a').write('x')",
                 f"import pathlib\npathlib.Path({str(target)!r}).write_text('x')"):
        r = sandbox.run_python(code)
        assert not r.passed and "outside the sandbox folder" in r.stderr, r.stderr
    assert not target.exists() and os.listdir(tmp_path) == []


def test_subprocesses_are_blocked():
    r = sandbox.run_python("import subprocess\nsubprocess.run(['true'])")
    assert not r.passed and "sandbox: subprocess.Popen" in r.stderr


def test_coding_items_pass_with_their_reference_solution_and_fail_without():
    docs = [json.loads(line) for line in (stage.TASKS_DIR / "coding" / "test.jsonl").read_text().splitlines()]
    assert len(docs) >= 20
    for d in docs:
        good = sandbox.run_python(d["prompt"] + d["canonical_solution"] + "\n" + d["tests"] + "\n")
        assert good.passed, (d["entry_point"], good.stderr)
    d = docs[0]
    assert not sandbox.run_python(d["prompt"] + "    return None\n\n" + d["tests"] + "\n").passed


def test_memory_is_limited_and_limits_cannot_be_raised():
    r = sandbox.run_python("x = bytearray(2 * 1024 ** 3)", memory_mb=256)
    assert not r.passed and "MemoryError" in r.stderr
    r = sandbox.run_python("import resource\nresource.setrlimit(resource.RLIMIT_AS, (-1, -1))")
    assert not r.passed and "not allowed to raise maximum limit" in r.stderr
