"""Lifetimes: objects the adapter creates die with the Ray job that created them.

Ray's reference counting cannot see object IDs it does not own, so the adapter keeps its
own rule. Every object it stores carries the label ``ray.job`` = ``<session>/<job id>``
(the session name makes it unique across clusters: job IDs restart at ``01000000`` in every
new cluster). When the driver's job ends, the driver deletes the objects of its job that are
still transient, plus those the adapter itself had to persist (global objects), which carry
``ray.persist=auto``. An object persisted on purpose (``persist=True``, ``ref.persist()`` or
``client.persist()``) is kept.

"When the job ends" is observed three ways, because Ray gives no public hook for it:

* the driver process exits: an :mod:`atexit` handler deletes the job's objects;
* the driver calls ``ray.shutdown()`` and later ``ray.init()`` again: the old job's objects
  are deleted the first time the adapter is used in the new job;
* the driver dies without running ``atexit`` (``SIGKILL``, out of memory): a small watchdog
  process (:mod:`vineyard.contrib.ray.watchdog`) holds the read end of a pipe whose write
  end only the driver holds, sees end-of-file when the kernel closes it, and deletes what
  the driver could not. Set ``VINEYARD_RAY_WATCHDOG=0`` to do without it.

The driver learns which store to clean when it uses the adapter during the job: ``put``,
a reference returned to it, a decorated function shipped to workers, a read or a write.
:func:`track_job` covers a driver that does none of these.

This module imports neither Ray nor the client at import time: the watchdog uses it.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import subprocess
import sys
import threading
from typing import IO, TYPE_CHECKING, Any

from vineyard.errors import StoreUnavailable
from vineyard.ids import ObjectID

if TYPE_CHECKING:
    from vineyard.client import ClientBase

__all__ = [
    "LABEL_JOB",
    "LABEL_PERSIST",
    "cleanup_job",
    "current_job",
    "in_driver",
    "job_objects",
    "label_new_object",
    "note_store",
    "track_job",
    "tracked_jobs",
]

log = logging.getLogger(__name__)

LABEL_JOB = "ray.job"
# "auto": persisted by the adapter as a side effect (global objects must be persisted), so
# still owned by the job; "user": persisted on purpose through the adapter.
LABEL_PERSIST = "ray.persist"
# Everything but blobs: blobs carry no labels and are freed with their objects.
_NOT_BLOB = r"(?!vineyard::Blob$).*"
_ALL = 1 << 62


def _ray() -> Any:
    """The ``ray`` module if this process has imported it and joined a cluster, else None.

    Looking in :data:`sys.modules` instead of importing keeps processes that never use Ray
    (the watchdog, plain scripts putting through the adapter) free of its import cost.
    """
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return None
    return ray


def current_job() -> str | None:
    """``<session>/<job id>`` of the Ray job this process works for, or None outside Ray."""
    ray = _ray()
    if ray is None:
        return None
    context = ray.get_runtime_context()
    return f"{context.get_session_name()}/{context.get_job_id()}"


def in_driver() -> bool:
    """Whether this process is a Ray driver (not a task or actor worker)."""
    ray = _ray()
    return ray is not None and ray.get_runtime_context().worker.mode == ray.SCRIPT_MODE


def label_new_object(client: ClientBase, object_id: int, socket: str, persist: bool = False) -> str | None:
    """Label an object the adapter just created with the current job; returns the job key."""
    job = current_job()
    if job is None:
        return None
    labels = {LABEL_JOB: job}
    if persist:
        labels[LABEL_PERSIST] = "user"
    client.label(object_id, labels)
    _tracker.add(job, socket)
    return job


def note_store(socket: str) -> None:
    """A reference to an object in the store at ``socket`` reached this process: if it is a
    driver, that store may hold objects of its job, so clean it when the job ends."""
    if in_driver():
        job = current_job()
        assert job is not None
        _tracker.add(job, socket)


def track_job(socket: str | None = None) -> str | None:
    """Make this driver delete its job's objects in the store at ``socket`` when the job ends.

    Needed only when nothing else told the driver about the store (see the module notes).
    Returns the job key, or None when this process is not a Ray driver.
    """
    from vineyard.contrib.ray.stores import default_socket

    if not in_driver():
        return None
    job = current_job()
    assert job is not None
    _tracker.add(job, default_socket(socket))
    return job


def tracked_jobs() -> dict[str, set[str]]:
    """The jobs (and their store sockets) this driver will clean up; for tests and debugging."""
    with _tracker.lock:
        return {job: set(sockets) for job, sockets in _tracker.jobs.items()}


def job_objects(client: ClientBase, job: str) -> tuple[list[ObjectID], list[ObjectID]]:
    """The top-level candidates of ``job``: ``(to delete, kept because persisted on purpose)``."""
    doomed: list[tuple[bool, ObjectID]] = []
    kept: list[ObjectID] = []
    for meta in client.list_metadatas(_NOT_BLOB, regex=True, limit=_ALL, nobuffer=True):
        labels = meta.labels
        if labels.get(LABEL_JOB) != job:
            continue
        if meta.transient or labels.get(LABEL_PERSIST) == "auto":
            # Global objects first: deleting one deep frees its partitions, which would
            # otherwise be reported as "kept, still a member" when tried before it.
            doomed.append((not meta.isglobal, meta.id))
        else:
            kept.append(meta.id)
    return [object_id for _, object_id in sorted(doomed)], kept


def cleanup_job(job: str | None = None, socket: str | None = None) -> list[ObjectID]:
    """Delete the objects ``job`` (default: the current one) owns in the store at ``socket``.

    Returns the ids deleted. Objects persisted on purpose are kept.

    Raises
    ------
    ConnectionFailedException
        No daemon listens at the socket.
    ValueError
        No job given and this process is not part of a Ray job.
    """
    from vineyard.contrib.ray.stores import client_for, default_socket

    job = job or current_job()
    if job is None:
        raise ValueError("cleanup_job() needs a job key outside a Ray job")
    client = client_for(default_socket(socket))
    doomed, _ = job_objects(client, job)
    if not doomed:
        return []
    deleted = []
    for object_id in doomed:
        # exists(): a global object deleted before may have taken this one along.
        if client.exists(object_id) and not client.delete(object_id, deep=True):
            deleted.append(object_id)
    return deleted


class _Tracker:
    """The driver's record of its jobs and stores; one per process."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.jobs: dict[str, set[str]] = {}
        self.pid = os.getpid()
        self.registered = False
        self.watchdog: subprocess.Popen[bytes] | None = None

    def add(self, job: str, socket: str) -> None:
        if not in_driver():
            return
        with self.lock:
            if self.pid != os.getpid():  # a forked child is not the driver of these jobs
                self.__init__()  # type: ignore[misc]
            if socket in self.jobs.get(job, ()):
                return
            # A driver belongs to one job at a time: any other job it tracked has ended
            # (ray.shutdown() then ray.init()).
            ended = [j for j in self.jobs if j != job]
            self.jobs.setdefault(job, set()).add(socket)
            if not self.registered:
                atexit.register(self.at_exit)
                self.registered = True
            self._tell({"op": "track", "job": job, "socket": socket})
        for old in ended:
            self.finish(old)

    def finish(self, job: str) -> None:
        with self.lock:
            sockets = self.jobs.pop(job, set())
        for socket in sorted(sockets):
            try:
                cleanup_job(job, socket)
            except StoreUnavailable as exc:  # a store that is gone took its objects along
                log.debug("no store left to clean for Ray job %s at %s: %s", job, socket, exc)
            except Exception as exc:  # cleanup must not turn a finished job into a failure
                log.warning("could not delete the objects of Ray job %s in %s: %s", job, socket, exc)
        with self.lock:
            self._tell({"op": "forget", "job": job})

    def at_exit(self) -> None:
        if self.pid != os.getpid():
            return
        for job in list(self.jobs):
            self.finish(job)
        watchdog, self.watchdog = self.watchdog, None
        if watchdog is not None:
            assert watchdog.stdin is not None
            watchdog.stdin.close()  # end-of-file: it has nothing left to do and exits
            try:
                watchdog.wait(10)
            except subprocess.TimeoutExpired:
                log.warning("the vineyard Ray watchdog (pid %d) did not exit", watchdog.pid)

    def _tell(self, message: dict[str, str]) -> None:
        """Send the watchdog one line; start it on first use. Called with the lock held."""
        if os.environ.get("VINEYARD_RAY_WATCHDOG", "1") == "0":
            return
        if self.watchdog is None:
            self.watchdog = subprocess.Popen(
                [sys.executable, "-m", "vineyard.contrib.ray.watchdog"],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                # Its own session: a Ctrl-C meant for the driver must not kill the process
                # that cleans up after it.
                start_new_session=True,
            )
        stdin: IO[bytes] | None = self.watchdog.stdin
        assert stdin is not None
        try:
            stdin.write(json.dumps(message).encode() + b"\n")
            stdin.flush()
        except OSError as exc:  # it died: the atexit handler still covers a normal exit
            log.warning("the vineyard Ray watchdog is gone: %s", exc)


_tracker = _Tracker()
