"""scipy.sparse matrices and arrays as ``vineyard::{CSR,CSC,COO,BSR,DIA}Matrix<T>``.

Loaded lazily (see :mod:`vineyard.data`) the first time a scipy value is put or a sparse
typename is resolved. ``T`` follows the tensor naming (``double`` for float64, ``int`` for
int32, ``float`` for float32, otherwise the numpy dtype name); upstream uses the numpy name
(``CSRMatrix<float64>``). Resolution matches by prefix, so both spellings resolve.

Layout (upstream's keys): ``value_type_`` (numpy dtype name), ``shape_`` (JSON), ``ndim``,
``nnz``, ``partition_index_`` (JSON, from ``put(..., partition_index=...)``), ``nbytes``,
and one ``vineyard::Tensor`` member per component array:

=========  ========================================  =====================================
format     members                                   extra keys
=========  ========================================  =====================================
CSR, CSC   ``data``, ``indices``, ``indptr``         ``has_sorted_indices``
BSR        ``data``, ``indices``, ``indptr``         ``blocksize`` (JSON), ``has_sorted_indices``
COO        ``data``, ``row``, ``col`` (2-D);         ``has_canonical_format``
           ``coords_-size``/``coords_-i`` (n-D)
DIA        ``data``, ``offsets``
=========  ========================================  =====================================

We also store ``container_``: ``"matrix"`` for the ``*_matrix`` classes, ``"array"`` for the
``*_array`` ones, so ``get`` returns the class that was put (objects without the key come
back as matrices, as upstream). Index arrays keep their dtype (int32 or int64) and, like
every component, come back as read-only zero-copy views; scipy operations that would sort
or deduplicate in place need a ``.copy()`` first.

``dok`` and ``lil`` formats (dictionary- and list-based, no flat buffers) are refused with a
``TypeError`` naming the conversion to use (``.tocsr()``), rather than silently coming back
as another class. Any other sparse class goes through the pickle fallback.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import scipy.sparse as sp

from vineyard.data.tensor import tensor_typename
from vineyard.meta import ObjectMeta

__all__ = ["register"]

# format -> (typename stem, component arrays)
_FORMATS: dict[str, tuple[str, tuple[str, ...]]] = {
    "csr": ("vineyard::CSRMatrix", ("data", "indices", "indptr")),
    "csc": ("vineyard::CSCMatrix", ("data", "indices", "indptr")),
    "bsr": ("vineyard::BSRMatrix", ("data", "indices", "indptr")),
    "coo": ("vineyard::COOMatrix", ("data", "row", "col")),
    "dia": ("vineyard::DIAMatrix", ("data", "offsets")),
}
_CLASSES: dict[tuple[str, str], type] = {
    (fmt, kind): getattr(sp, f"{fmt}_{kind}") for fmt in _FORMATS for kind in ("matrix", "array")
}


def _is_array(value: Any) -> bool:
    return isinstance(value, sp.sparray)


def build_sparse(client: Any, value: Any, builder: Any = None, partition_index: Any = None,
                 **kw: Any) -> ObjectMeta:
    """Build one of the five flat sparse formats (see the module docstring)."""
    fmt = value.format
    stem, components = _FORMATS[fmt]
    meta = ObjectMeta(global_=bool(kw.get("global_", False)))
    meta["typename"] = tensor_typename(value.dtype).replace("vineyard::Tensor", stem, 1)
    meta["value_type_"] = value.dtype.name
    meta["shape_"] = json.dumps([int(s) for s in value.shape])
    meta["ndim"] = int(value.ndim)
    meta["nnz"] = int(value.nnz)
    meta["container_"] = "array" if _is_array(value) else "matrix"
    meta["partition_index_"] = json.dumps([int(i) for i in (partition_index or [])])
    run = builder.run if builder is not None else (lambda c, v: c.put(v))
    if fmt == "coo" and value.ndim != 2:
        components = ("data",)
        meta["coords_-size"] = len(value.coords)
        for i, coord in enumerate(value.coords):
            meta.add_member(f"coords_-{i}", run(client, np.asarray(coord)))
    for name in components:
        meta.add_member(name, run(client, np.asarray(getattr(value, name))))
    if fmt in ("csr", "csc", "bsr"):
        meta["has_sorted_indices"] = bool(value.has_sorted_indices)
    if fmt == "bsr":
        meta["blocksize"] = json.dumps([int(b) for b in value.blocksize])
    if fmt == "coo":
        meta["has_canonical_format"] = bool(value.has_canonical_format)
    meta["nbytes"] = int(sum(np.asarray(getattr(value, n)).nbytes for n in components))
    return meta


def build_unsupported(client: Any, value: Any, **kw: Any) -> Any:
    """dok and lil formats have no flat buffers to share: refuse them clearly."""
    raise TypeError(
        f"scipy.sparse {type(value).__name__} cannot be stored in vineyard: convert it first, "
        "e.g. client.put(value.tocsr())"
    )


def _resolve_members(obj: Any, resolver: Any, names: tuple[str, ...]) -> list[np.ndarray]:
    return [resolver.run(obj.member(n)) for n in names]


def resolve_sparse(obj: Any, resolver: Any) -> Any:
    """The scipy sparse matrix or array of a ``vineyard::*Matrix`` object.

    Raises
    ------
    ValueError
        The typename is not one of the five sparse formats.
    """
    meta = obj.meta
    stem = meta.typename.split("<", 1)[0]
    fmt = next((f for f, (s, _) in _FORMATS.items() if s == stem), None)
    if fmt is None:
        raise ValueError(f"{obj.id!r} has typename {meta.typename!r}, not a scipy sparse format")
    kind = "array" if meta.get("container_") == "array" else "matrix"
    cls = _CLASSES[(fmt, kind)]
    shape = tuple(json.loads(meta["shape_"]))
    components = _FORMATS[fmt][1]
    if fmt == "coo" and "coords_-size" in meta:
        data = resolver.run(obj.member("data"))
        coords = tuple(resolver.run(obj.member(f"coords_-{i}")) for i in range(int(meta["coords_-size"])))
        value = cls((data, coords), shape=shape, copy=False)
        parts = {"data": data}
        value.coords = coords
    else:
        arrays = _resolve_members(obj, resolver, components)
        parts = dict(zip(components, arrays))
        if fmt == "coo":
            coords = (parts.pop("row"), parts.pop("col"))
            value = cls((parts["data"], coords), shape=shape, copy=False)
            value.coords = coords  # the row/col setters would cast to scipy's chosen dtype
        elif fmt == "dia":
            value = cls((parts["data"], parts["offsets"]), shape=shape, copy=False)
        else:
            value = cls((parts["data"], parts["indices"], parts["indptr"]), shape=shape, copy=False)
    # scipy may narrow the index dtype (int64 -> int32) or copy on construction: put back
    # the stored arrays so the round trip is exact and stays zero-copy
    for name, array in parts.items():
        setattr(value, name, array)
    if "has_sorted_indices" in meta:
        value.has_sorted_indices = bool(meta["has_sorted_indices"])
    if "has_canonical_format" in meta:
        value.has_canonical_format = bool(meta["has_canonical_format"])
    return value


def register(builders: Any, resolvers: Any) -> None:
    """Register the scipy sparse classes and the ``vineyard::*Matrix`` resolvers."""
    if builders is not None:
        for cls in _CLASSES.values():
            builders.register(cls, build_sparse)
        for name in ("dok_matrix", "dok_array", "lil_matrix", "lil_array"):
            builders.register(getattr(sp, name), build_unsupported)
    if resolvers is not None:
        for stem, _ in _FORMATS.values():
            resolvers.register(stem, resolve_sparse)
