"""Run untrusted Python (model-written code) in a separate, restricted interpreter.

Layers, all applied on every run:

- a fresh ``python -I -B -S`` process (isolated mode: no PYTHON* env vars, no user site, no site-packages, no
  bytecode writes) in its own session, started in a new temporary folder that is deleted afterwards; its
  environment is emptied except ``HOME``/``TMPDIR`` = that folder;
- a wall-clock timeout that kills the whole process group, plus ``RLIMIT_CPU``;
- resource limits: address space (``RLIMIT_AS``), file size (``RLIMIT_FSIZE``), open files, no core dumps;
- a CPython audit hook (PEP 578), installed before the code runs and impossible to remove from Python, that refuses
  sockets (creation, connect, bind, DNS), new processes (subprocess, os.system/exec/spawn/fork), ctypes, and any
  file write, create, rename, delete, link or permission change outside the temporary folder.

Where the kernel allows unprivileged namespaces, the process also runs in an empty network namespace
(``unshare --net --map-root-user``), so even native code gets no network. Audit hooks are not a complete security
boundary on their own; together with the rlimits and the throw-away folder they are meant for scoring model
completions of small exercises, not for hostile code on a machine with secrets.
"""

from __future__ import annotations

import functools
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

# Runs in the child before the untrusted code: read the code, set the rlimits (soft = hard, so the code cannot raise
# them), install the hook, then exec the code as __main__. argv: script, cpu seconds, memory MiB, file MiB.
_PRELUDE = r'''
import os, resource, sys
_root = os.path.realpath(os.getcwd())
_code = open(sys.argv[1], encoding="utf-8").read()
for _lim, _val in ((resource.RLIMIT_CPU, int(sys.argv[2])), (resource.RLIMIT_AS, int(sys.argv[3]) << 20),
                   (resource.RLIMIT_FSIZE, int(sys.argv[4]) << 20), (resource.RLIMIT_NOFILE, 64),
                   (resource.RLIMIT_CORE, 0)):
    resource.setrlimit(_lim, (_val, _val))
_WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
_DENY = ("socket.", "subprocess.", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty",
         "os.startfile", "ctypes.", "pty.", "winreg.", "_winapi.")
_DENY_EXACT = {"socket.__new__", "socket.connect", "socket.bind", "socket.getaddrinfo", "socket.sendto",
               "socket.gethostbyname", "os.kill", "os.killpg"}
_PATH_EVENTS = {"os.remove": 1, "os.rmdir": 1, "os.mkdir": 1, "os.rename": 2, "os.replace": 2, "os.link": 2,
                "os.symlink": 2, "os.chmod": 1, "os.chown": 1, "os.utime": 1, "os.truncate": 1, "os.chdir": 0,
                "shutil.rmtree": 1, "shutil.copyfile": 2, "shutil.move": 2, "os.chflags": 1, "os.lchmod": 1}

def _inside(p):
    if isinstance(p, int):
        return True  # an already open descriptor: it was checked when opened
    p = os.fsdecode(p)
    return os.path.realpath(p) == _root or os.path.realpath(p).startswith(_root + os.sep)

def _hook(event, args):
    if event in _DENY_EXACT or event.startswith(_DENY):
        raise PermissionError(f"sandbox: {event} is not allowed")
    if event == "open":
        path, mode, flags = args
        writing = (mode is not None and any(c in str(mode) for c in "wax+")) or (flags or 0) & _WRITE
        if writing and path is not None and not _inside(path):
            raise PermissionError(f"sandbox: writing {path!r} outside the sandbox folder is not allowed")
    elif event in _PATH_EVENTS:
        n = _PATH_EVENTS[event]
        for p in args[:max(n, 1)] if n else ():
            if p is not None and not _inside(p):
                raise PermissionError(f"sandbox: {event} on {p!r} outside the sandbox folder is not allowed")

sys.addaudithook(_hook)
exec(compile(_code, "solution.py", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
'''


@dataclass(frozen=True)
class Result:
    returncode: int | None  # None when it was killed for running too long
    stdout: str
    stderr: str
    timed_out: bool

    @property
    def passed(self) -> bool:
        return self.returncode == 0 and not self.timed_out


@functools.lru_cache(maxsize=1)
def _netns_prefix() -> tuple[str, ...]:
    """``unshare --net --map-root-user`` if the kernel lets this user make namespaces, else () (audit hook only)."""
    exe = shutil.which("unshare")
    if not exe or not sys.platform.startswith("linux"):
        return ()
    try:
        ok = subprocess.run([exe, "--net", "--map-root-user", sys.executable, "-I", "-S", "-c", "pass"],
                            capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.SubprocessError):
        ok = False
    return (exe, "--net", "--map-root-user") if ok else ()


def network_namespace_available() -> bool:
    return bool(_netns_prefix())


def run_python(code: str, *, timeout_s: float = 5.0, memory_mb: int = 512, file_mb: int = 8) -> Result:
    """Run ``code`` as a script in a fresh sandboxed interpreter; never raises for anything the code does."""
    with tempfile.TemporaryDirectory(prefix="hfpipe-sandbox-") as tmp:
        script = Path(tmp) / "solution.py"
        script.write_text(code, encoding="utf-8")
        cmd = [*_netns_prefix(), sys.executable, "-I", "-B", "-S", "-c", _PRELUDE, str(script),
               str(max(1, math.ceil(timeout_s))), str(memory_mb), str(file_mb)]
        env = {"HOME": tmp, "TMPDIR": tmp, "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONIOENCODING": "utf-8"}
        proc = subprocess.Popen(cmd, cwd=tmp, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            out, err = proc.communicate(timeout=timeout_s)
            return Result(proc.returncode, out[-4000:], err[-4000:], timed_out=False)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            out, err = proc.communicate()
            return Result(None, out[-4000:], err[-4000:], timed_out=True)
