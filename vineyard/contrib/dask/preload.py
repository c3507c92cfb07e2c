"""Preload module: ``dask worker <scheduler> --preload-nanny vineyard.contrib.dask.preload``.

In a nanny (the default ``dask worker``), before the worker process starts: gives the worker
a :class:`VineyardWorkerData` (unless ``data`` was already set) and a
:class:`VineyardWorkerPlugin`, and makes the nanny restart workers for their private memory
rather than for the store's shared pages.

As a worker preload (``--preload``, e.g. with ``--no-nanny``) the worker already has its data
mapping, so only the plugin is added: transfers of store-backed values go by ID, task results
stay in the heap. Settings: see :mod:`vineyard.contrib.dask.worker`.
"""

from __future__ import annotations

import logging
from typing import Any

from distributed import Nanny, Worker

from vineyard.contrib.dask.data import VineyardWorkerData
from vineyard.contrib.dask.plugin import VineyardWorkerPlugin, count_private_memory_in_nanny
from vineyard.contrib.dask.worker import data_options

__all__ = ["dask_setup"]

log = logging.getLogger(__name__)


async def dask_setup(server: Any) -> None:
    """Called by distributed with the ``Nanny`` or ``Worker`` that loads this module."""
    if isinstance(server, Nanny):
        kwargs = server.worker_kwargs
        if kwargs.get("data") is None:
            kwargs["data"] = (VineyardWorkerData, data_options(server.memory_manager.memory_limit, server.nthreads))
        kwargs["plugins"] = (*tuple(kwargs.get("plugins") or ()), VineyardWorkerPlugin())
        count_private_memory_in_nanny(server)
    elif isinstance(server, Worker):
        if not isinstance(server.data, VineyardWorkerData):
            log.info("vineyard preload on a worker: task results stay in the heap; use "
                     "--preload-nanny or --worker-class vineyard.contrib.dask.VineyardWorker to keep them in the store")
        await server.plugin_add(plugin=VineyardWorkerPlugin(), catch_errors=False)
    else:
        raise TypeError(f"vineyard.contrib.dask.preload loads into a Nanny or Worker, not {type(server).__name__}")
