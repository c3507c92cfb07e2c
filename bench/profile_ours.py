"""Profile our store on one workload: the client in-process, the daemon under cProfile.

    .venv/bin/python -m bench.profile_ours tiny_put --n 5000
    .venv/bin/python -m bench.profile_ours pairs --n 5000 --top 30

Workloads: ``tiny_put``, ``tiny_get``, ``pairs`` (put+get, objects kept as the benchmark
does), ``frame_get`` (1e6 x 8 float64 DataFrame), ``frame_put``, ``big_put`` (512 MiB).
The daemon runs as ``python -m cProfile -o ... -m vineyard`` and is stopped by its PID with
SIGTERM (its handler ends the loop, so the profile is written). Prints the time per
operation and the top functions of each side by own time and by cumulative time.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import os
import pstats
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from bench.systems import clean_env, ours_python

__all__ = ["WORKLOADS", "main"]


def _tiny_put(client: Any, n: int) -> Callable[[], None]:
    value = np.zeros(1)
    ids: list[Any] = []

    def run() -> None:
        for _ in range(n):
            ids.append(client.put(value))

    return run


def _tiny_get(client: Any, n: int) -> Callable[[], None]:
    object_id = client.put(np.zeros(1))

    def run() -> None:
        for _ in range(n):
            client.get(object_id)

    return run


def _pairs(client: Any, n: int) -> Callable[[], None]:
    value = np.zeros(1)

    def run() -> None:
        for _ in range(n):
            client.get(client.put(value))

    return run


def _frame(rows: int = 1_000_000) -> Any:
    import pandas as pd

    return pd.DataFrame({f"c{i}": np.arange(rows, dtype=np.float64) * (i + 1) for i in range(8)})


def _frame_get(client: Any, n: int) -> Callable[[], None]:
    object_id = client.put(_frame())

    def run() -> None:
        for _ in range(n):
            client.get(object_id)

    return run


def _frame_put(client: Any, n: int) -> Callable[[], None]:
    df = _frame()

    def run() -> None:
        for _ in range(n):
            client.delete(client.put(df))

    return run


def _big_put(client: Any, n: int) -> Callable[[], None]:
    src = np.arange((512 << 20) // 8, dtype=np.float64)

    def run() -> None:
        for _ in range(n):
            client.delete(client.put(src))

    return run


WORKLOADS: dict[str, Callable[[Any, int], Callable[[], None]]] = {
    "tiny_put": _tiny_put, "tiny_get": _tiny_get, "pairs": _pairs,
    "frame_get": _frame_get, "frame_put": _frame_put, "big_put": _big_put,
}


def _top(stats: pstats.Stats, key: str, top: int) -> str:
    out = io.StringIO()
    stats.stream = out  # type: ignore[attr-defined]
    stats.sort_stats(key).print_stats(top)
    lines = out.getvalue().splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip().startswith("ncalls")), 0)
    return "\n".join(lines[start:])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.profile_ours", description=__doc__.splitlines()[0])
    p.add_argument("workload", choices=sorted(WORKLOADS))
    p.add_argument("--n", type=int, default=3000, help="operations (default 3000)")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--size", default="8Gi")
    p.add_argument("--args", default="", help="extra daemon flags, e.g. '--reuse-cache 2Gi'")
    args = p.parse_args(argv)
    tmp = tempfile.mkdtemp(prefix="vb-prof-")
    sock = os.path.join(tmp, "ours.sock")
    daemon_prof = os.path.join(tmp, "daemon.prof")
    cmd = [ours_python(), "-m", "cProfile", "-o", daemon_prof, "-m", "vineyard", "--socket", sock,
           "--size", args.size, "--norpc", *args.args.split()]
    daemon = subprocess.Popen(cmd, cwd=tmp, env=clean_env(), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            probe = socket.socket(socket.AF_UNIX)
            try:
                probe.connect(sock)
                break
            except OSError:
                if time.monotonic() > deadline or daemon.poll() is not None:
                    raise RuntimeError("the daemon did not start") from None
                time.sleep(0.05)
            finally:
                probe.close()
        import vineyard

        client = vineyard.connect(sock)
        run = WORKLOADS[args.workload](client, args.n)
        gc.collect()
        profiler = cProfile.Profile()
        t0 = time.perf_counter()
        profiler.enable()
        run()
        profiler.disable()
        wall = time.perf_counter() - t0
        client.close()
    finally:
        if daemon.poll() is None:
            os.kill(daemon.pid, signal.SIGTERM)
            try:
                daemon.wait(30)
            except subprocess.TimeoutExpired:
                os.kill(daemon.pid, signal.SIGKILL)
                daemon.wait()
    print(f"{args.workload}: {args.n} operations, {wall / args.n * 1e6:.1f} µs each (under the profiler)")
    client_stats = pstats.Stats(profiler)
    print("\n== client, by own time\n" + _top(client_stats, "tottime", args.top))
    print("\n== client, by cumulative time\n" + _top(client_stats, "cumulative", args.top))
    if os.path.exists(daemon_prof):
        daemon_stats = pstats.Stats(daemon_prof)
        print("\n== daemon, by own time\n" + _top(daemon_stats, "tottime", args.top))
        print("\n== daemon, by cumulative time\n" + _top(daemon_stats, "cumulative", args.top))
    else:
        print("\n(no daemon profile was written)", file=sys.stderr)
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
