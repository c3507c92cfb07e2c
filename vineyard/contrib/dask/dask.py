"""Dask collections in and out of the store as global objects, partitions staying put.

``client.put(dask_array_or_dataframe, dask_client=c)`` persists the collection on the cluster
and stores each partition *on the worker that holds it* (a task pinned there; a partition
that already lives in the store is not copied: its object is shallow-copied and persisted).
Only object IDs come back to the caller, which builds one ``vineyard::GlobalTensor`` or
``vineyard::GlobalDataFrame`` over them.

``client.get(global_id, dask_client=c)`` returns a dask collection with one load task per
partition, preferring the worker that stored it (else any worker on the partition's store,
else anywhere: a hint, never a hard restriction). Partitions are mapped where they are read;
nothing is gathered into the calling process.

Upstream's names stay: :func:`register_dask_types` and :func:`dask_context`; the upstream
keywords ``dask_scheduler=`` (an address) and ``dask_workers=`` (``{instance_id: worker}``)
are accepted too. Workers need :class:`vineyard.contrib.dask.VineyardWorkerPlugin`.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from typing import Any

from vineyard.contrib.dask.store import LABEL_WORKER, backing_of
from vineyard.core.registry import accepts
from vineyard.ids import ObjectID
from vineyard.meta import ObjectMeta

__all__ = [
    "build_dask_array",
    "build_dask_dataframe",
    "dask_context",
    "register_dask_types",
    "resolve_global_dataframe",
    "resolve_global_tensor",
    "worker_stores",
]

LABEL_COLLECTION = "dask-collection"


# -- helpers ----------------------------------------------------------------------------
def _dask_client(dask_client: Any = None, dask_scheduler: Any = None, required: bool = True) -> Any:
    if dask_client is not None:
        return dask_client
    if dask_scheduler is not None:
        from distributed import Client

        return Client(dask_scheduler, set_as_default=False)
    if not required:
        return None
    from distributed import get_client

    try:
        return get_client()
    except ValueError:
        raise ValueError(
            "storing a dask collection needs a dask client: pass dask_client= (or dask_scheduler=)"
        ) from None


def worker_stores(dask_client: Any) -> dict[str, dict[str, Any]]:
    """``{worker address: {"store", "instance_id", "socket"}}`` as the scheduler plugin keeps it."""
    from vineyard.contrib.dask.plugin import stores_of

    return dask_client.run_on_scheduler(stores_of)  # type: ignore[no-any-return]


# -- tasks that run on workers ------------------------------------------------------------
def _store_partition(value: Any, extra: dict[str, Any]) -> tuple[int, str, int]:
    """Keep one partition as a persisted object of this worker's store; returns its id."""
    from distributed import get_worker

    from vineyard.contrib.dask.plugin import worker_store

    worker = get_worker()
    store = worker_store(worker)
    client = store.client
    backing = backing_of(value)
    temporary = None
    if backing is not None and backing.store is store:
        source = backing.object_id  # already stored (it is a task result): share its blobs
    else:
        source = temporary = client.put(value)
    copy = client.shallow_copy(source, extra_metadata=extra)
    # persist before anything else: the worker sweeps only transient objects
    client.persist(copy)
    client.label(copy, {"source": LABEL_COLLECTION, LABEL_WORKER: worker.address})
    if temporary is not None:
        client.delete(temporary, deep=True)
    return int(copy), worker.address, store.instance_id


def _load_partition(object_id: int) -> Any:
    """Map one partition where it lives (the worker's data mapping adopts it, no copy)."""
    from vineyard.contrib.dask.plugin import worker_store

    return worker_store().get(ObjectID(object_id), managed=False)


def _empty_like(frame: Any) -> Any:
    return frame.iloc[:0]


