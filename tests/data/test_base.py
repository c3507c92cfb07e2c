"""Python values: scalars, strings, bytes, sequences, and what goes through pickle.

Every round trip runs over IPC (shared memory) and RPC (copied bytes) via ``any_client``.
"""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vineyard.ids import ObjectID
from vineyard.testing import address_in_store, assert_roundtrip

fixture_settings = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


# -- scalars -----------------------------------------------------------------------------


@pytest.mark.parametrize("value", [0, 1, -1, 2**63 - 1, -(2**63), 2**64 - 1, 123456789012345])
def test_int_roundtrip(any_client, value):
    object_id = any_client.put(value)
    meta = any_client.get_meta(object_id)
    assert meta.typename == "vineyard::Scalar<int>"
    assert meta["value_"] == value
    assert meta["type_"] == "int"
    assert meta.nbytes == 0
    result = any_client.get(object_id)
    assert type(result) is int
    assert result == value


@pytest.mark.parametrize("value", [True, False])
def test_bool_comes_back_a_bool(any_client, value):
    # upstream returns an int (True -> 1); we keep the type (docs/compat.md)
    object_id = any_client.put(value)
    meta = any_client.get_meta(object_id)
    assert meta.typename == "vineyard::Scalar<int>"
    assert meta["type_"] == "bool"
    result = any_client.get(object_id)
    assert type(result) is bool
    assert result is value


@pytest.mark.parametrize("value", [2**64, -(2**63) - 1, 10**40, -(10**40)])
def test_int_outside_64_bits_goes_through_pickle(any_client, value):
    object_id = any_client.put(value)
    assert any_client.get_meta(object_id).typename == "vineyard::PickleBuffer"
    assert any_client.get(object_id) == value


def test_float_keeps_full_double_precision(any_client):
    # upstream narrows to float32, so 0.1 + 0.2 would come back as 0.30000001192092896
    value = 0.1 + 0.2
    object_id = any_client.put(value)
    meta = any_client.get_meta(object_id)
    assert meta.typename == "vineyard::Scalar<double>"
    result = any_client.get(object_id)
    assert type(result) is float
    assert result == value
    assert struct.pack("<d", result) == struct.pack("<d", value)
    assert result != 0.3


@pytest.mark.parametrize("value", [0.0, -0.0, 1e-310, 1.7976931348623157e308, math.pi, math.inf, -math.inf])
def test_special_floats(any_client, value):
    result = any_client.get(any_client.put(value))
    assert struct.pack("<d", result) == struct.pack("<d", value)  # keeps the sign of zero


def test_nan(any_client):
    assert math.isnan(any_client.get(any_client.put(math.nan)))


@given(value=st.floats(allow_nan=False))
@fixture_settings
def test_float_property(any_client, value):
    result = any_client.get(any_client.put(value))
    assert struct.pack("<d", result) == struct.pack("<d", value)


def test_numpy_float64_is_a_double_scalar(any_client):
    object_id = any_client.put(np.float64(1) / 3)
    assert any_client.get_meta(object_id).typename == "vineyard::Scalar<double>"
    assert any_client.get(object_id) == 1 / 3


@pytest.mark.parametrize(
    "value", ["", "hello", "héllo wörld", "日本語テキスト", "emoji 🎉🐍", "nul\x00inside", "x" * 100_000]
)
def test_str_roundtrip(any_client, value):
    object_id = any_client.put(value)
    meta = any_client.get_meta(object_id)
    assert meta.typename == "vineyard::Scalar<std::string>"
    result = any_client.get(object_id)
    assert type(result) is str
    assert result == value


def test_str_with_lone_surrogate_goes_through_pickle(any_client):
    value = "bad \ud800 surrogate"
    object_id = any_client.put(value)
    assert any_client.get_meta(object_id).typename == "vineyard::PickleBuffer"
    assert any_client.get(object_id) == value


@given(value=st.text())
@fixture_settings
def test_str_property(any_client, value):
    assert any_client.get(any_client.put(value)) == value


# -- bytes -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [b"", b"abc", bytes(range(256)) * 100, bytearray(b"mutable"), memoryview(b"view of bytes")],
    ids=["empty", "short", "binary", "bytearray", "memoryview"],
)
def test_bytes_like_become_a_blob(any_client, value):
    object_id = any_client.put(value)
    assert int(object_id) & (1 << 63), "a blob id has bit 63 set"
    assert any_client.get_meta(object_id).typename == "vineyard::Blob"
    result = any_client.get(object_id)
    assert isinstance(result, memoryview)
    assert result.readonly
    assert result.format == "B"
    assert bytes(result) == bytes(value)


def test_bytes_get_is_zero_copy(client):
    payload = bytes(range(256)) * 4096
    result = client.get(client.put(payload))
    address = np.frombuffer(result, dtype=np.uint8).__array_interface__["data"][0]
    assert address_in_store(address)
    with pytest.raises(TypeError):
        result[0] = 1  # read-only


