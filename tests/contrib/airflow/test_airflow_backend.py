"""VineyardXCom's three methods called directly (no DAG run), references, options, provider."""

from __future__ import annotations

import importlib
import json
import logging
import subprocess
import sys
import time
from collections.abc import Iterator
from types import ModuleType, SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from vineyard.contrib.airflow import refs
from vineyard.contrib.airflow.refs import LITERAL_PREFIX, StoreRef
from vineyard.ids import ObjectID
from vineyard.testing import Daemon

TI = {"dag_id": "d", "run_id": "r1", "task_id": "t", "map_index": -1}


@pytest.fixture
def xcom(airflow_site: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """The backend module, with a clean store, default options and fresh per-process state."""
    module = importlib.import_module("vineyard.contrib.airflow.xcom")
    airflow_site.client.clear()
    monkeypatch.setattr(module, "_PUSHED", module._Pushed())
    monkeypatch.setattr(module, "_warned_inline", False)
    store = importlib.import_module("vineyard.contrib.airflow.store")
    monkeypatch.setattr(store, "_CLIENTS", {})
    yield module
    for _, client in store._CLIENTS.values():
        client.close()


def push(xcom: ModuleType, value: Any, key: str = "return_value", **ti: Any) -> Any:
    return xcom.VineyardXCom.serialize_value(value, key=key, **{**TI, **ti})


def pull(xcom: ModuleType, row: Any, key: str = "return_value") -> Any:
    return xcom.VineyardXCom.deserialize_value(SimpleNamespace(key=key, value=row))


def big_frame(rows: int = 200_000) -> pd.DataFrame:
    return pd.DataFrame({"x": np.arange(rows, dtype=np.int64), "y": np.linspace(0, 1, rows)})


# -- references ----------------------------------------------------------------------------


def test_reference_round_trips_and_stays_short() -> None:
    ref = StoreRef("h" * 64, 1023, ObjectID(0xFFFFFFFFFFFFFFFF))
    text = str(ref)
    assert StoreRef.parse(text) == ref
    assert len(json.dumps(text)) < 128
    assert StoreRef.parse(text + "x") is None
    assert StoreRef.parse(text.replace("vineyard://", "vineyard:/")) is None
    assert StoreRef.parse(42) is None


@pytest.mark.parametrize(
    "value",
    ["vineyard://elsewhere/0/o00000000000000ff", LITERAL_PREFIX, LITERAL_PREFIX + "x", "plain", "vineyard://o1", 3],
)
def test_escape_is_undone_and_never_reads_as_a_reference(value: Any) -> None:
    escaped = refs.escape(value)
    assert StoreRef.parse(escaped) is None
    assert refs.unescape(escaped) == value


def test_local_host_fits_a_reference() -> None:
    host = refs.local_host()
    assert 0 < len(host) <= 64
    assert "/" not in host
    assert StoreRef.parse(str(StoreRef(host, 0, ObjectID(1)))) is not None


# -- push and pull ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        big_frame(),
        big_frame()["y"],
        np.arange(300_000, dtype=np.float64).reshape(1000, 300),
        pa.table({"x": np.arange(300_000)}),
        pa.record_batch({"x": np.arange(300_000)}),
    ],
    ids=["DataFrame", "Series", "ndarray", "Table", "RecordBatch"],
)
def test_large_values_go_to_the_store_and_come_back(xcom: ModuleType, airflow_site: Any, value: Any) -> None:
    row = push(xcom, value)
    ref = StoreRef.parse(row)
    assert ref is not None, row
    assert ref.host == refs.local_host()
    assert len(json.dumps(row)) < 128
    back = pull(xcom, row)
    if isinstance(value, pd.DataFrame):
        pd.testing.assert_frame_equal(back, value)
    elif isinstance(value, pd.Series):
        pd.testing.assert_series_equal(back, value)
    elif isinstance(value, np.ndarray):
        np.testing.assert_array_equal(back, value)
    else:
        assert back.equals(value)
    (stored,) = airflow_site.xcom_objects()
    assert stored["id"] == ref.object_id
    assert {k: stored["labels"][k] for k in ("dag_id", "run_id", "task_id", "map_index", "key")} == {
        "dag_id": "d", "run_id": "r1", "task_id": "t", "map_index": "-1", "key": "return_value",
    }


