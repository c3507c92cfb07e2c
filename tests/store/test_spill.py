"""store/spill.py: LRU and watermark decisions, spill files, and the spiller against a model.

The spiller runs here over plain bytearrays (``FakeMemory``) and a dict of files
(``FakeStorage``, which can be told to fail like a full disk), so every rule is checked
without a daemon: cold blobs go oldest first, held and pinned blobs never go, reloads bring
back the same bytes, and a failed write loses nothing.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from vineyard.errors import (
    InvalidException,
    IOErrorException,
    NotEnoughMemoryException,
    ObjectNotExistsException,
)
from vineyard.ids import EMPTY_BLOB_ID
from vineyard.store import spill
from vineyard.store.allocator import PAGE, Action, Allocator
from vineyard.store.objects import ObjectStore
from vineyard.store.spill import (
    ColdList,
    Spiller,
    SpillStorage,
    Watermarks,
    check_spill_config,
    choose_victims,
    spill_status,
)

KiB = 1 << 10
LIMIT = 100 * PAGE  # ten blobs of BLOB bytes fill it
BLOB = 10 * PAGE


# -- fakes -------------------------------------------------------------------------------------


class FakeMemory:
    """Segments as bytearrays; carries out allocator actions like store/memory.py."""

    def __init__(self) -> None:
        self.segments: dict[int, bytearray] = {}

    def apply(self, actions: list[Action]) -> None:
        for a in actions:
            if a.kind == "create":
                self.segments[a.segment] = bytearray(a.length)
            elif a.kind == "punch":
                self.segments[a.segment][a.offset : a.offset + a.length] = bytes(a.length)
            elif a.kind == "close":
                del self.segments[a.segment]
            else:
                raise AssertionError(a.kind)

    def view(self, segment: int, offset: int, size: int) -> memoryview:
        return memoryview(self.segments[segment])[offset : offset + size]


class FakeStorage:
    """Spill files in a dict; ``fail_writes``/``fail_reads`` act like a full or broken disk."""

    path = "<memory>"

    def __init__(self) -> None:
        self.files: dict[int, bytes] = {}
        self.fail_writes = False
        self.fail_reads = False
        self.closed = False

    def write(self, blob_id: int, data: memoryview) -> str:
        if self.fail_writes:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.files[blob_id] = bytes(data)
        return f"<memory>/{blob_id:x}"

    def read_into(self, blob_id: int, target: memoryview) -> None:
        if self.fail_reads or blob_id not in self.files:
            raise OSError(errno.EIO, "Input/output error")
        target[:] = self.files[blob_id]

    def remove(self, blob_id: int) -> None:
        self.files.pop(blob_id, None)

    def close(self) -> None:
        self.files.clear()
        self.closed = True


class Rig:
    """An object table with a spiller over fake memory and storage."""

    def __init__(self, limit: int = LIMIT, lower: float = 0.3, upper: float = 0.8) -> None:
        self.allocator = Allocator(limit, arena_size=64 * KiB, dedicated_threshold=16 * KiB, cache_limit=0)
        self.store = ObjectStore(self.allocator)
        self.memory = FakeMemory()
        self.storage = FakeStorage()
        self.deferred: list[Callable[[], None]] = []
        self.now = 0.0
        self.spiller = Spiller(
            self.store, self.storage, lower, upper,
            apply=self.memory.apply, view=self.memory.view, defer=self.deferred.append,
            clock=lambda: self.now, retry_delay=5.0,
        )
        self.data: dict[int, bytes] = {}
        self._counter = 0

    def create(self, conn: int = 1, size: int = BLOB, seal: bool = True) -> int:
        try:
            (blob,), actions = self.store.create_blobs(conn, [size])
        except NotEnoughMemoryException as exc:
            self.memory.apply(getattr(exc, "actions", []))
            raise
        self.memory.apply(actions)
        self._counter += 1
        data = (self._counter.to_bytes(4, "little") * (size // 4 + 1))[:size]
        if blob.alloc is not None:
            self.memory.view(blob.alloc.segment, blob.alloc.offset, size)[:] = data
        self.data[blob.id] = data
        if seal:
            self.store.seal(conn, [blob.id])
        return blob.id

    def cold(self, conn: int = 1, size: int = BLOB) -> int:
        """A sealed blob nobody holds."""
        blob_id = self.create(conn, size)
        self.release(conn, blob_id)
        return blob_id

    def release(self, conn: int, *blob_ids: int) -> None:
        self.memory.apply(self.store.release(conn, list(blob_ids)))

    def get(self, conn: int, *blob_ids: int) -> list[bytes]:
        self.spiller.reload_blobs(list(blob_ids))
        out = []
        for blob in self.store.get_blobs(conn, list(blob_ids)):
            assert blob is not None
            assert blob.alloc is not None
            out.append(bytes(self.memory.view(blob.alloc.segment, blob.alloc.offset, blob.size)))
        return out

    def settle(self) -> None:
        for _ in range(10):
            if not self.deferred:
                return
            self.deferred.pop(0)()

    def in_memory(self, blob_id: int) -> bool:
        return self.store.blobs[blob_id].alloc is not None

    def content(self, blob_id: int) -> bytes:
        blob = self.store.blobs[blob_id]
        if blob.alloc is None:
            return self.storage.files[blob_id]
        return bytes(self.memory.view(blob.alloc.segment, blob.alloc.offset, blob.size))


# -- ColdList, choose_victims, Watermarks ------------------------------------------------------


def test_cold_list_keeps_least_recently_used_first() -> None:
    cold = ColdList()
    cold.touch(1, 10)
    cold.touch(2, 20)
    cold.touch(3, 30)
    cold.touch(1, 10)  # used again: now the most recent
    assert list(cold) == [2, 3, 1]
    assert cold.bytes == 60
    assert len(cold) == 3
    cold.discard(3)
    cold.discard(3)  # twice is fine
    cold.discard(99)
    assert list(cold) == [2, 1]
    assert cold.bytes == 30
    assert 2 in cold
    assert 3 not in cold
    cold.touch(2, 25)  # a new size replaces the old one
    assert cold.bytes == 35


@pytest.mark.parametrize(
    ("sizes", "used", "target", "exclude", "expected"),
    [
        ([(1, 10), (2, 10)], 50, 50, (), []),  # already at the target
        ([(1, 10), (2, 10)], 50, 60, (), []),  # below it
        ([(1, 10), (2, 10), (3, 10)], 50, 40, (), [1]),  # oldest first, stop at the target
        ([(1, 10), (2, 10), (3, 10)], 50, 35, (), [1, 2]),
        ([(1, 10), (2, 10), (3, 10)], 50, 35, (1,), [2, 3]),  # excluded ones are passed over
        ([(1, 10), (2, 10)], 50, 0, (), [1, 2]),  # not enough: everything eligible
        ([(1, 10), (2, 10)], 50, 0, {1, 2}, []),
        ([], 50, 0, (), []),
    ],
)
def test_choose_victims(
    sizes: list[tuple[int, int]], used: int, target: int, exclude: object, expected: list[int]
) -> None:
    cold = ColdList()
    for blob_id, size in sizes:
        cold.touch(blob_id, size)
    assert choose_victims(cold, used, target, exclude) == expected  # type: ignore[arg-type]


def test_watermarks() -> None:
    marks = Watermarks(1000, 0.3, 0.8)
    assert (marks.low, marks.high) == (300, 800)
    assert not marks.over(800)
    assert marks.over(801)
    assert Watermarks(1000, 0.5, 0.5).high == 500
    for lower, upper in [(0.9, 0.8), (-0.1, 0.5), (0.3, 1.5)]:
        with pytest.raises(ValueError, match="spill"):
            Watermarks(1000, lower, upper)


# -- files -----------------------------------------------------------------------------------


def test_storage_round_trip_and_safe_names(tmp_path: object) -> None:
    path = str(tmp_path)
    storage = SpillStorage(path)
    data = memoryview(bytes(range(256)) * 40)
    final = storage.write(0x8000_0000_0000_0001, data)
    assert os.path.basename(final) == "o8000000000000001"
    assert sorted(os.listdir(path)) == [".vineyard-spill.lock", "o8000000000000001"]
    target = bytearray(len(data))
    storage.read_into(0x8000_0000_0000_0001, memoryview(target))
    assert bytes(target) == bytes(data)
    with pytest.raises(OSError, match="holds"):  # a file of the wrong size is refused
        storage.read_into(0x8000_0000_0000_0001, memoryview(bytearray(10)))
    storage.remove(0x8000_0000_0000_0001)
    storage.remove(0x8000_0000_0000_0001)  # already gone: fine
    with pytest.raises(FileNotFoundError):
        storage.read_into(0x8000_0000_0000_0001, memoryview(target))
    storage.close()
    assert os.listdir(path) == []


def test_a_failed_write_leaves_no_file(tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    storage = SpillStorage(str(tmp_path))

    def disk_full(fd: int, data: memoryview) -> None:
        os.write(fd, bytes(data[:10]))  # a part got out before the disk filled up
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(spill, "_write_all", disk_full)
    with pytest.raises(OSError, match="No space"):
        storage.write(0x8000_0000_0000_0002, memoryview(b"x" * 100))
    assert os.listdir(str(tmp_path)) == [".vineyard-spill.lock"]  # neither temp nor final name
    storage.close()


def test_opening_removes_a_crashed_daemons_files_only(tmp_path: object) -> None:
    path = str(tmp_path)
    for name in ("o8000000000000003", ".o8000000000000004.tmp", "notes.txt", "o123"):
        with open(os.path.join(path, name), "w") as f:
            f.write("left behind")
    storage = SpillStorage(path)
    assert sorted(os.listdir(path)) == [".vineyard-spill.lock", "notes.txt", "o123"]
    storage.close()
    storage.close()  # twice is fine
    assert sorted(os.listdir(path)) == ["notes.txt", "o123"]  # the directory and others' files stay


def test_one_daemon_per_spill_directory(tmp_path: object) -> None:
    first = SpillStorage(str(tmp_path))
    with pytest.raises(BlockingIOError):
        SpillStorage(str(tmp_path))
    problem = check_spill_config(str(tmp_path), 0.3, 0.8)
    assert problem is not None
    assert "in use by another running vineyard daemon" in problem
    first.close()
    second = SpillStorage(str(tmp_path))  # free again once the first let go
    second.close()


def test_check_spill_config(tmp_path: object) -> None:
    base = str(tmp_path)
    fresh = os.path.join(base, "a", "b")
    assert check_spill_config(fresh, 0.3, 0.8) is None
    assert os.listdir(fresh) == []  # created, probed, left empty
    a_file = os.path.join(base, "file")
    with open(a_file, "w") as f:
        f.write("x")
    problem = check_spill_config(a_file, 0.3, 0.8)
    assert problem is not None
    assert "not a directory" in problem
    assert "--spill-path" in problem
    problem = check_spill_config(os.path.join(a_file, "below"), 0.3, 0.8)
    assert problem is not None
    assert "Cannot use the spill path" in problem
    problem = check_spill_config(fresh, 0.9, 0.5)
    assert problem is not None
    assert "lower rate" in problem


# -- the spiller -------------------------------------------------------------------------------


def test_usage_past_the_high_watermark_spills_oldest_cold_blobs_down_to_the_low_one() -> None:
    rig = Rig()
    ids = [rig.cold() for _ in range(8)]  # 80% of the limit: not past it yet
    rig.settle()
    assert rig.storage.files == {}
    ids.append(rig.cold())  # 90%
    rig.settle()
    assert rig.allocator.used <= rig.spiller.marks.low
    assert rig.allocator.used == 3 * BLOB
    assert sorted(rig.storage.files) == sorted(ids[:6])  # the six oldest
    assert all(rig.in_memory(i) for i in ids[6:])
    status = spill_status(rig.spiller)
    assert (status["spilled_blobs"], status["spilled_bytes"]) == (6, 6 * BLOB)
    for blob_id in ids:
        assert rig.content(blob_id) == rig.data[blob_id]


def test_a_held_blob_is_never_spilled_and_its_view_stays() -> None:
    rig = Rig()
    held = rig.create(conn=7)  # conn 7 keeps it
    view = rig.memory.view(*_where(rig, held))
    for _ in range(9):
        rig.cold()
    rig.settle()
    assert rig.in_memory(held)
    assert bytes(view) == rig.data[held]
    with pytest.raises(InvalidException, match="in use by 1 connection"):
        rig.spiller.evict([held])
    rig.release(7, held)  # let go: now it may go like any other
    rig.spiller.evict([held])
    assert not rig.in_memory(held)
    assert rig.storage.files[held] == rig.data[held]


def _where(rig: Rig, blob_id: int) -> tuple[int, int, int]:
    blob = rig.store.blobs[blob_id]
    assert blob.alloc is not None
    return blob.alloc.segment, blob.alloc.offset, blob.size


def test_get_reloads_the_same_bytes_at_a_valid_location() -> None:
    rig = Rig()
    first = rig.cold()
    rig.spiller.evict([first])
    assert rig.store.blobs[first].alloc is None
    assert rig.store.blobs[first].spilled is not None
    (got,) = rig.get(2, first)
    assert got == rig.data[first]
    assert rig.storage.files == {}
    assert rig.store.blobs[first].spilled is None
    assert spill_status(rig.spiller)["spilled_blobs"] == 0
    assert first not in rig.spiller.cold_list  # held by conn 2 now


def test_reloading_spills_others_but_never_what_the_same_request_needs() -> None:
    rig = Rig(upper=1.0, lower=1.0)  # no watermark spilling: only room for the reloads
    a, b = rig.cold(), rig.cold()
    rig.spiller.evict([a, b])
    fillers = [rig.cold() for _ in range(9)]  # room for one more blob, not two
    got = rig.get(3, a, b, fillers[0])
    assert got == [rig.data[a], rig.data[b], rig.data[fillers[0]]]
    assert rig.in_memory(fillers[0])  # the oldest, but this request needs it
    assert not rig.in_memory(fillers[1])  # the next oldest made room instead
    assert all(rig.in_memory(f) for f in fillers[2:])


def test_an_allocation_that_would_fail_spills_cold_blobs_first() -> None:
    rig = Rig(upper=1.0, lower=1.0)  # no watermark spilling: only the failing allocation
    ids = [rig.cold() for _ in range(10)]
    assert rig.allocator.used == LIMIT
    new = rig.create(conn=2)
    assert rig.allocator.used == LIMIT
    assert list(rig.storage.files) == [ids[0]]  # just the oldest, just enough
    assert rig.content(new) == rig.data[new]


def test_without_cold_blobs_a_full_store_still_refuses_and_harms_nothing() -> None:
    rig = Rig()
    held = [rig.create(conn=1) for _ in range(10)]
    with pytest.raises(NotEnoughMemoryException, match="in use, pinned or unsealed"):
        rig.create(conn=2)
    assert rig.allocator.used == LIMIT
    for blob_id in held:
        assert rig.content(blob_id) == rig.data[blob_id]


def test_a_failed_write_keeps_the_blob_in_memory_and_is_reported() -> None:
    rig = Rig()
    ids = [rig.cold() for _ in range(9)]
    rig.storage.fail_writes = True
    rig.settle()
    assert rig.storage.files == {}
    assert all(rig.in_memory(i) for i in ids)
    status = spill_status(rig.spiller)
    assert status["spill_failures"] == 1
    assert "No space left on device" in status["spill_error"]
    with pytest.raises(NotEnoughMemoryException, match="No space left on device"):
        rig.create(conn=2, size=2 * BLOB)
    with pytest.raises(IOErrorException, match="stays in memory"):
        rig.spiller.evict([ids[0]])
    for blob_id in ids:
        assert rig.content(blob_id) == rig.data[blob_id]
    # after a failure, spilling for the watermark pauses; the disk is fine again meanwhile
    rig.storage.fail_writes = False
    rig.spiller.check()
    assert rig.storage.files == {}
    rig.now += 10
    rig.spiller.check()
    assert rig.allocator.used <= rig.spiller.marks.low


def test_a_failed_reload_leaves_the_blob_spilled() -> None:
    rig = Rig()
    blob_id = rig.cold()
    rig.spiller.evict([blob_id])
    used = rig.allocator.used
    rig.storage.fail_reads = True
    with pytest.raises(IOErrorException, match="cannot reload"):
        rig.get(2, blob_id)
    assert rig.allocator.used == used  # the room taken for it was given back
    assert rig.store.blobs[blob_id].spilled is not None
    rig.storage.fail_reads = False
    assert rig.get(2, blob_id) == [rig.data[blob_id]]


def test_evict_is_all_or_nothing_about_what_may_go() -> None:
    rig = Rig()
    cold = rig.cold()
    unsealed = rig.create(conn=1, seal=False)
    pinned = rig.cold()
    rig.spiller.load([pinned], pin=True)
    with pytest.raises(InvalidException) as info:
        rig.spiller.evict([cold, unsealed, pinned])
    assert "not sealed" in info.value.message
    assert "pinned (unpin it first)" in info.value.message
    assert rig.in_memory(cold)  # nothing was evicted
    assert rig.spiller.evict([cold]) == [cold]
    assert rig.spiller.evict([cold]) == []  # already on disk: skipped
    with pytest.raises(ObjectNotExistsException):
        rig.spiller.evict([0x8000_0000_0000_00FF])
    with pytest.raises(ObjectNotExistsException):
        rig.spiller.evict([0x1234])
    assert rig.spiller.evict([EMPTY_BLOB_ID]) == []


def test_evict_and_load_an_object_means_all_its_blobs() -> None:
    rig = Rig()
    a, b = rig.cold(), rig.cold()
    (object_id, _), = rig.store.create(1, {"typename": "Pair", "a": {"id": a}, "b": {"id": b}})
    assert sorted(rig.spiller.evict([object_id])) == sorted([a, b])
    rig.spiller.reload_objects([object_id, 0x4242])  # an unknown id is the request's to report
    assert rig.in_memory(a)
    assert rig.in_memory(b)
    rig.spiller.evict([object_id])
    assert sorted(rig.spiller.load([object_id])) == sorted([a, b])


def test_a_pinned_blob_is_never_spilled_until_unpinned() -> None:
    rig = Rig()
    pinned = rig.cold()
    rig.spiller.evict([pinned])
    assert rig.spiller.load([pinned], pin=True) == [pinned]
    assert rig.in_memory(pinned)
    for _ in range(9):
        rig.cold()
    rig.settle()
    assert rig.in_memory(pinned)
    assert rig.spiller.unpin([pinned]) == [pinned]
    assert rig.spiller.unpin([pinned]) == []
    assert pinned in rig.spiller.cold_list
    for _ in range(6):  # 30% left after the first round, 90% now
        rig.cold()
    rig.settle()
    assert not rig.in_memory(pinned)  # older than the six: it went first


def test_deleting_a_spilled_blob_removes_its_file() -> None:
    rig = Rig()
    blob_id = rig.cold()
    rig.spiller.evict([blob_id])
    _, actions = rig.store.delete([blob_id])
    rig.memory.apply(actions)
    assert rig.storage.files == {}
    assert spill_status(rig.spiller)["spilled_bytes"] == 0
    assert blob_id not in rig.store.blobs


def test_a_closed_connection_makes_its_blobs_cold() -> None:
    rig = Rig()
    blob_id = rig.create(conn=5)
    assert blob_id not in rig.spiller.cold_list
    rig.memory.apply(rig.store.disconnect(5))
    assert blob_id in rig.spiller.cold_list
    rig.spiller.close()
    assert rig.storage.closed


def test_status_without_spilling() -> None:
    status = spill_status(None)
    assert status["spilled_blobs"] == 0
    assert status["spill_path"] is None


# -- a model ---------------------------------------------------------------------------------

SIZES = st.sampled_from([100, 3000, 5000, 20 * KiB, 5 * PAGE])
CONNS = st.sampled_from([1, 2, 3])


class SpillMachine(RuleBasedStateMachine):
    """Random creates, gets, releases, evicts, loads, pins, deletes, disconnects and disk
    failures; after each step the object table, the spiller and the bytes must agree."""

    def __init__(self) -> None:
        super().__init__()
        self.rig = Rig(limit=24 * PAGE)

    def _pick(self, data: st.DataObject) -> int | None:
        ids = sorted(i for i in self.rig.store.blobs if i != EMPTY_BLOB_ID)
        return data.draw(st.sampled_from(ids)) if ids else None

    @rule(conn=CONNS, size=SIZES, seal=st.booleans(), release=st.booleans())
    def create(self, conn: int, size: int, seal: bool, release: bool) -> None:
        used = self.rig.allocator.used
        try:
            blob_id = self.rig.create(conn, size, seal)
        except NotEnoughMemoryException:
            assert self.rig.allocator.used <= used  # a refusal takes nothing
            return
        if seal and release:
            self.rig.release(conn, blob_id)

    @rule(conn=CONNS, sizes=st.lists(SIZES, min_size=1, max_size=6))
    def create_cold(self, conn: int, sizes: list[int]) -> None:
        for size in sizes:
            self.create(conn, size, seal=True, release=True)

    @rule(conn=CONNS, data=st.data())
    def get(self, conn: int, data: st.DataObject) -> None:
        blob_id = self._pick(data)
        if blob_id is None or not self.rig.store.blobs[blob_id].sealed or self.rig.store.blobs[blob_id].deleted:
            return
        try:
            (got,) = self.rig.get(conn, blob_id)
        except NotEnoughMemoryException:
            return
        assert got == self.rig.data[blob_id]

    @rule(conn=CONNS, data=st.data())
    def release(self, conn: int, data: st.DataObject) -> None:
        blob_id = self._pick(data)
        if blob_id is not None:
            self.rig.release(conn, blob_id)

    @rule(data=st.data())
    def evict(self, data: st.DataObject) -> None:
        blob_id = self._pick(data)
        if blob_id is None or self.rig.store.blobs[blob_id].deleted:
            return
        blob = self.rig.store.blobs[blob_id]
        may_go = blob.sealed and not blob.holders and blob_id not in self.rig.spiller.pinned
        try:
            self.rig.spiller.evict([blob_id])
        except InvalidException:
            assert not may_go
            return
        except IOErrorException:
            assert self.rig.storage.fail_writes
            assert blob.alloc is not None
            return
        assert may_go
        assert blob.alloc is None

    @rule(data=st.data(), pin=st.booleans())
    def load(self, data: st.DataObject, pin: bool) -> None:
        blob_id = self._pick(data)
        if blob_id is None or self.rig.store.blobs[blob_id].deleted:
            return
        try:
            self.rig.spiller.load([blob_id], pin=pin)
        except NotEnoughMemoryException:
            return
        assert self.rig.store.blobs[blob_id].alloc is not None

    @rule(data=st.data())
    def unpin(self, data: st.DataObject) -> None:
        blob_id = self._pick(data)
        if blob_id is not None and not self.rig.store.blobs[blob_id].deleted:
            self.rig.spiller.unpin([blob_id])

    @rule(data=st.data())
    def delete(self, data: st.DataObject) -> None:
        blob_id = self._pick(data)
        if blob_id is not None:
            _, actions = self.rig.store.delete([blob_id])
            self.rig.memory.apply(actions)

    @rule(conn=CONNS)
    def disconnect(self, conn: int) -> None:
        self.rig.memory.apply(self.rig.store.disconnect(conn))

    @rule(fail=st.booleans())
    def disk(self, fail: bool) -> None:
        self.rig.storage.fail_writes = fail

    @rule()
    def settle(self) -> None:
        self.rig.now += 10  # past any pause after a failure
        self.rig.settle()
        self.rig.spiller.check()
        if not self.rig.storage.fail_writes and self.rig.spiller.marks.over(self.rig.allocator.used):
            assert not self.rig.spiller.cold_list  # only blobs that may not go are left

    @invariant()
    def books_agree(self) -> None:
        rig, spiller = self.rig, self.rig.spiller
        blobs = [b for b in rig.store.blobs.values() if b.id != EMPTY_BLOB_ID]
        assert rig.allocator.used == sum(b.alloc.size for b in blobs if b.alloc is not None)
        assert rig.allocator.used <= rig.allocator.limit
        on_disk = {b.id for b in blobs if b.spilled is not None}
        assert on_disk == set(rig.storage.files) == set(spiller.spilled)
        assert spiller.spilled_bytes == sum(b.size for b in blobs if b.spilled is not None)
        expected_cold = {
            b.id for b in blobs
            if b.sealed and not b.holders and not b.deleted and b.alloc is not None and b.id not in spiller.pinned
        }
        assert set(spiller.cold_list) == expected_cold
        for blob in blobs:
            assert (blob.alloc is None) == (blob.spilled is not None)
            if blob.holders or blob.id in spiller.pinned:
                assert blob.alloc is not None  # held and pinned blobs stay in memory
            assert rig.content(blob.id) == rig.data[blob.id]
        assert spiller.pinned <= {b.id for b in blobs}


TestSpillMachine = SpillMachine.TestCase
TestSpillMachine.settings = settings(max_examples=80, stateful_step_count=50, deadline=None)
