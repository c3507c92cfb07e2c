"""pandas DataFrames, and global dataframes whose partitions live on several instances.

``vineyard::DataFrame`` keeps upstream's layout: ``columns_`` (JSON list of column labels),
member ``index_``, ``__values_-size``, ``__values_-key-i`` (JSON label) and
``__values_-value-i`` (one member per column, see :mod:`vineyard.data.pandas_arrays`),
``partition_index_row_``/``partition_index_column_`` (from ``partition_index=[row, col]``,
default -1) and ``row_batch_index_`` (default 0). Where the keys alone would not give the
columns back exactly (a RangeIndex, a name, a dtype of their own) we add member
``columns_index_``, the columns as an Index object; ``nbytes`` is the columns' total
(upstream writes 0).

A DataFrame block's columns are stored as adjacent blobs (one allocation, one copy), and
``get`` puts them back together as one 2-D block over shared memory, without a copy; other
columns come back one block each. The first in-place write to a block copies it
(copy-on-write).

``vineyard::GlobalDataFrame`` (:func:`make_global_dataframe`) resolves, as upstream, to
the list of the partitions that are local to the client's instance.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import pandas as pd

from vineyard.data.pandas_arrays import build_column, mark_shared, resolve_column
from vineyard.data.pandas_index import build_index, decode_label, encode_label, resolve_index
from vineyard.data.tensor import tensor_spec, tensor_view
from vineyard.ids import ObjectID
from vineyard.meta import ObjectMeta

__all__ = ["build_dataframe", "make_global_dataframe", "resolve_dataframe", "resolve_global_dataframe"]


def _column_arrays(df: pd.DataFrame) -> list[Any]:
    """Each column's array (numpy or extension), as views of the frame's blocks."""
    try:
        arrays: list[Any] = [None] * df.shape[1]
        for block in df._mgr.blocks:
            values = block.values
            for j, loc in enumerate(block.mgr_locs.as_array):
                arrays[loc] = values[j] if values.ndim == 2 else values
        return arrays
    except AttributeError:  # pragma: no cover - pandas without a block manager
        return [df.iloc[:, i]._values for i in range(df.shape[1])]


def build_dataframe(
    client: Any,
    value: pd.DataFrame,
    partition_index: Any = None,
    row_batch_index: int | None = None,
    builder: Any = None,
    **kw: Any,
) -> ObjectMeta:
    """The object for a DataFrame: an index, a columns index and one member per column.

    Parameters
    ----------
    partition_index
        ``[row, column]`` of this frame in a global dataframe (default ``[-1, -1]``).
    row_batch_index
        Its position among row batches (default 0); global dataframes check the order.
    """
    meta = ObjectMeta(**{k: v for k, v in kw.items() if k == "global_"})
    meta["typename"] = "vineyard::DataFrame"
    keys = [encode_label(label) for label in value.columns]
    meta["columns_"] = "[" + ",".join(keys) + "]"
    index = build_index(client, value.index, builder=builder)
    meta.add_member("index_", index)
    if not _columns_from_keys(tuple(keys)).identical(value.columns):
        # labels alone do not say it all (a RangeIndex, a name, a dtype of their own)
        meta.add_member("columns_index_", build_index(client, value.columns, builder=builder))
    nbytes = 0
    for i, (key, array) in enumerate(zip(keys, _column_arrays(value))):
        column = build_column(client, array, builder=builder)
        meta[f"__values_-key-{i}"] = key
        meta.add_member(f"__values_-value-{i}", column)
        nbytes += column.nbytes
    meta["__values_-size"] = len(keys)
    row, col = [*(partition_index if partition_index is not None else ()), -1, -1][:2]
    meta["partition_index_row_"] = int(row)
    meta["partition_index_column_"] = int(col)
    meta["row_batch_index_"] = int(row_batch_index or 0)
    meta["nbytes"] = nbytes
    return meta


@functools.lru_cache(maxsize=256)
def _columns_from_keys(keys: tuple[str, ...]) -> pd.Index:
    """The columns Index the JSON keys describe (cached: frames often share their columns;
    callers get a copy, since an Index's name can be set in place)."""
    return pd.Index([decode_label(key) for key in keys])


def _own_copy(index: pd.Index) -> pd.Index:
    """A new Index object over the same (immutable) values: its name is its own."""
    view = getattr(index, "_view", None)
    return view() if view is not None else index.copy()


def resolve_dataframe(obj: Any, resolver: Any = None, **kw: Any) -> pd.DataFrame:
    """The DataFrame stored in ``obj``, one block per column over shared memory."""
    from pandas.api.internals import create_dataframe_from_blocks

    meta = obj.meta
    tree, buffers = meta._tree, meta._buffers
    count = int(meta["__values_-size"])
    index = resolve_index(obj.member("index_"), resolver)
    if "columns_index_" in meta:
        columns = resolve_index(obj.member("columns_index_"), resolver)
    else:  # the keys say it all (and upstream writes only those)
        columns = _own_copy(_columns_from_keys(tuple(tree[f"__values_-key-{i}"] for i in range(count))))
    client = meta._client
    views = getattr(getattr(client, "_t", None), "_views", {})
    blocks: list[tuple[Any, np.ndarray]] = []
    i = 0
    while i < count:
        run = _column_run(tree, i, count, views) if views else None
        if run is not None:
            block, j = run
            blocks.append((block, np.arange(i, j, dtype=np.intp)))
            i = j
            continue
        key = f"__values_-value-{i}"
        values = tensor_view(tree[key], buffers)
        if values is None:
            values = resolve_column(obj.member(key), resolver)
        if isinstance(values, np.ndarray):
            values = values.reshape(1, -1)  # numpy blocks are (columns, rows)
        blocks.append((values, np.array([i], dtype=np.intp)))
        i += 1
    df = create_dataframe_from_blocks(blocks, index=index, columns=columns)
    mark_shared(df)
    return df


def _column_run(tree: dict[str, Any], i: int, count: int, views: Any) -> tuple[np.ndarray, int] | None:
    """Columns ``i .. j-1`` as one read-only (columns, rows) block, and ``j``, when they are
    numeric tensors of one dtype and length whose blobs came as one run (adjacent, in
    order, over one exporter: the block they were stored from); else None."""
    node = tree[f"__values_-value-{i}"]
    spec = tensor_spec(node)
    if spec is None:
        return None
    dtype, shape = spec
    blob_id = node["buffer_"]["id"]
    ref = views.get(blob_id)
    if ref is None or len(ref.blob_ids) < 2 or len(shape) != 1:
        return None
    members, rows = ref.blob_ids, shape[0]
    nbytes = rows * dtype.itemsize
    first = members.index(blob_id)
    kind = (node["typename"], node.get("value_type_meta_"), node["shape_"])
    j = i
    while j < count and first + j - i < len(members):
        nxt = tree[f"__values_-value-{j}"]
        blob = nxt.get("buffer_")
        if (
            type(blob) is not dict or blob.get("id") != members[first + j - i] or blob.get("length") != nbytes
            or (nxt.get("typename"), nxt.get("value_type_meta_"), nxt.get("shape_")) != kind
            or "value_type_descr_" in nxt
        ):
            break
        j += 1
    exporter = ref()
    if j - i < 2 or exporter is None:
        return None
    offset = ref.addresses[first] - ref.addresses[0]
    block = np.frombuffer(exporter, dtype=dtype, count=rows * (j - i), offset=offset).reshape(j - i, rows)
    block.flags.writeable = False
    return block, j


def make_global_dataframe(client: Any, blocks: list[Any], extra_meta: dict[str, Any] | None = None) -> ObjectMeta:
    """Create and persist a ``vineyard::GlobalDataFrame`` over DataFrames already stored.

    Parameters
    ----------
    blocks
        The partitions: ids (``ObjectID``/int) or metadata of stored DataFrames, in row order.
    extra_meta
        More fields to set on the global object.

    Returns
    -------
    ObjectMeta
        The created, persisted global object's metadata.
    """
    meta = ObjectMeta(global_=True)
    meta["typename"] = "vineyard::GlobalDataFrame"
    meta["partitions_-size"] = len(blocks)
    meta["partition_shape_row_"] = len(blocks)
    meta["partition_shape_column_"] = 1
    for i, block in enumerate(blocks):
        member = ObjectID(block) if isinstance(block, int) else block
        meta.add_member(f"partitions_-{i}", member)
    for key, value in (extra_meta or {}).items():
        meta[key] = value
    meta["nbytes"] = 0
    created = client.create_metadata(meta)
    client.persist(created.id)
    # read it back: the reply shows the persisted state and the partitions' full metadata
    return client.get_meta(created.id)  # type: ignore[no-any-return]


def resolve_global_dataframe(obj: Any, resolver: Any = None, **kw: Any) -> list[pd.DataFrame]:
    """The partitions of a global dataframe that live on this client's instance, in order.

    Raises
    ------
    ValueError
        The local partitions' ``row_batch_index_`` are not in increasing order.
    """
    meta = obj.meta
    frames, orders = [], []
    for i in range(int(meta["partitions_-size"])):
        member = obj.member(f"partitions_-{i}")
        if not member.meta.islocal:
            continue
        frames.append(resolver.run(member, **kw) if resolver is not None else resolve_dataframe(member))
        orders.append(int(member.meta.get("row_batch_index_", 0)))
    if orders != sorted(orders):
        raise ValueError(f"the partitions of {obj.id!r} are out of order: row_batch_index_ {orders}")
    return frames

