"""The request handlers a daemon uses in a cluster, wrapping the ones it uses alone.

See :mod:`vineyard.store.cluster` for what each changes: publishing on persist, names as
keys, deletes as key deletions, read barriers before reads that must see the cluster.
Each wrapper delegates the local work to the original handler (``orig``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from vineyard.errors import InvalidException, ObjectNotExistsException
from vineyard.ids import BLOB_BIT
from vineyard.protocol import ok
from vineyard.store.clusterview import encode_record
from vineyard.store.meta import Compare, Delete, Put, TxnConflict, data_key, name_key

if TYPE_CHECKING:
    from vineyard.store.cluster import Cluster
    from vineyard.store.server import Connection

__all__ = ["ClusterHandlers"]

Handler = Callable[["Connection", dict[str, Any]], Any]


class ClusterHandlers:
    """Cluster-aware handlers for ``cluster``'s daemon.

    Parameters
    ----------
    cluster
        The membership (view, backend, barrier, fencing).
    orig
        The daemon's handlers as they were, by request type.
    """

    def __init__(self, cluster: Cluster, orig: dict[str, Handler]) -> None:
        self.cluster = cluster
        self.orig = orig

    def table(self) -> dict[str, Handler]:
        """The handlers to install, by request type."""
        synced = self.cluster.synced
        return {
            "register": self._register,
            "status": self._status,
            "cluster_meta": self._cluster_meta,
            "create_data": self._create_data,
            "get_data": self._get_data,
            "exists": lambda conn, req: synced(conn, lambda: self.orig["exists"](conn, req)),
            "persist": self._persist,
            "put_name": self._put_name,
            "get_name": lambda conn, req: synced(conn, lambda: self.orig["get_name"](conn, req)),
            "drop_name": self._drop_name,
            "delete": self._deleting("delete"),
            "clear": self._deleting("clear"),
            "delete_by_labels": self._deleting("delete_by_labels"),
            "label": self._label,
            "migrate": self.cluster.migrations.handle,
        }

    def _register(self, conn: Connection, req: dict[str, Any]) -> Any:
        reply = self.orig["register"](conn, req)
        reply["meta"] = "etcd"
        return reply

    def _status(self, conn: Connection, req: dict[str, Any]) -> Any:
        reply = self.orig["status"](conn, req)
        reply["meta"] = "etcd"
        reply["instances"] = len(self.cluster.view.instances)
        reply["migrations"] = self.cluster.migrations.progress_report()
        return reply

    def _cluster_meta(self, conn: Connection, req: dict[str, Any]) -> Any:
        return self.cluster.synced(
            conn, lambda: ok(instances={k: dict(v) for k, v in self.cluster.view.instances.items()})
        )

    def _get_data(self, conn: Connection, req: dict[str, Any]) -> Any:
        known = self.cluster.view.known
        needed = req["sync_remote"] or not all(known(i) for i in req["ids"])
        return self.cluster.synced(conn, lambda: self.orig["get_data"](conn, req), needed)

    def _create_data(self, conn: Connection, req: dict[str, Any]) -> Any:
        tree = req["tree"]
        needed = type(tree) is dict and self.cluster.view.unknown_members(tree)
        return self.cluster.synced(conn, lambda: self._create_now(conn, req), needed)

    def _create_now(self, conn: Connection, req: dict[str, Any]) -> Any:
        if not req["persist"]:
            return self.orig["create_data"](conn, req)
        self.cluster.check()
        name = req["name"]
        reply = self.orig["create_data"](conn, {**req, "name": None})
        top = reply["created"][0][0]
        self.cluster.publish(top)
        if name is None:
            return reply
        return self.cluster.reply_at(conn, self._commit_name(top, name), reply)

    def _persist(self, conn: Connection, req: dict[str, Any]) -> Any:
        oid = req["id"]
        return self.cluster.synced(conn, lambda: self._persist_now(conn, req), not self.cluster.view.known(oid))

    def _persist_now(self, conn: Connection, req: dict[str, Any]) -> Any:
        reply = self.orig["persist"](conn, req)
        self.cluster.publish(req["id"])
        return reply

    def _put_name(self, conn: Connection, req: dict[str, Any]) -> Any:
        oid = req["id"]
        return self.cluster.synced(conn, lambda: self._put_name_now(conn, req), not self.cluster.view.known(oid))

    def _put_name_now(self, conn: Connection, req: dict[str, Any]) -> Any:
        oid, name = req["id"], req["name"]
        if oid & BLOB_BIT:
            raise InvalidException("blobs cannot have name", object_id=oid)
        record = self.cluster.store.objects.get(oid)
        if record is None:
            raise ObjectNotExistsException(f"object o{oid:016x} does not exist", object_id=oid)
        if record.fields["transient"]:
            raise InvalidException(
                f"transient objects cannot have name, please persist it first: o{oid:016x}", object_id=oid
            )
        return self.cluster.reply_at(conn, self._commit_name(oid, name), ok())

    def _commit_name(self, oid: int, name: str) -> int:
        """Point ``name`` at ``oid`` (overwriting), if the object's key still exists."""
        self.cluster.check()
        try:
            return self.cluster.backend.commit([Compare.exists(data_key(oid))], [Put(name_key(name), json.dumps(oid))])
        except TxnConflict:
            raise ObjectNotExistsException(
                f"cannot name o{oid:016x} {name!r}: it is no longer in the cluster", object_id=oid
            ) from None

    def _drop_name(self, conn: Connection, req: dict[str, Any]) -> Any:
        self.cluster.check()
        result = self.cluster.backend.txn([], [Delete(name_key(req["name"]))])
        if not result.responses[0]:
            return ok()  # there was no such name: nothing to wait for
        return self.cluster.reply_at(conn, result.revision, ok())

    def _deleting(self, kind: str) -> Callable[[Connection, dict[str, Any]], Any]:
        def handle(conn: Connection, req: dict[str, Any]) -> Any:
            reply = self.orig[kind](conn, req)
            self.cluster.flush_deletes()
            return reply

        return handle

    def _label(self, conn: Connection, req: dict[str, Any]) -> Any:
        reply = self.orig["label"](conn, req)
        oid = req["id"]
        record = self.cluster.store.objects.get(oid)
        if oid in self.cluster.view.published and record is not None:
            self.cluster.check()
            self.cluster.backend.commit(
                [], [Put(data_key(oid), encode_record(self.cluster.store, record), self.cluster.session.lease)]
            )
        return reply
