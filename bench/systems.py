"""The systems under test: their interpreters, their daemons, and one worker run of each.

- ``ours``      this repository's ``.venv`` (``python -m vineyard``, our daemon);
- ``upstream``  ``vineyard==0.24.2`` from PyPI in ``bench/.envs/upstream`` — a peer to compare
                against, never a dependency; its ``python -m vineyard`` execs the bundled C++
                ``vineyardd`` (started with ``--meta local --norpc``: no etcd, no TCP port);
- ``ray``       ``ray[data]==2.60.*`` in ``bench/.envs/ray`` (``ray.init(num_cpus=2)`` inside the
                worker, bound to 127.0.0.1, a private temp dir);
- ``limits``    no store: memcpy, fresh pages and a socket round trip, in our interpreter.

Peer environments are created with the standard ``venv`` module and filled with the venv's own
pip, with numpy, pandas and pyarrow pinned to the versions of our ``.venv`` so that every system
runs the same libraries. Each daemon runs on a socket in a private temp dir and is stopped by
its own PID; each worker runs in a new session and is killed by its own process group if it
outlives its time budget.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["BENCH", "REPO", "SYSTEMS", "Daemon", "Env", "WorkerRun", "clean_env", "ensure_env", "run_worker"]

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
ENVS = BENCH / ".envs"
SYSTEMS = ("ours", "upstream", "ray")
UPSTREAM_VERSION = "0.24.2"
RAY_SPEC = "ray[data]==2.60.*"
_DROP = ("PYTHONPATH", "PYTHONHOME", "VINEYARD_IPC_SOCKET", "VINEYARD_RPC_ENDPOINT", "VINEYARD_CONFIG",
         "RAY_ADDRESS", "VIRTUAL_ENV")


def clean_env(**extra: str) -> dict[str, str]:
    """Our environment without anything that would point a worker at another store or path."""
    env = {k: v for k, v in os.environ.items() if k not in _DROP}
    env.update(extra)
    return env


@dataclass
class Env:
    system: str
    python: str
    versions: dict[str, str] = field(default_factory=dict)


def ours_python() -> str:
    venv = REPO / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def _probe(python: str, code: str) -> dict[str, str] | None:
    """Run ``code`` (which prints JSON) under ``python`` from a neutral directory."""
    try:
        out = subprocess.run([python, "-c", code], cwd=tempfile.gettempdir(), env=clean_env(),
                             capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    try:
        return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]
    except (ValueError, IndexError):
        return None


_VERSIONS = (
    "import json, importlib.metadata as m\n"
    "out = {}\n"
    "for d in ('numpy', 'pandas', 'pyarrow', 'vineyard', 'ray'):\n"
    "    try: out[d] = m.version(d)\n"
    "    except m.PackageNotFoundError: pass\n"
    "print(json.dumps(out))"
)


def ensure_env(system: str, log: Any = print) -> Env:
    """The interpreter for ``system``, creating and filling its venv on first use.

    Raises
    ------
    RuntimeError
        The environment could not be made (no network, pip failed); the message says why.
    """
    if system in ("ours", "limits"):
        python = ours_python()
        return Env(system, python, _probe(python, _VERSIONS) or {})
    path = ENVS / system
    python = str(path / "bin" / "python")
    want = {"upstream": ("vineyard", UPSTREAM_VERSION), "ray": ("ray", "2.60.")}[system]
    versions = _probe(python, _VERSIONS) if os.path.exists(python) else None
    if versions and versions.get(want[0], "").startswith(want[1]):
        return Env(system, python, versions)
    ours = _probe(ours_python(), _VERSIONS) or {}
    pins = [f"{d}=={ours[d]}" if d in ours else d for d in ("numpy", "pandas", "pyarrow")]
    spec = f"vineyard=={UPSTREAM_VERSION}" if system == "upstream" else RAY_SPEC
    log(f"setting up {path} ({spec}); this happens once")
    ENVS.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True, timeout=300)
    pip = [python, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    done = subprocess.run([*pip, spec, *pins], cwd=tempfile.gettempdir(), env=clean_env(), timeout=1800)
    if done.returncode != 0:  # the pinned versions may not suit the peer: let pip choose
        done = subprocess.run([*pip, spec, "numpy", "pandas", "pyarrow"], cwd=tempfile.gettempdir(),
                              env=clean_env(), timeout=1800)
    versions = _probe(python, _VERSIONS)
    if done.returncode != 0 or not versions or not versions.get(want[0], "").startswith(want[1]):
        raise RuntimeError(f"could not install {spec} into {path} (pip exit {done.returncode})")
    return Env(system, python, versions)


class Daemon:
    """A store daemon (ours or upstream's vineyardd) on a socket in ``tmp``, stopped by its PID."""

    def __init__(self, system: str, python: str, tmp: str, size: str, reuse_cache: str) -> None:
        self.system = system
        self.socket = os.path.join(tmp, f"{system}.sock")
        cmd = [python, "-m", "vineyard", "--socket", self.socket, "--size", size, "--norpc"]
        if system == "ours":
            cmd += ["--reuse-cache", reuse_cache]
        else:
            cmd += ["--meta", "local"]  # no etcd child, no port on 0.0.0.0
        self.log_path = os.path.join(tmp, f"{system}-daemon.log")
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, cwd=tmp, env=clean_env(), stdin=subprocess.DEVNULL,
                                     stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        self.pid = self.proc.pid
        self._wait(60.0)

    def _wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the {self.system} daemon exited with {self.proc.returncode}: {self.tail()}")
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(self.socket)
                return
            except OSError:
                time.sleep(0.05)
            finally:
                probe.close()
        self.stop()
        raise RuntimeError(f"the {self.system} daemon did not listen within {timeout:.0f} s: {self.tail()}")

    def tail(self, n: int = 2000) -> str:
        self._log.flush()
        with open(self.log_path, "rb") as f:
            return f.read()[-n:].decode(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()


@dataclass
class WorkerRun:
    system: str
    round: int
    ok: bool
    wall: float
    result: dict[str, Any]
    error: str | None = None
    held_after_exit: int | None = None


def run_worker(env: Env, plan: dict[str, Any], round_no: int, daemon_size: str, reuse_cache: str,
               timeout: float, verbose: bool = False) -> WorkerRun:
    """One system's workloads in one fresh worker process (and a fresh daemon), then clean up."""
    tmp = tempfile.mkdtemp(prefix=f"vb-{env.system[:2]}-")
    daemon: Daemon | None = None
    t0 = time.monotonic()
    out = os.path.join(tmp, "result.json")
    proc: subprocess.Popen[bytes] | None = None
    log_path = os.path.join(tmp, "worker.log")
    try:
        if env.system in ("ours", "upstream"):
            daemon = Daemon(env.system, env.python, tmp, daemon_size, reuse_cache)
        plan = {**plan, "socket": daemon.socket if daemon else None, "daemon_pid": daemon.pid if daemon else None,
                "tmp": tmp, "run_budget": timeout * 0.8}
        plan_path = os.path.join(tmp, "plan.json")
        with open(plan_path, "w") as f:
            json.dump(plan, f)
        # with clusters off, Ray keeps its servers on loopback (otherwise it listens everywhere)
        extra = {"RAY_AUTH_MODE": "disabled", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"} if env.system == "ray" else {}
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [env.python, str(BENCH / "worker.py"), "--role", "main", "--system", env.system,
                 "--plan", plan_path, "--out", out],
                cwd=tmp, env=clean_env(**extra), stdin=subprocess.DEVNULL,
                stdout=None if verbose else log, stderr=None if verbose else subprocess.STDOUT,
                start_new_session=True,
            )
            try:
                code = proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # the worker's own session: it, its helpers, Ray's
                proc.wait()
                code = -9
        result = {}
        if os.path.exists(out):
            with open(out) as f:
                result = json.load(f)
        held = None
        if daemon is not None:
            from bench.worker_lib import descendants, shm_held

            held = shm_held(descendants(daemon.pid))["bytes"]  # the client is gone now
        error = None if code == 0 else f"worker exit {code}; log tail: {_tail(log_path)}"
        return WorkerRun(env.system, round_no, code == 0 and bool(result), time.monotonic() - t0, result, error, held)
    except Exception as exc:
        tail = daemon.tail() if daemon else ""
        return WorkerRun(env.system, round_no, False, time.monotonic() - t0, {}, f"{exc} {tail}")
    finally:
        if proc is not None:
            try:  # the worker's own session: anything it left behind (helpers, Ray's processes)
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
        if daemon is not None:
            daemon.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def _tail(path: str, n: int = 1500) -> str:
    try:
        with open(path, "rb") as f:
            return f.read()[-n:].decode(errors="replace")
    except OSError:
        return ""
