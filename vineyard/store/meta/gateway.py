"""A standard-library HTTP client for etcd's v3 JSON gateway (``POST /v3/...``).

The gateway speaks JSON: keys and values are base64, 64-bit integers are strings, and
fields holding their default value are left out (a PUT event has no ``type``, a failed txn
no ``succeeded``, an empty range no ``kvs``). Streaming calls (``/v3/watch``) answer with
one JSON object per line of a chunked response.

Failover: endpoints are tried in turn starting with the last one that answered. A request
moves on to the next endpoint when the connection could not be made; once a request was
sent, only calls marked ``retry`` (reads, keep-alives, revokes: repeating them does no
harm) move on, and others raise, since etcd may have applied them. A pooled connection
that the server closed while idle is reopened once, as HTTP clients usually do.
"""

from __future__ import annotations

import base64
import http.client
import json
import threading
import urllib.parse
from collections.abc import Sequence
from typing import Any

from vineyard.errors import EtcdErrorException
from vineyard.store.meta import LeaseExpired, MetaTimeout, RevisionCompacted

__all__ = ["EtcdGateway", "b64", "parse_endpoints", "unb64"]

_HEADERS = {"Content-Type": "application/json"}
_MAX_IDLE = 8  # pooled connections per endpoint; more are opened when threads need them
_GRPC_UNAVAILABLE = 14


def b64(data: bytes | str) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode("ascii")


def unb64(text: str | None) -> bytes:
    return base64.b64decode(text) if text else b""


def parse_endpoints(endpoints: str | Sequence[str]) -> list[str]:
    """``"http://h1:2379,http://h2:2379"`` (or a list) -> normalized URLs.

    Raises
    ------
    ValueError
        Empty, or not ``http(s)://host:port``.
    """
    items = endpoints.split(",") if isinstance(endpoints, str) else list(endpoints)
    out: list[str] = []
    for item in (x.strip() for x in items):
        if not item:
            continue
        url = urllib.parse.urlsplit(item if "://" in item else f"http://{item}")
        if url.scheme not in ("http", "https") or not url.hostname or url.path not in ("", "/"):
            raise ValueError(f"not an etcd endpoint: {item!r} (expected http://host:port)")
        out.append(f"{url.scheme}://{url.netloc}")
    if not out:
        raise ValueError("no etcd endpoint given")
    return out


class _Unreached(Exception):
    """This endpoint failed in a way that makes trying the next one safe."""


