"""Ray tasks passing VineyardRefs: zero-copy consumers, interop with non-Ray processes,
the decorators, and the errors a task raises when the store or the object is gone."""

from __future__ import annotations

import pickle
import sys
from typing import Any

import pytest

ray = pytest.importorskip("ray")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

import vineyard  # noqa: E402
import vineyard.contrib.ray as vray  # noqa: E402
from vineyard.testing import Daemon, address_in_store, rss_anon, store_mappings  # noqa: E402

MB = 1 << 20
# pickle.find_class events that mean a payload was unpickled (ENGINES.md §1).
PAYLOAD_CLASSES = {
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy.core.numeric", "_frombuffer"),
    ("pandas._libs.internals", "_unpickle_block"),
    ("pandas.core.internals.managers", "BlockManager"),
}
_events: list[tuple[str, str]] = []
_state = {"hooked": False, "on": False}


def _audit(event: str, args: tuple[Any, ...], state: dict[str, bool] = _state, events: list[Any] = _events) -> None:
    # bound as defaults: the hook outlives this module's globals at interpreter exit
    if event == "pickle.find_class" and state["on"]:
        events.append((str(args[0]), str(args[1])))


def start_auditing() -> None:
    """Record find_class events in this process until :func:`payload_events` (an audit hook
    cannot be removed, so it stays installed but idle)."""
    if not _state["hooked"]:
        sys.addaudithook(_audit)
        _state["hooked"] = True
    _events.clear()
    _state["on"] = True


def payload_events() -> list[tuple[str, str]]:
    """The payload-unpickling events since :func:`start_auditing`; stops recording."""
    _state["on"] = False
    return sorted(set(_events) & PAYLOAD_CLASSES)


def plasma_ranges() -> list[tuple[int, int]]:
    out = []
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split(maxsplit=5)
            if len(parts) == 6 and "plasma" in parts[5]:
                start, end = (int(x, 16) for x in parts[0].split("-"))
                out.append((start, end))
    return out


def inspect_frame(df: pd.DataFrame) -> dict[str, Any]:
    """What a consumer observes about a DataFrame it was handed (runs in the consumer)."""
    mappings = store_mappings()
    plasma = plasma_ranges()
    columns = [df[c].to_numpy() for c in df.columns]
    addresses = [c.__array_interface__["data"][0] for c in columns]
    return {
        "in_store": [address_in_store(a, mappings) for a in addresses],
        "in_plasma": [any(s <= a < e for s, e in plasma) for a in addresses],
        "writeable": [c.flags.writeable for c in columns],
        "sums": [float(c.sum()) for c in columns],  # touches every page
    }


def big_frame(nbytes: int) -> pd.DataFrame:
    rows = nbytes // 16
    return pd.DataFrame({"x": np.arange(rows, dtype="float64"), "y": np.full(rows, 0.5)})


@ray.remote
@vray.resolve_args
@vray.store_returns
def produce(nbytes: int) -> pd.DataFrame:
    return big_frame(nbytes)


@ray.remote
def consume(ref: vray.VineyardRef) -> dict[str, Any]:
    start_auditing()
    before = rss_anon()
    df = ref.get()
    facts = inspect_frame(df)
    facts["rss_growth"] = rss_anon() - before
    facts["payload_events"] = payload_events()
    facts["type"] = type(df).__name__
    return facts


def pandas_is_native(client: vineyard.Client) -> bool:
    """Whether DataFrames are stored as columns yet (not through the pickle fallback)."""
    object_id = client.put(pd.DataFrame({"a": [1]}))
    try:
        return client.get_meta(object_id).typename != "vineyard::PickleBuffer"
    finally:
        client.delete(object_id)


@pytest.fixture(scope="module")
def transfer(ray_cluster: Any, store: Daemon) -> Any:
    """One 100 MB DataFrame from a producer task to a consumer task, through a ref."""
    ref = ray.get(produce.remote(100 * MB))
    try:
        facts = ray.get(consume.remote(ref))
        size = len(pickle.dumps(ref))
    finally:
        ref.delete()
    return ref, facts, size