@pytest.mark.parametrize(
    "value",
    [
        42, "text", None, {"a": [1, 2]}, (1, 2), pd.DataFrame({"x": [1, 2]}),
    ],
    ids=["int", "str", "None", "dict", "tuple", "small-frame"],
)
def test_other_values_use_airflows_serialization_unchanged(xcom: ModuleType, airflow_site: Any, value: Any) -> None:
    from airflow.sdk.bases.xcom import BaseXCom

    row = push(xcom, value)
    assert json.dumps(row) == json.dumps(BaseXCom.serialize_value(value))
    assert airflow_site.xcom_objects() == []
    back = pull(xcom, row)
    if isinstance(value, pd.DataFrame):
        pd.testing.assert_frame_equal(back, value)
    else:
        assert back == value


@pytest.mark.parametrize(
    "value", [np.arange(10), pd.Series([1.5, 2.5]), pa.table({"x": [1]})], ids=["ndarray", "Series", "Table"]
)
def test_small_values_airflow_cannot_serialize_go_to_the_store(xcom: ModuleType, airflow_site: Any, value: Any) -> None:
    from airflow.sdk.bases.xcom import BaseXCom

    with pytest.raises(TypeError):
        BaseXCom.serialize_value(value)  # what the default backend does: the task fails
    row = push(xcom, value)
    assert StoreRef.parse(row) is not None
    back = pull(xcom, row)
    assert (back == value).all() if not isinstance(value, pa.Table) else back.equals(value)


def test_object_arrays_stay_with_airflow(xcom: ModuleType, airflow_site: Any) -> None:
    # The store would pickle them, bypassing Airflow's list of classes allowed to deserialize.
    with pytest.raises(TypeError, match="Cannot serialize"):
        push(xcom, np.array(["a", None], dtype=object).repeat(200_000))
    assert airflow_site.xcom_objects() == []


