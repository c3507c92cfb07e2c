"""Dask on one host: default distributed against workers whose data lives in the store.

    .venv/bin/python -m bench.engines.dask_transfer                   # 100 MB, 256 MB shuffle, 3 rounds
    .venv/bin/python -m bench.engines.dask_transfer --size 400 --rounds 5 --json out.json

Two 2-worker ``LocalCluster``s (processes, one thread each, 4 GiB limit each), started once:

* ``default``: distributed as it comes (its ``SpillBuffer``, loopback TCP between workers);
* ``vineyard``: ``data=(VineyardWorkerData, {...})`` plus ``VineyardWorkerPlugin``.

Workloads, modes interleaved and the order alternating from round to round:

* ``transfer``: a task on w1 builds a float64 DataFrame of ``--size`` MB (``produce``: until
  it is in w1's data, i.e. in the store for ``vineyard``); then a task on w2 sums every column,
  so every page is read (``move_read``: from submitting it to its result).
* ``shuffle``: ``--shuffle`` MB in ``--partitions`` partitions built on the workers
  (``dd.from_map``), shuffled on a random key with ``shuffle_method="tasks"`` (so partitions
  move between workers through distributed's transfers, which is what the store changes), then
  the rows of each output partition summed. Distributed's default P2P shuffle goes through its
  own extension and is reported as a third mode, ``default-p2p``, for reference.

Memory, sampled every 20 ms from ``/proc/<pid>/status`` of both workers, as growth over the
state before (``peak_``: the whole workload; ``move_``: while the frame moves to w2 and is read
there): ``rss`` is what distributed sees (sum of the workers' RSS, shared pages included in
every worker that touched them), ``unique`` is the memory the host really spends (the workers'
private ``RssAnon`` plus the store's usage, counted once).
Bytes pickled: the frames the workers' ``pickle`` serialization family produced (what moved
as a pickle), and all serialized payload frames (``pickle`` + ``dask`` families). Medians over
the rounds; ratios are vineyard / default. Nothing is asserted: numbers are printed (and
written with ``--json``). The daemon and both clusters are stopped by their own handles.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["main"]

MB = 1_000_000


# -- functions that run on the workers ------------------------------------------------------
def _install_counters() -> None:
    """Count the frames each serialization family produces in this worker (once per process)."""
    import builtins
    import importlib

    # the module, not the function ``distributed.protocol`` re-exports under the same name
    ser = importlib.import_module("distributed.protocol.serialize")

    if hasattr(builtins, "_bench_serialized"):
        builtins._bench_serialized.clear()  # type: ignore[attr-defined]
        return
    counts: dict[str, int] = {}

    def wrap(name: str, dumps: Callable[..., Any]) -> Callable[..., Any]:
        def counting(x: Any, context: Any = None) -> Any:
            header, frames = dumps(x, context=context) if wants[name] else dumps(x)
            counts[name] = counts.get(name, 0) + sum(memoryview(f).nbytes for f in frames)
            return header, frames

        return counting

    wants = {}
    for name in ("pickle", "dask"):
        dumps, loads, wants[name] = ser.families[name]
        ser.families[name] = (wrap(name, dumps), loads, True)
    builtins._bench_serialized = counts  # type: ignore[attr-defined]


def _reset_counters() -> None:
    import builtins

    builtins._bench_serialized.clear()  # type: ignore[attr-defined]


def _read_counters() -> dict[str, int]:
    import builtins

    return dict(builtins._bench_serialized)  # type: ignore[attr-defined]


def _make_frame(nbytes: int, seed: int = 0) -> Any:
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    rows = nbytes // 16
    return pd.DataFrame({"a": rng.random(rows), "b": rng.random(rows)})


def _frame_len(frame: Any) -> int:
    return len(frame)


def _sum_columns(frame: Any) -> float:
    return float(sum(frame[c].to_numpy().sum() for c in frame.columns))


def _shuffle_part(index: int, nbytes: int, keys: int) -> Any:
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(index)
    rows = nbytes // 16
    return pd.DataFrame({"key": rng.integers(0, keys, rows), "val": rng.random(rows)})


def _part_sum(frame: Any) -> Any:
    import pandas as pd

    return pd.Series([float(frame["val"].sum())])


# -- measuring ------------------------------------------------------------------------------
def _status(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssShmem"):
                out[key] = int(rest.split()[0]) * 1024
    return out


class _Sampler:
    """Peak memory of the workers (and the store) while a workload runs."""

    def __init__(self, pids: list[int], store_usage: Callable[[], int]) -> None:
        self.pids, self.store_usage = pids, store_usage
        self.base = self._sample()
        self.peak = dict(self.base)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> dict[str, int]:
        statuses = [_status(p) for p in self.pids]
        rss = sum(s["VmRSS"] for s in statuses)
        unique = sum(s["RssAnon"] for s in statuses) + self.store_usage()
        return {"rss": rss, "unique": unique}

    def _run(self) -> None:
        while not self._stop.is_set():
            for key, value in self._sample().items():
                self.peak[key] = max(self.peak[key], value)
            self._stop.wait(0.02)

    def __enter__(self) -> _Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        for key, value in self._sample().items():
            self.peak[key] = max(self.peak[key], value)

    def growth(self) -> dict[str, float]:
        return {f"{k}_mb": (self.peak[k] - self.base[k]) / MB for k in self.peak}


class _Mode:
    def __init__(self, name: str, cluster: Any, store_client: Any = None) -> None:
        from distributed import Client

        self.name = name
        self.cluster = cluster
        self.client = Client(cluster)
        self.store = store_client
        self.workers = sorted(self.client.scheduler_info()["workers"])
        self.pids = [self.client.run(os.getpid, workers=[w])[w] for w in self.workers]
        self.client.run(_install_counters)

    def store_usage(self) -> int:
        return int(self.store.status.memory_usage) if self.store is not None else 0

    def settle(self) -> None:
        """Let released data go (and, with the store, wait until it is freed)."""
        deadline = time.monotonic() + 30
        while self.store is not None and self.store.status.objects and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)

    def pickled(self) -> dict[str, float]:
        counts = self.client.run(_read_counters)
        pickle = sum(c.get("pickle", 0) for c in counts.values())
        every = sum(c.get("pickle", 0) + c.get("dask", 0) for c in counts.values())
        return {"pickled_mb": pickle / MB, "serialized_mb": every / MB}

    def close(self) -> None:
        self.client.close()
        self.cluster.close()


def _transfer(mode: _Mode, nbytes: int, seed: int) -> dict[str, Any]:
    from distributed import wait

    client = mode.client
    w1, w2 = mode.workers
    client.run(_reset_counters)
    with _Sampler(mode.pids, mode.store_usage) as whole:
        start = time.perf_counter()
        made = client.submit(_make_frame, nbytes, seed, workers=[w1], pure=False)
        wait(made)
        produced = time.perf_counter()
        with _Sampler(mode.pids, mode.store_usage) as moving:
            total = client.submit(_sum_columns, made, workers=[w2], pure=False).result()
        done = time.perf_counter()
    result = {
        "end_to_end_s": done - start,
        "produce_s": produced - start,
        "move_read_s": done - produced,
        "check": total,
        **{f"peak_{k}": v for k, v in whole.growth().items()},
        **{f"move_{k}": v for k, v in moving.growth().items()},
        **mode.pickled(),
    }
    del made
    mode.settle()
    return result


def _shuffle(mode: _Mode, nbytes: int, partitions: int, method: str) -> dict[str, Any]:
    import dask.dataframe as dd

    client = mode.client
    client.run(_reset_counters)
    part = nbytes // partitions
    with _Sampler(mode.pids, mode.store_usage) as sampler:
        start = time.perf_counter()
        ddf = dd.from_map(_shuffle_part, range(partitions), nbytes=part, keys=partitions * 100,
                          meta={"key": "int64", "val": "float64"})
        shuffled = ddf.shuffle("key", npartitions=partitions, shuffle_method=method)
        sums = client.compute(shuffled.map_partitions(_part_sum, meta=(None, "float64"))).result()
        elapsed = time.perf_counter() - start
    result = {"wall_s": elapsed, "check": float(sums.sum()), **sampler.growth(), **mode.pickled()}
    del sums
    mode.settle()
    return result


def _median(rows: list[dict[str, Any]]) -> dict[str, float]:
    keys = [k for k in rows[0] if isinstance(rows[0][k], (int, float))]
    out = {k: statistics.median(r[k] for r in rows) for k in keys}
    if "end_to_end_s" in rows[0]:
        out["end_to_end_min_s"] = min(r["end_to_end_s"] for r in rows)
    if "wall_s" in rows[0]:
        out["wall_min_s"] = min(r["wall_s"] for r in rows)
    return out


def _ratio(ours: float, theirs: float) -> str:
    return f"{ours / theirs:.2f}" if theirs else ("-" if not ours else "inf")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=100, help="transfer DataFrame size in MB (default 100)")
    parser.add_argument("--shuffle", type=int, default=256, help="shuffled data in MB (default 256)")
    parser.add_argument("--partitions", type=int, default=8, help="shuffle partitions (default 8)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per mode (default 3)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)

    # before distributed is imported here or in a worker: keep its INFO logs out of the report
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "error")
    from distributed import LocalCluster

    import vineyard
    from vineyard.contrib.dask import VineyardWorkerData, VineyardWorkerPlugin
    from vineyard.testing import Daemon

    def cluster(**kw: Any) -> Any:
        return LocalCluster(n_workers=2, threads_per_worker=1, processes=True, memory_limit="4GiB",
                            host="127.0.0.1", dashboard_address=None,
                            scheduler_kwargs={"dashboard_address": "127.0.0.1:0"}, **kw)

    daemon = Daemon(size="6Gi")
    modes: dict[str, _Mode] = {}
    try:
        store = vineyard.connect(daemon.socket)
        modes["default"] = _Mode("default", cluster())
        ours = _Mode("vineyard", cluster(data=(VineyardWorkerData, {"socket": daemon.socket})), store)
        ours.client.register_plugin(VineyardWorkerPlugin())
        modes["vineyard"] = ours
        for mode in modes.values():  # warm up: imports and first-use costs in the workers
            _transfer(mode, MB, 0)
            _shuffle(mode, 16 * MB, args.partitions, "tasks")
        _shuffle(modes["default"], 16 * MB, args.partitions, "p2p")
        results: dict[str, dict[str, list[dict[str, Any]]]] = {"transfer": {}, "shuffle": {}}
        for round_ in range(args.rounds):
            order = ["default", "vineyard"] if round_ % 2 == 0 else ["vineyard", "default"]
            for name in order:
                mode = modes[name]
                results["transfer"].setdefault(name, []).append(_transfer(mode, args.size * MB, round_))
                results["shuffle"].setdefault(name, []).append(
                    _shuffle(mode, args.shuffle * MB, args.partitions, "tasks"))
            results["shuffle"].setdefault("default-p2p", []).append(
                _shuffle(modes["default"], args.shuffle * MB, args.partitions, "p2p"))
            print(f"round {round_ + 1}/{args.rounds} done", flush=True)
    finally:
        for mode in modes.values():
            mode.close()
        daemon.stop()

    summary = {w: {m: _median(rows) for m, rows in by_mode.items()} for w, by_mode in results.items()}
    print(f"\nDask on one host: {args.size} MB transfer, {args.shuffle} MB shuffle in "
          f"{args.partitions} partitions, medians of {args.rounds} rounds (vineyard / default)")
    columns = {
        "transfer": ["end_to_end_s", "end_to_end_min_s", "produce_s", "move_read_s", "peak_unique_mb",
                     "move_rss_mb", "move_unique_mb", "pickled_mb"],
        "shuffle": ["wall_s", "wall_min_s", "rss_mb", "unique_mb", "pickled_mb", "serialized_mb"],
    }
    for workload, keys in columns.items():
        print(f"\n{workload}")
        width = max(len(k) for k in keys) + 2
        print(f"  {'':12}" + "".join(f"{k:>{width}}" for k in keys))
        for mode, row in summary[workload].items():
            print(f"  {mode:12}" + "".join(f"{row[k]:>{width}.3f}" for k in keys))
        base, ours_row = summary[workload]["default"], summary[workload]["vineyard"]
        print(f"  {'ratio':12}" + "".join(f"{_ratio(ours_row[k], base[k]):>{width}}" for k in keys))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "summary": summary, "rounds": results}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
