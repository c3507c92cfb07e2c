"""Starting daemons from Python: connect() with nothing configured, try_init/shutdown,
start_vineyardd, and how connect() finds a daemon (arguments, environment, config file)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import psutil
import pytest

import vineyard
from vineyard.deploy.local import start_vineyardd


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VINEYARD_")}
    env.update(extra)
    return env


def run(code: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=env if env is not None else clean_env(), timeout=timeout)


def gone(pid: int, timeout: float = 30) -> bool:
    """Whether the daemon ``pid`` exits by itself; if not, it is killed (by that PID)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    return False


@pytest.fixture(autouse=True)
def _no_site_config() -> None:
    for path in ("/var/run/vineyard-config.yaml", "/var/run/vineyard/vineyard-config.yaml"):
        if os.path.exists(path):
            pytest.skip(f"{path} exists on this machine")


def test_connect_with_nothing_configured_starts_a_private_daemon() -> None:
    out = run("""
        import os, psutil, numpy as np, vineyard
        client = vineyard.connect()
        sock = os.environ["VINEYARD_IPC_SOCKET"]
        assert sock == client.ipc_socket == vineyard.get_current_socket(), sock
        assert client.get(client.put(np.arange(4))).tolist() == [0, 1, 2, 3]
        again = vineyard.connect()                  # reuses the daemon it started
        assert again.ipc_socket == sock
        assert vineyard.get(vineyard.put("x")) == "x"
        daemons = [p for p in psutil.Process().children() if "vineyard" in " ".join(p.cmdline())]
        assert len(daemons) == 1, daemons
        print(daemons[0].pid, sock, flush=True)
        client.close(); again.close()
        vineyard.shutdown()
        assert "VINEYARD_IPC_SOCKET" not in os.environ
        assert not os.path.exists(sock)
        print("shut", flush=True)
    """)
    assert out.returncode == 0, out.stderr
    first, second = out.stdout.split("\n")[:2]
    pid, _ = first.split()
    assert second == "shut"
    assert gone(int(pid))
    assert "No vineyard socket or endpoint is specified" in out.stderr or out.stderr == ""


def test_the_private_daemon_stops_when_its_process_exits() -> None:
    out = run("""
        import psutil, vineyard
        client = vineyard.connect()
        child = [p for p in psutil.Process().children() if "vineyard" in " ".join(p.cmdline())][0]
        print(child.pid, client.ipc_socket, flush=True)
    """)
    assert out.returncode == 0, out.stderr
    pid, sock = out.stdout.split()
    assert gone(int(pid))  # atexit stopped it
    assert not os.path.exists(sock)


def test_try_init_refuses_when_a_socket_is_already_configured(store) -> None:
    out = run("""
        import vineyard
        try:
            vineyard.try_init()
        except ValueError as exc:
            print("ValueError", exc)
        try:
            vineyard.get_current_socket()
        except ValueError as exc:
            print("ValueError", exc)
    """, env=clean_env(VINEYARD_IPC_SOCKET=store.socket))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("ValueError")
    assert "VINEYARD_IPC_SOCKET" in lines[0]
    assert lines[1].startswith("ValueError")
    assert "try_init" in lines[1]


