"""Crash safety with real processes: a client killed at any stage leaks no memory and leaves no
half-visible object; a daemon killed under load gives every client a clear connection error,
never a hang; a daemon restarted on the same socket serves new clients."""

from __future__ import annotations

import os
import random
import signal
import threading
import time

import numpy as np
import pytest
from peer import Peer
from reliability_tools import MiB, call_bounded, settle, wait_for

import vineyard

# -- a client killed with SIGKILL ----------------------------------------------------------

KILLED = """
client = vineyard.connect(os.environ["SOCK"])
stage = os.environ["STAGE"]
if stage == "writing":            # SIGKILL lands while the bytes are being copied in
    small, big = client.create_blob([1000, 64 << 20])
    small[:] = 1
    say("blobs", repr(small.id), repr(big.id))
    chunk = np.full(1 << 20, 7, dtype=np.uint8)
    for i in range(100_000):      # bounded: the test kills it long before
        big[(i % 64) << 20 : ((i % 64) + 1) << 20] = chunk
        if i == 64:
            say("writing")
elif stage == "unsealed":         # written, not sealed: between create and seal
    small, big = client.create_blob([1000, 8 << 20])
    small[:] = 1
    big[:] = 2
    say("blobs", repr(small.id), repr(big.id))
    wait_for("never")
elif stage == "putting":          # in the middle of put(): allocate, copy, create
    n = 6 << 20
    previous = None
    for k in range(1, 10_000):
        say("putting", k)
        object_id = client.put(np.arange(k * n, (k + 1) * n, dtype=np.int64))
        if previous is not None:
            client.delete(previous)
        previous = object_id
elif stage == "viewing":          # holding views of objects another client deletes
    ids = [vineyard.ObjectID(x) for x in os.environ["IDS"].split(",")]
    held = [client.get(i) for i in ids]
    say("holding", sum(int(a.sum()) for a in held))
    wait_for("never")
"""


def _intact(array: np.ndarray) -> bool:
    """A put by the killed writer is ``k*n + arange(n)``: whole, never half-written."""
    return bool(array.size) and bool(np.array_equal(array, array[0] + np.arange(array.size, dtype=array.dtype)))


def _all_objects(client: vineyard.Client) -> list[vineyard.ObjectMeta]:
    """Every object that is not a blob; fails if a sealed blob belongs to none of them."""
    metas = client.list_metadatas("*", limit=100_000)
    objects = [m for m in metas if m.typename != "vineyard::Blob"]
    members = {int(m["buffer_"].id) for m in objects if "buffer_" in m}
    orphans = [m.id for m in metas if m.typename == "vineyard::Blob" and int(m.id) not in members]
    assert not orphans, f"sealed blobs that belong to no object: {orphans}"
    return objects


@pytest.mark.parametrize("stage", ["writing", "unsealed", "putting", "viewing"])
def test_a_killed_client_leaks_nothing_and_leaves_nothing_half_visible(make_daemon, stage: str) -> None:
    daemon = make_daemon(size="256Mi", args=["--reuse-cache", "0"])
    with vineyard.connect(daemon.socket) as client:
        env = {"SOCK": daemon.socket, "STAGE": stage}
        mine = []
        if stage == "viewing":
            mine = [client.put(np.full(n, 3, dtype=np.uint8)) for n in (100, 5000, 3 * MiB)]
            env["IDS"] = ",".join(repr(i) for i in mine)
        base = client.status
        with Peer(KILLED, env=env) as peer:
            blobs: list[vineyard.ObjectID] = []
            if stage in ("writing", "unsealed"):
                blobs = [vineyard.ObjectID(x) for x in peer.expect("blobs").split()]
                if stage == "writing":
                    peer.expect("writing")
                assert client.status.memory_usage >= base.memory_usage + 8 * MiB
            elif stage == "putting":
                wait_for(lambda: int(peer.expect("putting")) >= 3)
                time.sleep(random.uniform(0, 0.03))  # anywhere in allocate / copy / create
            else:
                assert int(peer.expect("holding")) == 3 * (100 + 5000 + 3 * MiB)
                client.delete(mine)  # the peer's views keep the memory
                assert not any(client.exists(i) for i in mine)
                assert client.status.memory_usage == base.memory_usage
            os.kill(peer.pid, signal.SIGKILL)
            peer.wait()
        if stage == "viewing":
            assert settle(client, 0) == 0  # deleted, and the last views died with the peer
            return
        # nothing half-visible: unsealed blobs are gone, every listed object is whole
        assert client.get_blobs(blobs, unsafe=True) == [None] * len(blobs)
        survivors = _all_objects(client)
        assert len(survivors) <= 2
        for meta in survivors:
            assert meta.typename.startswith("vineyard::Tensor"), meta.typename
            assert _intact(client.get(meta.id))
        client.delete([m.id for m in survivors])
        assert settle(client, base.memory_usage) == base.memory_usage
        status = client.status
        assert (status.objects, status.blobs) == (base.objects, base.blobs)


def test_many_clients_killed_at_random_moments(make_daemon) -> None:
    """Several writers killed one after another, each at a random point of its put loop."""
    daemon = make_daemon(size="256Mi")
    rng = random.Random(2024)
    with vineyard.connect(daemon.socket) as client:
        base = client.status.memory_usage
        for _ in range(4):
            with Peer(KILLED, env={"SOCK": daemon.socket, "STAGE": "putting"}) as peer:
                target = rng.randint(1, 4)
                wait_for(lambda t=target: int(peer.expect("putting")) >= t)  # type: ignore[misc]
                time.sleep(rng.uniform(0, 0.05))
                os.kill(peer.pid, signal.SIGKILL)
                peer.wait()
            for meta in _all_objects(client):
                assert _intact(client.get(meta.id))
                client.delete(meta.id)
            assert settle(client, base) == base
            assert client.status.blobs == 0


