"""Who may connect: the socket's mode, the daemon's allow-lists (checked with SO_PEERCRED
against clients really running as another user), and the RPC port's address and token."""

from __future__ import annotations

import grp
import os
import shutil
import stat
import subprocess
import sys

import numpy as np
import pytest

import vineyard

needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="needs root and setpriv to run a client as another user",
)

CLIENT = """
import sys, vineyard
try:
    c = vineyard.connect(sys.argv[1], timeout=0.2)
    object_id = c.put("hello")
    print("ok", c.get(object_id))
except Exception as exc:
    print("error", type(exc).__name__, isinstance(exc, ConnectionError), exc)
"""


def as_nobody(socket: str, groups: str | None = None) -> str:
    """Run a client as ``nobody:nogroup`` (``groups``: supplementary gids, else none); its output.

    A client that hangs fails the test through the timeout.
    """
    extra = [f"--groups={groups}"] if groups else ["--clear-groups"]
    out = subprocess.run(
        ["setpriv", "--reuid=nobody", "--regid=nogroup", *extra, sys.executable, "-c", CLIENT, socket],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def _open_dir(daemon: object) -> None:
    os.chmod(os.path.dirname(daemon.socket), 0o755)  # type: ignore[attr-defined]  # let others reach the socket


def test_socket_is_owner_only_by_default(make_daemon) -> None:
    daemon = make_daemon()
    assert stat.S_IMODE(os.stat(daemon.socket).st_mode) == 0o600
    assert os.stat(daemon.socket).st_uid == os.geteuid()


@needs_root
def test_another_user_cannot_use_an_owner_only_socket(make_daemon) -> None:
    daemon = make_daemon()
    _open_dir(daemon)
    out = as_nobody(daemon.socket)
    assert out.startswith("error ConnectionFailedException True"), out
    assert daemon.socket in out
    assert "Permission denied" in out


@needs_root
def test_socket_mode_0660_admits_the_group_only(make_daemon) -> None:
    daemon = make_daemon(args=["--socket-mode", "0660"])
    _open_dir(daemon)
    assert stat.S_IMODE(os.stat(daemon.socket).st_mode) == 0o660
    group = os.stat(daemon.socket).st_gid
    assert as_nobody(daemon.socket, groups=str(group)) == "ok hello"
    assert "Permission denied" in as_nobody(daemon.socket)


@needs_root
def test_allow_user_refuses_others_with_a_clear_error(make_daemon) -> None:
    daemon = make_daemon(args=["--socket-mode", "0666", "--allow-user", "root"])
    _open_dir(daemon)
    out = as_nobody(daemon.socket)
    assert out.startswith("error ConnectionFailedException True"), out
    assert "refused the connection" in out
    assert "uid 65534" in out
    assert "refused a client (pid" in daemon.log
    assert "uid 65534" in daemon.log
    with vineyard.connect(daemon.socket) as client:  # root is on the list
        assert client.get(client.put(np.arange(4))).sum() == 6
        assert client.status.ipc_connections == 1  # the refused one left nothing behind


@needs_root
@pytest.mark.parametrize("who", ["nobody", "65534"])
def test_allow_user_admits_the_listed_user_and_refuses_the_owner(make_daemon, who: str) -> None:
    daemon = make_daemon(args=["--socket-mode", "0666", "--allow-user", who])
    _open_dir(daemon)
    assert as_nobody(daemon.socket) == "ok hello"
    with pytest.raises(vineyard.ConnectionFailedException, match="refused the connection"):
        vineyard.connect(daemon.socket)


@needs_root
def test_allow_group_checks_primary_and_supplementary_groups(make_daemon) -> None:
    audio = grp.getgrnam("audio").gr_gid
    by_primary = make_daemon(args=["--socket-mode", "0666", "--allow-group", "nogroup"])
    _open_dir(by_primary)
    assert as_nobody(by_primary.socket) == "ok hello"
    with pytest.raises(vineyard.ConnectionFailedException, match="refused the connection"):
        vineyard.connect(by_primary.socket)  # root's primary group is not nogroup
    by_member = make_daemon(args=["--socket-mode", "0666", "--allow-group", "audio"])
    _open_dir(by_member)
    assert as_nobody(by_member.socket, groups=str(audio)) == "ok hello"
    out = as_nobody(by_member.socket)
    assert out.startswith("error ConnectionFailedException True"), out
    assert "refused the connection" in out


def test_unknown_names_in_the_allow_list_stop_the_daemon(tmp_path) -> None:
    for flag in ("--allow-user", "--allow-group"):
        out = subprocess.run(
            [sys.executable, "-m", "vineyard", "--socket", str(tmp_path / "v.sock"), "--size", "64Mi", "--norpc",
             flag, "no-such-principal-here"],
            capture_output=True, text=True, timeout=60,
        )
        assert out.returncode == 1
        assert "no-such-principal-here" in out.stderr
        assert "Traceback" not in out.stderr


# -- RPC ------------------------------------------------------------------------------------


def _endpoint(daemon: object) -> tuple[str, int]:
    host, port = daemon.rpc_endpoint.rsplit(":", 1)  # type: ignore[attr-defined]
    return host, int(port)


def test_rpc_binds_loopback_by_default(make_daemon) -> None:
    daemon = make_daemon(rpc=True)
    host, port = _endpoint(daemon)
    assert host == "127.0.0.1"
    with vineyard.connect(host, port) as rpc:
        assert rpc.is_rpc
        assert rpc.get(rpc.put(np.arange(5))).sum() == 10


def test_rpc_token_is_required_when_set(make_daemon, monkeypatch) -> None:
    monkeypatch.delenv("VINEYARD_RPC_TOKEN", raising=False)
    daemon = make_daemon(rpc=True, args=["--rpc-token", "open sesame"])
    host, port = _endpoint(daemon)
    for token in (None, "wrong", "open sesame!", ""):
        with pytest.raises(vineyard.ConnectionFailedException, match="refused the RPC connection") as info:
            vineyard.connect(host, port, token=token)
        assert isinstance(info.value, ConnectionError)
        assert "token" in str(info.value)
    assert "refused an RPC client" in daemon.log
    with vineyard.connect(host, port, token="open sesame") as rpc:
        assert rpc.get(rpc.put(np.arange(5))).sum() == 10
    monkeypatch.setenv("VINEYARD_RPC_TOKEN", "open sesame")  # the client reads it too
    with vineyard.connect(host, port) as rpc:
        assert rpc.status.rpc_connections == 1
    with vineyard.connect(daemon.socket) as ipc:  # the socket's permissions guard IPC, not the token
        assert ipc.status.rpc_connections == 0


def test_rpc_token_from_the_environment(make_daemon, monkeypatch) -> None:
    monkeypatch.delenv("VINEYARD_RPC_TOKEN", raising=False)
    daemon = make_daemon(rpc=True, env={"VINEYARD_RPC_TOKEN": "from-env"})
    host, port = _endpoint(daemon)
    with pytest.raises(vineyard.ConnectionFailedException, match="token"):
        vineyard.connect(host, port)
    with vineyard.connect(host, port, token="from-env") as rpc:
        assert rpc.put(1)


def test_unauthenticated_rpc_connection_can_do_nothing(make_daemon) -> None:
    """Without a successful register, every request is refused; a bad token closes the link."""
    import socket as sk

    from vineyard.protocol import NEED_DATA, FrameDecoder, encode

    daemon = make_daemon(rpc=True, args=["--rpc-token", "t"])
    with sk.create_connection(_endpoint(daemon), timeout=30) as sock:
        decoder = FrameDecoder()

        def call(message: dict) -> dict | None:
            sock.sendall(encode(message))
            for _ in range(1000):
                reply = decoder.next_message()
                if reply is not NEED_DATA:
                    return reply  # type: ignore[return-value]
                data = sock.recv(65536)
                if not data:
                    return None
                decoder.feed(data)
            raise AssertionError("no reply")

        for request in ({"type": "status"}, {"type": "list_names"}, {"type": "clear"}):
            reply = call(request)
            assert reply is not None
            assert reply["code"] != 0
            assert "register" in reply["message"]
        reply = call({"type": "register", "store_type": "rpc", "token": "not-t"})
        assert reply is not None
        assert reply["code"] == vineyard.ConnectionFailedException.code
        assert sock.recv(1) == b""  # and the daemon hung up
