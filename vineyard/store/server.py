"""The daemon's event loop: UNIX-socket (IPC) and TCP (RPC) connections, one thread.

All socket syscalls of the daemon live here. Each request is decoded by
:mod:`vineyard.protocol`, dispatched through :data:`Server.handlers`, and answered in
order. Segment file descriptors ride along with the reply that first mentions a segment
(``SCM_RIGHTS``); a reply also lists segments the client should unmap because they were
released. A request that must wait (``get_name(wait=True)``) is answered later; the
connection reads nothing else meanwhile, which keeps replies in order.
"""

from __future__ import annotations

import collections
import heapq
import hmac
import logging
import os
import selectors
import signal
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from vineyard._version import __version__
from vineyard.errors import (
    ConnectionFailedException,
    InvalidException,
    ObjectNotExistsException,
    ProtocolError,
    RemoteProtocolError,
    StatusCode,
    VineyardException,
)
from vineyard.ids import EMPTY_BLOB_ID
from vineyard.protocol import (
    NEED_DATA,
    ONEWAY,
    PROTOCOL_VERSION,
    FrameDecoder,
    check_tree,
    encode,
    error_reply,
    ok,
    release_ids,
    validate_request,
)
from vineyard.store.allocator import Action, Allocator
from vineyard.store.memory import SegmentTable
from vineyard.store.objects import BlobRecord, ObjectStore
from vineyard.store.spill import Spiller, SpillStorage, spill_status

__all__ = ["PollWindow", "Server", "ServerConfig", "install_signal_handlers"]

log = logging.getLogger("vineyard.store")

_RECV = 1 << 18
_DEFER = object()
_FDS_PER_MESSAGE = 200  # well under the kernel's SCM_MAX_FD (253)
_ACTIVE = 0.005  # a connection that sent something this recently (s) counts as busy
_SCRATCH = memoryview(bytearray(1 << 20))  # where the bytes of a refused RPC upload go


@dataclass(slots=True)
class ServerConfig:
    socket: str
    size: int
    rpc: bool = False
    rpc_host: str = "127.0.0.1"
    rpc_port: int = 9600
    socket_mode: int = 0o600
    reuse_cache: int | None = None
    meta: str = "local"
    token: str | None = None
    deployment: str = "local"
    allow_uids: frozenset[int] | None = None
    allow_gids: frozenset[int] | None = None
    busy_poll_us: int = 100
    spill_path: str | None = None  # spilling of cold blobs to this directory (store/spill.py)
    spill_lower_rate: float = 0.3
    spill_upper_rate: float = 0.8
    instance_id: int = 0  # registered in the cluster (store/cluster.py); 0 alone


class PollWindow:
    """When the daemon busy-polls for the next request instead of sleeping.

    A client's next request usually follows its reply within tens of microseconds, and
    waking a sleeping thread on another CPU costs 20-40 µs here; so after answering, the
    daemon polls for ``spin`` seconds. Only while requests come close together (the last
    idle gap at most twice the window: the last gap predicts the next), and only while
    fewer connections are busy (sent something in the last ``_ACTIVE`` s) than there are
    CPUs, since then polling would take a CPU a client needs.
    """

    def __init__(self, spin: float, cpus: int) -> None:
        self.spin = spin
        self.cpus = cpus
        self.idle_since = 0.0  # when the last work ended
        self.busy_until = 0.0  # poll until then (0: sleep)
        self._poll = False
        self._last_seen: dict[int, float] = {}  # connection id -> when it last sent something

    def woke(self, now: float, senders: Iterable[int]) -> None:
        """Work arrived at ``now`` from these connections."""
        self._poll = False
        if not self.spin or now - self.idle_since > 2 * self.spin:
            return
        seen = self._last_seen
        for conn_id in senders:
            seen[conn_id] = now
        if len(seen) > 4 * self.cpus:  # forget the quiet ones
            self._last_seen = seen = {c: t for c, t in seen.items() if now - t < _ACTIVE}
        active = sum(1 for t in seen.values() if now - t < _ACTIVE)
        self._poll = active < self.cpus

    def done(self, now: float) -> None:
        """The work (and its replies) ended at ``now``: the window opens from here, since a
        client's next request comes that long after it read its reply, however long the
        work took."""
        self.idle_since = now
        self.busy_until = now + self.spin if self._poll else 0.0