# -- builders -----------------------------------------------------------------------------
def _store_partitions(dclient: Any, parts: list[Any], extras: list[dict[str, Any]]) -> list[ObjectID]:
    """Compute ``parts`` (one delayed object per partition) where dask likes, then store each
    on the worker that holds it."""
    from distributed import wait

    # a partition that is already in memory (persisted) becomes an alias: no data moves
    futures = dclient.compute(parts)
    wait(futures)
    who_has = dclient.who_has(futures)
    tasks = []
    for future, extra in zip(futures, extras, strict=True):
        holders = list(who_has.get(future.key, ()))[:1]
        tasks.append(dclient.submit(_store_partition, future, extra, workers=holders or None,
                                    allow_other_workers=True, pure=False))
    return [ObjectID(oid) for oid, _, _ in dclient.gather(tasks)]


def build_dask_array(
    client: Any, value: Any, dask_client: Any = None, dask_scheduler: Any = None, **kw: Any
) -> ObjectMeta:
    """Store a ``dask.array.Array`` as a ``vineyard::GlobalTensor`` (partitions stay on their workers)."""
    import itertools

    from vineyard.data.tensor import make_global_tensor

    dclient = _dask_client(dask_client, dask_scheduler)
    indices = list(itertools.product(*(range(n) for n in value.numblocks)))
    extras = [{"partition_index_": json.dumps(list(index))} for index in indices]
    blocks = _store_partitions(dclient, list(value.to_delayed().ravel()), extras)
    return make_global_tensor(client, blocks, shape=value.shape, partition_shape=value.chunksize)


def build_dask_dataframe(
    client: Any, value: Any, dask_client: Any = None, dask_scheduler: Any = None, **kw: Any
) -> ObjectMeta:
    """Store a ``dask.dataframe.DataFrame`` as a ``vineyard::GlobalDataFrame``."""
    from vineyard.data.dataframe import make_global_dataframe

    dclient = _dask_client(dask_client, dask_scheduler)
    extras = [{"partition_index_row_": i, "partition_index_column_": 0} for i in range(value.npartitions)]
    blocks = _store_partitions(dclient, list(value.to_delayed()), extras)
    return make_global_dataframe(client, blocks)


# -- resolvers ----------------------------------------------------------------------------
def _placement(dclient: Any, members: list[ObjectMeta], dask_workers: dict[Any, str] | None) -> list[list[str] | None]:
    """Where to read each partition: who stored it, else a worker on its store, else anywhere."""
    stores = worker_stores(dclient)
    by_instance: dict[int, list[str]] = {}
    for address, info in stores.items():
        by_instance.setdefault(int(info["instance_id"]), []).append(address)
    out: list[list[str] | None] = []
    for i, member in enumerate(members):
        if dask_workers is not None and member.instance_id in dask_workers:
            out.append([dask_workers[member.instance_id]])
            continue
        owner = member.labels.get(LABEL_WORKER)
        if owner in stores:
            out.append([owner])
            continue
        candidates = by_instance.get(member.instance_id, [])
        out.append([candidates[i % len(candidates)]] if candidates else None)
    return out


def _members(meta: ObjectMeta) -> list[ObjectMeta]:
    return [meta.get_member(f"partitions_-{i}").meta for i in range(int(meta["partitions_-size"]))]  # type: ignore[union-attr]


def _submit_loads(dclient: Any, members: list[ObjectMeta], dask_workers: dict[Any, str] | None) -> list[Any]:
    placement = _placement(dclient, members, dask_workers)
    return [
        dclient.submit(_load_partition, int(member.id), workers=where, allow_other_workers=True, pure=False)
        for member, where in zip(members, placement, strict=True)
    ]


def resolve_global_tensor(obj: Any, resolver: Any = None, dask_client: Any = None, dask_scheduler: Any = None,
                          dask_workers: dict[Any, str] | None = None, **kw: Any) -> Any:
    """A ``vineyard::GlobalTensor`` as a ``dask.array.Array`` read where its partitions live."""
    import dask.array as da
    import numpy as np

    dclient = _dask_client(dask_client, dask_scheduler, required=False)
    if dclient is None:
        return _previous(resolver, "vineyard::GlobalTensor", obj, kw)
    members = _members(obj.meta)
    futures = _submit_loads(dclient, members, dask_workers)
    blocks: dict[tuple[int, ...], Any] = {}
    for member, future in zip(members, futures, strict=True):
        shape = tuple(json.loads(member["shape_"]))
        dtype = np.dtype(member["value_type_meta_"] if "value_type_meta_" in member else member["value_type_"])
        blocks[tuple(json.loads(member["partition_index_"]))] = da.from_delayed(future, shape=shape, dtype=dtype)
    return da.block(_nest(blocks))


