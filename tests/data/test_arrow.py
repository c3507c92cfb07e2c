"""Arrow values: arrays of every layout, chunked arrays, schemas, record batches, tables.

Round trips run over IPC and RPC (``any_client``); zero-copy and dedup need shared memory
and use the IPC ``client``.
"""

from __future__ import annotations

import datetime
import decimal

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import vineyard
from vineyard.data import arrow
from vineyard.errors import UnknownTypeError
from vineyard.meta import ObjectMeta, PendingBlob
from vineyard.testing import address_in_store, store_mappings

fixture_settings = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def roundtrip(client, value):
    result = client.get(client.put(value))
    assert type(result) is type(value)
    assert result.type == value.type, (result.type, value.type)
    # equals() says NaN != NaN; the Python values' reprs compare NaNs as equal
    assert result.equals(value) or repr(result.to_pylist()) == repr(value.to_pylist()), (result, value)
    result.validate(full=True)
    return result


def buffers(value):
    """Every non-empty Arrow buffer of an array, chunked array, batch or table."""
    if isinstance(value, pa.Table):
        return [b for col in value.columns for b in buffers(col)]
    if isinstance(value, pa.RecordBatch):
        return [b for col in value.columns for b in buffers(col)]
    if isinstance(value, pa.ChunkedArray):
        return [b for chunk in value.chunks for b in buffers(chunk)]
    return [b for b in value.buffers() if b is not None and b.size]


ARRAYS = {
    "int8": pa.array([1, -2, None], pa.int8()),
    "int16": pa.array([1, -2, None], pa.int16()),
    "int32": pa.array([1, -2, None], pa.int32()),
    "int64": pa.array([1, -(2**63), None, 2**63 - 1], pa.int64()),
    "uint8": pa.array([0, 255, None], pa.uint8()),
    "uint16": pa.array([0, 65535], pa.uint16()),
    "uint32": pa.array([0, 2**32 - 1], pa.uint32()),
    "uint64": pa.array([0, 2**64 - 1, None], pa.uint64()),
    "float16": pa.array(np.array([1.5, -0.0, np.inf], np.float16)),
    "float32": pa.array([1.5, None, float("nan")], pa.float32()),
    "float64": pa.array([1.5, None, -1e300], pa.float64()),
    "bool": pa.array([True, None, False, True, False, False, True, True, False, None]),
    "null": pa.nulls(7),
    "string": pa.array(["a", None, "", "ccc", "é∂"]),
    "large_string": pa.array(["a", None, "", "ccc"], pa.large_string()),
    "binary": pa.array([b"\x00\xff", None, b""], pa.binary()),
    "large_binary": pa.array([b"\x00\xff", None, b"xyz"], pa.large_binary()),
    "fixed_size_binary": pa.array([b"abcd", None, b"\x00\x00\x00\x01"], pa.binary(4)),
    "list": pa.array([[1, 2], None, [], [3]], pa.list_(pa.int64())),
    "large_list": pa.array([["a"], None, ["b", None]], pa.large_list(pa.string())),
    "list_of_lists": pa.array([[[1], [2, 3]], None, [[]]]),
    "list_named_child": pa.array([[1]], pa.list_(pa.field("item_name", pa.int32(), nullable=False))),
    "fixed_size_list": pa.array([[1, 2], None, [3, 4]], pa.list_(pa.int16(), 2)),
    "struct": pa.array([{"a": 1, "b": "x"}, None, {"a": None, "b": "z"}]),
    "dictionary": pa.array(["a", "b", None, "a"]).dictionary_encode(),
    "dictionary_ordered": pa.DictionaryArray.from_arrays(
        pa.array([0, 1, None], pa.int8()), pa.array(["lo", "hi"]), ordered=True),
    "timestamp": pa.array([0, None, 10**18], pa.timestamp("ns")),
    "timestamp_tz": pa.array([0, 1], pa.timestamp("us", tz="Europe/Paris")),
    "date32": pa.array([datetime.date(2020, 1, 1), None]),
    "date64": pa.array([datetime.date(2020, 1, 1), None], pa.date64()),
    "time32": pa.array([1, None], pa.time32("ms")),
    "time64": pa.array([1, None], pa.time64("ns")),
    "duration": pa.array([1, None], pa.duration("s")),
    "decimal128": pa.array([decimal.Decimal("1.23"), None], pa.decimal128(10, 2)),
    "decimal256": pa.array([decimal.Decimal("-1.5")], pa.decimal256(40, 1)),
    "interval": pa.array([pa.scalar((1, 2, 3), pa.month_day_nano_interval()).value]),
    "map": pa.array([[("k", 1)], None, []], pa.map_(pa.string(), pa.int64())),
    "string_view": pa.array(["short", None, "a much longer string than twelve bytes"], pa.string_view()),
    "dense_union": pa.UnionArray.from_dense(
        pa.array([0, 1, 0], pa.int8()), pa.array([0, 0, 1], pa.int32()),
        [pa.array([1, 2]), pa.array(["x"])]),
    "run_end_encoded": pa.RunEndEncodedArray.from_arrays([2, 5], ["a", "b"]),
    "empty_int": pa.array([], pa.int64()),
    "empty_string": pa.array([], pa.string()),
    "empty_list": pa.array([], pa.list_(pa.int8())),
}


