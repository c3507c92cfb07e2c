"""Worker, scheduler and nanny plugins: attach each worker to its store, publish the map of
which worker uses which store, and measure worker memory without the store's shared pages.

* :class:`VineyardWorkerPlugin` — at ``setup``, connects the worker to its store (the data
  mapping's connection if the worker has a :class:`VineyardWorkerData`, so there is one client
  per worker) and fails clearly if the store is missing; announces the store in the handshake
  of the worker's outgoing connections (what lets peers send it object IDs); registers the
  worker with :class:`VineyardSchedulerPlugin` (installing it if needed); sweeps watched
  objects periodically; at ``teardown`` (worker closing), frees what the worker held.
* :class:`VineyardSchedulerPlugin` — keeps ``worker address -> store`` and, when a worker
  leaves, asks a surviving worker on the same store to delete the objects the departed one
  stored that nobody holds any more (it may have crashed before letting go of its keys).
* :class:`VineyardNannyPlugin` — the nanny restarts a worker whose memory passes
  ``distributed.worker.memory.terminate``; this makes it use the worker's private memory.

Why memory needs care: distributed measures a worker's memory as RSS, which counts every page
of shared memory the worker has touched. A worker that reads a 1 GiB stored frame would look
1 GiB bigger, and be paused or restarted for data that lives (once) in the store. Here process
memory is ``RSS - RssShmem`` (``/proc/<pid>/status``); the store's own limit bounds the rest.
"""

from __future__ import annotations

import asyncio
import logging
import os
from functools import partial
from typing import TYPE_CHECKING, Any

from dask.utils import parse_timedelta
from distributed.diagnostics.plugin import NannyPlugin, SchedulerPlugin, WorkerPlugin
from tornado.ioloop import PeriodicCallback

from vineyard.contrib.dask.data import VineyardWorkerData
from vineyard.contrib.dask.serialize import HANDSHAKE_KEY
from vineyard.contrib.dask.store import SWEEP_MIN_AGE, WorkerStore, attach, detach

if TYPE_CHECKING:
    from distributed import Nanny, Scheduler, Worker

__all__ = [
    "EXTENSION",
    "VineyardNannyPlugin",
    "VineyardSchedulerPlugin",
    "VineyardWorkerPlugin",
    "private_memory",
    "shared_memory",
    "stores_of",
    "worker_store",
]

log = logging.getLogger(__name__)

#: Name under which a worker's attachment sits in ``worker.extensions``.
EXTENSION = "vineyard"


