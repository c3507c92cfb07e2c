"""pandas column arrays (numpy arrays and extension arrays) as vineyard objects.

One function pair serves DataFrame columns, Series values and Index values:
:func:`build_column` and :func:`resolve_column`. Layouts, chosen by the array's type:

=============================================  =============================================
numpy arrays (numbers, bool, naive            ``vineyard::Tensor<T>`` (upstream), so
``datetime64``/``timedelta64``, objects)      ``meta['__values_-value-0']['buffer_']`` works
tz-aware datetimes                            ``vineyard::pandas::DatetimeTZArray``: ``dtype_``,
                                              member ``values_`` (UTC ``datetime64`` Tensor)
``Categorical``                               ``vineyard::pandas::Categorical``: ``ordered_``,
                                              members ``codes_`` (Tensor), ``categories_``
                                              (an Index object)
nullable ``Int64``/``Float64``/``boolean`` …  ``vineyard::pandas::MaskedArray<Int64>``:
                                              ``dtype_``, members ``values_``, ``mask_``
Arrow-backed (``str``, ``string[pyarrow]``,   ``vineyard::pandas::ArrowArray``: ``kind_``
``ArrowDtype``), ``string[python]``           (``arrow``/``string``), ``storage_``,
                                              ``na_value_``, member ``values_`` (a
                                              ``vineyard::ChunkedArray``)
``PeriodArray``                               ``vineyard::pandas::PeriodArray``: ``dtype_``,
                                              member ``values_`` (int64 ordinals)
``SparseArray``                               ``vineyard::SparseArray<float64>`` (upstream's
                                              fields, plus ``fill_value_``)
anything else (intervals, third-party)        ``vineyard::PickleBuffer`` of the array
=============================================  =============================================

Everything but the pickle fallback and ``string[python]`` comes back zero-copy over IPC.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from vineyard.data import arrow
from vineyard.data.pickle import build_pickle, resolve_pickle
from vineyard.data.tensor import build_ndarray, resolve_tensor
from vineyard.errors import UnknownTypeError
from vineyard.meta import ObjectMeta

__all__ = ["build_column", "mark_shared", "resolve_column"]

_NA_VALUES = {"nan": np.nan, "NA": pd.NA}


def build_column(client: Any, values: Any, builder: Any = None, **kw: Any) -> ObjectMeta:
    """The object for one column: a 1-D numpy array or a pandas ExtensionArray.

    Buffers are passed on as they are (no copies here), so a column read back from the
    store and put again reuses its blobs.

    Raises
    ------
    UnknownTypeError
        The column needs the pickle fallback (object values, an unknown extension array)
        and pickle is disabled.
    """
    if isinstance(values, np.ndarray):
        return build_ndarray(client, values, builder=builder)
    if isinstance(values, (pd.arrays.DatetimeArray, pd.arrays.TimedeltaArray)):
        if getattr(values.dtype, "tz", None) is None:
            return build_ndarray(client, values._ndarray)
        return _build_with_dtype(client, "vineyard::pandas::DatetimeTZArray", values, values._ndarray, builder)
    if isinstance(values, pd.Categorical):
        return _build_categorical(client, values, builder)
    if isinstance(values, pd.arrays.PeriodArray):
        return _build_with_dtype(client, "vineyard::pandas::PeriodArray", values, values.asi8, builder)
    if isinstance(values, pd.arrays.SparseArray):
        return _build_sparse(client, values, builder)
    if isinstance(values, (pd.arrays.IntegerArray, pd.arrays.FloatingArray, pd.arrays.BooleanArray)):
        return _build_masked(client, values, builder)
    if isinstance(values, (pd.arrays.ArrowExtensionArray, pd.arrays.StringArray)):
        return _build_arrow(client, values, builder)
    if type(values) is pd.arrays.NumpyExtensionArray:  # subclasses (StringArray) are above
        return build_ndarray(client, values.to_numpy(), builder=builder)
    return build_pickle(client, values, builder=builder)


def _dtype_text(dtype: Any) -> str | None:
    """``str(dtype)`` if pandas parses it back to the same dtype, else None."""
    text = str(dtype)
    try:
        return text if pd.api.types.pandas_dtype(text) == dtype else None
    except (TypeError, ValueError):
        return None


def _build_with_dtype(client: Any, typename: str, values: Any, data: np.ndarray, builder: Any) -> ObjectMeta:
    text = _dtype_text(values.dtype)
    if text is None:  # e.g. a time zone pandas cannot name: keep it exact through pickle
        return build_pickle(client, values, builder=builder)
    meta = ObjectMeta()
    meta["typename"] = typename
    meta["dtype_"] = text
    member = build_ndarray(client, data)
    meta.add_member("values_", member)
    meta["nbytes"] = member.nbytes
    return meta


def _build_categorical(client: Any, values: pd.Categorical, builder: Any) -> ObjectMeta:
    from vineyard.data.pandas_index import build_index

    meta = ObjectMeta()
    meta["typename"] = "vineyard::pandas::Categorical"
    meta["ordered_"] = bool(values.ordered)
    codes = build_ndarray(client, values.codes)  # a read-only view of the codes, no copy
    categories = build_index(client, values.categories, builder=builder)
    meta.add_member("codes_", codes)
    meta.add_member("categories_", categories)
    meta["nbytes"] = codes.nbytes + categories.nbytes
    return meta


def _build_masked(client: Any, values: Any, builder: Any) -> ObjectMeta:
    meta = ObjectMeta()
    meta["typename"] = f"vineyard::pandas::MaskedArray<{values.dtype.name}>"
    meta["dtype_"] = values.dtype.name
    data = build_ndarray(client, values._data)
    mask = build_ndarray(client, values._mask)
    meta.add_member("values_", data)
    meta.add_member("mask_", mask)
    meta["nbytes"] = data.nbytes + mask.nbytes
    return meta


def _build_arrow(client: Any, values: Any, builder: Any) -> ObjectMeta:
    meta = ObjectMeta()
    meta["typename"] = "vineyard::pandas::ArrowArray"
    dtype = values.dtype
    if isinstance(dtype, pd.StringDtype):
        na_value = "NA" if dtype.na_value is pd.NA else "nan"
        if na_value == "nan" and not (isinstance(dtype.na_value, float) and math.isnan(dtype.na_value)):
            return build_pickle(client, values, builder=builder)
        meta["kind_"] = "string"
        meta["storage_"] = dtype.storage
        meta["na_value_"] = na_value
    else:
        meta["kind_"] = "arrow"
    data = values.__arrow_array__()  # the backing ChunkedArray itself for Arrow storage
    if isinstance(data, pa.Array):
        data = pa.chunked_array([data])
    member = arrow.build_chunked_array(client, data)
    meta.add_member("values_", member)
    meta["nbytes"] = member.nbytes
    return meta


def _build_sparse(client: Any, values: pd.arrays.SparseArray, builder: Any) -> ObjectMeta:
    fill = values.fill_value
    if isinstance(fill, np.generic):
        fill = fill.item()
    subtype = values.dtype.subtype
    if not isinstance(fill, (bool, int, float)) or subtype.kind not in "biufc":
        return build_pickle(client, values, builder=builder)
    meta = ObjectMeta()
    meta["typename"] = f"vineyard::SparseArray<{subtype.name}>"
    meta["value_type_"] = subtype.name
    meta["fill_value_"] = fill
    index = values.sp_index
    meta["sp_index_size"] = int(index.length)
    meta["sp_index_name"] = values.kind
    indices = index.indices if values.kind == "integer" else index.to_int_index().indices
    positions = build_ndarray(client, indices)
    sp_values = build_ndarray(client, values.sp_values)
    meta.add_member("sp_index", positions)
    meta.add_member("sp_values", sp_values)
    meta["nbytes"] = positions.nbytes + sp_values.nbytes
    return meta


# -- resolvers -----------------------------------------------------------------------------
def _ndarray(obj: Any, resolver: Any = None) -> np.ndarray:
    return np.asarray(resolve_tensor(obj, resolver)).view(np.ndarray)


def _resolve_datetime_tz(obj: Any, resolver: Any = None) -> Any:
    dtype = pd.api.types.pandas_dtype(obj.meta["dtype_"])
    return pd.arrays.DatetimeArray._simple_new(_ndarray(obj.member("values_"), resolver), dtype=dtype)


def _resolve_period(obj: Any, resolver: Any = None) -> Any:
    dtype = pd.api.types.pandas_dtype(obj.meta["dtype_"])
    return pd.arrays.PeriodArray(_ndarray(obj.member("values_"), resolver), dtype=dtype, copy=False)


def _resolve_categorical(obj: Any, resolver: Any = None) -> pd.Categorical:
    from vineyard.data.pandas_index import resolve_index

    categories = resolve_index(obj.member("categories_"), resolver)
    dtype = pd.CategoricalDtype(categories, ordered=bool(obj.meta["ordered_"]))
    codes = _ndarray(obj.member("codes_"), resolver)
    # The codes were valid when stored; validating them again would read every one.
    return pd.Categorical.from_codes(codes, dtype=dtype, validate=False)


def _resolve_masked(obj: Any, resolver: Any = None) -> Any:
    dtype = pd.api.types.pandas_dtype(obj.meta["dtype_"])
    data = _ndarray(obj.member("values_"), resolver)
    mask = _ndarray(obj.member("mask_"), resolver)
    return dtype.construct_array_type()(data, mask, copy=False)


def _resolve_arrow(obj: Any, resolver: Any = None) -> Any:
    meta = obj.meta
    data = arrow.resolve_array(obj.member("values_"))
    if meta["kind_"] != "string":
        return pd.arrays.ArrowExtensionArray(data)
    dtype = pd.StringDtype(storage=meta["storage_"], na_value=_NA_VALUES[meta["na_value_"]])
    if dtype.storage == "pyarrow" and pa.types.is_large_string(data.type):
        return pd.arrays.ArrowStringArray(data, dtype=dtype)
    return dtype.__from_arrow__(data)  # python storage: a copy into Python strings


def _resolve_sparse(obj: Any, resolver: Any = None) -> pd.arrays.SparseArray:
    meta = obj.meta
    length = int(meta["sp_index_size"])
    indices = _ndarray(obj.member("sp_index"), resolver)
    kind = meta.get("sp_index_name", "integer")
    subtype = np.dtype(meta["value_type_"])
    fill_value = meta.get("fill_value_", np.nan)
    values = _ndarray(obj.member("sp_values"), resolver)
    if hasattr(pd.arrays.SparseArray, "from_indices"):  # pandas >= 3.0
        return pd.arrays.SparseArray.from_indices(
            values, indices, length, fill_value=fill_value, kind=kind, dtype=subtype
        )
    dtype = pd.SparseDtype(subtype, fill_value)
    from pandas._libs.sparse import IntIndex

    index = IntIndex(length, indices.astype(np.int32))
    if kind == "block":
        index = index.to_block_index()
    return pd.arrays.SparseArray(values, sparse_index=index, dtype=dtype)


_RESOLVERS = {
    "vineyard::pandas::DatetimeTZArray": _resolve_datetime_tz,
    "vineyard::pandas::PeriodArray": _resolve_period,
    "vineyard::pandas::Categorical": _resolve_categorical,
    "vineyard::pandas::MaskedArray": _resolve_masked,
    "vineyard::pandas::ArrowArray": _resolve_arrow,
    "vineyard::SparseArray": _resolve_sparse,
}


def resolve_column(obj: Any, resolver: Any = None, **kw: Any) -> Any:
    """The column array stored in ``obj``: a 1-D numpy array or an ExtensionArray.

    Raises
    ------
    UnknownTypeError
        ``obj`` holds something that is not an array.
    """
    typename = obj.meta.typename
    if typename.startswith("vineyard::Tensor<"):
        return _ndarray(obj, resolver)
    if typename == "vineyard::PickleBuffer":
        return resolve_pickle(obj, resolver)
    resolve = _RESOLVERS.get(typename.split("<", 1)[0])
    if resolve is not None:
        return resolve(obj, resolver)
    # Someone else's layout (an Arrow array from upstream, a user type): ask the registry.
    value = resolver.run(obj) if resolver is not None else arrow.resolve_array(obj)
    if isinstance(value, (pa.Array, pa.ChunkedArray)):
        return pd.arrays.ArrowExtensionArray(value)
    if isinstance(value, (np.ndarray, pd.api.extensions.ExtensionArray)):
        return value
    raise UnknownTypeError(f"a column of type {typename!r} resolved to {type(value).__name__}, not an array")


_SHARED: list[Any] = []


def mark_shared(value: pd.DataFrame | pd.Series) -> None:
    """Make pandas copy a store-backed column before its first in-place write.

    Columns over shared memory are read-only, and pandas writes into a block in place when
    it believes nobody else references it. Registering an immortal extra reference on every
    block's copy-on-write tracker makes ``df.loc[...] = x`` copy that block first, as it
    would for any shared block. If pandas' internals change, writes raise (as upstream's).
    """
    try:
        if not _SHARED:
            from pandas.core.internals.api import _make_block

            _SHARED.append(_make_block(np.empty((1, 0)), np.array([0])))
        for block in value._mgr.blocks:
            block.refs.add_reference(_SHARED[0])
    except (AttributeError, ImportError, TypeError):  # pragma: no cover - other pandas versions
        pass
