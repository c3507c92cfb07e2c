"""VineyardRef on its own: pickling, put/get, lifetime calls, errors that name what is wrong."""

from __future__ import annotations

import pickle

import pytest

ray = pytest.importorskip("ray")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

import vineyard  # noqa: E402
import vineyard.contrib.ray as vray  # noqa: E402
from vineyard.contrib.ray import lifetime  # noqa: E402
from vineyard.testing import Daemon, address_in_store  # noqa: E402


def frame(n: int = 1000) -> pd.DataFrame:
    return pd.DataFrame({"a": np.arange(n, dtype="int64"), "b": np.linspace(0, 1, n)})


def test_a_ref_pickles_to_its_id_socket_and_host(store: Daemon, ray_cluster: object, no_leaks: vineyard.Client) -> None:
    df = frame(200_000)
    with vray.put(df) as ref:
        data = pickle.dumps(ref)
        assert len(data) < 256, len(data)
        assert b"DataFrame" not in data
        assert b"numpy" not in data
        back = pickle.loads(data)
        assert back == ref
        assert hash(back) == hash(ref)
        assert back.socket == store.socket
        assert repr(ref.object_id) in repr(ref)


def test_get_returns_read_only_views_of_the_store(ray_cluster: object, no_leaks: vineyard.Client) -> None:
    df = frame()
    with vray.put(df) as ref:
        got = ref.get()
        pd.testing.assert_frame_equal(got, df)
        column = got["b"].to_numpy()
        assert not column.flags.writeable
        assert address_in_store(column.__array_interface__["data"][0])
        assert vray.get([ref, ref.object_id])[1].equals(got)


def test_context_manager_and_delete_free_the_object(ray_cluster: object, no_leaks: vineyard.Client) -> None:
    with vray.put(frame()) as ref:
        assert ref.exists()
    assert not ref.exists()
    ref2 = vray.put(np.arange(10))
    vray.delete([ref2])
    assert not ref2.exists()
    ref2.delete()  # deleting twice is not an error


def test_objects_are_labelled_with_the_ray_job(ray_cluster: object, client: vineyard.Client) -> None:
    ref = vray.put(frame(), labels={"owner": "test"})
    try:
        labels = client.get_meta(ref.object_id).labels
        context = ray.get_runtime_context()
        assert labels[lifetime.LABEL_JOB] == f"{context.get_session_name()}/{context.get_job_id()}"
        assert labels["owner"] == "test"
        assert ref.socket in lifetime.tracked_jobs()[labels[lifetime.LABEL_JOB]]
    finally:
        ref.delete()


def test_missing_object_error_names_object_and_socket(store: Daemon, ray_cluster: object) -> None:
    ref = vray.put(np.arange(3))
    ref.delete()
    with pytest.raises(vineyard.ObjectNotExistsException) as info:
        ref.get()
    assert repr(ref.object_id) in str(info.value)
    assert store.socket in str(info.value)
    assert info.value.object_id == ref.object_id


def test_store_down_error_names_the_socket(tmp_path: object) -> None:
    ref = vray.VineyardRef("o0000000000000001", socket=f"{tmp_path}/nothing.sock")
    with pytest.raises(vineyard.StoreUnavailable) as info:
        ref.get()
    assert ref.socket in str(info.value)


def test_restarted_daemon_is_reconnected_and_reports_the_object_missing() -> None:
    first = Daemon(size="64Mi")
    try:
        ref = vray.put(np.arange(5), socket=first.socket)
        assert ref.get().sum() == 10
    finally:
        first.stop()
    second = Daemon(size="64Mi", socket=first.socket)
    try:
        with pytest.raises(vineyard.ObjectNotExistsException, match=repr(ref.object_id)):
            ref.get()
    finally:
        second.stop()


def test_object_on_another_host_is_reported_as_not_local(store: Daemon, tmp_path: object) -> None:
    ref = vray.VineyardRef("o0000000000000001", socket=f"{tmp_path}/remote.sock", host="elsewhere")
    with pytest.raises(vray.ObjectNotLocal) as info:
        ref.get()
    assert "elsewhere" in str(info.value)
    assert ref.socket in str(info.value)
    assert isinstance(info.value, KeyError)  # still an ObjectNotExistsException
    # The same socket path exists here but is another store: the object is not there either.
    same_path = vray.VineyardRef("o0000000000000001", socket=store.socket, host="elsewhere")
    with pytest.raises(vray.ObjectNotLocal):
        same_path.get()


def test_no_socket_configured_says_how_to_configure(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VINEYARD_IPC_SOCKET", raising=False)
    with pytest.raises(vineyard.ConnectionFailedException, match="VINEYARD_IPC_SOCKET"):
        vray.put(1)
