"""``migrate``: copy an object that lives on another instance into this daemon, once.

The loop looks the object up (after a read barrier if it is not in the view yet), allocates
local blobs for its remote blobs, and hands the download to a thread, which receives the
bytes from the owner's RPC server straight into shared memory (:class:`~vineyard.remote.PeerConnection`,
with this daemon's ``--rpc-token``). Back on the loop, the metadata is rebuilt around the
new blobs, keeping every signature, created, persisted and published: the copy is a new
object owned here, equivalent to the original.

Copies are remembered (origin → copy), so repeated migrations are answered from the copy;
concurrent ones of the same origin wait for the one running. While a migration runs its
progress is reported by ``status`` (``migrations``: ``{id: [received, total]}``), which is
what ``python -m vineyard.migrate`` draws its progress bar from.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from vineyard.errors import InvalidException, ObjectNotExistsException, VineyardException
from vineyard.ids import BLOB_BIT
from vineyard.protocol import error_reply, ok
from vineyard.remote import PeerConnection, remote_blob_nodes
from vineyard.store.objects import BLOB_TYPENAME

if TYPE_CHECKING:
    from vineyard.store.cluster import Cluster
    from vineyard.store.server import Connection

__all__ = ["Migrations", "rebuild_tree"]

log = logging.getLogger("vineyard.store")

#: Keys the copy gets anew rather than from the original.
_FRESH = frozenset({"id", "instance_id", "transient", "__timestamp", "__name"})


def rebuild_tree(tree: dict[str, Any], blobs: dict[int, int]) -> dict[str, Any]:
    """A ``create_data`` tree for a copy of ``tree``: every object new, with its signature,
    and every blob replaced by ``blobs[old id]`` (blobs not in the map are kept)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if type(value) is dict:
            if value.get("typename") == BLOB_TYPENAME:
                blob_id = int(value["id"])
                out[key] = {"id": blobs.get(blob_id, blob_id)}
            else:
                out[key] = rebuild_tree(value, blobs)
        elif key not in _FRESH:
            out[key] = value
    return out


