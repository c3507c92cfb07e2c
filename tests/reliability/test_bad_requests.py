"""Requests the fuzzers found to upset the daemon, kept as plain regression tests against a
live daemon: each must leave the daemon's books right and log no internal error."""

from __future__ import annotations

import socket

import numpy as np
import pytest
from reliability_tools import MiB, settle

import vineyard
from vineyard.protocol import NEED_DATA, FrameDecoder, encode


def _clean(daemon: object) -> None:
    log = daemon.log  # type: ignore[attr-defined]
    assert "internal error" not in log, log[-3000:]
    assert "Traceback" not in log, log[-3000:]


def test_a_refused_multi_blob_allocation_leaves_memory_consistent(make_daemon) -> None:
    """The first blob's new segment must exist even though the request as a whole failed."""
    daemon = make_daemon(size="64Mi")
    with vineyard.connect(daemon.socket) as client:
        with pytest.raises(vineyard.NotEnoughMemoryException):
            client.create_blob([2 * MiB, 64 * MiB])
        assert client.status.memory_usage == 0
        object_id = client.put(np.ones(2 * MiB // 8))  # may reuse the segment made on the way
        assert client.get(object_id).sum() == 2 * MiB // 8
        client.clear()  # releases every cached segment
        assert client.status.memory_usage == 0
        assert client.get(client.put(np.arange(10))).sum() == 45
    _clean(daemon)


def _rpc_call(sock: socket.socket, decoder: FrameDecoder, message: dict) -> dict:
    sock.sendall(encode(message))
    for _ in range(1000):
        reply = decoder.next_message()
        if reply is not NEED_DATA:
            assert isinstance(reply, dict)
            return reply
        data = sock.recv(65536)
        assert data, "the daemon hung up"
        decoder.feed(data)
    raise AssertionError("no reply")


@pytest.mark.parametrize("cache", ["0", "16Mi"])
def test_an_rpc_upload_cut_short_frees_its_memory(make_daemon, cache: str) -> None:
    """A client that goes away in the middle of an upload's bytes leaves nothing behind."""
    daemon = make_daemon(size="64Mi", rpc=True, args=["--reuse-cache", cache])
    host, port = daemon.rpc_endpoint.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        decoder = FrameDecoder()
        assert _rpc_call(sock, decoder, {"type": "register", "store_type": "rpc"})["code"] == 0
        sock.sendall(encode({"type": "create_remote_buffers", "sizes": [4 * MiB, 1000]}))
        sock.sendall(b"\x07" * MiB)  # a quarter of the first blob, then gone
    with vineyard.connect(daemon.socket) as client:
        assert settle(client, 0) == 0
        assert client.status.blobs == 0
        client.clear()
        assert client.get(client.put(np.arange(4 * MiB // 8))).sum() == (4 * MiB // 8) * (4 * MiB // 8 - 1) // 2
    _clean(daemon)


def test_a_refused_rpc_upload_is_skipped_not_parsed(make_daemon) -> None:
    """Bytes of an upload the daemon cannot take are read past, never taken for requests."""
    daemon = make_daemon(size="64Mi", rpc=True)
    host, port = daemon.rpc_endpoint.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        decoder = FrameDecoder()
        assert _rpc_call(sock, decoder, {"type": "register", "store_type": "rpc"})["code"] == 0
        smuggled = encode({"type": "clear"}) * 1000  # would wipe the store if parsed
        size = 128 * MiB
        sock.sendall(encode({"type": "create_remote_buffers", "sizes": [size]}))
        sent = 0
        with vineyard.connect(daemon.socket) as client:
            keep = client.put(np.arange(10))
            while sent < size:
                chunk = smuggled[: size - sent]
                sock.sendall(chunk)
                sent += len(chunk)
            reply = decoder.next_message()
            while reply is NEED_DATA:
                decoder.feed(sock.recv(65536))
                reply = decoder.next_message()
            assert reply["code"] == vineyard.NotEnoughMemoryException.code  # type: ignore[index]
            assert _rpc_call(sock, decoder, {"type": "ping"}) == {"code": 0}
            assert client.exists(keep)
    _clean(daemon)
