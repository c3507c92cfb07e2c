"""How a client talks to a daemon: the UNIX socket (shared memory) or TCP (copied bytes).

:class:`IPCTransport` receives segment fds with ``SCM_RIGHTS`` and maps each segment once.
Every blob handed out is a view whose *exporter* is a small per-blob ctypes object: every
numpy array, memoryview or Arrow buffer derived from it keeps it alive, and when the last
one dies a weak reference's callback queues a release, sent ahead of the next request (or by a background
flush). :class:`RPCTransport` carries blob bytes over TCP after the frame that announces
them.
"""

from __future__ import annotations

import array
import collections
import ctypes
import errno
import logging
import mmap
import os
import socket
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from vineyard.errors import (
    ConnectionErrorException,
    ConnectionFailedException,
    StoreUnavailable,
    VineyardException,
    error_from_status,
)
from vineyard.protocol import NEED_DATA, PROTOCOL_VERSION, FrameDecoder, encode

__all__ = ["IPCTransport", "RPCTransport", "copy_into"]

log = logging.getLogger(__name__)

_RECV = 1 << 18
_ANC = socket.CMSG_SPACE(253 * 4)
_PARALLEL_COPY = 16 << 20
_COPY_WORKERS = min(4, os.cpu_count() or 1)

def _busy_poll_setting() -> float:
    text = os.environ.get("VINEYARD_BUSY_POLL_US", "").strip()
    try:
        return max(0, int(text)) / 1e6 if text else 50e-6
    except ValueError:
        log.warning("VINEYARD_BUSY_POLL_US=%r is not a whole number of microseconds; using 50", text)
        return 50e-6


#: How long a client polls for a reply before it sleeps. A reply to a small request comes
#: within tens of microseconds, and being woken up on another CPU costs about as much again.
_BUSY_POLL = _busy_poll_setting()
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _copy_pool() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max(1, min(4, os.cpu_count() or 1)), thread_name_prefix="vineyard-copy")
        return _pool


