"""Soak: client processes (and threads) hammer one daemon with mixed, checksummed operations.

::

    python -m bench.soak                          # 60 s, 4 processes, a private 1 GiB daemon
    python -m bench.soak --seconds 600 --procs 8 --threads 2
    python -m bench.soak --socket /tmp/vineyard.sock   # a daemon you started yourself

Each worker puts numpy arrays and bytes of random sizes and dtypes (some persisted and
named; the name carries the payload's CRC-32, size and dtype, so any worker can check it),
gets its own objects and other workers' named ones back and checks every byte, holds some
views while other workers delete, waits for names that never come (with a timeout), and
deletes. At the end each worker checks and deletes what it still owns. The report gives the
operations done, the errors, and the daemon's memory at the start and at the end, which must
be equal once everything is deleted.

Not a test: ``tests/reliability/test_soak.py`` runs a short version, and
``tests/reliability/test_concurrency.py`` a bounded one with threads and processes.
"""

from __future__ import annotations

import argparse
import collections
import gc
import json
import os
import random
import subprocess
import sys
import threading
import time
import uuid
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["SoakReport", "WorkerReport", "main", "run", "worker"]

REPO = Path(__file__).resolve().parents[1]
_MAX_OWNED = 48  # objects a worker keeps at once: bounds the memory a soak needs
_MAX_HELD = 8  # views a worker holds while others may delete their objects
_MAX_ERRORS = 25  # error messages kept per worker (all are counted)
_DTYPES = ("uint8", "int32", "float64", "int16")


@dataclass
class WorkerReport:
    """What one worker did."""

    worker: str
    ops: dict[str, int] = field(default_factory=lambda: collections.defaultdict(int))
    errors: list[str] = field(default_factory=list)
    error_count: int = 0
    raced: int = 0  # reads of another worker's object deleted meanwhile: expected, not errors
    verified: int = 0  # payloads whose every byte was checked
    bytes_put: int = 0

    def error(self, what: str, exc: BaseException | str) -> None:
        self.error_count += 1
        if len(self.errors) < _MAX_ERRORS:
            text = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
            self.errors.append(f"{self.worker} {what}: {text}")

    def to_json(self) -> dict[str, Any]:
        return {"worker": self.worker, "ops": dict(self.ops), "errors": self.errors,
                "error_count": self.error_count, "raced": self.raced, "verified": self.verified,
                "bytes_put": self.bytes_put}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> WorkerReport:
        report = cls(doc["worker"])
        report.ops.update(doc["ops"])
        report.errors, report.error_count = list(doc["errors"]), int(doc["error_count"])
        report.raced, report.verified, report.bytes_put = int(doc["raced"]), int(doc["verified"]), int(doc["bytes_put"])
        return report


@dataclass
class _Owned:
    crc: int
    nbytes: int
    dtype: str  # "bytes" for a bytes value
    name: str | None


def _crc(value: Any) -> tuple[int, int, str]:
    """CRC-32, size and kind of a value as stored (array bytes, or the bytes themselves)."""
    if isinstance(value, np.ndarray):
        data = np.ascontiguousarray(value)
        return zlib.crc32(data.view(np.uint8).reshape(-1)), data.nbytes, str(data.dtype)
    view = memoryview(value).cast("B")
    return zlib.crc32(view), view.nbytes, "bytes"


