"""What only the embedded store does: bounded history, stalled watchers, its reaper thread."""

from __future__ import annotations

import pytest

from vineyard.store.meta import EventType, RevisionCompacted, WatchClosed, open_backend
from vineyard.store.meta import local as local_module
from vineyard.store.meta.local import LocalBackend, LocalStore


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_history_is_bounded_and_old_revisions_compact_away():
    store = LocalStore(history=5, reaper_interval=None)
    b = LocalBackend(store, "p")
    first = b.put("/k", "0")
    for i in range(1, 10):
        b.put("/k", str(i))
    assert store.compact_revision == b.head_revision() - 4
    with pytest.raises(RevisionCompacted):
        b.range("/k", revision=first)
    assert b.range("/k", revision=store.compact_revision).kvs[0].value == b"5"
    watch = b.watch("/", start_revision=first)
    with pytest.raises(RevisionCompacted):
        watch.get(timeout=1)


def test_a_stalled_watcher_is_cut_off_and_told_to_reload(monkeypatch):
    monkeypatch.setattr(local_module, "_MAX_PENDING", 3)
    store = LocalStore(reaper_interval=None)
    b = LocalBackend(store, "p")
    watch = b.watch("/")
    for i in range(5):
        b.put("/k", str(i))
    batches = [watch.get(timeout=1) for _ in range(3)]
    assert [batch[0].kv.value for batch in batches] == [b"0", b"1", b"2"]
    with pytest.raises(RevisionCompacted):
        watch.get(timeout=1)


def test_the_reaper_expires_leases_without_other_calls():
    clock = Clock()
    store = LocalStore(clock=clock, reaper_interval=0.01)
    b = LocalBackend(store, "p")
    lease = b.grant(5)
    b.put("/k", "v", lease=lease)
    watch = b.watch("/")
    clock.now = 10.0
    # No call on the store from here on: only the reaper can produce this event.
    events = watch.get(timeout=10)
    assert [(e.type, e.key) for e in events] == [(EventType.DELETE, "/k")]
    store.close()


def test_views_share_one_store_and_close_only_their_watches():
    store = LocalStore(reaper_interval=None)
    a, b = LocalBackend(store, "p"), LocalBackend(store, "p")
    watch_a, watch_b = a.watch("/"), b.watch("/")
    a.close()
    rev = b.put("/k", "v")
    assert b.get("/k").mod_revision == rev
    assert watch_b.get(timeout=1)[0].key == "/k"
    with pytest.raises(WatchClosed):
        watch_a.get(timeout=0.1)
    assert [kv.key for kv in a.range("/").kvs] == ["/k"]  # a closed view still reads


def test_open_backend_by_name():
    backend = open_backend("local", "vineyard/S0000000000000000")
    backend.put("/k", "v")
    assert backend.get("/k").value == b"v"
    backend.close()  # it owned its store: the reaper thread stops too
    assert isinstance(backend, LocalBackend)
    assert backend.store._stop.is_set()
    with pytest.raises(ValueError, match="etcd-endpoints"):
        open_backend("etcd", "p")
    with pytest.raises(ValueError, match="unknown metadata backend"):
        open_backend("redis", "p")
