"""The physical limits the benchmark's tables compare against (``--system limits``):
memcpy with one and two threads into faulted-in shared memory, a copy into fresh
shared-memory pages, and a pure-Python UNIX-socket round trip to a blocking echo server
(``worker.py --role echo``). Runs under our own interpreter, beside ``worker.py``.
"""

from __future__ import annotations

import gc
import mmap
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import worker_lib as lib

HERE = os.path.dirname(os.path.abspath(__file__))


def _copy2(pool: ThreadPoolExecutor, dst: np.ndarray, src: np.ndarray) -> None:
    half = (src.size // 2 + 7) & ~7
    futures = [pool.submit(np.copyto, dst[:half], src[:half]), pool.submit(np.copyto, dst[half:], src[half:])]
    for f in futures:
        f.result()


def _fresh_copy(src: np.ndarray) -> None:
    fd = os.memfd_create("bench-fresh")
    try:
        os.ftruncate(fd, src.nbytes)
        with mmap.mmap(fd, src.nbytes) as m:
            dst = np.frombuffer(m, dtype=src.dtype)
            np.copyto(dst, src)
            del dst
    finally:
        os.close(fd)


def _rtt(path: str, reps: int, cpu: int | None) -> list[float]:
    server = subprocess.Popen([sys.executable, os.path.join(HERE, "worker.py"), "--role", "echo", "--socket", path]
                              + (["--cpu", str(cpu)] if cpu is not None else []))
    old = os.sched_getaffinity(0)
    try:
        deadline = time.monotonic() + 10
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        while True:
            try:
                sock.connect(path)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})
        message = b"x" * 16

        def once() -> None:
            sock.sendall(message)
            sock.recv(64)

        return lib.timed(once, reps, 200, 20.0)
    finally:
        os.sched_setaffinity(0, old)
        sock.close()
        server.wait(10)


def echo_main(path: str, cpu: int | None) -> int:
    """``--role echo``: a blocking echo server for one connection."""
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    listener.settimeout(30)
    conn, _ = listener.accept()
    while data := conn.recv(64):
        conn.sendall(data)
    conn.close()
    listener.close()
    os.unlink(path)
    return 0


def run_limits(plan: dict[str, Any], rec: Any) -> None:
    """Measure every limit the plan names into ``rec`` (a ``worker.Recorder``)."""
    cfg = plan["limits"]
    budget = plan["case_budget"]
    with ThreadPoolExecutor(2) as pool:
        for nbytes, reps in cfg["sizes"]:
            label = lib.size_label(nbytes)
            src = lib.source_array(nbytes)
            # The destination is shared memory, as every store here writes into: numpy's own
            # buffers get transparent huge pages where the kernel allows them for private
            # memory, which a shared mapping often cannot (shmem_enabled), and a copy into them
            # runs up to ~30% faster than any store can. That figure is shown, not a limit.
            segment, dst = lib.shared_like(src)
            rec.add("memcpy1", label, lib.timed(lambda d=dst, s=src: np.copyto(d, s), reps, 2, budget),
                    nbytes=nbytes)
            rec.add("memcpy2", label, lib.timed(lambda d=dst, s=src: _copy2(pool, d, s), reps, 2, budget),
                    nbytes=nbytes)
            del dst
            segment.close()
            if nbytes >= 64 << 20:
                private = np.empty_like(src)
                private.fill(1.0)
                rec.add("memcpy2_private", label,
                        lib.timed(lambda d=private, s=src: _copy2(pool, d, s), reps, 2, budget), nbytes=nbytes)
                del private
            if nbytes >= 64 << 20:
                rec.add("fresh", label, lib.timed(lambda s=src: _fresh_copy(s), max(2, reps // 2), 1, budget),
                        nbytes=nbytes)
            del src
            gc.collect()
    path = os.path.join(plan["tmp"], "echo.sock")
    rec.add("rtt", "unpinned", _rtt(path, cfg["rtt_reps"], None))
    rec.add("rtt", "pinned to one CPU", _rtt(path, cfg["rtt_reps"], min(os.sched_getaffinity(0))))
