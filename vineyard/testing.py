"""Helpers for testing code that uses vineyard: a daemon you own, round trips, zero-copy checks.

Importable by adapters and third parties::

    from vineyard.testing import Daemon, assert_roundtrip
    with Daemon(size="256Mi") as daemon:
        client = vineyard.connect(daemon.socket)
        assert_roundtrip(client, my_value)
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

__all__ = [
    "Daemon",
    "address_in_store",
    "assert_roundtrip",
    "rss_anon",
    "store_mappings",
    "wait_until",
]


class Daemon:
    """A ``python -m vineyard`` process on a private socket, stopped by its own PID."""

    def __init__(
        self,
        size: str = "512Mi",
        *,
        rpc: bool = False,
        socket: str | None = None,
        args: list[str] | None = None,
        env: dict[str, str] | None = None,
        timeout: float = 30.0,
    ) -> None:
        self._tmp = tempfile.mkdtemp(prefix="vineyard-test-")
        self.socket = socket or os.path.join(self._tmp, "vineyard.sock")
        self.cmd = [sys.executable, "-m", "vineyard", "--socket", self.socket, "--size", str(size)]
        self.cmd += ["--rpc", "--rpc-port", "0"] if rpc else ["--norpc"]
        self.cmd += list(args or [])
        self._log = open(os.path.join(self._tmp, "daemon.log"), "w+b")  # noqa: SIM115
        self._final_log: str | None = None
        self.proc = subprocess.Popen(
            self.cmd, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
        self.rpc_endpoint: str | None = None
        self._wait(timeout)
        if rpc:
            import vineyard

            with vineyard.connect(self.socket) as client:
                self.rpc_endpoint = client.rpc_endpoint

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def log(self) -> str:
        """Everything the daemon printed (kept after it stops and its files are gone)."""
        if self._final_log is not None:
            return self._final_log
        self._log.flush()
        with open(self._log.name, "rb") as f:
            return f.read().decode(errors="replace")

    def _wait(self, timeout: float) -> None:
        import socket as sk

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the daemon exited with {self.proc.returncode}: {self.log}")
            probe = sk.socket(sk.AF_UNIX, sk.SOCK_STREAM)
            try:
                probe.connect(self.socket)
                # the socket listens a moment before the daemon says so: wait for its words
                if " listening on " in self.log:
                    return
            except OSError:
                pass
            finally:
                probe.close()
            time.sleep(0.02)
        self.kill()
        raise RuntimeError(f"the daemon did not listen on {self.socket} within {timeout} s: {self.log}")

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM by PID, wait; SIGKILL if it does not stop. Returns the exit status."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._cleanup()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self._cleanup()

    def _cleanup(self) -> None:
        """Keep the log in memory, then remove the private directory (log, stale socket)."""
        if self._final_log is None:
            self._final_log = self.log
            self._log.close()
            shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> Daemon:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def assert_roundtrip(client: Any, value: Any, check: Callable[[Any, Any], None] | None = None, **kw: Any) -> Any:
    """Put ``value``, get it back, compare with the right equality for its type."""
    object_id = client.put(value, **kw)
    result = client.get(object_id)
    if check is not None:
        check(value, result)
    else:
        _default_check(value, result)
    return result


def _default_check(expected: Any, actual: Any) -> None:
    import numpy as np

    mod = type(expected).__module__.split(".")[0]
    if mod == "pandas":
        import pandas as pd

        if isinstance(expected, pd.DataFrame):
            pd.testing.assert_frame_equal(actual, expected)
        elif isinstance(expected, pd.Series):
            pd.testing.assert_series_equal(actual, expected)
        elif isinstance(expected, pd.Index):
            pd.testing.assert_index_equal(actual, expected, exact=True)
        else:
            assert actual == expected
    elif mod == "pyarrow":
        assert actual.equals(expected), f"{actual!r} != {expected!r}"
        if hasattr(expected, "type"):
            assert actual.type == expected.type
    elif isinstance(expected, np.ndarray):
        assert actual.dtype == expected.dtype, (actual.dtype, expected.dtype)
        assert actual.shape == expected.shape, (actual.shape, expected.shape)
        np.testing.assert_array_equal(actual, expected)
    else:
        assert actual == expected, f"{actual!r} != {expected!r}"


def store_mappings() -> list[tuple[int, int, str]]:
    """``(start, end, path)`` of this process's mappings of the store's shared memory."""
    out = []
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split(maxsplit=5)
            if len(parts) == 6 and parts[5].startswith("/memfd:vineyard-"):
                start, end = (int(x, 16) for x in parts[0].split("-"))
                out.append((start, end, parts[5].strip()))
    return out


def address_in_store(address: int, mappings: list[tuple[int, int, str]] | None = None) -> bool:
    """Whether ``address`` lies in a mapping of the store's shared memory."""
    return any(start <= address < end for start, end, _ in (mappings or store_mappings()))


def rss_anon() -> int:
    """This process's private resident memory (``RssAnon``), in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no RssAnon in /proc/self/status")


def wait_until(condition: Callable[[], Any], timeout: float = 20.0, what: str = "a condition",
               interval: float = 0.02) -> Any:
    """Poll ``condition`` until it returns something true, and return that.

    Raises ``AssertionError`` after ``timeout`` seconds: a bound on a hang, not a timing check.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        children.setdefault(ppid, []).append(int(entry))
    found, todo = {pid}, [pid]
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _socket_inodes(pids: set[int]) -> dict[int, int]:
    inodes: dict[int, int] = {}  # inode -> pid
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes[int(target[8:-1])] = pid
    return inodes


def _command(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()[:200]
    except OSError:
        return "?"


def _is_loopback(hex_address: str) -> bool:
    raw = bytes.fromhex(hex_address)
    if len(raw) == 4:  # /proc/net/tcp: one little-endian word
        return raw[::-1][0] == 127
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))  # tcp6: four such words
    if words == bytes(15) + b"\x01":
        return True  # ::1
    return words[:12] == bytes(10) + b"\xff\xff" and words[12] == 127  # ::ffff:127.x.x.x


def non_loopback_listeners(root_pid: int | None = None) -> list[str]:
    """TCP sockets listening on an address outside 127.0.0.0/8 and ::1, held by ``root_pid``
    (default: this process) or any of its descendants, as ``"address:port (pid …)"``."""
    pids = _descendants(os.getpid() if root_pid is None else root_pid)
    owned = _socket_inodes(pids)
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            local, state, inode = fields[1], fields[3], int(fields[9])
            if state != "0A" or inode not in owned:  # 0A: LISTEN
                continue
            address, port = local.rsplit(":", 1)
            if not _is_loopback(address):
                pid = owned[inode]
                found.append(f"{address}:{int(port, 16)} ({table.rsplit('/', 1)[1]}, pid {pid}: {_command(pid)})")
    return found
