"""The allocator: pure logic, table tests and a Hypothesis state machine against a model."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, initialize, invariant, rule

from vineyard.errors import NotEnoughMemoryException
from vineyard.store.allocator import ALIGNMENT, PAGE, Action, Allocation, Allocator, format_bytes

KiB, MiB = 1 << 10, 1 << 20


def small(limit: int = 16 * MiB, **kw: int) -> Allocator:
    kw.setdefault("arena_size", 1 * MiB)
    kw.setdefault("dedicated_threshold", 64 * KiB)
    kw.setdefault("punch_threshold", 64 * KiB)
    kw.setdefault("cache_limit", 2 * MiB)
    return Allocator(limit, **kw)


# -- table tests ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "charged"),
    [(1, 64), (63, 64), (64, 64), (65, 128), (1000, 1024), (64 * KiB - 1, 64 * KiB)],
)
def test_small_allocations_are_64_byte_aligned(size: int, charged: int) -> None:
    alloc = small()
    a, actions = alloc.allocate(size)
    assert a.size == charged
    assert a.offset % ALIGNMENT == 0
    assert actions == [Action("create", a.segment, 0, 1 * MiB)]
    b, actions = alloc.allocate(size)
    assert actions == []  # same arena
    assert (b.segment, b.offset) == (a.segment, a.offset + charged)
    assert alloc.used == 2 * charged


@pytest.mark.parametrize(("size", "charged"), [(64 * KiB, 64 * KiB), (64 * KiB + 1, 68 * KiB), (3 * MiB, 3 * MiB)])
def test_large_allocations_get_a_dedicated_page_aligned_segment(size: int, charged: int) -> None:
    alloc = small()
    a, actions = alloc.allocate(size)
    assert a == Allocation(a.segment, 0, charged)
    assert actions == [Action("create", a.segment, 0, charged)]
    assert alloc.is_dedicated(a.segment)
    b, _ = alloc.allocate(size)
    assert b.segment != a.segment


def test_freeing_a_dedicated_segment_caches_it_then_closes_it_past_the_cache_limit() -> None:
    alloc = small(cache_limit=1 * MiB, arena_size=128 * KiB)  # the excess (256 KiB) is past an arena
    a, _ = alloc.allocate(512 * KiB)
    b, _ = alloc.allocate(768 * KiB)
    assert alloc.free(a) == []  # kept resident for reuse
    assert alloc.cached_bytes == 512 * KiB
    assert alloc.free(b) == [Action("close", a.segment)]  # the oldest goes first
    assert alloc.cached_bytes == 768 * KiB
    assert alloc.used == 0
    # a cached segment of about the right size is reused instead of creating one
    c, actions = alloc.allocate(700 * KiB)
    assert actions == []
    assert c.segment == b.segment
    assert c.size == 768 * KiB
    assert alloc.cached_bytes == 0


def test_trim_releases_every_cached_segment() -> None:
    alloc = small()
    a, _ = alloc.allocate(100)
    d, _ = alloc.allocate(256 * KiB)
    alloc.free(a)
    alloc.free(d)
    actions = alloc.trim()
    assert Action("punch", a.segment, 0, PAGE) in actions
    assert Action("close", d.segment) in actions
    assert alloc.cached_bytes == 0


def test_free_ranges_coalesce() -> None:
    alloc = small(arena_size=256 * KiB)
    blocks = [alloc.allocate(32 * KiB - 64)[0] for _ in range(8)]  # fills the arena exactly
    assert len({b.segment for b in blocks}) == 1
    for b in blocks[::2] + blocks[1::2]:  # free out of order
        alloc.free(b)
    # one free range of the whole arena again: 4 blocks of 60 KiB fit without a new segment
    again = [alloc.allocate(60 * KiB)[0] for _ in range(4)]
    assert {a.segment for a in again} == {blocks[0].segment}


def test_punch_only_over_free_whole_pages_of_a_busy_arena() -> None:
    alloc = small(punch_threshold=8 * KiB)
    keep, _ = alloc.allocate(100)
    big = [alloc.allocate(16 * KiB)[0] for _ in range(4)]
    tail, _ = alloc.allocate(100)
    assert alloc.free(big[0]) == [Action("punch", keep.segment, PAGE, 3 * PAGE)]
    actions = alloc.free(big[1])  # coalesced with the first: a larger hole
    assert actions == [Action("punch", keep.segment, PAGE, 7 * PAGE)]
    for action in actions:
        assert action.offset >= keep.offset + keep.size
        assert action.offset + action.length <= tail.offset


def test_the_limit_is_hard_and_the_error_names_the_sizes() -> None:
    alloc = small(limit=1 * MiB, dedicated_threshold=64 * KiB)
    a, _ = alloc.allocate(700 * KiB)
    with pytest.raises(NotEnoughMemoryException) as info:
        alloc.allocate(400 * KiB)
    exc = info.value
    assert (exc.asked, exc.used, exc.limit) == (400 * KiB, 700 * KiB, 1 * MiB)
    for number in (400 * KiB, 700 * KiB, 1 * MiB):
        assert str(number) in str(exc)
    assert alloc.used == 700 * KiB  # a failed allocation changes nothing
    alloc.free(a)
    b, _ = alloc.allocate(1 * MiB)  # the whole limit, once the first is gone
    assert b.size == 1 * MiB


def test_cached_memory_makes_room_when_the_limit_needs_it() -> None:
    alloc = small(limit=1 * MiB, cache_limit=1 * MiB, arena_size=256 * KiB)
    a, _ = alloc.allocate(600 * KiB)
    alloc.free(a)
    assert alloc.cached_bytes == 600 * KiB
    _, actions = alloc.allocate(900 * KiB)  # does not fit beside the cached segment
    assert Action("close", a.segment) in actions
    assert alloc.used + alloc.cached_bytes <= alloc.limit


def test_a_cached_segment_too_large_for_the_room_left_is_not_reused() -> None:
    # a reused segment is charged whole: reusing 256 KiB for a 128 KiB blob here would
    # take used past the limit (found by the state machine below)
    alloc = small(limit=1 * MiB, cache_limit=1 * MiB, dedicated_threshold=64 * KiB)
    big, _ = alloc.allocate(256 * KiB)
    alloc.free(big)
    alloc.allocate(800 * KiB)
    a, actions = alloc.allocate(128 * KiB)
    assert a.segment != big.segment
    assert a.size == 128 * KiB
    assert Action("create", a.segment, 0, 128 * KiB) in actions
    assert alloc.used == 928 * KiB <= alloc.limit
    assert alloc.used + alloc.cached_bytes <= alloc.limit


def test_shrink_gives_back_the_tail() -> None:
    alloc = small()
    a, _ = alloc.allocate(4096)
    b, _ = alloc.allocate(64)
    head, _ = alloc.shrink(a, 100)
    assert head == Allocation(a.segment, a.offset, 128)
    assert alloc.used == 128 + 64
    c, _ = alloc.allocate(4096 - 128)  # the freed tail is reused
    assert (c.segment, c.offset) == (a.segment, a.offset + 128)
    assert b.offset == a.offset + 4096
    d, _ = alloc.allocate(1 * MiB)
    assert alloc.shrink(d, 10) == (d, [])  # dedicated: all or nothing


@pytest.mark.parametrize("bad", [0, -1])
def test_bad_sizes(bad: int) -> None:
    with pytest.raises(ValueError, match="positive"):
        small().allocate(bad)
    with pytest.raises(ValueError, match="positive"):
        Allocator(bad)


@pytest.mark.parametrize(
    ("n", "text"), [(0, "0 B"), (1023, "1023 B"), (1536, "1.5 KiB"), (256 * MiB, "256.0 MiB"), (3 << 40, "3.0 TiB")]
)
def test_format_bytes(n: int, text: str) -> None:
    assert format_bytes(n) == text


# -- state machine -------------------------------------------------------------------------


class AllocatorMachine(RuleBasedStateMachine):
    """Random allocate/free/shrink/trim against a model of segments and live ranges."""

    allocations = Bundle("allocations")

    def __init__(self) -> None:
        super().__init__()
        self.alloc: Allocator | None = None
        self.segments: dict[int, int] = {}  # live segment -> size (from create/close actions)
        self.ever: set[int] = set()
        self.live: dict[int, Allocation] = {}  # key -> allocation
        self.key = 0

    @initialize(
        limit=st.integers(64 * KiB, 1 * MiB),
        arena=st.sampled_from([4 * KiB, 64 * KiB, 256 * KiB]),
        threshold=st.sampled_from([1 * KiB, 16 * KiB, 128 * KiB]),
        cache=st.integers(0, 1 * MiB),
        punch=st.sampled_from([PAGE, 16 * KiB, 1 * MiB]),
    )
    def init(self, limit: int, arena: int, threshold: int, cache: int, punch: int) -> None:
        self.alloc = Allocator(limit, arena_size=arena, dedicated_threshold=threshold,
                               cache_limit=cache, punch_threshold=punch)

    def _apply(self, actions: list[Action]) -> None:
        for action in actions:
            if action.kind == "create":
                assert action.segment not in self.ever, "segment ids are never reused"
                self.segments[action.segment] = action.length
                self.ever.add(action.segment)
            elif action.kind == "close":
                assert action.segment in self.segments
                assert not any(a.segment == action.segment for a in self.live.values()), "closed a busy segment"
                del self.segments[action.segment]
            else:
                assert action.kind == "punch"
                assert action.segment in self.segments
                assert action.offset % PAGE == 0
                assert action.length % PAGE == 0
                assert action.length > 0
                assert action.offset + action.length <= self.segments[action.segment]
                lo, hi = action.offset, action.offset + action.length
                for a in self.live.values():
                    if a.segment == action.segment:
                        assert a.offset + a.size <= lo or a.offset >= hi, f"punched live memory {a} by {action}"

    @rule(target=allocations, size=st.one_of(st.integers(1, 300), st.integers(1, 64 * KiB), st.integers(1, 300 * KiB)))
    def allocate(self, size: int) -> int:
        if self.alloc is None:
            return -1
        before = self.alloc.used
        unit = PAGE if size >= self.alloc.dedicated_threshold else ALIGNMENT
        if before + -(-size // unit) * unit > self.alloc.limit:
            with pytest.raises(NotEnoughMemoryException) as info:
                self.alloc.allocate(size)
            assert self.alloc.used == before
            assert (info.value.asked, info.value.used, info.value.limit) == (size, before, self.alloc.limit)
            return -1
        a, actions = self.alloc.allocate(size)
        self._apply(actions)
        assert a.size >= size
        assert a.segment in self.segments
        assert a.offset + a.size <= self.segments[a.segment]
        if self.alloc.is_dedicated(a.segment):
            assert a.offset == 0
            assert not any(o.segment == a.segment for o in self.live.values()), "a dedicated segment was shared"
        else:
            assert a.offset % ALIGNMENT == 0
            assert size < self.alloc.dedicated_threshold
        for other in self.live.values():
            if other.segment == a.segment:
                assert a.offset + a.size <= other.offset or other.offset + other.size <= a.offset, "overlap"
        self.key += 1
        self.live[self.key] = a
        return self.key

    @rule(count=st.integers(2, 30), size=st.integers(1, 64 * KiB))
    def allocate_many(self, count: int, size: int) -> None:
        for _ in range(count):
            if self.allocate(size) == -1:
                return

    @rule(key=consumes(allocations))
    def free(self, key: int) -> None:
        a = self.live.pop(key, None)
        if a is None or self.alloc is None:
            return
        self._apply(self.alloc.free(a))

    @rule(key=allocations, new=st.integers(1, 300 * KiB))
    def shrink(self, key: int, new: int) -> None:
        a = self.live.get(key)
        if a is None or self.alloc is None or new > a.size:
            return
        head, actions = self.alloc.shrink(a, new)
        self.live[key] = head
        self._apply(actions)
        assert head.segment == a.segment
        assert head.offset == a.offset
        assert new <= head.size <= a.size

    @rule()
    def trim(self) -> None:
        if self.alloc is not None:
            self._apply(self.alloc.trim())
            assert self.alloc.cached_bytes == 0

    @invariant()
    def accounting(self) -> None:
        if self.alloc is None:
            return
        assert self.alloc.used == sum(a.size for a in self.live.values())
        assert self.alloc.used <= self.alloc.limit
        assert self.alloc.cached_bytes <= self.alloc.cache_limit
        assert self.alloc.used + self.alloc.cached_bytes <= self.alloc.limit, "resident memory past the limit"
        assert set(self.alloc.segments()) == set(self.segments)


AllocatorMachine.TestCase.settings = settings(max_examples=300, stateful_step_count=60, deadline=None)
TestAllocator = AllocatorMachine.TestCase


def test_small_allocations_push_cached_memory_out_past_the_limit() -> None:
    alloc = Allocator(1 * MiB, arena_size=256 * KiB, dedicated_threshold=64 * KiB, cache_limit=1 * MiB)
    d, _ = alloc.allocate(600 * KiB)
    alloc.free(d)
    released = []
    for _ in range(17):  # 1,020 KiB in all
        _, actions = alloc.allocate(60 * KiB)
        released += [a for a in actions if a.segment == d.segment]
        assert alloc.used + alloc.cached_bytes <= alloc.limit
    # the cached segment was trimmed from its end, a little at a time, as room was needed
    assert {a.kind for a in released} == {"punch"}
    assert [a.offset + a.length for a in released] == [600 * KiB] + [a.offset for a in released[:-1]]
    assert alloc.cached_bytes == released[-1].offset == 4 * KiB
    _, actions = alloc.allocate(4 * KiB)  # the last byte of the limit: the segment goes
    assert Action("close", d.segment) in actions


def test_only_the_excess_is_trimmed_off_a_large_cached_segment() -> None:
    alloc = small(limit=64 * MiB, cache_limit=8 * MiB, arena_size=1 * MiB)
    big, _ = alloc.allocate(8 * MiB)
    alloc.free(big)
    assert alloc.cached_bytes == 8 * MiB
    small_one, _ = alloc.allocate(512 * KiB)
    # freeing it caches it too: 512 KiB too many, punched off the end of the big one
    assert alloc.free(small_one) == [Action("punch", big.segment, 8 * MiB - 512 * KiB, 512 * KiB)]
    assert alloc.cached_bytes == 8 * MiB
    # the trimmed segment is still reused for its size (its end faults in again)
    again, actions = alloc.allocate(8 * MiB)
    assert again.segment == big.segment
    assert actions == []
    assert alloc.cached_bytes == 512 * KiB


def test_an_excess_past_an_arena_closes_the_segment_in_one_go() -> None:
    alloc = small(limit=64 * MiB, cache_limit=8 * MiB, arena_size=1 * MiB)
    big, _ = alloc.allocate(8 * MiB)
    alloc.free(big)
    other, _ = alloc.allocate(2 * MiB)
    assert alloc.free(other) == [Action("close", big.segment)]
    assert alloc.cached_bytes == 2 * MiB


def test_trim_releases_every_cached_segment_whole() -> None:
    alloc = small(limit=64 * MiB, cache_limit=16 * MiB, arena_size=1 * MiB)
    a, _ = alloc.allocate(8 * MiB)
    b, _ = alloc.allocate(100)
    alloc.free(a)
    alloc.free(b)
    actions = alloc.trim()
    assert Action("close", a.segment) in actions
    assert Action("punch", b.segment, 0, PAGE) in actions
    assert alloc.cached_bytes == 0
