"""Bad arguments at the Python API raise a clear TypeError, ValueError or vineyard exception
before anything is sent to the daemon (the daemon's state is untouched, too)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

import vineyard
from vineyard.testing import Daemon

NAN = float("nan")


def _deep(depth: int) -> vineyard.ObjectMeta:
    meta = vineyard.ObjectMeta()
    meta["typename"] = "leaf"
    for _ in range(depth):
        parent = vineyard.ObjectMeta()
        parent["typename"] = "node"
        parent.add_member("m", meta)
        meta = parent
    return meta


def _nested(depth: int) -> list:
    value: list = [np.arange(3)]
    for _ in range(depth):
        value = [value]
    return value

# (what, call, exception): each call must raise before a single request goes out
CASES: list[tuple[str, Callable[[Any], Any], type[BaseException]]] = [
    ("put-name-int", lambda c: c.put(np.arange(3), persist=True, name=123), TypeError),
    ("put-name-bytes", lambda c: c.put(np.arange(3), persist=True, name=b"n"), TypeError),
    ("put-name-int-unpersisted", lambda c: c.put(np.arange(3), name=123), TypeError),
    ("get-float", lambda c: c.get(1.5), TypeError),
    ("get-bool", lambda c: c.get(True), TypeError),
    ("get-bad-text", lambda c: c.get("not-an-id"), ValueError),
    ("get-negative", lambda c: c.get(-1), ValueError),
    ("get-overflow", lambda c: c.get(1 << 64), ValueError),
    ("get-nothing", lambda c: c.get(), ValueError),
    ("get-meta-none", lambda c: c.get_meta(None), TypeError),
    ("get-metas-mixed", lambda c: c.get_metas([1, 2.5]), TypeError),
    ("get-blob-float", lambda c: c.get_blob(2.5), TypeError),
    ("delete-text", lambda c: c.delete("not-an-id"), ValueError),
    ("delete-none", lambda c: c.delete(None), TypeError),
    ("delete-partly-bad", lambda c: c.delete([1, "nope"]), ValueError),
    ("delete-negative", lambda c: c.delete(-5), ValueError),
    ("get-name-int", lambda c: c.get_name(123), TypeError),
    ("get-name-none", lambda c: c.get_name(None), TypeError),
    ("get-name-timeout-text", lambda c: c.get_name("n", wait=True, timeout="1"), TypeError),
    ("get-name-timeout-nan", lambda c: c.get_name("n", wait=True, timeout=NAN), ValueError),
    ("put-name-name-int", lambda c: c.put_name(1, 5), TypeError),
    ("put-name-bad-id", lambda c: c.put_name("zz", "n"), ValueError),
    ("drop-name-int", lambda c: c.drop_name(1), TypeError),
    ("persist-float", lambda c: c.persist(2.0), TypeError),
    ("exists-list", lambda c: c.exists([1]), TypeError),
    ("label-bad-id", lambda c: c.label("zz", "k", "v"), ValueError),
    ("shallow-copy-float", lambda c: c.shallow_copy(1.5), TypeError),
    ("ref-counts-text", lambda c: c.ref_counts("zz"), ValueError),
    ("delete-by-labels-none", lambda c: c.delete_by_labels(None), TypeError),
    ("delete-by-labels-older-text", lambda c: c.delete_by_labels({"a": "b"}, older_than="x"), TypeError),
    ("create-metadata-not-meta", lambda c: c.create_metadata({"typename": "x"}), TypeError),
    ("create-metadata-no-typename", lambda c: c.create_metadata(vineyard.ObjectMeta()), vineyard.VineyardException),
    # deeper than the daemon takes: refused here, rather than losing the connection there
    ("create-metadata-too-deep", lambda c: c.create_metadata(_deep(80)), vineyard.MetaTreeInvalidException),
    ("put-too-deep", lambda c: c.put(_nested(100)), vineyard.MetaTreeInvalidException),
]

IPC_ONLY: list[tuple[str, Callable[[Any], Any], type[BaseException]]] = [
    ("create-blob-negative", lambda c: c.create_blob(-1), ValueError),
    ("create-blob-float", lambda c: c.create_blob(1.5), ValueError),
    ("create-blob-text", lambda c: c.create_blob("10"), ValueError),
    ("create-blob-huge", lambda c: c.create_blob(1 << 70), ValueError),
    ("create-blob-partly-bad", lambda c: c.create_blob([10, -1]), ValueError),
    ("get-blob-not-a-blob", lambda c: c.get_blob(5), vineyard.InvalidException),
]


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    d = Daemon(size="64Mi", rpc=True)
    yield d
    d.stop()


@pytest.fixture(params=["ipc", "rpc"])
def spied(request: pytest.FixtureRequest, daemon: Daemon) -> Iterator[tuple[vineyard.Client, list[Any]]]:
    """A client whose every request is recorded (and still sent)."""
    if request.param == "ipc":
        client = vineyard.connect(daemon.socket)
    else:
        assert daemon.rpc_endpoint is not None
        host, port = daemon.rpc_endpoint.rsplit(":", 1)
        client = vineyard.connect(host, int(port))
    sent: list[Any] = []
    transport = client._t
    for method in ("request", "send_oneway", "request_download"):
        original = getattr(transport, method, None)
        if original is None:
            continue

        def spy(message: dict, *args: Any, _original: Any = original, **kw: Any) -> Any:
            sent.append(message)
            return _original(message, *args, **kw)

        setattr(transport, method, spy)
    yield client, sent
    client.close()


def _state(daemon: Daemon) -> tuple[int, int, int, int]:
    with vineyard.connect(daemon.socket) as c:
        s = c.status
        return s.memory_usage, s.objects, s.blobs, s.names


@pytest.mark.parametrize(("what", "call", "exc"), CASES, ids=[c[0] for c in CASES])
def test_bad_arguments_fail_before_anything_is_sent(daemon, spied, what: str, call: Any, exc: type) -> None:
    client, sent = spied
    before = _state(daemon)
    with pytest.raises(exc) as info:
        call(client)
    assert str(info.value), "the error says nothing"
    assert not isinstance(info.value, vineyard.ProtocolError), "the daemon, not the client, found the problem"
    assert sent == [], f"{what}: sent {sent}"
    assert _state(daemon) == before
    # and the client still works
    assert client.get(client.put(np.arange(4))).sum() == 6


@pytest.mark.parametrize(("what", "call", "exc"), IPC_ONLY, ids=[c[0] for c in IPC_ONLY])
def test_bad_blob_arguments_fail_before_anything_is_sent(daemon, what: str, call: Any, exc: type) -> None:
    with vineyard.connect(daemon.socket) as client:
        before = _state(daemon)
        sent: list[Any] = []
        original = client._t.request
        client._t.request = lambda m, *a, **k: (sent.append(m), original(m, *a, **k))[1]  # type: ignore[method-assign]
        with pytest.raises(exc):
            call(client)
        assert sent == []
        assert _state(daemon) == before


def test_infinite_and_very_long_timeouts_mean_no_timeout(daemon) -> None:
    """They are not errors; what goes out is a wait without a timeout."""
    with vineyard.connect(daemon.socket) as client:
        object_id = client.put(np.arange(3), persist=True, name="there")
        for timeout in (float("inf"), 1e300, 10.0**12):
            assert client.get_name("there", wait=True, timeout=timeout) == object_id
        client.delete(object_id)
