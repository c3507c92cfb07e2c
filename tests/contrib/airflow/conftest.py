"""An Airflow 3 site per test session: its own AIRFLOW_HOME, SQLite database and store daemon.

``import airflow`` reads AIRFLOW_HOME and resolves the XCom backend once per process, so this
process imports Airflow only after the session fixture has set the environment, and every
DAG run happens in a child process (``python -m airflow dags test``) that inherits it. The
tests then read what the tasks reported, the SQLite database and the store itself.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import vineyard
from vineyard.testing import Daemon

DAGS = Path(__file__).parent / "dags"
BACKEND = "vineyard.contrib.airflow.xcom.VineyardXCom"
RUN_TIMEOUT = 240.0


@dataclass
class Run:
    """One ``airflow dags test`` run, as the database recorded it."""

    dag_id: str
    run_id: str
    state: str
    tasks: dict[str, tuple[str, int]]  # task_id -> (state, try_number)
    rows: dict[tuple[str, str], bytes] = field(default_factory=dict)  # (task_id, key) -> raw value
    output: str = ""

    def row(self, task_id: str, key: str = "return_value") -> Any:
        return json.loads(self.rows[(task_id, key)])


class AirflowSite:
    """The session's Airflow home, database, store daemon and task reports."""

    def __init__(self, home: Path, daemon: Daemon) -> None:
        self.home = home
        self.daemon = daemon
        self.db = home / "airflow.db"
        self.out = home / "reports"
        self.client = vineyard.connect(daemon.socket)

    def airflow(self, *args: str, env: dict[str, str] | None = None, timeout: float = RUN_TIMEOUT) -> str:
        """Run the airflow CLI in a child process; returns its output (stdout and stderr)."""
        done = subprocess.run(
            [sys.executable, "-m", "airflow", *args], env={**os.environ, **(env or {})},
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout,
            check=False,
        )
        return done.stdout.decode(errors="replace")

    def run_dag(self, dag_id: str, *, env: dict[str, str] | None = None, use_executor: bool = False) -> Run:
        """Empty the store and the task reports, run the DAG once, read the database."""
        self.client.clear()
        shutil.rmtree(self.out / dag_id, ignore_errors=True)
        args = ["dags", "test", dag_id] + (["--use-executor"] if use_executor else [])
        output = self.airflow(*args, env=env)
        with sqlite3.connect(self.db) as db:
            found = db.execute(
                "SELECT run_id, state FROM dag_run WHERE dag_id = ? ORDER BY id DESC LIMIT 1", (dag_id,)
            ).fetchone()
            assert found is not None, f"no run of {dag_id} was recorded:\n{output[-4000:]}"
            run_id, state = found
            tasks = {
                t: (s, n) for t, s, n in db.execute(
                    "SELECT task_id, state, try_number FROM task_instance WHERE dag_id = ? AND run_id = ?",
                    (dag_id, run_id),
                )
            }
            rows = {
                (t, k): v if isinstance(v, bytes) else str(v).encode()
                for t, k, v in db.execute(
                    "SELECT task_id, key, value FROM xcom WHERE dag_id = ? AND run_id = ?", (dag_id, run_id)
                )
            }
        return Run(dag_id, run_id, state, tasks, rows, output)

    def report(self, dag_id: str, task_id: str, try_number: int = 1) -> dict[str, Any]:
        path = self.out / dag_id / f"{task_id}.{try_number}.json"
        assert path.exists(), f"task {task_id} (try {try_number}) did not report"
        return json.loads(path.read_text())  # type: ignore[no-any-return]

    def xcom_objects(self) -> list[dict[str, Any]]:
        from vineyard.contrib.airflow.cleanup import xcom_objects

        return xcom_objects(self.client)


@pytest.fixture(scope="package")
def airflow_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AirflowSite]:
    """Private AIRFLOW_HOME (SQLite, migrated), a store daemon, and the backend switched on."""
    home = tmp_path_factory.mktemp("airflow_home")
    (home / "dags").mkdir()
    shutil.copy(DAGS / "xcom_dags.py", home / "dags" / "xcom_dags.py")
    daemon = Daemon(size="1Gi")
    env = {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "2",
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(24),
        "AIRFLOW__CORE__XCOM_BACKEND": BACKEND,
        "AIRFLOW__VINEYARD__IPC_SOCKET": daemon.socket,
        "VINEYARD_AIRFLOW_TEST_OUT": str(home / "reports"),
    }
    patch = pytest.MonkeyPatch()
    try:
        for name in ("VINEYARD_IPC_SOCKET", "AIRFLOW_CONFIG"):
            patch.delenv(name, raising=False)
        for name in [n for n in os.environ if n.startswith("AIRFLOW__VINEYARD__")]:
            patch.delenv(name)
        for name, value in env.items():
            patch.setenv(name, value)
        root = logging.getLogger()
        handlers, level = root.handlers[:], root.level
        pytest.importorskip("airflow")
        # Importing Airflow configures the root logger for its own processes; other suites in
        # this session should not inherit that.
        root.handlers[:], root.level = handlers, level
        site = AirflowSite(home, daemon)
        output = site.airflow("db", "migrate", timeout=180)
        assert (home / "airflow.db").exists(), output[-4000:]
        yield site
        site.client.close()
    finally:
        daemon.stop()
        patch.undo()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def api_server(airflow_site: AirflowSite) -> Iterator[str]:
    """``airflow api-server`` (execution API only) on 127.0.0.1 and a free port, stopped by its PID.

    Yields the execution API URL that task processes started by an executor talk to.
    """
    port = _free_port()
    log = open(airflow_site.home / f"api-server-{port}.log", "w+b")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "airflow", "api-server", "--host", "127.0.0.1", "--port", str(port),
         "--apps", "execution", "--workers", "1"],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/execution/"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, f"the api-server exited: {Path(log.name).read_text()[-4000:]}"
            try:
                with urllib.request.urlopen(url + "health", timeout=5) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"the api-server did not answer: {Path(log.name).read_text()[-4000:]}"
            time.sleep(0.5)
        yield url
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()
