"""Workers started with their data in the store, for ``dask worker`` deployments.

* ``dask worker <scheduler> --worker-class vineyard.contrib.dask.VineyardWorker``
* ``dask worker <scheduler> --preload-nanny vineyard.contrib.dask.preload`` (also fixes the
  nanny's memory accounting; see :mod:`vineyard.contrib.dask.preload`)

Settings come from the dask config (``DASK_VINEYARD__*`` environment variables work too):

``vineyard.ipc-socket``  the store's socket (else ``$VINEYARD_IPC_SOCKET``);
``vineyard.threshold``   smallest value kept in the store (default ``"1 MiB"``);
``vineyard.spill``       keep distributed's spill-to-disk for values kept in the heap
                         (default ``True``, as distributed; needs a memory limit).

A worker's data mapping must be given when the worker is created: a cluster started without
it cannot be converted later (the nanny reuses the original worker arguments on restart).
"""

from __future__ import annotations

from typing import Any

import dask.config
from dask.system import CPU_COUNT
from distributed import Worker

from vineyard.contrib.dask.data import DEFAULT_THRESHOLD, VineyardWorkerData
from vineyard.contrib.dask.plugin import VineyardWorkerPlugin

__all__ = ["VineyardWorker", "data_options"]


def data_options(memory_limit: Any = "auto", nthreads: int | None = None) -> dict[str, Any]:
    """Keyword arguments for :class:`VineyardWorkerData` from the dask config.

    With ``vineyard.spill`` and a memory limit, heap values spill above the same target as
    distributed's own ``SpillBuffer`` (``distributed.worker.memory.target`` of the limit).
    """
    import logging

    from distributed.worker_memory import parse_memory_limit

    options: dict[str, Any] = {
        "socket": dask.config.get("vineyard.ipc-socket", default=None),
        "threshold": dask.config.get("vineyard.threshold", default=DEFAULT_THRESHOLD),
    }
    if dask.config.get("vineyard.spill", default=True):
        limit = parse_memory_limit(memory_limit, nthreads or CPU_COUNT, logger=logging.getLogger(__name__))
        fraction = dask.config.get("distributed.worker.memory.target")
        if limit and fraction:
            options["spill_target"] = int(limit * fraction)
    return options


class VineyardWorker(Worker):
    """A ``distributed.Worker`` whose data mapping is :class:`VineyardWorkerData` and which
    carries :class:`VineyardWorkerPlugin`.

    Explicit ``data=`` and ``plugins=`` arguments are honoured (the plugin is added to them).
    """

    def __init__(self, *args: Any, data: Any = None, plugins: Any = (), **kwargs: Any) -> None:
        if data is None:
            data = (VineyardWorkerData, data_options(kwargs.get("memory_limit", "auto"), kwargs.get("nthreads")))
        plugins = (*tuple(plugins or ()), VineyardWorkerPlugin())
        super().__init__(*args, data=data, plugins=plugins, **kwargs)
