"""numpy arrays as ``vineyard::Tensor``: dtypes, layouts, zero-copy, dedup, one copy per put.

Round trips run over IPC and RPC (``any_client``); zero-copy and dedup checks need the
shared memory and use the IPC ``client``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import vineyard
import vineyard.client
import vineyard.transport
from vineyard.core import context
from vineyard.data import tensor
from vineyard.errors import UnknownTypeError
from vineyard.meta import ObjectMeta, PendingBlob
from vineyard.testing import address_in_store

try:
    from vineyard.data import arrow as _arrow
except ImportError:
    _arrow = None

needs_arrow_strings = pytest.mark.skipif(
    _arrow is None or not hasattr(_arrow, "build_string_buffers") or not hasattr(_arrow, "resolve_string_buffers"),
    reason="string tensors need vineyard.data.arrow.build_string_buffers/resolve_string_buffers (not written yet)",
)

fixture_settings = settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def data_address(array: np.ndarray) -> int:
    return int(array.__array_interface__["data"][0])


def assert_exact(result: np.ndarray, expected: np.ndarray) -> None:
    """Same dtype, shape and bits (NaN payloads and signed zeros included)."""
    assert result.dtype == expected.dtype
    assert result.shape == expected.shape
    assert result.tobytes() == expected.tobytes()


# -- dtypes and typenames ---------------------------------------------------------------

TYPENAMES = {
    "int8": "int8", "int16": "int16", "int32": "int", "int64": "int64",
    "uint8": "uint8", "uint16": "uint16", "uint32": "uint32", "uint64": "uint64",
    "float16": "float16", "float32": "float", "float64": "double", "longdouble": np.dtype(np.longdouble).name,
    "complex64": "complex64", "complex128": "complex128", "bool": "bool",
}


@pytest.mark.parametrize("name", sorted(TYPENAMES))
def test_numeric_dtypes(any_client, name):
    dtype = np.dtype(name)
    rng = np.random.default_rng(7)
    if dtype.kind == "b":
        value = rng.random((3, 5)) > 0.5
    elif dtype.kind in "iu":
        info = np.iinfo(dtype)
        value = rng.integers(info.min, info.max, size=(3, 5), dtype=dtype, endpoint=True)
    elif dtype.kind == "c":
        value = (rng.standard_normal((3, 5)) + 1j * rng.standard_normal((3, 5))).astype(dtype)
    else:
        value = rng.standard_normal((3, 5)).astype(dtype)
    object_id = any_client.put(value)
    meta = any_client.get_meta(object_id)
    assert meta.typename == f"vineyard::Tensor<{TYPENAMES[name]}>"
    assert meta["value_type_"] == dtype.name
    assert meta["value_type_meta_"] == dtype.str
    result = any_client.get(object_id)
    assert_exact(result, value)


def test_meta_layout(any_client):
    value = np.arange(6, dtype=np.float64).reshape(2, 3)
    meta = any_client.get_meta(any_client.put(value))
    assert meta.typename == "vineyard::Tensor<double>"
    assert meta["shape_"] == "[2, 3]"
    assert json.loads(meta["shape_"]) == [2, 3]
    assert json.loads(meta["order_"]) == "C"
    assert json.loads(meta["partition_index_"]) == []
    assert meta["value_type_"] == "float64"
    assert meta["value_type_meta_"] == "<f8"
    assert meta.nbytes == 48
    buffer = meta["buffer_"]
    assert buffer.typename == "vineyard::Blob"
    assert buffer["length"] == 48


def test_partition_index(any_client):
    meta = any_client.get_meta(any_client.put(np.zeros(3), partition_index=[1, 2]))
    assert json.loads(meta["partition_index_"]) == [1, 2]


def test_bad_partition_index_is_a_type_error(any_client):
    with pytest.raises(TypeError, match="partition_index"):
        any_client.put(np.zeros(3), partition_index="row one")


def test_result_is_vineyard_ndarray(any_client):
    result = any_client.get(any_client.put(np.arange(4)))
    assert isinstance(result, tensor.ndarray)
    assert isinstance(result, np.ndarray)
    assert type(result).__name__ == "ndarray"


@pytest.mark.parametrize(
    "dtype",
    ["M8[Y]", "M8[D]", "M8[h]", "M8[s]", "M8[ms]", "M8[us]", "M8[ns]", "m8[D]", "m8[s]", "m8[ns]", "M8"],
)
def test_datetime_units(any_client, dtype):
    value = np.array([0, 1, 1_000_000, -5], dtype="i8").view(dtype)
    value[3] = np.datetime64("NaT") if dtype.startswith("M") else np.timedelta64("NaT")
    object_id = any_client.put(value)
    meta = any_client.get_meta(object_id)
    assert meta.typename == f"vineyard::Tensor<{np.dtype(dtype).name}>"
    result = any_client.get(object_id)
    assert result.dtype == np.dtype(dtype)  # the unit survives
    assert_exact(result, value)


@pytest.mark.parametrize("dtype", [">i2", ">i4", ">u8", ">f4", ">f8", ">c16", ">M8[ns]", ">m8[us]"])
def test_big_endian_dtypes_keep_their_byte_order(any_client, dtype):
    value = np.arange(12).astype(dtype).reshape(3, 4)
    assert value.dtype.byteorder == ">"
    result = any_client.get(any_client.put(value))
    assert result.dtype.str == np.dtype(dtype).str
    assert_exact(result, value)
    np.testing.assert_array_equal(result.astype(value.dtype.newbyteorder("=")), np.arange(12).reshape(3, 4).astype(
        np.dtype(dtype).newbyteorder("=")))


# -- shapes and layouts -----------------------------------------------------------------


@pytest.mark.parametrize("value", [np.array(5), np.array(2.5), np.array(True), np.array(3 + 4j)], ids=repr)
def test_zero_dimensional(any_client, value):
    object_id = any_client.put(value)
    assert any_client.get_meta(object_id)["shape_"] == "[]"
    result = any_client.get(object_id)
    assert result.shape == ()
    assert_exact(result, value)


@pytest.mark.parametrize("shape", [(0,), (3, 0), (0, 4), (2, 0, 3)])
@pytest.mark.parametrize("dtype", ["f8", "i4", "M8[ns]"])
def test_empty_arrays(any_client, shape, dtype):
    value = np.zeros(shape, dtype=dtype)
    object_id = any_client.put(value)
    meta = any_client.get_meta(object_id)
    assert json.loads(meta["shape_"]) == list(shape)
    assert meta.nbytes == 0
    result = any_client.get(object_id)
    assert_exact(result, value)
    assert not result.flags.writeable


def test_fortran_order_comes_back_fortran_without_copy(client):
    value = np.asfortranarray(np.arange(35, dtype=np.float64).reshape(5, 7))
    object_id = client.put(value)
    assert json.loads(client.get_meta(object_id)["order_"]) == "F"
    result = client.get(object_id)
    assert result.flags.f_contiguous
    assert not result.flags.c_contiguous
    assert not result.flags.owndata
    # a copy (upstream's np.asfortranarray) would live in private memory, not in the store
    assert address_in_store(data_address(result))
    blob = client.get_object(object_id).member("buffer_")
    assert np.shares_memory(result, blob)
    np.testing.assert_array_equal(result, value)


def test_fortran_order_over_rpc(rpc_client):
    value = np.asfortranarray(np.arange(24, dtype=np.int32).reshape(2, 3, 4))
    result = rpc_client.get(rpc_client.put(value))
    assert result.flags.f_contiguous
    assert not result.flags.c_contiguous
    assert_exact(result, value)


def test_c_order_flags(any_client):
    value = np.arange(12.0).reshape(3, 4)
    result = any_client.get(any_client.put(value))
    assert result.flags.c_contiguous


@pytest.mark.parametrize(
    "make",
    [
        lambda a: a[::2],
        lambda a: a[:, ::3],
        lambda a: a[::-1, 1::2],
        lambda a: a.T,
        lambda a: a[1:, 2:].T,
        lambda a: np.broadcast_to(a[0], (4, a.shape[1])),
        lambda a: a[..., np.newaxis][:, :, [0, 0]][:, ::2],
    ],
    ids=["rows-step", "cols-step", "negative", "transpose", "slice-transpose", "broadcast", "fancy"],
)
def test_non_contiguous_inputs(any_client, make):
    base = np.arange(60, dtype=np.int64).reshape(6, 10)
    value = make(base)
    result = any_client.get(any_client.put(value))
    assert_exact(result, value)
    np.testing.assert_array_equal(result, value)


def test_result_is_read_only_view_of_the_store(client):
    value = np.arange(1000, dtype=np.float32)
    result = client.get(client.put(value))
    assert not result.flags.writeable
    assert address_in_store(data_address(result))
    with pytest.raises(ValueError, match="read-only"):
        result[0] = 1


def test_rpc_result_is_read_only(rpc_client):
    result = rpc_client.get(rpc_client.put(np.arange(10)))
    assert not result.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        result[0] = 1


# -- strings, objects, structured --------------------------------------------------------


def test_fixed_width_bytes_are_raw(any_client):
    value = np.array([b"", b"a", b"abc\x00\xff", b"xyzw"], dtype="S5").reshape(2, 2)
    object_id = any_client.put(value)
    meta = any_client.get_meta(object_id)
    assert meta["value_type_meta_"] == "|S5"
    result = any_client.get(object_id)
    assert_exact(result, value)


@needs_arrow_strings
@pytest.mark.parametrize(
    "value",
    [
        np.array(["", "x", "yz", "uvw"]),
        np.array([["héllo", "wörld"], ["日本", "🎉"]]),
        np.array([], dtype="U3"),
    ],
    ids=["ascii", "unicode-2d", "empty"],
)
def test_unicode_arrays(any_client, value):
    object_id = any_client.put(value)
    meta = any_client.get_meta(object_id)
    if value.size:
        assert meta.typename == "vineyard::Tensor<std::string>"
    result = any_client.get(object_id)
    assert result.dtype == value.dtype
    assert result.shape == value.shape
    np.testing.assert_array_equal(result, value)


@needs_arrow_strings
def test_object_array_of_str_is_a_string_tensor(any_client):
    value = np.array(["a", "bb", "ccc", ""], dtype=object).reshape(2, 2)
    object_id = any_client.put(value)
    assert any_client.get_meta(object_id).typename == "vineyard::Tensor<std::string>"
    result = any_client.get(object_id)
    assert result.dtype == object
    assert result.shape == (2, 2)
    assert result.tolist() == value.tolist()


@pytest.mark.parametrize(
    "value",
    [
        np.array([1, "x", 3.14, None, {"k": 1}], dtype=object),
        np.ones((), dtype=object),
        np.array([[1, "a"], [None, 2.5]], dtype=object),
        np.array([], dtype=object),
    ],
    ids=["mixed", "0-d", "2-d", "empty"],
)
def test_object_arrays_are_pickled(any_client, value):
    object_id = any_client.put(value)
    meta = any_client.get_meta(object_id)
    assert meta.typename == "vineyard::Tensor<object>"
    assert meta["buffer_"].typename == "vineyard::PickleBuffer"
    result = any_client.get(object_id)
    assert result.dtype == object
    assert result.shape == value.shape
    assert result.tolist() == value.tolist()


def test_object_array_refused_without_pickle(client):
    with context(allow_pickle=False), pytest.raises(UnknownTypeError, match="pickle"):
        client.put(np.array([1, None], dtype=object))


@pytest.mark.parametrize(
    "dtype",
    [
        [("a", "<i4"), ("b", ">f8"), ("c", "S3")],
        np.dtype([("a", "u1"), ("b", "<f8")], align=True),
        [("xy", "<f4", (2,)), ("inner", [("p", "<i2"), ("q", "?")])],
    ],
    ids=["packed", "aligned", "nested"],
)
def test_structured_dtypes(any_client, dtype):
    dtype = np.dtype(dtype)
    value = np.zeros(4, dtype=dtype)
    raw = value.view(np.uint8)
    raw[:] = np.arange(raw.size, dtype=np.uint8)  # every byte, padding included, is distinct
    object_id = any_client.put(value)
    assert "value_type_descr_" in any_client.get_meta(object_id)
    result = any_client.get(object_id)
    assert result.dtype == dtype
    assert result.dtype.itemsize == dtype.itemsize
    assert result.dtype.names == dtype.names
    assert_exact(result, value)


def test_structured_with_object_field_is_pickled(any_client):
    value = np.array([(1, "x"), (2, None)], dtype=[("n", "i4"), ("o", "O")])
    object_id = any_client.put(value)
    assert any_client.get_meta(object_id).typename == "vineyard::Tensor<object>"
    result = any_client.get(object_id)
    assert result.dtype == value.dtype
    assert result.tolist() == value.tolist()


# -- metadata written by hand (as a C++ or upstream writer would) ------------------------


def test_resolves_hand_written_meta(any_client):
    data = np.arange(6, dtype=np.float64)
    meta = ObjectMeta()
    meta["typename"] = "vineyard::Tensor<double>"
    meta["value_type_"] = "double"  # C++ name, no value_type_meta_
    meta["shape_"] = "[3, 2]"
    meta["order_"] = "C"  # a bare letter, not JSON
    meta["nbytes"] = data.nbytes
    meta.add_member("buffer_", PendingBlob(data))
    created = any_client.create_metadata(meta)
    result = any_client.get(created.id)
    assert result.dtype == np.float64
    np.testing.assert_array_equal(result, data.reshape(3, 2))


def test_short_blob_is_a_clear_error(any_client):
    meta = ObjectMeta()
    meta["typename"] = "vineyard::Tensor<int64>"
    meta["value_type_"] = "int64"
    meta["value_type_meta_"] = "<i8"
    meta["shape_"] = "[10]"
    meta.add_member("buffer_", PendingBlob(np.zeros(2, dtype=np.int64)))
    created = any_client.create_metadata(meta)
    with pytest.raises(ValueError, match="needs 80 bytes"):
        any_client.get(created.id)


# -- properties ---------------------------------------------------------------------------

scalar_dtypes = st.one_of(
    hnp.boolean_dtypes(),
    hnp.integer_dtypes(endianness="?"),
    hnp.unsigned_integer_dtypes(endianness="?"),
    hnp.floating_dtypes(endianness="?"),
    hnp.complex_number_dtypes(endianness="?"),
    hnp.datetime64_dtypes(endianness="?"),
    hnp.timedelta64_dtypes(endianness="?"),
    hnp.byte_string_dtypes(max_len=4),
)
all_dtypes = scalar_dtypes | hnp.array_dtypes(scalar_dtypes, min_size=1, max_size=3)


@st.composite
def arrays_with_layouts(draw):
    value = draw(hnp.arrays(all_dtypes, hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5)))
    layout = draw(st.sampled_from(["C", "F", "strided", "transposed"]))
    if layout == "F":
        value = np.asfortranarray(value)
    elif layout == "strided" and value.ndim:
        value = value[tuple(slice(None, None, draw(st.sampled_from([1, 2, -1]))) for _ in range(value.ndim))]
    elif layout == "transposed":
        value = value.T
    return value


@given(value=arrays_with_layouts())
@fixture_settings
def test_roundtrip_property(any_client, value):
    result = any_client.get(any_client.put(value))
    assert_exact(result, value)
    assert not result.flags.writeable
    if value.ndim > 1 and value.size and value.flags.f_contiguous and not value.flags.c_contiguous:
        assert result.flags.f_contiguous


# -- dedup ---------------------------------------------------------------------------------


def blob_id(client, object_id):
    return client.get_meta(object_id)["buffer_"].id


def test_putting_a_stored_array_reuses_its_blob(client):
    first = client.put(np.arange(1000, dtype=np.float64))
    array = client.get(first)
    second = client.put(array)
    assert second != first
    assert blob_id(client, second) == blob_id(client, first)
    np.testing.assert_array_equal(client.get(second), array)


def test_whole_buffer_views_reuse_the_blob(client):
    first = client.put(np.arange(24, dtype=np.int32).reshape(4, 6))
    array = client.get(first)
    for view in (array.reshape(-1), array.reshape(2, 12), array.view(np.uint32), np.asarray(array)):
        assert blob_id(client, client.put(view)) == blob_id(client, first)


def test_fortran_array_from_store_reuses_its_blob(client):
    first = client.put(np.asfortranarray(np.arange(12.0).reshape(3, 4)))
    array = client.get(first)
    second = client.put(array)
    assert blob_id(client, second) == blob_id(client, first)
    assert json.loads(client.get_meta(second)["order_"]) == "F"


def test_partial_views_get_their_own_blob(client):
    first = client.put(np.arange(100, dtype=np.int64))
    array = client.get(first)
    for view in (array[1:], array[:-1], array[::2]):
        second = client.put(view)
        assert blob_id(client, second) != blob_id(client, first)
        np.testing.assert_array_equal(client.get(second), view)


def test_equal_but_separate_arrays_are_not_merged(client):
    first = client.put(np.arange(10))
    second = client.put(np.arange(10))
    assert blob_id(client, first) != blob_id(client, second)


# -- one copy per buffer --------------------------------------------------------------------


@pytest.fixture
def copies(monkeypatch):
    """Record every (destination, source) the IPC client copies into shared memory."""
    calls = []
    original = vineyard.client.copy_into

    def spy(dst, src):
        calls.append((dst, src))
        original(dst, src)

    monkeypatch.setattr(vineyard.client, "copy_into", spy)
    return calls


@pytest.mark.parametrize("order", ["C", "F"])
def test_put_copies_each_buffer_once(client, copies, order):
    # above the inline limit: small puts send their bytes inside the request instead
    side = 128
    assert side * side * 8 > vineyard.client.INLINE_LIMIT
    value = np.asarray(np.arange(side * side, dtype=np.float64).reshape(side, side), order=order)
    object_id = client.put(value)
    assert len(copies) == 1
    dst, src = copies[0]
    # the source handed to the copy is the caller's own memory: no intermediate copy
    assert np.shares_memory(src, value)
    assert dst.nbytes == value.nbytes
    assert_exact(client.get(object_id), value)


def test_large_array_uses_the_threaded_copy(client, copies, monkeypatch):
    submitted = []
    pool = vineyard.transport._copy_pool()

    class CountingPool:
        def submit(self, fn, *args):
            submitted.append(args[0].nbytes)
            return pool.submit(fn, *args)

    monkeypatch.setattr(vineyard.transport, "_copy_pool", lambda: CountingPool())
    value = np.random.default_rng(3).integers(0, 2**62, size=(64 << 20) // 8, dtype=np.int64)
    object_id = client.put(value)
    try:
        assert len(copies) == 1
        if min(4, os.cpu_count() or 1) >= 2:
            assert len(submitted) >= 2
            assert sum(submitted) == value.nbytes
        result = client.get(object_id)
        assert np.array_equal(result, value)
        del result
    finally:
        client.delete(object_id)


# -- a second process ----------------------------------------------------------------------

READER = r"""
import json, sys
import numpy as np
import vineyard
from vineyard.testing import rss_anon, store_mappings

