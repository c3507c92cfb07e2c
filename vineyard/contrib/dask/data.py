"""The worker data mapping: large arrays and frames live in the store, the rest in the heap.

``Worker(data=...)`` is where distributed keeps task results and fetched dependencies.
:class:`VineyardWorkerData` puts every supported value at or above a threshold into the store
and keeps the store-backed, read-only view in its place; everything else goes to an inner
mapping (a dict, or distributed's ``SpillBuffer`` when a spill target is given). A value that
already is a view of a stored object (it arrived by ID, or a task passed its input through) is
adopted as it is: no second copy.

Each key holds its worker's reference to the object; deleting the key (distributed releases or
forgets it) lets go of it, and the object is deleted once no connection holds it (see
:mod:`vineyard.contrib.dask.store`).
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator, MutableMapping
from typing import Any

from dask.utils import parse_bytes

from vineyard.contrib.dask.store import LABEL_KEY, LABEL_WORKER, Backing, attach, backing_of, detach
from vineyard.errors import NotEnoughMemoryException, VineyardException
from vineyard.ids import ObjectID

__all__ = ["DEFAULT_THRESHOLD", "VineyardWorkerData", "store_nbytes"]

log = logging.getLogger(__name__)

#: Values smaller than this stay in the worker's heap: a put costs a few round trips.
DEFAULT_THRESHOLD = "1 MiB"


def store_nbytes(value: Any, at_least: int = 0) -> int | None:
    """The size of ``value`` if it is of a type the store keeps without pickling, else ``None``.

    Supported: numeric/bool/datetime ``numpy.ndarray`` (not object arrays), ``pandas``
    ``DataFrame``/``Series`` and ``pyarrow.Table``. Modules are looked up, never imported.
    A frame clearly smaller than ``at_least`` (16 bytes a cell) gets that quick estimate:
    measuring it exactly costs about a millisecond, more than most small tasks.
    """
    np = sys.modules.get("numpy")
    if np is not None and isinstance(value, np.ndarray):
        return None if value.dtype.hasobject else int(value.nbytes)
    pd = sys.modules.get("pandas")
    if pd is not None and isinstance(value, (pd.DataFrame, pd.Series)):
        cells = len(value) * (value.shape[1] if value.ndim == 2 else 1)
        if 16 * (cells + len(value)) < at_least:
            return 16 * (cells + len(value))
        if isinstance(value, pd.DataFrame):
            return int(value.memory_usage(index=True, deep=False).sum())
        return int(value.memory_usage(index=True, deep=False))
    pa = sys.modules.get("pyarrow")
    if pa is not None and isinstance(value, pa.Table):
        return int(value.nbytes)
    return None


class VineyardWorkerData(MutableMapping[Any, object]):
    """A ``Worker.data`` mapping that keeps large task results in a vineyard store.

    Parameters
    ----------
    socket
        The store's IPC socket; default: dask config ``vineyard.ipc-socket``, then
        ``$VINEYARD_IPC_SOCKET``.
    threshold
        Supported values of at least this many bytes (an int or a string such as ``"1 MiB"``)
        go to the store.
    spill_target
        If given (bytes or a string), values kept in the heap go to a ``SpillBuffer`` that
        spills to the worker's local directory above this size, as distributed does by
        default; otherwise they go to a plain dict. Store-backed values are never spilled by
        Dask (the store spills on its own, if configured).
    on_error
        ``"raise"`` (default): a value the store cannot take (it is full) fails its task with
        the store's error. ``"fallback"``: keep it in the heap instead, with a warning.
    worker_local_directory
        Filled in by distributed; where the spill buffer writes.

    Raises
    ------
    ConnectionFailedException
        No socket configured, or no daemon answers on it.

    Notes
    -----
    Use with :class:`vineyard.contrib.dask.VineyardWorkerPlugin` registered on the workers: the
    plugin announces the worker's store to peers (for transfers by ID), frees what the worker
    held when it closes, and tells the mapping its worker's address (recorded on objects).
    """

    def __init__(
        self,
        socket: str | None = None,
        *,
        threshold: int | str = DEFAULT_THRESHOLD,
        spill_target: int | str | None = None,
        on_error: str = "raise",
        worker_local_directory: str | None = None,
    ) -> None:
        if on_error not in ("raise", "fallback"):
            raise ValueError(f"on_error must be 'raise' or 'fallback', not {on_error!r}")
        self.threshold = parse_bytes(threshold) if isinstance(threshold, str) else int(threshold)
        self.on_error = on_error
        self.inner: MutableMapping[Any, object]
        if spill_target is not None:
            from distributed.spill import SpillBuffer

            base = worker_local_directory or tempfile.mkdtemp(prefix="vineyard-spill-")
            directory = os.path.join(base, "storage")
            target = parse_bytes(spill_target) if isinstance(spill_target, str) else int(spill_target)
            self.inner = SpillBuffer(directory, target=target)
        else:
            self.inner = {}
        self.store = attach(socket)
        self.worker_address: str | None = None
        self._stored: dict[Any, tuple[tuple[Backing, ...], object]] = {}
        self._shares: Counter[int] = Counter()  # object id -> keys of this mapping on it
        self._warned = False
        self._closed = False

    # -- what the plugin and tests use -------------------------------------------------
    def bind(self, worker_address: str) -> None:
        """Record the worker's address (labelled on the objects it stores)."""
        self.worker_address = worker_address

    def object_id(self, key: Any) -> ObjectID | None:
        """The object holding ``key``'s value, if the value itself lives in the store."""
        entry = self._stored.get(key)
        if entry is None or type(entry[1]) in (dict, list, tuple):
            return None
        return entry[0][0].object_id

    def object_ids(self, key: Any) -> list[ObjectID]:
        """Every stored object ``key``'s value holds (its elements', for a container)."""
        entry = self._stored.get(key)
        return [b.object_id for b in entry[0]] if entry is not None else []

    @property
    def stored_keys(self) -> list[Any]:
        return list(self._stored)

    # -- ManualEvictProto and spill statistics, when spilling ---------------------------
    @property
    def fast(self) -> Any:
        """The spill buffer's in-memory part (only with ``spill_target``)."""
        try:
            return self.inner.fast  # type: ignore[attr-defined]
        except AttributeError:
            raise AttributeError("fast: this mapping does not spill") from None

    def evict(self) -> int:
        """Spill one heap value to disk (only with ``spill_target``)."""
        try:
            evict = self.inner.evict  # type: ignore[attr-defined]
        except AttributeError:
            raise AttributeError("evict: this mapping does not spill") from None
        return int(evict())

    @property
    def spilled_total(self) -> Any:
        try:
            return self.inner.spilled_total  # type: ignore[attr-defined]
        except AttributeError:
            raise AttributeError("spilled_total: this mapping does not spill") from None

    # -- mapping -----------------------------------------------------------------------
    def __setitem__(self, key: Any, value: object) -> None:
        if key in self:
            del self[key]
        if self._closed:
            self.inner[key] = value
            return
        backings: list[Backing] = []
        try:
            if type(value) in (dict, list, tuple):
                # one level of containers: dask's task shuffle hands dicts of frames around,
                # and the pieces it later takes out of them are then adopted without a copy
                value = self._store_elements(key, value, backings)  # type: ignore[arg-type]
            else:
                value = self._store_one(key, value, backings)
        except NotEnoughMemoryException:
            self._let_go(backings)
            if self.on_error == "raise":
                raise
            if not self._warned:
                log.warning("the vineyard store is full: keeping task results in the worker's heap")
                self._warned = True
            self.inner[key] = value
            return
        if not backings:
            self.inner[key] = value
            return
        self._stored[key] = (tuple(backings), value)
        for backing in backings:
            self._shares[int(backing.object_id)] += 1

    def _store_one(self, key: Any, value: Any, backings: list[Backing]) -> Any:
        """``value``, or its store-backed view (its backing appended to ``backings``)."""
        backing = backing_of(value)
        if backing is not None and backing.store is self.store:
            if backing.managed:
                self.store.unwatch(backing.object_id)
            self.store.stats["adopted"] += 1
            backings.append(backing)
            return value
        size = store_nbytes(value, self.threshold)
        if size is None or size < self.threshold:
            return value
        object_id, view = self.store.put(value, self._labels(key))
        backings.append(Backing(object_id, self.store, managed=True))
        return view

    def _store_elements(self, key: Any, value: dict[Any, Any] | list[Any] | tuple[Any, ...],
                        backings: list[Backing]) -> Any:
        if isinstance(value, dict):
            return {k: self._store_one(key, v, backings) for k, v in value.items()}
        return type(value)(self._store_one(key, v, backings) for v in value)

    def _labels(self, key: Any) -> dict[str, str]:
        labels = {LABEL_KEY: str(key)[:200]}
        if self.worker_address is not None:
            labels[LABEL_WORKER] = self.worker_address
        return labels

    def __getitem__(self, key: Any) -> object:
        entry = self._stored.get(key)
        if entry is not None:
            return entry[1]
        return self.inner[key]

    def __delitem__(self, key: Any) -> None:
        entry = self._stored.pop(key, None)
        if entry is None:
            del self.inner[key]
            return
        backings = entry[0]
        del entry  # the views must die before the daemon is asked who still holds them
        last = []
        for backing in backings:
            object_id = int(backing.object_id)
            self._shares[object_id] -= 1
            if self._shares[object_id] <= 0:
                del self._shares[object_id]
                last.append(backing)
        self._let_go(last)

    def _let_go(self, backings: list[Backing]) -> None:
        """Release the managed objects among ``backings`` (no view of them may be left here)."""
        for backing in backings:
            if backing.managed and int(backing.object_id) not in self._shares:
                try:
                    self.store.release(backing.object_id)
                except VineyardException:
                    log.warning("could not release vineyard object %r", backing.object_id, exc_info=True)

    def __contains__(self, key: object) -> bool:
        return key in self._stored or key in self.inner

    def __iter__(self) -> Iterator[Any]:
        yield from list(self._stored)
        yield from list(self.inner)

    def __len__(self) -> int:
        return len(self._stored) + len(self.inner)

    def __repr__(self) -> str:
        return f"<VineyardWorkerData: {len(self._stored)} in the store, {len(self.inner)} in the heap>"

    def close(self) -> None:
        """Let go of every stored key and detach from the store (the plugin's teardown)."""
        if self._closed:
            return
        self._closed = True
        for key in list(self._stored):
            del self[key]
        self.store.sweep()
        detach(self.store)
