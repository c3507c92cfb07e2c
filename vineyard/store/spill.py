"""Spilling: cold blobs go to disk when memory runs high and come back when asked for.

Rules:
- A blob is *cold* when it is sealed, not deleted, in memory, not pinned and held by no
  connection. Cold blobs are kept in least-recently-used order (:class:`ColdList`); a blob
  becomes the most recent one each time its last holder lets it go.
- When usage passes the high watermark (``upper * limit``) the oldest cold blobs are written
  to disk and freed until usage is at most the low watermark (``lower * limit``). An
  allocation that would fail first spills the oldest cold blobs until it fits.
- A held blob is never spilled (a reader's view never changes), nor a pinned one.
- A spilled blob is reloaded before any reply that tells a client where it lives
  (``get_data``, ``get_buffers``, ``get_remote_buffers``), and by ``load``; reloading may
  itself spill other cold blobs, never one the same request asks for.
- A spill file is written under a temporary name and renamed into place; a failed write
  leaves the blob in memory, untouched, and is reported (log, status, error replies).
- Spill files never outlive the daemon: they are removed on shutdown, and files a crashed
  daemon left behind are removed when the next one takes the directory (one daemon per
  directory, enforced by a lock file).

The decisions (:class:`ColdList`, :class:`Watermarks`, :func:`choose_victims`) are pure;
file I/O lives in :class:`SpillStorage`; :class:`Spiller` ties them to the object table
through callables, so that it can be tested without a daemon.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from vineyard.errors import (
    InvalidException,
    IOErrorException,
    NotEnoughMemoryException,
    ObjectNotExistsException,
    VineyardException,
)
from vineyard.ids import BLOB_BIT, EMPTY_BLOB_ID
from vineyard.store.allocator import PAGE, Action, Allocation, format_bytes
from vineyard.store.objects import BlobRecord, ObjectStore

__all__ = [
    "DEFAULT_LOWER_RATE",
    "DEFAULT_UPPER_RATE",
    "ColdList",
    "SpillStorage",
    "Spiller",
    "Storage",
    "Watermarks",
    "check_spill_config",
    "choose_victims",
    "spill_status",
]

log = logging.getLogger("vineyard.store")

DEFAULT_LOWER_RATE = 0.3
DEFAULT_UPPER_RATE = 0.8
LOCK_NAME = ".vineyard-spill.lock"
# spill files (o + 16 hex digits) and their temporary names; nothing else is ever removed
_OURS = re.compile(r"^(o[0-9a-f]{16}|\.o[0-9a-f]{16}\.tmp|\.vineyard-spill-probe-\d+)$")


def _oid(blob_id: int) -> str:
    return f"o{blob_id:016x}"


# -- pure decisions ---------------------------------------------------------------------------


class ColdList:
    """Cold blobs, least recently used first, with the bytes each would free.

    Examples
    --------
    >>> cold = ColdList()
    >>> cold.touch(1, 100); cold.touch(2, 50); cold.touch(1, 100)
    >>> list(cold), cold.bytes
    ([2, 1], 150)
    """

    __slots__ = ("_order", "bytes")

    def __init__(self) -> None:
        self._order: OrderedDict[int, int] = OrderedDict()
        self.bytes = 0

    def touch(self, blob_id: int, size: int) -> None:
        """Make ``blob_id`` (freeing ``size`` bytes) the most recently used cold blob."""
        old = self._order.pop(blob_id, None)
        if old is not None:
            self.bytes -= old
        self._order[blob_id] = size
        self.bytes += size

    def discard(self, blob_id: int) -> None:
        """``blob_id`` is no longer cold (held, pinned, spilled or gone)."""
        size = self._order.pop(blob_id, None)
        if size is not None:
            self.bytes -= size

    def size_of(self, blob_id: int) -> int:
        return self._order[blob_id]

    def __contains__(self, blob_id: object) -> bool:
        return blob_id in self._order

    def __len__(self) -> int:
        return len(self._order)

    def __iter__(self) -> Iterator[int]:
        return iter(self._order)


def choose_victims(cold: ColdList, used: int, target: int, exclude: Iterable[int] = ()) -> list[int]:
    """The oldest cold blobs whose spilling brings ``used`` down to ``target`` bytes or less.

    Blobs in ``exclude`` are passed over. When even every eligible blob is not enough, all of
    them are returned: the caller frees what it can.

    Parameters
    ----------
    cold : ColdList
        Candidates, oldest first.
    used : int
        Bytes allocated now.
    target : int
        Bytes allocated the caller wants to reach.
    exclude : iterable of int
        Blobs that must stay in memory (those the current request needs).
    """
    if used <= target:
        return []
    skip = exclude if isinstance(exclude, (set, frozenset)) else set(exclude)
    out: list[int] = []
    for blob_id in cold:
        if blob_id in skip:
            continue
        out.append(blob_id)
        used -= cold.size_of(blob_id)
        if used <= target:
            break
    return out


@dataclass(frozen=True, slots=True)
class Watermarks:
    """When to spill (above ``high`` bytes) and how far (down to ``low`` bytes).

    Examples
    --------
    >>> w = Watermarks(1000, 0.3, 0.8)
    >>> w.low, w.high, w.over(800), w.over(801)
    (300, 800, False, True)
    """

    limit: int
    lower: float = DEFAULT_LOWER_RATE
    upper: float = DEFAULT_UPPER_RATE

    def __post_init__(self) -> None:
        problem = _rates_problem(self.lower, self.upper)
        if problem is not None:
            raise ValueError(problem)

    @property
    def high(self) -> int:
        return int(self.limit * self.upper)

    @property
    def low(self) -> int:
        return int(self.limit * self.lower)

    def over(self, used: int) -> bool:
        """Whether usage has passed the high watermark."""
        return used > self.high


def _rates_problem(lower: float, upper: float) -> str | None:
    if not (0.0 <= lower <= 1.0 and 0.0 <= upper <= 1.0):
        return f"spill rates must be between 0 and 1, not lower={lower:g} upper={upper:g}"
    if lower > upper:
        return f"the spill lower rate ({lower:g}) must not be above the upper rate ({upper:g})"
    return None


# -- files ------------------------------------------------------------------------------------


class Storage(Protocol):
    """Where spilled bytes go; :class:`SpillStorage` on disk, a dict in tests."""

    path: str

    def write(self, blob_id: int, data: memoryview) -> str: ...

    def read_into(self, blob_id: int, target: memoryview) -> None: ...

    def remove(self, blob_id: int) -> None: ...

    def close(self) -> None: ...


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


class SpillStorage:
    """A directory of spill files, one per blob, owned by this daemon alone.

    Opening takes an exclusive lock on ``<path>/.vineyard-spill.lock`` (another live daemon
    on the same directory is refused) and removes spill files a crashed daemon left behind.

    Parameters
    ----------
    path : str
        The directory; created if missing.
    fsync : bool
        ``fsync`` each file before renaming it into place. Off by default: spill files
        never outlive the daemon, so they need no durability across a machine crash.

    Raises
    ------
    OSError
        The directory cannot be created, locked or written; the message says which.
    """

    def __init__(self, path: str, *, fsync: bool = False) -> None:
        self.path = os.path.abspath(path)
        self.fsync = fsync
        self._lock_fd: int | None = None
        os.makedirs(self.path, exist_ok=True)
        self._lock_fd = _lock_directory(self.path)
        try:
            removed = self._clean()
            _probe(self.path)
        except BaseException:
            self.close()
            raise
        if removed:
            log.warning("removed %d spill file(s) left in %s by a daemon that did not stop cleanly",
                        removed, self.path)

    def file(self, blob_id: int) -> str:
        return os.path.join(self.path, _oid(blob_id))

    def write(self, blob_id: int, data: memoryview) -> str:
        """Write ``data`` to the blob's spill file (temporary name, then rename); its path."""
        final = self.file(blob_id)
        tmp = os.path.join(self.path, f".{_oid(blob_id)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            try:
                _write_all(fd, data)
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, final)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        return final

    def read_into(self, blob_id: int, target: memoryview) -> None:
        """Fill ``target`` from the blob's spill file, which must hold exactly its bytes."""
        fd = os.open(self.file(blob_id), os.O_RDONLY | os.O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size
            if size != len(target):
                raise OSError(errno.EIO, f"the spill file holds {size} bytes, the blob {len(target)}")
            got = 0
            while got < len(target):
                n = os.readv(fd, [target[got:]])
                if n == 0:
                    raise OSError(errno.EIO, f"the spill file ended after {got} of {len(target)} bytes")
                got += n
        finally:
            os.close(fd)

    def remove(self, blob_id: int) -> None:
        try:
            os.unlink(self.file(blob_id))
        except FileNotFoundError:
            pass

    def _clean(self) -> int:
        removed = 0
        for name in os.listdir(self.path):
            if _OURS.match(name):
                try:
                    os.unlink(os.path.join(self.path, name))
                    removed += 1
                except FileNotFoundError:
                    pass
        return removed

    def close(self) -> None:
        """Remove every spill file and the lock (the directory itself stays)."""
        if self._lock_fd is None:
            return
        try:
            self._clean()
        except OSError as exc:
            log.warning("could not remove the spill files in %s: %s", self.path, _reason(exc))
        try:
            os.unlink(os.path.join(self.path, LOCK_NAME))
        except OSError:
            pass
        os.close(self._lock_fd)
        self._lock_fd = None


def _write_all(fd: int, data: memoryview) -> None:
    view = data.cast("B") if data.format != "B" else data
    done = 0
    while done < len(view):
        done += os.write(fd, view[done : done + (1 << 30)])


def _lock_directory(path: str) -> int:
    """Take ``path``'s lock file; raise ``BlockingIOError`` if another process holds it."""
    lock_path = os.path.join(path, LOCK_NAME)
    for _ in range(8):  # the holder may unlink the file between our open and our lock
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.fstat(fd).st_ino == os.stat(lock_path).st_ino:
                return fd
        except FileNotFoundError:
            pass
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    raise OSError(errno.EAGAIN, "the lock file keeps disappearing")


def _probe(path: str) -> None:
    """Create, write and remove a small file: the directory really takes spill files."""
    probe = os.path.join(path, f".vineyard-spill-probe-{os.getpid()}")
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, b"vineyard")
    finally:
        os.close(fd)
        os.unlink(probe)