def _payload(rng: np.random.Generator, py: random.Random) -> Any:
    roll = py.random()
    if roll < 0.70:
        nbytes = py.randrange(0, 64 << 10)
    elif roll < 0.95:
        nbytes = py.randrange(64 << 10, 1 << 20)
    else:
        nbytes = py.randrange(1 << 20, 4 << 20)  # dedicated segments
    if py.random() < 0.2:
        return rng.integers(0, 256, nbytes, dtype=np.uint8).tobytes()
    dtype = np.dtype(py.choice(_DTYPES))
    count = nbytes // dtype.itemsize
    raw = rng.integers(0, 256, count * dtype.itemsize, dtype=np.uint8)
    array = raw.view(dtype)
    if count % 2 == 0 and count and py.random() < 0.3:
        array = array.reshape(2, count // 2)
    return array


def worker(
    socket: str,
    wid: str,
    run_id: str,
    seconds: float,
    max_ops: int | None = None,
    seed: int = 0,
    client: Any = None,
) -> WorkerReport:
    """Mixed operations against the daemon at ``socket`` until ``seconds`` or ``max_ops``.

    Parameters
    ----------
    socket
        The daemon's IPC socket.
    wid
        This worker's name (unique within the run).
    run_id
        Prefix of every name this run gives, so that workers only read each other's objects.
    seconds, max_ops
        Stop at whichever comes first.
    seed
        Seeds the choice of operations and payloads.
    client
        A client to share with other threads; by default the worker connects on its own.

    Returns
    -------
    WorkerReport
        Counts per operation, errors, payloads verified.
    """
    import vineyard
    from vineyard import ObjectNotExistsException

    report = WorkerReport(wid)
    py = random.Random(f"{seed}/{wid}")
    rng = np.random.default_rng(py.getrandbits(64))
    own_client = client is None
    c = vineyard.connect(socket) if own_client else client
    owned: dict[Any, _Owned] = {}
    held: collections.deque[Any] = collections.deque(maxlen=_MAX_HELD)
    prefix = f"soak/{run_id}/"
    counter = 0

    def check(what: str, value: Any, expect: _Owned) -> None:
        got = _crc(value)
        if got != (expect.crc, expect.nbytes, expect.dtype):
            report.error(what, f"payload mismatch: got crc/size/dtype {got}, stored "
                               f"{(expect.crc, expect.nbytes, expect.dtype)}")
        else:
            report.verified += 1

    def put() -> None:
        nonlocal counter
        value = _payload(rng, py)
        crc, nbytes, dtype = _crc(value)
        name = None
        counter += 1
        if dtype != "bytes" and py.random() < 0.4:
            name = f"{prefix}{wid}/{counter}/{crc:08x}/{nbytes}/{dtype}"
            object_id = c.put(value, persist=True, name=name)
        else:
            object_id = c.put(value)
        owned[object_id] = _Owned(crc, nbytes, dtype, name)
        report.bytes_put += nbytes

    def get_own() -> None:
        object_id = py.choice(list(owned))
        check("get", c.get(object_id), owned[object_id])

    def get_other() -> None:
        names = c.list_names(prefix + "*", limit=64)
        others = [n for n in names if not n.startswith(f"{prefix}{wid}/")]
        if not others:
            return
        name = py.choice(others)
        crc, nbytes, dtype = name.rsplit("/", 3)[1:]
        expect = _Owned(int(crc, 16), int(nbytes), dtype, name)
        try:
            value = c.get(names[name])
        except ObjectNotExistsException:
            report.raced += 1  # its owner deleted it between list_names and get
            return
        check("get_other", value, expect)
        if py.random() < 0.5:
            held.append(value)  # keep reading it while its owner may delete it

    def hold() -> None:
        object_id = py.choice(list(owned))
        value = c.get(object_id)
        check("hold", value, owned[object_id])
        held.append(value)

    def delete() -> None:
        object_id = py.choice(list(owned))
        entry = owned.pop(object_id)
        c.delete(object_id)
        if c.exists(object_id):
            report.error("delete", f"{object_id!r} still exists after delete")
        if entry.name is not None:
            try:
                c.get_name(entry.name)
                report.error("delete", f"name {entry.name} survived its object")
            except ObjectNotExistsException:
                pass

    def wait_name() -> None:
        try:
            got = c.get_name(f"{prefix}{wid}/never", wait=True, timeout=0.02)
            report.error("wait_name", f"a name nobody gave resolved to {got!r}")
        except ObjectNotExistsException:
            pass

    def status() -> None:
        s = c.status
        if not 0 <= s.memory_usage <= s.memory_limit:
            report.error("status", f"memory_usage {s.memory_usage} outside [0, {s.memory_limit}]")

    ops = [(put, 30), (get_own, 22), (get_other, 12), (hold, 6), (delete, 24), (wait_name, 2), (status, 4)]
    funcs, weights = zip(*ops, strict=True)
    deadline = time.monotonic() + seconds
    done = 0
    try:
        while time.monotonic() < deadline and (max_ops is None or done < max_ops):
            op = py.choices(funcs, weights)[0]
            if op in (get_own, hold, delete) and not owned:
                op = put
            elif op is put and len(owned) >= _MAX_OWNED:
                op = delete
            try:
                op()
            except vineyard.StoreUnavailable as exc:
                report.error(op.__name__, exc)
                return report  # no daemon: nothing more to do
            except Exception as exc:  # every failure is reported, the soak goes on
                report.error(op.__name__, exc)
            report.ops[op.__name__] += 1
            done += 1
        # the end: check and delete everything this worker still owns
        for object_id, entry in list(owned.items()):
            try:
                check("final get", c.get(object_id), entry)
                c.delete(object_id)
            except Exception as exc:
                report.error("final", exc)
        owned.clear()
    finally:
        held.clear()
        gc.collect()
        if own_client:
            c.close()
    return report


@dataclass
class SoakReport:
    """The whole run: what every worker did and the daemon's memory before and after."""

    socket: str
    procs: int
    threads: int
    seconds: float
    workers: list[WorkerReport]
    memory_start: int
    memory_end: int
    memory_peak: int
    objects_start: int
    objects_end: int
    blobs_start: int
    blobs_end: int
    daemon_alive: bool
    hung: list[str]

    @property
    def ops(self) -> dict[str, int]:
        total: dict[str, int] = collections.defaultdict(int)
        for w in self.workers:
            for k, v in w.ops.items():
                total[k] += v
        return dict(total)

    @property
    def total_ops(self) -> int:
        return sum(self.ops.values())

    @property
    def error_count(self) -> int:
        return sum(w.error_count for w in self.workers) + len(self.hung)

    @property
    def errors(self) -> list[str]:
        return [e for w in self.workers for e in w.errors] + [f"{h}: did not finish" for h in self.hung]

    def text(self) -> str:
        from vineyard.store.allocator import format_bytes

        ops = self.ops
        by_kind = ", ".join(f"{k} {ops[k]}" for k in sorted(ops))
        lines = [
            f"soak: {self.procs} processes + {self.threads} threads for {self.seconds:g} s on {self.socket}",
            f"  operations  {self.total_ops} ({by_kind})",
            f"  verified    {sum(w.verified for w in self.workers)} payloads; "
            f"{format_bytes(sum(w.bytes_put for w in self.workers))} written",
            f"  raced       {sum(w.raced for w in self.workers)} reads of objects deleted meanwhile (expected)",
            f"  errors      {self.error_count}",
            *(f"    {e}" for e in self.errors[:20]),
            f"  memory      start {self.memory_start} B, end {self.memory_end} B "
            f"(peak seen {format_bytes(self.memory_peak)})",
            f"  objects     start {self.objects_start}, end {self.objects_end}; "
            f"blobs start {self.blobs_start}, end {self.blobs_end}",
            f"  daemon      {'alive' if self.daemon_alive else 'GONE'}",
        ]
        return "\n".join(lines)


def run(
    seconds: float = 60.0,
    procs: int = 4,
    threads: int = 0,
    socket: str | None = None,
    size: str = "1Gi",
    max_ops: int | None = None,
    seed: int | None = None,
    shared_client_threads: int = 0,
) -> SoakReport:
    """Run a soak and return its report.

    Parameters
    ----------
    seconds
        How long each worker runs (at most; see ``max_ops``).
    procs, threads
        Worker processes, and worker threads in this process (each with its own client).
    socket
        A running daemon's socket; by default a private daemon of ``size`` is started.
    max_ops
        Stop each worker after this many operations.
    seed
        Seeds every worker; random by default.
    shared_client_threads
        Extra worker threads in this process that share one client.
    """
    import vineyard
    from vineyard.testing import Daemon

    daemon = Daemon(size=size) if socket is None else None
    path = daemon.socket if daemon is not None else str(socket)
    seed = seed if seed is not None else random.randrange(1 << 30)
    run_id = uuid.uuid4().hex[:8]
    grace = 60.0 + seconds
    try:
        with vineyard.connect(path) as monitor:
            start = monitor.status
            env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
            children = [
                subprocess.Popen(
                    [sys.executable, "-m", "bench.soak", "--worker", f"p{i}", "--run", run_id, "--socket", path,
                     "--seconds", str(seconds), "--seed", str(seed)]
                    + (["--max-ops", str(max_ops)] if max_ops is not None else []),
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=env,
                )
                for i in range(procs)
            ]
            results: dict[str, WorkerReport] = {}
            shared = vineyard.connect(path) if shared_client_threads else None

            def in_thread(wid: str, client: Any) -> None:
                try:
                    results[wid] = worker(path, wid, run_id, seconds, max_ops, seed, client=client)
                except Exception as exc:  # reported, not raised in a thread nobody joins
                    failed = WorkerReport(wid)
                    failed.error("worker", exc)
                    results[wid] = failed

            pool = [threading.Thread(target=in_thread, args=(f"t{i}", None), daemon=True) for i in range(threads)]
            pool += [threading.Thread(target=in_thread, args=(f"s{i}", shared), daemon=True)
                     for i in range(shared_client_threads)]
            for t in pool:
                t.start()
            peak = start.memory_usage
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and (
                any(p.poll() is None for p in children) or any(t.is_alive() for t in pool)
            ):
                peak = max(peak, monitor.status.memory_usage)
                time.sleep(0.25)
            hung = []
            workers = []
            for i, child in enumerate(children):
                if child.poll() is None:
                    child.kill()  # by its own handle
                    hung.append(f"p{i}")
                out, err = child.communicate(timeout=30)
                line = out.strip().splitlines()[-1] if out.strip() else ""
                try:
                    workers.append(WorkerReport.from_json(json.loads(line)))
                except (ValueError, KeyError):
                    failed = WorkerReport(f"p{i}")
                    failed.error("process", f"exit status {child.returncode}; no report; stderr: {err[-2000:]}")
                    workers.append(failed)
            for t in pool:
                t.join(1.0)
                if t.is_alive():
                    hung.append(t.name)
            workers += [results[k] for k in sorted(results)]
            if shared is not None:
                shared.close()
            # the daemon handles closed connections (and so releases their views) in its own time
            end = monitor.status
            settle = time.monotonic() + 30.0
            while end.memory_usage != start.memory_usage and time.monotonic() < settle:
                time.sleep(0.05)
                end = monitor.status
            report = SoakReport(
                socket=path, procs=procs, threads=threads + shared_client_threads, seconds=seconds, workers=workers,
                memory_start=start.memory_usage, memory_end=end.memory_usage, memory_peak=peak,
                objects_start=start.objects, objects_end=end.objects, blobs_start=start.blobs, blobs_end=end.blobs,
                daemon_alive=daemon is None or daemon.proc.poll() is None, hung=hung,
            )
    finally:
        if daemon is not None:
            daemon.stop()
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=60.0, help="how long each worker runs (default 60)")
    p.add_argument("--procs", type=int, default=4, help="worker processes (default 4)")
    p.add_argument("--threads", type=int, default=0, help="worker threads in this process, one client each")
    p.add_argument("--shared-threads", type=int, default=0, help="worker threads sharing one client")
    p.add_argument("--socket", default=None, help="a running daemon's socket (default: start a private one)")
    p.add_argument("--size", default="1Gi", help="memory of the private daemon (default 1Gi)")
    p.add_argument("--max-ops", type=int, default=None, help="stop each worker after this many operations")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--run", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker is not None:  # one worker process, started by run()
        report = worker(args.socket, args.worker, args.run, args.seconds, args.max_ops, args.seed or 0)
        print(json.dumps(report.to_json()), flush=True)
        return 0
    report = run(args.seconds, args.procs, args.threads, args.socket, args.size, args.max_ops, args.seed,
                 args.shared_threads)
    print(report.text())
    clean = report.error_count == 0 and report.daemon_alive and report.memory_end == report.memory_start
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
