"""Many hosts: the daemon as a member of a cluster that shares metadata through etcd.

With ``--meta etcd`` a daemon, before it serves anyone:

1. starts a private etcd if ``--etcd-launch`` says so (:class:`~vineyard.store.meta.launch.EtcdProcess`);
2. takes a session lease (:class:`~vineyard.store.meta.session.Session`), reads the whole
   session prefix, watches it from the revision after that read, and registers itself:
   ``/instances/i<N>/*`` under the lease. ``N`` is its instance id, embedded in every id it
   makes, so it must be known before the object table exists.

Then :meth:`Cluster.attach` installs the view (:mod:`vineyard.store.clusterview`) into the
object table and wraps the request handlers that touch the cluster
(:mod:`vineyard.store.clusterops`):

- ``persist`` (and ``create_data`` with ``persist``) publish ``/data/o<id>`` keys under the
  lease, in one transaction that also checks that every member written elsewhere exists;
- names are ``/names/<name>`` keys: ``put_name`` overwrites atomically, if the object's key
  exists; deletes of persisted objects delete their keys and names;
- reads that must see the whole cluster (``get_data`` of an unknown id or with
  ``sync_remote``, ``exists``, ``get_name``, ``cluster_meta``, ``migrate``) first take a
  read barrier (:meth:`~vineyard.store.meta.MetaBackend.barrier`); the request is parked,
  never the loop, until the watch has been applied up to that revision;
- ``migrate`` copies an object into this daemon (:mod:`vineyard.store.migration`).

Threads: a pump thread moves watch batches into an inbox and wakes the selector loop
through a pipe; the loop applies them (tracking the applied revision), releases parked
requests, and, when an instance's registration vanished, reaps what its death left
dangling if this daemon is the lowest live instance. Backend writes happen on the loop
thread (about a millisecond each on a healthy etcd).

Fencing: when the lease is lost (the keep-alive thread says so, our registration vanished
from the watch, or no keep-alive succeeded for a whole TTL, as after a SIGSTOP), cluster
operations are refused and the daemon stops with :data:`EXIT_FENCED` rather than serve
stale data; restarting it is a supervisor's job.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import queue
import selectors
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from vineyard.errors import ObjectNotExistsException, VineyardException
from vineyard.protocol import error_reply
from vineyard.store.clusterview import ClusterView, Outcome
from vineyard.store.meta import (
    Compare,
    Delete,
    LeaseExpired,
    MetaBackend,
    MetaTimeout,
    RevisionCompacted,
    TxnConflict,
    Watch,
    WatchClosed,
    data_key,
    name_key,
    open_backend,
    session_prefix,
)
from vineyard.store.meta.session import Session

if TYPE_CHECKING:
    from vineyard.store.meta.launch import EtcdProcess
    from vineyard.store.server import Connection, Server

__all__ = ["EXIT_FENCED", "Cluster", "add_arguments", "join_cluster"]

log = logging.getLogger("vineyard.store")

#: Exit status of a daemon that lost its cluster membership (EX_TEMPFAIL: restart it).
EXIT_FENCED = 75
#: Seconds a parked request waits for the watch before it is answered with an error.
PARK_TIMEOUT = 30.0
_COMPACTED = object()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The daemon's cluster flags (``--meta etcd`` and friends)."""
    parser.add_argument(
        "--etcd-endpoints",
        "--etcd_endpoint",
        "--etcd-endpoint",
        dest="etcd_endpoints",
        default="",
        help="etcd client URLs, e.g. http://h1:2379,http://h2:2379 (with --meta etcd)",
    )
    parser.add_argument(
        "--etcd-prefix",
        "--etcd_prefix",
        dest="etcd_prefix",
        default="vineyard",
        help="key prefix; daemons on the same etcd and prefix form one cluster (default vineyard)",
    )
    parser.add_argument(
        "--etcd-launch",
        "--etcd_launch",
        dest="etcd_launch",
        action="store_true",
        help="start a private etcd on loopback (development and tests); implies --meta etcd",
    )
    parser.add_argument(
        "--lease-ttl",
        "--lease_ttl",
        dest="lease_ttl",
        type=int,
        default=10,
        help="seconds without a keep-alive after which the cluster drops this daemon (default 10)",
    )
    parser.add_argument(
        "--rpc-advertise",
        "--rpc_advertise",
        dest="rpc_advertise",
        default="",
        help="host:port other daemons reach our RPC server at (default: the bound address)",
    )


