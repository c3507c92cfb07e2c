"""What the benchmark's workers share: one small API over each system, and the probes.

This module runs under *every* system's interpreter (ours, upstream Vineyard's, Ray's), so it
imports only the standard library and numpy at module level; pandas, pyarrow, vineyard and
ray are imported where they are used. It is loaded as a sibling of ``worker.py`` (the script's
directory is first on ``sys.path``), and the orchestrator imports it as ``bench.worker_lib``
for :func:`shm_held`.

Backends
    :class:`VineyardBackend` drives ours and upstream alike (same import name, same API), and
    :class:`RayBackend` drives Ray. Workloads only call ``put / get / delete`` and, where a
    system has them, the metadata calls; a handle is whatever ``put`` returned.

Probes
    Zero-copy is checked, not assumed: every buffer of a value returned by ``get`` must lie in
    a mapping of the system's shared memory (``/proc/self/maps``: ours ``/memfd:vineyard-<pid>-<n>``,
    upstream ``/memfd:vineyard-bulk-...``, Ray ``/dev/shm/plasma...``), numpy arrays must be
    read-only, and the reader's ``RssAnon`` must stay flat. :func:`shm_held` adds up the
    shared memory a store's processes hold (allocated blocks of their memfd and /dev/shm
    files, open or mapped), which is how "memory held after everything was deleted" is read.
"""

from __future__ import annotations

import bisect
import gc
import os
import re
import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

__all__ = [
    "STORE_MAPPING",
    "Mappings",
    "RayBackend",
    "VineyardBackend",
    "arrow_buffers",
    "descendants",
    "frame_buffers",
    "make_backend",
    "rss_anon",
    "shared_like",
    "shm_held",
    "size_label",
    "source_array",
    "timed",
    "zero_copy_report",
]

#: How each system's shared memory shows in /proc/self/maps.
STORE_MAPPING: dict[str, re.Pattern[str]] = {
    "ours": re.compile(r"^/memfd:vineyard-\d+-\d+"),
    "upstream": re.compile(r"^/memfd:vineyard-bulk"),
    "ray": re.compile(r"^/dev/shm/plasma"),
}

_SHM_FILE = re.compile(r"^(/memfd:|/dev/shm/)")


def size_label(n: int) -> str:
    """``1048576`` → ``'1 MiB'``: the case names of the size tables."""
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift} {unit}"
    return f"{n} B"