client = vineyard.connect(sys.argv[1])
array = client.get(vineyard.ObjectID(sys.argv[2]))
address = array.__array_interface__["data"][0]
paths = [path for start, end, path in store_mappings() if start <= address < end]
before = rss_anon()
total = float(array.sum())
after = rss_anon()
try:
    array[0] = 1.0
    writable = True
except ValueError:
    writable = False
print(json.dumps({"paths": paths, "total": total, "growth": after - before, "writable": writable,
                  "readonly_flag": not array.flags.writeable, "nbytes": array.nbytes}))
"""


def test_second_process_maps_without_copying(client, store):
    value = np.arange((64 << 20) // 8, dtype=np.float64)
    object_id = client.put(value)
    proc = subprocess.Popen(
        [sys.executable, "-c", READER, store.socket, repr(object_id)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        client.delete(object_id)
    assert proc.returncode == 0, err
    report = json.loads(out)
    assert report["nbytes"] == value.nbytes
    assert len(report["paths"]) == 1
    assert report["paths"][0].startswith("/memfd:")
    assert report["readonly_flag"]
    assert not report["writable"]
    assert report["total"] == float(value.sum())
    # summing 64 MiB of shared pages must not grow private memory by anything like 64 MiB
    assert report["growth"] < 8 << 20, report