def test_try_init_then_shutdown_in_process(monkeypatch) -> None:
    from vineyard.deploy import local

    for var in ("VINEYARD_IPC_SOCKET", "VINEYARD_RPC_ENDPOINT", "VINEYARD_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    assert not local._started
    sock = vineyard.try_init()
    try:
        assert os.environ["VINEYARD_IPC_SOCKET"] == sock
        assert vineyard.try_init() == sock  # one per process
        with vineyard.connect() as client:
            assert client.ipc_socket == sock
    finally:
        vineyard.shutdown()
    assert "VINEYARD_IPC_SOCKET" not in os.environ
    assert not os.path.exists(sock)
    with pytest.raises(ValueError, match="not been initialized"):
        vineyard.get_current_socket()


def test_start_vineyardd_context_manager() -> None:
    with start_vineyardd(size="128Mi", rpc=True) as (proc, sock, endpoint):
        assert proc.poll() is None
        assert endpoint is not None
        assert endpoint.startswith("127.0.0.1:")
        with vineyard.connect(sock) as client:
            assert client.status.memory_limit == 128 << 20
            object_id = client.put(np.arange(3))
        host, port = endpoint.rsplit(":", 1)
        with vineyard.connect(host, int(port)) as remote:
            assert remote.get(object_id).tolist() == [0, 1, 2]
    assert proc.poll() == 0
    assert not os.path.exists(sock)


def test_start_vineyardd_reports_a_failing_daemon(tmp_path) -> None:
    blocker = tmp_path / "not-a-socket"
    blocker.write_text("x")
    with pytest.raises(RuntimeError, match=r"exited unexpectedly with code 1.*not a socket"), \
            start_vineyardd(socket=str(blocker)):
        pass


def test_start_vineyardd_survives_a_chatty_daemon() -> None:
    """The daemon's log must not fill a pipe nobody reads and freeze it."""
    import socket as sk

    with start_vineyardd(size="64Mi", debug=True) as (_, sock, _):
        for _ in range(400):  # each garbage connection logs a line or two
            s = sk.socket(sk.AF_UNIX, sk.SOCK_STREAM)
            s.connect(sock)
            s.sendall(b"\xff" * 16 + b"garbage" * 100)
            s.close()
        with vineyard.connect(sock) as client:
            assert client.get(client.put(1)) == 1


# -- finding a daemon ----------------------------------------------------------------------


def test_vineyard_ipc_socket_environment(store, monkeypatch) -> None:
    monkeypatch.setenv("VINEYARD_IPC_SOCKET", store.socket)
    with vineyard.connect() as client:
        assert client.is_ipc
        assert client.ipc_socket == store.socket


def test_vineyard_rpc_endpoint_environment(store, monkeypatch) -> None:
    monkeypatch.delenv("VINEYARD_IPC_SOCKET", raising=False)
    monkeypatch.setenv("VINEYARD_RPC_ENDPOINT", f"127.0.0.1:1,{store.rpc_endpoint}")  # first one is dead
    with vineyard.connect() as client:
        assert client.is_rpc
        assert client.rpc_endpoint == store.rpc_endpoint


def test_connect_forms(store) -> None:
    host, port = store.rpc_endpoint.rsplit(":", 1)
    for client in (
        vineyard.connect(store.socket),
        vineyard.connect(socket=store.socket),
        vineyard.Client(store.socket),
        vineyard.IPCClient(store.socket),
    ):
        assert client.is_ipc
        client.close()
    for client in (
        vineyard.connect(host, int(port)),
        vineyard.connect(host, port),
        vineyard.connect(host=host, port=int(port)),
        vineyard.connect(endpoint=(host, int(port))),
        vineyard.connect(endpoint=store.rpc_endpoint),
        vineyard.RPCClient(host, int(port)),
    ):
        assert client.is_rpc
        client.close()


def test_config_file(store, tmp_path, monkeypatch) -> None:
    pytest.importorskip("yaml")
    monkeypatch.delenv("VINEYARD_IPC_SOCKET", raising=False)
    (tmp_path / "vineyard-config.yaml").write_text(f"Vineyard:\n  IPCSocket: {store.socket}\n")
    monkeypatch.setenv("VINEYARD_CONFIG", str(tmp_path))
    with vineyard.connect() as client:
        assert client.ipc_socket == store.socket
    with vineyard.connect(config=str(tmp_path / "vineyard-config.yaml")) as client:
        assert client.ipc_socket == store.socket


def test_connect_to_nothing_fails_clearly(tmp_path) -> None:
    missing = str(tmp_path / "nobody-home.sock")
    with pytest.raises(vineyard.ConnectionFailedException) as info:
        vineyard.connect(missing)
    assert missing in str(info.value)
    assert "python -m vineyard --socket" in str(info.value)
    assert isinstance(info.value, ConnectionError)
    with socket_closed_port() as port, pytest.raises(vineyard.ConnectionFailedException, match=f"127.0.0.1:{port}"):
        vineyard.connect("127.0.0.1", port)


class socket_closed_port:
    def __enter__(self) -> int:
        import socket as sk

        s = sk.socket()
        s.bind(("127.0.0.1", 0))
        self.port = s.getsockname()[1]
        s.close()
        return self.port

    def __exit__(self, *exc: object) -> None:
        pass
