"""Runs: blobs created side by side in one allocation (the columns of a DataFrame block)."""

from __future__ import annotations

import pytest

from vineyard.errors import InvalidException, NotEnoughMemoryException
from vineyard.ids import EMPTY_BLOB_ID
from vineyard.store.allocator import Allocator
from vineyard.store.objects import ObjectStore

KiB, MiB = 1 << 10, 1 << 20


def make_store(limit: int = 64 * MiB) -> ObjectStore:
    return ObjectStore(Allocator(limit, arena_size=1 * MiB, dedicated_threshold=256 * KiB, cache_limit=0))


def test_a_run_is_one_allocation_with_its_blobs_in_order() -> None:
    store = make_store()
    blobs, _ = store.create_blobs(1, [10, 300 * KiB, 300 * KiB, 300 * KiB, 20], runs=[[1, 3]])
    single, *run, last = blobs
    assert single.region is None
    assert last.region is None
    assert len({b.alloc.segment for b in run}) == 1
    assert [b.alloc.offset - run[0].alloc.offset for b in run] == [0, 300 * KiB, 600 * KiB]
    assert run[0].region is run[1].region is run[2].region
    assert run[0].region.alloc.size >= 900 * KiB


def test_a_runs_memory_goes_with_its_last_blob() -> None:
    store = make_store()
    blobs, _ = store.create_blobs(1, [300 * KiB] * 3, runs=[[0, 3]])
    store.seal(1, [b.id for b in blobs])
    store.release(1, [b.id for b in blobs])
    used = store.allocator.used
    for blob in blobs[:2]:
        store.delete([blob.id])
        assert store.allocator.used == used  # the others still live in it
    store.delete([blobs[2].id])
    assert store.allocator.used == 0


@pytest.mark.parametrize(
    ("sizes", "runs"),
    [
        ([10, 10], [[0, 1]]),  # a run of one
        ([10, 10], [[0, 3]]),  # past the end
        ([10, 10, 10], [[0, 2], [1, 2]]),  # overlapping
        ([10, 0, 10], [[0, 3]]),  # an empty blob in a run
        ([10, 10], [[0]]),  # not [start, count]
    ],
)
def test_bad_runs_are_refused_and_leave_nothing(sizes: list[int], runs: list[list[int]]) -> None:
    store = make_store()
    with pytest.raises(InvalidException, match="run"):
        store.create_blobs(1, sizes, runs=runs)
    assert store.allocator.used == 0
    assert set(store.blobs) == {EMPTY_BLOB_ID}


def test_a_run_that_does_not_fit_rolls_back_everything() -> None:
    store = make_store(limit=1 * MiB)
    with pytest.raises(NotEnoughMemoryException):
        store.create_blobs(1, [400 * KiB, 400 * KiB, 400 * KiB], runs=[[1, 2]])
    assert store.allocator.used == 0
    assert set(store.blobs) == {EMPTY_BLOB_ID}
    assert store.held.get(1, set()) == set()


def test_a_blob_of_a_run_cannot_shrink() -> None:
    store = make_store()
    blobs, _ = store.create_blobs(1, [100, 100], runs=[[0, 2]])
    with pytest.raises(InvalidException, match="part of a run"):
        store.shrink(1, blobs[0].id, 10)
    store.abort(1, blobs[0].id)
    store.abort(1, blobs[1].id)
    assert store.allocator.used == 0