def check_spill_config(path: str, lower: float, upper: float) -> str | None:
    """Why the daemon cannot spill to ``path`` with these rates, or ``None`` if it can.

    Creates the directory if needed and checks that it is writable and not in use by
    another daemon; leaves nothing else behind.
    """
    problem = _rates_problem(lower, upper)
    if problem is not None:
        return f"{problem} (--spill-lower-rate / --spill-upper-rate)"
    where = os.path.abspath(path)
    hint = "Choose a directory you may write to with --spill-path, or start without it."
    if os.path.lexists(where) and not os.path.isdir(where):
        return f"Cannot use the spill path '{where}': it exists and is not a directory. {hint}"
    try:
        storage = SpillStorage(where)
    except BlockingIOError:
        return (f"The spill path '{where}' is in use by another running vineyard daemon; "
                "give each daemon its own --spill-path.")
    except OSError as exc:
        return f"Cannot use the spill path '{where}': {_reason(exc)}. {hint}"
    storage.close()
    return None


# -- the coordinator ----------------------------------------------------------------------------


class Spiller:
    """Spills and reloads the blobs of one :class:`ObjectStore`.

    Installs itself as ``store.spill``; the store calls :meth:`cold`, :meth:`hot`,
    :meth:`dropped` and :meth:`allocate`. Everything that touches memory goes through
    callables, so a test can run it against plain bytearrays.

    Parameters
    ----------
    store : ObjectStore
        The blobs; its ``allocator`` decides where memory goes.
    storage : Storage
        Where spilled bytes are kept.
    lower, upper : float
        Watermarks as fractions of the allocator's limit.
    apply : callable
        Carries out allocator actions at once (creates, punches, closes segments).
    view : callable
        ``view(segment, offset, size)``: a writable memoryview of daemon memory.
    defer : callable
        ``defer(callback)`` runs ``callback`` soon, outside the current request; by default
        at once.
    clock : callable
        Monotonic seconds, for the pause after a failed spill.
    retry_delay : float
        After a failed write, spilling for the watermark pauses this long (an allocation
        that would fail and ``evict`` still try at once).
    """

    def __init__(
        self,
        store: ObjectStore,
        storage: Storage,
        lower: float = DEFAULT_LOWER_RATE,
        upper: float = DEFAULT_UPPER_RATE,
        *,
        apply: Callable[[list[Action]], Any],
        view: Callable[[int, int, int], memoryview],
        defer: Callable[[Callable[[], None]], Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
        retry_delay: float = 1.0,
    ) -> None:
        self.store = store
        self.allocator = store.allocator
        self.storage = storage
        self.marks = Watermarks(self.allocator.limit, lower, upper)
        self.cold_list = ColdList()
        self.pinned: set[int] = set()
        self.spilled: dict[int, int] = {}  # blob id -> bytes on disk
        self.spilled_bytes = 0
        self.spill_count = 0  # blobs written out since start
        self.reload_count = 0
        self.failures = 0
        self.last_error: str | None = None
        self._apply = apply
        self._view = view
        self._defer = defer or (lambda callback: callback())
        self._clock = clock
        self._retry_delay = retry_delay
        self._quiet_until = 0.0
        self._scheduled = False
        store.spill = self
        log.info("spilling cold blobs to %s when usage passes %s, down to %s", storage.path,
                 format_bytes(self.marks.high), format_bytes(self.marks.low))
        for blob in store.blobs.values():  # attached to a store already in use
            self.cold(blob)

    # -- hooks called by the object table ----------------------------------------------------
    def cold(self, blob: BlobRecord) -> None:
        """``blob`` may have become cold (its last holder let it go)."""
        if (
            blob.alloc is None
            or blob.holders
            or blob.creator is not None
            or blob.deleted
            or blob.id in self.pinned
        ):
            return
        self.cold_list.touch(blob.id, blob.alloc.size)
        self._maybe_schedule()

    def hot(self, blob: BlobRecord) -> None:
        """``blob`` is held by a connection now."""
        self.cold_list.discard(blob.id)

    def dropped(self, blob: BlobRecord) -> None:
        """``blob`` is gone for good: forget it, remove its spill file."""
        self.cold_list.discard(blob.id)
        self.pinned.discard(blob.id)
        if blob.spilled is not None:
            self._forget_file(blob)

    def allocate(self, size: int) -> tuple[Allocation, list[Action]]:
        """The allocator's ``allocate``, spilling cold blobs first if it would fail.

        Raises
        ------
        NotEnoughMemoryException
            Even after spilling every cold blob; says why spilling did not help.
        """
        try:
            out = self.allocator.allocate(size)
        except NotEnoughMemoryException:
            out = self._allocate_after_spilling(size, frozenset(), "")
        self._maybe_schedule()
        return out

    # -- requests ----------------------------------------------------------------------------
    def reload_blobs(self, blob_ids: list[int]) -> None:
        """Bring back every spilled blob among ``blob_ids`` (before replying with locations)."""
        if not self.spilled:
            return
        wanted = [self.store.blobs[i] for i in blob_ids if i in self.spilled]
        if wanted:
            self._reload(wanted, frozenset(blob_ids))

    def reload_objects(self, object_ids: list[int]) -> None:
        """Bring back every spilled blob of these objects or blobs; unknown ids are left to
        the request itself to report."""
        if not self.spilled:
            return
        blob_ids: list[int] = []
        for object_id in object_ids:
            if object_id & BLOB_BIT:
                blob_ids.append(object_id)
                continue
            try:
                self.store.blob_ids(self.store.tree(object_id), blob_ids)
            except VineyardException:
                continue
        self.reload_blobs(blob_ids)

    def evict(self, ids: list[int]) -> list[int]:
        """Spill the blobs of ``ids`` now; the ids spilled by this call.

        All or nothing as far as eligibility goes: if any blob is held, pinned or unsealed
        nothing is spilled and the error names them. Blobs already on disk are skipped.

        Raises
        ------
        ObjectNotExistsException
            An id names nothing.
        InvalidException
            A blob is held by a connection, pinned or not sealed.
        IOErrorException
            A write failed; that blob and the rest stay in memory.
        """
        blobs = self._blobs_of(ids)
        refused: list[str] = []
        todo: list[BlobRecord] = []
        for blob in blobs:
            if blob.spilled is not None or blob.alloc is None:
                continue
            if blob.creator is not None:
                refused.append(f"{_oid(blob.id)} is not sealed")
            elif blob.holders:
                refused.append(f"{_oid(blob.id)} is in use by {len(blob.holders)} connection(s)")
            elif blob.id in self.pinned:
                refused.append(f"{_oid(blob.id)} is pinned (unpin it first)")
            else:
                todo.append(blob)
        if refused:
            more = f" and {len(refused) - 5} more" if len(refused) > 5 else ""
            raise InvalidException(
                "cannot evict: " + "; ".join(refused[:5]) + more
                + ". Blobs a client still has a view of, pinned or unsealed blobs stay in memory; "
                "nothing was evicted."
            )
        done: list[int] = []
        for blob in todo:
            try:
                self._spill(blob)
            except OSError as exc:
                self._failed(blob, exc)
                raise IOErrorException(
                    f"spilling {_oid(blob.id)} to '{self.storage.path}' failed: {_reason(exc)}; "
                    f"it stays in memory ({len(done)} blob(s) were spilled before it)"
                ) from None
            done.append(blob.id)
        return done

    def load(self, ids: list[int], pin: bool = False) -> list[int]:
        """Reload the spilled blobs of ``ids``; with ``pin`` keep them from being spilled.

        Returns the ids of the blobs that were brought back.
        """
        blobs = self._blobs_of(ids)
        wanted = [b for b in blobs if b.spilled is not None]
        if wanted:
            self._reload(wanted, frozenset(b.id for b in blobs))
        if pin:
            for blob in blobs:
                if blob.id != EMPTY_BLOB_ID:
                    self.pinned.add(blob.id)
                    self.cold_list.discard(blob.id)
        return [b.id for b in wanted]

    def unpin(self, ids: list[int]) -> list[int]:
        """Let the blobs of ``ids`` be spilled again; the ids that were pinned."""
        done: list[int] = []
        for blob in self._blobs_of(ids):
            if blob.id in self.pinned:
                self.pinned.discard(blob.id)
                done.append(blob.id)
                self.cold(blob)
        return done

    def check(self) -> int:
        """Spill down to the low watermark if usage passed the high one; bytes freed."""
        self._scheduled = False
        used = self.allocator.used
        if not self.marks.over(used) or self._clock() < self._quiet_until:
            return 0
        self._spill_down_to(self.marks.low, frozenset())
        return used - self.allocator.used

    def status(self) -> dict[str, Any]:
        return {
            "spilled_blobs": len(self.spilled),
            "spilled_bytes": self.spilled_bytes,
            "spill_failures": self.failures,
            "spill_error": self.last_error,
            "pinned_blobs": len(self.pinned),
            "spill_path": self.storage.path,
        }

    def close(self) -> None:
        """At shutdown: remove every spill file."""
        self.storage.close()

    # -- internals ---------------------------------------------------------------------------
    def _maybe_schedule(self) -> None:
        if not self._scheduled and self.cold_list and self.marks.over(self.allocator.used):
            self._scheduled = True
            self._defer(self.check)

    def _spill_down_to(self, target: int, exclude: frozenset[int]) -> bool:
        """Spill oldest cold blobs until ``used <= target``; False if a write failed."""
        for blob_id in choose_victims(self.cold_list, self.allocator.used, target, exclude):
            blob = self.store.blobs[blob_id]
            try:
                self._spill(blob)
            except OSError as exc:
                self._failed(blob, exc)
                return False
        return True

    def _spill(self, blob: BlobRecord) -> None:
        alloc = blob.alloc
        assert alloc is not None, "a spilled blob cannot be spilled again"
        assert not blob.holders, "only cold blobs are spilled"
        with self._view(alloc.segment, alloc.offset, blob.size) as data:
            path = self.storage.write(blob.id, data)
        self.cold_list.discard(blob.id)
        actions = self.store.free_memory(blob)  # a run's memory goes with its last resident blob
        blob.spilled = path
        self.spilled[blob.id] = blob.size
        self.spilled_bytes += blob.size
        self.spill_count += 1
        self._apply(actions)

    def _failed(self, blob: BlobRecord, exc: OSError) -> None:
        self.failures += 1
        self.last_error = f"spilling {_oid(blob.id)} to '{self.storage.path}' failed: {_reason(exc)}"
        self._quiet_until = self._clock() + self._retry_delay
        log.warning("%s; it stays in memory", self.last_error)

    def _allocate_after_spilling(
        self, size: int, exclude: frozenset[int], what: str
    ) -> tuple[Allocation, list[Action]]:
        need = (size + PAGE - 1) // PAGE * PAGE  # at least what the allocator charges
        failures = self.failures
        self._spill_down_to(self.allocator.limit - need, exclude)
        try:
            return self.allocator.allocate(size)
        except NotEnoughMemoryException as exc:
            if self.failures > failures:
                why = f"spilling cold blobs did not free enough: {self.last_error}"
            elif self.cold_list:
                why = (f"the {len(self.cold_list)} cold blob(s) ({format_bytes(self.cold_list.bytes)}) "
                       "are not enough")
            else:
                why = "every blob in memory is in use, pinned or unsealed, so none could be spilled"
            raise NotEnoughMemoryException(f"{what}{exc.message}; {why}", **exc.context) from None

    def _reload(self, blobs: list[BlobRecord], exclude: frozenset[int]) -> None:
        for blob in blobs:
            if blob.spilled is None:
                continue
            try:
                alloc, actions = self.allocator.allocate(blob.size)
            except NotEnoughMemoryException:
                alloc, actions = self._allocate_after_spilling(
                    blob.size, exclude, f"cannot reload spilled blob {_oid(blob.id)}: "
                )
            self._apply(actions)
            try:
                with self._view(alloc.segment, alloc.offset, blob.size) as target:
                    self.storage.read_into(blob.id, target)
            except OSError as exc:
                self._apply(self.allocator.free(alloc))
                raise IOErrorException(
                    f"cannot reload spilled blob {_oid(blob.id)} from '{blob.spilled}': {_reason(exc)}"
                ) from None
            self._forget_file(blob)
            blob.alloc = alloc
            self.reload_count += 1
            self.cold(blob)  # cold until the request holds it; ``exclude`` keeps it meanwhile
        self._maybe_schedule()

    def _forget_file(self, blob: BlobRecord) -> None:
        try:
            self.storage.remove(blob.id)
        except OSError as exc:
            log.warning("could not remove the spill file of %s: %s", _oid(blob.id), _reason(exc))
        blob.spilled = None
        self.spilled_bytes -= self.spilled.pop(blob.id, 0)

    def _blobs_of(self, ids: list[int]) -> list[BlobRecord]:
        """The blobs named by ``ids`` (blob ids, or objects: all their blobs), each once."""
        out: dict[int, BlobRecord] = {}
        for object_id in ids:
            if object_id & BLOB_BIT:
                blob = self.store.blobs.get(object_id)
                if blob is None or blob.deleted:
                    raise ObjectNotExistsException(f"blob {_oid(object_id)} does not exist", object_id=object_id)
                out[blob.id] = blob
                continue
            for blob_id in self.store.blob_ids(self.store.tree(object_id), []):
                blob = self.store.blobs.get(blob_id)
                if blob is not None and not blob.deleted:
                    out[blob_id] = blob
        out.pop(EMPTY_BLOB_ID, None)
        return list(out.values())


def spill_status(spiller: Spiller | None) -> dict[str, Any]:
    """The spilling fields of a ``status`` reply (zeros when spilling is off)."""
    if spiller is None:
        return {"spilled_blobs": 0, "spilled_bytes": 0, "spill_failures": 0, "spill_error": None,
                "pinned_blobs": 0, "spill_path": None}
    return spiller.status()