def join_cluster(
    args: argparse.Namespace, socket_path: str, rpc_sock: socket.socket | None, token: str | None
) -> Cluster:
    """Join the cluster the command line names; see the module docstring for the steps.

    Raises
    ------
    ValueError
        Inconsistent flags (e.g. ``--meta etcd`` without endpoints, a TTL below 1).
    EtcdErrorException
        etcd could not be started or reached, or registration failed.
    """
    if args.lease_ttl < 1:
        raise ValueError(f"--lease-ttl must be at least 1 second, not {args.lease_ttl}")
    if rpc_sock is None:
        endpoint = "0.0.0.0:0"
        log.warning("RPC is off (--norpc): other instances cannot read this daemon's blobs")
    elif args.rpc_advertise:
        endpoint = args.rpc_advertise
    else:
        host, port = rpc_sock.getsockname()[:2]
        endpoint = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    etcd = None
    endpoints = args.etcd_endpoints
    if args.etcd_launch:
        from vineyard.store.meta.launch import EtcdProcess

        etcd = EtcdProcess()
        endpoints = etcd.endpoint
        log.info("launched etcd (pid %d) at %s", etcd.pid, endpoints)
    try:
        backend = open_backend(
            "etcd",
            session_prefix(args.etcd_prefix),
            endpoints=endpoints,
            timeout=max(1.0, min(5.0, float(args.lease_ttl))),
        )
        hostname = socket.gethostname()
        fields = {
            "hostid": hostname,
            "hostname": hostname,
            "nodename": hostname,
            "rpc_endpoint": endpoint,
            "ipc_socket": socket_path,
            "timestamp": int(time.time() * 1000),
        }
        try:
            return Cluster(backend, args.lease_ttl, fields, etcd=etcd, token=token)
        except BaseException:
            backend.close()
            raise
    except BaseException:
        if etcd is not None:
            etcd.stop()
        raise


