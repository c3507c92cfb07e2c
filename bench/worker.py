"""The benchmark's worker: runs one system's workloads inside that system's interpreter.

Started by the orchestrator (``bench/run.py``) as a *script*, never as a module, so that the
interpreter of each system imports its own ``vineyard`` (ours and upstream share the name)::

    <python> bench/worker.py --role main --system ours --plan plan.json --out result.json

Roles
    ``main``    run the workload groups listed in the plan and write the result as JSON;
    ``helper``  a second, already running process (JSON lines on stdin/stdout) that gets
                objects by id or runs put+get pairs — Ray uses an actor instead;
    ``echo``    a blocking pure-Python UNIX-socket echo server, for the round-trip limit.

The system ``limits`` measures the physical limits (memcpy with one and two threads, copying
into fresh shared memory, a pure-Python socket round trip) with no store at all: see
``worker_limits.py``.

Every loop is bounded by a repetition count and a time budget. Nothing here asserts on
timing: numbers are recorded, and the orchestrator compares them.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

import numpy as np
import worker_lib as lib
import worker_limits

HERE = os.path.dirname(os.path.abspath(__file__))


class Recorder:
    """Rows of one run: ``group``, ``case``, samples, zero-copy verdict, notes, errors."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def add(self, group: str, case: str, samples: list[float], *, kind: str = "time", nbytes: int = 0,
            zc: dict[str, Any] | None = None, note: str = "", error: str | None = None,
            **extra: Any) -> None:
        self.rows.append({
            "group": group, "case": case, "kind": kind, "bytes": nbytes, "samples": samples,
            "zero_copy": None if zc is None else zc.get("zero_copy"), "zc": zc, "note": note,
            "error": error, **extra,
        })
        status = f"{len(samples)} samples" if error is None else f"ERROR {error.splitlines()[-1][:120]}"
        print(f"  [{group}] {case}: {status}", file=sys.stderr, flush=True)

    def fail(self, group: str, case: str, exc: BaseException, **kw: Any) -> None:
        text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        self.add(group, case, [], error=text, **kw)


# -- helpers: a second process -------------------------------------------------------------
class ProcHelper:
    """A ``--role helper`` subprocess of the same interpreter, spoken to in JSON lines."""

    def __init__(self, system: str, socket_path: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "worker.py"), "--role", "helper", "--system", system,
             "--socket", socket_path],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
        )
        self.pid = self.call("ping")

    def send(self, method: str, **kw: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"method": method, "kw": kw}) + "\n")
        self.proc.stdin.flush()

    def recv(self) -> Any:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the helper process exited ({self.proc.wait(5)})")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"in the helper: {reply['error']}")
        return reply["result"]

    def call(self, method: str, **kw: Any) -> Any:
        self.send(method, **kw)
        return self.recv()

    def close(self) -> None:
        try:
            self.send("quit")
            self.proc.wait(20)
        except (OSError, subprocess.TimeoutExpired, ValueError):
            self.proc.kill()
            self.proc.wait()


class RayHelper:
    """The same helper as a Ray actor: an already running worker process of the cluster."""

    def __init__(self) -> None:
        import ray

        self.ray = ray
        self.actor = ray.remote(num_cpus=0)(lib.Helper).remote("ray", None)
        self.pid = ray.get(self.actor.ping.remote())
        self._pending: Any = None

    def send(self, method: str, **kw: Any) -> None:
        self._pending = getattr(self.actor, method).remote(**kw)

    def recv(self) -> Any:
        result, self._pending = self.ray.get(self._pending), None
        return result

    def call(self, method: str, **kw: Any) -> Any:
        self.send(method, **kw)
        return self.recv()

    def close(self) -> None:
        self.ray.kill(self.actor)


def start_helper(system: str, plan: dict[str, Any]) -> Any:
    return RayHelper() if system == "ray" else ProcHelper(system, plan["socket"])


def helper_main(system: str, socket_path: str) -> int:
    """``--role helper``: answer JSON-line calls on the original stdout; everything else to stderr."""
    reply_fd = os.dup(1)
    os.dup2(2, 1)  # C++ libraries print to fd 1: keep that out of the reply stream
    replies = os.fdopen(reply_fd, "w", buffering=1)
    helper = lib.Helper(system, socket_path)
    for line in sys.stdin:
        call = json.loads(line)
        if call["method"] == "quit":
            break
        try:
            result = getattr(helper, call["method"])(**call["kw"])
            replies.write(json.dumps({"result": result}) + "\n")
        except Exception as exc:
            replies.write(json.dumps({"error": f"{type(exc).__name__}: {exc}"}) + "\n")
    helper.backend.close()
    return 0


