"""The pickle fallback (``vineyard::PickleBuffer``), turning it off, and PickledReader/Writer."""

from __future__ import annotations

import pickle
import struct

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

import vineyard
from vineyard.core import builder_context, context, resolver_context
from vineyard.data.pickle import PickledReader, PickledWriter, build_pickle, pickle_allowed, resolve_pickle
from vineyard.errors import UnknownTypeError
from vineyard.meta import ObjectMeta, PendingBlob


class Opaque:
    """No builder is registered for this class."""

    def __init__(self, payload):
        self.payload = payload

    def __eq__(self, other):
        return isinstance(other, Opaque) and _eq(self.payload, other.payload)


def _eq(a, b):
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    return a == b


def test_layout(any_client):
    value = Opaque("x")
    object_id = any_client.put(value)
    meta = any_client.get_meta(object_id)
    assert meta.typename == "vineyard::PickleBuffer"
    assert meta["protocol_"] == 5
    assert meta["size_"] == meta.nbytes == meta["buffer_"]["length"]
    assert any_client.get(object_id) == value


def test_out_of_band_buffers_come_back_intact(any_client):
    arrays = {"a": np.arange(100_000, dtype=np.float64), "b": np.ones((3, 4), dtype=np.int8, order="F")}
    result = any_client.get(any_client.put(Opaque(arrays)))
    assert set(result.payload) == {"a", "b"}
    for key, array in arrays.items():
        assert result.payload[key].dtype == array.dtype
        np.testing.assert_array_equal(result.payload[key], array)
    assert result.payload["b"].flags.f_contiguous


def test_out_of_band_array_is_a_view_of_the_blob(client):
    from vineyard.testing import address_in_store

    result = client.get(client.put({"big": np.arange(50_000, dtype=np.int64)}))
    assert address_in_store(result["big"].__array_interface__["data"][0])


def test_payload_is_assembled_once(client, monkeypatch):
    # the pickle stream plus out-of-band buffers become one blob, copied in once
    import vineyard.client

    calls = []
    original = vineyard.client.copy_into
    monkeypatch.setattr(vineyard.client, "copy_into", lambda d, s: (calls.append(s.nbytes), original(d, s)))
    array = np.arange(10_000, dtype=np.float64)
    object_id = client.put({"x": array})
    assert len(calls) == 1
    assert calls[0] > array.nbytes
    np.testing.assert_array_equal(client.get(object_id)["x"], array)


def test_dataframe_in_a_dict(any_client):
    frame = pd.DataFrame({"a": [1, 2, 3], "b": ["x", "y", "z"]})
    result = any_client.get(any_client.put({"frame": frame}))
    pd.testing.assert_frame_equal(result["frame"], frame)


def test_corrupt_payload_is_a_clear_error(any_client):
    meta = ObjectMeta()
    meta["typename"] = "vineyard::PickleBuffer"
    meta.add_member("buffer_", PendingBlob(struct.pack("<QQ", 1000, 0) + b"short"))
    created = any_client.create_metadata(meta)
    with pytest.raises(ValueError, match="truncated"):
        any_client.get(created.id)


# -- turning pickle off -----------------------------------------------------------------------


def test_builder_context_without_pickle_refuses_unknown_types(any_client):
    with builder_context(allow_pickle=False) as ctx:
        assert not ctx.allow_pickle
        with pytest.raises(UnknownTypeError, match=r"Opaque.*allow_pickle=False"):
            any_client.put(Opaque(1))
        # registered types are unaffected
        assert any_client.get(any_client.put((1, "a"))) == (1, "a")
    assert isinstance(any_client.get(any_client.put(Opaque(1))), Opaque)


def test_unknown_type_error_is_a_type_error(client):
    with builder_context(allow_pickle=False), pytest.raises(TypeError):
        client.put({"a": 1})


def test_pickle_refused_inside_sequences(client):
    with builder_context(allow_pickle=False), pytest.raises(UnknownTypeError):
        client.put((1, {"nested": "dict"}))


def test_resolver_context_without_pickle_refuses_to_unpickle(any_client):
    object_id = any_client.put({"a": 1})
    with resolver_context(allow_pickle=False), pytest.raises(UnknownTypeError, match="refusing to unpickle"):
        any_client.get(object_id)
    assert any_client.get(object_id) == {"a": 1}


def test_context_turns_off_both_directions(client):
    object_id = client.put(Opaque(2))
    with context(allow_pickle=False) as (builders, resolvers):
        assert not builders.allow_pickle
        assert not resolvers.allow_pickle
        with pytest.raises(UnknownTypeError):
            client.put(Opaque(3))
        with pytest.raises(UnknownTypeError):
            client.get(object_id)


