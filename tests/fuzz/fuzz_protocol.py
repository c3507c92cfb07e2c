"""Fuzz targets for the wire protocol and the daemon's request handling (Hypothesis).

Three targets share one generator of hostile input (random bytes, truncated and lying
frames, deep nesting, unknown kinds, wrong field types, ids that do not exist, huge sizes,
negative and overflowing integers, mostly after a valid ``register`` so handlers are
reached):

``decoder``
    :class:`~vineyard.protocol.FrameDecoder`, :func:`~vineyard.protocol.validate_request`
    and :func:`~vineyard.protocol.check_tree`: any bytes, fed whole or in pieces, decode to the
    same messages or raise ``RemoteProtocolError``, never anything else.
``handler``
    A daemon's :class:`~vineyard.store.server.Server` driven in this process over a socket
    pair: no handler fails with anything but a vineyard error, the fuzzed connection always
    ends, a bystander connection is served after every example, and once everyone has left
    and the store is cleared, no byte of memory is left allocated.
``live``
    A real daemon process: the fuzzed connection gets error replies or is dropped, a
    bystander client is served after every example, and the daemon never logs an internal
    error.

Run longer than the test suite does::

    python -m tests.fuzz.fuzz_protocol --runs 20000 --target all
    python -m tests.fuzz.fuzz_protocol --runs 5000 --target live --seed 1
"""

from __future__ import annotations

import argparse
import logging
import math
import selectors
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

import msgpack
import numpy as np
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

import vineyard
from vineyard.errors import RemoteProtocolError
from vineyard.ids import EMPTY_BLOB_ID
from vineyard.protocol import HEADER, NEED_DATA, REQUESTS, FrameDecoder, check_tree, encode, validate_request

__all__ = [
    "POOL",
    "InProcessDaemon",
    "LiveDaemon",
    "check_decoder",
    "main",
    "messages",
    "payloads",
    "run_target",
]

# -- the generator ----------------------------------------------------------------------

#: Ids that exist (refreshed by the targets as they seed their daemon) plus odd constant ones.
POOL: list[int] = [0, 1, EMPTY_BLOB_ID, EMPTY_BLOB_ID | 1, (1 << 64) - 1, (1 << 63) - 1]
_CONSTANT_IDS = list(POOL)

_EDGE_INTS = [0, 1, -1, 63, 64, 4096, 1 << 20, 1 << 31, 1 << 32, 1 << 62, (1 << 63) - 1, 1 << 63,
              (1 << 64) - 1, -(1 << 63), -(1 << 31)]
ints = st.one_of(st.integers(min_value=-(1 << 63), max_value=(1 << 64) - 1), st.sampled_from(_EDGE_INTS))
scalars = st.one_of(st.none(), st.booleans(), ints, st.floats(), st.text(max_size=16), st.binary(max_size=16))
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.text(max_size=8), ints), inner, max_size=4),
    ),
    max_leaves=16,
)
ids = st.one_of(
    st.integers(0, 1 << 16).map(lambda i: POOL[i % len(POOL)]),  # existing ids, at draw time
    st.integers(0, (1 << 64) - 1),
    st.sampled_from(_CONSTANT_IDS),
)
sizes = st.one_of(st.integers(0, 3 << 20), st.sampled_from([0, 1, 63, 64, 65, 1 << 20, 64 << 20, 1 << 40,
                                                            1 << 62, (1 << 64) - 1]))
seconds = st.one_of(st.none(), st.floats(-1, 0.05), st.sampled_from([math.nan, math.inf, -math.inf, 1e300, 0, -5]))
# patterns without nested quantifiers: the daemon matches regexes in its one thread, and a
# catastrophic pattern would stall it (everyone who can reach the socket is trusted)
patterns = st.one_of(
    st.sampled_from(["*", ".*", "vineyard::*", "vineyard::.*", "[", "(", "a**", "?", "\\", "*Tensor*"]),
    st.text(alphabet="abvy:<>[]()?.^$|\\_-", max_size=12),
)
names = st.one_of(st.sampled_from(["seeded", "x", ""]), st.text(max_size=24))
labels = st.dictionaries(st.text(max_size=8), st.one_of(scalars, values), max_size=4)