def test_non_contiguous_memoryview(any_client):
    base = memoryview(bytes(range(100)))[::3]
    assert not base.c_contiguous
    assert bytes(any_client.get(any_client.put(base))) == bytes(base)


def test_typed_memoryview_is_stored_as_its_bytes(any_client):
    view = memoryview(np.arange(5, dtype=np.int32))
    result = any_client.get(any_client.put(view))
    assert np.frombuffer(result, dtype=np.int32).tolist() == [0, 1, 2, 3, 4]


# -- sequences ---------------------------------------------------------------------------


def test_tuple_layout(any_client):
    object_id = any_client.put((1, "two", 3.0))
    meta = any_client.get_meta(object_id)
    assert meta.typename == "vineyard::Sequence"
    assert meta["size_"] == 3
    assert meta["__elements_-size"] == 3
    assert [meta[f"__elements_-{i}"].typename for i in range(3)] == [
        "vineyard::Scalar<int>",
        "vineyard::Scalar<std::string>",
        "vineyard::Scalar<double>",
    ]
    assert any_client.get(object_id) == (1, "two", 3.0)


def test_list_comes_back_a_tuple(any_client):
    assert any_client.get(any_client.put([1, 2, 3])) == (1, 2, 3)


def test_empty_sequences(any_client):
    assert any_client.get(any_client.put(())) == ()
    assert any_client.get(any_client.put([])) == ()


def test_nested_mixed_sequence(any_client):
    array = np.arange(6, dtype=np.int16).reshape(2, 3)
    value = [1, True, 0.5, "s", b"raw", None, {"k": [1, 2]}, (2, [3, (4, "five")]), array]
    result = any_client.get(any_client.put(value))
    assert isinstance(result, tuple)
    assert result[:4] == (1, True, 0.5, "s")
    assert type(result[1]) is bool
    assert bytes(result[4]) == b"raw"
    assert result[5] is None
    assert result[6] == {"k": [1, 2]}  # dicts are pickled whole, so their lists stay lists
    assert result[7] == (2, (3, (4, "five")))
    np.testing.assert_array_equal(result[8], array)
    assert result[8].dtype == np.int16


def test_sequence_references_stored_objects(any_client):
    first = any_client.put(np.arange(4))
    second = any_client.put("second")
    object_id = any_client.put((first, any_client.get_meta(second)))
    meta = any_client.get_meta(object_id)
    assert meta["__elements_-0"].id == first
    assert meta["__elements_-1"].id == second
    result = any_client.get(object_id)
    np.testing.assert_array_equal(result[0], np.arange(4))
    assert result[1] == "second"


def test_global_sequence(any_client):
    object_id = any_client.put((1, 2), global_=True)
    assert any_client.get_meta(object_id).isglobal


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.tuples(children, children),
    max_leaves=12,
)


def _as_tuples(value):
    if isinstance(value, (list, tuple)):
        return tuple(_as_tuples(v) for v in value)
    return value


@given(value=json_values)
@fixture_settings
def test_nested_property(any_client, value):
    result = any_client.get(any_client.put(value))
    assert result == _as_tuples(value)


# -- pickled values ----------------------------------------------------------------------


class Point:
    """A user class with no builder: it goes through the pickle fallback."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __eq__(self, other):
        return isinstance(other, Point) and (self.x, self.y) == (other.x, other.y)


@pytest.mark.parametrize(
    "value",
    [
        None,
        {"a": 1, "b": [1, 2], "c": {"nested": (1, 2)}},
        {},
        {1, 2, 3},
        frozenset({"x"}),
        Point(1, 2.5),
        complex(1, -2),
        range(10),
    ],
    ids=["none", "dict", "empty-dict", "set", "frozenset", "class", "complex", "range"],
)
def test_other_values_are_pickled(any_client, value):
    object_id = any_client.put(value)
    meta = any_client.get_meta(object_id)
    assert meta.typename == "vineyard::PickleBuffer"
    assert meta["size_"] == meta.nbytes > 0
    assert_roundtrip(any_client, value)


@pytest.mark.parametrize(
    "value",
    [np.int8(-3), np.int64(2**40), np.uint64(2**64 - 1), np.float32(1.5), np.bool_(True), np.complex64(1 + 2j),
     np.datetime64("2024-01-02T03:04:05", "ns")],
    ids=lambda v: type(v).__name__,
)
def test_numpy_scalars_keep_their_type(any_client, value):
    result = any_client.get(any_client.put(value))
    assert type(result) is type(value)
    assert result == value


def test_numpy_str_scalar_is_a_str_scalar(any_client):
    object_id = any_client.put(np.str_("numpy text"))
    assert any_client.get_meta(object_id).typename == "vineyard::Scalar<std::string>"
    assert any_client.get(object_id) == "numpy text"


def test_object_id_top_level_is_an_int_scalar(any_client):
    # ObjectID subclasses int (docs/compat.md), so put(ObjectID) stores the number
    oid = ObjectID(12345)
    assert any_client.get(any_client.put(oid)) == 12345
