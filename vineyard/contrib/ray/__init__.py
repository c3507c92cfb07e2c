"""Ray integration: pass vineyard objects between Ray tasks by ID; read and write Ray Data.

Ray already shares numeric data zero-copy between the workers of one job. What vineyard adds
is data that other processes (Dask workers, Airflow tasks, plain scripts) produce or consume
without a copy, data that outlives the Ray job, and no second copy in Ray's object store
when the data is in vineyard already::

    import ray
    import vineyard.contrib.ray as vray

    @ray.remote
    @vray.resolve_args
    @vray.store_returns
    def load():
        return make_a_big_dataframe()        # stored in vineyard, a VineyardRef is returned

    @ray.remote
    @vray.resolve_args
    def consume(df):                         # the ref arrives resolved: zero-copy views
        return float(df["x"].sum())

    ray.get(consume.remote(load.remote()))

    ref = vray.put(df)                       # the same by hand
    ds = vray.from_vineyard([ref])           # Ray Data over store objects
    refs = vray.to_vineyard(ds, global_=False)

Workers find the store through ``VINEYARD_IPC_SOCKET`` (give it to Ray with
``runtime_env={"env_vars": {...}}`` or set it before ``ray.init()``); a reference carries the
socket of the store holding its object. Objects the adapter creates are deleted when the
Ray job ends unless persisted: see :mod:`vineyard.contrib.ray.lifetime`.

The Ray Data part (``from_vineyard``, ``to_vineyard``, ``VineyardDatasource``,
``VineyardDatasink``) is imported on first use, so tasks that only pass references do not
pay for importing Ray Data.
"""

from __future__ import annotations

from typing import Any

from vineyard.contrib.ray.decorators import resolve_args, store_returns
from vineyard.contrib.ray.lifetime import cleanup_job, track_job
from vineyard.contrib.ray.ref import ObjectNotLocal, VineyardRef, delete, get, put

__all__ = [
    "ObjectNotLocal",
    "VineyardDatasink",
    "VineyardDatasource",
    "VineyardRef",
    "cleanup_job",
    "delete",
    "from_vineyard",
    "get",
    "put",
    "resolve_args",
    "store_returns",
    "to_vineyard",
    "track_job",
]

_DATA = {"VineyardDatasink", "VineyardDatasource", "from_vineyard", "to_vineyard"}


def __getattr__(name: str) -> Any:
    if name in _DATA:
        from vineyard.contrib.ray import data

        return getattr(data, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
