"""Start a daemon from Python: for tests, notebooks and ``vineyard.connect()`` with nothing set.

``start_vineyardd`` is a context manager yielding ``(process, socket, rpc_endpoint)``; the
daemon is stopped by its own process handle when the block ends.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import socket as _socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import IO, Any

__all__ = ["get_current_socket", "shutdown", "start_vineyardd", "try_init"]


def _wait_ready(proc: subprocess.Popen[bytes], path: str, timeout: float, log: IO[bytes]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code = proc.poll()
        if code is not None:
            log.seek(0)
            err = log.read().decode(errors="replace")
            raise RuntimeError(f"vineyardd exited unexpectedly with code {code}, error is: {err.strip()}")
        probe = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        try:
            probe.connect(path)
            return
        except OSError:
            time.sleep(0.02)
        finally:
            probe.close()
    proc.kill()
    proc.wait()
    raise RuntimeError(f"vineyardd did not start listening on {path} within {timeout:g} s")


@contextlib.contextmanager
def start_vineyardd(
    meta: str = "local",
    etcd_endpoints: Any = None,
    etcd_prefix: Any = None,
    vineyardd_path: Any = None,
    size: str | int = "256Mi",
    socket: str | None = None,
    rpc: bool = False,
    rpc_socket_port: int = 0,
    debug: bool = False,
    extra_args: list[str] | None = None,
    timeout: float = 30.0,
) -> Iterator[tuple[subprocess.Popen[bytes], str, str | None]]:
    """Run ``python -m vineyard`` for the duration of the block.

    Yields ``(process, socket_path, rpc_endpoint_or_None)``.
    """
    tmpdir = None
    if socket is None:
        tmpdir = tempfile.mkdtemp(prefix="vineyard-")
        socket = os.path.join(tmpdir, "vineyard.sock")
    cmd = [sys.executable, "-m", "vineyard", "--socket", socket, "--size", str(size), "--meta", meta]
    if rpc:
        cmd += ["--rpc", "--rpc-port", str(rpc_socket_port)]
    else:
        cmd += ["--norpc"]
    if debug:
        cmd += ["--log-level", "DEBUG"]
    if meta == "etcd":  # as upstream: without endpoints, the daemon starts an etcd of its own
        endpoints = ",".join(etcd_endpoints) if isinstance(etcd_endpoints, (list, tuple)) else etcd_endpoints
        cmd += ["--etcd-endpoints", str(endpoints)] if endpoints else ["--etcd-launch"]
        if etcd_prefix:
            cmd += ["--etcd-prefix", str(etcd_prefix)]
    cmd += list(extra_args or [])
    # the daemon's log goes to a file: a pipe nobody reads would block it once full
    log = tempfile.TemporaryFile(prefix="vineyardd-", suffix=".log")  # noqa: SIM115
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_ready(proc, socket, timeout, log)
        endpoint = None
        if rpc:
            import vineyard

            with vineyard.connect(socket) as client:
                endpoint = client.rpc_endpoint
        yield proc, socket, endpoint
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()
        if tmpdir is not None:
            with contextlib.suppress(OSError):
                os.rmdir(tmpdir)


_started: list[tuple[contextlib.AbstractContextManager[Any], str]] = []


def try_init() -> str:
    """Start a private daemon for this process and export ``VINEYARD_IPC_SOCKET``.

    Raises
    ------
    ValueError
        If ``VINEYARD_IPC_SOCKET`` is already set.
    """
    if _started:
        return _started[0][1]
    if os.environ.get("VINEYARD_IPC_SOCKET"):
        raise ValueError("VINEYARD_IPC_SOCKET is already set: vineyard is already initialized")
    ctx = start_vineyardd(meta="local", rpc=False, size="1Gi")
    _, sock, _ = ctx.__enter__()
    _started.append((ctx, sock))
    os.environ["VINEYARD_IPC_SOCKET"] = sock
    return sock


def get_current_socket() -> str:
    if not _started:
        raise ValueError("Vineyard has not been initialized, use vineyard.try_init() to launch vineyard.")
    return _started[0][1]


def shutdown() -> None:
    """Stop the daemon :func:`try_init` started, if any."""
    while _started:
        ctx, sock = _started.pop()
        ctx.__exit__(None, None, None)
        if os.environ.get("VINEYARD_IPC_SOCKET") == sock:
            del os.environ["VINEYARD_IPC_SOCKET"]


atexit.register(shutdown)