# -- workload groups -----------------------------------------------------------------------
def _same(a: np.ndarray, b: np.ndarray) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.nbytes <= 64 << 20:
        return bool(np.array_equal(a, b))
    step = 4099
    return bool(np.array_equal(a[::step], b[::step]) and a[-1] == b[-1])


def group_arrays(backend: Any, plan: dict[str, Any], rec: Recorder) -> None:
    """put and get (same process) of float64 arrays of every size."""
    budget = plan["case_budget"]
    for nbytes, put_reps, get_reps, _ in plan["sizes"]:
        label = lib.size_label(nbytes)
        src = lib.source_array(nbytes)
        try:
            samples: list[float] = []
            cold: float | None = None
            for i in range(put_reps + 1):
                t0 = time.perf_counter()
                handle = backend.put(src)
                elapsed = time.perf_counter() - t0
                backend.delete(handle)
                del handle
                if i == 0:
                    cold = elapsed  # the first put of a size may land on fresh pages
                else:
                    samples.append(elapsed)
                if budget and sum(samples) > budget and len(samples) >= 3:
                    break
            rec.add("put", label, samples, nbytes=nbytes, first=cold)
        except Exception as exc:
            rec.fail("put", label, exc, nbytes=nbytes)
        try:
            handle = backend.put(src)
            zc, value = lib.array_zero_copy(backend.system, lambda h=handle: backend.get(h), nbytes)
            note = "" if _same(np.asarray(value), src) else "WRONG VALUE"
            del value
            samples = lib.timed(lambda h=handle: backend.get(h), get_reps, 2, budget)
            rec.add("get", label, samples, nbytes=nbytes, zc=zc, note=note)
            backend.delete(handle)
            del handle
        except Exception as exc:
            rec.fail("get", label, exc, nbytes=nbytes)
        del src
        gc.collect()


def group_remote(backend: Any, plan: dict[str, Any], rec: Recorder) -> None:
    """get in a second process that is already running and connected."""
    helper = start_helper(backend.system, plan)
    try:
        for nbytes, _, _, reps in plan["sizes"]:
            label = lib.size_label(nbytes)
            try:
                src = lib.source_array(nbytes)
                handle = backend.put(src)
                del src
                out = helper.call("get_many", exported=backend.export(handle), reps=reps, nbytes=nbytes,
                                  budget=plan["case_budget"])
                rec.add("get_remote", label, out["samples"], nbytes=nbytes, zc=out["zc"])
                backend.delete(handle)
                del handle
            except Exception as exc:
                rec.fail("get_remote", label, exc, nbytes=nbytes)
            gc.collect()
    finally:
        helper.close()


def group_pairs(backend: Any, plan: dict[str, Any], rec: Recorder) -> None:
    """put+get pairs of tiny objects per second, with 1 and 2 client processes at once."""
    cfg = plan["pairs"]
    most = max(cfg["clients"])
    helpers = [start_helper(backend.system, plan) for _ in range(most)]
    try:
        for n in cfg["clients"]:
            case = f"{n} client" + ("s" if n > 1 else "")
            try:
                rates = []
                for _ in range(cfg["reps"]):
                    start_at = time.time() + 0.3
                    for h in helpers[:n]:
                        h.send("pairs", start_at=start_at, end_at=start_at + cfg["seconds"])
                    outs = [h.recv() for h in helpers[:n]]
                    rates.append(sum(o["count"] / o["span"] for o in outs))
                rec.add("pairs", case, rates, kind="rate")
            except Exception as exc:
                rec.fail("pairs", case, exc, kind="rate")
    finally:
        for h in helpers:
            h.close()


def _frames(rows: int) -> dict[str, Any]:
    import pandas as pd
    import pyarrow as pa

    numeric = pd.DataFrame({f"c{i}": np.arange(rows, dtype=np.float64) * (i + 1) for i in range(8)})
    strings = [f"s{i}" for i in range(rows)]
    with_str = numeric.copy()
    with_str["s"] = pd.Series(strings)  # pandas 3: the default ``str`` dtype (Arrow-backed)
    table = pa.table({
        "i": pa.array(np.arange(rows, dtype=np.int64)),
        "x": pa.array(np.arange(rows, dtype=np.float64)),
        "s": pa.array(strings, type=pa.string()),
    })
    return {"numeric": numeric, "str column": with_str, "arrow string": table}