def test_nested_contexts_inherit_the_setting(client):
    with builder_context(allow_pickle=False), builder_context({}) as inner:
        assert not inner.allow_pickle
        with pytest.raises(UnknownTypeError):
            client.put(Opaque(4))
        with builder_context(allow_pickle=True):
            assert isinstance(client.get(client.put(Opaque(4))), Opaque)


def test_client_attribute_turns_pickle_off(store):
    with vineyard.connect(store.socket) as client:
        object_id = client.put(Opaque(5))
        client.allow_pickle = False
        with pytest.raises(UnknownTypeError):
            client.put(Opaque(6))
        with pytest.raises(UnknownTypeError):
            client.get(object_id)


def test_pickle_allowed_helper():
    class Ctx:
        allow_pickle = True

    class NoPickle:
        allow_pickle = False

    assert pickle_allowed(None, Ctx())
    assert not pickle_allowed(None, NoPickle())
    assert not pickle_allowed(NoPickle(), Ctx())


def test_direct_calls_use_the_current_contexts(client):
    meta = build_pickle(client, [1, 2])  # no builder passed: the current context decides
    created = client.create_metadata(meta)
    obj = client.get_object(created.id)
    assert resolve_pickle(obj) == [1, 2]
    with builder_context(allow_pickle=False), pytest.raises(UnknownTypeError):
        build_pickle(client, [1, 2])
    with resolver_context(allow_pickle=False), pytest.raises(UnknownTypeError):
        resolve_pickle(obj)


# -- PickledReader / PickledWriter ------------------------------------------------------------


def read_and_build(block_size, value, declare_size=True):
    reader = PickledReader(value)
    blocks, total = [], 0
    while block := reader.read(block_size):
        assert len(block) <= block_size
        blocks.append(bytes(block))
        total += len(block)
    assert total == reader.store_size
    writer = PickledWriter(reader.store_size if declare_size else -1)
    for block in blocks:
        writer.write(block)
    assert writer.value is None
    writer.close()
    return writer.value


VALUES = [
    1, True, (True, False), [1, 2, 3], "text", (1, "mixed"), None, {"a": {1, 2}},
    np.bool_(True), np.arange(100_000), np.zeros((10, 20, 3), dtype=bool), np.asfortranarray(np.ones((5, 7))),
    Opaque([1, 2]),
]


@pytest.mark.parametrize("block_size", [1, 7, 4096, 1 << 20])
@pytest.mark.parametrize("value", VALUES, ids=lambda v: type(v).__name__)
def test_reader_writer_roundtrip(block_size, value):
    if block_size == 1 and isinstance(value, np.ndarray) and value.nbytes > 1000:
        value = value.reshape(-1)[:100]
    target = read_and_build(block_size, value)
    if isinstance(value, np.ndarray):
        assert target.dtype == value.dtype
        assert target.shape == value.shape
        assert target.flags.f_contiguous == value.flags.f_contiguous
        np.testing.assert_array_equal(target, value)
    else:
        assert type(target) is type(value)
        assert target == value


@pytest.mark.parametrize("value", [b"raw bytes", bytearray(b"ba"), memoryview(b"mv"), b""])
def test_bytes_pass_through_raw(value):
    reader = PickledReader(value)
    assert reader.store_size == len(value)
    assert reader.value is value
    assert read_and_build(3, value) == bytes(value)


def test_bytes_that_look_like_a_frame_are_framed():
    value = b"__VINEYARD__ but really just bytes"
    reader = PickledReader(value)
    assert reader.store_size > len(value)
    assert read_and_build(5, value) == value


def test_writer_without_declared_size():
    assert read_and_build(10, {"k": np.arange(10)}, declare_size=False)["k"].tolist() == list(range(10))


def test_writer_rejects_overflow_and_short_input():
    writer = PickledWriter(4)
    with pytest.raises(ValueError, match="overflows"):
        writer.write(b"12345")
    writer.write(b"12")
    with pytest.raises(ValueError, match="2 of 4"):
        writer.close()


def test_writer_rejects_corrupt_frame():
    writer = PickledWriter()
    writer.write(b"__VINEYARD__" + struct.pack(">Q", 1) + struct.pack(">Q", 999) + b"x")
    with pytest.raises(ValueError, match="corrupt"):
        writer.close()


def test_reader_rejects_bad_block_size():
    with pytest.raises(ValueError, match="block_size"):
        PickledReader(1).read(0)


@given(value=st.recursive(st.none() | st.integers() | st.text() | st.binary(), st.lists, max_leaves=8),
       block_size=st.integers(1, 64))
def test_reader_writer_property(value, block_size):
    assert read_and_build(block_size, value) == (value if not isinstance(value, bytes) else bytes(value))


def test_pickled_result_of_get_can_be_pickled_again(any_client):
    result = any_client.get(any_client.put(np.arange(5)))
    assert pickle.loads(pickle.dumps(result)).tolist() == [0, 1, 2, 3, 4]
