"""Many clients at once, threads and processes, every payload checksummed: no corruption, no
lost object, no deadlock (bounded in count and time); ``get_name(wait=True)`` across
processes: wakes, times out, wakes several waiters, survives a waiter's death."""

from __future__ import annotations

import os
import signal
import threading

import numpy as np
from peer import Peer
from reliability_tools import call_bounded, settle, wait_for

import vineyard
from bench.soak import run


def test_threads_and_processes_put_get_name_delete_at_once(make_daemon) -> None:
    daemon = make_daemon(size="512Mi")
    report = run(seconds=60, procs=2, threads=3, shared_client_threads=2, socket=daemon.socket,
                 max_ops=600, seed=7)
    print(report.text())
    assert report.hung == [], "a worker did not finish: deadlock or hang"
    assert report.error_count == 0, report.errors
    assert len(report.workers) == 7
    for worker in report.workers:
        assert sum(worker.ops.values()) == 600, (worker.worker, worker.ops)  # the count bound, not time
        assert worker.verified > 0
    for kind in ("put", "get_own", "get_other", "hold", "delete"):
        assert report.ops.get(kind, 0) > 0, kind
    assert report.daemon_alive
    # every worker deleted what it owned: nothing left, nothing leaked
    assert (report.memory_end, report.objects_end, report.blobs_end) == (report.memory_start, 0, 0)


def test_one_object_read_by_many_threads_while_its_name_moves(make_daemon) -> None:
    """Readers resolve a name and check the payload while a writer keeps re-pointing it."""
    daemon = make_daemon(size="256Mi")
    rng = np.random.default_rng(3)
    payloads = [rng.integers(0, 1 << 30, 50_000) for _ in range(4)]
    sums = {int(p.sum()) for p in payloads}
    bad: list[str] = []
    stop = threading.Event()

    def reader() -> int:
        reads = 0
        with vineyard.connect(daemon.socket) as c:
            while not stop.is_set() and reads < 2000:
                try:
                    value = c.get(name="moving")
                except vineyard.ObjectNotExistsException:
                    continue  # between drop_name and put_name, or deleted after the lookup
                if int(value.sum()) not in sums:
                    bad.append(f"a reader saw a payload nobody wrote (sum {int(value.sum())})")
                reads += 1
        return reads

    with vineyard.connect(daemon.socket) as writer:
        ids = [writer.put(p, persist=True) for p in payloads]
        writer.put_name(ids[0], "moving")
        results: list[tuple[str, object]] = []
        threads = [threading.Thread(target=lambda: results.append(call_bounded(reader, 120))) for _ in range(4)]
        for t in threads:
            t.start()
        for k in range(300):
            writer.drop_name("moving")
            writer.put_name(ids[k % len(ids)], "moving")
        stop.set()
        for t in threads:
            t.join(130)
        assert not any(t.is_alive() for t in threads)
        assert [r[0] for r in results] == ["ok"] * 4, results
        assert not bad, bad[:3]
        writer.delete(ids)
        assert settle(writer, 0) == 0


# -- get_name(wait=True) across processes -------------------------------------------------

WAITER = """
client = vineyard.connect(os.environ["SOCK"])
timeout = float(os.environ["TIMEOUT"]) if os.environ.get("TIMEOUT") else None
say("waiting")
try:
    object_id = client.get_name(os.environ["NAME"], wait=True, timeout=timeout)
    say("got", repr(object_id), int(client.get(object_id).sum()))
except vineyard.ObjectNotExistsException as exc:
    say("timeout", str(exc).replace("\\n", " "))
"""

NAMER = """
client = vineyard.connect(os.environ["SOCK"])
wait_for("go")
object_id = client.put(np.arange(100), persist=True, name=os.environ["NAME"])
say("named", repr(object_id))
wait_for("bye")
"""


def _deferred(client: vineyard.Client, n: int) -> bool:
    return client.status.deferred_requests == n