def _nbytes(src: Any) -> int:
    if hasattr(src, "schema"):
        return int(src.nbytes)
    return int(src.memory_usage(index=False, deep=False).sum())


def _frame_check(src: Any, value: Any) -> str:
    """A note on what came back: wrong values, changed types."""
    import pandas as pd

    if isinstance(src, pd.DataFrame):
        if not isinstance(value, pd.DataFrame):
            return f"came back as {type(value).__name__}"
        notes = []
        try:
            pd.testing.assert_frame_equal(value, src, check_dtype=False)
        except AssertionError:
            notes.append("WRONG VALUE")
        changed = [f"{c}: {src[c].dtype}→{value[c].dtype}" for c in src.columns
                   if c in value.columns and str(value[c].dtype) != str(src[c].dtype)]
        if changed:
            notes.append("dtype changed " + ", ".join(changed[:3]))
        return "; ".join(notes)
    if not hasattr(value, "schema"):
        return f"came back as {type(value).__name__}"
    notes = []
    if value.schema != src.schema:
        notes.append("schema changed " + ", ".join(
            f"{f.name}: {f.type}→{value.schema.field(f.name).type}" for f in src.schema
            if f.name in value.schema.names and value.schema.field(f.name).type != f.type))
    elif not value.equals(src):
        notes.append("WRONG VALUE")
    return "; ".join(notes)


def _value_buffers(value: Any) -> tuple[list[tuple[int, int]], list[bool]]:
    import pandas as pd

    if isinstance(value, pd.DataFrame):
        return lib.frame_buffers(value)
    if hasattr(value, "schema"):
        return lib.arrow_buffers(value), [True]
    return [], [False]


def group_frames(backend: Any, plan: dict[str, Any], rec: Recorder) -> None:
    """A 1e6 x 8 numeric DataFrame, the same with a ``str`` column, an Arrow table with strings."""
    cfg = plan["frames"]
    budget = plan["case_budget"]
    for case, src in _frames(cfg["rows"]).items():
        nbytes = _nbytes(src)
        try:
            samples = []
            for _ in range(cfg["put_reps"] + 1):
                t0 = time.perf_counter()
                handle = backend.put(src)
                samples.append(time.perf_counter() - t0)
                backend.delete(handle)
                del handle
                if sum(samples) > budget and len(samples) >= 3:
                    break
            rec.add("frame_put", case, samples[1:] or samples, nbytes=nbytes)
        except Exception as exc:
            rec.fail("frame_put", case, exc)
        try:
            handle = backend.put(src)
            backend.get(handle)  # first-call costs (lazy imports, heap growth) are not a copy
            gc.collect()
            before = lib.rss_anon()
            value = backend.get(handle)
            buffers, readonly = _value_buffers(value)
            grown = lib.rss_anon() - before  # measured before the check, which allocates
            zc = lib.zero_copy_report(backend.system, buffers, readonly, grown, nbytes)
            note = _frame_check(src, value)
            del value
            samples = lib.timed(lambda h=handle: backend.get(h), cfg["get_reps"], 2, budget)
            rec.add("frame_get", case, samples, nbytes=nbytes, zc=zc, note=note)
            backend.delete(handle)
            del handle
        except Exception as exc:
            rec.fail("frame_get", case, exc)
        gc.collect()


def group_meta(backend: Any, plan: dict[str, Any], rec: Recorder) -> None:
    """exists / get_name / put_name / get_meta / list_objects: requests per second (as time each)."""
    if not backend.has_names:
        return
    reps = plan["meta"]["reps"]
    budget = plan["case_budget"]
    value = np.zeros(1)
    handle = backend.put(value, persist=True)
    backend.put_name(handle, "bench-meta")
    others = [backend.put(value) for _ in range(100)]
    counter = iter(range(10**9))
    named: list[str] = []

    def put_name() -> None:
        name = f"bench-meta-{next(counter)}"
        named.append(name)
        backend.put_name(handle, name)

    ops: dict[str, Callable[[], Any]] = {
        "exists": lambda: backend.exists(handle),
        "get_name": lambda: backend.get_name("bench-meta"),
        "put_name": put_name,
        "get_meta": lambda: backend.get_meta(handle),
        "list_objects": backend.list_objects,
    }
    for case, fn in ops.items():
        try:
            rec.add("meta", case, lib.timed(fn, reps, 5, budget))
        except Exception as exc:
            rec.fail("meta", case, exc)
    for name in [*named, "bench-meta"]:
        try:
            backend.drop_name(name)
        except Exception:
            break
    backend.delete_many([*others, handle])


