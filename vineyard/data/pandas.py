"""pandas values: DataFrame, Series, Index and extension arrays; registration.

The layouts live in :mod:`vineyard.data.dataframe` (DataFrame, GlobalDataFrame),
:mod:`vineyard.data.pandas_index` (Index, RangeIndex, MultiIndex, labels) and
:mod:`vineyard.data.pandas_arrays` (column arrays). This module adds
``vineyard::Series`` — upstream's layout: ``name`` (JSON label), members ``index_`` and
``value_`` — and :func:`register`, which the data registry calls lazily.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from vineyard.data.dataframe import (
    build_dataframe,
    resolve_dataframe,
    resolve_global_dataframe,
)
from vineyard.data.pandas_arrays import build_column, mark_shared, resolve_column
from vineyard.data.pandas_index import build_index, decode_label, encode_label, resolve_index
from vineyard.meta import ObjectMeta

__all__ = ["build_series", "register", "resolve_series"]


def build_series(client: Any, value: pd.Series, builder: Any = None, **kw: Any) -> ObjectMeta:
    """The object for a Series: its name, index and values."""
    meta = ObjectMeta(**{k: v for k, v in kw.items() if k == "global_"})
    meta["typename"] = "vineyard::Series"
    meta["name"] = encode_label(value.name)
    index = build_index(client, value.index, builder=builder)
    values = build_column(client, value._values, builder=builder)
    meta.add_member("index_", index)
    meta.add_member("value_", values)
    meta["nbytes"] = values.nbytes
    return meta


def resolve_series(obj: Any, resolver: Any = None, **kw: Any) -> pd.Series:
    """The Series stored in ``obj``; values are zero-copy where columnar."""
    values = resolve_column(obj.member("value_"), resolver)
    index = resolve_index(obj.member("index_"), resolver)
    name = decode_label(obj.meta.get("name"))
    # An explicit dtype stops pandas from inferring ``str`` for object arrays.
    dtype = values.dtype if isinstance(values, np.ndarray) else None
    series = pd.Series(values, index=index, name=name, dtype=dtype, copy=False)
    mark_shared(series)
    return series


def register(builders: Any, resolvers: Any) -> None:
    """Register the pandas builders and/or resolvers (either side may be ``None``)."""
    if builders is not None:
        builders.register(pd.DataFrame, build_dataframe)
        builders.register(pd.Series, build_series)
        builders.register(pd.Index, build_index)
        builders.register(pd.api.extensions.ExtensionArray, build_column)
    if resolvers is not None:
        resolvers.register("vineyard::DataFrame", resolve_dataframe)
        resolvers.register("vineyard::GlobalDataFrame", resolve_global_dataframe)
        resolvers.register("vineyard::Series", resolve_series)
        resolvers.register("vineyard::Index", resolve_index)
        resolvers.register("vineyard::RangeIndex", resolve_index)
        resolvers.register("vineyard::MultiIndex", resolve_index)
        resolvers.register("vineyard::SparseArray", resolve_column)
        resolvers.register("vineyard::pandas::", resolve_column)