# -- memory accounting ------------------------------------------------------------------
def shared_memory(pid: int | None = None) -> int:
    """Resident shared-memory pages (``RssShmem``) of a process, in bytes; 0 where unknown."""
    try:
        with open(f"/proc/{pid or 'self'}/status") as f:
            for line in f:
                if line.startswith("RssShmem:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def private_memory(pid: int | None = None) -> int:
    """A process's RSS without its resident shared-memory pages, in bytes.

    This is what a worker really uses of its own: the store's pages it maps are counted once,
    by the store, however many workers read them.
    """
    import psutil

    rss = int(psutil.Process(pid).memory_info().rss)
    return max(0, rss - shared_memory(pid))


def _count_private_memory(worker: Worker) -> None:
    # ``SystemMonitor.get_process_memory`` is the one place distributed reads a worker's
    # memory (for pausing, spilling and what it reports to the scheduler); it is documented
    # as the point to replace. An instance attribute shadows the method for this worker only.
    worker.monitor.get_process_memory = private_memory  # type: ignore[method-assign]


def _count_rss(worker: Worker) -> None:
    worker.monitor.__dict__.pop("get_process_memory", None)


# -- per-worker attachment --------------------------------------------------------------
class _Attachment:
    """What the plugin set up on one worker (kept in ``worker.extensions``)."""

    def __init__(self, worker: Worker, store: WorkerStore, data: VineyardWorkerData | None) -> None:
        self.worker = worker
        self.store = store
        self.data = data
        self.sweeper: PeriodicCallback | None = None

    def sweep(self) -> None:
        """The periodic retry of deletions (see :meth:`WorkerStore.sweep`)."""
        self.store.sweep()

    async def sweep_worker(self, worker: str) -> int:
        """Handler ``vineyard_sweep``: delete what departed ``worker`` stored and nobody holds."""
        return self.store.sweep_worker(worker)

    def stats(self) -> dict[str, Any]:
        data = self.data
        return {
            **self.store.stats,
            "stored_keys": len(data.stored_keys) if data is not None else 0,
            "watched": len(self.store.watched),
            "store": self.store.identity,
        }


def worker_store(worker: Worker | None = None) -> WorkerStore:
    """The store the (current) worker is attached to by :class:`VineyardWorkerPlugin`.

    For tasks: ``worker_store().get(object_id)`` reads through the worker's one connection.

    Raises
    ------
    RuntimeError
        The worker has no :class:`VineyardWorkerPlugin`.
    """
    if worker is None:
        from distributed import get_worker

        worker = get_worker()
    attachment = worker.extensions.get(EXTENSION)
    if attachment is None:
        raise RuntimeError(
            f"worker {worker.address} is not attached to a vineyard store: register "
            "vineyard.contrib.dask.VineyardWorkerPlugin (client.register_plugin(...)) or start "
            "workers with --worker-class vineyard.contrib.dask.VineyardWorker"
        )
    return attachment.store  # type: ignore[no-any-return]


def _announce(worker: Worker, identity: str | None) -> None:
    """Add (or remove) our store in the handshake of the worker's outgoing connections."""
    seen: set[int] = set()
    for args in (worker.connection_args, worker.rpc.connection_args):
        if id(args) in seen:
            continue
        seen.add(id(args))
        overrides = dict(args.get("handshake_overrides") or {})
        if identity is None:
            overrides.pop(HANDSHAKE_KEY, None)
        else:
            overrides[HANDSHAKE_KEY] = identity
        args["handshake_overrides"] = overrides
    # idle pooled connections were opened with the old handshake
    worker.rpc.collect()


class VineyardWorkerPlugin(WorkerPlugin):
    """Attach every worker to its vineyard store.

    Parameters
    ----------
    socket
        The store's IPC socket, for workers without a :class:`VineyardWorkerData` (which
        brings its own); default: dask config ``vineyard.ipc-socket``, then
        ``$VINEYARD_IPC_SOCKET``.
    sweep_interval
        How often to retry deleting objects this worker let go of while something still held
        them.
    memory
        ``"private"`` (default): the worker's memory is RSS minus the store's shared pages;
        ``"rss"``: leave distributed's measure alone.

    Raises
    ------
    ConnectionFailedException
        From ``setup``, when the store cannot be reached: the worker (or the
        ``register_plugin`` call) fails instead of running without its store.
    """

    name = "vineyard"
    idempotent = True

    def __init__(
        self, socket: str | None = None, *, sweep_interval: str | float = "1s", memory: str = "private"
    ) -> None:
        if memory not in ("private", "rss"):
            raise ValueError(f"memory must be 'private' or 'rss', not {memory!r}")
        self.socket = socket
        self.sweep_interval = parse_timedelta(sweep_interval)
        self.memory = memory

    async def setup(self, worker: Worker) -> None:
        data = worker.data if isinstance(worker.data, VineyardWorkerData) else None
        if data is not None:
            if self.socket and os.path.realpath(self.socket) != os.path.realpath(data.store.socket):
                log.warning("worker %s: its data mapping uses %s; ignoring the plugin's socket %s",
                            worker.address, data.store.socket, self.socket)
            store = attach(data.store.socket)  # the mapping's connection: one client per worker
            data.bind(worker.address)
        else:
            store = attach(self.socket)
        attachment = _Attachment(worker, store, data)
        worker.extensions[EXTENSION] = attachment
        worker.handlers["vineyard_sweep"] = attachment.sweep_worker
        worker.handlers["vineyard_stats"] = attachment.stats
        _announce(worker, store.identity)
        if self.memory == "private":
            _count_private_memory(worker)
        attachment.sweeper = PeriodicCallback(attachment.sweep, self.sweep_interval * 1000)
        attachment.sweeper.start()
        await self._publish(worker, store)

    async def _publish(self, worker: Worker, store: WorkerStore) -> None:
        from distributed.protocol.pickle import dumps

        try:
            await worker.scheduler.register_scheduler_plugin(
                plugin=dumps(VineyardSchedulerPlugin()), name=VineyardSchedulerPlugin.name, idempotent=True
            )
            await worker.scheduler.vineyard_register_worker(
                address=worker.address,
                store=store.identity,
                instance_id=store.instance_id,
                socket=store.socket,
            )
        except Exception:  # the map only guides placement: transfers by ID work without it
            log.warning("worker %s could not publish its vineyard store to the scheduler", worker.address,
                        exc_info=True)

    async def teardown(self, worker: Worker) -> None:
        from distributed.core import Status

        attachment = worker.extensions.pop(EXTENSION, None)
        if attachment is None:
            return
        if attachment.sweeper is not None:
            attachment.sweeper.stop()
        worker.handlers.pop("vineyard_sweep", None)
        worker.handlers.pop("vineyard_stats", None)
        if self.memory == "private":
            _count_rss(worker)
        closing = worker.status in (Status.closing, Status.closing_gracefully, Status.closed, Status.failed)
        if not closing:
            # unregistered from a running worker: it keeps its data (and the mapping its
            # connection); peers go back to sending it bytes
            _announce(worker, None)
        if closing and attachment.data is not None:
            attachment.data.close()
        detach(attachment.store)


class VineyardSchedulerPlugin(SchedulerPlugin):
    """Keeps which store each worker uses; installed by the first :class:`VineyardWorkerPlugin`.

    Read it from a client with ``client.run_on_scheduler(stores_of)`` or
    :func:`vineyard.contrib.dask.worker_stores`.
    """

    name = "vineyard"

    def __init__(self) -> None:
        self.stores: dict[str, dict[str, Any]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._scheduler: Scheduler | None = None

    async def start(self, scheduler: Scheduler) -> None:
        self._scheduler = scheduler
        scheduler.handlers["vineyard_register_worker"] = self.register_worker
        scheduler.handlers["vineyard_stores"] = self.get_stores

    def register_worker(self, address: str, store: str, instance_id: int, socket: str) -> None:
        self.stores[address] = {"store": store, "instance_id": instance_id, "socket": socket}

    def get_stores(self) -> dict[str, dict[str, Any]]:
        return {address: dict(info) for address, info in self.stores.items()}

    def remove_worker(self, scheduler: Scheduler, worker: str, **kwargs: Any) -> None:
        info = self.stores.pop(worker, None)
        if info is None or scheduler.status.name in ("closing", "closed"):
            return
        peers = [a for a, i in self.stores.items() if i["store"] == info["store"] and a in scheduler.workers]
        if peers:
            task = asyncio.ensure_future(self._sweep(scheduler, peers[0], worker))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _sweep(self, scheduler: Scheduler, peer: str, departed: str) -> None:
        # Twice: once the departed worker's connection has surely closed, and again when what
        # it stored just before dying is old enough to be swept.
        for delay in (1.0, SWEEP_MIN_AGE + 1.0):
            await asyncio.sleep(delay)
            try:
                freed = await scheduler.rpc(peer).vineyard_sweep(worker=departed)
            except Exception:
                log.debug("could not sweep the objects of %s through %s", departed, peer, exc_info=True)
                return
            if freed:
                log.info("freed %d vineyard objects left by %s", freed, departed)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._scheduler is not None:
            self._scheduler.handlers.pop("vineyard_register_worker", None)
            self._scheduler.handlers.pop("vineyard_stores", None)


def stores_of(dask_scheduler: Scheduler) -> dict[str, dict[str, Any]]:
    """``client.run_on_scheduler(stores_of)``: ``{worker address: {store, instance_id, socket}}``."""
    plugin = dask_scheduler.plugins.get(VineyardSchedulerPlugin.name)
    return plugin.get_stores() if isinstance(plugin, VineyardSchedulerPlugin) else {}


# -- nanny --------------------------------------------------------------------------------
class VineyardNannyPlugin(NannyPlugin):
    """Make the nanny restart workers for their private memory, not the store's pages."""

    name = "vineyard-memory"
    idempotent = True
    restart = False

    def setup(self, nanny: Nanny) -> None:
        count_private_memory_in_nanny(nanny)


def count_private_memory_in_nanny(nanny: Nanny) -> bool:
    """Replace the nanny's memory monitor with one that reads :func:`private_memory`.

    Returns whether there was a monitor to replace (there is none without a memory limit or
    with ``distributed.worker.memory.terminate: false``).
    """
    old = nanny.periodic_callbacks.get("memory_monitor")
    if old is None:
        return False
    state = {"terminated": -1}
    pc = PeriodicCallback(partial(_nanny_memory_monitor, nanny, state), old.callback_time)
    running = old.is_running()
    old.stop()
    nanny.periodic_callbacks["memory_monitor"] = pc
    if running:
        pc.start()
    return True


def _nanny_memory_monitor(nanny: Nanny, state: dict[str, int]) -> None:
    from distributed.core import Status

    manager = nanny.memory_manager
    process = nanny.process.process if nanny.process is not None else None
    if nanny.status != Status.running or process is None or process.pid is None:
        return
    limit, fraction = manager.memory_limit, manager.memory_terminate_fraction
    if not limit or fraction is False:
        return
    try:
        memory = private_memory(process.pid)
    except Exception:  # the process is going away
        return
    if memory <= limit * fraction:
        return
    if state["terminated"] != process.pid:
        log.warning("Worker %s (pid=%d) uses %d bytes of private memory, over %.0f%% of its limit. Restarting...",
                    nanny.worker_address, process.pid, memory, fraction * 100)
        state["terminated"] = process.pid
        process.terminate()
    else:
        process.kill()

