"""Remote fetch between two daemons on one host, against a raw socket copy of the same bytes.

    .venv/bin/python -m bench.engines.remote_fetch                    # 256 MiB, 5 rounds
    .venv/bin/python -m bench.engines.remote_fetch --size 64 --rounds 3 --json out.json

One private etcd and two daemons (A, B) on 127.0.0.1, in one cluster. A ``uint8`` array of
``--size`` MiB is put and persisted on A; then, rounds interleaved:

* ``fetch``: a client of B ``get``s it; its blobs come from A's RPC server into the client's
  private memory (what ``client.get`` does for another instance's object), checksum verified
  the first time;
* ``migrate``: B copies it into its own shared memory (``client.migrate``), then the copy is
  deleted so that the next round copies again;
* ``raw``: a child process ``sendall``s the same number of bytes over a loopback TCP socket
  and this process ``recv_into``s a preallocated buffer: the best a Python process pair does
  with plain sockets, i.e. the ceiling for both of the above.

Medians over the rounds, in MiB/s, and the ratios ``fetch / raw`` and ``migrate / raw``.
Nothing is asserted. Every process is stopped by its own handle.

Fresh memory costs more to fill than to copy into (page faults): ``fetch`` asks for huge
pages, but the store's shared memory gets them only where the kernel allows them for shmem,
so ``migrate`` is fastest when the daemon's reuse cache holds the pages of the previous
copy (``--reuse-cache`` above ``--size``; by default the cache is a quarter of the
daemons' memory, which holds a 64 MiB copy but not a 256 MiB one).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import socket
import statistics
import subprocess
import sys
import time
from typing import Any

__all__ = ["main"]

MiB = 1 << 20

_SENDER = """
import socket, sys
port, size = int(sys.argv[1]), int(sys.argv[2])
payload = memoryview(bytearray(b"x" * size))
with socket.create_connection(("127.0.0.1", port)) as sock:
    while sock.recv(1) == b"g":  # one copy per "go"
        sock.sendall(payload)
"""


def _raw_rounds(size: int, rounds: int) -> list[float]:
    """Seconds per copy of ``size`` bytes from a child process over loopback TCP."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    child = subprocess.Popen([sys.executable, "-c", _SENDER, str(port), str(size)], stdin=subprocess.DEVNULL)
    out: list[float] = []
    try:
        listener.settimeout(30)
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(60)
            buffer = memoryview(bytearray(size))
            for _ in range(rounds):
                started = time.perf_counter()
                conn.sendall(b"g")
                got = 0
                while got < size:
                    n = conn.recv_into(buffer[got:], min(size - got, 8 * MiB))
                    if n == 0:
                        raise ConnectionError("the sender went away")
                    got += n
                out.append(time.perf_counter() - started)
            conn.sendall(b"q")
    finally:
        listener.close()
        try:
            child.wait(10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    return out


def run(size_mib: int, rounds: int, reuse_cache: str | None = None) -> dict[str, Any]:
    import numpy as np

    import vineyard
    from vineyard.store.meta.launch import EtcdProcess
    from vineyard.testing import Daemon

    size = size_mib * MiB
    memory = f"{max(256, 3 * size_mib)}Mi"
    etcd = EtcdProcess()
    daemons: list[Daemon] = []
    try:
        flags = [
            "--meta",
            "etcd",
            "--etcd-endpoints",
            etcd.endpoint,
            "--etcd-prefix",
            "bench-remote",
            "--rpc-host",
            "127.0.0.1",
        ]
        if reuse_cache is not None:
            flags += ["--reuse-cache", reuse_cache]
        daemons = [Daemon(size=memory, rpc=True, args=flags) for _ in range(2)]
        a = vineyard.connect(daemons[0].socket)
        b = vineyard.connect(daemons[1].socket)
        payload = np.random.default_rng(0).integers(0, 255, size=size, dtype=np.uint8)
        digest = hashlib.sha256(payload).hexdigest()
        origin = a.put(payload, persist=True)
        del payload
        fetch, migrate = [], []
        raw = _raw_rounds(size, rounds)
        for i in range(rounds):
            started = time.perf_counter()
            value = b.get(origin)
            fetch.append(time.perf_counter() - started)
            if i == 0 and hashlib.sha256(value).hexdigest() != digest:
                raise AssertionError("the fetched bytes differ from the original")
            del value
            started = time.perf_counter()
            copy = b.migrate(origin)
            migrate.append(time.perf_counter() - started)
            b.delete(copy)
        a.close()
        b.close()
    finally:
        for daemon in daemons:
            daemon.stop()
        etcd.stop()

    def rate(seconds: list[float]) -> float:
        return size / statistics.median(seconds) / MiB

    result = {
        "size_mib": size_mib,
        "rounds": rounds,
        "reuse_cache": reuse_cache,
        "fetch_mib_s": rate(fetch),
        "migrate_mib_s": rate(migrate),
        "raw_mib_s": rate(raw),
    }
    result["fetch_over_raw"] = result["fetch_mib_s"] / result["raw_mib_s"]
    result["migrate_over_raw"] = result["migrate_mib_s"] / result["raw_mib_s"]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=256, help="MiB per object (default 256)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--reuse-cache", default=None, help="the daemons' --reuse-cache (e.g. 512Mi)")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    result = run(args.size, args.rounds, args.reuse_cache)
    print(f"{args.size} MiB, median of {args.rounds} rounds")
    for mode in ("fetch", "migrate", "raw"):
        print(f"  {mode:8s} {result[f'{mode}_mib_s']:8.0f} MiB/s")
    print(f"  fetch / raw   {result['fetch_over_raw']:.2f}")
    print(f"  migrate / raw {result['migrate_over_raw']:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
