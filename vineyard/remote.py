"""Blobs that live on other instances: bulk downloads over RPC, client side and daemon side.

An object persisted by one daemon is visible cluster-wide (``get_meta`` works anywhere),
but its blobs stay in the memory of the daemon that owns them. To read them elsewhere:

- :func:`fetch_remote_blobs` (what ``client.get`` does) groups the missing blobs of a
  metadata tree by owning instance, looks each owner's ``rpc_endpoint`` up in
  ``client.meta``, and downloads the bytes into this process (one copy, off the socket);
- ``client.migrate(id)`` / ``get(id, fetch=True)`` asks the local daemon to copy the object
  into its own memory once (see :mod:`vineyard.store.migration`), which uses
  :class:`PeerConnection` to receive straight into shared memory.

:class:`PeerConnection` speaks the ordinary RPC protocol (``register`` with the optional
shared-secret token, then ``get_remote_buffers``) on a socket of its own, independent of the
client transports, so that the bytes can land wherever the caller wants them.
"""

from __future__ import annotations

import mmap
import os
import socket
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from vineyard.errors import (
    ConnectionFailedException,
    ObjectNotExistsException,
    RemoteProtocolError,
    error_from_status,
)
from vineyard.ids import EMPTY_BLOB_ID, ObjectID
from vineyard.meta import BLOB_TYPENAME, Blob, ObjectMeta
from vineyard.protocol import NEED_DATA, PROTOCOL_VERSION, FrameDecoder, encode

if TYPE_CHECKING:
    from types import TracebackType

__all__ = ["PeerConnection", "fetch_remote_blobs", "new_buffer", "parse_endpoint", "remote_blob_nodes"]

_RECV = 1 << 18
_CHUNK = 8 << 20  # progress is reported at least this often
_HUGE = 2 << 20  # buffers from this size on ask for transparent huge pages


def new_buffer(size: int) -> Any:
    """A zeroed writable buffer of ``size`` bytes for incoming blob bytes.

    Large ones are anonymous mappings advised to use transparent huge pages: the kernel then
    faults them in 2 MiB at a time, and filling fresh memory costs about a sixth of what it
    costs with 4 KiB pages (the faults, not the copy, dominate a download into new memory).
    """
    if size < _HUGE:
        return bytearray(size)
    buffer = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    advice = getattr(mmap, "MADV_HUGEPAGE", None)
    if advice is not None:
        try:
            buffer.madvise(advice)
        except OSError:  # no THP in this kernel: plain pages then
            pass
    return buffer


def parse_endpoint(endpoint: str) -> tuple[str, int]:
    """``"host:port"`` (``"[v6]:port"`` too) as ``(host, port)``.

    Raises
    ------
    ValueError
        Not of that form.
    """
    host, _, port = endpoint.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"an RPC endpoint must look like host:port, not {endpoint!r}")
    return host.strip("[]"), int(port)


