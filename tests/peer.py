"""A second Python process driven line by line: the other side of cross-process tests."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import textwrap
import time

__all__ = ["Peer"]

PRELUDE = """
import gc, os, sys, time
import numpy as np
import vineyard

def say(*parts):
    print(*parts, flush=True)

def wait_for(word):
    line = sys.stdin.readline().strip()
    assert line == word, f"expected {word!r}, got {line!r}"
"""


class Peer:
    """``python -c <code>`` with pipes; ``expect()`` reads its next line within a timeout."""

    def __init__(self, code: str, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", PRELUDE + textwrap.dedent(code)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env={**os.environ, **(env or {})},
        )
        self._buf = b""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def expect(self, prefix: str = "", timeout: float = 60.0) -> str:
        """The peer's next line (which must start with ``prefix``)."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no line from the peer within {timeout} s")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise AssertionError(f"the peer exited ({self.proc.wait()}): {self.stderr()}")
                self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        text = line.decode()
        assert text.startswith(prefix), f"expected {prefix!r}, got {text!r}; stderr: {self.stderr()}"
        return text[len(prefix):].strip()

    def send(self, word: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(word.encode() + b"\n")
        self.proc.stdin.flush()

    def stderr(self) -> str:
        if self.proc.poll() is None or self.proc.stderr is None:
            return "(still running)"
        return self.proc.stderr.read().decode(errors="replace")

    def wait(self, timeout: float = 60.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def close(self) -> None:
        self.kill()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()

    def __enter__(self) -> Peer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