def _tree_node(children: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    fields = st.dictionaries(
        st.one_of(st.sampled_from(["typename", "nbytes", "shape_", "global", "id", "length", "value_type_"]),
                  st.text(max_size=6)),
        st.one_of(scalars, children, ids.map(lambda i: {"id": i}), st.just("vineyard::Blob")),
        max_size=5,
    )
    return st.tuples(st.sampled_from(["vineyard::Tensor<uint8>", "vineyard::Blob", "x", ""]), fields).map(
        lambda t: {"typename": t[0], **t[1]}
    )


trees = st.recursive(_tree_node(st.nothing()), _tree_node, max_leaves=12)

_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "id": ids, "ids": st.lists(ids, max_size=6), "sizes": st.lists(sizes, max_size=6), "size": sizes,
    "name": names, "tree": trees, "labels": labels, "extra": labels, "timeout": seconds, "older_than": seconds,
    "pattern": patterns, "limit": ints, "version": ints, "session": ints, "token": st.one_of(st.none(), names),
    "store_type": st.sampled_from(["ipc", "rpc", "", "tcp"]),
}
_KINDS = sorted(REQUESTS)


@st.composite
def messages(draw: st.DrawFn) -> dict[Any, Any]:
    """A request: usually a known kind with plausible fields, some missing or of a wrong type."""
    roll = draw(st.integers(0, 19))
    kind = draw(st.sampled_from(_KINDS) if roll > 2 else st.text(max_size=12) if roll else values)
    message: dict[Any, Any] = {"type": kind}
    spec = REQUESTS.get(kind, {}) if isinstance(kind, str) else {}
    for field in spec:
        roll = draw(st.integers(0, 9))
        if roll == 0:
            continue  # missing
        if roll == 1:
            message[field] = draw(values)  # anything at all
        else:
            message[field] = draw(_FIELDS.get(field, st.booleans()))
    message.update(draw(st.dictionaries(st.text(max_size=6), values, max_size=2)))
    if draw(st.integers(0, 49)) == 0:
        del message["type"]
    return message


def _frame(body: bytes) -> bytes:
    return HEADER.pack(len(body)) + body


def _pack(message: Any) -> bytes:
    return _frame(msgpack.packb(message, use_bin_type=True))


@st.composite
def _flipped(draw: st.DrawFn) -> bytes:
    data = bytearray(_pack(draw(messages())))
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(data) - 1))
        data[i] = draw(st.integers(0, 255))
    return bytes(data)


_broken_frames = st.one_of(
    _flipped(),
    st.binary(max_size=256),
    st.tuples(st.integers(0, (1 << 64) - 1), st.binary(max_size=64)).map(lambda t: HEADER.pack(t[0]) + t[1]),
    st.integers(1, 400).map(lambda d: _frame(b"\x91" * d + b"\xc0")),  # nested arrays
    st.integers(1, 400).map(lambda d: _frame(b"\x81\xa1k" * d + b"\xc0")),  # nested maps
    values.map(_pack),  # a body that is not a request map
    st.sampled_from([_frame(b""), _frame(b"\xc1"), _frame(b"\xd6\xff\x00\x00\x00\x01"), b"\x00" * 8]),
)


@st.composite
def frames(draw: st.DrawFn) -> bytes:
    """Mostly well-framed requests (which reach the handlers), sometimes broken frames."""
    roll = draw(st.integers(0, 19))
    if roll < 15:
        return _pack(draw(messages()))
    if roll == 15:
        return _pack({"type": "create_data", "tree": _nested_tree(draw(st.integers(1, 120)))})
    return draw(_broken_frames)


REGISTER = encode({"type": "register", "store_type": "ipc"})


def _nested_tree(depth: int) -> dict[str, Any]:
    tree: dict[str, Any] = {"typename": "leaf"}
    for _ in range(depth):
        tree = {"typename": "t", "m": tree}
    return tree