class Migrations:
    """The migrations of one daemon: running ones, their progress, and finished copies."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.copies: dict[int, int] = {}  # origin -> copy here
        self.running: dict[int, list[Connection]] = {}  # origin -> connections waiting for it
        self.progress: dict[int, list[int]] = {}  # origin -> [bytes received, bytes in all]
        self._conns = itertools.count(1)

    def progress_report(self) -> dict[int, list[int]]:
        return {oid: list(p) for oid, p in self.progress.items()}

    def handle(self, conn: Connection, req: dict[str, Any]) -> Any:
        oid = req["id"]
        if oid & BLOB_BIT:
            raise InvalidException("blobs cannot be migrated: migrate the object that holds them", object_id=oid)
        return self.cluster.synced(conn, lambda: self._start(conn, oid), not self.cluster.view.known(oid))

    def _start(self, conn: Connection, oid: int) -> Any:
        cluster = self.cluster
        store, view, server = cluster.store, cluster.view, cluster.server
        record = store.objects.get(oid)
        if record is None:
            raise ObjectNotExistsException(f"object o{oid:016x} does not exist in the cluster", object_id=oid)
        if record.fields.get("global"):
            raise InvalidException("global objects cannot be migrated: migrate their members", object_id=oid)
        if oid not in view.remote:
            return ok(id=oid)  # already here
        copy = self.copies.get(oid)
        if copy is not None and copy in store.objects:
            return ok(id=copy)
        waiting = self.running.get(oid)
        if waiting is not None:
            waiting.append(conn)
            conn.waiting = True
            return _defer()
        cluster.check()
        groups = remote_blob_nodes(store.tree(oid), store.instance_id)
        jobs: list[tuple[str, list[int], list[int]]] = []
        for owner, nodes in groups.items():
            endpoint = view.instances.get(owner, {}).get("rpc_endpoint")
            if not endpoint or str(endpoint).endswith(":0"):
                raise ObjectNotExistsException(
                    f"the blobs of o{oid:016x} live on instance {owner}, which is gone or serves no RPC",
                    object_id=oid,
                )
            jobs.append((str(endpoint), [int(n["id"]) for n in nodes], [int(n["length"]) for n in nodes]))
        mconn = -next(self._conns)  # a pseudo-connection holds the new blobs meanwhile
        sizes = [size for _, _, job_sizes in jobs for size in job_sizes]
        try:
            made, actions = store.create_blobs(mconn, sizes)
        except VineyardException as exc:
            server._apply(getattr(exc, "actions", []))
            raise
        server._apply(actions)
        mapping: dict[int, int] = {}
        targets: list[list[Any]] = []
        position = 0
        for _, blob_ids, _ in jobs:
            views = []
            for blob_id in blob_ids:
                blob = made[position]
                position += 1
                mapping[blob_id] = blob.id
                if blob.alloc is None:
                    views.append(memoryview(bytearray(0)))
                else:
                    views.append(server.memory.view(blob.alloc.segment, blob.alloc.offset, blob.size))
            targets.append(views)
        total = sum(sizes)
        self.progress[oid] = [0, total]
        self.running[oid] = [conn]
        conn.waiting = True
        owners = ", ".join(map(str, groups))
        log.info("migrating o%016x (%d bytes) from instance %s", oid, total, owners)
        thread = threading.Thread(
            target=self._download,
            args=(oid, mconn, jobs, targets, mapping),
            name=f"vineyard-migrate-{oid:x}",
            daemon=True,
        )
        thread.start()
        return _defer()

    def _download(
        self,
        oid: int,
        mconn: int,
        jobs: list[tuple[str, list[int], list[int]]],
        targets: list[list[Any]],
        mapping: dict[int, int],
    ) -> None:
        started = time.monotonic()
        progress = self.progress[oid]

        def advance(n: int) -> None:
            progress[0] += n

        error: BaseException | None = None
        try:
            for (endpoint, blob_ids, _), views in zip(jobs, targets, strict=True):
                with PeerConnection(endpoint, self.cluster.token, timeout=30.0) as peer:
                    peer.download(blob_ids, views, progress=advance)
        except Exception as exc:
            error = exc
        finally:
            for views in targets:
                for view in views:
                    view.release()
        elapsed = time.monotonic() - started
        self.cluster.post(lambda: self._finish(oid, mconn, mapping, error, elapsed))

    def _finish(
        self, oid: int, mconn: int, mapping: dict[int, int], error: BaseException | None, elapsed: float
    ) -> None:
        cluster = self.cluster
        store, server = cluster.store, cluster.server
        waiters = self.running.pop(oid, [])
        total = self.progress.pop(oid, [0, 0])[1]
        reply: dict[str, Any]
        if error is None and oid not in store.objects:
            error = ObjectNotExistsException(f"o{oid:016x} was deleted while it migrated", object_id=oid)
        if error is None:
            try:
                created = store.create(mconn, rebuild_tree(store.tree(oid), mapping), persist=True)
                copy = created[0][0]
                try:
                    cluster.publish(copy)
                except BaseException:
                    _, actions = store.delete([copy], force=True, deep=True)
                    server._apply(actions)
                    raise
                self.copies[oid] = copy
                reply = ok(id=copy)
                rate = total / elapsed / (1 << 20) if elapsed > 0 else 0.0
                log.info("migrated o%016x to o%016x: %d bytes in %.3f s (%.0f MiB/s)", oid, copy, total, elapsed, rate)
            except VineyardException as exc:
                error = exc
        if error is not None:
            log.warning("migrating o%016x failed: %s", oid, error)
            if isinstance(error, VineyardException):
                reply = error_reply(error.code, error.message)
            else:
                reply = error_reply(255, f"migrating o{oid:016x} failed: {type(error).__name__}: {error}")
        # the copy's blobs were held (and, on failure, never sealed) by the pseudo-connection
        server._apply(store.disconnect(mconn))
        for conn in waiters:
            server._resume(conn, dict(reply))


def _defer() -> Any:
    from vineyard.store.server import _DEFER

    return _DEFER