@pytest.mark.parametrize("name", sorted(ARRAYS))
def test_array_roundtrip_keeps_type(any_client, name):
    roundtrip(any_client, ARRAYS[name])


@pytest.mark.parametrize("name", sorted(ARRAYS))
@pytest.mark.parametrize(("start", "length"), [(1, None), (3, 2), (9, None)])
def test_sliced_array_roundtrip(any_client, name, start, length):
    base = ARRAYS[name]
    # long enough for every bit offset: repeat the sample
    value = pa.concat_arrays([base] * 6) if len(base) else base
    value = value.slice(start, length)
    result = roundtrip(any_client, value)
    assert result.offset == 0 or name in ("map", "string_view", "dense_union", "run_end_encoded")


def test_slices_are_stored_trimmed(client):
    big = pa.array(np.arange(100_000, dtype=np.int64))
    meta = client.get_meta(client.put(big.slice(50_000, 10)))
    assert meta["offset_"] == 0
    assert meta["buffer_"]["length"] == 80
    strings = pa.array([str(i) * 3 for i in range(10_000)], pa.large_string())
    meta = client.get_meta(client.put(strings.slice(5_000, 2)))
    assert meta["buffer_data_"]["length"] == len("5000" * 3) + len("5001" * 3)
    assert meta["buffer_offsets_"]["length"] == 3 * 8
    result = client.get(meta.id)
    assert result.to_pylist() == ["5000" * 3, "5001" * 3]


def test_bit_offsets_with_nulls(any_client):
    values = [None if i % 3 == 0 else i for i in range(50)]
    base = pa.array(values, pa.int32())
    for start in range(17):
        sliced = base.slice(start, 20)
        result = roundtrip(any_client, sliced)
        assert result.to_pylist() == values[start : start + 20]
    flags = pa.array([None if i % 5 == 0 else bool(i % 2) for i in range(40)])
    for start in range(10):
        assert roundtrip(any_client, flags.slice(start, 17)).to_pylist() == flags.to_pylist()[start : start + 17]


TYPENAMES = [
    (pa.array([1], pa.int64()), "vineyard::NumericArray<int64>"),
    (pa.array([1], pa.int32()), "vineyard::NumericArray<int32>"),
    (pa.array([1], pa.uint8()), "vineyard::NumericArray<uint8>"),
    (pa.array([1.0], pa.float32()), "vineyard::NumericArray<float>"),
    (pa.array([1.0], pa.float64()), "vineyard::NumericArray<double>"),
    (pa.array([True]), "vineyard::BooleanArray"),
    (pa.nulls(1), "vineyard::NullArray"),
    (pa.array(["a"]), "vineyard::BaseBinaryArray<arrow::StringArray>"),
    (pa.array(["a"], pa.large_string()), "vineyard::BaseBinaryArray<arrow::LargeStringArray>"),
    (pa.array([b"a"]), "vineyard::BaseBinaryArray<arrow::BinaryArray>"),
    (pa.array([b"a"], pa.large_binary()), "vineyard::BaseBinaryArray<arrow::LargeBinaryArray>"),
    (pa.array([b"a"], pa.binary(1)), "vineyard::FixedSizeBinaryArray"),
    (pa.array([[1]], pa.large_list(pa.int8())), "vineyard::LargeListArray"),
    (pa.array([[1]], pa.list_(pa.int8())), "vineyard::ListArray"),
    (pa.array([[1]], pa.list_(pa.int8(), 1)), "vineyard::FixedSizeListArray"),
    (pa.array([{"a": 1}]), "vineyard::StructArray"),
    (pa.array(["a"]).dictionary_encode(), "vineyard::DictionaryArray"),
    (pa.array([1], pa.timestamp("ns", "UTC")), "vineyard::FixedWidthArray<timestamp[ns, tz=UTC]>"),
    (pa.array(["x"], pa.string_view()), "vineyard::arrow::IPCArray"),
    (pa.chunked_array([[1]]), "vineyard::ChunkedArray"),
    (pa.schema([("a", pa.int8())]), "vineyard::SchemaProxy"),
    (pa.record_batch({"a": [1]}), "vineyard::RecordBatch"),
    (pa.table({"a": [1]}), "vineyard::Table"),
]