def test_producer_returns_a_small_ref(transfer: Any) -> None:
    ref, facts, size = transfer
    assert isinstance(ref, vray.VineyardRef)
    assert size < 256
    assert facts["type"] == "DataFrame"
    assert facts["sums"][1] == 0.5 * (100 * MB // 16)


def test_consumer_buffers_lie_in_the_store_not_in_plasma(transfer: Any) -> None:
    _, facts, _ = transfer
    assert all(facts["in_store"]), facts
    assert not any(facts["in_plasma"]), facts
    assert not any(facts["writeable"]), facts


def test_consumer_private_memory_does_not_grow_by_the_payload(transfer: Any) -> None:
    _, facts, _ = transfer
    assert facts["rss_growth"] < 20 * MB, facts["rss_growth"]


def assert_no_payload_unpickled(facts: dict[str, Any], client: vineyard.Client) -> None:
    if facts["payload_events"] and not pandas_is_native(client):
        pytest.xfail("DataFrames still go through the pickle fallback (vineyard.data.pandas)")
    assert facts["payload_events"] == []


def test_consumer_unpickles_no_payload(transfer: Any, client: vineyard.Client) -> None:
    assert_no_payload_unpickled(transfer[1], client)


@ray.remote
def consume_by_id(object_id: int) -> dict[str, Any]:
    start_auditing()
    facts = inspect_frame(vray.get(object_id))  # the worker's VINEYARD_IPC_SOCKET store
    facts["payload_events"] = payload_events()
    return facts


@ray.remote
def put_from_task(n: int) -> vray.VineyardRef:
    return vray.put(big_frame(n))


def test_frame_put_by_a_plain_process_is_read_zero_copy_by_a_task(ray_cluster: Any, no_leaks: vineyard.Client) -> None:
    client = no_leaks
    df = big_frame(8 * MB)
    object_id = client.put(df)  # this test process is no Ray worker: a plain client
    try:
        facts = ray.get(consume_by_id.remote(int(object_id)))
    finally:
        client.delete(object_id)
    assert all(facts["in_store"]), facts
    assert not any(facts["in_plasma"]), facts
    assert facts["sums"] == [float(df["x"].sum()), float(df["y"].sum())]
    assert_no_payload_unpickled(facts, client)


def test_frame_put_by_a_task_is_read_zero_copy_by_a_plain_process(ray_cluster: Any, no_leaks: vineyard.Client) -> None:
    ref = ray.get(put_from_task.remote(8 * MB))
    with ref:
        start_auditing()
        got = no_leaks.get(ref.object_id)  # a plain client, no adapter
        facts = inspect_frame(got)
        facts["payload_events"] = payload_events()
        del got
    assert all(facts["in_store"]), facts
    assert not any(facts["writeable"]), facts
    assert facts["sums"][1] == 0.5 * (8 * MB // 16)
    assert_no_payload_unpickled(facts, no_leaks)


@ray.remote
@vray.resolve_args
def describe(*args: Any, **kwargs: Any) -> list[str]:
    def kind(v: Any) -> str:
        if isinstance(v, (list, tuple)):
            return "[" + ",".join(kind(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{" + ",".join(f"{k}:{kind(x)}" for k, x in v.items()) + "}"
        return type(v).__name__
    return [kind(a) for a in args] + [f"{k}={kind(v)}" for k, v in kwargs.items()]


def test_resolve_args_resolves_refs_in_arguments_and_containers(ray_cluster: Any, no_leaks: vineyard.Client) -> None:
    with vray.put(np.arange(4)) as a, vray.put(pd.DataFrame({"c": [1]})) as b:
        kinds = ray.get(describe.remote(a, [a, 3], {"k": b}, key=b))
    assert kinds == ["ndarray", "[ndarray,int]", "{k:DataFrame}", "key=DataFrame"]


@ray.remote(num_returns=2)
@vray.store_returns(threshold=1000)
def two_results(n: int) -> tuple[Any, Any]:
    return np.zeros(n), "small"


def test_store_returns_stores_only_large_columnar_results(ray_cluster: Any, no_leaks: vineyard.Client) -> None:
    big, small = ray.get(list(two_results.remote(1000)))
    try:
        assert isinstance(big, vray.VineyardRef)
        assert small == "small"
        assert big.get().shape == (1000,)
    finally:
        big.delete()
    tiny, _ = ray.get(list(two_results.remote(10)))
    assert isinstance(tiny, np.ndarray)


@ray.remote
@vray.store_returns(threshold=0, socket="/nonexistent/vineyard.sock", fallback="ray")
def with_fallback() -> np.ndarray:
    return np.ones(10)


@ray.remote
@vray.store_returns(threshold=0, socket="/nonexistent/vineyard.sock")
def without_fallback() -> np.ndarray:
    return np.ones(10)


def test_store_down_fails_the_task_naming_the_socket_unless_falling_back(ray_cluster: Any) -> None:
    assert ray.get(with_fallback.remote()).sum() == 10
    with pytest.raises(ray.exceptions.RayTaskError) as info:
        ray.get(without_fallback.remote())
    assert isinstance(info.value.cause, vineyard.StoreUnavailable)
    assert "/nonexistent/vineyard.sock" in str(info.value.cause)


@ray.remote
def read(ref: vray.VineyardRef) -> float:
    return float(ref.get().sum())


def test_stopped_store_fails_the_consumer_naming_the_socket(ray_cluster: Any) -> None:
    daemon = Daemon(size="64Mi")
    try:
        ref = vray.put(np.arange(10), socket=daemon.socket)
        assert ray.get(read.remote(ref)) == 45
    finally:
        daemon.stop()
    with pytest.raises(ray.exceptions.RayTaskError) as info:
        ray.get(read.remote(ref))
    assert isinstance(info.value.cause, vineyard.StoreUnavailable)
    assert daemon.socket in str(info.value.cause)


def test_deleted_object_fails_the_consumer_naming_the_object(ray_cluster: Any) -> None:
    ref = vray.put(np.arange(10))
    ref.delete()
    with pytest.raises(ray.exceptions.RayTaskError) as info:
        ray.get(read.remote(ref))
    assert isinstance(info.value.cause, vineyard.ObjectNotExistsException)
    assert repr(ref.object_id) in str(info.value.cause)
