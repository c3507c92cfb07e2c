"""numpy arrays as ``vineyard::Tensor<T>``; global tensors over several instances.

Layout (as upstream): ``shape_`` and ``partition_index_`` (JSON lists), ``order_`` (JSON
string ``"C"``/``"F"``), ``value_type_`` (numpy dtype name), ``value_type_meta_``
(``dtype.str``), ``nbytes`` and the member ``buffer_``. ``T`` is ``int`` for int32,
``float`` for float32, ``double`` for float64, ``uint32``, ``int64``, ``uint64``, and the
numpy dtype name otherwise (``bool``, ``int8``, ``complex128``, ``datetime64[ns]``...).

* Numeric, bool, complex, datetime64/timedelta64, fixed-width bytes (``S``) and structured
  arrays are one blob of raw items and come back as read-only views of it: zero-copy over
  IPC, one private copy over RPC. Byte order is kept (``value_type_meta_``); structured
  dtypes also store ``value_type_descr_`` (the dtype's descr as JSON).
* A Fortran-ordered array is stored column-major and comes back Fortran-ordered *without*
  a copy. Upstream stores a row-major copy and restores the order with
  ``np.asfortranarray`` (a copy on every ``get``); our blob layout differs accordingly.
* Non-contiguous arrays (steps, transposes of C arrays) are stored compacted, C order.
* Unicode (``U``) arrays and object arrays holding only ``str`` are
  ``vineyard::Tensor<std::string>`` over Arrow large-string buffers (see
  :mod:`vineyard.data.arrow`); other object arrays are ``vineyard::Tensor<object>`` over a
  pickled member (refused when pickle is disabled).
* Empty arrays store no blob and come back as read-only zeros of the right dtype and shape.

Putting an array that already is (a whole view of) a blob of this client's store reuses
the blob instead of copying it again.
"""

from __future__ import annotations

import functools
import json
import math
from typing import Any

import numpy as np
from numpy.lib import format as npformat

from vineyard.ids import ObjectID
from vineyard.meta import Object, ObjectMeta, PendingBlob

__all__ = [
    "build_ndarray", "make_global_tensor", "ndarray", "register", "resolve_tensor", "tensor_spec",
    "tensor_typename", "tensor_view",
]

_CPP = {"int32": "int", "uint32": "uint32", "int64": "int64", "uint64": "uint64",
        "float32": "float", "float64": "double"}
_NUMPY = {"int": "int32", "float": "float32", "double": "float64", "string": "object",
          "std::string": "object", "object": "object"}
STRING_TYPENAME = "vineyard::Tensor<std::string>"
OBJECT_TYPENAME = "vineyard::Tensor<object>"


class ndarray(np.ndarray):  # lower-case: upstream's public name
    """The array ``get`` returns for a tensor: a plain ndarray subclass (upstream's name),
    so that attributes can be attached to it."""


def tensor_typename(dtype: np.dtype[Any]) -> str:
    """``vineyard::Tensor<T>`` for a numpy dtype, with upstream's C++ names."""
    return f"vineyard::Tensor<{_CPP.get(dtype.name, dtype.name)}>"


def _json_list(value: Any, what: str) -> str:
    try:
        return json.dumps([int(v) for v in value])
    except (TypeError, ValueError):
        raise TypeError(f"{what} must be a sequence of integers, not {value!r}") from None


def build_ndarray(client: Any, value: np.ndarray, partition_index: Any = None, builder: Any = None,
                  **kw: Any) -> ObjectMeta:
    """Build a ``vineyard::Tensor`` (see the module docstring for the layout).

    Raises
    ------
    TypeError
        ``partition_index`` is not a sequence of integers.
    UnknownTypeError
        An object array would need pickle, and pickle is disabled.
    """
    meta = ObjectMeta(global_=bool(kw.get("global_", False)))
    meta["shape_"] = "[" + ", ".join(str(int(s)) for s in value.shape) + "]"  # as json.dumps writes it
    meta["partition_index_"] = "[]" if partition_index is None else _json_list(partition_index, "partition_index")
    dtype = value.dtype
    if dtype.kind == "U" or (dtype.kind == "O" and value.size and _all_str(value)):
        return _build_strings(client, value, meta)
    if dtype.hasobject:
        from vineyard.data.pickle import build_pickle

        meta["typename"] = OBJECT_TYPENAME
        meta["value_type_"] = "object"
        meta["value_type_meta_"] = "|O"
        meta["order_"] = json.dumps("C")
        meta.add_member("buffer_", build_pickle(client, value, builder=builder))
        meta["nbytes"] = 0
        return meta
    order = "F" if value.ndim > 1 and value.flags.f_contiguous and not value.flags.c_contiguous else "C"
    typename, name, text = _dtype_names(dtype)
    meta["typename"] = typename
    meta["value_type_"] = name
    meta["value_type_meta_"] = text
    if dtype.fields is not None:
        meta["value_type_descr_"] = json.dumps(npformat.dtype_to_descr(dtype))
    meta["order_"] = '"F"' if order == "F" else '"C"'  # JSON strings, as upstream
    meta["nbytes"] = int(value.nbytes)
    # a Fortran array's transpose is a C-contiguous view of the same bytes: no copy
    meta.add_member("buffer_", PendingBlob(value.T if order == "F" else value))
    return meta


