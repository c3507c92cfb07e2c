"""Lifetimes across connections and processes: references, delete-while-reading, crashes,
cross-process blobs and names, fork."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from peer import Peer

import vineyard
from vineyard.testing import address_in_store

MiB = 1 << 20


def flush(client: vineyard.Client) -> None:
    gc.collect()
    client.status  # noqa: B018 - a request carries queued releases


def usage(client: vineyard.Client) -> int:
    return client.status.memory_usage


def wait_usage(client: vineyard.Client, at_most: int, timeout: float = 30.0) -> int:
    """The daemon handles a closed connection asynchronously: poll, bounded."""
    deadline = time.monotonic() + timeout
    while True:
        used = usage(client)
        if used <= at_most or time.monotonic() > deadline:
            return used
        time.sleep(0.02)


# -- within one process, two connections ---------------------------------------------------


def test_a_reader_keeps_deleted_memory_until_its_last_view_dies(make_daemon) -> None:
    daemon = make_daemon(size="512Mi", args=["--reuse-cache", "0"])
    writer, reader = vineyard.connect(daemon.socket), vineyard.connect(daemon.socket)
    object_id = writer.put(np.arange(16 * MiB // 8, dtype=np.int64))
    flush(writer)
    array = reader.get(object_id)
    piece = array[1000:1010]  # a derived view keeps the blob too
    mv = memoryview(array)
    writer.delete(object_id)
    assert not writer.exists(object_id)  # metadata goes at once
    flush(writer)
    assert usage(writer) >= 16 * MiB  # memory stays: the reader holds it
    del array
    flush(reader)
    assert usage(writer) >= 16 * MiB
    del mv
    flush(reader)
    assert usage(writer) >= 16 * MiB
    assert list(piece) == list(range(1000, 1010))
    del piece
    flush(reader)
    assert usage(writer) == 0
    writer.close()
    reader.close()


def test_closing_a_connection_releases_what_it_held(make_daemon) -> None:
    daemon = make_daemon(size="512Mi")
    writer, reader = vineyard.connect(daemon.socket), vineyard.connect(daemon.socket)
    object_id = writer.put(np.ones(8 * MiB // 8))
    flush(writer)
    array = reader.get(object_id)
    writer.delete(object_id)
    assert usage(writer) >= 8 * MiB
    reader.close()
    assert wait_usage(writer, 0) == 0
    assert array.shape == (MiB,)  # the closed client's array is still a valid (detached) object
    writer.close()


def test_a_released_view_does_not_cancel_a_newer_one(client) -> None:
    """A view that dies while a newer get of the same blob is in flight must not release it."""
    object_id = client.put(np.arange(1000))
    blob_id = int(client.get_meta(object_id)["buffer_"].id)
    transport = client._t
    first = client.get_blob(blob_id)
    del first
    gc.collect()
    assert blob_id in transport._pending  # queued, not yet sent
    with transport._lock:  # as if the reply of a new get were being turned into views
        second = client.get_blob(blob_id)
    assert blob_id not in transport._pending
    assert int(second.view(np.int64)[999]) == 999


# -- across processes ----------------------------------------------------------------------


READER = """
client = vineyard.connect(sys.argv[1] if len(sys.argv) > 1 else os.environ["SOCK"])
ids = [vineyard.ObjectID(x) for x in os.environ["IDS"].split(",")]
arrays = [client.get(i) for i in ids]
before = [a.tobytes() for a in arrays]
say("ready", len(arrays))
wait_for("check")
say("same" if [a.tobytes() for a in arrays] == before else "CHANGED")
wait_for("drop")
del arrays
gc.collect()
client.status
say("dropped")
wait_for("bye")
"""


def test_delete_while_reading_in_another_process(make_daemon) -> None:
    daemon = make_daemon(size="256Mi", args=["--reuse-cache", "0"])
    client = vineyard.connect(daemon.socket)
    rng = np.random.default_rng(1)
    values = [rng.integers(0, 1 << 60, n, dtype=np.int64) for n in (100, 8_000, 64_000, 12 * MiB // 8)]
    ids = [client.put(v) for v in values]
    flush(client)
    with Peer(READER, env={"SOCK": daemon.socket, "IDS": ",".join(repr(i) for i in ids)}) as peer:
        peer.expect("ready")
        held = usage(client)
        client.delete(ids)
        assert not any(client.exists(i) for i in ids)
        # fill every byte the store has left with other data
        filler = []
        for size in (12 * MiB, 1 * MiB, 64_000 * 8, 8_000 * 8, 800):
            while True:
                try:
                    filler.append(client.put(np.full(size // 8, -1, dtype=np.int64)))
                except vineyard.NotEnoughMemoryException:
                    break
        assert usage(client) > 200 * MiB
        with pytest.raises(vineyard.NotEnoughMemoryException):
            client.put(np.ones(12 * MiB // 8))
        peer.send("check")
        assert peer.expect() == "same"
        peer.send("drop")
        peer.expect("dropped")
        flush(client)
        assert usage(client) <= 256 * MiB - held + 64  # the reader's blobs are gone
        client.put(np.ones(12 * MiB // 8))  # and their memory is usable again
        peer.send("bye")
        assert peer.wait() == 0
    client.close()


UNSEALED = """
client = vineyard.connect(os.environ["SOCK"])
builder = client.create_blob(64 << 20)
builder.copy(0, b"x" * (64 << 20))
sealed = client.create_blob(1 << 20).seal(client)   # a sealed one survives the crash
say("ready", repr(sealed.id))
wait_for("exit")
os._exit(0)   # no close(): the process just goes away
"""


@pytest.mark.parametrize("how", ["sigkill", "exit"])
def test_unsealed_blobs_of_a_vanished_client_are_reclaimed(make_daemon, how: str) -> None:
    daemon = make_daemon(size="256Mi")
    with vineyard.connect(daemon.socket) as client:
        base = usage(client)
        with Peer(UNSEALED, env={"SOCK": daemon.socket}) as peer:
            sealed = vineyard.ObjectID(peer.expect("ready"))
            assert usage(client) >= base + 65 * MiB
            if how == "sigkill":
                os.kill(peer.pid, signal.SIGKILL)
            else:
                peer.send("exit")
            peer.wait()
        assert wait_usage(client, base + 1 * MiB) == base + 1 * MiB
        assert client.exists(sealed)  # sealed blobs outlive their creator, as upstream


CREATOR = """
client = vineyard.connect(os.environ["SOCK"])
builder = client.create_blob(4096)
builder.copy(0, bytes(range(256)) * 16)
blob = builder.seal(client)
meta = vineyard.ObjectMeta()
meta["typename"] = "vineyard::Bytes"
meta.add_member("buffer_", blob)
client.create_metadata(meta)
client.persist(meta.id)
client.put_name(meta.id, os.environ["NAME"])
say("blob", repr(blob.id))
wait_for("bye")
"""


def test_blob_created_in_one_process_is_read_in_another(make_daemon) -> None:
    daemon = make_daemon()
    env = {"SOCK": daemon.socket, "NAME": "shared"}
    with vineyard.connect(daemon.socket) as client, Peer(CREATOR, env=env) as peer:
        blob_id = vineyard.ObjectID(peer.expect("blob"))
        blob = client.get_blob(blob_id)
        assert bytes(blob) == bytes(range(256)) * 16
        assert memoryview(blob).readonly
        assert address_in_store(blob.address)
        with open("/proc/self/maps") as f:
            line = next(x for x in f if int(x.split("-")[0], 16) <= blob.address < int(x.split()[0].split("-")[1], 16))
        assert "/memfd:vineyard-" in line
        named = client.get_name("shared")
        assert client.get_meta(named)["buffer_"].id == blob_id
        peer.send("bye")
        assert peer.wait() == 0
        assert bytes(client.get_blob(blob_id)[:4]) == b"\x00\x01\x02\x03"  # outlives its creator


WAITER = """
client = vineyard.connect(os.environ["SOCK"])
say("waiting")
object_id = client.get_name(os.environ["NAME"], wait=True)
say("got", repr(object_id), int(client.get(object_id).sum()))
"""


def test_get_name_wait_is_woken_by_put_name_in_another_process(make_daemon) -> None:
    daemon = make_daemon()
    with vineyard.connect(daemon.socket) as client, Peer(WAITER, env={"SOCK": daemon.socket, "NAME": "later"}) as peer:
        peer.expect("waiting")
        deadline = time.monotonic() + 30
        while client.status.deferred_requests == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert client.status.deferred_requests == 1
        object_id = client.put(np.arange(10), persist=True)
        client.put_name(object_id, "later")
        got, total = peer.expect("got").split()
        assert got == repr(object_id)
        assert int(total) == 45
        assert peer.wait() == 0
        assert client.status.deferred_requests == 0


def test_names_across_processes(make_daemon) -> None:
    daemon = make_daemon()
    with vineyard.connect(daemon.socket) as client:
        object_id = client.put(np.arange(7), persist=True, name="from-parent")
        code = f"""
        client = vineyard.connect({daemon.socket!r})
        assert list(client.get(name="from-parent")) == list(range(7))
        client.put("child value", persist=True, name="from-child")
        client.drop_name("from-parent")
        say("done")
        """
        with Peer(code) as peer:
            peer.expect("done")
            assert peer.wait() == 0
        assert client.get(name="from-child") == "child value"
        with pytest.raises(vineyard.ObjectNotExistsException):
            client.get_name("from-parent")
        assert client.exists(object_id)


FORK = """
client = vineyard.connect(os.environ["SOCK"])
object_id = client.put(np.arange(100))
pid = os.fork()
if pid == 0:
    code = 0
    try:
        client.get(object_id)
        code = 10
    except vineyard.ConnectionErrorException as exc:
        if "fork" not in str(exc):
            code = 11
    forked = client.fork()
    if forked is not client:
        code = 12
    if int(client.get(object_id).sum()) != 4950:
        code = 13
    client.put(np.arange(3), persist=True, name="from-forked-child")
    client.close()
    os._exit(code)
