"""A DataFrame from one Ray task to another: plain Ray against vineyard references.

    .venv/bin/python -m bench.engines.ray_transfer                 # 100 MiB, 5 rounds
    .venv/bin/python -m bench.engines.ray_transfer --size 400 --rounds 3 --json out.json

Both modes run the same producer (builds a two-column float64 DataFrame of ``--size`` MiB)
and the same consumer (sums every column, so every page is touched):

* ``ray``: the producer returns the DataFrame; Ray stores it in its object store (plasma)
  and hands the consumer a zero-copy view of it.
* ``vineyard``: the producer is decorated with ``store_returns`` and returns a
  ``VineyardRef``; the consumer (``resolve_args``) maps the store's pages.

Reported per mode, as medians over the rounds (modes interleaved, order alternating):
end-to-end time from submitting the producer to the consumer's result, the same minus the
producer alone (``produce``: building the frame and returning its length), Ray's object
store usage while the driver still holds the result (``ray memory --stats-only``, Ray's own
CLI), the vineyard store's usage, where the consumer's buffers live, and how much private
memory (``RssAnon``) the consumer gained while reading every column (for plain Ray counted
from the start of the task body, after Ray mapped the argument). The minimum end-to-end time
is printed too: on a shared machine it is steadier than the median. Ray and the daemon are
stopped by their handles.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

__all__ = ["main"]

MiB = 1 << 20


def _plasma_mib(address: str) -> float:
    """Ray's object store usage in MiB, from ``ray memory --stats-only``."""
    ray_cli = os.path.join(os.path.dirname(sys.executable), "ray")
    out = subprocess.run([ray_cli, "memory", "--stats-only", "--address", address],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    match = re.search(r"Plasma memory usage (\d+(?:\.\d+)?) MiB", out)
    if match is None:
        raise RuntimeError(f"cannot read the plasma usage from `ray memory`: {out!r}")
    return float(match.group(1))


def _consumer_facts(df: Any, before: int) -> dict[str, Any]:
    from vineyard.testing import address_in_store, rss_anon, store_mappings

    mappings = store_mappings()
    plasma = []
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split(maxsplit=5)
            if len(parts) == 6 and "plasma" in parts[5]:
                plasma.append(tuple(int(x, 16) for x in parts[0].split("-")))
    columns = [df[c].to_numpy() for c in df.columns]
    total = sum(float(c.sum()) for c in columns)
    addresses = [c.__array_interface__["data"][0] for c in columns]
    return {
        "sum": total,
        "in_store": all(address_in_store(a, mappings) for a in addresses),
        "in_plasma": all(any(s <= a < e for s, e in plasma) for a in addresses),
        "rss_anon_growth_mib": (rss_anon() - before) / MiB,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=100, help="DataFrame size in MiB (default 100)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per mode (default 5)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    nbytes = args.size * MiB

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # Ray's servers on loopback only
    import numpy as np
    import pandas as pd
    import ray

    import vineyard
    import vineyard.contrib.ray as vray
    from vineyard.testing import Daemon, rss_anon

    daemon = Daemon(size=f"{max(4 * args.size, 256)}Mi")
    os.environ["VINEYARD_IPC_SOCKET"] = daemon.socket
    temp_dir = tempfile.mkdtemp(prefix="vrb-", dir="/tmp")
    try:
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                 object_store_memory=max(4 * nbytes, 256 * MiB), logging_level="ERROR",
                 _node_ip_address="127.0.0.1", _temp_dir=temp_dir)
        address = ray.get_runtime_context().gcs_address
        client = vineyard.connect(daemon.socket)

        def build(n: int) -> pd.DataFrame:
            rows = n // 16
            return pd.DataFrame({"x": np.arange(rows, dtype="float64"), "y": np.full(rows, 0.5)})

        @ray.remote
        def produce_only(n: int) -> int:
            return len(build(n))

        @ray.remote
        def produce_plain(n: int) -> pd.DataFrame:
            return build(n)

        @ray.remote
        def consume_plain(df: pd.DataFrame) -> dict[str, Any]:
            return _consumer_facts(df, rss_anon())

        @ray.remote
        @vray.store_returns(threshold=0)
        def produce_ref(n: int) -> pd.DataFrame:
            return build(n)

        @ray.remote
        def consume_ref(ref: vray.VineyardRef) -> dict[str, Any]:
            before = rss_anon()
            return _consumer_facts(ref.get(), before)

        def run_plain() -> dict[str, Any]:
            start = time.perf_counter()
            produced = produce_plain.remote(nbytes)
            facts = ray.get(consume_plain.remote(produced))
            facts["seconds"] = time.perf_counter() - start
            facts["plasma_mib"] = _plasma_mib(address)  # the driver still holds `produced`
            facts["store_mib"] = client.status.memory_usage / MiB
            del produced
            return facts

        def run_ref() -> dict[str, Any]:
            start = time.perf_counter()
            produced = produce_ref.remote(nbytes)
            facts = ray.get(consume_ref.remote(produced))
            facts["seconds"] = time.perf_counter() - start
            facts["plasma_mib"] = _plasma_mib(address)
            facts["store_mib"] = client.status.memory_usage / MiB
            ray.get(produced).delete()
            return facts

        def run_produce() -> dict[str, Any]:
            start = time.perf_counter()
            ray.get(produce_only.remote(nbytes))
            return {"seconds": time.perf_counter() - start}

        modes = {"produce": run_produce, "ray": run_plain, "vineyard": run_ref}
        for run in modes.values():  # warm up: start the workers, import pandas in them
            run()
        results: dict[str, list[dict[str, Any]]] = {name: [] for name in modes}
        for i in range(args.rounds):
            order = list(modes) if i % 2 == 0 else list(reversed(modes))
            for name in order:
                results[name].append(modes[name]())
        client.close()
    finally:
        ray.shutdown(wait_for_processes=True)
        daemon.stop()
        shutil.rmtree(temp_dir, ignore_errors=True)

    summary = _summarise(results, args.size)
    _print(summary)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"size_mib": args.size, "rounds": args.rounds, "summary": summary, "raw": results}, f, indent=2)
    return 0