class Connection:
    __slots__ = (
        "after_flush",
        "closing",
        "decoder",
        "id",
        "kind",
        "out",
        "peer",
        "raw_discard",
        "raw_reply",
        "raw_targets",
        "registered",
        "sent_segments",
        "sock",
        "unmap",
        "waiting",
    )

    def __init__(self, conn_id: int, sock: socket.socket, kind: str, peer: str) -> None:
        self.id = conn_id
        self.sock = sock
        self.kind = kind
        self.peer = peer
        self.decoder = FrameDecoder()
        self.out: collections.deque[tuple[memoryview, list[int]]] = collections.deque()
        self.registered = False
        self.sent_segments: set[int] = set()
        self.unmap: list[int] = []
        self.waiting = False  # a deferred reply is outstanding: read nothing more
        self.closing = False
        self.raw_targets: list[memoryview] = []  # RPC upload: where incoming bytes go
        self.raw_discard = 0  # bytes of a failed upload still to skip after raw_targets
        self.raw_reply: dict[str, Any] | None = None
        self.after_flush: list[int] = []  # blobs held only while being sent over RPC


class Server:
    """One vineyard instance: its memory, objects and listening sockets."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.allocator = Allocator(config.size, cache_limit=config.reuse_cache)
        self.store = ObjectStore(self.allocator, instance_id=config.instance_id)
        self.memory = SegmentTable()
        self.selector = selectors.DefaultSelector()
        self.conns: dict[int, Connection] = {}
        self._next_conn = 0
        self._stopping = False
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._timer_seq = 0
        self._name_waiters: dict[str, list[tuple[Connection, int]]] = {}
        self.ipc_sock: socket.socket | None = None
        self.rpc_sock: socket.socket | None = None
        self.rpc_endpoint = "0.0.0.0:0"
        self.handlers: dict[str, Callable[[Connection, dict[str, Any]], Any]] = {
            "register": self._register,
            "status": self._status,
            "cluster_meta": self._cluster_meta,
            "ping": lambda conn, req: ok(),
            "create_buffers": self._create_buffers,
            "create_remote_buffers": self._create_remote_buffers,
            "seal": self._seal,
            "abort_buffer": self._abort,
            "shrink_buffer": self._shrink,
            "get_buffers": self._get_buffers,
            "get_remote_buffers": self._get_remote_buffers,
            "create_data": self._create_data,
            "get_data": self._get_data,
            "list_data": self._list_data,
            "delete": self._delete,
            "persist": self._persist,
            "exists": lambda conn, req: ok(exists=self.store.exists(req["id"])),
            "ref_counts": lambda conn, req: ok(counts=self.store.ref_counts(req["ids"])),
            "shallow_copy": self._shallow_copy,
            "label": self._label,
            "put_name": self._put_name,
            "get_name": self._get_name,
            "drop_name": self._drop_name,
            "list_names": self._list_names,
            "release": self._release,
            "clear": self._clear,
            "delete_by_labels": self._delete_by_labels,
            "evict": self._not_spilling,
            "load": self._not_spilling,
            "unpin": self._not_spilling,
            # alone, every object is here already; store/cluster.py copies remote ones
            "migrate": lambda conn, req: ok(id=self.store.tree(req["id"])["id"]),
        }
        self.spiller: Spiller | None = None
        if config.spill_path:
            self.spiller = spiller = Spiller(
                self.store, SpillStorage(config.spill_path), config.spill_lower_rate, config.spill_upper_rate,
                apply=self._apply, view=self.memory.view, defer=lambda check: self._call_later(0.0, check),
            )
            self.handlers.update({
                "evict": lambda conn, req: ok(spilled=spiller.evict(req["ids"])),
                "load": lambda conn, req: ok(loaded=spiller.load(req["ids"], req["pin"])),
                "unpin": lambda conn, req: ok(unpinned=spiller.unpin(req["ids"])),
            })

    # -- lifecycle ---------------------------------------------------------------------
    def bind(self, ipc_sock: socket.socket, rpc_sock: socket.socket | None) -> None:
        self.ipc_sock = ipc_sock
        ipc_sock.setblocking(False)
        self.selector.register(ipc_sock, selectors.EVENT_READ, ("accept", "ipc"))
        if rpc_sock is not None:
            self.rpc_sock = rpc_sock
            rpc_sock.setblocking(False)
            host, port = rpc_sock.getsockname()[:2]
            self.rpc_endpoint = f"{host}:{port}"
            self.selector.register(rpc_sock, selectors.EVENT_READ, ("accept", "rpc"))

    def stop(self) -> None:
        self._stopping = True

    def serve_forever(self, wakeup_fd: int | None = None) -> None:
        if wakeup_fd is not None:
            self.selector.register(wakeup_fd, selectors.EVENT_READ, ("wakeup", None))
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        window = PollWindow(self.config.busy_poll_us / 1e6, cpus)
        spin = window.spin
        while not self._stopping:
            timeout = None
            if self._timers:
                timeout = min(3600.0, max(0.0, self._timers[0][0] - time.monotonic()))
            ready = None
            if window.busy_until:
                ready = self.selector.select(0)
                if not ready and time.monotonic() < window.busy_until:
                    os.sched_yield()  # a client waiting for this CPU goes first
                    continue
            if not ready:
                ready = self.selector.select(timeout)
            if spin:
                window.woke(time.monotonic(), (key.data[1].id for key, _ in ready if key.data[0] == "conn"))
            for key, events in ready:
                what, arg = key.data
                if what == "conn":
                    conn = arg
                    try:
                        if events & selectors.EVENT_WRITE:
                            self._flush(conn)
                        if events & selectors.EVENT_READ and conn.id in self.conns:
                            self._on_readable(conn)
                    except Exception:  # a bug met by one connection must not stop the daemon
                        log.exception("internal error on a connection; dropping it")
                        self._close(conn)
                elif what == "accept":
                    self._accept(key.fileobj, arg)  # type: ignore[arg-type]
                else:
                    try:
                        os.read(key.fd, 512)
                    except OSError:
                        pass
                    if arg is not None:  # a wake-up with work attached (store/cluster.py)
                        arg()
            self._run_timers()
            if spin:
                window.done(time.monotonic())
        self._shutdown()

    def _shutdown(self) -> None:
        for conn in list(self.conns.values()):
            self._close(conn)
        for sock in (self.ipc_sock, self.rpc_sock):
            if sock is not None:
                self.selector.unregister(sock)
                sock.close()
        self.memory.close_all()
        if self.spiller is not None:
            self.spiller.close()
        self.selector.close()

    def _run_timers(self) -> None:
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            _, _, callback = heapq.heappop(self._timers)
            callback()

    def _call_later(self, delay: float, callback: Callable[[], None]) -> None:
        self._timer_seq += 1
        heapq.heappush(self._timers, (time.monotonic() + delay, self._timer_seq, callback))

    # -- connections -------------------------------------------------------------------
    def _accept(self, listener: socket.socket, kind: str) -> None:
        for _ in range(64):
            try:
                sock, addr = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("accept failed: %s", exc)
                return
            peer = str(addr) if kind == "rpc" else "unix"
            if kind == "ipc" and not self._peer_allowed(sock):
                sock.close()
                continue
            sock.setblocking(False)
            if kind == "rpc":
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._next_conn += 1
            conn = Connection(self._next_conn, sock, kind, peer)
            self.conns[conn.id] = conn
            self.selector.register(sock, selectors.EVENT_READ, ("conn", conn))

    def _peer_allowed(self, sock: socket.socket) -> bool:
        uids, gids = self.config.allow_uids, self.config.allow_gids
        if uids is None and gids is None:
            return True
        try:
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
        except OSError:
            return False
        pid, uid, gid = (int.from_bytes(creds[i : i + 4], "little") for i in (0, 4, 8))
        allowed = (uids is not None and uid in uids) or (gids is not None and not gids.isdisjoint(_groups(pid, gid)))
        if not allowed:
            log.warning("refused a client (pid %d, uid %d, gid %d): not in the allow-list", pid, uid, gid)
            # say why before closing, so the client reports a refusal rather than a lost connection
            reason = (f"the vineyard daemon refused the connection: uid {uid} (gid {gid}) is not in "
                      "its allow-list (--allow-user / --allow-group)")
            try:
                sock.setblocking(False)
                sock.send(encode(error_reply(StatusCode.CONNECTION_FAILED, reason)))
            except OSError:
                pass
        return allowed

    def _close(self, conn: Connection) -> None:
        if conn.id not in self.conns:
            return
        del self.conns[conn.id]
        try:
            self.selector.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        conn.sock.close()
        conn.out.clear()
        for view in conn.raw_targets:  # an RPC upload cut short: its views pin the segments' maps
            view.release()
        conn.raw_targets.clear()
        for waiters in self._name_waiters.values():
            waiters[:] = [w for w in waiters if w[0] is not conn]
        self._apply(self.store.disconnect(conn.id))

    def _on_readable(self, conn: Connection) -> None:
        if conn.raw_targets:
            self._read_raw(conn)
            return
        try:
            data = conn.sock.recv(_RECV)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn)
            return
        if not data:
            self._close(conn)
            return
        conn.decoder.feed(data)
        self._process(conn)

    def _process(self, conn: Connection) -> None:
        while not conn.waiting and not conn.raw_targets and conn.id in self.conns:
            try:
                message = conn.decoder.next_message()
            except RemoteProtocolError as exc:
                self._fail(conn, exc)
                return
            if message is NEED_DATA:
                return
            assert isinstance(message, dict)
            self._dispatch(conn, message)
        if conn.raw_targets and conn.decoder.buffered:
            self._fill_raw(conn)

    def _fail(self, conn: Connection, exc: ProtocolError) -> None:
        """Answer a protocol error, then drop the connection: its stream is out of step."""
        log.info("dropping a connection after a protocol error: %s", exc)
        self._send(conn, error_reply(exc.code, str(exc.message)))
        conn.closing = True
        if not conn.out:
            self._close(conn)

    def _dispatch(self, conn: Connection, message: dict[str, Any]) -> None:
        if "release" in message and message.get("type") != "release" and conn.registered:
            released = release_ids(message)
            if released:
                self._apply(self.store.release(conn.id, released))
        try:
            kind, request = validate_request(message)
        except RemoteProtocolError as exc:
            # a well-framed message of the wrong shape: answer and keep the connection
            self._send(conn, error_reply(exc.code, str(exc.message)))
            return
        if not conn.registered and kind != "register":
            self._send(conn, error_reply(InvalidException.code, "register first"))
            return
        try:
            reply = self.handlers[kind](conn, request)
        except VineyardException as exc:
            reply = error_reply(exc.code, exc.message)
        except Exception as exc:  # a daemon bug must not take everyone down
            log.exception("internal error while handling %r", kind)
            reply = error_reply(255, f"internal error handling {kind!r}: {type(exc).__name__}: {exc}")
        if reply is _DEFER or kind in ONEWAY:
            return
        self._send(conn, reply)

    # -- sending -----------------------------------------------------------------------
    def _send(self, conn: Connection, reply: dict[str, Any], fds: list[int] | None = None,
              raw: list[memoryview] | None = None) -> None:
        if conn.unmap:
            reply["unmap"] = conn.unmap
            conn.unmap = []
        try:
            frame = encode(reply)
        except ProtocolError as exc:
            frame = encode(error_reply(exc.code, exc.message))
            fds, raw = None, None
        conn.out.append((memoryview(frame), fds or []))
        for chunk in raw or ():
            conn.out.append((chunk, []))
        self._flush(conn)

    def _flush(self, conn: Connection) -> None:
        out = conn.out
        try:
            while out:
                chunk, fds = out[0]
                if fds:
                    sent = conn.sock.sendmsg(
                        [chunk], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, _pack_fds(fds))]
                    )
                else:
                    sent = conn.sock.send(chunk)
                if sent < len(chunk):
                    out[0] = (chunk[sent:], [])
                    break
                out.popleft()
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            self._close(conn)
            return
        if out:
            self.selector.modify(conn.sock, self._events(conn), ("conn", conn))
            return
        self.selector.modify(conn.sock, self._events(conn), ("conn", conn))
        if conn.after_flush:
            held, conn.after_flush = conn.after_flush, []
            self._apply(self.store.release(conn.id, held))
        if conn.closing:
            self._close(conn)

    def _events(self, conn: Connection) -> int:
        return selectors.EVENT_READ | (selectors.EVENT_WRITE if conn.out else 0)

    # -- memory ------------------------------------------------------------------------
    def _apply(self, actions: list[Action]) -> None:
        if not actions:
            return
        for segment in self.memory.apply(actions):
            for conn in self.conns.values():
                if segment in conn.sent_segments:
                    conn.sent_segments.discard(segment)
                    conn.unmap.append(segment)

    def _locations(
        self, conn: Connection, blobs: list[BlobRecord | None]
    ) -> tuple[list[Any], list[list[int]], list[int]]:
        """Where each blob lives, plus segments (and their fds) this client has not seen."""
        locs: list[Any] = []
        new_segments: list[list[int]] = []
        fds: list[int] = []
        for blob in blobs:
            if blob is None:
                locs.append(None)
                continue
            alloc = blob.alloc
            if alloc is None:
                locs.append([blob.id, 0, 0, blob.size])
                continue
            locs.append([blob.id, alloc.segment, alloc.offset, blob.size])
            if conn.kind == "ipc" and alloc.segment not in conn.sent_segments:
                conn.sent_segments.add(alloc.segment)
                seg = self.memory.segments[alloc.segment]
                new_segments.append([seg.id, seg.size])
                fds.append(seg.fd)
        return locs, new_segments, fds

    def _reply_with_blobs(self, conn: Connection, reply: dict[str, Any], blobs: list[BlobRecord | None]) -> Any:
        locs, segments, fds = self._locations(conn, blobs)
        reply["blobs"] = locs
        if segments:
            reply["segments"] = segments
        if len(fds) > _FDS_PER_MESSAGE:
            # Too many descriptors for one message: send them ahead in fd-only frames.
            while len(fds) > _FDS_PER_MESSAGE:
                head, fds = fds[:_FDS_PER_MESSAGE], fds[_FDS_PER_MESSAGE:]
                self._send(conn, {"code": 0, "type": "fds", "count": len(head)}, head)
        self._send(conn, reply, fds)
        return _DEFER

    # -- handlers ----------------------------------------------------------------------
    def _register(self, conn: Connection, req: dict[str, Any]) -> dict[str, Any]:
        expected, token = self.config.token, req["token"]
        if conn.kind == "rpc" and expected is not None and (
            token is None or not hmac.compare_digest(token.encode(), expected.encode())
        ):
            conn.closing = True
            log.warning("refused an RPC client from %s: %s token", conn.peer, "no" if token is None else "a wrong")
            raise ConnectionFailedException(
                "the vineyard daemon refused the RPC connection: a wrong or missing token "
                "(pass token= to connect() or set VINEYARD_RPC_TOKEN)"
            )
        if req["store_type"] == "ipc" and conn.kind != "ipc":
            raise InvalidException("an IPC client must connect through the UNIX socket")
        conn.registered = True
        return ok(
            instance_id=self.store.instance_id,
            ipc_socket=self.config.socket,
            rpc_endpoint=self.rpc_endpoint,
            version=__version__,
            protocol=PROTOCOL_VERSION,
            session=0,
        )

    def _status(self, conn: Connection, req: dict[str, Any]) -> dict[str, Any]:
        ipc = sum(1 for c in self.conns.values() if c.kind == "ipc")
        return ok(
            instance_id=self.store.instance_id,
            deployment=self.config.deployment,
            memory_usage=self.allocator.used,
            memory_limit=self.allocator.limit,
            cached_memory=self.allocator.cached_bytes,
            deferred_requests=sum(len(w) for w in self._name_waiters.values()),
            ipc_connections=ipc,
            rpc_connections=len(self.conns) - ipc,
            objects=len(self.store.objects),
            blobs=len(self.store.blobs) - 1,
            names=len(self.store.names),
            **spill_status(self.spiller),
        )

    def _cluster_meta(self, conn: Connection, req: dict[str, Any]) -> dict[str, Any]:
        me = {
            "hostid": socket.gethostname(),
            "hostname": socket.gethostname(),
            "nodename": socket.gethostname(),
            "rpc_endpoint": self.rpc_endpoint,
            "ipc_socket": self.config.socket,
            "timestamp": int(time.time() * 1000),
        }
        return ok(instances={self.store.instance_id: me})

    def _create_buffers(self, conn: Connection, req: dict[str, Any]) -> Any:
        try:
            blobs, actions = self.store.create_blobs(conn.id, req["sizes"], req["runs"])
        except VineyardException as exc:
            self._apply(getattr(exc, "actions", []))  # what the rolled-back allocation left
            raise
        self._apply(actions)
        return self._reply_with_blobs(conn, ok(), list(blobs))

    def _create_remote_buffers(self, conn: Connection, req: dict[str, Any]) -> Any:
        try:
            blobs, actions = self.store.create_blobs(conn.id, req["sizes"])
        except VineyardException as exc:
            self._apply(getattr(exc, "actions", []))  # what the rolled-back allocation left
            # The bytes follow the request unasked: skip them, then answer with the error.
            # Read as frames, they would break the connection, or worse, parse as requests.
            conn.raw_reply = error_reply(exc.code, exc.message)
            conn.raw_discard = sum(req["sizes"])
            self._next_discard(conn)
            if not conn.raw_targets:
                self._finish_upload(conn)
            return _DEFER
        self._apply(actions)
        conn.raw_targets = [
            self.memory.view(b.alloc.segment, b.alloc.offset, b.size)
            for b in blobs
            if b.alloc is not None and b.size
        ]
        reply = ok(blobs=[[b.id, 0, 0, b.size] for b in blobs])
        reply["_seal"] = [b.id for b in blobs if b.creator is not None]
        conn.raw_reply = reply
        if not conn.raw_targets:
            self._finish_upload(conn)
        return _DEFER

    def _fill_raw(self, conn: Connection) -> None:
        while conn.raw_targets and conn.decoder.buffered:
            target = conn.raw_targets[0]
            chunk = conn.decoder.take_raw(len(target))
            target[: len(chunk)] = chunk
            self._advance_raw(conn, len(chunk))
        if not conn.raw_targets:
            self._process(conn)

    def _read_raw(self, conn: Connection) -> None:
        target = conn.raw_targets[0]
        try:
            n = conn.sock.recv_into(target)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn)
            return
        if n == 0:
            self._close(conn)
            return
        self._advance_raw(conn, n)
        if not conn.raw_targets:
            self._process(conn)

    def _advance_raw(self, conn: Connection, n: int) -> None:
        target = conn.raw_targets[0]
        if n < len(target):
            conn.raw_targets[0] = target[n:]
            return
        conn.raw_targets.pop(0)
        self._next_discard(conn)
        if not conn.raw_targets:
            self._finish_upload(conn)

    def _next_discard(self, conn: Connection) -> None:
        if conn.raw_discard and not conn.raw_targets:
            n = min(conn.raw_discard, len(_SCRATCH))
            conn.raw_discard -= n
            conn.raw_targets.append(_SCRATCH[:n])

    def _finish_upload(self, conn: Connection) -> None:
        """All bytes of an RPC upload arrived: seal its blobs and answer."""
        reply, conn.raw_reply = conn.raw_reply, None
        if reply is not None:
            sealed = reply.pop("_seal", [])
            self.store.seal(conn.id, sealed)
            # an RPC client maps nothing, so it holds nothing: otherwise every blob it ever
            # uploaded would stay in memory until it disconnects, deleted or not
            self._apply(self.store.release(conn.id, sealed))
            self._send(conn, reply)

    def _seal(self, conn: Connection, req: dict[str, Any]) -> dict[str, Any]:
        self.store.seal(conn.id, req["ids"])
        return ok()

    def _abort(self, conn: Connection, req: dict[str, Any]) -> dict[str, Any]:
        self._apply(self.store.abort(conn.id, req["id"]))
        return ok()

    def _shrink(self, conn: Connection, req: dict[str, Any]) -> dict[str, Any]:
        self._apply(self.store.shrink(conn.id, req["id"], req["size"]))
        return ok()

    def _get_buffers(self, conn: Connection, req: dict[str, Any]) -> Any:
        if self.spiller is not None:
            self.spiller.reload_blobs(req["ids"])
        blobs = self.store.get_blobs(conn.id, req["ids"], req["unsafe"])
        return self._reply_with_blobs(conn, ok(), blobs)

    def _get_remote_buffers(self, conn: Connection, req: dict[str, Any]) -> Any:
        if self.spiller is not None:
            self.spiller.reload_blobs(req["ids"])
        blobs = self.store.get_blobs(conn.id, req["ids"], req["unsafe"])
        raw = []
        for blob in blobs:
            if blob is not None and blob.alloc is not None and blob.size:
                raw.append(self.memory.view(blob.alloc.segment, blob.alloc.offset, blob.size))
                conn.after_flush.append(blob.id)
        reply = ok(blobs=[None if b is None else [b.id, 0, 0, b.size] for b in blobs])
        self._send(conn, reply, raw=raw)
        return _DEFER

    def _create_data(self, conn: Connection, req: dict[str, Any]) -> dict[str, Any]:
        tree = req["tree"]
        try:
            check_tree(tree)
        except RemoteProtocolError as exc:
            raise InvalidException(f"malformed metadata tree: {exc.message}") from None
        inlined = self._inline_blobs(conn, tree, req["inline"]) if req["inline"] else []
        try:
            created = self.store.create(conn.id, tree, persist=req["persist"])
        except BaseException:
            for blob_id in inlined:
                if blob_id != EMPTY_BLOB_ID:
                    self._apply(self.store.abort(conn.id, blob_id))
            raise
        if inlined:
            # the client never maps these blobs: it needs no hold on them
            self._apply(self.store.release(conn.id, [b for b in inlined if b != EMPTY_BLOB_ID]))
        if req["name"] is not None:
            self.store.put_name(created[0][0], req["name"])
            self._wake_name(req["name"])
        reply = ok(created=created, instance_id=self.store.instance_id)
        if inlined:
            reply["inlined"] = inlined
        return reply

    def _inline_blobs(self, conn: Connection, tree: dict[str, Any], payloads: list[bytes]) -> list[int]:
        """Store the small blobs sent with a tree and point its ``{"__inline": i}`` members at
        them; saves the allocation round trip of a small put."""
        slots: list[tuple[dict[str, Any], str, int]] = []
        stack = [tree]
        while stack:
            node = stack.pop()
            for key, value in node.items():
                if type(value) is dict:
                    index = value.get("__inline")
                    if index is None:
                        stack.append(value)
                    elif type(index) is not int or not 0 <= index < len(payloads) or len(value) != 1:
                        raise InvalidException(f"member {key!r} refers to a missing inline blob {index!r}")
                    else:
                        slots.append((node, key, index))
        try:
            blobs, actions = self.store.create_blobs(conn.id, [len(p) for p in payloads])
        except VineyardException as exc:
            self._apply(getattr(exc, "actions", []))  # what the rolled-back allocation left
            raise
        self._apply(actions)
        for blob, payload in zip(blobs, payloads):
            if blob.alloc is not None and payload:
                self.memory.view(blob.alloc.segment, blob.alloc.offset, blob.size)[:] = payload
        for node, key, index in slots:
            node[key] = {"id": blobs[index].id}
        return [b.id for b in blobs]

    def _get_data(self, conn: Connection, req: dict[str, Any]) -> Any:
        metas = []
        blobs: list[BlobRecord | None] = []
        with_blobs = req["blobs"] and conn.kind == "ipc"
        if with_blobs and self.spiller is not None:
            self.spiller.reload_objects(req["ids"])
        for object_id in req["ids"]:
            if with_blobs:
                tree, got = self.store.get(conn.id, object_id)
                blobs.extend(got)
            else:
                tree = self.store.tree(object_id)
            metas.append(tree)
        if not with_blobs:
            return ok(metas=metas, blobs=[])
        return self._reply_with_blobs(conn, ok(metas=metas), blobs)

    def _list_data(self, conn: Connection, req: dict[str, Any]) -> dict[str, Any]:
        return ok(metas=self.store.list(req["pattern"], req["regex"], req["limit"], req["nobuffer"]))

    def _delete(self, conn: Connection, req: dict[str, Any]) -> dict[str, Any]:
        kept, actions = self.store.delete(req["ids"], force=req["force"], deep=req["deep"])
        if req["memory_trim"]:
            actions = actions + self.allocator.trim()
        self._apply(actions)
        return ok(kept=kept)

    def _persist(self, conn: Connection, req: dict[str, Any]) -> dict[str, Any]:
        self.store.persist(req["id"])
        return ok()

    def _shallow_copy(self, conn: Connection, req: dict[str, Any]) -> dict[str, Any]:
        return ok(id=self.store.shallow_copy(req["id"], req["extra"]))

    def _label(self, conn: Connection, req: dict[str, Any]) -> dict[str, Any]:
        self.store.label(req["id"], req["labels"])
        return ok()

    def _put_name(self, conn: Connection, req: dict[str, Any]) -> dict[str, Any]:
        self.store.put_name(req["id"], req["name"])
        self._wake_name(req["name"])
        return ok()

    def _get_name(self, conn: Connection, req: dict[str, Any]) -> Any:
        name = req["name"]
        found = self.store.get_name(name)
        if found is not None:
            return ok(id=found)
        if not req["wait"]:
            raise ObjectNotExistsException(f"failed to find name: {name}")
        conn.waiting = True
        self._timer_seq += 1
        token = self._timer_seq
        self._name_waiters.setdefault(name, []).append((conn, token))
        timeout = req["timeout"]
        if timeout is not None:
            self._call_later(float(timeout), lambda: self._name_timeout(name, conn, token, float(timeout)))
        return _DEFER

    def _name_timeout(self, name: str, conn: Connection, token: int, timeout: float) -> None:
        waiters = self._name_waiters.get(name, [])
        if (conn, token) not in waiters:
            return
        waiters.remove((conn, token))
        if not waiters:
            self._name_waiters.pop(name, None)
        self._resume(conn, error_reply(
            ObjectNotExistsException.code, f"failed to find name: {name} (waited {timeout:g} s)"
        ))

    def _wake_name(self, name: str) -> None:
        object_id = self.store.get_name(name)
        for conn, _ in self._name_waiters.pop(name, []):
            self._resume(conn, ok(id=object_id))

    def _resume(self, conn: Connection, reply: dict[str, Any]) -> None:
        if conn.id not in self.conns:
            return
        conn.waiting = False
        self._send(conn, reply)
        self._process(conn)

    def _drop_name(self, conn: Connection, req: dict[str, Any]) -> dict[str, Any]:
        self.store.drop_name(req["name"])
        return ok()

    def _list_names(self, conn: Connection, req: dict[str, Any]) -> dict[str, Any]:
        return ok(names=self.store.list_names(req["pattern"], req["regex"], req["limit"]))

    def _release(self, conn: Connection, req: dict[str, Any]) -> None:
        self._apply(self.store.release(conn.id, req["ids"]))

    def _clear(self, conn: Connection, req: dict[str, Any]) -> dict[str, Any]:
        self._apply(self.store.clear() + self.allocator.trim())
        return ok()

    def _delete_by_labels(self, conn: Connection, req: dict[str, Any]) -> dict[str, Any]:
        deleted, actions = self.store.delete_by_labels(req["labels"], req["older_than"])
        self._apply(actions)
        return ok(deleted=deleted)

    def _not_spilling(self, conn: Connection, req: dict[str, Any]) -> dict[str, Any]:
        raise InvalidException("spilling is disabled: start the daemon with --spill-path")


def _groups(pid: int, gid: int) -> set[int]:
    """A peer's primary and supplementary groups (``/proc``; just the primary if unreadable)."""
    groups = {gid}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Groups:"):
                    groups.update(int(g) for g in line.split()[1:])
                    break
    except (OSError, ValueError):
        pass
    return groups


def _pack_fds(fds: list[int]) -> bytes:
    import array

    return array.array("i", fds).tobytes()


def install_signal_handlers(server: Server) -> int:
    """SIGINT/SIGTERM stop the loop; returns the read end of the wake-up pipe."""
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    os.set_blocking(write_fd, False)
    signal.set_wakeup_fd(write_fd)

    def on_signal(signum: int, frame: object) -> None:
        log.info("%s received, stopping", signal.Signals(signum).name)
        server.stop()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    return read_fd


