"""Spilling with a real daemon: a small ``--size`` and a private ``--spill-path``.

Cold objects go to disk past the high watermark and come back byte for byte; a blob a
reader still has a view of never goes; evict/load(pin)/unpin work; spill files go away on
shutdown and a crashed daemon's are removed by the next one; an unusable spill path stops
the daemon at start; a failing disk loses nothing. Every daemon is stopped by its own PID.
"""

from __future__ import annotations

import gc
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from reliability_tools import MiB, wait_for

import vineyard
from vineyard.errors import (
    InvalidException,
    IOErrorException,
    NotEnoughMemoryException,
    ObjectNotExistsException,
)
from vineyard.testing import Daemon

SIZE = 32 * MiB
HIGH = int(SIZE * 0.8)
ITEM = 2 * MiB
LOCK = ".vineyard-spill.lock"


def spill_daemon(spill: Path, *extra: str, rpc: bool = False) -> Daemon:
    return Daemon(size="32Mi", rpc=rpc, args=["--spill-path", str(spill), *extra])


def spill_files(spill: Path) -> list[str]:
    return sorted(name for name in os.listdir(spill) if name != LOCK)


def put_many(client: vineyard.Client, count: int, seed: int) -> dict[vineyard.ObjectID, str]:
    """``count`` objects of 2 MiB, released after each put; their ids and checksums."""
    rng = np.random.default_rng(seed)
    out = {}
    for _ in range(count):
        value = rng.integers(0, 256, ITEM, dtype=np.uint8)
        out[client.put(value)] = hashlib.sha256(value).hexdigest()
    del value
    gc.collect()  # no view of what was put survives: every blob is cold
    return out


def checksum(value: np.ndarray) -> str:
    return hashlib.sha256(value).hexdigest()


def test_cold_objects_spill_past_the_watermark_and_come_back(tmp_path: Path) -> None:
    spill = tmp_path / "spill"
    with spill_daemon(spill) as daemon, vineyard.connect(daemon.socket) as client:
        sums = put_many(client, 14, seed=1)  # 28 MiB of 32: past the 80% watermark
        assert wait_for(lambda: client.status.spilled_blobs > 0 and client.status.memory_usage <= HIGH)
        status = client.status
        assert status.memory_usage < 14 * ITEM
        files = spill_files(spill)
        assert len(files) == status.spilled_blobs
        assert sum(os.path.getsize(spill / f) for f in files) == status.spilled_bytes == status.spilled_blobs * ITEM
        assert status.spill_failures == 0
        assert status.spill_error is None

        values = {object_id: client.get(object_id) for object_id in sums}  # all held at once
        assert {i: checksum(v) for i, v in values.items()} == sums
        assert client.status.spilled_blobs == 0
        assert spill_files(spill) == []

        del values
        gc.collect()  # the next request carries the releases: 28 MiB turn cold at once
        assert wait_for(lambda: client.status.memory_usage <= HIGH)
        for object_id, expected in sums.items():  # one at a time, reloaded as needed
            assert checksum(client.get(object_id)) == expected


def test_a_held_blob_is_never_spilled(tmp_path: Path) -> None:
    spill = tmp_path / "spill"
    with spill_daemon(spill) as daemon, vineyard.connect(daemon.socket) as writer, \
            vineyard.connect(daemon.socket) as reader:
        (held_id, held_sum), = put_many(writer, 1, seed=2).items()
        view = reader.get(held_id)
        sums = put_many(writer, 20, seed=3)  # 40 MiB through a 32 MiB store
        assert wait_for(lambda: writer.status.spilled_blobs > 0)
        assert checksum(view) == held_sum
        with pytest.raises(InvalidException, match="in use by 1 connection"):
            writer.evict([held_id])
        assert checksum(view) == held_sum

        # the reader holds 15 objects, 30 MiB: one more fits, then nothing can be spilled
        views = [reader.get(object_id) for object_id in list(sums)[:14]]
        writer.put(np.zeros(ITEM - 4096, dtype=np.uint8))
        with pytest.raises(NotEnoughMemoryException, match="in use, pinned or unsealed"):
            writer.put(np.zeros(2 * ITEM, dtype=np.uint8))
        assert checksum(view) == held_sum
        assert [checksum(v) for v in views] == [sums[i] for i in list(sums)[:14]]


