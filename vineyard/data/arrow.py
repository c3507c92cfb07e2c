"""Arrow arrays, chunked arrays, schemas, record batches and tables.

Every Arrow buffer becomes one blob, and ``get`` rebuilds arrays with
``pa.Array.from_buffers`` over ``pa.py_buffer(blob)``: zero-copy over IPC, read-only.
Types are kept exactly (upstream widens ``string`` to ``large_string`` and ``list`` to
``large_list``; we do not).

Typenames (fields ``length_``, ``null_count_``, ``offset_`` on every array, member
``null_bitmap_`` — the empty blob when there are no nulls):

==================================================  ====================================
``vineyard::NumericArray<int64>`` (``<double>`` …)  upstream; member ``buffer_``
``vineyard::BooleanArray``                          upstream; member ``buffer_``
``vineyard::NullArray``                             upstream; ``length_`` only
``vineyard::BaseBinaryArray<arrow::StringArray>``   upstream layout (``buffer_offsets_``,
(``LargeStringArray``, ``BinaryArray``,             ``buffer_data_``); upstream only ever
``LargeBinaryArray``)                               writes the ``Large`` variants
``vineyard::FixedSizeBinaryArray``                  upstream; ``byte_width_``, ``buffer_``
``vineyard::LargeListArray``                        upstream; ``buffer_offsets_``, ``values_``
``vineyard::ListArray``                             **ours** (32-bit offsets kept)
``vineyard::FixedSizeListArray``                    **ours**; ``list_size_``, ``values_``
``vineyard::StructArray``                           **ours**; ``type_``, ``children_-i``
``vineyard::DictionaryArray``                       **ours**; ``ordered_``, ``indices_``,
                                                    ``dictionary_``
``vineyard::FixedWidthArray<timestamp[ns]>``        **ours**: temporal, decimal and interval
                                                    types; ``type_``, ``buffer_``
``vineyard::arrow::IPCArray``                       **ours**: every other type (map, union,
                                                    views, run-end, extension types) as one
                                                    Arrow IPC stream in ``buffer_``
``vineyard::ChunkedArray``                          **ours**; ``type_``, ``chunks_-i``
``vineyard::SchemaProxy``                           upstream; ``schema_binary_`` (JSON bytes)
``vineyard::RecordBatch``                           upstream; ``schema_``, ``__columns_-i``
``vineyard::Table``                                 upstream; ``schema_``, ``partitions_-i``
==================================================  ====================================

``type_`` holds an Arrow type as base64 of a one-field IPC schema, so time zones, decimal
precision, field names and metadata survive. Sliced arrays are stored trimmed to their
visible range with ``offset_ == 0``; buffers are passed to the client as they are, so an
array read back from the store and put again reuses its blobs.
"""

from __future__ import annotations

import base64
import functools
import json
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from vineyard.errors import UnknownTypeError
from vineyard.meta import ObjectMeta, PendingBlob

__all__ = [
    "build_array",
    "build_chunked_array",
    "build_record_batch",
    "build_schema",
    "build_string_buffers",
    "build_table",
    "register",
    "resolve_array",
    "resolve_chunked_array",
    "resolve_record_batch",
    "resolve_schema",
    "resolve_string_buffers",
    "resolve_table",
]

_BINARY = {
    pa.string(): "arrow::StringArray",
    pa.large_string(): "arrow::LargeStringArray",
    pa.binary(): "arrow::BinaryArray",
    pa.large_binary(): "arrow::LargeBinaryArray",
}
_BINARY_TYPES = {name: t for t, name in _BINARY.items()}
# C++ spellings upstream may write inside NumericArray<...>.
_NUMERIC_ALIASES = {"int": "int32", "uint": "uint32", "long": "int64", "float32": "float",
                    "float64": "double", "float16": "halffloat"}
_EMPTY = b""


# -- helpers -------------------------------------------------------------------------------
def _encode_type(type_: pa.DataType) -> str:
    """An Arrow type as text that restores it exactly (a one-field IPC schema, base64)."""
    schema = pa.schema([pa.field("_", type_)])
    return base64.b64encode(schema.serialize().to_pybytes()).decode("ascii")


@functools.lru_cache(maxsize=512)
def _decode_type(text: str) -> pa.DataType:
    schema = pa.ipc.read_schema(pa.py_buffer(base64.b64decode(text)))
    return schema.field(0).type


