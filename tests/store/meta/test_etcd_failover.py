"""The etcd client under failure: dead, silent and vanishing endpoints, and etcd restarting.

Everything listens on 127.0.0.1. A "relay" is a TCP forwarder to the module's etcd that the
test can kill, standing in for a cluster member that dies; a "black hole" accepts
connections and never answers, as a partitioned host does.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

import psutil
import pytest

from vineyard.errors import EtcdErrorException
from vineyard.store.meta import Compare, EventType, MetaTimeout, Put, session_prefix
from vineyard.store.meta.etcd import EtcdBackend
from vineyard.store.meta.launch import EtcdProcess, free_port
from vineyard.store.meta.session import Session

PREFIX = session_prefix("vytest-failover")


class Relay:
    """Forward connections from a loopback port to ``target``, until :meth:`kill`."""

    def __init__(self, target_port: int) -> None:
        self._target = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self._target))
            with self._lock:
                self._socks += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def kill(self) -> None:
        """Refuse new connections and cut every open one, as a dying member would."""
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # close() alone leaves accept() blocked
        self._listener.close()
        with self._lock:
            for sock in self._socks:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()


@pytest.fixture
def black_hole() -> Iterator[str]:
    """An endpoint that accepts TCP connections and never replies."""
    listener = socket.create_server(("127.0.0.1", 0))
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    listener.close()


def dead_endpoint() -> str:
    return f"http://127.0.0.1:{free_port()}"  # nothing listens there: connection refused


def test_a_dead_first_endpoint_is_skipped(etcd):
    dead = dead_endpoint()
    with EtcdBackend(f"{dead},{etcd.endpoint}", PREFIX) as b:
        assert b.gateway.current == dead
        rev = b.put("/data/a", "1")
        assert b.gateway.current == etcd.endpoint
        assert b.get("/data/a").value == b"1"
        second = b.commit([Compare.unchanged("/data/a", rev)], [Put("/data/a", "2")])
        lease = b.grant(10)
        assert b.keepalive(lease) == 10
        with b.locked("/locks/x", lease):
            pass
        b.revoke(lease)
    with EtcdBackend(f"{dead},{etcd.endpoint}", PREFIX) as b:
        assert b.gateway.current == dead
        watch = b.watch("/data/", start_revision=rev)  # a stream skips it as well
        assert [e.kv.value for e in watch.wait(second, timeout=10)] == [b"1", b"2"]
        b.delete("/", prefix=True)


def test_no_live_endpoint_names_every_endpoint_and_the_operation():
    first, second = dead_endpoint(), dead_endpoint()
    with EtcdBackend([first, second], PREFIX, timeout=2.0) as b:
        with pytest.raises(EtcdErrorException) as info:
            b.put("/data/a", "1")
        message = str(info.value)
        assert "put '/data/a'" in message
        assert first in message
        assert second in message
        with pytest.raises(EtcdErrorException, match="watch '/data/'"):
            b.watch("/data/")


def test_a_silent_endpoint_times_out_reads_fail_over_and_writes_say_so(etcd, black_hole):
    with EtcdBackend(f"{black_hole},{etcd.endpoint}", PREFIX, timeout=0.5) as b:
        assert b.get("/data/none") is None  # a read is safe to repeat: moves on
        assert b.gateway.current == etcd.endpoint
    # A write whose reply never came may have been applied: no silent second try.
    expected = f"put '/data/a' on {black_hole}.*may have been applied"
    b = EtcdBackend(f"{black_hole},{etcd.endpoint}", PREFIX, timeout=0.5)
    with b, pytest.raises(MetaTimeout, match=expected):
        b.put("/data/a", "1")


def test_operations_and_watches_move_to_the_next_endpoint_when_one_dies(etcd, wait_for):
    relay = Relay(etcd.client_port)
    with EtcdBackend(f"{relay.endpoint},{etcd.endpoint}", PREFIX) as b:
        watch = b.watch("/data/")
        b.put("/data/a", "1")
        assert b.gateway.current == relay.endpoint
        assert [e.key for e in watch.wait(b.head_revision(), timeout=10)] == ["/data/a"]

        relay.kill()  # the stream breaks mid-watch; pooled connections die too
        b.put("/data/b", "2")
        b.delete("/data/a")
        assert b.gateway.current == etcd.endpoint
        events = watch.wait(b.head_revision(), timeout=10)
        assert [(e.type, e.key) for e in events] == [(EventType.PUT, "/data/b"), (EventType.DELETE, "/data/a")]
        assert watch.reconnects >= 1
        watch.close()
        b.delete("/", prefix=True)


def test_watch_and_session_ride_out_an_etcd_restart(etcd, wait_for):
    with EtcdBackend(etcd.endpoint, PREFIX) as b:
        session = Session(b, ttl=10, interval=0.2)
        b.put("/instances/i0/hostname", '"h"', lease=session.lease)
        watch = b.watch("/data/")
        b.put("/data/a", "1")
        assert [e.key for e in watch.wait(b.head_revision(), timeout=10)] == ["/data/a"]

        etcd.kill()
        with pytest.raises(EtcdErrorException, match=f"put '/data/x' failed on every etcd endpoint.*{etcd.endpoint}"):
            b.put("/data/x", "lost")
        etcd.start()
        # Written before the watch has necessarily reconnected: it must resume, not skip.
        for key in ("/data/b", "/data/c", "/data/d"):
            b.put(key, "1")
        events = watch.wait(b.head_revision(), timeout=15)
        assert [e.key for e in events] == ["/data/b", "/data/c", "/data/d"]
        assert watch.reconnects >= 1

        count = session.keepalives
        wait_for(lambda: session.keepalives > count, what="keep-alives to resume")
        assert not session.lost.is_set()
        assert b.get("/instances/i0/hostname") is not None
        watch.close()
        session.close()
        b.delete("/", prefix=True)


def test_launched_etcd_listens_on_loopback_only_and_stops_by_pid(etcd):
    with EtcdProcess() as private:
        proc = psutil.Process(private.pid)
        listening = {c.laddr for c in proc.net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN}
        assert {addr.ip for addr in listening} == {"127.0.0.1"}
        assert {addr.port for addr in listening} >= {private.client_port, private.peer_port}
        data_dir = private.data_dir
        pid = private.pid
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    with pytest.raises(FileNotFoundError):
        open(data_dir + "/member")  # noqa: SIM115 - the directory is gone