# -- the daemon killed with SIGKILL --------------------------------------------------------

BUSY = """
client = vineyard.connect(os.environ["SOCK"])
say("running")
try:
    if os.environ["ROLE"] == "waiter":
        client.get_name("never-given", wait=True)
    else:
        for k in range(1_000_000):   # bounded: the daemon is killed long before
            a = np.arange(1000 + k % 5000)
            assert int(client.get(client.put(a)).sum()) == int(a.sum())
    say("finished")
except Exception as exc:
    say("error", type(exc).__name__, isinstance(exc, ConnectionError), str(exc).replace("\\n", " "))
"""


def _busy_thread(client: vineyard.Client, stop: threading.Event, counter: list[int]) -> None:
    while not stop.is_set():
        a = np.arange(1000 + counter[0] % 3000)
        assert int(client.get(client.put(a)).sum()) == int(a.sum())
        counter[0] += 1


def test_daemon_killed_under_load_gives_every_client_a_clear_error(make_daemon) -> None:
    daemon = make_daemon(size="256Mi", rpc=True)
    assert daemon.rpc_endpoint is not None
    host, port = daemon.rpc_endpoint.rsplit(":", 1)
    env = {"SOCK": daemon.socket}
    peers = [Peer(BUSY, env={**env, "ROLE": role}) for role in ("worker", "worker", "waiter")]
    try:
        for peer in peers:
            peer.expect("running")
        ipc = [vineyard.connect(daemon.socket) for _ in range(3)]
        rpc = vineyard.connect(host, int(port))
        kept = ipc[0].get(ipc[0].put(np.arange(100_000)))  # a view that must outlive the daemon
        stop = threading.Event()
        busy = [*ipc[1:], rpc]  # two IPC clients and one RPC client put and get in a loop
        counters = [[0] for _ in busy]
        outcomes: list[tuple[str, object]] = [("hung", None)] * (len(busy) + 1)

        def run(i: int, func: object) -> None:
            outcomes[i] = call_bounded(func, timeout=120)  # type: ignore[arg-type]

        threads = [
            threading.Thread(target=run, args=(i, lambda c=c, n=n: _busy_thread(c, stop, n)), daemon=True)
            for i, (c, n) in enumerate(zip(busy, counters, strict=True))
        ]
        waiter = vineyard.connect(daemon.socket)
        threads.append(threading.Thread(
            target=run, args=(len(busy), lambda: waiter.get_name("never-given", wait=True)), daemon=True))
        for t in threads:
            t.start()
        assert wait_for(lambda: all(n[0] >= 5 for n in counters), timeout=60)
        assert wait_for(lambda: ipc[0].status.deferred_requests == 2, timeout=60)  # both waiters wait

        os.kill(daemon.pid, signal.SIGKILL)
        daemon.proc.wait(timeout=30)

        for t in threads:
            t.join(60)
        assert not any(t.is_alive() for t in threads), "a client hung after the daemon died"
        for i, (what, exc) in enumerate(outcomes):
            assert what == "raised", (i, what, exc)
            assert isinstance(exc, vineyard.StoreUnavailable), (i, exc)
            assert isinstance(exc, ConnectionError)
            where = daemon.rpc_endpoint if busy[i:i + 1] == [rpc] else daemon.socket
            assert where in str(exc), (i, str(exc))
        for peer in peers:
            kind, is_conn, message = peer.expect("error", timeout=60).split(" ", 2)
            assert kind in ("ConnectionErrorException", "ConnectionFailedException"), message
            assert is_conn == "True"
            assert daemon.socket in message
            assert peer.wait(timeout=60) == 0
        # the next call on an old client fails at once, as does a new connection
        what, exc = call_bounded(lambda: ipc[0].put(1), timeout=60)
        assert what == "raised"
        assert isinstance(exc, vineyard.StoreUnavailable)
        assert daemon.socket in str(exc)
        with pytest.raises(vineyard.ConnectionFailedException, match=daemon.socket):
            vineyard.connect(daemon.socket, timeout=0.2)
        assert int(kept.sum()) == 99_999 * 100_000 // 2  # the mapping outlives the daemon
        for c in [*ipc, rpc, waiter]:
            c.close()
    finally:
        for peer in peers:
            peer.close()


def test_restart_on_the_same_socket(make_daemon, tmp_path) -> None:
    first = make_daemon(size="128Mi", socket=str(tmp_path / "vineyard.sock"))
    old = vineyard.connect(first.socket)
    kept = old.get(old.put(np.arange(1000)))
    os.kill(first.pid, signal.SIGKILL)
    first.proc.wait(timeout=30)
    assert os.path.exists(first.socket)  # SIGKILL leaves the socket file behind: stale
    second = make_daemon(size="128Mi", socket=first.socket)  # replaces the stale socket
    assert second.pid != first.pid
    with pytest.raises(vineyard.StoreUnavailable, match=first.socket):
        old.put(1)
    old.close()
    with vineyard.connect(second.socket) as client:
        assert client.status.memory_usage == 0
        assert client.status.objects == 0  # nothing survives a daemon's death
        object_id = client.put(np.arange(10), persist=True, name="after-restart")
        assert int(client.get(name="after-restart").sum()) == 45
        assert client.get_name("after-restart") == object_id
    assert int(kept.sum()) == 499_500  # the old mapping still reads