def source_array(nbytes: int) -> np.ndarray:
    """The float64 array of (about) ``nbytes`` every array workload puts."""
    return np.arange(max(1, nbytes // 8), dtype=np.float64)


def shared_like(src: np.ndarray) -> tuple[Any, np.ndarray]:
    """A shared mapping (and an array over it) shaped like ``src``, every page faulted in:
    the kind of memory a store's put copies into, for the memcpy limits."""
    import mmap

    segment = mmap.mmap(-1, max(1, src.nbytes), mmap.MAP_SHARED)
    dst = np.frombuffer(segment, dtype=src.dtype, count=src.size).reshape(src.shape)
    dst.fill(1)
    return segment, dst


# -- timing ------------------------------------------------------------------------------
def timed(fn: Callable[[], Any], reps: int, warmup: int = 2, budget: float | None = None) -> list[float]:
    """Seconds per call of ``fn`` (``reps`` samples after ``warmup`` calls), bounded by ``budget`` s."""
    for _ in range(warmup):
        fn()
    perf = time.perf_counter
    deadline = perf() + budget if budget is not None else None
    samples: list[float] = []
    for _ in range(reps):
        t0 = perf()
        fn()
        samples.append(perf() - t0)
        if deadline is not None and perf() > deadline and len(samples) >= 3:
            break
    return samples


# -- /proc probes ------------------------------------------------------------------------
class Mappings:
    """A snapshot of ``/proc/<pid>/maps``: which mapping holds an address."""

    def __init__(self, pid: int | str = "self") -> None:
        self.starts: list[int] = []
        self.rows: list[tuple[int, int, str, str]] = []
        with open(f"/proc/{pid}/maps") as f:
            for line in f:
                parts = line.split(maxsplit=5)
                start, end = (int(x, 16) for x in parts[0].split("-"))
                path = parts[5].strip() if len(parts) == 6 else ""
                self.rows.append((start, end, parts[1], path))
        self.rows.sort()
        self.starts = [r[0] for r in self.rows]

    def find(self, address: int) -> tuple[int, int, str, str] | None:
        i = bisect.bisect_right(self.starts, address) - 1
        if i >= 0 and self.rows[i][0] <= address < self.rows[i][1]:
            return self.rows[i]
        return None


def rss_anon(pid: int | str = "self") -> int:
    """Private resident memory (``RssAnon``) of a process, in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    return 0


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo and len(out) < 10_000:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, ()))
    return out


def shm_held(pids: Iterable[int]) -> dict[str, Any]:
    """Shared memory allocated in the memfd and /dev/shm files these processes hold.

    Each file is counted once (by device and inode), by its allocated blocks: pages a store
    gave back with ``MADV_REMOVE``/punch-hole no longer count, pages it keeps do.
    """
    seen: dict[tuple[int, int], tuple[str, int, int]] = {}
    for pid in pids:
        for folder in (f"/proc/{pid}/fd", f"/proc/{pid}/map_files"):
            try:
                entries = os.listdir(folder)
            except OSError:
                continue
            for entry in entries:
                link = f"{folder}/{entry}"
                try:
                    target = os.readlink(link)
                    if not _SHM_FILE.match(target):
                        continue
                    st = os.stat(link)
                except OSError:
                    continue
                seen.setdefault((st.st_dev, st.st_ino), (target, st.st_blocks * 512, st.st_size))
    files = sorted(seen.values(), key=lambda f: -f[1])
    return {
        "bytes": sum(f[1] for f in files),
        "files": [{"path": p, "allocated": a, "size": s} for p, a, s in files[:20]],
    }


def arrow_buffers(array: Any) -> list[tuple[int, int]]:
    """``(address, size)`` of every non-empty buffer of an Arrow (chunked) array or table."""
    out: list[tuple[int, int]] = []
    columns = array.columns if hasattr(array, "columns") and hasattr(array, "schema") else [array]
    for column in columns:
        chunks = column.chunks if hasattr(column, "chunks") else [column]
        for chunk in chunks:
            for buf in chunk.buffers():
                if buf is not None and buf.size > 0:
                    out.append((buf.address, buf.size))
    return out


def frame_buffers(df: Any) -> tuple[list[tuple[int, int]], list[bool]]:
    """Buffers of a DataFrame's columns and, for numpy-backed ones, whether they are read-only."""
    out: list[tuple[int, int]] = []
    readonly: list[bool] = []
    for i in range(df.shape[1]):
        column = df.iloc[:, i]
        values = column.array
        pa_array = getattr(values, "_pa_array", None)  # Arrow-backed (pandas 3 ``str``)
        if pa_array is not None:
            out.extend(arrow_buffers(pa_array))
            continue
        arr = column.to_numpy(copy=False)
        if arr.dtype == object:
            out.append((0, arr.nbytes))  # Python objects: never in a store's mapping
            continue
        if arr.nbytes:
            out.append((arr.__array_interface__["data"][0], arr.nbytes))
            readonly.append(not arr.flags.writeable)
    return out, readonly


def zero_copy_report(system: str, buffers: list[tuple[int, int]], readonly: list[bool],
                     rss_delta: int, nbytes: int) -> dict[str, Any]:
    """Whether every buffer lies in ``system``'s shared memory, is read-only, and RssAnon stayed flat."""
    pattern = STORE_MAPPING.get(system)
    maps = Mappings()
    paths: set[str] = set()
    outside = 0
    for address, _size in buffers:
        row = maps.find(address) if address else None
        path = row[3] if row else "(none)"
        paths.add(path)
        if pattern is None or not pattern.match(path):
            outside += 1
    in_store = bool(buffers) and outside == 0
    flat = rss_delta < max(8 << 20, nbytes // 10) if nbytes >= (64 << 20) else rss_delta < (8 << 20)
    return {
        "zero_copy": in_store and all(readonly) and flat,
        "in_store": in_store,
        "buffers": len(buffers),
        "outside": outside,
        "readonly": all(readonly),
        "rss_anon_delta": rss_delta,
        "mappings": sorted(paths)[:4],
    }


def array_zero_copy(system: str, get: Callable[[], Any], nbytes: int) -> tuple[dict[str, Any], Any]:
    """Get a value with RssAnon measured around it (pages touched), and report on its buffers.

    One get is made and dropped first, so that first-call costs (lazy imports, heap growth)
    do not show as a copy.
    """
    get()
    gc.collect()
    before = rss_anon()
    value = get()
    if isinstance(value, np.ndarray) and value.size:
        step = max(1, 4096 // max(1, value.itemsize))
        float(value.reshape(-1)[::step].sum())  # touch every page: a copy would show now
        buffers = [(value.__array_interface__["data"][0], value.nbytes)]
        readonly = [not value.flags.writeable]
    else:
        buffers, readonly = [], [False]
    return zero_copy_report(system, buffers, readonly, rss_anon() - before, nbytes), value


# -- backends ----------------------------------------------------------------------------
class Unsupported(Exception):
    """The system has no such operation (e.g. names in Ray)."""


class VineyardBackend:
    """Ours or upstream Vineyard: both are ``import vineyard`` with the same client API."""

    has_names = True

    def __init__(self, system: str, socket: str) -> None:
        import vineyard

        self.system = system
        self.vineyard = vineyard
        self.client = vineyard.connect(socket)

    def versions(self) -> dict[str, str]:
        return {"vineyard": str(getattr(self.vineyard, "__version__", "?")),
                "vineyard_path": os.path.dirname(self.vineyard.__file__)}

    def put(self, value: Any, persist: bool = False) -> Any:
        return self.client.put(value, persist=persist) if persist else self.client.put(value)

    def get(self, handle: Any) -> Any:
        return self.client.get(handle)

    def delete(self, handle: Any) -> None:
        self.client.delete(handle)

    def delete_many(self, handles: list[Any]) -> None:
        for i in range(0, len(handles), 1000):
            self.client.delete(handles[i : i + 1000])

    def export(self, handle: Any) -> Any:
        return int(handle)

    def adopt(self, exported: Any) -> Any:
        return self.vineyard.ObjectID(int(exported))

    def exists(self, handle: Any) -> bool:
        return bool(self.client.exists(handle))

    def put_name(self, handle: Any, name: str) -> None:
        self.client.put_name(handle, name)

    def get_name(self, name: str) -> Any:
        return self.client.get_name(name)

    def drop_name(self, name: str) -> None:
        self.client.drop_name(name)

    def get_meta(self, handle: Any) -> Any:
        return self.client.get_meta(handle)

    def list_objects(self) -> Any:
        return self.client.list_objects("*", False, 5)

    def flush(self) -> None:
        """One cheap request: ours sends queued releases ahead of it."""
        self.client.exists(self.vineyard.ObjectID(1 << 62 | 1))

    def store_pids(self, daemon_pid: int | None) -> list[int]:
        return descendants(daemon_pid) if daemon_pid else []

    def status(self) -> dict[str, Any]:
        s = self.client.status
        return {k: getattr(s, k, None) for k in ("memory_usage", "memory_limit", "cached_memory")}

    def close(self) -> None:
        self.client.close()


class RayBackend:
    """Ray's object store: ``ray.put`` / ``ray.get``; a handle is an ObjectRef, freed when dropped."""

    has_names = False

    def __init__(self, system: str, socket: str | None = None, start: bool = True) -> None:
        import ray

        self.system = system
        self.ray = ray
        self._tmp: str | None = None
        if start and not ray.is_initialized():
            import tempfile

            self._tmp = tempfile.mkdtemp(prefix="rb-", dir="/tmp")  # short: socket paths are bounded
            ray.init(
                address="local",
                num_cpus=2,
                include_dashboard=False,
                log_to_driver=False,
                logging_level="ERROR",
                _node_ip_address="127.0.0.1",
                _temp_dir=self._tmp,
            )

    def versions(self) -> dict[str, str]:
        return {"ray": self.ray.__version__}

    def put(self, value: Any, persist: bool = False) -> Any:
        return self.ray.put(value)

    def get(self, handle: Any) -> Any:
        return self.ray.get(handle)

    def delete(self, handle: Any) -> None:
        """Nothing to send: the object goes when the caller drops its last reference."""

    def delete_many(self, handles: list[Any]) -> None:
        handles.clear()

    def export(self, handle: Any) -> Any:
        return [handle]  # inside a list, Ray passes the reference instead of resolving it

    def adopt(self, exported: Any) -> Any:
        return exported[0]

    def _no(self, *args: Any) -> Any:
        raise Unsupported("Ray has no names or object metadata API")

    exists = put_name = get_name = drop_name = get_meta = list_objects = _no

    def flush(self) -> None:
        gc.collect()

    def store_pids(self, daemon_pid: int | None) -> list[int]:
        return descendants(os.getpid())

    def status(self) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        if self._tmp is not None:
            self.ray.shutdown()
            import shutil

            shutil.rmtree(self._tmp, ignore_errors=True)  # Ray's session logs


def make_backend(system: str, socket: str | None, start_ray: bool = True) -> Any:
    if system in ("ours", "upstream"):
        assert socket is not None
        return VineyardBackend(system, socket)
    if system == "ray":
        return RayBackend(system, start=start_ray)
    raise ValueError(f"unknown system {system!r}")


# -- a second process --------------------------------------------------------------------
class Helper:
    """What a second, already running process does: get objects it is told about, or run
    put+get pairs against the store. Runs in a subprocess (ours, upstream) or a Ray actor."""

    def __init__(self, system: str, socket: str | None) -> None:
        self.system = system
        self.backend = make_backend(system, socket, start_ray=False)

    def ping(self) -> int:
        return os.getpid()

    def get_many(self, exported: Any, reps: int, nbytes: int, warmup: int = 2,
                 budget: float | None = None) -> dict[str, Any]:
        backend = self.backend
        handle = backend.adopt(exported)
        report, value = array_zero_copy(self.system, lambda: backend.get(handle), nbytes)
        del value
        samples = timed(lambda: backend.get(handle), reps, warmup, budget)
        return {"samples": samples, "zc": report}

    def pairs(self, start_at: float, end_at: float) -> dict[str, Any]:
        backend = self.backend
        value = np.zeros(1)
        keep = backend.has_names  # vineyard objects stay until deleted; Ray's go with the ref
        warm = [backend.put(value) for _ in range(20)]
        for handle in warm:
            backend.get(handle)
        if keep:
            backend.delete_many(warm)  # "memory held after deleting everything" means everything
        del warm
        handles: list[Any] = []
        while time.time() < start_at:
            time.sleep(min(0.01, max(0.0, start_at - time.time())))
        perf = time.perf_counter
        stop = perf() + (end_at - time.time())
        t0 = perf()
        count = 0
        while True:
            handle = backend.put(value)
            backend.get(handle)
            if keep:
                handles.append(handle)
            count += 1
            if perf() >= stop:
                break
        span = perf() - t0
        backend.delete_many(handles)
        return {"count": count, "span": span}