def test_several_waiters_in_several_processes_all_wake(make_daemon) -> None:
    daemon = make_daemon()
    env = {"SOCK": daemon.socket, "NAME": "shared-later"}
    with vineyard.connect(daemon.socket) as client:
        waiters = [Peer(WAITER, env=env) for _ in range(3)]
        namer = Peer(NAMER, env=env)
        try:
            for w in waiters:
                w.expect("waiting")
            # and a fourth waiter, a thread of this process
            local = vineyard.connect(daemon.socket)
            local_result: list[tuple[str, object]] = []
            local_thread = threading.Thread(target=lambda: local_result.append(
                call_bounded(lambda: local.get_name("shared-later", wait=True), 120)))
            local_thread.start()
            assert wait_for(lambda: _deferred(client, 4)), client.status.deferred_requests
            namer.send("go")  # the name comes from yet another process
            object_id = namer.expect("named")
            for w in waiters:
                got, total = w.expect("got").split()
                assert (got, int(total)) == (object_id, 4950)
                assert w.wait() == 0
            local_thread.join(130)
            assert local_result, "the waiting thread did not finish"
            assert local_result[0][0] == "ok", local_result
            assert repr(local_result[0][1]) == object_id
            local.close()
            assert client.status.deferred_requests == 0
            namer.send("bye")
            assert namer.wait() == 0
        finally:
            for p in [*waiters, namer]:
                p.close()


def test_waiting_with_a_timeout_times_out(make_daemon) -> None:
    daemon = make_daemon()
    with vineyard.connect(daemon.socket) as client:
        what, exc = call_bounded(lambda: client.get_name("nobody-gives-this", wait=True, timeout=0.2), 60)
        assert what == "raised", (what, exc)
        assert isinstance(exc, vineyard.ObjectNotExistsException)
        assert "nobody-gives-this" in str(exc)
        assert client.status.deferred_requests == 0
        # the connection is usable after a timed-out wait, and a later name still resolves
        object_id = client.put(np.arange(3), persist=True, name="later")
        assert client.get_name("later", wait=True, timeout=0.2) == object_id
        with Peer(WAITER, env={"SOCK": daemon.socket, "NAME": "nobody-either", "TIMEOUT": "0.3"}) as peer:
            peer.expect("waiting")
            assert "nobody-either" in peer.expect("timeout")
            assert peer.wait() == 0


def test_a_dead_waiter_does_not_disturb_the_daemon(make_daemon) -> None:
    daemon = make_daemon()
    env = {"SOCK": daemon.socket, "NAME": "awaited"}
    with vineyard.connect(daemon.socket) as client:
        doomed = Peer(WAITER, env=env)
        survivor = Peer(WAITER, env=env)
        try:
            doomed.expect("waiting")
            survivor.expect("waiting")
            assert wait_for(lambda: _deferred(client, 2))
            os.kill(doomed.pid, signal.SIGKILL)
            doomed.wait()
            assert wait_for(lambda: _deferred(client, 1)), client.status.deferred_requests
            assert client.status.ipc_connections == 2  # the survivor and us
            object_id = client.put(np.arange(10), persist=True, name="awaited")
            got, total = survivor.expect("got").split()
            assert (got, int(total)) == (repr(object_id), 45)
            assert survivor.wait() == 0
            assert client.status.deferred_requests == 0
            assert int(client.get(name="awaited").sum()) == 45
        finally:
            doomed.close()
            survivor.close()


def test_many_waiters_on_many_names_in_threads(make_daemon) -> None:
    """Each thread waits on its own name; names arrive in a shuffled order; all wake."""
    daemon = make_daemon()
    waiters = 16
    results: dict[int, tuple[str, object]] = {}

    def wait(k: int) -> None:
        with vineyard.connect(daemon.socket) as c:
            results[k] = call_bounded(lambda: c.get_name(f"name-{k}", wait=True, timeout=120), 130)

    threads = [threading.Thread(target=wait, args=(k,)) for k in range(waiters)]
    for t in threads:
        t.start()
    with vineyard.connect(daemon.socket) as client:
        assert wait_for(lambda: _deferred(client, waiters)), client.status.deferred_requests
        order = list(np.random.default_rng(5).permutation(waiters))
        expected = {}
        for k in order:
            expected[int(k)] = client.put(np.arange(int(k) + 1), persist=True, name=f"name-{k}")
        for t in threads:
            t.join(140)
        assert not any(t.is_alive() for t in threads)
        assert {k: r for k, r in results.items()} == {k: ("ok", v) for k, v in expected.items()}
