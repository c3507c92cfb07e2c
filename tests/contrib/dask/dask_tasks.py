"""Functions the Dask tests run on workers (pickled by value; see ``conftest.py``).

Each returns plain data describing what it saw in the worker process.
"""

from __future__ import annotations

import os
import sys
from typing import Any

__all__ = [
    "PAYLOAD_CLASSES",
    "audit_events",
    "describe",
    "frame",
    "groups",
    "holds",
    "install_audit_hook",
    "memory",
    "nanny_monitor",
    "passthrough",
    "pid",
    "read_stored",
    "rss_anon",
    "shuffle_part",
    "stats",
    "stored_object",
    "stored_objects",
    "table",
    "touch",
    "touch_groups",
]

# What unpickling a numpy/pandas/Arrow payload looks up; distributed pickles ``type(x)`` into
# every dask-serializer header, so ('pandas', 'DataFrame') is not a payload event.
PAYLOAD_CLASSES = {
    ("numpy._core.numeric", "_frombuffer"),
    ("pandas._libs.internals", "_unpickle_block"),
    ("pandas.core.internals.managers", "BlockManager"),
    ("pyarrow.lib", "_restore_array"),
    ("pyarrow.lib", "py_buffer"),
}


def install_audit_hook() -> None:
    """Record ``pickle.find_class`` events of this process from now on (installed once)."""
    import builtins

    if not hasattr(builtins, "_vineyard_test_events"):
        events: list[tuple[str, str]] = []

        def hook(event: str, args: tuple[Any, ...]) -> None:
            if event == "pickle.find_class":
                events.append((str(args[0]), str(args[1])))

        sys.addaudithook(hook)
        builtins._vineyard_test_events = events  # type: ignore[attr-defined]
    builtins._vineyard_test_events.clear()  # type: ignore[attr-defined]


def audit_events() -> list[tuple[str, str]]:
    import builtins

    return list(getattr(builtins, "_vineyard_test_events", []))


def frame(nbytes: int, columns: int = 4, seed: int = 0) -> Any:
    import numpy as np
    import pandas as pd

    rows = nbytes // (8 * columns)
    rng = np.random.default_rng(seed)
    return pd.DataFrame({f"c{i}": rng.random(rows) for i in range(columns)})


def table(nbytes: int) -> Any:
    import numpy as np
    import pyarrow as pa

    rows = nbytes // 16
    return pa.table({"x": np.arange(rows, dtype="int64"), "y": np.ones(rows)})


def passthrough(value: Any) -> Any:
    return value


def pid() -> int:
    return os.getpid()


def rss_anon() -> int:
    from vineyard.testing import rss_anon as measure

    return measure()


def touch(value: Any) -> dict[str, Any]:
    """Read every byte of ``value`` where it is; report where that memory lives."""
    import numpy as np

    from vineyard.testing import address_in_store, store_mappings

    mappings = store_mappings()
    if hasattr(value, "column_names"):  # Arrow table
        arrays = [np.frombuffer(chunk.buffers()[1], dtype=chunk.type.to_pandas_dtype(), count=len(chunk))
                  for col in value.columns for chunk in col.chunks]
    elif hasattr(value, "columns"):  # DataFrame
        arrays = [value[c].to_numpy() for c in value.columns]
    else:
        arrays = [np.asarray(value)]
    total = float(sum(np.asarray(a, dtype="float64").sum() for a in arrays))
    return {
        "sum": total,
        "in_store": [address_in_store(a.__array_interface__["data"][0], mappings) for a in arrays],
        "writeable": [bool(a.flags.writeable) for a in arrays],
        "rss_anon": rss_anon(),
        "type": type(value).__name__,
    }


def stats(dask_worker: Any) -> dict[str, Any]:
    return dict(dask_worker.handlers["vineyard_stats"]())


def stored_object(key: Any, dask_worker: Any) -> int | None:
    """The object id holding ``key`` in this worker's data mapping (``None``: in the heap)."""
    object_id = dask_worker.data.object_id(key)
    return None if object_id is None else int(object_id)


def memory(dask_worker: Any) -> dict[str, Any]:
    """RSS, what distributed counts, and the worker's status."""
    import psutil

    return {
        "rss": psutil.Process().memory_info().rss,
        "counted": dask_worker.monitor.get_process_memory(),
        "status": dask_worker.status.name,
        "pid": os.getpid(),
    }


def read_stored(object_id: int) -> float:
    """Map a stored object through the worker's connection and read all of it."""
    import numpy as np

    from vineyard.contrib.dask import worker_store

    value = worker_store().get(object_id)
    return float(np.asarray(value).sum())


def describe(dask_worker: Any) -> dict[str, bool]:
    """Whether the worker keeps its data in the store and carries the plugin."""
    from vineyard.contrib.dask import VineyardWorkerData

    return {"data": isinstance(dask_worker.data, VineyardWorkerData), "plugin": "vineyard" in dask_worker.plugins}


def nanny_monitor(dask_worker: Any) -> str | None:
    """Which function the nanny's memory monitor calls (``dask_worker`` is the nanny here)."""
    pc = dask_worker.periodic_callbacks.get("memory_monitor")
    func = getattr(getattr(pc, "callback", None), "func", None)
    return getattr(func, "__name__", None)


def holds(key: Any, dask_worker: Any) -> bool:
    return key in dask_worker.data


def groups(nbytes: int) -> dict[int, Any]:
    """What dask's task shuffle hands around: a dict of frames (here two big, one small)."""
    return {0: frame(nbytes, seed=1), 1: frame(nbytes, seed=2), 2: frame(1000, seed=3)}


def touch_groups(value: dict[int, Any]) -> dict[int, dict[str, Any]]:
    return {k: touch(v) for k, v in value.items()}


def shuffle_part(index: int, rows: int) -> Any:
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(index)
    return pd.DataFrame({"key": rng.integers(0, 1000, rows), "val": rng.random(rows)})


def stored_objects(key: Any, dask_worker: Any) -> list[int]:
    """Every object id ``key``'s value holds in this worker's data mapping."""
    return [int(i) for i in dask_worker.data.object_ids(key)]