class PeerConnection:
    """One RPC connection to a daemon, for downloading blobs into buffers the caller chooses.

    Parameters
    ----------
    endpoint
        The daemon's ``rpc_endpoint``, ``host:port``.
    token
        The shared secret of daemons started with ``--rpc-token`` (None: send none).
    timeout
        Seconds for connecting and for each socket read.

    Raises
    ------
    ConnectionFailedException
        Nothing answers there, or the daemon refused us (e.g. a wrong token).
    """

    def __init__(self, endpoint: str, token: str | None = None, timeout: float = 10.0) -> None:
        host, port = parse_endpoint(endpoint)
        self.endpoint = endpoint
        try:
            self._sock = socket.create_connection((host, port), timeout=timeout)
        except OSError as exc:
            raise ConnectionFailedException(
                f"cannot reach the vineyard daemon at {endpoint}: {exc.strerror or exc}"
            ) from None
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._decoder = FrameDecoder(check_depth=False)
        message: dict[str, Any] = {"type": "register", "version": PROTOCOL_VERSION, "store_type": "rpc"}
        if token is not None:
            message["token"] = token
        try:
            self.info = self.request(message)
        except BaseException:
            self.close()
            raise

    def request(self, message: dict[str, Any]) -> dict[str, Any]:
        """Send one request and return its reply.

        Raises
        ------
        VineyardException
            The daemon answered with an error (mapped by :func:`error_from_status`).
        ConnectionFailedException
            The connection broke.
        """
        try:
            self._sock.sendall(encode(message))
            reply = self._read_reply()
        except OSError as exc:
            raise ConnectionFailedException(
                f"lost the connection to the vineyard daemon at {self.endpoint}: {exc.strerror or exc}"
            ) from None
        if reply.get("code", 0):
            raise error_from_status(int(reply["code"]), str(reply.get("message", "")))
        return reply

    def _read_reply(self) -> dict[str, Any]:
        while True:
            message = self._decoder.next_message()
            if message is not NEED_DATA:
                assert isinstance(message, dict)
                if message.get("type") == "fds":
                    continue
                return message
            data = self._sock.recv(_RECV)
            if not data:
                raise ConnectionResetError(0, "the daemon closed the connection")
            self._decoder.feed(data)

    def download(
        self,
        blob_ids: Sequence[int],
        targets: Sequence[Any] | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> list[Any]:
        """The bytes of ``blob_ids``, read into ``targets`` (writable buffers of the exact
        sizes) or, without targets, into new buffers (:func:`new_buffer`).

        ``progress(n)`` is called as bytes arrive, with how many arrived since the last call.

        Raises
        ------
        ObjectNotExistsException
            The daemon does not hold one of the blobs (any more).
        RemoteProtocolError
            A target's size differs from the blob's.
        ConnectionFailedException
            The connection broke midway.
        """
        ids = [int(i) for i in blob_ids]
        reply = self.request({"type": "get_remote_buffers", "ids": ids})
        locations = reply["blobs"]
        # The bytes of every blob found follow the reply, whatever happens to the others:
        # read them all before complaining, or the next request would read garbage.
        out: list[Any] = []
        missing = None
        try:
            for index, location in enumerate(locations):
                if location is None:
                    missing = ids[index] if missing is None else missing
                    out.append(None)
                    continue
                size = int(location[3])
                target = memoryview(new_buffer(size) if targets is None else targets[index]).cast("B")
                if target.nbytes != size:
                    raise RemoteProtocolError(
                        f"blob {ObjectID(ids[index])!r} has {size} bytes, the buffer for it {target.nbytes}"
                    )
                self._receive(target, progress)
                out.append(target.obj if targets is None else targets[index])
        except OSError as exc:
            raise ConnectionFailedException(
                f"lost the connection to the vineyard daemon at {self.endpoint} during a download: "
                f"{exc.strerror or exc}"
            ) from None
        if missing is not None:
            raise ObjectNotExistsException(
                f"blob {ObjectID(missing)!r} is not held by the daemon at {self.endpoint}", object_id=missing
            )
        return out

    def _receive(self, target: memoryview, progress: Callable[[int], None] | None) -> None:
        size = target.nbytes
        got = 0
        buffered = self._decoder.take_raw(size)
        if buffered:
            target[: len(buffered)] = buffered
            got = len(buffered)
        reported = got
        while got < size:
            n = self._sock.recv_into(target[got:], min(size - got, _CHUNK))
            if n == 0:
                raise ConnectionResetError(0, "the daemon closed the connection")
            got += n
            if progress is not None and got - reported >= _CHUNK:
                progress(got - reported)
                reported = got
        if progress is not None and got > reported:
            progress(got - reported)

    def close(self) -> None:
        try:
            self._sock.close()
        except OSError:
            pass

    def __enter__(self) -> PeerConnection:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def remote_blob_nodes(tree: dict[str, Any], instance_id: int, have: Any = ()) -> dict[int, list[dict[str, Any]]]:
    """Blob nodes of ``tree`` owned by instances other than ``instance_id``, by owner.

    Blobs whose id is in ``have`` (already mapped or fetched) and the empty blob are left out.
    """
    out: dict[int, list[dict[str, Any]]] = {}
    seen: set[int] = set()
    stack = [tree]
    while stack:
        node = stack.pop()
        if node.get("typename") == BLOB_TYPENAME:
            blob_id = int(node["id"])
            owner = int(node.get("instance_id", instance_id))
            if owner != instance_id and blob_id != EMPTY_BLOB_ID and blob_id not in have and blob_id not in seen:
                seen.add(blob_id)
                out.setdefault(owner, []).append(node)
            continue
        stack.extend(value for value in node.values() if type(value) is dict)
    return out


def _token(client: Any) -> str | None:
    token = getattr(client, "_token", None)
    return token if token is not None else os.environ.get("VINEYARD_RPC_TOKEN")


def fetch_remote_blobs(client: Any, meta: ObjectMeta, timeout: float = 10.0) -> int:
    """Download the blobs of ``meta`` that live on other instances into this process.

    Each owner is asked once, over RPC, at the ``rpc_endpoint`` it registered (see
    ``client.meta``); owners are asked in parallel. The blobs become read-only views over
    private memory, put where the resolvers look for them (``meta``'s buffers). Global
    objects are left alone: their partitions are read where they live.

    Returns
    -------
    int
        How many bytes were downloaded.

    Raises
    ------
    ObjectNotExistsException
        An owner is gone from the cluster, or no longer holds a blob.
    ConnectionFailedException
        An owner could not be reached (a wrong token too).
    """
    if meta.isglobal:
        return 0
    groups = remote_blob_nodes(meta._tree, client.instance_id, meta._buffers)
    if not groups:
        return 0
    instances = client.meta
    token = _token(client)

    def fetch(owner: int, nodes: list[dict[str, Any]]) -> list[Any]:
        endpoint = instances.get(owner, {}).get("rpc_endpoint")
        if not endpoint or endpoint.endswith(":0"):
            raise ObjectNotExistsException(
                f"blobs of {meta.id!r} live on instance {owner}, which is gone or serves no RPC"
            )
        with PeerConnection(endpoint, token, timeout) as peer:
            return peer.download([int(node["id"]) for node in nodes])

    owners = list(groups.items())
    if len(owners) == 1:
        results = [fetch(*owners[0])]
    else:
        with ThreadPoolExecutor(min(8, len(owners)), thread_name_prefix="vineyard-fetch") as pool:
            results = list(pool.map(lambda item: fetch(*item), owners))
    total = 0
    for (_, nodes), buffers in zip(owners, results, strict=True):
        for node, buffer in zip(nodes, buffers, strict=True):
            view = memoryview(buffer).toreadonly()
            meta._buffers[int(node["id"])] = Blob._make(view, ObjectMeta._wrap(node, client, meta._buffers))
            total += view.nbytes
    return total
