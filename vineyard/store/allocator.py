"""Where blobs live inside shared-memory segments. Pure logic: no syscalls.

Rules:
- Blobs smaller than ``dedicated_threshold`` are carved from *arenas* (large sparse
  segments) at 64-byte alignment; larger blobs get a *dedicated* segment of their own, so
  freeing one gives back every page.
- ``used`` counts allocated bytes; an allocation that would take ``used`` past ``limit``
  fails with :class:`NotEnoughMemoryException` naming asked, used and limit.
- Freed memory stays resident for reuse (faulted-in pages copy ~10x faster) up to
  ``cache_limit`` bytes: empty dedicated segments, and the touched part of empty arenas.
  Past that, the oldest is released, or, when the excess is at most an arena's size, only
  the excess is punched off its end. Free ranges of at least ``punch_threshold`` inside a
  busy arena are released at once.
- The allocator never touches memory: it returns :class:`Action` lists that the memory
  layer (``store/memory.py``) carries out — create a segment, punch a hole, close one.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict
from dataclasses import dataclass, field

from vineyard.errors import NotEnoughMemoryException

__all__ = [
    "ALIGNMENT",
    "PAGE",
    "Action",
    "Allocation",
    "Allocator",
    "format_bytes",
]

ALIGNMENT = 64
PAGE = 4096


def _align(n: int, to: int) -> int:
    return (n + to - 1) // to * to


def format_bytes(n: float) -> str:
    """``1536`` → ``'1.5 KiB'``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


@dataclass(frozen=True, slots=True)
class Action:
    """Something the memory layer must do: ``create``, ``punch`` or ``close`` a segment."""

    kind: str
    segment: int
    offset: int = 0
    length: int = 0


@dataclass(frozen=True, slots=True)
class Allocation:
    segment: int
    offset: int
    size: int  # bytes charged against the limit


@dataclass(slots=True)
class _Arena:
    id: int
    size: int
    used: int = 0
    hwm: int = 0  # highest offset ever handed out since the last release: resident bound
    free: dict[int, int] = field(default_factory=dict)  # start -> length
    ends: dict[int, int] = field(default_factory=dict)  # end -> start


@dataclass(slots=True)
class _Dedicated:
    id: int
    size: int
    busy: bool = True