def test_threshold_option(xcom: ModuleType, airflow_site: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    small = pd.DataFrame({"x": [1, 2]})
    assert StoreRef.parse(push(xcom, small)) is None
    monkeypatch.setenv("AIRFLOW__VINEYARD__THRESHOLD_BYTES", "0")
    assert StoreRef.parse(push(xcom, small)) is not None
    monkeypatch.setenv("AIRFLOW__VINEYARD__THRESHOLD_BYTES", "-1")
    assert StoreRef.parse(push(xcom, big_frame(), key="k2")) is None
    assert len(airflow_site.xcom_objects()) == 1


def test_lookalike_strings_are_not_taken_for_references(xcom: ModuleType) -> None:
    fake = "vineyard://elsewhere/0/o00000000000000ff"
    for value in (fake, {"a": fake, "b": LITERAL_PREFIX + "x"}, [fake, 1]):
        assert pull(xcom, push(xcom, value)) == value


def test_multiple_outputs_store_each_value_once(xcom: ModuleType, airflow_site: Any) -> None:
    frame, array = big_frame(), np.ones(300_000)
    result = {"frame": frame, "array": array, "n": 3}
    rows = {k: push(xcom, v, key=k) for k, v in result.items()}  # as the task runner pushes them
    rows["return_value"] = push(xcom, result)
    assert rows["return_value"]["frame"] == rows["frame"]
    assert rows["return_value"]["array"] == rows["array"]
    assert rows["return_value"]["n"] == 3
    objects = {o["id"]: o for o in airflow_site.xcom_objects()}
    assert len(objects) == 2
    for key in ("frame", "array"):
        labels = objects[StoreRef.parse(rows[key]).object_id]["labels"]
        assert json.loads(labels[refs.LABEL_KEYS]) == [key, "return_value"]
    whole = pull(xcom, rows["return_value"])
    pd.testing.assert_frame_equal(whole["frame"], frame)
    # Purging one row keeps what the other still points at; the last row frees it.
    xcom.VineyardXCom.purge(SimpleNamespace(key="frame", value=rows["frame"]))
    assert len(airflow_site.xcom_objects()) == 2
    xcom.VineyardXCom.purge(SimpleNamespace(key="return_value", value=rows["return_value"]))
    xcom.VineyardXCom.purge(SimpleNamespace(key="array", value=rows["array"]))
    assert airflow_site.xcom_objects() == []


def test_another_task_instance_does_not_reuse_objects(xcom: ModuleType, airflow_site: Any) -> None:
    frame = big_frame()
    first = push(xcom, frame, task_id="a")
    second = push(xcom, frame, task_id="b")
    assert first != second
    assert len(airflow_site.xcom_objects()) == 2


def test_pushing_a_key_again_in_one_try_frees_the_old_object(xcom: ModuleType, airflow_site: Any) -> None:
    first = push(xcom, big_frame(), key="k")
    second = push(xcom, big_frame(300_000), key="k")
    assert [o["id"] for o in airflow_site.xcom_objects()] == [StoreRef.parse(second).object_id]
    assert not airflow_site.client.exists(StoreRef.parse(first).object_id)


def test_purge_tolerates_missing_objects_and_foreign_rows(xcom: ModuleType, airflow_site: Any) -> None:
    row = push(xcom, big_frame())
    airflow_site.client.clear()
    xcom.VineyardXCom.purge(SimpleNamespace(key="return_value", value=row))
    xcom.VineyardXCom.purge(SimpleNamespace(key="return_value", value=42))
    xcom.VineyardXCom.purge(SimpleNamespace(key="return_value", value="vineyard://elsewhere/0/o00000000000000ff"))


def test_ttl_sweeps_old_objects_on_push(xcom: ModuleType, airflow_site: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    old = StoreRef.parse(push(xcom, big_frame(), key="old"))
    time.sleep(0.05)  # make the first object older than the TTL below
    monkeypatch.setenv("AIRFLOW__VINEYARD__TTL_SECONDS", "0.01")
    new = StoreRef.parse(push(xcom, big_frame(), key="new"))
    assert [o["id"] for o in airflow_site.xcom_objects()] == [new.object_id]
    assert not airflow_site.client.exists(old.object_id)


def test_gc_leaves_young_referenced_and_foreign_objects(xcom: ModuleType, airflow_site: Any) -> None:
    from vineyard.contrib.airflow.cleanup import collect_garbage

    client = airflow_site.client
    keep = StoreRef.parse(push(xcom, big_frame(), key="keep"))
    orphan = StoreRef.parse(push(xcom, big_frame(), key="orphan"))
    unrelated = client.put(np.arange(3))
    assert collect_garbage(client, [keep]) == []  # both are younger than the default grace period
    assert collect_garbage(client, [keep], grace_seconds=0, dry_run=True) == [orphan.object_id]
    assert client.exists(orphan.object_id)
    assert collect_garbage(client, {keep, StoreRef("elsewhere", 0, orphan.object_id)}, grace_seconds=0) == [
        orphan.object_id
    ]
    assert not client.exists(orphan.object_id)
    assert client.exists(keep.object_id)
    assert client.exists(unrelated)


def test_rows_holding_json_text_are_read_for_references() -> None:
    from vineyard.contrib.airflow.cleanup import row_refs

    ref = StoreRef("h", 0, ObjectID(5))
    assert row_refs(str(ref)) == [ref]
    assert row_refs(json.dumps({"a": str(ref), "b": 1})) == [ref]
    assert row_refs([str(ref), refs.escape(str(ref))]) == [ref]
    assert row_refs("not json") == []


# -- failures --------------------------------------------------------------------------------


@pytest.fixture
def dead_socket() -> str:
    """The socket of a daemon that was started and stopped (by its PID)."""
    daemon = Daemon(size="64Mi")
    daemon.stop()
    return daemon.socket


def test_store_down_fails_the_push_naming_socket_and_key(
    xcom: ModuleType, monkeypatch: pytest.MonkeyPatch, dead_socket: str
) -> None:
    from vineyard import StoreUnavailable

    monkeypatch.setenv("AIRFLOW__VINEYARD__IPC_SOCKET", dead_socket)
    with pytest.raises(StoreUnavailable) as caught:
        push(xcom, big_frame(), key="frame")
    text = str(caught.value)
    for part in (dead_socket, "'frame'", "task 't'", "dag 'd'", "run 'r1'"):
        assert part in text


def test_unconfigured_store_fails_the_push(xcom: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    from vineyard.contrib.airflow.errors import XComStoreUnavailable

    monkeypatch.delenv("AIRFLOW__VINEYARD__IPC_SOCKET")
    with pytest.raises(XComStoreUnavailable, match="VINEYARD_IPC_SOCKET"):
        push(xcom, big_frame())
    assert push(xcom, 5) == 5  # values that stay in the database never need the store


def test_inline_falls_back_with_one_warning(
    xcom: ModuleType, monkeypatch: pytest.MonkeyPatch, dead_socket: str, caplog: pytest.LogCaptureFixture
) -> None:
    from airflow.sdk.bases.xcom import BaseXCom

    monkeypatch.setenv("AIRFLOW__VINEYARD__IPC_SOCKET", dead_socket)
    monkeypatch.setenv("AIRFLOW__VINEYARD__ON_UNAVAILABLE", "inline")
    frame = big_frame()
    with caplog.at_level(logging.WARNING, logger=xcom.__name__):
        rows = [push(xcom, frame, key="a"), push(xcom, {"f": frame, "s": "vineyard://x/0/o0000000000000001"})]
    assert rows[0] == BaseXCom.serialize_value(frame)
    assert len(caplog.records) == 1
    assert "inline" in caplog.records[0].message
    pd.testing.assert_frame_equal(pull(xcom, rows[0]), frame)
    assert pull(xcom, rows[1])["s"] == "vineyard://x/0/o0000000000000001"


@pytest.mark.parametrize("mode", ["error", "inline"])
def test_store_full_midway_gives_back_what_was_stored(
    xcom: ModuleType, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    from airflow.sdk.bases.xcom import BaseXCom

    from vineyard.contrib.airflow.errors import XComStoreUnavailable

    frames = [big_frame(2_000_000), big_frame(2_000_000)]  # 32 MB each: the second does not fit
    with Daemon(size="48Mi") as small:
        monkeypatch.setenv("AIRFLOW__VINEYARD__IPC_SOCKET", small.socket)
        monkeypatch.setenv("AIRFLOW__VINEYARD__ON_UNAVAILABLE", mode)
        if mode == "error":
            with pytest.raises(XComStoreUnavailable, match=r"(?i)memory"):
                push(xcom, frames)
        else:
            assert push(xcom, frames) == BaseXCom.serialize_value(frames)
        client = importlib.import_module("vineyard.contrib.airflow.store")._CLIENTS[small.socket][1]
        assert client.list_metadatas(r"(?!vineyard::Blob$).*", regex=True, limit=100) == []


def test_a_failing_item_gives_back_the_items_stored_before(
    xcom: ModuleType, airflow_site: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    real, calls = xcom._store, []

    def flaky_store(value: Any, *args: Any) -> Any:
        calls.append(value)
        if len(calls) == 2:
            raise RuntimeError("a builder failed")
        return real(value, *args)

    monkeypatch.setattr(xcom, "_store", flaky_store)
    with pytest.raises(RuntimeError, match="a builder failed"):
        push(xcom, [big_frame(), big_frame()])
    assert len(calls) == 2
    assert airflow_site.xcom_objects() == []


def test_pull_with_store_down_names_socket_object_and_key(
    xcom: ModuleType, monkeypatch: pytest.MonkeyPatch, dead_socket: str
) -> None:
    from vineyard.contrib.airflow.errors import XComStoreUnavailable

    row = push(xcom, big_frame())
    monkeypatch.setenv("AIRFLOW__VINEYARD__IPC_SOCKET", dead_socket)
    with pytest.raises(XComStoreUnavailable) as caught:
        pull(xcom, row, key="frame")
    assert dead_socket in str(caught.value)
    assert row in str(caught.value)
    assert "'frame'" in str(caught.value)


def test_pull_of_a_deleted_object_names_it(xcom: ModuleType, airflow_site: Any) -> None:
    from vineyard import ObjectNotExistsException

    row = push(xcom, big_frame())
    airflow_site.client.clear()
    with pytest.raises(ObjectNotExistsException) as caught:
        pull(xcom, row, key="frame")
    assert row in str(caught.value)
    assert "'frame'" in str(caught.value)
    assert airflow_site.daemon.socket in str(caught.value)


def test_pull_of_an_object_on_another_host_says_so(xcom: ModuleType) -> None:
    from vineyard.contrib.airflow.errors import XComObjectMissing

    with pytest.raises(XComObjectMissing, match="on host 'elsewhere'"):
        pull(xcom, {"a": "vineyard://elsewhere/0/o00000000000000ff"}["a"])


@pytest.mark.parametrize(
    ("option", "value"),
    [("ON_UNAVAILABLE", "retry"), ("THRESHOLD_BYTES", "big"), ("THRESHOLD_BYTES", "-5"), ("TTL_SECONDS", "soon"),
     ("PERSIST", "maybe")],
)
def test_invalid_options_are_named(airflow_site: Any, monkeypatch: pytest.MonkeyPatch, option: str, value: str) -> None:
    from vineyard.contrib.airflow.options import load_options

    monkeypatch.setenv(f"AIRFLOW__VINEYARD__{option}", value)
    with pytest.raises(ValueError, match=option.lower()):
        load_options()


def test_socket_falls_back_to_vineyard_ipc_socket(airflow_site: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from vineyard.contrib.airflow.options import load_options

    monkeypatch.delenv("AIRFLOW__VINEYARD__IPC_SOCKET")
    monkeypatch.setenv("VINEYARD_IPC_SOCKET", "/run/elsewhere.sock")
    assert load_options().ipc_socket == "/run/elsewhere.sock"
    monkeypatch.setenv("AIRFLOW__VINEYARD__IPC_SOCKET", airflow_site.daemon.socket)
    assert load_options().ipc_socket == airflow_site.daemon.socket


# -- provider ----------------------------------------------------------------------------------


def test_provider_info_matches_airflows_schema(airflow_site: Any) -> None:
    from airflow.providers_manager import _create_provider_info_schema_validator

    from vineyard.contrib.airflow.provider import get_provider_info

    _create_provider_info_schema_validator().validate(get_provider_info())


def test_airflow_lists_the_options_and_commands(airflow_site: Any) -> None:
    listed = airflow_site.airflow("config", "list", "--section", "vineyard", "--show-values")
    for line in ("[vineyard]", "ipc_socket = ", "threshold_bytes = 1048576", "on_unavailable = error", "ttl_seconds"):
        assert line in listed, listed[-3000:]
    helped = airflow_site.airflow("vineyard", "--help")
    assert "gc" in helped, helped[-3000:]
    assert "cleanup" in helped


@pytest.mark.parametrize(
    "module",
    ["__init__", "cleanup", "cli", "errors", "operators", "options", "provider", "refs", "store", "xcom"],
)
def test_modules_declare_all(airflow_site: Any, module: str) -> None:
    name = "vineyard.contrib.airflow" + ("" if module == "__init__" else f".{module}")
    mod = importlib.import_module(name)
    assert isinstance(mod.__all__, list)
    for attr in mod.__all__:
        assert hasattr(mod, attr), f"{name}.{attr}"


def test_core_and_light_modules_do_not_import_airflow() -> None:
    code = (
        "import sys, vineyard\n"
        "import vineyard.contrib.airflow, vineyard.contrib.airflow.provider, vineyard.contrib.airflow.refs\n"
        "import vineyard.contrib.airflow.cleanup, vineyard.contrib.airflow.errors, vineyard.contrib.airflow.store\n"
        "assert not [m for m in sys.modules if m.split('.')[0] == 'airflow'], 'airflow was imported'\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert done.stdout.strip() == "ok", done.stderr[-3000:]
