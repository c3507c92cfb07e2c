"""Objects the adapter creates die with their Ray job unless persisted on purpose."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

ray = pytest.importorskip("ray")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from ray.data.datasource.datasink import WriteResult  # noqa: E402

import vineyard  # noqa: E402
import vineyard.contrib.ray as vray  # noqa: E402
from vineyard.contrib.ray import lifetime  # noqa: E402
from vineyard.testing import Daemon  # noqa: E402


def wait_until(condition: Any, timeout: float = 60.0) -> bool:
    """Poll ``condition`` until true or ``timeout`` s pass (a bound on a hang, not a timing check)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return bool(condition())


def test_cleanup_keeps_only_what_was_persisted_on_purpose(ray_cluster: Any, no_leaks: vineyard.Client) -> None:
    client = no_leaks
    transient = vray.put(np.arange(10))
    kept = vray.put(np.arange(10), persist=True)
    kept_later = vray.put(np.arange(10))
    kept_later.persist()
    kept_by_client = vray.put(np.arange(10))
    client.persist(kept_by_client.object_id)
    # A global DataFrame written by the sink: persisted by make_global_dataframe, still the job's.
    part = vray.put(pd.DataFrame({"a": np.arange(10)}))
    sink = vray.VineyardDatasink(global_=True)
    sink.on_write_complete(WriteResult(10, 80, [[(0, 10, int(part.object_id), part.socket, part.host)]]))
    assert isinstance(sink.result, vray.VineyardRef)
    assert client.get_meta(sink.result.object_id).labels[lifetime.LABEL_JOB] == lifetime.current_job()
    try:
        deleted = vray.cleanup_job()
        assert set(deleted) == {transient.object_id, sink.result.object_id}
        assert not transient.exists()
        assert not sink.result.exists()
        assert not part.exists()
        assert kept.exists()
        assert kept_later.exists()
        assert kept_by_client.exists()
    finally:
        vray.delete([transient, kept, kept_later, kept_by_client, sink.result])


def test_a_failed_write_deletes_what_its_tasks_stored(ray_cluster: Any, no_leaks: vineyard.Client) -> None:
    from ray.data._internal.execution.interfaces import TaskContext

    sink = vray.VineyardDatasink(min_rows_per_write=1)
    other = vray.put(np.arange(3))  # same job, another write: must survive
    try:
        blocks = [pd.DataFrame({"a": [1, 2]}), pd.DataFrame({"a": [3]})]
        written = sink.write(blocks, TaskContext(task_idx=0, op_name="Write"))
        assert len(written) == 1
        assert written[0][1] == 3
        object_id = vineyard.ObjectID(written[0][2])
        assert no_leaks.get(object_id)["a"].tolist() == [1, 2, 3]
        sink.on_write_failed(RuntimeError("a later task failed"))
        assert not no_leaks.exists(object_id)
        assert other.exists()
    finally:
        other.delete()


def test_a_new_job_in_the_same_driver_deletes_the_old_jobs_objects(
    ray_cluster: Any, store: Daemon, no_leaks: vineyard.Client, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("VINEYARD_RAY_WATCHDOG", "0")
    tracker = lifetime._Tracker()
    tracker.registered = True  # a private tracker: no atexit hook for it
    old_job = "session_ended_earlier/01000000"
    old = no_leaks.put(np.arange(5))
    no_leaks.label(old, {lifetime.LABEL_JOB: old_job})
    current = vray.put(np.arange(5))
    try:
        tracker.add(old_job, store.socket)  # what ray.shutdown() then ray.init() leaves behind
        assert no_leaks.exists(old)
        tracker.add(lifetime.current_job() or "", store.socket)
        assert not no_leaks.exists(old)
        assert current.exists()
        assert list(tracker.jobs) == [lifetime.current_job()]
    finally:
        current.delete()
        no_leaks.delete(old)


DRIVER = """
import json, os, sys
import numpy as np
import ray
import vineyard.contrib.ray as vray
from vineyard.contrib.ray import lifetime

ray.init(address=sys.argv[1], log_to_driver=False, _node_ip_address="127.0.0.1")

@ray.remote
@vray.store_returns(threshold=0)
def produce():
    return np.arange(1000)

@ray.remote
def object_id_of(ref):
    return int(ref.object_id)

if sys.argv[2] == "tasks-only":
    # The driver stores nothing and never sees a reference: only shipping the decorated
    # function tells it which store its tasks use.
    ids = [ray.get(object_id_of.remote(produce.remote()))]
else:
    transient = vray.put(np.arange(10))
    kept = vray.put(np.arange(10), persist=True)
    from_task = ray.get(produce.remote())
    ids = [int(transient.object_id), int(from_task.object_id), int(kept.object_id)]
watchdog = lifetime._tracker.watchdog
print(json.dumps({"ids": ids, "watchdog": watchdog.pid if watchdog else None}), flush=True)
if sys.argv[2] == "kill":
    os.kill(os.getpid(), 9)
"""


def run_driver(tmp_path: Path, mode: str) -> dict[str, Any]:
    script = tmp_path / "driver.py"
    script.write_text(textwrap.dedent(DRIVER))
    address = ray.get_runtime_context().gcs_address
    proc = subprocess.Popen([sys.executable, str(script), address, mode], stdout=subprocess.PIPE, text=True)
    try:
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    assert out.strip(), f"the driver printed nothing (exit {proc.returncode})"
    facts: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    facts["returncode"] = proc.returncode
    return facts


def watchdog_gone(pid: int | None) -> bool:
    if pid is None:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] == "Z"
    except FileNotFoundError:
        return True


@pytest.mark.parametrize("mode", ["exit", "kill", "tasks-only"])
def test_objects_die_with_the_driver_unless_persisted(
    ray_cluster: Any, client: vineyard.Client, tmp_path: Path, mode: str,
) -> None:
    facts = run_driver(tmp_path, mode)
    ids = [vineyard.ObjectID(i) for i in facts["ids"]]
    doomed, kept = ids[:2], ids[2:]
    try:
        assert facts["watchdog"] is not None
        if mode == "kill":
            assert facts["returncode"] == -signal.SIGKILL
        else:
            assert facts["returncode"] == 0
            # atexit has run: nothing to wait for
            assert not any(client.exists(i) for i in doomed)
        # After a SIGKILL only the watchdog can have done it.
        assert wait_until(lambda: not any(client.exists(i) for i in doomed))
        assert all(client.exists(i) for i in kept)
        assert wait_until(lambda: watchdog_gone(facts["watchdog"]))
    finally:
        client.delete(ids)
        if not watchdog_gone(facts["watchdog"]):
            os.kill(facts["watchdog"], signal.SIGKILL)


@ray.remote
def track_in_a_task() -> str | None:
    return vray.track_job()


def test_track_job_registers_the_store_in_the_driver_only(ray_cluster: Any, store: Daemon) -> None:
    job = vray.track_job()
    assert job == lifetime.current_job()
    assert store.socket in lifetime.tracked_jobs()[job]
    assert ray.get(track_in_a_task.remote()) is None