@pytest.mark.parametrize(("value", "typename"), TYPENAMES, ids=[t for _, t in TYPENAMES])
def test_typenames(client, value, typename):
    assert client.get_meta(client.put(value)).typename == typename


def test_upstream_array_layout(client):
    meta = client.get_meta(client.put(pa.array([1, None, 3], pa.int64())))
    assert (meta["length_"], meta["null_count_"], meta["offset_"]) == (3, 1, 0)
    assert meta["buffer_"]["length"] == 24
    assert meta["null_bitmap_"]["length"] == 1
    meta = client.get_meta(client.put(pa.array(["ab", "c"], pa.large_string())))
    assert meta["buffer_offsets_"]["length"] == 3 * 8
    assert meta["buffer_data_"]["length"] == 3
    assert meta["null_bitmap_"].id == vineyard.ObjectID("o8000000000000000")  # no nulls: the empty blob


def test_string_is_not_widened(any_client):
    value = pa.array(["x", "y"])
    assert any_client.get(any_client.put(value)).type == pa.string()
    table = pa.table({"s": value, "l": pa.array([[1], [2]])})
    result = any_client.get(any_client.put(table))
    assert result.schema == table.schema


def test_chunked_array(any_client):
    for value in (
        pa.chunked_array([[1, 2], [], [None, 4]], pa.int64()),
        pa.chunked_array([], pa.string()),
        pa.chunked_array([pa.array(["a", None]).dictionary_encode()]),
    ):
        result = roundtrip(any_client, value)
        assert result.num_chunks == value.num_chunks


def test_schema_with_metadata(any_client):
    schema = pa.schema(
        [pa.field("a", pa.int64(), nullable=False, metadata={"unit": "m"}), pa.field("s", pa.string())],
        metadata={"origin": "test", "n": "1"},
    )
    result = any_client.get(any_client.put(schema))
    assert isinstance(result, pa.Schema)
    assert result.equals(schema, check_metadata=True)
    meta = any_client.get_meta(any_client.put(schema))
    assert "bytes" in meta["schema_binary_"]  # upstream's JSON form


def test_record_batch(any_client):
    batch = pa.record_batch(
        {"i": pa.array([1, None, 3]), "s": pa.array(["a", "b", None]), "l": pa.array([[1], [], None])},
        metadata={"k": "v"},
    )
    result = any_client.get(any_client.put(batch))
    assert isinstance(result, pa.RecordBatch)
    assert result.equals(batch, check_metadata=True)
    meta = any_client.get_meta(any_client.put(batch))
    assert (meta["row_num_"], meta["column_num_"], meta["__columns_-size"]) == (3, 3, 3)
    assert meta["schema_"].typename == "vineyard::SchemaProxy"


def test_table_multiple_chunks(any_client):
    first = pa.table({"a": [1, 2], "s": ["x", None]})
    table = pa.concat_tables([first, first.slice(1), first]).replace_schema_metadata({"who": "me"})
    assert table.column(0).num_chunks == 3
    result = any_client.get(any_client.put(table))
    assert isinstance(result, pa.Table)
    assert result.equals(table, check_metadata=True)
    assert result.column(0).num_chunks == 3
    meta = any_client.get_meta(any_client.put(table))
    assert (meta["num_rows_"], meta["num_columns_"], meta["batch_num_"], meta["partitions_-size"]) == (5, 2, 3, 3)
    assert meta["partitions_-0"].typename == "vineyard::RecordBatch"


def test_empty_tables(any_client):
    schema = pa.schema([("a", pa.int64()), ("s", pa.string())])
    for table in (schema.empty_table(), pa.Table.from_batches([], schema=schema), pa.table({})):
        result = any_client.get(any_client.put(table))
        assert result.schema == table.schema
        assert result.num_rows == 0


def test_pa_buffer_is_a_blob(any_client):
    data = pa.py_buffer(b"hello arrow")
    assert bytes(any_client.get(any_client.put(data))) == b"hello arrow"


def test_get_is_zero_copy_and_read_only(client):
    table = pa.table({
        "i": pa.array(np.arange(10_000)),
        "s": pa.array([str(i) for i in range(10_000)]),
        "n": pa.array([None if i % 7 else i for i in range(10_000)], pa.float64()),
        "d": pa.array(["a", "b"] * 5_000).dictionary_encode(),
        "l": pa.array([[i] for i in range(10_000)]),
    })
    result = client.get(client.put(table))
    mappings = store_mappings()
    for buf in buffers(result):
        assert address_in_store(buf.address, mappings), buf
        assert not buf.is_mutable


def test_rpc_get_is_a_private_copy(rpc_client):
    value = pa.array(np.arange(1000))
    result = rpc_client.get(rpc_client.put(value))
    assert result.equals(value)
    assert not any(address_in_store(b.address) for b in buffers(result))