def copy_into(dst: np.ndarray, src: np.ndarray) -> None:
    """``dst[:] = src`` for flat uint8 arrays; large copies run on several threads."""
    n = src.nbytes
    workers = _COPY_WORKERS
    if n < _PARALLEL_COPY or workers < 2:
        np.copyto(dst, src)
        return
    step = -(-n // workers) + 63 & ~63
    futures = [
        _copy_pool().submit(np.copyto, dst[i : i + step], src[i : i + step]) for i in range(0, n, step)
    ]
    for future in futures:
        future.result()


class _Transport:
    kind = "ipc"

    def __init__(self, where: str) -> None:
        self.where = where
        self._sock: socket.socket | None = None
        self._lock = threading.RLock()
        self._decoder = FrameDecoder(check_depth=False)
        self._pending: collections.deque[int] = collections.deque()
        self._pid = os.getpid()
        self.info: dict[str, Any] = {}

    # -- requests ----------------------------------------------------------------------
    def request(self, message: dict[str, Any], raw: list[Any] | None = None) -> dict[str, Any]:
        """Send ``message`` (and raw payload buffers after it), return the reply.

        Raises
        ------
        StoreUnavailable
            The connection is closed, broken, or was inherited across ``fork``.
        VineyardException
            The daemon answered with an error.
        """
        with self._lock:
            sock = self._usable()
            try:
                if self._pending:
                    # releases ride along with the request: no frame of their own
                    message = {**message, "release": self._drain()}
                sock.sendall(encode(message))
                for chunk in raw or ():
                    sock.sendall(chunk)
                reply = self._read_reply(sock)
            except OSError as exc:
                self._broken(exc)
            except StoreUnavailable:
                self._close_socket()
                raise
        if reply.get("code", 0):
            raise error_from_status(reply["code"], reply.get("message", ""))
        return reply

    def send_oneway(self, message: dict[str, Any]) -> None:
        with self._lock:
            sock = self._usable()
            try:
                sock.sendall(encode(message))
            except OSError as exc:
                self._broken(exc)

    def _usable(self) -> socket.socket:
        if self._sock is None:
            raise ConnectionErrorException(f"the connection to the vineyard daemon at {self.where} is closed")
        if os.getpid() != self._pid:
            raise ConnectionErrorException(
                "this connection was inherited across fork(); call client.fork() in the child "
                "for a connection of its own"
            )
        return self._sock

    def _broken(self, exc: OSError) -> Any:
        said = self._last_word()
        self._close_socket()
        if said is not None:
            raise said from exc
        raise ConnectionErrorException(
            f"lost the connection to the vineyard daemon at {self.where}: {exc.strerror or exc}"
        ) from exc

    def _last_word(self) -> VineyardException | None:
        """The error the daemon sent just before it hung up (e.g. refusing this user), if any:
        a send that fails on a closed connection must not hide the daemon's reason."""
        sock = self._sock
        if sock is None:
            return None
        try:
            sock.setblocking(False)
            for _ in range(64):
                message = self._decoder.next_message()
                if message is NEED_DATA:
                    self._decoder.feed(self._recv(sock))
                elif isinstance(message, dict) and message.get("code"):
                    return error_from_status(int(message["code"]), str(message.get("message", "")))
        except (OSError, ValueError, TypeError, VineyardException):  # nothing (more) to read
            pass
        return None

    def _recv(self, sock: socket.socket) -> bytes:
        data = sock.recv(_RECV)
        if not data:
            raise ConnectionResetError(errno.ECONNRESET, "the daemon closed the connection")
        return data

    def _read_reply(self, sock: socket.socket) -> dict[str, Any]:
        decoder = self._decoder
        while True:
            message = decoder.next_message()
            if message is NEED_DATA:
                decoder.feed(self._recv(sock))
                continue
            assert isinstance(message, dict)
            if "unmap" in message:  # may ride on a descriptor-only frame too
                self._unmap(message["unmap"])
            if message.get("type") == "fds":
                continue
            return message

    def _unmap(self, segments: list[int]) -> None:
        pass

    def _drain(self) -> list[int]:
        ids = []
        pending = self._pending
        while pending:
            ids.append(pending.popleft())
        return ids

    def flush_releases(self) -> None:
        """Send queued releases now, if the connection is idle."""
        if not self._pending or not self._lock.acquire(blocking=False):
            return
        try:
            if self._sock is not None and os.getpid() == self._pid and self._pending:
                self._sock.sendall(encode({"type": "release", "ids": self._drain()}))
        except OSError:
            self._close_socket()
        finally:
            self._lock.release()

    def register(self, token: str | None = None) -> dict[str, Any]:
        message = {"type": "register", "version": PROTOCOL_VERSION, "store_type": self.kind}
        if token is not None:
            message["token"] = token
        self.info = self.request(message)
        return self.info

    def _close_socket(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass

    def __del__(self) -> None:
        # a client dropped without close() (e.g. one cached in a module global until exit)
        # must not leave its socket to the garbage collector's ResourceWarning
        sock = getattr(self, "_sock", None)
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass

    def close(self) -> None:
        with self._lock:
            if self._sock is not None and os.getpid() == self._pid and self._pending:
                try:
                    self._sock.sendall(encode({"type": "release", "ids": self._drain()}))
                except OSError:
                    pass
            self._close_socket()

    @property
    def connected(self) -> bool:
        return self._sock is not None


def _connect_with_retry(family: int, address: Any, where: str, timeout: float) -> socket.socket:
    deadline = time.monotonic() + timeout
    while True:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.connect(address)
            return sock
        except OSError as exc:
            sock.close()
            if time.monotonic() >= deadline:
                reason = exc.strerror or str(exc)
                hint = ""
                if isinstance(exc, FileNotFoundError) or exc.errno == errno.ECONNREFUSED:
                    hint = " Is the daemon running? Start one with: python -m vineyard --socket " + (
                        where if family == socket.AF_UNIX else "/tmp/vineyard.sock"
                    )
                raise ConnectionFailedException(
                    f"Failed to connect to the vineyard daemon at {where}: {reason}.{hint}"
                ) from None
            time.sleep(0.05)


class IPCTransport(_Transport):
    """A UNIX-socket connection that maps the daemon's shared memory."""

    kind = "ipc"

    def __init__(self, path: str, timeout: float = 1.0) -> None:
        super().__init__(path)
        self._fds: collections.deque[int] = collections.deque()
        self.segments: dict[int, mmap.mmap] = {}
        self._views: dict[int, weakref.ref[Any]] = {}
        self.addresses: dict[int, tuple[int, int]] = {}  # start address -> (blob id, size)
        self._books = (self._views, self.addresses, self._pending)
        self._flusher: threading.Thread | None = None
        self._last_wait = 0.0  # how long the last reply kept this connection asleep
        self._sock = _connect_with_retry(socket.AF_UNIX, path, path, timeout)

    def _recv(self, sock: socket.socket) -> bytes:
        try:
            data, ancdata, _, _ = sock.recvmsg(_RECV, _ANC, socket.MSG_DONTWAIT)
        except BlockingIOError:
            data = None
            # Poll only while replies come quickly: the last wait predicts the next one.
            if _BUSY_POLL and self._last_wait <= 2 * _BUSY_POLL:
                start = time.perf_counter()
                deadline = start + _BUSY_POLL
                while time.perf_counter() < deadline:
                    try:
                        data, ancdata, _, _ = sock.recvmsg(_RECV, _ANC, socket.MSG_DONTWAIT)
                        break
                    except BlockingIOError:
                        os.sched_yield()  # a process waiting for this CPU (the daemon?) goes first
            if data is None:
                start = time.perf_counter()
                data, ancdata, _, _ = sock.recvmsg(_RECV, _ANC)
                self._last_wait = time.perf_counter() - start
            else:
                self._last_wait = 0.0
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds = array.array("i")
                fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
                self._fds.extend(fds)
        if not data:
            raise ConnectionResetError(errno.ECONNRESET, "the daemon closed the connection")
        return data

    def _read_reply(self, sock: socket.socket) -> dict[str, Any]:
        reply = super()._read_reply(sock)
        for seg_id, size in reply.get("segments", ()):
            fd = self._fds.popleft()
            try:
                self.segments[seg_id] = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            finally:
                os.close(fd)
        return reply

    def _unmap(self, segments: list[int]) -> None:
        for seg_id in segments:
            _release_mapping(self.segments.pop(seg_id, None))

    # -- blob views ----------------------------------------------------------------------
    def view(self, blob_id: int, segment: int, offset: int, size: int) -> np.ndarray:
        """A uint8 array over a blob this connection now references.

        Call it under ``self._lock`` together with the request that took the reference, so
        that the background flusher sends no release of the blob in between.
        """
        ref = self._views.get(blob_id)
        exporter = ref() if ref is not None else None
        if exporter is not None:
            start = offset - ref.offset  # type: ignore[union-attr]
            return np.frombuffer(exporter, dtype=np.uint8, count=size, offset=start)
        return np.frombuffer(self._export(((blob_id, segment, offset, size),), segment, offset, size), dtype=np.uint8)

    def view_run(self, locs: list[Any]) -> list[np.ndarray]:
        """uint8 arrays over blobs that lie one after the other in one segment, all over one
        exporter: arrays that span several of them (a DataFrame block) keep them all."""
        _, segment, first, _ = locs[0]
        last = locs[-1]
        whole = np.frombuffer(self._export(locs, segment, first, last[2] + last[3] - first), dtype=np.uint8)
        return [whole[offset - first : offset - first + size] for _, _, offset, size in locs]

    def _export(self, locs: Any, segment: int, first: int, nbytes: int) -> Any:
        """One exporter over ``nbytes`` of ``segment`` from ``first``, standing for the blobs
        at ``locs`` (adjacent, in order): registered, and released when it dies."""
        pending = self._pending
        for loc in locs:
            # An earlier view of this blob may have died after the request went out; its
            # queued release would drop the reference the new view stands on.
            if pending and loc[0] in pending:
                pending.remove(loc[0])
        exporter = (ctypes.c_char * nbytes).from_buffer(self.segments[segment], first)
        base = ctypes.addressof(exporter)
        starts = tuple(base + loc[2] - first for loc in locs)
        ref = _BlobRef(exporter, tuple(loc[0] for loc in locs), starts, first, self._books)
        views, addresses = self._views, self.addresses
        for loc, address in zip(locs, starts):
            views[loc[0]] = ref
            addresses[address] = (loc[0], loc[3])
        if self._flusher is None:
            self._start_flusher()
        return exporter

    def writable(self, segment: int, offset: int, size: int) -> np.ndarray:
        return np.frombuffer(self.segments[segment], dtype=np.uint8, count=size, offset=offset)

    def writable_view(self, segment: int, offset: int, size: int) -> memoryview:
        if size == 0:
            return memoryview(bytearray(0))
        return memoryview((ctypes.c_char * size).from_buffer(self.segments[segment], offset)).cast("B")

    def queue_release(self, blob_ids: list[int]) -> None:
        self._pending.extend(blob_ids)

    def _start_flusher(self) -> None:
        if self._flusher is not None:
            return
        self._flusher = threading.Thread(
            target=_flush_loop, args=(weakref.ref(self),), name="vineyard-release", daemon=True
        )
        self._flusher.start()

    def close(self) -> None:
        super().close()
        self._views.clear()
        for mapping in self.segments.values():
            _release_mapping(mapping)
        self.segments.clear()


class _BlobRef(weakref.ref):  # type: ignore[type-arg]
    """A weak reference to the exporter of one blob, or of a run of adjacent blobs; when it
    dies, their releases are queued (cheaper than ``weakref.finalize``: no registry, no
    atexit hook)."""

    __slots__ = ("addresses", "blob_ids", "books", "offset")

    def __new__(cls, exporter: Any, blob_ids: tuple[int, ...], addresses: tuple[int, ...], offset: int,
                books: Any) -> _BlobRef:
        return super().__new__(cls, exporter, _blob_released)

    def __init__(self, exporter: Any, blob_ids: tuple[int, ...], addresses: tuple[int, ...], offset: int,
                 books: Any) -> None:
        super().__init__(exporter, _blob_released)
        self.blob_ids = blob_ids
        self.addresses = addresses  # where each blob starts in this process
        self.offset = offset  # where the exporter starts in its segment
        self.books = books


def _blob_released(ref: _BlobRef) -> None:
    views, addresses, pending = ref.books
    for blob_id, address in zip(ref.blob_ids, ref.addresses):
        current = views.get(blob_id)
        if current is not ref and current is not None and current() is not None:
            continue  # a newer view of the blob holds the reference now
        if current is ref:
            del views[blob_id]
        if addresses.get(address, (None,))[0] == blob_id:
            del addresses[address]
        pending.append(blob_id)


def _release_mapping(mapping: mmap.mmap | None) -> None:
    """Unmap now if no view uses the mapping; otherwise its last view unmaps it (each view
    keeps the mmap object alive, and a dead mmap unmaps and closes its descriptor)."""
    if mapping is None:
        return
    try:
        mapping.close()
    except BufferError:
        pass


def _flush_loop(ref: weakref.ref[IPCTransport]) -> None:
    while True:
        time.sleep(0.5)
        transport = ref()
        if transport is None or not transport.connected:
            return
        transport.flush_releases()
        del transport


class RPCTransport(_Transport):
    """A TCP connection: blob bytes are copied over the socket."""

    kind = "rpc"

    def __init__(self, host: str, port: int, timeout: float = 1.0) -> None:
        super().__init__(f"{host}:{port}")
        family = socket.AF_INET if ":" not in host else socket.AF_INET6
        sock = _connect_with_retry(family, (host, port), self.where, timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock = sock

    def request_download(self, message: dict[str, Any]) -> tuple[dict[str, Any], list[bytearray | None]]:
        """Send ``message``; read its reply and the raw bytes of the blobs it lists."""
        with self._lock:
            sock = self._usable()
            try:
                frames = []
                if self._pending:
                    frames.append(encode({"type": "release", "ids": self._drain()}))
                frames.append(encode(message))
                sock.sendall(b"".join(frames))
                reply = self._read_reply(sock)
                if reply.get("code", 0):
                    raise error_from_status(reply["code"], reply.get("message", ""))
                buffers: list[bytearray | None] = []
                for loc in reply["blobs"]:
                    if loc is None:
                        buffers.append(None)
                        continue
                    buf = bytearray(loc[3])
                    view = memoryview(buf)
                    got = 0
                    pre = self._decoder.take_raw(len(buf))
                    view[: len(pre)] = pre
                    got = len(pre)
                    while got < len(buf):
                        n = sock.recv_into(view[got:])
                        if n == 0:
                            raise ConnectionResetError(errno.ECONNRESET, "the daemon closed the connection")
                        got += n
                    buffers.append(buf)
            except OSError as exc:
                self._broken(exc)
        return reply, buffers