def _summarise(results: dict[str, list[dict[str, Any]]], size_mib: int) -> dict[str, dict[str, Any]]:
    produce = statistics.median(r["seconds"] for r in results["produce"])
    out: dict[str, dict[str, Any]] = {"produce": {"seconds": produce}}
    for name in ("ray", "vineyard"):
        rows = results[name]
        seconds = statistics.median(r["seconds"] for r in rows)
        out[name] = {
            "seconds": seconds,
            "min_seconds": min(r["seconds"] for r in rows),
            "transfer_seconds": seconds - produce,
            "plasma_mib": statistics.median(r["plasma_mib"] for r in rows),
            "store_mib": statistics.median(r["store_mib"] for r in rows),
            "consumer_rss_anon_growth_mib": statistics.median(r["rss_anon_growth_mib"] for r in rows),
            "buffers_in": "vineyard" if all(r["in_store"] for r in rows)
            else "plasma" if all(r["in_plasma"] for r in rows) else "private memory",
        }
    out["size_mib"] = {"value": size_mib}
    return out


def _print(summary: dict[str, dict[str, Any]]) -> None:
    size = summary["size_mib"]["value"]
    print(f"{size} MiB DataFrame, producer task -> consumer task (medians)")
    print(f"  producer alone: {summary['produce']['seconds']:.3f} s")
    header = f"  {'mode':<9} {'end-to-end':>11} {'(min)':>9} {'minus producer':>15} {'plasma':>9} {'vineyard':>9} "
    print(header + f"{'consumer RssAnon +':>19}  buffers in")
    for name in ("ray", "vineyard"):
        r = summary[name]
        print(f"  {name:<9} {r['seconds']:>9.3f} s {r['min_seconds']:>7.3f} s {r['transfer_seconds']:>13.3f} s "
              f"{r['plasma_mib']:>5.0f} MiB {r['store_mib']:>5.0f} MiB {r['consumer_rss_anon_growth_mib']:>15.1f} MiB"
              f"  {r['buffers_in']}")


if __name__ == "__main__":
    sys.exit(main())