def test_put_of_a_got_array_reuses_its_blobs(client):
    table = pa.table({"i": pa.array(np.arange(1000)), "s": pa.array([str(i) for i in range(1000)])})
    first = client.get_meta(client.put(table))
    got = client.get(first.id)
    second = client.get_meta(client.put(pa.table({"again": got.column("s"), "i": got.column("i")})))
    old = first["partitions_-0"]
    new = second["partitions_-0"]
    assert new["__columns_-0"]["buffer_data_"].id == old["__columns_-1"]["buffer_data_"].id
    assert new["__columns_-0"]["buffer_offsets_"].id == old["__columns_-1"]["buffer_offsets_"].id
    assert new["__columns_-1"]["buffer_"].id == old["__columns_-0"]["buffer_"].id


def test_string_buffers_for_tensors(any_client):
    values = np.array(["a", "bb", "", "ccc"], dtype=object)
    meta = arrow.build_string_buffers(any_client, values)
    assert meta.typename == "vineyard::BaseBinaryArray<arrow::LargeStringArray>"
    obj = any_client.get_object(any_client.create_metadata(meta).id)
    result = arrow.resolve_string_buffers(obj)
    assert result.type == pa.large_string()
    assert result.to_pylist() == list(values)
    unicode = np.array(["x", "yé"])
    np.testing.assert_array_equal(any_client.get(any_client.put(unicode)), unicode)


def test_bad_input_names_the_type(client):
    with pytest.raises(TypeError, match="list"):
        arrow.build_array(client, [1, 2])
    obj = client.get_object(client.put(np.arange(3)))
    with pytest.raises(UnknownTypeError, match="Tensor"):
        arrow.resolve_array(obj)


@st.composite
def nullable_arrays(draw):
    kind = draw(st.sampled_from(["int", "float", "str", "bool", "list"]))
    if kind == "int":
        element, type_ = st.integers(-(2**63), 2**63 - 1), pa.int64()
    elif kind == "float":
        element, type_ = st.floats(allow_nan=False), pa.float64()
    elif kind == "str":
        element, type_ = st.text(max_size=8), draw(st.sampled_from([pa.string(), pa.large_string()]))
    elif kind == "bool":
        element, type_ = st.booleans(), pa.bool_()
    else:
        element, type_ = st.lists(st.integers(-100, 100), max_size=3), pa.list_(pa.int16())
    values = draw(st.lists(st.one_of(st.none(), element), max_size=40))
    array = pa.array(values, type=type_)
    start = draw(st.integers(0, len(values)))
    length = draw(st.integers(0, len(values) - start))
    return array.slice(start, length)


@fixture_settings
@given(value=nullable_arrays())
def test_property_nullable_arrays(client, value):
    result = roundtrip(client, value)
    assert result.to_pylist() == value.to_pylist()
    assert result.null_count == value.null_count


def test_table_with_unaligned_chunks(any_client):
    table = pa.table({
        "a": pa.chunked_array([[1], [2, 3], []], pa.int64()),
        "b": pa.chunked_array([["x", "y"], ["z"]]),
    })
    result = any_client.get(any_client.put(table))
    assert result.equals(table)
    assert result.to_pydict() == table.to_pydict()


def test_reads_upstream_written_arrays(client):
    """Upstream stores whole buffers plus ``offset_``, and no ``type_`` on list arrays."""
    meta = ObjectMeta()
    meta["typename"] = "vineyard::NumericArray<int64>"
    meta["length_"], meta["null_count_"], meta["offset_"] = 3, 1, 2
    meta.add_member("buffer_", PendingBlob(np.arange(6, dtype=np.int64)))
    meta.add_member("null_bitmap_", PendingBlob(np.array([0b111011], dtype=np.uint8)))
    result = client.get(client.create_metadata(meta).id)
    assert result.to_pylist() == [None, 3, 4]

    values = ObjectMeta()
    values["typename"] = "vineyard::NumericArray<double>"
    values["length_"], values["null_count_"], values["offset_"] = 3, 0, 0
    values.add_member("buffer_", PendingBlob(np.array([1.0, 2.0, 3.0])))
    values.add_member("null_bitmap_", PendingBlob(b""))
    lists = ObjectMeta()
    lists["typename"] = "vineyard::LargeListArray"
    lists["length_"], lists["null_count_"], lists["offset_"] = 2, 0, 0
    lists.add_member("buffer_offsets_", PendingBlob(np.array([0, 1, 3], dtype=np.int64)))
    lists.add_member("null_bitmap_", PendingBlob(b""))
    lists.add_member("values_", values)
    result = client.get(client.create_metadata(lists).id)
    assert result.type == pa.large_list(pa.float64())
    assert result.to_pylist() == [[1.0], [2.0, 3.0]]