@functools.lru_cache(maxsize=256)
def _dtype_names(dtype: np.dtype[Any]) -> tuple[str, str, str]:
    """Typename, ``value_type_`` and ``value_type_meta_`` of a dtype (``dtype.name`` is slow)."""
    return tensor_typename(dtype), dtype.name, dtype.str


def _build_strings(client: Any, value: np.ndarray, meta: ObjectMeta) -> ObjectMeta:
    from vineyard.data import arrow

    meta["typename"] = STRING_TYPENAME
    meta["value_type_"] = "string"
    meta["value_type_meta_"] = value.dtype.str
    meta["order_"] = json.dumps("C")
    flat = np.ascontiguousarray(value).reshape(-1)
    meta.add_member("buffer_", arrow.build_string_buffers(client, flat))
    meta["nbytes"] = 0
    return meta


def _all_str(value: np.ndarray) -> bool:
    return all(type(v) is str for v in value.flat)


def _descr(node: Any) -> Any:
    """A dtype descr read back from JSON: the tuples JSON turned into lists, restored."""
    if isinstance(node, str):
        return node
    fields = []
    for name, fmt, *shape in node:
        title_name = tuple(name) if isinstance(name, list) else name  # (title, name) pairs
        fields.append((title_name, _descr(fmt), *(tuple(s) for s in shape)))
    return fields


def _dtype(meta: ObjectMeta) -> np.dtype[Any]:
    if "value_type_descr_" in meta:
        return npformat.descr_to_dtype(_descr(json.loads(meta["value_type_descr_"])))
    return _plain_dtype(meta.get("value_type_meta_"), meta["value_type_"])


@functools.lru_cache(maxsize=512)
def _plain_dtype(type_meta: str | None, type_name: str) -> np.dtype[Any]:
    if type_meta is not None:
        return np.dtype(type_meta)
    return np.dtype(_NUMPY.get(type_name, type_name))


@functools.lru_cache(maxsize=4096)
def _shape(text: str) -> tuple[int, ...]:
    return tuple(int(s) for s in json.loads(text))


@functools.lru_cache(maxsize=16)
def _order_of(text: str) -> str:
    # upstream stores JSON ('"C"'); accept a bare letter too
    return str(json.loads(text) if text.startswith('"') else text)


def _order(meta: ObjectMeta) -> str:
    return _order_of(meta.get("order_", "C"))


def tensor_spec(tree: dict[str, Any]) -> tuple[np.dtype[Any], tuple[int, ...]] | None:
    """dtype and shape of a plain numeric tensor (C order, or 1-D) with a blob, or None
    when it needs :func:`resolve_tensor` (strings, objects, structured dtypes, Fortran)."""
    typename = tree.get("typename")
    if typename in (STRING_TYPENAME, OBJECT_TYPENAME) or "value_type_descr_" in tree:
        return None
    if type(tree.get("buffer_")) is not dict:
        return None
    try:
        shape = _shape(tree["shape_"])
        dtype = _plain_dtype(tree.get("value_type_meta_"), tree["value_type_"])
        order = _order_of(tree.get("order_", "C"))
    except (KeyError, TypeError, ValueError):
        return None
    if len(shape) != 1 and order != "C":
        return None
    return dtype, shape


