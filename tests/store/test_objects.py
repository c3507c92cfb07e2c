"""store/objects.py against a dict model: a Hypothesis state machine plus table tests."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from vineyard.errors import (
    AssertionFailedException,
    GlobalObjectInvalidException,
    InvalidException,
    MetaTreeInvalidException,
    NotEnoughMemoryException,
    ObjectNotExistsException,
    ObjectNotSealedException,
    ObjectSealedException,
)
from vineyard.ids import BLOB_BIT, EMPTY_BLOB_ID
from vineyard.store.allocator import Action, Allocator
from vineyard.store.objects import BLOB_TYPENAME, ObjectStore

KiB, MiB = 1 << 10, 1 << 20


def make_store(limit: int = 64 * MiB) -> ObjectStore:
    return ObjectStore(Allocator(limit, arena_size=1 * MiB, dedicated_threshold=256 * KiB, cache_limit=0))


def sealed_blob(store: ObjectStore, conn: int = 1, size: int = 100) -> int:
    (blob,), _ = store.create_blobs(conn, [size])
    store.seal(conn, [blob.id])
    return blob.id


def tensor(store: ObjectStore, conn: int = 1, size: int = 100, persist: bool = False) -> int:
    blob_id = sealed_blob(store, conn, size)
    return store.create(conn, {"typename": "vineyard::Tensor<int>", "buffer_": {"id": blob_id}}, persist)[0][0]


# -- table tests ---------------------------------------------------------------------------


def test_blob_lifecycle() -> None:
    store = make_store()
    (blob,), actions = store.create_blobs(1, [1000])
    assert [a.kind for a in actions] == ["create"]
    assert blob.id & BLOB_BIT
    assert not blob.sealed
    assert store.exists(blob.id) is False  # unsealed blobs are not visible yet
    with pytest.raises(ObjectNotSealedException):
        store.get_blobs(2, [blob.id])
    assert store.get_blobs(2, [blob.id], unsafe=True) == [blob]
    with pytest.raises(InvalidException, match="another connection"):
        store.seal(2, [blob.id])
    store.seal(1, [blob.id])
    assert store.exists(blob.id)
    with pytest.raises(ObjectSealedException):
        store.seal(1, [blob.id])
    with pytest.raises(ObjectSealedException):
        store.abort(1, blob.id)


def test_zero_size_blobs_are_the_empty_blob() -> None:
    store = make_store()
    blobs, actions = store.create_blobs(1, [0, 0])
    assert [b.id for b in blobs] == [EMPTY_BLOB_ID, EMPTY_BLOB_ID]
    assert actions == []
    store.seal(1, [EMPTY_BLOB_ID])  # sealing the empty blob is harmless
    assert store.exists(EMPTY_BLOB_ID)
    assert store.delete([EMPTY_BLOB_ID]) == ([], [])
    assert store.exists(EMPTY_BLOB_ID)


def test_create_blobs_is_all_or_nothing() -> None:
    store = make_store(limit=1 * MiB)
    with pytest.raises(NotEnoughMemoryException):
        store.create_blobs(1, [400 * KiB, 400 * KiB, 400 * KiB])
    assert store.allocator.used == 0
    assert set(store.blobs) == {EMPTY_BLOB_ID}
    assert store.held.get(1, set()) == set()


def test_abort_and_shrink() -> None:
    store = make_store()
    (blob,), _ = store.create_blobs(1, [1000])
    with pytest.raises(InvalidException, match="cannot shrink"):
        store.shrink(1, blob.id, 2000)
    with pytest.raises(InvalidException, match="another connection"):
        store.shrink(2, blob.id, 10)
    store.shrink(1, blob.id, 10)
    assert blob.size == 10
    assert store.allocator.used == 64
    store.abort(1, blob.id)
    assert blob.id not in store.blobs
    assert store.allocator.used == 0
    with pytest.raises(ObjectNotExistsException):
        store.abort(1, blob.id)


def test_create_fills_system_keys_and_members() -> None:
    store = make_store()
    b = sealed_blob(store)
    created = store.create(1, {"typename": "t", "x": 1, "inner": {"typename": "u", "buffer_": {"id": b}}})
    (outer, _), (inner, _) = created
    tree = store.tree(outer)
    assert tree["typename"] == "t"
    assert tree["x"] == 1
    assert tree["id"] == outer
    assert tree["transient"] is True
    assert tree["instance_id"] == 0
    assert tree["nbytes"] == 0
    assert "signature" in tree
    assert "__timestamp" in tree
    assert tree["inner"]["id"] == inner
    assert tree["inner"]["buffer_"] == {
        "id": b, "typename": BLOB_TYPENAME, "length": 100, "nbytes": 100, "instance_id": 0, "transient": True,
    }
    assert store.parents[b] == {inner}
    assert store.parents[inner] == {outer}


@pytest.mark.parametrize(
    ("tree", "exc", "match"),
    [
        ({"x": 1}, MetaTreeInvalidException, "typename"),
        ({"typename": ""}, MetaTreeInvalidException, "typename"),
        ({"typename": 5}, MetaTreeInvalidException, "typename"),
        ({"typename": BLOB_TYPENAME}, AssertionFailedException, "blobs cannot"),
        ({"typename": "t", "m": {"id": 12345}}, ObjectNotExistsException, "o0000000000003039"),
        ({"typename": "t", "m": {"id": BLOB_BIT | 5}}, ObjectNotExistsException, "o8000000000000005"),
        ({"typename": "t", "m": {"id": "o1"}}, MetaTreeInvalidException, "not an integer"),
        ({"typename": "t", "m": {"x": 1}}, MetaTreeInvalidException, "typename"),
        ({"typename": "t", "global": True, "m": {"typename": "u", "global": True}}, GlobalObjectInvalidException,
         "nested"),
    ],
)
def test_create_rejects_bad_trees_without_side_effects(tree: dict, exc: type, match: str) -> None:
    store = make_store()
    with pytest.raises(exc, match=match):
        store.create(1, tree)
    assert store.objects == {}
    assert store.parents == {}


def test_create_refers_a_global_member_from_a_global_object() -> None:
    store = make_store()
    g = store.create(1, {"typename": "g", "global": True, "p": {"typename": "u"}})[0][0]
    with pytest.raises(GlobalObjectInvalidException):
        store.create(1, {"typename": "g2", "global": True, "m": {"id": g}})


def test_create_seals_the_blobs_it_names_but_only_its_own() -> None:
    store = make_store()
    (blob,), _ = store.create_blobs(1, [10])
    with pytest.raises(InvalidException, match="another connection"):
        store.create(2, {"typename": "t", "b": {"id": blob.id}})
    assert not blob.sealed
    store.create(1, {"typename": "t", "b": {"id": blob.id}})
    assert blob.sealed


def test_persist_is_recursive_and_idempotent() -> None:
    store = make_store()
    inner = tensor(store)
    outer = store.create(1, {"typename": "t", "m": {"id": inner}})[0][0]
    store.persist(outer)
    store.persist(outer)
    assert store.tree(outer)["transient"] is False
    assert store.tree(outer)["m"]["transient"] is False
    with pytest.raises(AssertionFailedException, match="cannot be persisted"):
        store.persist(BLOB_BIT | 1)
    with pytest.raises(ObjectNotExistsException):
        store.persist(12345)


def test_names() -> None:
    store = make_store()
    t = tensor(store)
    with pytest.raises(InvalidException, match="persist it first"):
        store.put_name(t, "n")
    with pytest.raises(InvalidException, match="blobs cannot have name"):
        store.put_name(BLOB_BIT | 1, "n")
    store.persist(t)
    store.put_name(t, "n")
    store.put_name(t, "m")
    assert store.get_name("n") == t
    assert store.list_names("*", False, 10) == {"n": t, "m": t}
    assert store.tree(t)["__name"] in ("n", "m")
    u = tensor(store, persist=True)
    store.put_name(t, "only-t")
    store.put_name(u, "n")  # overwrites silently
    assert store.get_name("n") == u
    assert store.tree(u)["__name"] == "n"
    assert store.tree(t)["__name"] == "only-t"
    store.put_name(u, "only-t")
    assert "__name" not in store.tree(t)
    store.put_name(t, "only-t")
    store.drop_name("n")
    store.drop_name("n")  # no-op
    assert store.get_name("n") is None
    assert store.list_names("m*", False, 10) == {"m": t}
    assert store.list_names("^m$", True, 10) == {"m": t}
    assert store.list_names("[", True, 10) == {}
    store.delete([t])
    assert store.get_name("m") is None


def test_delete_keeps_and_reports_members_still_referenced() -> None:
    store = make_store()
    inner = tensor(store)
    a = store.create(1, {"typename": "a", "m": {"id": inner}})[0][0]
    b = store.create(1, {"typename": "b", "m": {"id": inner}})[0][0]
    assert store.delete([inner]) == ([inner], [])
    assert store.exists(inner)
    kept, _ = store.delete([a])
    assert kept == []
    assert not store.exists(a)
    assert store.exists(inner)
    store.delete([b])
    assert not store.exists(inner)  # deep: the last holder took it along


def test_delete_not_deep_keeps_object_members_but_not_blobs() -> None:
    store = make_store()
    inner = tensor(store)
    blob_id = store.objects[inner].members["buffer_"]
    b2 = sealed_blob(store)
    outer = store.create(1, {"typename": "t", "m": {"id": inner}, "b": {"id": b2}})[0][0]
    store.delete([outer], deep=False)
    assert store.exists(inner)
    assert store.exists(blob_id)
    assert not store.exists(b2)  # direct blob members always go


def test_force_deletes_the_containers() -> None:
    store = make_store()
    inner = tensor(store)
    outer = store.create(1, {"typename": "t", "m": {"id": inner}})[0][0]
    top = store.create(1, {"typename": "t", "m": {"id": outer}})[0][0]
    assert store.delete([inner], force=True)[0] == []
    assert not store.exists(inner)
    assert not store.exists(outer)
    assert not store.exists(top)
    assert store.objects == {}
    assert store.allocator.used == 128  # its creator still holds the blob
    store.disconnect(1)
    assert store.allocator.used == 0


def test_deleted_blob_memory_waits_for_its_readers() -> None:
    store = make_store()
    t = tensor(store, conn=1, size=4096)
    blob_id = store.objects[t].members["buffer_"]
    store.release(1, [blob_id])
    _, blobs = store.get(2, t)  # connection 2 reads it
    assert [b.id for b in blobs] == [blob_id]
    _, actions = store.delete([t])
    assert actions == []  # nothing freed: 2 still holds it
    assert not store.exists(t)
    assert not store.exists(blob_id)
    assert store.blobs[blob_id].alloc is not None
    with pytest.raises(ObjectNotExistsException):
        store.tree(t)
    assert store.release(2, [blob_id]) != [] or store.allocator.used == 0
    assert blob_id not in store.blobs
    assert store.allocator.used == 0


def test_disconnect_drops_references_and_unsealed_blobs() -> None:
    store = make_store()
    (unsealed,), _ = store.create_blobs(3, [5000])
    t = tensor(store, conn=1)
    blob_id = store.objects[t].members["buffer_"]
    store.get(3, t)
    store.delete([t])
    assert blob_id in store.blobs
    store.disconnect(3)
    assert unsealed.id not in store.blobs
    assert blob_id in store.blobs
    store.disconnect(1)
    assert blob_id not in store.blobs
    assert store.allocator.used == 0
    assert store.held == {}


def test_shallow_copy() -> None:
    store = make_store()
    t = tensor(store, persist=True)
    store.put_name(t, "orig")
    c = store.shallow_copy(t, {"extra": 1.5})
    tree = store.tree(c)
    assert tree["extra"] == 1.5
    assert tree["transient"] is True
    assert "__name" not in tree
    assert tree["buffer_"] == store.tree(t)["buffer_"]
    store.delete([t])
    assert store.exists(c)
    assert store.exists(tree["buffer_"]["id"])
    for extra in ({"a": [1]}, {"a": {"b": 1}}, {"a": b"x"}, {"id": 1}, {"typename": "x"}):
        with pytest.raises(InvalidException):
            store.shallow_copy(c, extra)
    with pytest.raises(AssertionFailedException):
        store.shallow_copy(BLOB_BIT | 1, None)


def test_list() -> None:
    store = make_store()
    ids = [tensor(store) for _ in range(3)]
    store.create(1, {"typename": "vineyard::DataFrame"})
    assert {m["id"] for m in store.list("vineyard::Tensor*", False, 10)} == set(ids)
    assert len(store.list("*", False, 2)) == 2
    assert len(store.list("vineyard::Tensor<.*>", True, 10)) == 3
    assert store.list("Tensor", True, 10) == []  # a regex must match all of the typename
    blobs = store.list("vineyard::Blob", False, 10)
    assert len(blobs) == 3
    assert all(m["typename"] == BLOB_TYPENAME for m in blobs)
    assert store.list("(", True, 10) == []


def test_labels_and_delete_by_labels() -> None:
    store = make_store()
    a, b = tensor(store), tensor(store)
    store.label(a, {"job": "x", "n": 1})
    store.label(b, {"job": "y"})
    assert store.labels_of(store.objects[a]) == {"job": "x", "n": "1"}
    deleted, _ = store.delete_by_labels({"job": "x"}, None)
    assert deleted == [a]
    assert store.exists(b)
    assert not store.exists(a)


def test_clear_frees_everything() -> None:
    store = make_store()
    for _ in range(3):
        t = tensor(store, persist=True)
    store.put_name(t, "n")
    sealed_blob(store)
    store.clear()
    assert store.objects == {}
    assert store.names == {}
    assert store.parents == {}
    for conn in list(store.held):
        store.disconnect(conn)
    assert store.allocator.used == 0


# -- state machine -------------------------------------------------------------------------

CONNS = st.sampled_from([1, 2, 3])


class ObjectStoreMachine(RuleBasedStateMachine):
    """ObjectStore against a dict model of objects, members, names and blob readers."""

    @initialize()
    def setup(self) -> None:
        self.store = make_store(limit=4 * MiB)
        self.unsealed: dict[int, int] = {}  # blob -> creator
        self.sealed: set[int] = set()  # visible sealed blobs
        self.objects: dict[int, dict[str, int]] = {}  # object -> members
        self.persisted: set[int] = set()
        self.names: dict[str, int] = {}
        self.readers: dict[int, set[int]] = {}  # blob -> conns holding it (incl. deleted blobs)
        self.zombies: set[int] = set()  # deleted blobs still held by someone

    # -- helpers -------------------------------------------------------------------
    def _parents(self, target: int) -> set[int]:
        return {o for o, members in self.objects.items() if target in members.values()}

    def _delete(self, target: int, force: bool, deep: bool) -> bool:
        """The model of deletion; returns False when the target is kept."""
        if target not in self.objects and target not in self.sealed:
            return True
        if self._parents(target) and not force:
            return False
        if force:
            for parent in self._parents(target):
                self._delete(parent, True, deep)
        self._delete_one(target, deep)
        return True

    def _delete_one(self, target: int, deep: bool) -> None:
        if target & BLOB_BIT:
            if target in self.sealed:
                self.sealed.discard(target)
                if self.readers.get(target):
                    self.zombies.add(target)
                else:
                    self.readers.pop(target, None)
            return
        members = self.objects.pop(target, None)
        if members is None:
            return
        self.persisted.discard(target)
        for name in [n for n, o in self.names.items() if o == target]:
            del self.names[name]
        for member in members.values():
            if (deep or member & BLOB_BIT) and not self._parents(member):
                self._delete_one(member, deep)

    def _hold(self, conn: int, blob: int) -> None:
        if blob != EMPTY_BLOB_ID:
            self.readers.setdefault(blob, set()).add(conn)

    def _unhold(self, conn: int, blob: int) -> None:
        holders = self.readers.get(blob)
        if holders is None:
            return
        holders.discard(conn)
        if not holders and blob in self.zombies:
            self.zombies.discard(blob)
            del self.readers[blob]

    def _blobs_of(self, object_id: int) -> set[int]:
        out: set[int] = set()
        for member in self.objects[object_id].values():
            out |= {member} if member & BLOB_BIT else self._blobs_of(member)
        return out

    # -- rules ---------------------------------------------------------------------
    @rule(conn=CONNS, sizes=st.lists(st.integers(0, 300 * KiB), min_size=1, max_size=3))
    def create_blobs(self, conn: int, sizes: list[int]) -> None:
        used = self.store.allocator.used
        try:
            blobs, _ = self.store.create_blobs(conn, sizes)
        except NotEnoughMemoryException:
            assert self.store.allocator.used == used
            return
        for blob, size in zip(blobs, sizes, strict=True):
            assert blob.size == size
            if size == 0:
                assert blob.id == EMPTY_BLOB_ID
                continue
            self.unsealed[blob.id] = conn
            self._hold(conn, blob.id)

    @precondition(lambda self: self.unsealed)
    @rule(data=st.data())
    def seal(self, data: st.DataObject) -> None:
        blob = data.draw(st.sampled_from(sorted(self.unsealed)))
        conn = data.draw(CONNS)
        if conn != self.unsealed[blob]:
            with pytest.raises(InvalidException):
                self.store.seal(conn, [blob])
            return
        self.store.seal(conn, [blob])
        del self.unsealed[blob]
        self.sealed.add(blob)

    @precondition(lambda self: self.unsealed)
    @rule(data=st.data())
    def abort(self, data: st.DataObject) -> None:
        blob = data.draw(st.sampled_from(sorted(self.unsealed)))
        conn = self.unsealed.pop(blob)
        self.store.abort(conn, blob)
        self.readers.pop(blob, None)

    @precondition(lambda self: self.sealed or self.objects)
    @rule(data=st.data(), typename=st.sampled_from(["vineyard::Tensor<int>", "vineyard::Pair", "x"]),
          nested=st.booleans(), persist=st.booleans(), conn=CONNS)
    def create_object(self, data: st.DataObject, typename: str, nested: bool, persist: bool, conn: int) -> None:
        pool = sorted(self.sealed | set(self.objects) | {b for b, c in self.unsealed.items() if c == conn})
        members = data.draw(st.lists(st.sampled_from(pool), min_size=1, max_size=3))
        tree: dict = {"typename": typename, "field": 1}
        for i, m in enumerate(members):
            tree[f"m{i}"] = {"id": m}
        if nested:
            tree["inner"] = {"typename": "inner", "m": {"id": members[0]}}
        created = self.store.create(conn, tree, persist=persist)
        assert len(created) == (2 if nested else 1)
        for m in members:
            if m in self.unsealed:
                del self.unsealed[m]
                self.sealed.add(m)
        if nested:
            self.objects[created[1][0]] = {"m": members[0]}
        self.objects[created[0][0]] = {f"m{i}": m for i, m in enumerate(members)}
        if nested:
            self.objects[created[0][0]]["inner"] = created[1][0]
        if persist:
            self._persist(created[0][0])

    @precondition(lambda self: self.objects or self.sealed)
    @rule(data=st.data(), conn=CONNS)
    def get(self, data: st.DataObject, conn: int) -> None:
        target = data.draw(st.sampled_from(sorted(set(self.objects) | self.sealed)))
        if target & BLOB_BIT:
            (blob,) = self.store.get_blobs(conn, [target])
            assert blob is not None
            assert blob.id == target
            self._hold(conn, target)
            return
        tree, blobs = self.store.get(conn, target)
        assert tree["id"] == target
        assert {b.id for b in blobs} == self._blobs_of(target) - {EMPTY_BLOB_ID}
        for b in blobs:
            self._hold(conn, b.id)

    @rule(conn=CONNS, data=st.data())
    def release(self, conn: int, data: st.DataObject) -> None:
        held = sorted(b for b, cs in self.readers.items() if conn in cs and b not in self.unsealed)
        if not held:
            return
        blobs = data.draw(st.lists(st.sampled_from(held), max_size=3, unique=True))
        self.store.release(conn, blobs)
        for b in blobs:
            self._unhold(conn, b)

    @rule(conn=CONNS)
    def disconnect(self, conn: int) -> None:
        self.store.disconnect(conn)
        for blob in [b for b, c in self.unsealed.items() if c == conn]:
            del self.unsealed[blob]
            self.readers.pop(blob, None)
        for blob in list(self.readers):
            self._unhold(conn, blob)

    @precondition(lambda self: self.objects or self.sealed)
    @rule(data=st.data(), force=st.booleans(), deep=st.booleans())
    def delete(self, data: st.DataObject, force: bool, deep: bool) -> None:
        target = data.draw(st.sampled_from(sorted(set(self.objects) | self.sealed)))
        kept, _ = self.store.delete([target], force=force, deep=deep)
        assert (kept == []) == self._delete(target, force, deep), (kept, target)

    @rule(object_id=st.integers(1, 1 << 40))
    def delete_missing(self, object_id: int) -> None:
        if object_id not in self.objects:
            assert self.store.delete([object_id]) == ([], [])

    @precondition(lambda self: self.objects)
    @rule(data=st.data())
    def persist(self, data: st.DataObject) -> None:
        target = data.draw(st.sampled_from(sorted(self.objects)))
        self.store.persist(target)
        self._persist(target)

    def _persist(self, target: int) -> None:
        stack = [target]
        while stack:
            o = stack.pop()
            self.persisted.add(o)
            stack += [m for m in self.objects[o].values() if not m & BLOB_BIT]

    @precondition(lambda self: self.objects)
    @rule(data=st.data(), name=st.sampled_from(["a", "b", "c"]))
    def put_name(self, data: st.DataObject, name: str) -> None:
        target = data.draw(st.sampled_from(sorted(self.objects)))
        if target not in self.persisted:
            with pytest.raises(InvalidException):
                self.store.put_name(target, name)
            return
        self.store.put_name(target, name)
        self.names[name] = target

    @rule(name=st.sampled_from(["a", "b", "c"]))
    def drop_name(self, name: str) -> None:
        self.store.drop_name(name)
        self.names.pop(name, None)

    @precondition(lambda self: self.objects)
    @rule(data=st.data())
    def shallow_copy(self, data: st.DataObject) -> None:
        target = data.draw(st.sampled_from(sorted(self.objects)))
        new = self.store.shallow_copy(target, {"extra_": 1})
        self.objects[new] = dict(self.objects[target])

    @rule()
    def clear(self) -> None:
        self.store.clear()
        for blob in self.sealed:
            if self.readers.get(blob):
                self.zombies.add(blob)
            else:
                self.readers.pop(blob, None)
        self.sealed.clear()
        self.objects.clear()
        self.persisted.clear()
        self.names.clear()

    # -- invariants ----------------------------------------------------------------
    @invariant()
    def same_objects_and_names(self) -> None:
        assert set(self.store.objects) == set(self.objects)
        for object_id, members in self.objects.items():
            assert self.store.objects[object_id].members == members
            assert self.store.tree(object_id)["transient"] == (object_id not in self.persisted)
        assert self.store.names == self.names
        assert self.store.list_names("*", False, 100) == self.names

    @invariant()
    def same_blobs(self) -> None:
        visible = {b for b in self.store.blobs if self.store.exists(b)} - {EMPTY_BLOB_ID}
        assert visible == self.sealed
        live = set(self.store.blobs) - {EMPTY_BLOB_ID}
        assert live == self.sealed | set(self.unsealed) | self.zombies

    @invariant()
    def held_memory_is_never_freed(self) -> None:
        for blob_id, holders in self.readers.items():
            if holders:
                record = self.store.blobs.get(blob_id)
                assert record is not None, f"{blob_id:x} dropped under a reader"
                assert record.alloc is not None, f"{blob_id:x} freed under a reader"
                assert record.holders == holders

    @invariant()
    def memory_accounting(self) -> None:
        charged = sum(b.alloc.size for b in self.store.blobs.values() if b.alloc is not None)
        assert self.store.allocator.used == charged

    @invariant()
    def no_dangling_members_and_parents_index(self) -> None:
        for object_id, record in self.store.objects.items():
            for member in record.members.values():
                assert member in self.store.objects or self.store.exists(member), "dangling member"
                assert object_id in self.store.parents.get(member, set())
        for member, parents in self.store.parents.items():
            assert parents, "an empty parents entry"
            for parent in parents:
                assert member in self.store.objects[parent].members.values()


ObjectStoreMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
TestObjectStore = ObjectStoreMachine.TestCase


def test_memory_actions_only_touch_freed_blobs() -> None:
    """Every page the store punches or segment it closes is free (checked via the allocator)."""
    store = make_store(limit=8 * MiB)
    ids = [tensor(store, size=300 * KiB) for _ in range(10)]
    blob_ids = [store.objects[t].members["buffer_"] for t in ids]
    store.release(1, blob_ids)
    _, actions = store.delete(ids[:5])
    assert all(isinstance(a, Action) for a in actions)
    assert store.allocator.used == 5 * 300 * KiB