@st.composite
def payloads(draw: st.DrawFn) -> bytes:
    """What one hostile connection sends, in full."""
    parts = [REGISTER] if draw(st.integers(0, 9)) else []
    parts += draw(st.lists(frames(), min_size=1, max_size=6))
    data = b"".join(parts)
    if draw(st.integers(0, 9)) == 0:
        data = data[: draw(st.integers(0, len(data)))]  # cut anywhere
    return data


# -- the decoder --------------------------------------------------------------------------


def _decode_all(data: bytes, cuts: list[int]) -> list[str]:
    """Feed ``data`` in pieces ending at ``cuts``; what came out (``repr``s), up to an error."""
    decoder = FrameDecoder()
    out: list[str] = []
    start = 0
    for end in [*cuts, len(data)]:
        end = max(start, min(end, len(data)))
        decoder.feed(data[start:end])
        start = end
        while True:
            try:
                message = decoder.next_message()
            except RemoteProtocolError:
                out.append("<error>")
                return out
            if message is NEED_DATA:
                break
            assert isinstance(message, dict), type(message)
            out.append(repr(message))
            try:
                kind, fields = validate_request(message)
            except RemoteProtocolError:
                continue
            assert kind in REQUESTS
            if "tree" in fields:
                try:
                    check_tree(fields["tree"])
                except RemoteProtocolError:
                    pass
    return out


def check_decoder(data: bytes, cuts: list[int]) -> None:
    """Whole, in the given pieces, or byte by byte: the same messages, then the same error."""
    whole = _decode_all(data, [])
    assert _decode_all(data, sorted(cuts)) == whole
    if len(data) <= 256:
        assert _decode_all(data, list(range(len(data)))) == whole


# -- a daemon in this process -------------------------------------------------------------