def test_evict_load_pin_unpin(tmp_path: Path) -> None:
    spill = tmp_path / "spill"
    with spill_daemon(spill, rpc=True) as daemon, vineyard.connect(daemon.socket) as client:
        (target, target_sum), = put_many(client, 1, seed=4).items()
        client.evict([target])
        assert client.status.spilled_blobs == 1
        (target_file,) = spill_files(spill)

        host, port = daemon.rpc_endpoint.rsplit(":", 1)
        with vineyard.connect(host, int(port)) as remote:  # RPC reads reload too
            assert checksum(remote.get(target)) == target_sum
        assert spill_files(spill) == []

        client.evict([target])
        client.load([target], pin=True)
        assert spill_files(spill) == []
        with pytest.raises(InvalidException, match="pinned"):
            client.evict([target])
        put_many(client, 14, seed=5)
        assert wait_for(lambda: client.status.spilled_blobs > 0 and client.status.memory_usage <= HIGH)
        assert target_file not in spill_files(spill)  # pinned: stayed in memory

        client.unpin([target])
        client.evict([target])
        assert target_file in spill_files(spill)
        assert checksum(client.get(target)) == target_sum
        with pytest.raises(ObjectNotExistsException):
            client.evict([vineyard.ObjectID(0x0123456789)])


def test_spill_files_go_at_shutdown_and_after_a_crash(tmp_path: Path) -> None:
    spill = tmp_path / "spill"
    crashed = spill_daemon(spill)
    try:
        with vineyard.connect(crashed.socket) as client:
            ids = list(put_many(client, 3, seed=6))
            client.evict(ids)
        assert len(spill_files(spill)) == 3
    finally:
        crashed.kill()  # SIGKILL by PID: no chance to clean up
    assert len(spill_files(spill)) == 3

    with spill_daemon(spill) as daemon:
        assert spill_files(spill) == []  # the next daemon removed what the crash left
        assert "left in" in daemon.log
        with vineyard.connect(daemon.socket) as client:
            ids = list(put_many(client, 2, seed=7))
            client.evict(ids)
            assert len(spill_files(spill)) == 2
    assert os.listdir(spill) == []  # files and lock removed; the directory stays


def _start_and_fail(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    sock = str(tmp_path / "refused.sock")
    return subprocess.run(
        [sys.executable, "-m", "vineyard", "--socket", sock, "--size", "32Mi", "--norpc", *args],
        capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
    )


def test_an_unusable_spill_path_stops_the_daemon_at_start(tmp_path: Path) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("not a directory")
    result = _start_and_fail(tmp_path, "--spill-path", str(a_file / "spill"))
    assert result.returncode == 1
    assert "Cannot use the spill path" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "refused.sock").exists()

    result = _start_and_fail(tmp_path, "--spill_path", str(tmp_path / "s"), "--spill_lower_rate", "0.9",
                             "--spill_upper_rate", "0.5")
    assert result.returncode == 1
    assert "lower rate" in result.stderr

    spill = tmp_path / "shared"
    with spill_daemon(spill):
        result = _start_and_fail(tmp_path, "--spill-path", str(spill))
        assert result.returncode == 1
        assert "in use by another running vineyard daemon" in result.stderr


def test_a_failing_disk_keeps_blobs_in_memory(tmp_path: Path) -> None:
    spill = tmp_path / "spill"
    moved = tmp_path / "moved"
    with spill_daemon(spill) as daemon, vineyard.connect(daemon.socket) as client:
        sums = put_many(client, 2, seed=8)
        first = next(iter(sums))
        spill.rename(moved)  # the daemon's spill directory is now a plain file:
        spill.write_text("every write under it fails")  # no mount needed to break it
        try:
            with pytest.raises(IOErrorException, match="stays in memory"):
                client.evict([first])
            status = client.status
            assert status.spill_failures >= 1
            assert "Not a directory" in status.spill_error
            assert status.spilled_blobs == 0
            sums.update(put_many(client, 14, seed=9))  # 32 MiB: the store is full
            with pytest.raises(NotEnoughMemoryException, match="Not a directory"):
                client.put(np.ones(ITEM, dtype=np.uint8))
            for object_id, expected in sums.items():
                assert checksum(client.get(object_id)) == expected
        finally:
            spill.unlink()
            moved.rename(spill)
        gc.collect()
        client.evict([first])  # the disk is back: spilling works again
        assert spill_files(spill) != []
        client.put(np.ones(ITEM, dtype=np.uint8))
        for object_id, expected in sums.items():
            assert checksum(client.get(object_id)) == expected
