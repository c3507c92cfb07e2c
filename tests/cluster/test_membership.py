"""A daemon's membership loop in-process: a real :class:`Server` loop (no sockets) joined to
an embedded backend, driven through the cluster's inbox.

What the process tests cannot easily provoke is provoked here: the watch's history being
compacted under it (reload), and the lease being revoked behind its back (fencing).
"""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from vineyard.store.cluster import EXIT_FENCED, Cluster
from vineyard.store.meta import LeaseExpired, Put, RevisionCompacted, data_key, name_key, session_prefix
from vineyard.store.meta.local import LocalBackend, LocalStore
from vineyard.store.server import Server, ServerConfig

PREFIX = session_prefix("vytest-membership")


class Member:
    """A Server with a Cluster, its loop on a thread."""

    def __init__(self, shared: LocalStore, tmp: str, ttl: int = 10) -> None:
        self.backend = LocalBackend(shared, PREFIX)
        fields = {"rpc_endpoint": "127.0.0.1:1", "ipc_socket": f"{tmp}/s", "hostname": "h"}
        self.cluster = Cluster(self.backend, ttl, fields)
        self.server = Server(ServerConfig(socket=f"{tmp}/s", size=64 << 20, instance_id=self.cluster.instance_id))
        self.cluster.attach(self.server)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def on_loop(self, fn: Callable[[], Any], timeout: float = 10.0) -> Any:
        """Run ``fn`` on the loop thread and return its result."""
        answer: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.cluster.post(lambda: answer.put(fn()))
        return answer.get(timeout=timeout)

    def wait_on_loop(self, condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
        import time

        deadline = time.monotonic() + timeout
        while not self.on_loop(condition):
            if time.monotonic() > deadline:
                pytest.fail(f"timed out waiting for {what}")
            time.sleep(0.01)

    def stop(self) -> None:
        if self.thread.is_alive():
            self.cluster.post(self.server.stop)
            self.thread.join(10)
        self.cluster.close()


@pytest.fixture
def shared() -> Iterator[LocalStore]:
    store = LocalStore()
    yield store
    store.close()


def _remote_record(typename: str) -> bytes:
    return json.dumps({"fields": {"typename": typename, "instance_id": 99}, "members": {}, "blobs": {}}).encode()


def test_compaction_under_the_watch_reloads_the_view(shared, tmp_path):
    member = Member(shared, str(tmp_path))
    other = LocalBackend(shared, PREFIX)
    try:
        other.commit([], [Put(data_key(0x11), _remote_record("A"))])
        member.wait_on_loop(lambda: 0x11 in member.server.store.objects, "the first object")
        watch = member.cluster.watch
        # history is compacted away while the daemon would still need it: it must reload
        other.commit([], [Put(data_key(0x12), _remote_record("B")), Put(name_key("b"), json.dumps(0x12))])
        other.delete(data_key(0x11))
        shared.compact(shared.head())
        watch.fail(RevisionCompacted("compacted under the watch", compact_revision=shared.head()))
        member.wait_on_loop(lambda: member.cluster.watch is not watch, "a new watch")
        store = member.server.store
        assert member.on_loop(lambda: (0x11 in store.objects, 0x12 in store.objects, store.names.get("b"))) == (
            False,
            True,
            0x12,
        )
        # and the new watch carries on
        other.commit([], [Put(data_key(0x13), _remote_record("C"))])
        member.wait_on_loop(lambda: 0x13 in store.objects, "an object after the reload")
    finally:
        member.stop()
        other.close()


def test_a_revoked_lease_fences_the_loop(shared, tmp_path):
    member = Member(shared, str(tmp_path), ttl=1)
    try:
        assert member.on_loop(lambda: sorted(member.cluster.view.instances)) == [member.cluster.instance_id]
        member.backend.revoke(member.cluster.session.lease)  # as etcd does when the TTL ran out
        member.thread.join(15)
        assert not member.thread.is_alive(), "the loop must stop once the membership is lost"
        assert member.cluster.exit_status == EXIT_FENCED
        with pytest.raises(LeaseExpired):
            member.cluster.check()
    finally:
        member.stop()
