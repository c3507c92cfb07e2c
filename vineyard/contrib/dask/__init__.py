"""Dask/distributed integration: worker data in the store, same-host transfers by object ID.

* :class:`VineyardWorkerData` — a ``Worker(data=...)`` mapping keeping large arrays, frames
  and Arrow tables in the store (``LocalCluster(data=(VineyardWorkerData, {...}))``);
* :class:`VineyardWorkerPlugin` — one store connection per worker, ID transfers between
  workers on the same store, memory accounting without the store's pages, cleanup;
  :class:`VineyardSchedulerPlugin` (installed by it) keeps which worker uses which store;
  :class:`VineyardNannyPlugin` — the nanny's restart threshold on private memory;
* :class:`VineyardWorker` and :mod:`vineyard.contrib.dask.preload` — for ``dask worker``;
* :func:`register_dask_types` / :func:`dask_context` — dask collections to and from global
  objects (upstream's names, in :mod:`vineyard.contrib.dask.dask`).

See ``docs/dask.md``. Importing this package imports distributed; the core of vineyard never
imports dask.
"""

from __future__ import annotations

from vineyard.contrib.dask.dask import dask_context, register_dask_types, worker_stores
from vineyard.contrib.dask.data import VineyardWorkerData
from vineyard.contrib.dask.plugin import (
    VineyardNannyPlugin,
    VineyardSchedulerPlugin,
    VineyardWorkerPlugin,
    private_memory,
    worker_store,
)
from vineyard.contrib.dask.serialize import register_serializers
from vineyard.contrib.dask.worker import VineyardWorker

__all__ = [
    "VineyardNannyPlugin",
    "VineyardSchedulerPlugin",
    "VineyardWorker",
    "VineyardWorkerData",
    "VineyardWorkerPlugin",
    "dask_context",
    "private_memory",
    "register_dask_types",
    "register_serializers",
    "worker_store",
    "worker_stores",
]
