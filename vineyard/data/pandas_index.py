"""pandas indexes, and the text form of labels (index names, column keys).

===========================  =================================================================
``vineyard::Index``          upstream: ``name`` (JSON), ``value_type_``, member ``value_`` (a
                             column object, see :mod:`vineyard.data.pandas_arrays`); plus
                             ``freq_`` for datetime-like indexes with a frequency
``vineyard::RangeIndex``     **ours** (upstream turns a RangeIndex into an Int64 index):
                             ``start_``, ``stop_``, ``step_``, ``name``
``vineyard::MultiIndex``     **ours**: ``names_`` (JSON list of labels), ``levels_-size``,
                             members ``levels_-i`` (indexes) and ``codes_-i`` (Tensors)
===========================  =================================================================

Labels are JSON (``json.dumps(name)`` as upstream for str, int, float, bool, None); tuples
become ``{"tuple": [...]}`` and anything else ``{"pickle": "<base64>"}``, so every hashable
label comes back equal and of the same type.
"""

from __future__ import annotations

import base64
import json
import pickle
from typing import Any

import numpy as np
import pandas as pd

from vineyard.data.pandas_arrays import build_column, resolve_column
from vineyard.data.tensor import build_ndarray, resolve_tensor
from vineyard.meta import ObjectMeta

__all__ = ["build_index", "decode_label", "encode_label", "resolve_index"]


def _plain_label(label: Any) -> Any:
    if isinstance(label, (np.integer, np.floating, np.bool_, np.str_)):
        label = label.item()  # numpy scalars compare equal to their Python values
    if label is None or type(label) in (str, int, float, bool):
        return label
    if isinstance(label, tuple):
        return {"tuple": [_plain_label(x) for x in label]}
    return {"pickle": base64.b64encode(pickle.dumps(label, protocol=5)).decode("ascii")}


def _from_plain(value: Any) -> Any:
    if isinstance(value, dict):
        if "tuple" in value:
            return tuple(_from_plain(x) for x in value["tuple"])
        if "pickle" in value:
            return pickle.loads(base64.b64decode(value["pickle"]))
    if isinstance(value, list):  # upstream wrote tuples as JSON lists
        return tuple(_from_plain(x) for x in value)
    return value


def encode_label(label: Any) -> str:
    """A label (column key, index or series name) as JSON text."""
    return json.dumps(_plain_label(label))


def decode_label(text: Any) -> Any:
    """The label :func:`encode_label` wrote (or upstream's ``json.dumps(name)``)."""
    if not isinstance(text, str):
        return text
    if text == "null":  # no name: the usual case
        return None
    try:
        return _from_plain(json.loads(text))
    except ValueError:  # not JSON: a bare name written by hand
        return text


def build_index(client: Any, index: pd.Index, builder: Any = None, **kw: Any) -> ObjectMeta:
    """The object for a pandas Index (RangeIndex and MultiIndex keep their class)."""
    meta = ObjectMeta(**{k: v for k, v in kw.items() if k == "global_"})
    if isinstance(index, pd.RangeIndex):
        meta["typename"] = "vineyard::RangeIndex"
        meta["name"] = encode_label(index.name)
        meta["start_"] = int(index.start)
        meta["stop_"] = int(index.stop)
        meta["step_"] = int(index.step)
        meta["nbytes"] = 0
        return meta
    if isinstance(index, pd.MultiIndex):
        meta["typename"] = "vineyard::MultiIndex"
        meta["names_"] = json.dumps([_plain_label(n) for n in index.names])
        meta["levels_-size"] = index.nlevels
        nbytes = 0
        for i, (level, codes) in enumerate(zip(index.levels, index.codes)):
            level_meta = build_index(client, level, builder=builder)
            codes_meta = build_ndarray(client, np.asarray(codes))
            meta.add_member(f"levels_-{i}", level_meta)
            meta.add_member(f"codes_-{i}", codes_meta)
            nbytes += level_meta.nbytes + codes_meta.nbytes
        meta["nbytes"] = nbytes
        return meta
    meta["typename"] = "vineyard::Index"
    meta["name"] = encode_label(index.name)
    meta["value_type_"] = str(index.dtype)
    freq = getattr(index, "freq", None)
    if freq is not None and not isinstance(index, pd.PeriodIndex):  # a period's freq is its dtype
        meta["freq_"] = freq.freqstr
    value = build_column(client, index._values, builder=builder)
    meta.add_member("value_", value)
    meta["nbytes"] = value.nbytes
    return meta


def resolve_index(obj: Any, resolver: Any = None, **kw: Any) -> pd.Index:
    """The pandas Index stored in ``obj``; values are zero-copy where columnar."""
    meta = obj.meta
    typename = meta.typename
    if typename == "vineyard::RangeIndex":
        return pd.RangeIndex(int(meta["start_"]), int(meta["stop_"]), int(meta["step_"]),
                             name=decode_label(meta.get("name")))
    if typename == "vineyard::MultiIndex":
        count = int(meta["levels_-size"])
        levels = [resolve_index(obj.member(f"levels_-{i}"), resolver) for i in range(count)]
        codes = [np.asarray(resolve_tensor(obj.member(f"codes_-{i}"), resolver)) for i in range(count)]
        names = [_from_plain(n) for n in json.loads(meta["names_"])]
        return pd.MultiIndex(levels=levels, codes=codes, names=names, verify_integrity=False)
    values = resolve_column(obj.member("value_"), resolver)
    name = decode_label(meta.get("name"))
    freq = meta.get("freq_")
    if freq is not None:
        klass = pd.DatetimeIndex if values.dtype.kind == "M" else pd.TimedeltaIndex
        return klass(values, freq=freq, name=name, copy=False)
    if isinstance(values, np.ndarray):
        # An explicit dtype stops pandas from inferring ``str`` for object arrays.
        return pd.Index(values, dtype=values.dtype, name=name, copy=False)
    return pd.Index(values, name=name, copy=False)