def _nest(blocks: dict[tuple[int, ...], Any]) -> Any:
    """``{(i, j, ...): block}`` as the nested lists ``da.block`` wants."""
    ndim = len(next(iter(blocks)))
    if ndim == 0:
        return blocks[()]

    def level(prefix: tuple[int, ...]) -> Any:
        depth = len(prefix)
        heads = sorted({k[depth] for k in blocks if k[:depth] == prefix})
        if depth == ndim - 1:
            return [blocks[(*prefix, h)] for h in heads]
        return [level((*prefix, h)) for h in heads]

    return level(())


def resolve_global_dataframe(obj: Any, resolver: Any = None, dask_client: Any = None, dask_scheduler: Any = None,
                             dask_workers: dict[Any, str] | None = None, **kw: Any) -> Any:
    """A ``vineyard::GlobalDataFrame`` as a ``dask.dataframe.DataFrame`` read where it lives."""
    import dask.dataframe as dd

    dclient = _dask_client(dask_client, dask_scheduler, required=False)
    if dclient is None:
        return _previous(resolver, "vineyard::GlobalDataFrame", obj, kw)
    members = sorted(_members(obj.meta), key=lambda m: (int(m.get("partition_index_row_", 0)),
                                                         int(m.get("partition_index_column_", 0))))
    futures = _submit_loads(dclient, members, dask_workers)
    # the empty frame dask needs as ``meta`` comes from a task: no partition is gathered
    meta = dclient.submit(_empty_like, futures[0], pure=False).result()
    return dd.from_delayed(futures, meta=meta, verify_meta=False)


# -- registration -------------------------------------------------------------------------
_previous_resolvers: dict[tuple[int, str], Callable[..., Any] | None] = {}


def _previous(resolver: Any, typename: str, obj: Any, kw: dict[str, Any]) -> Any:
    """Resolve ``obj`` as the context did before the dask types were registered in it."""
    previous = _previous_resolvers.get((id(resolver), typename)) if resolver is not None else None
    if previous is None:
        return obj
    var_kw, names = accepts(previous)
    if var_kw:
        return previous(obj, resolver=resolver, **kw)
    if "resolver" in names:
        return previous(obj, resolver=resolver)
    return previous(obj)


def register_dask_types(builder_ctx: Any = None, resolver_ctx: Any = None) -> None:
    """Register the dask collection builders and the global-object resolvers (upstream's name).

    Resolvers fall back to what the context resolved before when no dask client is given.
    """
    if builder_ctx is not None:
        import dask.array as da
        import dask.dataframe as dd

        builder_ctx.register(da.Array, build_dask_array)
        builder_ctx.register(dd.DataFrame, build_dask_dataframe)
    if resolver_ctx is not None:
        for typename, resolve in (("vineyard::GlobalTensor", resolve_global_tensor),
                                  ("vineyard::GlobalDataFrame", resolve_global_dataframe)):
            # looking up first runs any lazy registration now, so it cannot replace ours later
            previous = resolver_ctx.lookup(typename)
            if previous not in (resolve_global_tensor, resolve_global_dataframe):
                _previous_resolvers[(id(resolver_ctx), typename)] = previous
            resolver_ctx.register(typename, resolve)


@contextlib.contextmanager
def dask_context() -> Iterator[tuple[Any, Any]]:
    """``with dask_context() as (builders, resolvers):`` — the current contexts plus dask types."""
    from vineyard.core import context

    with context() as (builder_ctx, resolver_ctx):
        register_dask_types(builder_ctx, resolver_ctx)
        yield builder_ctx, resolver_ctx
