"""``python -m vineyard``: flags, sizes, what it prints, socket checks, signals. Real processes."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

import numpy as np
import pytest

import vineyard
from vineyard.store.cli import DEFAULT_SOCKET, build_parser, parse_size

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30


def run_cli(*args: str, timeout: float = 60, user: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the daemon expecting it to exit by itself (an error), bounded by ``timeout``."""
    cmd = [*(user or []), sys.executable, "-m", "vineyard", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.fixture
def tmp_dir() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="vineyard-cli-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


# -- sizes ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("256Mi", 256 * MiB), ("256M", 256 * MiB), ("256m", 256 * MiB), ("256MiB", 256 * MiB),
        ("4G", 4 * GiB), ("4Gi", 4 * GiB), ("1.5Gi", 3 * GiB // 2), ("1.5G", 3 * GiB // 2),
        ("1K", 1024), ("1024", 1024), ("2T", 2 << 40), (" 8Mi ", 8 * MiB), ("0.5Ki", 512),
    ],
)
def test_parse_size(text: str, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "abc", "-1", "0", "0Mi", "12X", "1.5.5G", "Mi", "1 0M", "G4"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="memory size"):
        parse_size(text)


@pytest.mark.parametrize("bad", ["lots", "-5Gi", "12Q"])
def test_bad_size_is_rejected_clearly_by_the_daemon(tmp_dir: str, bad: str) -> None:
    sock = os.path.join(tmp_dir, "v.sock")
    out = run_cli("--socket", sock, f"--size={bad}", "--norpc")
    assert out.returncode == 2
    assert "--size" in out.stderr
    assert "memory size" in out.stderr
    assert repr(bad) in out.stderr
    assert "Traceback" not in out.stderr
    assert not os.path.exists(sock)