def tensor_view(tree: dict[str, Any], buffers: dict[int, Any]) -> np.ndarray | None:
    """The array of a plain numeric tensor straight from its metadata tree and blob, or
    ``None`` when it needs :func:`resolve_tensor` (see :func:`tensor_spec`; also empty,
    missing or short blobs)."""
    spec = tensor_spec(tree)
    if spec is None:
        return None
    dtype, shape = spec
    blob = buffers.get(tree["buffer_"].get("id"))
    count = shape[0] if len(shape) == 1 else math.prod(shape)
    if blob is None or count == 0 or len(blob) < count * dtype.itemsize:
        return None
    return np.frombuffer(blob, dtype=dtype, count=count).reshape(shape)


def resolve_tensor(obj: Any, resolver: Any = None, **kw: Any) -> Any:
    """The array of a ``vineyard::Tensor``: a read-only view of the blob when numeric.

    Raises
    ------
    ValueError
        The blob is smaller than the shape and dtype need.
    """
    meta = obj.meta
    shape = _shape(meta["shape_"])
    typename = meta.typename
    if typename == STRING_TYPENAME:
        from vineyard.data import arrow

        strings = arrow.resolve_string_buffers(obj.member("buffer_")).to_pylist()
        kind = str(meta.get("value_type_meta_", "|O"))
        dtype = np.dtype(kind) if kind[1:2] == "U" else np.dtype(object)
        out = np.empty(len(strings), dtype=dtype)
        out[:] = strings  # element-wise: np.array() would try to nest sequences
        return out.reshape(shape)
    if typename == OBJECT_TYPENAME:
        from vineyard.data.pickle import resolve_pickle

        return resolve_pickle(obj.member("buffer_"), resolver).reshape(shape)
    dtype = _dtype(meta)
    count = math.prod(shape)
    if count == 0:
        empty = np.zeros(shape, dtype=dtype)
        empty.flags.writeable = False
        return empty.view(ndarray)
    blob = obj.member("buffer_")
    if len(blob) < count * dtype.itemsize:
        raise ValueError(
            f"tensor {obj.id!r} needs {count * dtype.itemsize} bytes for shape {shape} of {dtype}, "
            f"but its blob has {len(blob)}"
        )
    flat = np.frombuffer(blob, dtype=dtype, count=count)
    array = flat.reshape(shape[::-1]).T if _order(meta) == "F" else flat.reshape(shape)
    return array.view(ndarray)


def _block_member(block: Any) -> Any:
    if isinstance(block, (ObjectMeta, Object, ObjectID)):
        return block
    if isinstance(block, (int, np.integer)) and not isinstance(block, bool):
        return ObjectID(int(block))
    if isinstance(block, str):
        return ObjectID(block)
    raise TypeError(f"a global tensor's block must be an ObjectID, ObjectMeta or Object, not {type(block).__name__}")


def make_global_tensor(client: Any, blocks: list[Any], extra_meta: dict[str, Any] | None = None,
                       shape: Any = None, partition_shape: Any = None) -> ObjectMeta:
    """One persisted ``vineyard::GlobalTensor`` over tensors that may live on several instances.

    Parameters
    ----------
    client
        Creates and persists the global object (its blocks are persisted with it).
    blocks
        The partitions: ids (``ObjectID``, int or ``'o…'``), ``ObjectMeta`` or ``Object``.
    extra_meta
        More keys to set on the metadata.
    shape, partition_shape
        The global shape and the grid of partitions (stored as JSON, ``[]`` by default).

    Returns
    -------
    ObjectMeta
        The created object's metadata (``partitions_-size``, members ``partitions_-i``).

    Raises
    ------
    TypeError
        A block is not an id, metadata or object.
    """
    meta = ObjectMeta(global_=True)
    meta["typename"] = "vineyard::GlobalTensor"
    meta["shape_"] = _json_list(shape if shape is not None else [], "shape")
    meta["partition_shape_"] = _json_list(partition_shape if partition_shape is not None else [], "partition_shape")
    meta["partitions_-size"] = len(blocks)
    for i, block in enumerate(blocks):
        meta.add_member(f"partitions_-{i}", _block_member(block))
    for key, value in (extra_meta or {}).items():
        meta[key] = value
    created = client.create_metadata(meta)
    client.persist(created.id)
    # fetch it back: the reply reflects the persisted state and the blocks' full metadata
    return client.get_meta(created.id)  # type: ignore[no-any-return]


def register(builders: Any, resolvers: Any) -> None:
    """Register numpy arrays and the ``vineyard::Tensor`` resolver."""
    if builders is not None:
        builders.register(np.ndarray, build_ndarray)
    if resolvers is not None:
        resolvers.register("vineyard::Tensor", resolve_tensor)
