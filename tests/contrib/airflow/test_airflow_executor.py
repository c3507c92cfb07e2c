"""Tasks in their own processes (LocalExecutor + ``airflow api-server``) share the store's pages."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

from vineyard.contrib.airflow.refs import StoreRef
from vineyard.testing import non_loopback_listeners

FRAME_ROWS = 2_500_000
RSS_SLACK = 25 << 20  # a copy of the frame would add ~100 MB of private memory


@pytest.fixture(scope="module")
def executor_run(airflow_site: Any, api_server: str) -> tuple[Any, list[dict[str, Any]]]:
    run = airflow_site.run_dag(
        "vy_frame", use_executor=True, env={"AIRFLOW__CORE__EXECUTION_API_SERVER_URL": api_server}
    )
    return run, airflow_site.xcom_objects()


def test_tasks_run_in_separate_processes(executor_run: Any, airflow_site: Any) -> None:
    run, _ = executor_run
    assert run.state == "success", run.output[-6000:]
    producer = airflow_site.report("vy_frame", "produce")["pid"]
    consumer = airflow_site.report("vy_frame", "consume")["pid"]
    assert len({producer, consumer, os.getpid()}) == 3


def test_consumer_process_reads_the_producers_pages(executor_run: Any, airflow_site: Any) -> None:
    run, objects = executor_run
    row = run.rows[("produce", "return_value")]
    assert len(row) < 128
    ref = StoreRef.parse(json.loads(row))
    assert ref is not None
    assert [o["id"] for o in objects] == [ref.object_id]
    facts = airflow_site.report("vy_frame", "consume")
    assert facts["shape"] == [FRAME_ROWS, 4]
    assert facts["sum_a"] == FRAME_ROWS * (FRAME_ROWS - 1) // 2
    assert facts["unpickled"] == []
    assert facts["buffers"] >= 5
    assert facts["buffers_in_store"] == facts["buffers"]
    assert facts["rss_anon_growth"] < RSS_SLACK


def test_the_api_server_and_the_task_processes_listen_on_loopback_only(executor_run: Any) -> None:
    assert non_loopback_listeners() == []