_, status = os.waitpid(pid, 0)
say("child", os.waitstatus_to_exitcode(status))
say("parent", int(client.get(object_id).sum()), client.get(name="from-forked-child").tolist())
"""


def test_fork(make_daemon) -> None:
    daemon = make_daemon()
    with Peer(FORK, env={"SOCK": daemon.socket}) as peer:
        assert peer.expect("child") == "0"
        assert peer.expect("parent") == "4950 [0, 1, 2]"
        assert peer.wait() == 0


def test_multiprocessing_children_use_fork(make_daemon) -> None:
    daemon = make_daemon()
    code = textwrap.dedent(f"""
        import multiprocessing as mp, numpy as np, vineyard
        client = vineyard.connect({daemon.socket!r})
        object_id = client.put(np.arange(10))

        def work(i):
            client.fork()
            return int(client.get(object_id).sum()) + i

        if __name__ == "__main__":
            with mp.get_context("fork").Pool(2) as pool:
                print(sorted(pool.map(work, range(4))))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[45, 46, 47, 48]"


IDLE_READER = """
client = vineyard.connect(os.environ["SOCK"])
array = client.get(vineyard.ObjectID(os.environ["ID"]))
say("ready", int(array[-1]))
wait_for("drop")
del array
gc.collect()
say("dropped")            # and no further request: the background flush must send the release
wait_for("bye")
"""


def test_releases_are_flushed_in_the_background(make_daemon) -> None:
    daemon = make_daemon(size="256Mi")
    with vineyard.connect(daemon.socket) as client:
        object_id = client.put(np.arange(4 * MiB // 8, dtype=np.int64))
        flush(client)
        with Peer(IDLE_READER, env={"SOCK": daemon.socket, "ID": repr(object_id)}) as peer:
            assert peer.expect("ready") == str(4 * MiB // 8 - 1)
            client.delete(object_id)
            assert usage(client) == 4 * MiB
            peer.send("drop")
            peer.expect("dropped")
            assert wait_usage(client, 0) == 0
            assert peer.proc.poll() is None  # freed while the reader is still connected
            peer.send("bye")
            assert peer.wait() == 0