class EtcdGateway:
    """Request/response and streaming calls to a list of etcd endpoints; thread-safe.

    Parameters
    ----------
    endpoints
        ``"http://h1:2379,http://h2:2379"`` or a list of URLs.
    timeout
        Seconds for connecting and for each reply, unless a call says otherwise.
    """

    def __init__(self, endpoints: str | Sequence[str], *, timeout: float = 5.0) -> None:
        self.endpoints = parse_endpoints(endpoints)
        self.timeout = timeout
        self._preferred = 0
        self._idle: list[list[http.client.HTTPConnection]] = [[] for _ in self.endpoints]
        self._lock = threading.Lock()

    @property
    def current(self) -> str:
        """The endpoint tried first: the last one that answered."""
        return self.endpoints[self._preferred]

    def _connection(self, index: int, timeout: float) -> http.client.HTTPConnection:
        url = urllib.parse.urlsplit(self.endpoints[index])
        cls = http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection
        return cls(url.hostname or "", url.port, timeout=timeout)

    def _take(self, index: int) -> tuple[http.client.HTTPConnection, bool]:
        with self._lock:
            if self._idle[index]:
                return self._idle[index].pop(), True
        return self._connection(index, self.timeout), False

    def _give(self, index: int, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            if len(self._idle[index]) < _MAX_IDLE:
                self._idle[index].append(conn)
                return
        conn.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, [[] for _ in self.endpoints]
        for conns in idle:
            for conn in conns:
                conn.close()

    # -- unary calls ---------------------------------------------------------------------
    def call(
        self,
        op: str,
        path: str,
        body: dict[str, Any],
        *,
        retry: bool = False,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """POST ``body`` to ``path`` and return the decoded reply.

        Parameters
        ----------
        op
            What the caller is doing, for error messages (``"put"``, ``"lock 'x'"`` ...).
        retry
            Whether resending after a lost reply is harmless.
        timeout
            Seconds to wait for the reply (default: the gateway's timeout).

        Raises
        ------
        EtcdErrorException
            etcd refused the request, or no endpoint answered; the message names the
            endpoints and ``op``.
        MetaTimeout
            A call without ``retry`` got no reply in time; it may have been applied.
        LeaseExpired, RevisionCompacted
            etcd's "lease not found" and "revision compacted" errors.
        """
        payload = json.dumps(body).encode()
        errors: list[str] = []
        start = self._preferred
        for step in range(len(self.endpoints)):
            index = (start + step) % len(self.endpoints)
            try:
                reply = self._call_one(index, op, path, payload, retry, timeout or self.timeout)
            except _Unreached as exc:
                errors.append(f"{self.endpoints[index]}: {exc}")
                continue
            self._preferred = index
            return reply
        raise EtcdErrorException(f"{op} failed on every etcd endpoint ({'; '.join(errors)})", operation=op)

    def _call_one(
        self, index: int, op: str, path: str, payload: bytes, retry: bool, timeout: float
    ) -> dict[str, Any]:
        endpoint = self.endpoints[index]
        conn, reused = self._take(index)
        for attempt in (0, 1):
            if conn.sock is None:
                try:
                    conn.connect()
                except OSError as exc:
                    conn.close()
                    raise _Unreached(f"cannot connect: {exc}") from exc
            assert conn.sock is not None
            conn.sock.settimeout(timeout)
            try:
                conn.request("POST", path, payload, _HEADERS)
                response = conn.getresponse()
                data = response.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                conn.close()
                if reused and attempt == 0:
                    reused = False  # the server dropped an idle connection: reopen once
                    continue
                if retry:
                    raise _Unreached(f"connection lost: {exc}") from exc
                raise EtcdErrorException(
                    f"{op} on {endpoint}: connection lost before the reply ({exc}); it may have been applied",
                    operation=op,
                    endpoint=endpoint,
                ) from exc
            except TimeoutError as exc:
                conn.close()
                if retry:
                    raise _Unreached(f"no reply within {timeout:g} s") from exc
                raise MetaTimeout(
                    f"{op} on {endpoint}: no reply within {timeout:g} s; it may have been applied",
                    operation=op,
                    endpoint=endpoint,
                ) from exc
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                if retry:
                    raise _Unreached(f"{type(exc).__name__}: {exc}") from exc
                raise EtcdErrorException(f"{op} on {endpoint}: {exc}", operation=op, endpoint=endpoint) from exc
            break
        if response.will_close:
            conn.close()
        else:
            self._give(index, conn)
        return self._decode(op, endpoint, response.status, data, retry)

    def _decode(self, op: str, endpoint: str, status: int, data: bytes, retry: bool) -> dict[str, Any]:
        try:
            reply = json.loads(data.splitlines()[0] if data else b"{}")
        except ValueError as exc:
            raise EtcdErrorException(
                f"{op} on {endpoint}: HTTP {status} with a body that is not JSON: {data[:200]!r}",
                operation=op,
                endpoint=endpoint,
            ) from exc
        if "result" in reply and status == 200:
            reply = reply["result"]  # a streaming call (keepalive) answered with one message
        error = reply.get("error")
        if status == 200 and error is None:
            return dict(reply)
        if isinstance(error, dict):  # streaming calls nest the error
            message, code = str(error.get("message", error)), int(error.get("grpc_code", 0))
        else:
            message, code = str(reply.get("message") or error or data[:200]), int(reply.get("code", 0))
        if code == _GRPC_UNAVAILABLE and retry:
            raise _Unreached(message)
        raise self.error(op, endpoint, message, code)

    @staticmethod
    def error(op: str, endpoint: str, message: str, code: int = 0) -> EtcdErrorException:
        """The exception for an error reply ``message`` (gRPC ``code``) to ``op``."""
        text = f"{op} on {endpoint}: {message}"
        if "lease not found" in message or "session is expired" in message:
            return LeaseExpired(text, operation=op, endpoint=endpoint)
        if "revision has been compacted" in message:
            return RevisionCompacted(text, operation=op, endpoint=endpoint, compact_revision=0)
        return EtcdErrorException(f"{text} (grpc code {code})", operation=op, endpoint=endpoint)

    # -- streams -------------------------------------------------------------------------
    def stream(
        self, op: str, path: str, body: dict[str, Any], timeout: float
    ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse, str]:
        """Open a streaming call on a connection of its own; returns it, the response and
        the endpoint. Reads time out after ``timeout`` seconds of silence.

        Raises
        ------
        EtcdErrorException
            No endpoint accepted the call.
        """
        payload = json.dumps(body).encode()
        errors: list[str] = []
        start = self._preferred
        for step in range(len(self.endpoints)):
            index = (start + step) % len(self.endpoints)
            endpoint = self.endpoints[index]
            conn = self._connection(index, self.timeout)
            try:
                conn.connect()
                assert conn.sock is not None
                conn.sock.settimeout(timeout)
                conn.request("POST", path, payload, _HEADERS)
                response = conn.getresponse()
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                errors.append(f"{endpoint}: {exc}")
                continue
            if response.status != 200:
                data = response.read()
                conn.close()
                try:
                    self._decode(op, endpoint, response.status, data, retry=True)
                except _Unreached as exc:
                    errors.append(f"{endpoint}: {exc}")
                    continue
                raise EtcdErrorException(f"{op} on {endpoint}: HTTP {response.status}", operation=op)
            self._preferred = index
            return conn, response, endpoint
        raise EtcdErrorException(f"{op} failed on every etcd endpoint ({'; '.join(errors)})", operation=op)