def group_names(backend: Any, plan: dict[str, Any], rec: Recorder) -> None:
    """get_name with 1 name stored, then with more and more, up to 100,000."""
    if not backend.has_names:
        return
    cfg = plan["names"]
    handle = backend.put(np.zeros(1), persist=True)
    backend.put_name(handle, "bench-scale-0")
    count = 1
    try:
        rec.add("names", "1 name", lib.timed(lambda: backend.get_name("bench-scale-0"), cfg["reps"], 5))
        deadline = time.monotonic() + cfg["budget"]
        for checkpoint in cfg["checkpoints"]:
            t0 = time.perf_counter()
            first = count
            while count < checkpoint and time.monotonic() < deadline:
                backend.put_name(handle, f"bench-scale-{count}")
                count += 1
            put_each = (time.perf_counter() - t0) / max(1, count - first)
            last = f"bench-scale-{count - 1}"
            names = iter(range(10**9))

            def lookup(last: str = last, names: Any = names) -> Any:
                return backend.get_name(last if next(names) % 2 else "bench-scale-0")

            note = "" if count >= checkpoint else f"stopped at {count} names: time budget"
            rec.add("names", f"{count:,} names", lib.timed(lookup, cfg["reps"], 5),
                    names=count, note=note, put_name_each=put_each)
            if count < checkpoint:
                break
    finally:
        backend.delete(handle)  # names hold no shared memory; the daemon goes with this run


def group_held(backend: Any, plan: dict[str, Any], rec: Recorder) -> None:
    """Shared memory the store still holds once every object was deleted and every view dropped."""
    gc.collect()
    backend.flush()
    time.sleep(0.7)  # ours also flushes releases in the background every 0.5 s
    backend.flush()
    held = lib.shm_held(backend.store_pids(plan.get("daemon_pid")))
    status = backend.status()
    left = status.get("memory_usage") or 0
    note = f"{left:,} bytes still in objects the workloads left" if left else ""
    rec.add("held", "after deleting everything", [float(held["bytes"])], kind="bytes",
            files=held["files"], status=status, note=note)


GROUPS: dict[str, Callable[[Any, dict[str, Any], Recorder], None]] = {
    "arrays": group_arrays,
    "remote": group_remote,
    "pairs": group_pairs,
    "frames": group_frames,
    "meta": group_meta,
    "names": group_names,
    "held": group_held,
}


# -- entry ---------------------------------------------------------------------------------
def main_run(system: str, plan: dict[str, Any], out: str) -> int:
    rec = Recorder()
    result: dict[str, Any] = {"system": system, "pid": os.getpid(), "python": sys.executable,
                              "versions": {"numpy": np.__version__}, "rows": rec.rows, "errors": []}
    t0 = time.monotonic()
    backend = None
    try:
        if system == "limits":
            worker_limits.run_limits(plan, rec)
        else:
            if system == "ray":
                os.environ["PYTHONPATH"] = HERE  # Ray's worker processes import worker_lib
            backend = lib.make_backend(system, plan.get("socket"))
            result["versions"].update(backend.versions())
            for mod in ("pandas", "pyarrow"):
                try:
                    result["versions"][mod] = __import__(mod).__version__
                except ImportError:
                    pass
            for group in plan["groups"]:
                if time.monotonic() - t0 > plan["run_budget"]:
                    result["errors"].append(f"{group}: skipped, the run's time budget is spent")
                    continue
                print(f"[{system}] {group}", file=sys.stderr, flush=True)
                try:
                    GROUPS[group](backend, plan, rec)
                except Exception as exc:
                    result["errors"].append(f"{group}: {traceback.format_exc()}")
                    print(f"[{system}] {group} failed: {exc}", file=sys.stderr, flush=True)
    finally:
        result["wall"] = time.monotonic() - t0
        with open(out, "w") as f:
            json.dump(result, f)
        if backend is not None:
            backend.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--role", choices=["main", "helper", "echo"], default="main")
    p.add_argument("--system", default="ours")
    p.add_argument("--socket")
    p.add_argument("--plan")
    p.add_argument("--out")
    p.add_argument("--cpu", type=int)
    args = p.parse_args(argv)
    if args.role == "helper":
        return helper_main(args.system, args.socket)
    if args.role == "echo":
        return worker_limits.echo_main(args.socket, args.cpu)
    with open(args.plan) as f:
        plan = json.load(f)
    return main_run(args.system, plan, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
