"""Shared-memory segments: memfd files the daemon maps and hands to clients by fd.

All syscalls about memory live here. A segment's pages are plain shared memory (Shmem);
they need no name under /dev/shm, and punching a hole (``MADV_REMOVE``) gives pages back
to the OS even while clients still map the segment.
"""

from __future__ import annotations

import logging
import mmap
import os
import queue
import tempfile
import threading

from vineyard.store.allocator import Action

__all__ = ["Segment", "SegmentTable", "shared_memory_backend"]

log = logging.getLogger(__name__)


def shared_memory_backend() -> str:
    return "memfd_create(2)" if hasattr(os, "memfd_create") else "unlinked files in /dev/shm"


class Segment:
    """One memfd file, its size and the daemon's own mapping of it."""

    __slots__ = ("fd", "id", "map", "size")

    def __init__(self, segment_id: int, size: int) -> None:
        self.id = segment_id
        self.size = size
        # the pid keeps names unique across daemons, so a process mapping several stores
        # (and /proc/<pid>/maps readers) can tell their segments apart
        self.fd = _anonymous_file(f"vineyard-{os.getpid()}-{segment_id}")
        try:
            os.ftruncate(self.fd, size)
            self.map = mmap.mmap(self.fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            os.close(self.fd)
            raise

    def punch(self, offset: int, length: int) -> None:
        """Give the pages of ``[offset, offset + length)`` back to the OS; they read as zeros."""
        if length <= 0:
            return
        try:
            self.map.madvise(mmap.MADV_REMOVE, offset, length)
        except (OSError, AttributeError, ValueError) as exc:  # old kernels, odd filesystems
            log.debug("could not release pages of segment %d: %s", self.id, exc)

    def close(self, release: bool = True) -> None:
        """Unmap and close; with ``release`` the pages go back to the OS at once, even
        where clients still map the segment (only for memory no reader holds)."""
        if release:
            self.punch(0, self.size)
        self.map.close()
        os.close(self.fd)

    def retire(self) -> int:
        """Unmap and hand back the fd, whose pages :class:`_Releaser` frees off the loop."""
        self.map.close()
        return self.fd


class _Releaser:
    """Truncates and closes retired segments on a background thread.

    Freeing a large segment's pages takes ~0.2 ms per MiB; ``ftruncate`` releases the GIL
    (``madvise`` does not), so doing it here, at the lowest priority, keeps the daemon
    answering other clients.
    Truncating is safe because a segment is retired only when no blob lives in it: clients
    that still map it never touch it again and unmap it on their next reply.
    """

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[int | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def submit(self, fd: int) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="vineyard-release", daemon=True)
            self._thread.start()
        self._queue.put(fd)

    def _run(self) -> None:
        # Lowest priority: freeing pages is never urgent, and at normal priority a 2 GiB
        # release takes a CPU from requests for ~0.4 s (on Linux, nice is per thread).
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        except (AttributeError, OSError) as exc:
            log.debug("could not lower the release thread's priority: %s", exc)
        while (fd := self._queue.get()) is not None:
            try:
                os.ftruncate(fd, 0)
            except OSError as exc:
                log.debug("could not release a segment's pages: %s", exc)
            finally:
                os.close(fd)

    def drain(self) -> None:
        """Finish every pending release (at shutdown)."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None


def _anonymous_file(name: str) -> int:
    if hasattr(os, "memfd_create"):
        return os.memfd_create(name, os.MFD_CLOEXEC)
    fd, path = tempfile.mkstemp(prefix=name, dir="/dev/shm")
    os.unlink(path)
    return fd


class SegmentTable:
    """The daemon's live segments, by id; carries out the allocator's actions."""

    def __init__(self) -> None:
        self.segments: dict[int, Segment] = {}
        self._releaser = _Releaser()

    def apply(self, actions: list[Action]) -> list[int]:
        """Carry out ``actions``; returns the ids of segments closed, for clients to unmap."""
        closed: list[int] = []
        for action in actions:
            if action.kind == "create":
                self.segments[action.segment] = Segment(action.segment, action.length)
            elif action.kind == "punch":
                self.segments[action.segment].punch(action.offset, action.length)
            elif action.kind == "close":
                self._releaser.submit(self.segments.pop(action.segment).retire())
                closed.append(action.segment)
            else:
                raise AssertionError(f"unknown memory action {action.kind!r}")
        return closed

    def view(self, segment: int, offset: int, size: int) -> memoryview:
        return memoryview(self.segments[segment].map)[offset : offset + size]

    def close_all(self) -> None:
        """At shutdown: close every segment without punching, so that clients still mapping
        one keep their data; the kernel frees the pages when the last mapping goes."""
        self._releaser.drain()
        for seg in self.segments.values():
            try:
                seg.close(release=False)
            except (OSError, BufferError) as exc:
                log.debug("closing segment %d: %s", seg.id, exc)
        self.segments.clear()
