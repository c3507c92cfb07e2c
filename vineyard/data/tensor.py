"""numpy arrays as ``vineyard::Tensor<T>``; global tensors over several instances.

Numeric, bool and datetime arrays are stored as one C-ordered blob and come back as
read-only views of shared memory (Fortran order is restored with a view, not a copy).
String arrays are stored as Arrow large-string buffers, other object arrays through pickle.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from vineyard.meta import ObjectMeta, PendingBlob

__all__ = ["make_global_tensor", "ndarray", "register"]

_CPP = {"int32": "int", "uint32": "uint32", "int64": "int64", "uint64": "uint64",
        "float32": "float", "float64": "double"}
_NUMPY = {"int": "int32", "float": "float32", "double": "float64", "string": "object",
          "std::string": "object", "object": "object"}


class ndarray(np.ndarray):  # noqa: N801 - upstream's name
    """The array ``get`` returns for a tensor: a plain ndarray subclass that can carry the
    ``__vineyard_ref`` attribute upstream code looks for."""


def _typename(dtype: np.dtype[Any]) -> str:
    return f"vineyard::Tensor<{_CPP.get(dtype.name, dtype.name)}>"


def build_ndarray(client: Any, value: np.ndarray, partition_index: Any = None, builder: Any = None, **kw: Any) -> ObjectMeta:
    meta = ObjectMeta(**{k: v for k, v in kw.items() if k == "global_"})
    meta["shape_"] = json.dumps([int(s) for s in value.shape])
    meta["partition_index_"] = json.dumps(list(partition_index) if partition_index is not None else [])
    if value.dtype.kind in "OUS":
        if value.dtype.kind in "US" or _all_str(value):
            from vineyard.data import arrow

            meta["typename"] = "vineyard::Tensor<std::string>"
            meta["value_type_"] = "string"
            meta["value_type_meta_"] = value.dtype.str
            meta["order_"] = "C"
            flat = np.ascontiguousarray(value).reshape(-1)
            meta.add_member("buffer_", arrow.build_string_buffers(client, flat))
            meta["nbytes"] = 0
            return meta
        from vineyard.data.pickle import build_pickle

        meta["typename"] = "vineyard::Tensor<object>"
        meta["value_type_"] = "object"
        meta["value_type_meta_"] = "|O"
        meta["order_"] = "C"
        meta.add_member("buffer_", build_pickle(client, value))
        meta["nbytes"] = 0
        return meta
    order = "F" if value.ndim > 1 and value.flags.f_contiguous and not value.flags.c_contiguous else "C"
    data = value.T if order == "F" else value  # a Fortran array's transpose is C-contiguous
    meta["typename"] = _typename(value.dtype)
    meta["value_type_"] = value.dtype.name
    meta["value_type_meta_"] = value.dtype.str
    meta["order_"] = order
    meta["nbytes"] = int(value.nbytes)
    meta.add_member("buffer_", PendingBlob(data))
    return meta


def _all_str(value: np.ndarray) -> bool:
    return all(isinstance(v, str) for v in value.flat)


def _dtype(meta: ObjectMeta) -> np.dtype[Any]:
    if "value_type_meta_" in meta:
        return np.dtype(meta["value_type_meta_"])
    name = meta["value_type_"]
    return np.dtype(_NUMPY.get(name, name))


def resolve_tensor(obj: Any, resolver: Any = None, **kw: Any) -> Any:
    meta = obj.meta
    shape = tuple(json.loads(meta["shape_"]))
    typename = meta.typename
    if typename == "vineyard::Tensor<std::string>":
        from vineyard.data import arrow

        strings = arrow.resolve_string_buffers(obj.member("buffer_"))
        return np.array(strings.to_pylist(), dtype=_dtype(meta) if meta.get("value_type_meta_", "|O")[1] in "US" else object).reshape(shape)
    if typename == "vineyard::Tensor<object>":
        from vineyard.data.pickle import resolve_pickle

        return resolve_pickle(obj.member("buffer_")).reshape(shape)
    dtype = _dtype(meta)
    order = meta.get("order_", "C")
    if order.startswith('"'):
        order = json.loads(order)
    blob = obj.member("buffer_")
    count = int(np.prod(shape)) if shape else 1
    if count == 0:
        array = np.zeros(shape, dtype=dtype)
        array.flags.writeable = False
        return array.view(ndarray)
    flat = np.frombuffer(blob, dtype=dtype, count=count)
    if order == "F":
        array = flat.reshape(shape[::-1]).T
    else:
        array = flat.reshape(shape)
    return array.view(ndarray)


def make_global_tensor(client: Any, blocks: list[Any], extra_meta: dict[str, Any] | None = None,
                       shape: Any = None, partition_shape: Any = None) -> ObjectMeta:
    """One ``vineyard::GlobalTensor`` over tensors that may live on several instances."""
    meta = ObjectMeta(global_=True)
    meta["typename"] = "vineyard::GlobalTensor"
    meta["shape_"] = json.dumps(list(shape) if shape is not None else [])
    meta["partition_shape_"] = json.dumps(list(partition_shape) if partition_shape is not None else [])
    meta["partitions_-size"] = len(blocks)
    for i, block in enumerate(blocks):
        meta.add_member(f"partitions_-{i}", block if not isinstance(block, int) else _as_id(block))
    for key, value in (extra_meta or {}).items():
        meta[key] = value
    meta = client.create_metadata(meta)
    client.persist(meta.id)
    return meta


def _as_id(value: int) -> Any:
    from vineyard.ids import ObjectID

    return ObjectID(value)


def register(builders: Any, resolvers: Any) -> None:
    if builders is not None:
        builders.register(np.ndarray, build_ndarray)
    if resolvers is not None:
        resolvers.register("vineyard::Tensor", resolve_tensor)