class Allocator:
    """Offsets within segments for every blob, within a hard byte limit."""

    def __init__(
        self,
        limit: int,
        *,
        arena_size: int = 64 << 20,
        dedicated_threshold: int = 1 << 20,
        cache_limit: int | None = None,
        punch_threshold: int = 1 << 20,
    ) -> None:
        if limit <= 0:
            raise ValueError(f"the memory limit must be positive, not {limit}")
        self.limit = limit
        self.arena_size = _align(max(PAGE, min(arena_size, limit)), PAGE)
        self.dedicated_threshold = min(dedicated_threshold, self.arena_size)
        self.cache_limit = limit // 4 if cache_limit is None else cache_limit
        self.punch_threshold = punch_threshold
        self.used = 0
        self._next_segment = 0
        self._arenas: dict[int, _Arena] = {}
        self._dedicated: dict[int, _Dedicated] = {}
        # free blocks of all arenas, sorted by (length, segment, start): best fit by bisect
        self._by_size: list[tuple[int, int, int]] = []
        # empty segments kept resident, oldest first: segment -> resident bytes
        self._cache: OrderedDict[int, int] = OrderedDict()
        self._cached_bytes = 0

    # -- queries -----------------------------------------------------------------------
    @property
    def cached_bytes(self) -> int:
        """Bytes of empty segments kept resident for reuse."""
        return self._cached_bytes

    @property
    def available(self) -> int:
        return self.limit - self.used

    def segments(self) -> dict[int, int]:
        """Every live segment and its size."""
        out = {a.id: a.size for a in self._arenas.values()}
        out.update((d.id, d.size) for d in self._dedicated.values())
        return out

    def is_dedicated(self, segment: int) -> bool:
        return segment in self._dedicated

    # -- allocation --------------------------------------------------------------------
    def allocate(self, size: int) -> tuple[Allocation, list[Action]]:
        """Find room for ``size`` bytes (``size > 0``).

        Raises
        ------
        NotEnoughMemoryException
            When the limit would be passed.
        """
        if size <= 0:
            raise ValueError(f"allocation size must be positive, not {size}")
        if size >= self.dedicated_threshold:
            charged = _align(size, PAGE)
            self._check(size, charged)
            return self._allocate_dedicated(charged)
        charged = _align(size, ALIGNMENT)
        self._check(size, charged)
        return self._allocate_small(charged)

    def _check(self, asked: int, charged: int) -> None:
        if self.used + charged > self.limit:
            raise NotEnoughMemoryException(
                f"Failed to allocate memory of size {asked} ({format_bytes(asked)}), total "
                f"available memory size are {self.limit} ({format_bytes(self.limit)}), and "
                f"{self.used} ({format_bytes(self.used)}) are already in use; "
                f"{self.limit - self.used} bytes are free",
                asked=asked,
                used=self.used,
                limit=self.limit,
            )

    def _allocate_dedicated(self, charged: int) -> tuple[Allocation, list[Action]]:
        actions: list[Action] = []
        reuse = None
        # a reused segment is charged whole, so it must fit under the limit too
        largest = min(charged + max(charged // 4, 1 << 20), self.limit - self.used)
        for seg_id in self._cache:
            seg = self._dedicated.get(seg_id)
            if seg is None or not charged <= seg.size <= largest:
                continue
            if reuse is None or seg.size < reuse.size:
                reuse = seg
        if reuse is not None:
            self._uncache(reuse.id)
            reuse.busy = True
            self.used += reuse.size
            actions.extend(self._trim_cache(self.cache_limit))
            return Allocation(reuse.id, 0, reuse.size), actions
        seg = _Dedicated(self._new_segment_id(), charged)
        self._dedicated[seg.id] = seg
        self.used += charged
        actions.append(Action("create", seg.id, 0, charged))
        actions.extend(self._trim_cache(self.cache_limit))
        return Allocation(seg.id, 0, charged), actions

    def _allocate_small(self, charged: int) -> tuple[Allocation, list[Action]]:
        actions: list[Action] = []
        i = bisect.bisect_left(self._by_size, (charged, -1, -1))
        if i == len(self._by_size):
            arena = _Arena(self._new_segment_id(), self.arena_size)
            self._arenas[arena.id] = arena
            actions.append(Action("create", arena.id, 0, arena.size))
            self._add_free(arena, 0, arena.size)
            i = bisect.bisect_left(self._by_size, (charged, -1, -1))
        length, seg_id, start = self._by_size[i]
        arena = self._arenas[seg_id]
        self._remove_free(arena, start, length)
        if length > charged:
            self._add_free(arena, start + charged, length - charged)
        if arena.used == 0 and seg_id in self._cache:
            self._uncache(seg_id)
        arena.used += charged
        arena.hwm = max(arena.hwm, start + charged)
        self.used += charged
        # memory kept for reuse must make way: resident memory stays within the limit
        actions.extend(self._trim_cache(self.cache_limit))
        return Allocation(seg_id, start, charged), actions

    # -- release -----------------------------------------------------------------------
    def free(self, allocation: Allocation) -> list[Action]:
        """Give an allocation back; returns what the memory layer must release."""
        self.used -= allocation.size
        seg_id = allocation.segment
        dedicated = self._dedicated.get(seg_id)
        if dedicated is not None:
            dedicated.busy = False
            self._cache_segment(seg_id, dedicated.size)
            return self._trim_cache(self.cache_limit)
        arena = self._arenas[seg_id]
        arena.used -= allocation.size
        start, length = allocation.offset, allocation.size
        before = arena.ends.get(start)
        if before is not None:
            before_len = start - before
            self._remove_free(arena, before, before_len)
            start, length = before, length + before_len
        after_len = arena.free.get(start + length)
        if after_len is not None:
            self._remove_free(arena, start + length, after_len)
            length += after_len
        self._add_free(arena, start, length)
        if arena.used == 0:
            self._cache_segment(seg_id, arena.hwm)
            return self._trim_cache(self.cache_limit)
        lo, hi = _align(start, PAGE), (start + length) // PAGE * PAGE
        if hi - lo >= self.punch_threshold:
            return [Action("punch", seg_id, lo, hi - lo)]
        return []

    def shrink(self, allocation: Allocation, new_size: int) -> tuple[Allocation, list[Action]]:
        """Keep only the first ``new_size`` bytes (``0 < new_size``) of an allocation."""
        if allocation.segment in self._dedicated:
            return allocation, []  # a dedicated segment is all or nothing
        charged = _align(new_size, ALIGNMENT)
        if charged >= allocation.size:
            return allocation, []
        head = Allocation(allocation.segment, allocation.offset, charged)
        tail = Allocation(allocation.segment, allocation.offset + charged, allocation.size - charged)
        return head, self.free(tail)

    def trim(self) -> list[Action]:
        """Release every cached empty segment (``memory_trim``)."""
        return self._trim_cache(0)

    # -- internals ---------------------------------------------------------------------
    def _new_segment_id(self) -> int:
        self._next_segment += 1
        return self._next_segment

    def _add_free(self, arena: _Arena, start: int, length: int) -> None:
        arena.free[start] = length
        arena.ends[start + length] = start
        bisect.insort(self._by_size, (length, arena.id, start))

    def _remove_free(self, arena: _Arena, start: int, length: int) -> None:
        del arena.free[start]
        del arena.ends[start + length]
        i = bisect.bisect_left(self._by_size, (length, arena.id, start))
        del self._by_size[i]

    def _cache_segment(self, seg_id: int, resident: int) -> None:
        self._cache[seg_id] = resident
        self._cached_bytes += resident

    def _uncache(self, seg_id: int) -> None:
        self._cached_bytes -= self._cache.pop(seg_id)

    def _trim_cache(self, bound: int) -> list[Action]:
        actions: list[Action] = []
        while self._cache and (
            self._cached_bytes > bound or self._cached_bytes + self.used > self.limit
        ):
            seg_id, resident = self._cache.popitem(last=False)
            self._cached_bytes -= resident
            excess = max(self._cached_bytes + resident - bound,
                         self._cached_bytes + resident + self.used - self.limit)
            keep = (resident - excess) // PAGE * PAGE
            if keep > 0 and resident - keep <= self.arena_size:
                # Only the excess goes, from the end: releasing pages costs ~0.2 ms per
                # MiB, so trimming a few MiB off a large cached segment beats releasing it
                # all (and refaulting it all on its next use). A punch is done at once, on
                # the loop, hence at most an arena's worth.
                actions.append(Action("punch", seg_id, keep, _align(resident, PAGE) - keep))
                self._cache[seg_id] = keep
                self._cache.move_to_end(seg_id, last=False)  # still the oldest
                self._cached_bytes += keep
                arena = self._arenas.get(seg_id)
                if arena is not None:
                    arena.hwm = keep
                continue
            arena = self._arenas.get(seg_id)
            if arena is not None:
                # an empty arena stays usable; only its touched pages go back
                if resident:
                    actions.append(Action("punch", seg_id, 0, _align(resident, PAGE)))
                arena.hwm = 0
            else:
                del self._dedicated[seg_id]
                actions.append(Action("close", seg_id, 0, 0))
        return actions