class Cluster:
    """This daemon's membership: lease, watch, view, and the cluster-aware handlers.

    Parameters
    ----------
    backend
        The shared metadata store, bound to the session prefix.
    ttl
        The session lease's TTL in seconds.
    fields
        This instance's registry entry (``rpc_endpoint``, ``ipc_socket`` ...).
    etcd
        An etcd this daemon launched and stops at :meth:`close`.
    token
        The RPC shared secret, presented to other daemons when fetching from them.
    """

    def __init__(
        self,
        backend: MetaBackend,
        ttl: int,
        fields: dict[str, Any],
        *,
        etcd: EtcdProcess | None = None,
        token: str | None = None,
    ) -> None:
        self.backend = backend
        self.etcd = etcd
        self.token = token
        self.fields = fields
        self.exit_status = 0
        self.applied = 0
        self._fenced = ""
        self._inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._parked: dict[int, tuple[int, Connection, Callable[[], Any]]] = {}
        self._seq = itertools.count(1)
        self._server: Server | None = None
        self._orig: dict[str, Callable[..., Any]] = {}
        try:
            self.session = Session(backend, ttl, on_lost=lambda reason: self.post(None))
        except BaseException:
            self._close_pipe()
            raise
        try:
            self._snapshot = backend.range("/")
            self.watch: Watch = backend.watch("/", self._snapshot.revision + 1)
            self.instance_id = backend.register_instance(self.session.lease, fields)
        except BaseException:
            self.session.close()  # revoking also removes a registration that got through
            self._close_pipe()
            raise
        self._pump_thread = self._start_pump(self.watch)

    # -- wiring into the server ------------------------------------------------------------
    @property
    def server(self) -> Server:
        assert self._server is not None, "attach() the cluster to a server first"
        return self._server

    def attach(self, server: Server) -> None:
        """Install the view and the handlers into ``server``, whose object table must have
        been made with this instance's id."""
        from vineyard.store.clusterops import ClusterHandlers
        from vineyard.store.migration import Migrations

        assert server.store.instance_id == self.instance_id, "the store needs the registered instance id"
        self._server = server
        self.store = server.store
        self.view = ClusterView(server.store)
        self.migrations = Migrations(self)
        if self.fields["rpc_endpoint"] != "0.0.0.0:0":
            server.rpc_endpoint = self.fields["rpc_endpoint"]
        server.selector.register(self._wake_r, selectors.EVENT_READ, ("wakeup", self._on_wakeup))
        self._orig = dict(server.handlers)
        server.handlers.update(ClusterHandlers(self, self._orig).table())
        outcome = self.view.reset(self._snapshot.kvs)
        self.applied = self._snapshot.revision
        self.view.instances[self.instance_id] = dict(self.fields)
        log.info(
            "joined the cluster at %s as instance %d (lease %x, TTL %d s, %d other instance(s))",
            ",".join(getattr(self.backend, "endpoints", []) or ["?"]),
            self.instance_id,
            self.session.lease,
            self.session.ttl,
            len(self.view.instances) - 1,
        )
        self._after(outcome, startup=True)

    def close(self) -> None:
        """Leave: stop watching, revoke the lease (our registration and persisted objects go
        with it), and stop the etcd we launched."""
        self.watch.close()
        self._pump_thread.join(5.0)  # it may be posting: the pipe must outlive it
        self.session.close(revoke=not self._fenced)
        self.backend.close()
        if self.etcd is not None:
            self.etcd.stop()
        self._close_pipe()

    def _close_pipe(self) -> None:
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass

    # -- the inbox: watch batches and work finished on other threads ------------------------
    def post(self, item: Any) -> None:
        """Hand ``item`` (a batch of events, or a callable to run) to the loop; any thread."""
        if item is not None:
            self._inbox.put(item)
        try:
            os.write(self._wake_w, b"\0")
        except (BlockingIOError, OSError):
            pass  # a full pipe wakes the loop anyway

    def _start_pump(self, watch: Watch) -> threading.Thread:
        thread = threading.Thread(target=self._pump, args=(watch,), name="vineyard-cluster-watch", daemon=True)
        thread.start()
        return thread

    def _pump(self, watch: Watch) -> None:
        while True:
            try:
                batch = watch.get(1.0)
            except WatchClosed:
                return
            except RevisionCompacted:
                self.post(_COMPACTED)
                return
            if batch:
                self.post(batch)

    def _on_wakeup(self) -> None:
        try:
            while True:
                try:
                    item = self._inbox.get_nowait()
                except queue.Empty:
                    break
                if isinstance(item, list):
                    outcome = self.view.apply(item)
                    self.applied = max(self.applied, item[-1].revision)
                    self._after(outcome)
                elif item is _COMPACTED:
                    self._reload()
                else:
                    item()
            if self.session.lost.is_set():
                self._fence(self.session.reason)
        except Exception:  # the loop must go on; the next wake-up retries
            log.exception("internal error while applying cluster changes")

    def _reload(self) -> None:
        """The watch's history was compacted: read everything again and watch anew."""
        log.warning("the metadata history was compacted under our watch; reloading")
        snapshot = self.backend.range("/")
        self.watch.close()
        self.watch = self.backend.watch("/", snapshot.revision + 1)
        self._pump_thread = self._start_pump(self.watch)
        outcome = self.view.reset(snapshot.kvs)
        self.applied = snapshot.revision
        self._after(outcome)

    def _after(self, outcome: Outcome, startup: bool = False) -> None:
        server = self.server
        server._apply(outcome.actions)
        for name in outcome.names:
            if self.store.names.get(name) is not None:
                server._wake_name(name)
        if outcome.lost:
            self._fence("this instance's registration vanished from the cluster (its lease expired)")
            return
        try:
            self.flush_deletes()
        except VineyardException as exc:
            log.warning("could not delete the keys of objects deleted here: %s", exc)
        if outcome.departed:
            log.info("instance(s) %s left the cluster", ", ".join(map(str, sorted(outcome.departed))))
        if outcome.departed or startup:
            self._reap()
        self._release_parked()

    # -- fencing ---------------------------------------------------------------------------
    def check(self) -> None:
        """Refuse a cluster operation unless the lease is surely ours.

        Raises
        ------
        LeaseExpired
            The lease is lost, or no keep-alive succeeded for a whole TTL.
        """
        if self._fenced:
            raise LeaseExpired(f"this daemon left the cluster: {self._fenced}")
        self.session.check()
        silent = self.session.silent_for()
        if silent > self.session.ttl:
            raise LeaseExpired(f"no lease keep-alive succeeded for {silent:.1f} s (TTL {self.session.ttl} s)")

    def _fence(self, reason: str) -> None:
        if self._fenced:
            return
        self._fenced = reason or "the lease is lost"
        log.error("lost the cluster membership (%s): refusing cluster operations and exiting", self._fenced)
        self.exit_status = EXIT_FENCED
        for seq in list(self._parked):
            self._expire(seq, LeaseExpired(f"this daemon left the cluster: {self._fenced}"))
        self.server.stop()

    # -- parking requests until the watch catches up ---------------------------------------
    def _park(self, revision: int, conn: Connection, run: Callable[[], Any]) -> None:
        conn.waiting = True
        seq = next(self._seq)
        self._parked[seq] = (revision, conn, run)
        self.server._call_later(
            PARK_TIMEOUT,
            lambda: self._expire(
                seq, MetaTimeout(f"the metadata watch did not reach revision {revision} within {PARK_TIMEOUT:g} s")
            ),
        )

    def _release_parked(self) -> None:
        for seq, (revision, conn, run) in list(self._parked.items()):
            if revision <= self.applied:
                del self._parked[seq]
                self._run_parked(conn, run)

    def _expire(self, seq: int, exc: VineyardException) -> None:
        entry = self._parked.pop(seq, None)
        if entry is not None:
            self.server._resume(entry[1], error_reply(exc.code, exc.message))

    def _run_parked(self, conn: Connection, run: Callable[[], Any]) -> None:
        from vineyard.store.server import _DEFER

        server = self.server
        if conn.id not in server.conns:
            return
        conn.waiting = False
        try:
            reply = run()
        except VineyardException as exc:
            reply = error_reply(exc.code, exc.message)
        except Exception as exc:
            log.exception("internal error in a request parked for the cluster")
            reply = error_reply(255, f"internal error: {type(exc).__name__}: {exc}")
        if reply is _DEFER:
            if not conn.waiting and conn.id in server.conns:
                server._process(conn)  # it answered by itself; go on reading
            return
        server._resume(conn, reply)

    def synced(self, conn: Connection, run: Callable[[], Any], needed: bool = True) -> Any:
        """``run()`` once this daemon has seen every write made anywhere before now."""
        if not needed:
            return run()
        self.check()
        point = self.backend.barrier(self.applied)
        if point <= self.applied:
            return run()
        self._park(point, conn, run)
        return _defer()

    def reply_at(self, conn: Connection, revision: int, reply: dict[str, Any]) -> Any:
        """Answer once our own write at ``revision`` is applied here (read-your-writes)."""
        if revision <= self.applied:
            return reply
        self._park(revision, conn, lambda: reply)
        return _defer()

    # -- writes ----------------------------------------------------------------------------
    def publish(self, object_id: int) -> None:
        """Write the keys of our persisted objects reachable from ``object_id``; on failure
        they are transient again."""
        records = self.view.unpublished(object_id)
        if not records:
            return
        try:
            self.check()
            compares, ops = self.view.publish_txn(records, self.session.lease)
            self.backend.commit(compares, ops)
        except BaseException as exc:
            for record in records:
                record.fields["transient"] = True
            self.store._trees.clear()
            if isinstance(exc, TxnConflict):
                raise ObjectNotExistsException(
                    f"cannot persist o{object_id:016x}: a member it refers to was deleted from the cluster",
                    object_id=object_id,
                ) from None
            raise
        self.view.published.update(record.id for record in records)

    def flush_deletes(self) -> None:
        """Delete the keys of persisted objects the store deleted (and of their names)."""
        ops, names = self.view.take_deletes()
        if not ops and not names:
            return
        self.check()
        if ops:
            self.backend.txn([], ops)
        for name, oid in names:
            self.backend.txn([Compare.value_is(name_key(name), json.dumps(oid))], [Delete(name_key(name))])

    # -- the reaper ------------------------------------------------------------------------
    def _reap(self) -> None:
        """After instances died: drop our transient global objects left dangling and, if we
        are the lowest live instance, delete the persisted ones and the names left pointing
        at nothing, cluster-wide (idempotent: a second reaper does no harm)."""
        store, view = self.store, self.view
        dangling = view.dangling_globals()
        local = [oid for oid in dangling if store.objects[oid].fields["transient"]]
        if local:
            _, actions = store.delete(local, force=True, deep=False)
            self.server._apply(actions)
        if not view.lowest_live():
            return
        persisted = [oid for oid in dangling if oid not in local]
        names = view.dangling_names()
        if not persisted and not names:
            return
        try:
            self.check()
            if persisted:
                self.backend.txn([], [Delete(data_key(oid)) for oid in persisted])
            for name, revision in names:
                self.backend.txn([Compare.unchanged(name_key(name), revision)], [Delete(name_key(name))])
        except VineyardException as exc:
            log.warning("reaping after a departure failed: %s", exc)
            return
        log.info(
            "reaped %d global object(s) and %d name(s) left dangling by departed instances", len(persisted), len(names)
        )


def _defer() -> Any:
    from vineyard.store.server import _DEFER

    return _DEFER