@pytest.mark.parametrize(("size", "limit"), [("256Mi", 256 * MiB), ("4G", 4 * GiB), ("1.5Gi", 3 * GiB // 2)])
def test_daemon_size_is_its_memory_limit(make_daemon, size: str, limit: int) -> None:
    daemon = make_daemon(size=size)
    with vineyard.connect(daemon.socket) as client:
        assert client.status.memory_limit == limit
    text = f"{limit / MiB:.1f} MiB" if limit < GiB else f"{limit / GiB:.1f} GiB"
    assert f"memory limit {text}" in daemon.log


# -- flags ---------------------------------------------------------------------------------


def test_defaults() -> None:
    args = build_parser().parse_args([])
    assert args.socket == DEFAULT_SOCKET == "/var/run/vineyard.sock"
    assert args.rpc is True
    assert args.rpc_port == 9600
    assert args.rpc_host == "127.0.0.1"
    assert args.meta == "local"
    assert args.socket_mode == 0o600
    assert args.log_level == "INFO"


@pytest.mark.parametrize(
    ("argv", "attr", "value"),
    [
        (["--rpc_socket_port", "1234"], "rpc_port", 1234),
        (["--rpc_socket_port=1234"], "rpc_port", 1234),
        (["--rpc-port", "0"], "rpc_port", 0),
        (["--norpc"], "rpc", False),
        (["--norpc", "--rpc"], "rpc", True),
        (["--meta", "local"], "meta", "local"),
        (["--meta=local"], "meta", "local"),
        (["--log_level", "debug"], "log_level", "debug"),
        (["--socket_mode", "0660"], "socket_mode", 0o660),
        (["--rpc_host", "127.0.0.2"], "rpc_host", "127.0.0.2"),
        (["--allocator", "dlmalloc"], "allocator", "dlmalloc"),  # accepted, as upstream's
    ],
)
def test_flag_spellings(argv: list[str], attr: str, value: object) -> None:
    assert getattr(build_parser().parse_args(argv), attr) == value


def test_help_and_version() -> None:
    out = run_cli("--help")
    assert out.returncode == 0
    for flag in ("--socket", "--size", "--norpc", "--rpc-port", "--meta", "--log-level", "--socket-mode"):
        assert flag in out.stdout
    out = run_cli("--version")
    assert out.returncode == 0
    assert vineyard.__version__ in out.stdout


def test_unknown_meta_backend_is_refused(tmp_dir: str) -> None:
    out = run_cli("--socket", os.path.join(tmp_dir, "v.sock"), "--meta", "zookeeper")
    assert out.returncode == 2
    assert "--meta" in out.stderr


def test_prints_where_it_listens_and_its_size(make_daemon) -> None:
    daemon = make_daemon(size="256Mi", rpc=True)
    log = daemon.log
    assert daemon.socket in log
    assert daemon.rpc_endpoint is not None
    assert daemon.rpc_endpoint in log
    assert "256.0 MiB" in log
    assert daemon.rpc_endpoint.startswith("127.0.0.1:")  # loopback unless --rpc-host says otherwise


def test_norpc_listens_on_no_port(make_daemon) -> None:
    daemon = make_daemon(rpc=False)
    assert "RPC off" in daemon.log
    with vineyard.connect(daemon.socket) as client:
        assert client.rpc_endpoint == "0.0.0.0:0"
    import psutil

    assert [c for c in psutil.Process(daemon.pid).net_connections("inet") if c.status == "LISTEN"] == []


def test_rpc_host_flag(make_daemon) -> None:
    daemon = make_daemon(rpc=True, args=["--rpc-host", "127.0.0.2"])
    assert daemon.rpc_endpoint is not None
    assert daemon.rpc_endpoint.startswith("127.0.0.2:")
    host, port = daemon.rpc_endpoint.rsplit(":", 1)
    with vineyard.connect(host, int(port)) as client:
        assert client.is_rpc
        assert client.get(client.put(7)) == 7
    with pytest.raises(vineyard.ConnectionFailedException):
        vineyard.connect("127.0.0.1", int(port))  # not bound there


def test_default_rpc_port_is_9600(make_daemon) -> None:
    probe = socket.socket()
    try:
        probe.bind(("127.0.0.1", 9600))
    except OSError:
        pytest.skip("port 9600 is taken on this machine")
    finally:
        probe.close()
    try:
        daemon = make_daemon(rpc=False, args=["--rpc"])  # --rpc after --norpc, no port given
    except RuntimeError as exc:
        if "127.0.0.1:9600" in str(exc):
            pytest.skip("port 9600 was taken meanwhile")
        raise
    with vineyard.connect(daemon.socket) as client:
        assert client.rpc_endpoint == "127.0.0.1:9600"


def test_underscore_rpc_port_and_log_level(make_daemon) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    args = ["--rpc", "--rpc_socket_port", str(port), "--log_level", "DEBUG", "--meta", "local"]
    daemon = make_daemon(rpc=False, args=args)
    with vineyard.connect("127.0.0.1", port) as client:
        assert client.put(1) is not None
    assert f"127.0.0.1:{port}" in daemon.log


def test_log_level_warning_is_quiet_on_info(make_daemon) -> None:
    daemon = make_daemon(args=["--log-level", "WARNING"])
    daemon.stop()
    assert "stopped" not in daemon.log  # an INFO line
    loud = make_daemon(args=["--log-level", "INFO"])
    loud.stop()
    assert "stopped" in loud.log


def test_rpc_port_in_use_is_a_clear_error(tmp_dir: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        sock = os.path.join(tmp_dir, "v.sock")
        out = run_cli("--socket", sock, "--size", "64Mi", "--rpc", "--rpc-port", str(port))
    assert out.returncode == 1
    assert f"127.0.0.1:{port}" in out.stderr
    assert "in use" in out.stderr
    assert "--rpc-port" in out.stderr
    assert "Traceback" not in out.stderr
    assert not os.path.exists(sock)  # the IPC socket it bound first is cleaned up


# -- the socket path -----------------------------------------------------------------------


def _unprivileged() -> list[str]:
    if shutil.which("setpriv"):
        return ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
    if shutil.which("runuser"):
        return ["runuser", "-u", "nobody", "--"]
    pytest.skip("neither setpriv nor runuser is installed")


@pytest.fixture
def root_owned_dir() -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.skip("needs root to drop privileges to nobody")
    path = tempfile.mkdtemp(prefix="vineyard-root-")
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.parametrize("where", ["v.sock", "sub/dir/v.sock"])
def test_unwritable_socket_path_is_one_clear_paragraph(root_owned_dir: str, where: str) -> None:
    path = os.path.join(root_owned_dir, where)
    out = run_cli("--socket", path, "--size", "64Mi", "--norpc", user=_unprivileged())
    assert out.returncode == 1, out.stderr
    err = out.stderr.strip()
    assert "\n" not in err, err  # one paragraph
    assert "Traceback" not in err
    assert os.path.dirname(path) in err or path in err
    assert "Permission denied" in err
    assert "--socket /tmp/vineyard.sock" in err
    assert not os.path.exists(path)


def test_default_socket_path_unwritable_for_a_user(tmp_dir: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to drop privileges to nobody")
    if os.access(os.path.dirname(DEFAULT_SOCKET), os.W_OK, effective_ids=False) and os.stat("/var/run").st_mode & 0o002:
        pytest.skip("/var/run is world-writable here")
    out = run_cli("--size", "64Mi", "--norpc", user=_unprivileged())
    assert out.returncode == 1
    assert DEFAULT_SOCKET in out.stderr
    assert "--socket /tmp/vineyard.sock" in out.stderr


def test_parent_directories_are_created(make_daemon, tmp_dir: str) -> None:
    path = os.path.join(tmp_dir, "a", "b", "v.sock")
    daemon = make_daemon(socket=path)
    assert stat.S_ISSOCK(os.stat(path).st_mode)
    daemon.stop()


def test_socket_of_a_live_daemon_is_refused(make_daemon) -> None:
    first = make_daemon()
    out = run_cli("--socket", first.socket, "--size", "64Mi", "--norpc")
    assert out.returncode == 1
    assert first.socket in out.stderr
    assert "already in use" in out.stderr
    assert "Traceback" not in out.stderr
    _works(first.socket)  # the first daemon was not disturbed
    assert stat.S_ISSOCK(os.stat(first.socket).st_mode)


def test_stale_socket_is_replaced(make_daemon, tmp_dir: str) -> None:
    path = os.path.join(tmp_dir, "v.sock")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)
    stale.close()  # the file stays, nobody listens
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with pytest.raises(ConnectionRefusedError):
        probe.connect(path)
    probe.close()
    daemon = make_daemon(socket=path)
    _works(daemon.socket)


@pytest.mark.parametrize("kind", ["file", "dir", "fifo"])
def test_non_socket_at_the_path_is_refused(tmp_dir: str, kind: str) -> None:
    path = os.path.join(tmp_dir, "v.sock")
    if kind == "file":
        with open(path, "w") as f:
            f.write("precious")
    elif kind == "dir":
        os.mkdir(path)
    else:
        os.mkfifo(path)
    out = run_cli("--socket", path, "--size", "64Mi", "--norpc")
    assert out.returncode == 1
    assert path in out.stderr
    assert "not a socket" in out.stderr
    if kind == "file":
        with open(path) as f:
            assert f.read() == "precious"
    else:
        assert os.path.exists(path)


def test_socket_mode_defaults_to_owner_only(make_daemon) -> None:
    daemon = make_daemon()
    assert stat.S_IMODE(os.stat(daemon.socket).st_mode) == 0o600


@pytest.mark.parametrize("mode", ["0660", "0666", "0777"])
def test_socket_mode_widens(make_daemon, mode: str) -> None:
    daemon = make_daemon(args=["--socket-mode", mode])
    assert stat.S_IMODE(os.stat(daemon.socket).st_mode) == int(mode, 8)


def test_bad_socket_mode(tmp_dir: str) -> None:
    out = run_cli("--socket", os.path.join(tmp_dir, "v.sock"), "--socket-mode", "999")
    assert out.returncode == 2
    assert "octal" in out.stderr


def test_socket_mode_really_keeps_other_users_out(make_daemon) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to drop privileges to nobody")
    user = _unprivileged()
    code = "import vineyard; c = vineyard.connect({}, timeout=0.2); print(c.put(1))"
    closed = make_daemon()
    os.chmod(os.path.dirname(closed.socket), 0o755)
    out = subprocess.run([*user, sys.executable, "-c", code.format(repr(closed.socket))],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "Permission denied" in out.stderr
    opened = make_daemon(args=["--socket-mode", "0666"])
    os.chmod(os.path.dirname(opened.socket), 0o755)
    out = subprocess.run([*user, sys.executable, "-c", code.format(repr(opened.socket))],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


# -- signals -------------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signals_shut_down_cleanly(make_daemon, sig: signal.Signals) -> None:
    daemon = make_daemon(rpc=True)
    client = vineyard.connect(daemon.socket)
    array = client.get(client.put(np.arange(1000)))  # a live mapping and a connection
    assert os.path.exists(daemon.socket)
    os.kill(daemon.pid, sig)
    assert daemon.proc.wait(timeout=30) == 0
    assert not os.path.exists(daemon.socket)
    assert "Traceback" not in daemon.log
    assert int(array[999]) == 999  # our mapping outlives the daemon
    with pytest.raises(vineyard.VineyardException):
        client.put(1)
    client.close()


def test_sigkilled_daemon_leaves_a_stale_socket_that_the_next_one_replaces(make_daemon, tmp_dir: str) -> None:
    path = os.path.join(tmp_dir, "v.sock")
    first = make_daemon(socket=path)
    first.kill()
    assert os.path.exists(path)
    second = make_daemon(socket=path)
    _works(second.socket)


def test_shutdown_with_busy_clients_and_waiters(make_daemon) -> None:
    daemon = make_daemon()
    waiter = subprocess.Popen(
        [sys.executable, "-c",
         f"import vineyard; c = vineyard.connect({daemon.socket!r}); c.get_name('never', wait=True)"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        with vineyard.connect(daemon.socket) as client:
            for _ in range(200):
                if client.status.deferred_requests:
                    break
                time.sleep(0.02)
            assert client.status.deferred_requests == 1
        os.kill(daemon.pid, signal.SIGTERM)
        assert daemon.proc.wait(timeout=30) == 0
        _, err = waiter.communicate(timeout=30)
        assert waiter.returncode != 0
        assert "ConnectionError" in err
    finally:
        if waiter.poll() is None:
            waiter.kill()
            waiter.wait()


def _works(path: str) -> None:
    with vineyard.connect(path) as client:
        assert client.get(client.put("still here")) == "still here"


@pytest.mark.parametrize("port", ["70000", "-1", "http"])
def test_bad_rpc_port_is_refused(tmp_dir: str, port: str) -> None:
    sock = os.path.join(tmp_dir, "v.sock")
    out = run_cli("--socket", sock, "--size", "64Mi", f"--rpc-port={port}")
    assert out.returncode == 2
    assert "--rpc-port" in out.stderr
    assert "port" in out.stderr.splitlines()[-1]
    assert not os.path.exists(sock)


def test_too_long_socket_path_is_explained(tmp_dir: str) -> None:
    path = os.path.join(tmp_dir, "x" * 120, "v.sock")
    out = run_cli("--socket", path, "--size", "64Mi", "--norpc")
    assert out.returncode == 1
    assert path in out.stderr
    assert "too long" in out.stderr
    assert "None" not in out.stderr


def test_rpc_host_that_is_not_ours(tmp_dir: str) -> None:
    sock = os.path.join(tmp_dir, "v.sock")
    # TEST-NET-1: no machine has it, so bind fails locally and no packet leaves
    out = run_cli("--socket", sock, "--size", "64Mi", "--rpc", "--rpc-host", "192.0.2.1")
    assert out.returncode == 1
    assert "192.0.2.1" in out.stderr
    assert "Cannot listen for RPC" in out.stderr
    assert "Traceback" not in out.stderr
    assert not os.path.exists(sock)
