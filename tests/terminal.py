"""Run a command in a pseudo-terminal, as a person would in theirs, and read back what they would see.

    from terminal import run_in_pty, screen_lines
"""

from __future__ import annotations

import fcntl
import os
import re
import select
import struct
import subprocess
import termios
import time
from dataclasses import dataclass
from pathlib import Path

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@dataclass
class PtyResult:
    returncode: int
    transcript: str  # every byte written to the terminal (stdout and stderr together), decoded

    @property
    def stderr(self) -> str:
        """What the terminal shows (screen_text): the tests that read a captured stderr read this."""
        return screen_text(self.transcript)

    stdout = stderr


def run_in_pty(cmd: list[str], cwd: Path, env: dict, timeout: float = 1800, columns: int = 160) -> PtyResult:
    """``cmd`` with stdin, stdout and stderr on a new pseudo-terminal ``columns`` wide; the whole transcript."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    proc = subprocess.Popen(cmd, cwd=cwd, env={**env, "TERM": "xterm-256color"}, stdin=slave, stdout=slave,
                            stderr=slave, start_new_session=True)
    os.close(slave)
    chunks, deadline = [], time.monotonic() + timeout
    try:
        while True:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: every process holding the terminal has closed it
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break  # exited, and nothing more to read (a leftover grandchild may hold the terminal open)
            if time.monotonic() > deadline:
                proc.kill()
                raise TimeoutError(f"{cmd} still running after {timeout}s")
        proc.wait(timeout=60)
    finally:
        os.close(master)
    return PtyResult(proc.returncode, b"".join(chunks).decode("utf-8", "replace"))


def screen_lines(transcript: str) -> list[str]:
    """The lines a terminal shows once the command is done: each line as its last redraw left it (text after the
    last carriage return, escape sequences removed). A line still being redrawn when the output ended counts too."""
    lines = []
    for raw in transcript.split("\n"):
        text = ANSI.sub("", raw).rstrip("\r")
        lines.append(text.split("\r")[-1])
    if lines and not lines[-1]:
        lines.pop()  # the newline ending the last line
    return lines


def screen_text(transcript: str) -> str:
    return "\n".join(screen_lines(transcript)) + "\n"
