"""``--etcd-launch``: a private, single-member etcd on loopback, for development and tests.

The process listens on 127.0.0.1 only, on free client and peer ports, with its data in a
temporary directory that :meth:`EtcdProcess.stop` removes. It is started in its own
session and stopped by its own PID (SIGTERM, then SIGKILL), never by name.

The flags shorten the raft heartbeat and election timeout, so a fresh member is healthy in
well under a second rather than after the default one-second election, and they raise
``--max-txn-ops`` so a large persist fits in one transaction::

    with EtcdProcess() as etcd:
        backend = EtcdBackend(etcd.endpoint, prefix="vineyard/S0000000000000000")
"""

from __future__ import annotations

import atexit
import http.client
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from types import TracebackType

from vineyard.errors import EtcdErrorException

__all__ = ["EtcdProcess", "find_etcd", "free_port"]

_LOOPBACK = "127.0.0.1"


def find_etcd(binary: str | None = None) -> str | None:
    """The etcd executable: ``binary``, else ``$VINEYARD_ETCD``, else ``etcd`` on ``PATH``."""
    candidate = binary or os.environ.get("VINEYARD_ETCD") or "etcd"
    return shutil.which(candidate)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bind to port 0, then release)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_LOOPBACK, 0))
        return int(sock.getsockname()[1])


class EtcdProcess:
    """One etcd member on loopback, owned by this process.

    Parameters
    ----------
    binary
        The etcd executable; found with :func:`find_etcd` when omitted.
    data_dir
        Where etcd keeps its WAL and snapshots; a fresh temporary directory (removed by
        :meth:`stop`) when omitted.
    max_txn_ops
        etcd's ``--max-txn-ops``; its default of 128 would reject a large persist.
    auto_compaction
        Hours of history etcd keeps (``--auto-compaction-retention``); 0 keeps everything.
    timeout
        Seconds to wait for ``/health`` after the start.

    Raises
    ------
    EtcdErrorException
        No etcd binary, or it exited or stayed unhealthy; the message carries its log's tail.
    """

    def __init__(
        self,
        binary: str | None = None,
        *,
        data_dir: str | None = None,
        max_txn_ops: int = 10000,
        auto_compaction: int = 0,
        timeout: float = 20.0,
    ) -> None:
        found = find_etcd(binary)
        if found is None:
            raise EtcdErrorException(
                "no etcd executable on PATH (on Debian: apt-get install etcd-server), "
                "or set VINEYARD_ETCD to its path"
            )
        self.binary = found
        self._tmp = tempfile.mkdtemp(prefix="vineyard-etcd-")
        self.data_dir = data_dir or os.path.join(self._tmp, "data")
        self.client_port = free_port()
        self.peer_port = free_port()
        self._max_txn_ops = max_txn_ops
        self._auto_compaction = auto_compaction
        self._timeout = timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_path = os.path.join(self._tmp, "etcd.log")
        atexit.register(self.stop)
        self.start()

    @property
    def endpoint(self) -> str:
        """The client URL, ``http://127.0.0.1:<port>``."""
        return f"http://{_LOOPBACK}:{self.client_port}"

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def command(self) -> list[str]:
        client = self.endpoint
        peer = f"http://{_LOOPBACK}:{self.peer_port}"
        return [
            self.binary,
            "--name", "vy0",
            "--data-dir", self.data_dir,
            "--listen-client-urls", client,
            "--advertise-client-urls", client,
            "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"vy0={peer}",
            "--heartbeat-interval", "10",
            "--election-timeout", "100",
            "--max-txn-ops", str(self._max_txn_ops),
            "--auto-compaction-retention", str(self._auto_compaction),
            "--log-level", "error",
            "--logger", "zap",
        ]  # fmt: skip

    def start(self) -> None:
        """Start (or restart, on the same ports and data) and wait until healthy."""
        if self.proc is not None and self.proc.poll() is None:
            return
        with open(self._log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # so a terminal's Ctrl-C reaches us, not etcd directly
            )
        self._wait_healthy()

    def _wait_healthy(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + self._timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._fail(f"etcd exited with status {self.proc.returncode}")
            if self._healthy():
                return
            time.sleep(0.01)
        self._fail(f"etcd at {self.endpoint} was not healthy after {self._timeout:g} s")

    def _healthy(self) -> bool:
        conn = http.client.HTTPConnection(_LOOPBACK, self.client_port, timeout=1.0)
        try:
            conn.request("GET", "/health")
            response = conn.getresponse()
            return response.status == 200 and b'"true"' in response.read()
        except OSError:
            return False
        finally:
            conn.close()

    def _fail(self, message: str) -> None:
        tail = self.log()[-2000:]
        self.stop()
        raise EtcdErrorException(f"{message}; log tail:\n{tail}")

    def log(self) -> str:
        """What etcd wrote to its stdout and stderr so far."""
        try:
            with open(self._log_path, "rb") as log:
                return log.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def kill(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        """Stop the process but keep its data, ports and log, so :meth:`start` can resume it."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def stop(self) -> None:
        """Stop etcd by its PID and remove its temporary files. Safe to call twice."""
        self.kill()
        atexit.unregister(self.stop)
        # Our temporary directory holds the log and, unless the caller gave one, the data.
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> EtcdProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
