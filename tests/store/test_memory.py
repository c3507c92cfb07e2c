"""Shared memory: memfd segments passed with SCM_RIGHTS, mapped once, pages given back, hard limit.

Page accounting is measured as this process's own ``RssShmem``: the writer's page tables hold
the pages it touched, and punching a hole in the segment (or closing it) takes them away from
every mapping. Other processes on the machine do not disturb that figure. Amounts are hundreds
of MiB so that small noise cannot decide a test.
"""

from __future__ import annotations

import gc
import os
import re

import numpy as np
import pytest

import vineyard
from vineyard.testing import address_in_store, store_mappings, wait_until

MiB = 1 << 20


def rss_shmem(pid: int | str = "self") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("RssShmem:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no RssShmem")


def meminfo_shmem() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("Shmem:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no Shmem")


def open_fds() -> set[str]:
    out = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            out.add(f"{fd}:{os.readlink(f'/proc/self/fd/{fd}')}")
        except FileNotFoundError:  # the descriptor listdir itself used
            pass
    return out


def mappings_by_name() -> dict[str, int]:
    counts: dict[str, int] = {}
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split(maxsplit=5)
            if len(parts) == 6 and parts[5].startswith("/memfd:vineyard-"):
                name = parts[5].split()[0]
                counts[name] = counts.get(name, 0) + 1
    return counts


def flush(client: vineyard.Client) -> None:
    """Let dead views queue their releases, then send them with a request."""
    gc.collect()
    client.status  # noqa: B018 - any request carries the queued releases