class _Errors(logging.Handler):
    """Collects the daemon's error log records: each one is an internal error."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(self.format(record))


class InProcessDaemon:
    """A :class:`~vineyard.store.server.Server` pumped by hand over socket pairs."""

    def __init__(self, size: int = 64 << 20) -> None:
        from vineyard.store.server import Server, ServerConfig

        self.server = Server(ServerConfig(socket="(in-process fuzz target)", size=size, reuse_cache=4 << 20))
        self.errors = _Errors()
        logging.getLogger("vineyard.store").addHandler(self.errors)
        self._next = 1_000_000

    def close(self) -> None:
        logging.getLogger("vineyard.store").removeHandler(self.errors)
        self.server._shutdown()

    def connect(self) -> tuple[Any, socket.socket]:
        from vineyard.store.server import Connection

        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        theirs.setblocking(False)
        self._next += 1
        conn = Connection(self._next, ours, "ipc", "fuzz")
        self.server.conns[conn.id] = conn
        self.server.selector.register(ours, selectors.EVENT_READ, ("conn", conn))
        return conn, theirs

    def pump(self) -> None:
        """One round of the daemon's loop; an exception escaping a connection is a bug."""
        server = self.server
        for key, events in server.selector.select(0):
            conn = key.data[1]
            if events & selectors.EVENT_WRITE:
                server._flush(conn)
            if events & selectors.EVENT_READ and conn.id in server.conns:
                server._on_readable(conn)
        server._run_timers()

    def exchange(self, sock: socket.socket, data: bytes, conn: Any, hang_up: bool) -> list[dict[str, Any]]:
        """Send ``data``, pump, collect the replies; with ``hang_up`` until the daemon closes."""
        decoder = FrameDecoder(max_frame=1 << 40)
        replies: list[dict[str, Any]] = []
        view = memoryview(data)
        shut = False
        for _ in range(20_000):
            if view:
                try:
                    view = view[sock.send(view):]
                except BlockingIOError:
                    pass
                except OSError:
                    view = view[len(view):]  # the daemon hung up on us
            if not view and hang_up and not shut:
                shut = True
                try:
                    sock.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
            self.pump()
            try:
                chunk = sock.recv(1 << 20)
            except BlockingIOError:
                chunk = None
            except OSError:
                chunk = b""
            if chunk:
                decoder.feed(chunk)
                _collect(decoder, replies)
            if not view and hang_up and conn.id not in self.server.conns:
                return replies
            if not view and not hang_up and replies:
                return replies
        raise AssertionError("the connection neither ended nor answered: the daemon hangs on it")

    def call(self, conn: Any, sock: socket.socket, message: dict[str, Any]) -> dict[str, Any]:
        replies = self.exchange(sock, encode(message), conn, hang_up=False)
        assert len(replies) == 1, replies
        return replies[0]

    def seed(self) -> tuple[Any, socket.socket]:
        """A bystander connection holding a named object and a blob of its own."""
        conn, sock = self.connect()
        assert self.call(conn, sock, {"type": "register", "store_type": "ipc"})["code"] == 0
        reply = self.call(conn, sock, {"type": "create_buffers", "sizes": [100, 2 << 20, 0]})
        assert reply["code"] == 0, reply
        small, big, _ = (loc[0] for loc in reply["blobs"])
        tree = {"typename": "vineyard::Tuple", "a_": {"id": small}, "b_": {"id": big},
                "c_": {"typename": "x", "value_": 1.5}}
        reply = self.call(conn, sock, {"type": "create_data", "tree": tree, "persist": True, "name": "seeded"})
        assert reply["code"] == 0, reply
        POOL[:] = [*_CONSTANT_IDS, small, big, *(c[0] for c in reply["created"])]
        return conn, sock

    def check_example(self, data: bytes) -> None:
        server = self.server
        bystander, bsock = self.seed()
        conn, sock = self.connect()
        try:
            replies = self.exchange(sock, data, conn, hang_up=True)
        finally:
            sock.close()
        _check_replies(replies)
        assert conn.id not in server.store.held, "a closed connection still holds blobs"
        assert all(conn is not w[0] for ws in server._name_waiters.values() for w in ws)
        # the bystander is still served
        assert self.call(bystander, bsock, {"type": "ping"}) == {"code": 0}
        reply = self.call(bystander, bsock, {"type": "create_buffers", "sizes": [10]})
        assert reply["code"] == 0, reply
        assert self.call(bystander, bsock, {"type": "seal", "ids": [reply["blobs"][0][0]]})["code"] == 0
        bsock.close()
        for _ in range(100):
            self.pump()
            if bystander.id not in server.conns:
                break
        assert not server.conns, f"connections outlived their sockets: {[vars_of(c) for c in server.conns.values()]}"
        server._clear(None, {})  # type: ignore[arg-type]
        assert server.allocator.used == 0, f"{server.allocator.used} bytes allocated with nothing stored"
        assert (len(server.store.objects), len(server.store.blobs), server.store.names) == (0, 1, {})
        assert not self.errors.records, self.errors.records


def vars_of(conn: Any) -> dict[str, Any]:
    return {k: getattr(conn, k) for k in conn.__slots__ if k not in ("decoder", "sock")}


def _collect(decoder: FrameDecoder, replies: list[dict[str, Any]]) -> None:
    while True:
        try:
            message = decoder.next_message()
        except RemoteProtocolError:
            return  # raw blob bytes after a reply (get_remote_buffers): not frames
        if message is NEED_DATA:
            return
        assert isinstance(message, dict)
        replies.append(message)


def _check_replies(replies: list[dict[str, Any]]) -> None:
    for reply in replies:
        code = reply.get("code")
        assert type(code) is int, reply
        if code:
            assert isinstance(reply.get("message"), str), reply
            assert reply["message"], reply
            assert "internal error" not in reply["message"], reply["message"]
            assert code != 255, reply


# -- a live daemon ------------------------------------------------------------------------