def _slice(buffer: pa.Buffer | None, start: int, size: int) -> PendingBlob:
    """Bytes ``[start, start+size)`` of an Arrow buffer, without copying them here."""
    if buffer is None or size <= 0:
        return PendingBlob(_EMPTY)
    if start == 0 and size == buffer.size:
        return PendingBlob(buffer)
    return PendingBlob(buffer.slice(start, size))


def _validity(array: pa.Array) -> PendingBlob:
    """The validity bitmap of ``array``'s visible range, starting at bit 0."""
    if array.null_count == 0:
        return PendingBlob(_EMPTY)
    length, offset = len(array), array.offset
    nbytes = (length + 7) // 8
    bitmap = array.buffers()[0]
    if offset % 8 == 0 and bitmap is not None:
        return _slice(bitmap, offset // 8, nbytes)
    # A bit offset cannot be expressed per buffer, so realign (n/8 bytes, cheap).
    return _slice(pc.is_valid(array).buffers()[1], 0, nbytes)


def _header(meta: ObjectMeta, typename: str, array: pa.Array) -> None:
    meta["typename"] = typename
    meta["length_"] = len(array)
    meta["null_count_"] = int(array.null_count)
    meta["offset_"] = 0


def _nbytes(meta: ObjectMeta, *blobs: PendingBlob) -> None:
    meta["nbytes"] = sum(b.nbytes for b in blobs)


def _offsets(array: pa.Array, width: int) -> tuple[PendingBlob, int, int]:
    """Offsets of the visible range rebased to start at 0, and the ``[first, last)`` range of
    values they cover. Zero-copy unless the slice does not start at the first value."""
    dtype: type[np.signedinteger[Any]] = np.int32 if width == 4 else np.int64
    length, offset = len(array), array.offset
    raw = array.buffers()[1]
    if length == 0 or raw is None:
        return PendingBlob(np.zeros(1, dtype=dtype)), 0, 0
    offs: np.ndarray[Any, np.dtype[np.signedinteger[Any]]] = np.frombuffer(
        raw, dtype=dtype, count=offset + length + 1
    )[offset:]
    first, last = int(offs[0]), int(offs[-1])
    if first == 0:
        return _slice(raw, offset * width, (length + 1) * width), 0, last
    return PendingBlob(offs - offs.dtype.type(first)), first, last


# -- builders ------------------------------------------------------------------------------
def build_array(client: Any, array: pa.Array, **kw: Any) -> ObjectMeta:
    """Describe an Arrow array as a vineyard object; buffers become pending blobs.

    Raises
    ------
    TypeError
        ``array`` is not an Arrow array.
    """
    if isinstance(array, pa.ChunkedArray):
        return build_chunked_array(client, array, **kw)
    if not isinstance(array, pa.Array):
        raise TypeError(f"expected a pyarrow Array, not {type(array).__name__}")
    meta = ObjectMeta(**{k: v for k, v in kw.items() if k == "global_"})
    type_ = array.type
    if isinstance(type_, pa.ExtensionType):
        _build_ipc(meta, array)
    elif pa.types.is_null(type_):
        meta["typename"] = "vineyard::NullArray"
        meta["length_"] = len(array)
        meta["null_count_"] = len(array)
        meta["offset_"] = 0
        meta["nbytes"] = 0
    elif pa.types.is_boolean(type_):
        _build_boolean(meta, array)
    elif pa.types.is_integer(type_) or pa.types.is_floating(type_):
        _build_fixed(meta, f"vineyard::NumericArray<{type_}>", array)
    elif pa.types.is_fixed_size_binary(type_) and not pa.types.is_decimal(type_):
        _build_fixed(meta, "vineyard::FixedSizeBinaryArray", array)
        meta["byte_width_"] = type_.byte_width
    elif type_ in _BINARY:
        _build_binary(meta, array)
    elif pa.types.is_temporal(type_) or pa.types.is_decimal(type_) or pa.types.is_interval(type_):
        _build_fixed(meta, f"vineyard::FixedWidthArray<{type_}>", array)
        meta["type_"] = _encode_type(type_)
    elif pa.types.is_list(type_) or pa.types.is_large_list(type_):
        _build_list(client, meta, array)
    elif pa.types.is_fixed_size_list(type_):
        _build_fixed_size_list(client, meta, array)
    elif pa.types.is_struct(type_):
        _build_struct(client, meta, array)
    elif pa.types.is_dictionary(type_):
        _build_dictionary(client, meta, array)
    else:
        _build_ipc(meta, array)
    return meta


def _build_fixed(meta: ObjectMeta, typename: str, array: pa.Array) -> None:
    _header(meta, typename, array)
    width = array.type.bit_width // 8
    data = _slice(array.buffers()[1], array.offset * width, len(array) * width)
    validity = _validity(array)
    meta.add_member("buffer_", data)
    meta.add_member("null_bitmap_", validity)
    _nbytes(meta, data, validity)


def _build_boolean(meta: ObjectMeta, array: pa.Array) -> None:
    if array.offset % 8:
        array = pa.concat_arrays([array])  # realign the bits: a copy of n/8 bytes
    _header(meta, "vineyard::BooleanArray", array)
    data = _slice(array.buffers()[1], array.offset // 8, (len(array) + 7) // 8)
    validity = _validity(array)
    meta.add_member("buffer_", data)
    meta.add_member("null_bitmap_", validity)
    _nbytes(meta, data, validity)


def _build_binary(meta: ObjectMeta, array: pa.Array) -> None:
    type_ = array.type
    _header(meta, f"vineyard::BaseBinaryArray<{_BINARY[type_]}>", array)
    large = pa.types.is_large_string(type_) or pa.types.is_large_binary(type_)
    offsets, first, last = _offsets(array, 8 if large else 4)
    data = _slice(array.buffers()[2], first, last - first)
    validity = _validity(array)
    meta.add_member("buffer_offsets_", offsets)
    meta.add_member("buffer_data_", data)
    meta.add_member("null_bitmap_", validity)
    _nbytes(meta, offsets, data, validity)


def _build_list(client: Any, meta: ObjectMeta, array: pa.Array) -> None:
    large = pa.types.is_large_list(array.type)
    _header(meta, "vineyard::LargeListArray" if large else "vineyard::ListArray", array)
    offsets, first, last = _offsets(array, 8 if large else 4)
    validity = _validity(array)
    meta.add_member("buffer_offsets_", offsets)
    meta.add_member("null_bitmap_", validity)
    meta["type_"] = _encode_type(array.type)  # keeps the child field's name and nullability
    values = build_array(client, array.values.slice(first, last - first))
    meta.add_member("values_", values)
    meta["nbytes"] = offsets.nbytes + validity.nbytes + values.nbytes


def _build_fixed_size_list(client: Any, meta: ObjectMeta, array: pa.Array) -> None:
    _header(meta, "vineyard::FixedSizeListArray", array)
    size = array.type.list_size
    validity = _validity(array)
    meta.add_member("null_bitmap_", validity)
    meta["list_size_"] = size
    meta["type_"] = _encode_type(array.type)
    values = build_array(client, array.values.slice(array.offset * size, len(array) * size))
    meta.add_member("values_", values)
    meta["nbytes"] = validity.nbytes + values.nbytes


def _build_struct(client: Any, meta: ObjectMeta, array: pa.Array) -> None:
    _header(meta, "vineyard::StructArray", array)
    validity = _validity(array)
    meta.add_member("null_bitmap_", validity)
    meta["type_"] = _encode_type(array.type)
    count = array.type.num_fields
    meta["children_-size"] = count
    nbytes = validity.nbytes
    for i in range(count):
        child = build_array(client, array.field(i))  # field() already applies the offset
        meta.add_member(f"children_-{i}", child)
        nbytes += child.nbytes
    meta["nbytes"] = nbytes


def _build_dictionary(client: Any, meta: ObjectMeta, array: pa.Array) -> None:
    _header(meta, "vineyard::DictionaryArray", array)
    meta["ordered_"] = bool(array.type.ordered)
    indices = build_array(client, array.indices)
    dictionary = build_array(client, array.dictionary)
    meta.add_member("indices_", indices)
    meta.add_member("dictionary_", dictionary)
    meta["nbytes"] = indices.nbytes + dictionary.nbytes


def _build_ipc(meta: ObjectMeta, array: pa.Array) -> None:
    _header(meta, "vineyard::arrow::IPCArray", array)
    batch = pa.record_batch([array], names=["_"])
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    payload = PendingBlob(sink.getvalue())
    meta.add_member("buffer_", payload)
    meta["nbytes"] = payload.nbytes


def build_chunked_array(client: Any, array: pa.ChunkedArray, **kw: Any) -> ObjectMeta:
    """A chunked array: its type and one array member per chunk."""
    meta = ObjectMeta(**{k: v for k, v in kw.items() if k == "global_"})
    meta["typename"] = "vineyard::ChunkedArray"
    meta["type_"] = _encode_type(array.type)
    meta["length_"] = len(array)
    meta["null_count_"] = int(array.null_count)
    meta["chunks_-size"] = array.num_chunks
    nbytes = 0
    for i, chunk in enumerate(array.chunks):
        member = build_array(client, chunk)
        meta.add_member(f"chunks_-{i}", member)
        nbytes += member.nbytes
    meta["nbytes"] = nbytes
    return meta


def build_schema(client: Any, schema: pa.Schema, **kw: Any) -> ObjectMeta:
    """A schema as upstream stores it: the IPC-serialized bytes as a JSON list."""
    meta = ObjectMeta(**{k: v for k, v in kw.items() if k == "global_"})
    meta["typename"] = "vineyard::SchemaProxy"
    raw = schema.serialize().to_pybytes()
    meta["schema_binary_"] = json.dumps({"bytes": list(raw)}, separators=(",", ":"))
    meta["nbytes"] = 0
    return meta


def build_record_batch(client: Any, batch: pa.RecordBatch, **kw: Any) -> ObjectMeta:
    """A record batch: schema member plus one array member per column."""
    meta = ObjectMeta(**{k: v for k, v in kw.items() if k == "global_"})
    meta["typename"] = "vineyard::RecordBatch"
    meta["row_num_"] = batch.num_rows
    meta["column_num_"] = batch.num_columns
    meta["__columns_-size"] = batch.num_columns
    meta.add_member("schema_", build_schema(client, batch.schema))
    nbytes = 0
    for i in range(batch.num_columns):
        column = build_array(client, batch.column(i))
        meta.add_member(f"__columns_-{i}", column)
        nbytes += column.nbytes
    meta["nbytes"] = nbytes
    return meta


def build_table(client: Any, table: pa.Table, **kw: Any) -> ObjectMeta:
    """A table as upstream stores it: schema plus one record batch member per chunk."""
    meta = ObjectMeta(**{k: v for k, v in kw.items() if k == "global_"})
    meta["typename"] = "vineyard::Table"
    batches = table.to_batches()
    meta["num_rows_"] = table.num_rows
    meta["num_columns_"] = table.num_columns
    meta["batch_num_"] = len(batches)
    meta["partitions_-size"] = len(batches)
    meta.add_member("schema_", build_schema(client, table.schema))
    nbytes = 0
    for i, batch in enumerate(batches):
        member = build_record_batch(client, batch)
        meta.add_member(f"partitions_-{i}", member)
        nbytes += member.nbytes
    meta["nbytes"] = nbytes
    return meta


def build_string_buffers(client: Any, values: np.ndarray) -> ObjectMeta:
    """A flat numpy array of ``str`` (or ``bytes`` for dtype ``S``) as a large string (binary)
    array; used by ``vineyard::Tensor<std::string>``."""
    type_ = pa.large_binary() if values.dtype.kind == "S" else pa.large_string()
    return build_array(client, pa.array(values, type=type_))


def build_buffer(client: Any, buffer: pa.Buffer, **kw: Any) -> PendingBlob:
    """An Arrow buffer becomes a blob (``get`` returns a memoryview, as for ``bytes``)."""
    return PendingBlob(buffer)


# -- resolvers -----------------------------------------------------------------------------
def _buffer(obj: Any, key: str) -> pa.Buffer:
    return pa.py_buffer(obj.member(key))


def _bitmap(obj: Any, null_count: int) -> pa.Buffer | None:
    if null_count == 0 or "null_bitmap_" not in obj.meta:
        return None
    blob = obj.member("null_bitmap_")
    return pa.py_buffer(blob) if len(blob) else None


def _fields(obj: Any) -> tuple[int, int, int]:
    meta = obj.meta
    return int(meta["length_"]), int(meta.get("null_count_", 0)), int(meta.get("offset_", 0))


def _numeric_type(typename: str) -> pa.DataType:
    name = typename[typename.index("<") + 1 : typename.rindex(">")]
    name = _NUMERIC_ALIASES.get(name, name)
    try:
        return pa.type_for_alias(name)
    except (KeyError, ValueError):
        raise UnknownTypeError(f"unknown Arrow value type {name!r} in {typename!r}") from None


def _resolve_fixed(obj: Any, type_: pa.DataType) -> pa.Array:
    length, nulls, offset = _fields(obj)
    return pa.Array.from_buffers(type_, length, [_bitmap(obj, nulls), _buffer(obj, "buffer_")], nulls, offset)


def _resolve_numeric(obj: Any) -> pa.Array:
    return _resolve_fixed(obj, _numeric_type(obj.meta.typename))


def _resolve_boolean(obj: Any) -> pa.Array:
    return _resolve_fixed(obj, pa.bool_())


def _resolve_fixed_binary(obj: Any) -> pa.Array:
    return _resolve_fixed(obj, pa.binary(int(obj.meta["byte_width_"])))


def _resolve_fixed_width(obj: Any) -> pa.Array:
    return _resolve_fixed(obj, _decode_type(obj.meta["type_"]))


def _resolve_null(obj: Any) -> pa.Array:
    return pa.nulls(int(obj.meta["length_"]))


def _resolve_binary(obj: Any) -> pa.Array:
    typename = obj.meta.typename
    if typename.startswith("vineyard::BaseBinaryArray<"):
        type_ = _BINARY_TYPES.get(typename[len("vineyard::BaseBinaryArray<") : -1])
    else:  # upstream's older spellings: vineyard::StringArray, vineyard::LargeBinaryArray, ...
        type_ = _BINARY_TYPES.get("arrow::" + typename[len("vineyard::") :])
    if type_ is None:
        raise UnknownTypeError(f"unknown binary array type {typename!r}")
    length, nulls, offset = _fields(obj)
    buffers = [_bitmap(obj, nulls), _buffer(obj, "buffer_offsets_"), _buffer(obj, "buffer_data_")]
    return pa.Array.from_buffers(type_, length, buffers, nulls, offset)


def _resolve_list(obj: Any) -> pa.Array:
    meta = obj.meta
    values = resolve_array(obj.member("values_"))
    if "type_" in meta:
        type_ = _decode_type(meta["type_"])
    elif meta.typename == "vineyard::LargeListArray":
        type_ = pa.large_list(values.type)
    else:
        type_ = pa.list_(values.type)
    length, nulls, offset = _fields(obj)
    buffers = [_bitmap(obj, nulls), _buffer(obj, "buffer_offsets_")]
    return pa.Array.from_buffers(type_, length, buffers, nulls, offset, children=[values])


def _resolve_fixed_size_list(obj: Any) -> pa.Array:
    values = resolve_array(obj.member("values_"))
    length, nulls, offset = _fields(obj)
    type_ = _decode_type(obj.meta["type_"])
    return pa.Array.from_buffers(type_, length, [_bitmap(obj, nulls)], nulls, offset, children=[values])


def _resolve_struct(obj: Any) -> pa.Array:
    meta = obj.meta
    children = [resolve_array(obj.member(f"children_-{i}")) for i in range(int(meta["children_-size"]))]
    length, nulls, offset = _fields(obj)
    type_ = _decode_type(meta["type_"])
    return pa.Array.from_buffers(type_, length, [_bitmap(obj, nulls)], nulls, offset, children=children)


def _resolve_dictionary(obj: Any) -> pa.Array:
    indices = resolve_array(obj.member("indices_"))
    dictionary = resolve_array(obj.member("dictionary_"))
    # The indices were valid when stored; checking them again would read every one.
    return pa.DictionaryArray.from_arrays(indices, dictionary, ordered=bool(obj.meta["ordered_"]), safe=False)


def _resolve_ipc(obj: Any) -> pa.Array:
    reader = pa.ipc.open_stream(pa.py_buffer(obj.member("buffer_")))
    return reader.read_next_batch().column(0)


_ARRAYS = {
    "vineyard::NumericArray": _resolve_numeric,
    "vineyard::BooleanArray": _resolve_boolean,
    "vineyard::NullArray": _resolve_null,
    "vineyard::BaseBinaryArray": _resolve_binary,
    "vineyard::StringArray": _resolve_binary,
    "vineyard::LargeStringArray": _resolve_binary,
    "vineyard::BinaryArray": _resolve_binary,
    "vineyard::LargeBinaryArray": _resolve_binary,
    "vineyard::FixedSizeBinaryArray": _resolve_fixed_binary,
    "vineyard::FixedWidthArray": _resolve_fixed_width,
    "vineyard::ListArray": _resolve_list,
    "vineyard::LargeListArray": _resolve_list,
    "vineyard::FixedSizeListArray": _resolve_fixed_size_list,
    "vineyard::StructArray": _resolve_struct,
    "vineyard::DictionaryArray": _resolve_dictionary,
    "vineyard::arrow::IPCArray": _resolve_ipc,
}


def resolve_array(obj: Any, resolver: Any = None, **kw: Any) -> pa.Array:
    """The Arrow array stored in ``obj`` (zero-copy over IPC).

    Raises
    ------
    UnknownTypeError
        ``obj`` is not an Arrow array this module knows.
    """
    typename = obj.meta.typename
    family = typename.split("<", 1)[0]
    if family == "vineyard::ChunkedArray":
        return resolve_chunked_array(obj)
    resolve = _ARRAYS.get(family)
    if resolve is None:
        raise UnknownTypeError(f"{typename!r} is not an Arrow array type")
    return resolve(obj)


def resolve_chunked_array(obj: Any, resolver: Any = None, **kw: Any) -> pa.ChunkedArray:
    """The chunked array stored in ``obj``; each chunk zero-copy."""
    meta = obj.meta
    chunks = [resolve_array(obj.member(f"chunks_-{i}")) for i in range(int(meta["chunks_-size"]))]
    return pa.chunked_array(chunks, type=_decode_type(meta["type_"]))


@functools.lru_cache(maxsize=256)
def _schema_from_text(text: str) -> pa.Schema:
    raw = json.loads(text)
    data = bytes(raw["bytes"] if isinstance(raw, dict) else raw)
    return pa.ipc.read_schema(pa.py_buffer(data))


def resolve_schema(obj: Any, resolver: Any = None, **kw: Any) -> pa.Schema:
    """The schema stored in ``obj``: upstream's ``schema_binary_`` or an older ``buffer_``."""
    meta = obj.meta
    if "schema_binary_" in meta:
        return _schema_from_text(meta["schema_binary_"])
    return pa.ipc.read_schema(pa.py_buffer(obj.member("buffer_")))


def resolve_record_batch(obj: Any, resolver: Any = None, **kw: Any) -> pa.RecordBatch:
    """The record batch stored in ``obj``; columns are zero-copy."""
    meta = obj.meta
    schema = resolve_schema(obj.member("schema_"))
    columns = [resolve_array(obj.member(f"__columns_-{i}")) for i in range(int(meta["__columns_-size"]))]
    return pa.RecordBatch.from_arrays(columns, schema=schema)


def resolve_table(obj: Any, resolver: Any = None, **kw: Any) -> pa.Table:
    """The table stored in ``obj`` (upstream's ``partitions_`` or older ``__batches_``)."""
    meta = obj.meta
    schema = resolve_schema(obj.member("schema_"))
    key = "partitions_" if "partitions_-size" in meta else "__batches_"
    batches = [resolve_record_batch(obj.member(f"{key}-{i}")) for i in range(int(meta[f"{key}-size"]))]
    return pa.Table.from_batches(batches, schema=schema)


def resolve_string_buffers(obj: Any) -> pa.Array:
    """The string (or binary) array written by :func:`build_string_buffers`."""
    return resolve_array(obj)


def register(builders: Any, resolvers: Any) -> None:
    """Register the Arrow builders and/or resolvers (either side may be ``None``)."""
    if builders is not None:
        builders.register(pa.Array, build_array)
        builders.register(pa.ChunkedArray, build_chunked_array)
        builders.register(pa.Schema, build_schema)
        builders.register(pa.RecordBatch, build_record_batch)
        builders.register(pa.Table, build_table)
        builders.register(pa.Buffer, build_buffer)
    if resolvers is not None:
        for prefix in _ARRAYS:
            resolvers.register(prefix, resolve_array)
        resolvers.register("vineyard::ChunkedArray", resolve_chunked_array)
        resolvers.register("vineyard::SchemaProxy", resolve_schema)
        resolvers.register("vineyard::RecordBatch", resolve_record_batch)
        resolvers.register("vineyard::Table", resolve_table)