def test_segments_arrive_as_memfds_and_are_mapped_once(make_daemon) -> None:
    daemon = make_daemon(size="512Mi")
    before = mappings_by_name()
    fds = open_fds()
    with vineyard.connect(daemon.socket) as client:
        arrays = [client.get(client.put(np.full(1000, i))) for i in range(200)]  # small: one arena
        big = [client.get(client.put(np.ones(4 * MiB // 8))) for _ in range(5)]  # dedicated segments
        mapped = {k: v for k, v in mappings_by_name().items() if before.get(k, 0) < v}
        segments = client._t.segments
        assert len(segments) == 6
        assert len(mapped) == 6
        assert all(v - before.get(k, 0) == 1 for k, v in mapped.items())
        # the socket, plus the one descriptor each mapping keeps (Python's mmap holds a dup)
        new = open_fds() - fds
        assert len(new) == 1 + 6, new
        assert sum("/memfd:vineyard-" in f for f in new) == 6
        for a in arrays + big:
            assert address_in_store(a.__array_interface__["data"][0])
        targets = [os.readlink(f"/proc/{daemon.pid}/fd/{fd}") for fd in os.listdir(f"/proc/{daemon.pid}/fd")]
        assert len({t for t in targets if t.startswith("/memfd:vineyard-")}) == 6
        del arrays, big, a
    gc.collect()
    assert open_fds() == fds  # closing the client gives every descriptor and mapping back
    assert mappings_by_name() == before


def test_pages_are_given_back_when_freed_past_the_reuse_cache(make_daemon) -> None:
    daemon = make_daemon(size="1Gi", args=["--reuse-cache", "0"])
    with vineyard.connect(daemon.socket) as client:
        base = rss_shmem()
        ids = [client.put(np.ones(100 * MiB // 8)) for _ in range(4)]  # 400 MiB written by us
        grown = rss_shmem() - base
        assert grown >= 390 * MiB, grown
        assert client.status.memory_usage >= 400 * MiB
        client.delete(ids)
        flush(client)
        assert client.status.memory_usage == 0
        assert rss_shmem() - base < 10 * MiB  # every page went back to the OS
        assert client._t.segments == {} or len(client._t.segments) <= 1  # closed segments unmapped


def test_small_blobs_in_arenas_give_pages_back_too(make_daemon) -> None:
    daemon = make_daemon(size="1Gi", args=["--reuse-cache", "0"])
    with vineyard.connect(daemon.socket) as client:
        base = rss_shmem()
        ids = [client.put(np.ones(512 * 1024 // 8)) for _ in range(600)]  # 300 MiB of 512 KiB blobs
        assert rss_shmem() - base >= 290 * MiB
        client.delete(ids)
        flush(client)
        assert rss_shmem() - base < 10 * MiB


def test_the_reuse_cache_is_bounded_and_memory_trim_empties_it(make_daemon) -> None:
    daemon = make_daemon(size="2Gi", args=["--reuse-cache", "128Mi"])
    with vineyard.connect(daemon.socket) as client:
        base = rss_shmem()
        ids = [client.put(np.ones(64 * MiB // 8)) for _ in range(8)]  # 512 MiB
        client.delete(ids)
        flush(client)
        kept = rss_shmem() - base
        assert kept <= 128 * MiB + 4 * MiB, kept
        status = client.status
        assert status.memory_usage == 0
        assert status.cached_memory <= 128 * MiB
        assert client.memory_trim() is True
        flush(client)
        assert client.status.cached_memory == 0
        # the cached segments were touched by us; trimming them takes the pages away
        assert rss_shmem() - base < 4 * MiB


def test_system_wide_shmem_drops_after_delete(make_daemon) -> None:
    """The figure the issue names: /proc/meminfo Shmem, with a wide margin for other processes."""
    daemon = make_daemon(size="1Gi", args=["--reuse-cache", "0"])
    with vineyard.connect(daemon.socket) as client:
        ids = [client.put(np.ones(100 * MiB // 8)) for _ in range(5)]  # 500 MiB
        high = meminfo_shmem()
        client.delete(ids)
        flush(client)
        low = meminfo_shmem()
    assert high - low >= 300 * MiB, (high, low)


def fill(client: vineyard.Client, size: int) -> list[vineyard.ObjectID]:
    """Put arrays of ``size`` bytes (the i-th full of i) until the store refuses one."""
    ids: list[vineyard.ObjectID] = []
    for i in range(10_000):
        try:
            ids.append(client.put(np.full(size // 8, i, dtype=np.int64)))
        except vineyard.NotEnoughMemoryException:
            return ids
    raise AssertionError("the store never filled up")


def test_size_is_a_hard_limit(make_daemon) -> None:
    daemon = make_daemon(size="256Mi")
    with vineyard.connect(daemon.socket) as client:
        first = np.arange(20 * MiB // 8, dtype=np.int64)
        kept_id = client.put(first)
        used = client.status.memory_usage
        with pytest.raises(vineyard.NotEnoughMemoryException) as info:
            client.put(np.ones(300 * MiB // 8))
        text = str(info.value)
        assert text.startswith("Not enough memory: ")
        asked = 300 * MiB
        for number in (asked, used, 256 * MiB):
            assert str(number) in text, (number, text)
        assert re.search(r"\b" + str(256 * MiB - used) + r"\b", text)  # what is still available
        assert isinstance(info.value, MemoryError)
        assert client.status.memory_usage == used  # the failed put took nothing
        again = client.get(kept_id)
        np.testing.assert_array_equal(again, first)
        # many small blobs up to the limit, then one more fails and nothing is harmed
        ids = fill(client, 1 * MiB)
        assert client.status.memory_usage <= 256 * MiB
        for i, object_id in enumerate(ids[::97]):
            assert int(client.get(object_id)[0]) == i * 97
        np.testing.assert_array_equal(client.get(kept_id), first)
        client.delete(ids)
        client.put(np.ones(200 * MiB // 8))  # room again once deleted


def test_a_failed_multi_blob_put_rolls_back_every_blob(make_daemon) -> None:
    daemon = make_daemon(size="128Mi")
    with vineyard.connect(daemon.socket) as client:
        value = {"a": np.ones(50 * MiB // 8), "b": np.ones(50 * MiB // 8), "c": np.ones(50 * MiB // 8)}
        with pytest.raises(vineyard.NotEnoughMemoryException):
            client.put(value)
        assert client.status.memory_usage == 0
        assert client.status.blobs == 0


def test_blob_memory_is_zero_copy_in_a_memfd_mapping(client) -> None:
    array = client.get(client.put(np.arange(100_000)))
    address = array.__array_interface__["data"][0]
    names = [name for start, end, name in store_mappings() if start <= address < end]
    assert names
    assert names[0].startswith("/memfd:vineyard-")
    assert not array.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        array[0] = 1


def test_a_reply_naming_hundreds_of_new_segments(make_daemon) -> None:
    """More segment descriptors than one message can carry travel in several (SCM_RIGHTS)."""
    daemon = make_daemon(size="2Gi")
    with vineyard.connect(daemon.socket) as writer, vineyard.connect(daemon.socket) as reader:
        value = tuple(np.full(MiB // 8 + 1, i, dtype=np.int64) for i in range(300))  # 300 dedicated segments
        object_id = writer.put(value)
        got = reader.get(object_id)
        assert [int(g[0]) for g in got] == list(range(300))
        assert len(reader._t.segments) == 300
        assert reader.get(writer.put(np.arange(5))).tolist() == [0, 1, 2, 3, 4]  # still in step


def test_unmap_notices_ride_on_descriptor_only_frames(make_daemon) -> None:
    daemon = make_daemon(size="2Gi", args=["--reuse-cache", "0"])
    with vineyard.connect(daemon.socket) as writer, vineyard.connect(daemon.socket) as reader:
        doomed = writer.put(np.ones(4 * MiB // 8))
        array = reader.get(doomed)
        segment = next(iter(reader._t.segments))
        del array
        flush(reader)
        writer.delete(doomed)  # closes the segment: the reader's next reply says "unmap"
        many = writer.put(tuple(np.full(MiB // 8 + 1, i, dtype=np.int64) for i in range(250)))
        got = reader.get(many)  # that reply starts with descriptor-only frames
        assert [int(g[0]) for g in got[:3]] == [0, 1, 2]
        assert segment not in reader._t.segments
        assert f"/memfd:vineyard-{daemon.pid}-{segment}" not in mappings_by_name()


def test_pages_are_released_at_the_lowest_priority() -> None:
    from vineyard.store.memory import _Releaser

    releaser = _Releaser()
    fd = os.memfd_create("vineyard-test-release")
    os.ftruncate(fd, 1 << 20)
    releaser.submit(fd)
    tid = releaser._thread.native_id
    wait_until(lambda: _nice(tid) == 19, what="the release thread at nice 19")
    releaser.drain()


def _nice(tid):
    try:
        with open(f"/proc/self/task/{tid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[16])
    except OSError:
        return None
