"""The etcd backend: :class:`~vineyard.store.meta.MetaBackend` over etcd's v3 JSON gateway.

Standard library only (see :mod:`vineyard.store.meta.gateway` for the transport and
failover rules). Locks use etcd's Lock API, so they interoperate with ``etcdctl lock``.

A watch reads one long chunked response on a thread of its own. When the stream breaks
(etcd restarted, an endpoint died, or ``watch_idle_timeout`` seconds passed without a byte,
which is how a silent network partition shows), it reopens from the revision after the last one
it delivered, on the next endpoint if need be, backing off up to 2 s; the caller sees no
gap. Only compaction ends a watch for good, and so does a consumer that falls
``_MAX_PENDING`` batches behind (it is told to reload rather than grow memory without bound).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import queue
import socket
import threading
from collections.abc import Sequence
from typing import Any

from vineyard.errors import EtcdErrorException
from vineyard.store.meta import (
    Compare,
    Delete,
    Event,
    EventType,
    Get,
    KeyValue,
    LeaseExpired,
    MetaBackend,
    MetaTimeout,
    Op,
    Put,
    Range,
    RevisionCompacted,
    TxnResult,
    Watch,
    WatchClosed,
    prefix_end,
)
from vineyard.store.meta.gateway import EtcdGateway, b64, unb64

__all__ = ["EtcdBackend"]

_TARGETS = {"value": "VALUE", "version": "VERSION", "create": "CREATE", "mod": "MOD", "lease": "LEASE"}
_FIELDS = {"value": "value", "version": "version", "create": "create_revision", "mod": "mod_revision", "lease": "lease"}
_RESULTS = {"==": "EQUAL", "!=": "NOT_EQUAL", "<": "LESS", ">": "GREATER"}
_MAX_BACKOFF = 2.0
_MAX_PENDING = 100_000


def _kv(raw: dict[str, Any], strip: int) -> KeyValue:
    return KeyValue(
        key=unb64(raw.get("key")).decode()[strip:],
        value=unb64(raw.get("value")),
        create_revision=int(raw.get("create_revision", 0)),
        mod_revision=int(raw.get("mod_revision", 0)),
        version=int(raw.get("version", 0)),
        lease=int(raw.get("lease", 0)),
    )


def _revision(reply: dict[str, Any]) -> int:
    return int(reply.get("header", {}).get("revision", 0))


class EtcdBackend(MetaBackend):
    """Keys under ``prefix`` in an etcd cluster.

    Parameters
    ----------
    endpoints
        ``"http://h1:2379,http://h2:2379"``; tried in turn when one fails.
    prefix
        Upstream's ``<etcd_prefix>/<session>``; keys are relative to it.
    timeout
        Seconds for connecting and for each reply.
    watch_idle_timeout
        Seconds of silence after which a watch stream is reopened (see module docstring).
    """

    def __init__(
        self,
        endpoints: str | Sequence[str],
        prefix: str,
        *,
        timeout: float = 5.0,
        watch_idle_timeout: float = 30.0,
    ) -> None:
        self.gateway = EtcdGateway(endpoints, timeout=timeout)
        self.prefix = prefix
        self.watch_idle_timeout = watch_idle_timeout
        self._watches: list[_EtcdWatch] = []
        self._lock = threading.Lock()

    @property
    def endpoints(self) -> list[str]:
        return self.gateway.endpoints

    def _key(self, key: str) -> str:
        return b64(self.prefix + key)

    def _range_body(self, key: str, prefix: bool) -> dict[str, Any]:
        body = {"key": self._key(key)}
        if prefix:
            body["range_end"] = b64(prefix_end((self.prefix + key).encode()))
        return body

    # -- key-value -----------------------------------------------------------------------
    def range(self, key: str, *, prefix: bool = True, revision: int = 0, limit: int = 0) -> Range:
        body: dict[str, Any] = self._range_body(key, prefix)
        if revision > 0:
            body["revision"] = revision
        if limit > 0:
            body["limit"] = limit
        reply = self.gateway.call(f"range {key!r}", "/v3/kv/range", body, retry=True)
        strip = len(self.prefix)
        kvs = [_kv(raw, strip) for raw in reply.get("kvs", ())]
        return Range(kvs, revision if revision > 0 else _revision(reply))

    def put(self, key: str, value: bytes | str, *, lease: int = 0) -> int:
        body: dict[str, Any] = {"key": self._key(key), "value": b64(value)}
        if lease:
            body["lease"] = lease
        return _revision(self.gateway.call(f"put {key!r}", "/v3/kv/put", body))

    def delete(self, key: str, *, prefix: bool = False) -> int:
        what = f"delete {'prefix ' if prefix else ''}{key!r}"
        reply = self.gateway.call(what, "/v3/kv/deleterange", self._range_body(key, prefix))
        return int(reply.get("deleted", 0))

    def _op(self, op: Op) -> dict[str, Any]:
        if isinstance(op, Put):
            put: dict[str, Any] = {"key": self._key(op.key), "value": b64(op.value)}
            if op.lease:
                put["lease"] = op.lease
            return {"request_put": put}
        if isinstance(op, Delete):
            return {"request_delete_range": self._range_body(op.key, op.prefix)}
        return {"request_range": self._range_body(op.key, op.prefix)}

    def _compare(self, compare: Compare) -> dict[str, Any]:
        operand = compare.operand
        value = b64(operand) if compare.target == "value" else int(operand)  # type: ignore[arg-type]
        return {
            "key": self._key(compare.key),
            "target": _TARGETS[compare.target],
            "result": _RESULTS[compare.op],
            _FIELDS[compare.target]: value,
        }

    def txn(self, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()) -> TxnResult:
        body = {
            "compare": [self._compare(c) for c in compares],
            "success": [self._op(op) for op in success],
            "failure": [self._op(op) for op in failure],
        }
        what = f"txn of {len(compares)} compares and {len(success)} ops under {self.prefix!r}"
        reply = self.gateway.call(what, "/v3/kv/txn", body)
        succeeded = bool(reply.get("succeeded", False))
        strip = len(self.prefix)
        responses: list[list[KeyValue] | int | None] = []
        for op, answer in zip(success if succeeded else failure, reply.get("responses", ()), strict=False):
            if isinstance(op, Get):
                responses.append([_kv(raw, strip) for raw in answer.get("response_range", {}).get("kvs", ())])
            elif isinstance(op, Delete):
                responses.append(int(answer.get("response_delete_range", {}).get("deleted", 0)))
            else:
                responses.append(None)
        return TxnResult(succeeded, _revision(reply), responses)

    def head_revision(self) -> int:
        body = {"key": self._key(""), "count_only": True}
        return _revision(self.gateway.call("head revision", "/v3/kv/range", body, retry=True))

    def compact(self, revision: int) -> None:
        # physical: return only once the history is really gone, so a watch that follows
        # is reliably told it was compacted.
        body = {"revision": revision, "physical": True}
        try:
            self.gateway.call(f"compact to {revision}", "/v3/kv/compaction", body, timeout=30.0)
        except RevisionCompacted as exc:
            raise RevisionCompacted(exc.message, compact_revision=revision) from None

    # -- leases --------------------------------------------------------------------------
    def grant(self, ttl: int) -> int:
        reply = self.gateway.call(f"grant lease of {ttl} s", "/v3/lease/grant", {"TTL": ttl})
        return int(reply["ID"])

    def keepalive(self, lease: int) -> int:
        reply = self.gateway.call(f"keep lease {lease:x} alive", "/v3/lease/keepalive", {"ID": lease}, retry=True)
        ttl = int(reply.get("TTL", 0))
        if ttl <= 0:
            raise LeaseExpired(f"lease {lease:x} has expired or was revoked", lease=lease)
        return ttl

    def time_to_live(self, lease: int) -> int:
        reply = self.gateway.call(f"lease {lease:x} time to live", "/v3/lease/timetolive", {"ID": lease}, retry=True)
        return int(reply.get("TTL", 0))  # omitted when 0; a gone lease says -1

    def revoke(self, lease: int) -> None:
        with contextlib.suppress(LeaseExpired):
            self.gateway.call(f"revoke lease {lease:x}", "/v3/lease/revoke", {"ID": lease}, retry=True)

    # -- watches and locks ---------------------------------------------------------------
    def watch(self, key: str, start_revision: int = 0) -> Watch:
        watch = _EtcdWatch(self, key, start_revision)
        with self._lock:
            self._watches = [w for w in self._watches if not w.closed]
            self._watches.append(watch)
        return watch

    def lock(self, name: str, lease: int, timeout: float = 30.0) -> str:
        body = {"name": self._key(name), "lease": lease}
        try:
            reply = self.gateway.call(f"lock {name!r}", "/v3/lock/lock", body, retry=False, timeout=timeout)
        except MetaTimeout:
            # etcd withdraws a waiter whose request went away; deleting our waiter key as
            # well covers a gateway that noticed late. The key name is the Lock API's.
            with contextlib.suppress(EtcdErrorException):
                self.delete(f"{name}/{lease:x}")
            raise MetaTimeout(f"lock {name!r} not acquired within {timeout:g} s") from None
        return unb64(reply["key"]).decode()[len(self.prefix) :]

    def unlock(self, key: str) -> None:
        self.gateway.call(f"unlock {key!r}", "/v3/lock/unlock", {"key": self._key(key)}, retry=True)

    def close(self) -> None:
        with self._lock:
            watches, self._watches = self._watches, []
        for watch in watches:
            watch.close()
        self.gateway.close()


class _EtcdWatch(Watch):
    def __init__(self, backend: EtcdBackend, key: str, start_revision: int) -> None:
        super().__init__(key, start_revision - 1 if start_revision > 0 else 0)
        self._gateway = backend.gateway
        self._strip = len(backend.prefix)
        self._body = backend._range_body(key, prefix=True)
        self._idle = backend.watch_idle_timeout
        self._next = start_revision  # the revision to resume from; 0 until etcd names "now"
        self._queue: queue.SimpleQueue[list[Event] | BaseException] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._conn_lock = threading.Lock()
        self._conn: http.client.HTTPConnection | None = None
        self._closed = False
        self.reconnects = 0
        self.last_error: BaseException | None = None
        response = self._open()  # raises if no endpoint takes it: the caller learns at once
        self._thread = threading.Thread(
            target=self._run, args=(response,), name=f"vineyard-etcd-watch {key}", daemon=True
        )
        self._thread.start()

    @property
    def closed(self) -> bool:
        return self._closed or self._stop.is_set()

    def _open(self) -> http.client.HTTPResponse:
        create = dict(self._body)
        if self._next > 0:
            create["start_revision"] = self._next
        conn, response, endpoint = self._gateway.stream(
            f"watch {self.prefix!r}", "/v3/watch", {"create_request": create}, self._idle
        )
        with self._conn_lock:
            if self._stop.is_set():
                conn.close()
                raise WatchClosed("watch closed while opening")
            self._conn = conn
        try:
            first = json.loads(response.readline() or b"{}")
        except BaseException:
            self._drop()
            raise
        result = first.get("result", {})
        if not result.get("created"):
            self._drop()
            raise EtcdErrorException(f"watch {self.prefix!r} on {endpoint}: not created: {first}")
        if self._next == 0:
            self._next = _revision(result) + 1
            self.revision = self._next - 1
        return response

    def _drop(self) -> None:
        """Close the current stream; only the watch thread calls this (http.client objects
        are not safe to close under a reader)."""
        with self._conn_lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _interrupt(self) -> None:
        """Wake the watch thread from a blocked read, from any thread."""
        with self._conn_lock:
            sock = self._conn.sock if self._conn is not None else None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _run(self, response: http.client.HTTPResponse | None) -> None:
        delay = 0.05
        try:
            while not self._stop.is_set():
                try:
                    if response is None:
                        response = self._open()
                        delay = 0.05
                    if self._read(response):
                        return
                    raise EtcdErrorException("the watch stream ended")
                except Exception as exc:  # any broken stream means: reopen, unless closing
                    if self._stop.is_set():
                        return
                    self.last_error = exc
                    self.reconnects += 1
                    self._drop()
                    response = None
                    self._stop.wait(delay)
                    delay = min(delay * 2, _MAX_BACKOFF)
        finally:
            self._drop()

    def _read(self, response: http.client.HTTPResponse) -> bool:
        """Deliver messages until the stream ends (False) or the watch is finished (True)."""
        while line := response.readline():
            message = json.loads(line)
            if "error" in message:
                raise EtcdErrorException(f"watch {self.prefix!r}: {message['error']}")
            result = message.get("result", {})
            if result.get("canceled"):
                compacted = int(result.get("compact_revision", 0))
                if compacted:
                    self._finish(f"from revision {self._next}: compacted up to {compacted}; reload", compacted)
                    return True
                raise EtcdErrorException(f"watch {self.prefix!r} canceled: {result.get('cancel_reason', '')}")
            raw_events = result.get("events")
            if not raw_events:
                continue
            events = [
                Event(EventType.DELETE if raw.get("type") == "DELETE" else EventType.PUT, _kv(raw["kv"], self._strip))
                for raw in raw_events
            ]
            if self._queue.qsize() >= _MAX_PENDING:
                self._finish(f"fell {_MAX_PENDING} batches behind; reload", events[0].revision)
                return True
            self._next = events[-1].revision + 1
            self._queue.put(events)
        return False

    def _finish(self, why: str, compact_revision: int) -> None:
        self._queue.put(RevisionCompacted(f"watch {self.prefix!r} {why}", compact_revision=compact_revision))
        self._stop.set()

    def get(self, timeout: float | None = None) -> list[Event]:
        if self._closed:
            raise WatchClosed(f"watch on {self.prefix!r} is closed")
        try:
            item = self._queue.get(timeout=timeout)
        except queue.Empty:
            return []
        if isinstance(item, BaseException):
            self._queue.put(item)  # sticky: every later get reports it too
            raise item
        self.revision = item[-1].revision
        return item

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self._interrupt()
        self._queue.put(WatchClosed(f"watch on {self.prefix!r} is closed"))
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=5.0)