class LiveDaemon:
    """A real daemon process, a bystander client, and hostile raw connections."""

    def __init__(self, size: str = "64Mi") -> None:
        from vineyard.testing import Daemon

        self.daemon = Daemon(size=size, rpc=True)
        self.bystander = vineyard.connect(self.daemon.socket)
        self._seed()

    def _seed(self) -> None:
        c = self.bystander
        self.array = c.get(c.put(np.arange(1000), persist=True, name="seeded"))
        self.blob = c.create_blob(1 << 20)
        self.blob[:] = 9
        self.sealed = self.blob.seal(c)
        POOL[:] = [*_CONSTANT_IDS, int(self.sealed.id), *(int(i) for i in c.list_names("*", limit=10).values())]

    def close(self) -> None:
        self.bystander.close()
        self.daemon.stop()

    def check_example(self, data: bytes) -> None:
        replies: list[dict[str, Any]] = []
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(20)
            sock.connect(self.daemon.socket)
            try:
                sock.sendall(data)
                sock.shutdown(socket.SHUT_WR)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the daemon dropped us early: allowed
            decoder = FrameDecoder(max_frame=1 << 40)
            total = 0
            while total < (256 << 20):
                try:
                    chunk = sock.recv(1 << 20)
                except ConnectionResetError:
                    break
                except TimeoutError:
                    raise AssertionError("the daemon neither answered nor hung up within 20 s") from None
                if not chunk:
                    break
                total += len(chunk)
                decoder.feed(chunk)
                _collect(decoder, replies)
        _check_replies(replies)
        assert self.daemon.proc.poll() is None, f"the daemon died: {self.daemon.log[-3000:]}"
        # the bystander is served: a round trip, and what it holds is intact
        c = self.bystander
        object_id = c.put(np.arange(100))
        assert int(c.get(object_id).sum()) == 4950
        c.delete(object_id)
        assert int(self.array.sum()) == 499500
        assert int(np.asarray(self.sealed)[-1]) == 9
        assert c.status.memory_usage <= c.status.memory_limit
        if not c.list_names("seeded"):  # the fuzz may delete or clear: seed again
            self._seed()

    def check_end(self) -> None:
        """After the run: no internal error logged; with everything deleted, no memory used."""
        log = self.daemon.log
        assert "Traceback" not in log, log[-3000:]
        assert "internal error" not in log, log[-3000:]
        c = self.bystander
        self.array = self.blob = self.sealed = None  # type: ignore[assignment]
        c.clear()
        deadline = time.monotonic() + 30
        while c.status.memory_usage and time.monotonic() < deadline:
            time.sleep(0.05)
        assert c.status.memory_usage == 0, c.status


# -- running ------------------------------------------------------------------------------

_HEALTH = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]


def run_target(target: str, runs: int, seed_value: int | None = None, database: Any = None) -> None:
    """Run one target for ``runs`` examples; raises on the first failure (shrunk)."""
    config = settings(max_examples=runs, deadline=None, suppress_health_check=_HEALTH, database=database,
                      print_blob=True)
    test: Callable[[], None]
    if target == "decoder":

        @config
        @given(data=st.one_of(payloads(), st.binary(max_size=512)), cuts=st.lists(st.integers(0, 2048), max_size=8))
        def test_decoder(data: bytes, cuts: list[int]) -> None:
            check_decoder(data, cuts)

        test = test_decoder
        fixture: Any = None
    elif target == "handler":
        fixture = None

        @config
        @given(data=payloads())
        def test_handler(data: bytes) -> None:
            daemon = InProcessDaemon()  # a fresh one: examples must not depend on each other
            try:
                daemon.check_example(data)
            finally:
                daemon.close()

        test = test_handler
    elif target == "live":
        fixture = LiveDaemon()

        @config
        @given(data=payloads())
        def test_live(data: bytes) -> None:
            fixture.check_example(data)

        test = test_live
    else:
        raise ValueError(f"unknown target {target!r}")
    if seed_value is not None:
        test = seed(seed_value)(test)
    try:
        test()
        if target == "live":
            fixture.check_end()
    finally:
        if fixture is not None:
            fixture.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.fuzz.fuzz_protocol", description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=1000, help="examples per target (default 1000)")
    p.add_argument("--target", choices=["decoder", "handler", "live", "all"], default="all")
    p.add_argument("--seed", type=int, default=None, help="Hypothesis seed, for a reproducible run")
    args = p.parse_args(argv)
    targets = ["decoder", "handler", "live"] if args.target == "all" else [args.target]
    for target in targets:
        started = time.monotonic()
        print(f"fuzz {target}: {args.runs} examples ...", flush=True)
        run_target(target, args.runs, args.seed)
        print(f"fuzz {target}: passed in {time.monotonic() - started:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
