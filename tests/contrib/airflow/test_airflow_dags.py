"""Real DAG runs (``airflow dags test``, tasks in the runner's process) through VineyardXCom."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from typing import Any

import numpy as np
import pandas as pd
import pytest

from vineyard.contrib.airflow.refs import LABEL_KEYS, LITERAL_PREFIX, StoreRef
from vineyard.testing import Daemon

LOOKALIKE = "vineyard://elsewhere/0/o00000000000000ff"
FRAME_ROWS = 2_500_000
# A copy of the 100 MB frame would add ~100 MB of private memory; mapping it adds almost none.
RSS_SLACK = 25 << 20


def ref_of(row: bytes) -> StoreRef:
    ref = StoreRef.parse(json.loads(row))
    assert ref is not None, row[:200]
    return ref


def assert_frame_facts(facts: dict[str, Any], rows: int, seed: int = 0) -> None:
    assert facts["shape"] == [rows, 4]
    assert facts["sum_a"] == rows * (rows - 1) // 2 + seed * rows
    assert facts["sum_c"] == float(rows * (rows - 1))
    assert facts["first_s"] == f"item-{seed % 1000}"
    assert facts["len_s"] == sum(len(f"item-{(i + seed) % 1000}") for i in range(1000)) * (rows // 1000)


# -- a 100 MB frame ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def frame_run(airflow_site: Any) -> tuple[Any, list[dict[str, Any]], int]:
    run = airflow_site.run_dag("vy_frame")
    return run, airflow_site.xcom_objects(), airflow_site.client.status.memory_usage


def test_frame_run_succeeds(frame_run: Any) -> None:
    run, _, _ = frame_run
    assert run.state == "success", run.output[-6000:]
    assert run.tasks == {"produce": ("success", 1), "consume": ("success", 1)}


def test_frame_row_is_a_short_reference_to_the_only_object(frame_run: Any, airflow_site: Any) -> None:
    run, objects, used = frame_run
    row = run.rows[("produce", "return_value")]
    assert len(row) < 128, row[:200]
    ref = ref_of(row)
    assert [o["id"] for o in objects] == [ref.object_id]
    labels = objects[0]["labels"]
    assert {k: labels[k] for k in ("dag_id", "run_id", "task_id", "map_index", "key")} == {
        "dag_id": "vy_frame", "run_id": run.run_id, "task_id": "produce", "map_index": "-1", "key": "return_value",
    }
    # "100 MB": three 8-byte numeric columns and a string column
    nbytes = airflow_site.report("vy_frame", "produce")["nbytes"]
    assert nbytes > 95_000_000
    assert used < nbytes * 1.05  # one copy in the store, nothing else of size


def test_consumer_gets_the_frame(frame_run: Any, airflow_site: Any) -> None:
    facts = airflow_site.report("vy_frame", "consume")
    assert_frame_facts(facts, FRAME_ROWS)
    assert_frame_facts(facts["again"], FRAME_ROWS)
    assert facts["numeric_writeable"] == [False, False, False]


def test_consumer_reads_the_frame_in_place(frame_run: Any, airflow_site: Any) -> None:
    facts = airflow_site.report("vy_frame", "consume")
    assert facts["unpickled"] == []
    assert facts["buffers"] >= 5
    assert facts["buffers_in_store"] == facts["buffers"]
    assert facts["again"]["buffers_in_store"] == facts["again"]["buffers"]
    assert facts["rss_anon_growth"] < RSS_SLACK


# -- retry, multiple_outputs, small values, a missing object, cleanup, gc -----------------------


@pytest.fixture(scope="module")
def values_run(airflow_site: Any) -> tuple[Any, list[dict[str, Any]]]:
    run = airflow_site.run_dag("vy_values")
    return run, airflow_site.xcom_objects()


def test_values_run_tasks_succeed(values_run: Any) -> None:
    run, _ = values_run
    tasks = dict(run.tasks)
    assert tasks.pop("flaky") == ("success", 2), run.output[-6000:]
    assert tasks.pop("consume_gone")[0] == "failed"  # on purpose: see below
    assert set(tasks.values()) == {("success", 1)}, tasks


def test_retry_purges_the_first_tries_object(values_run: Any, airflow_site: Any) -> None:
    run, objects = values_run
    first = airflow_site.report("vy_values", "flaky", try_number=1)["objects"]
    assert len(first) == 1
    assert not airflow_site.client.exists(int(first[0][1:], 16))
    assert ("flaky", "early") not in run.rows
    assert first[0] not in {repr(o["id"]) for o in objects}


def test_multiple_outputs_store_each_value_once(values_run: Any) -> None:
    run, objects = values_run
    whole = run.row("flaky")
    assert whole["n"] == 2
    flaky = {o["id"]: o for o in objects if o["labels"]["task_id"] == "flaky"}
    assert len(flaky) == 2
    for key in ("frame", "arr"):
        ref = ref_of(run.rows[("flaky", key)])
        assert whole[key] == str(ref)
        assert json.loads(flaky[ref.object_id]["labels"][LABEL_KEYS]) == [key, "return_value"]
    assert whole["lookalike"] == LITERAL_PREFIX + LOOKALIKE


def test_consumer_of_multiple_outputs(values_run: Any, airflow_site: Any) -> None:
    facts = airflow_site.report("vy_values", "check_multi")
    assert_frame_facts(facts["frame"], 200_000, seed=2)
    assert facts["whole_keys"] == ["arr", "frame", "lookalike", "n"]
    assert facts["arr_sum"] == 2.5 * 300_000
    assert facts["n"] == 2
    assert facts["lookalike"] == LOOKALIKE


def test_both_multiple_output_rows_map_the_same_pages(values_run: Any, airflow_site: Any) -> None:
    facts = airflow_site.report("vy_values", "check_multi")
    assert facts["frame"]["buffers_in_store"] == facts["frame"]["buffers"]
    assert facts["same_buffers"]


def test_small_values_round_trip_through_airflow(values_run: Any, airflow_site: Any) -> None:
    from airflow.sdk.serde import serialize

    run, objects = values_run
    facts = airflow_site.report("vy_values", "check_small")
    assert facts["i"] == 42
    assert facts["frame"] == {"x": [1, 2, 3], "y": ["a", "b", "c"]}
    assert facts["frame_dtypes"][0] == "int64"
    assert facts["d"] == {
        "i": 7, "text": "hello", "nested": {"k": [1, 2]}, "pair": [1, 2], "lookalike": LOOKALIKE,
        "literal": "vineyard-literal:x",
    }
    assert facts["pair_is_tuple"]
    assert facts["items_sum"] == 400_000 * 399_999 // 2
    assert facts["items_rest"] == [LOOKALIKE, 5]
    # Rows of values that stay in the database are Airflow's own serialization.
    assert run.row("small_int") == 42
    assert run.row("small_frame") == serialize(pd.DataFrame({"x": [1, 2, 3], "y": ["a", "b", "c"]}))
    assert run.row("small_dict")["lookalike"] == LITERAL_PREFIX + LOOKALIKE
    items = run.row("mixed_list")
    assert items[1:] == [LITERAL_PREFIX + LOOKALIKE, 5]
    assert {o["labels"]["task_id"] for o in objects} == {"flaky", "mixed_list", "keep_a"}
    assert StoreRef.parse(items[0]) is not None


def test_missing_object_fails_the_consumer_naming_it(values_run: Any, airflow_site: Any) -> None:
    run, _ = values_run
    assert run.tasks["drop"] == ("success", 1)
    assert run.tasks["consume_gone"][0] == "failed"
    assert len(airflow_site.report("vy_values", "drop")["deleted"]) == 1
    ref = str(ref_of(run.rows[("produce_gone", "return_value")]))
    lines = [line for line in run.output.splitlines() if "XComObjectMissing" in line and ref in line]
    assert lines, run.output[-6000:]
    for part in ("'return_value'", "task 'consume_gone'", "dag 'vy_values'", airflow_site.daemon.socket):
        assert part in lines[0]


def test_cleanup_task_frees_the_objects_it_is_given(values_run: Any) -> None:
    run, objects = values_run
    assert run.tasks["cleanup"] == ("success", 1)  # all_done: it ran although consume_gone failed
    assert run.row("cleanup") == 1
    ids = {o["id"] for o in objects}
    assert ref_of(run.rows[("keep_a", "return_value")]).object_id in ids
    assert ref_of(run.rows[("keep_b", "return_value")]).object_id not in ids


def test_gc_deletes_objects_no_row_refers_to(values_run: Any, airflow_site: Any) -> None:
    run, _ = values_run
    client = airflow_site.client
    keep_a = ref_of(run.rows[("keep_a", "return_value")]).object_id
    unrelated = client.put(np.arange(10))
    with sqlite3.connect(airflow_site.db) as db:  # what `airflow db clean` or the UI would do
        db.execute("DELETE FROM xcom WHERE dag_id = ? AND task_id = 'keep_a'", ("vy_values",))
    others = {o["id"] for o in airflow_site.xcom_objects()} - {keep_a}
    done = airflow_site.airflow("vineyard", "gc", "--grace-seconds", "0")
    assert f"deleted 1 unreferenced XCom object(s)\n  {keep_a!r}" in done, done[-3000:]
    assert not client.exists(keep_a)
    assert client.exists(unrelated)
    assert {o["id"] for o in airflow_site.xcom_objects()} == others  # still referenced by their rows


def test_cleanup_command_deletes_by_labels(values_run: Any, airflow_site: Any) -> None:
    run, _ = values_run
    target = StoreRef.parse(run.row("mixed_list")[0])
    assert target is not None
    assert airflow_site.client.exists(target.object_id)
    done = subprocess.run(
        [sys.executable, "-m", "vineyard.contrib.airflow", "cleanup", "--dag-id", "vy_values",
         "--run-id", run.run_id, "--task-id", "mixed_list"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"deleted 1 XCom object(s)\n  {target.object_id!r}" in done.stdout
    assert not airflow_site.client.exists(target.object_id)


# -- store down ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dead_socket() -> str:
    daemon = Daemon(size="64Mi")
    daemon.stop()
    return daemon.socket


def test_store_down_fails_the_producer_naming_socket_and_key(airflow_site: Any, dead_socket: str) -> None:
    run = airflow_site.run_dag("vy_unavailable", env={"AIRFLOW__VINEYARD__IPC_SOCKET": dead_socket})
    assert run.tasks["produce"][0] == "failed"
    assert run.tasks["consume"][0] == "upstream_failed"
    lines = [line for line in run.output.splitlines() if "XComStoreUnavailable" in line and dead_socket in line]
    assert lines, run.output[-6000:]
    for part in ("XCom key 'first'", "task 'produce'", "dag 'vy_unavailable'"):
        assert part in lines[0]
    assert run.rows == {}


def test_inline_falls_back_to_airflow_with_one_warning(airflow_site: Any, dead_socket: str) -> None:
    run = airflow_site.run_dag(
        "vy_unavailable",
        env={"AIRFLOW__VINEYARD__IPC_SOCKET": dead_socket, "AIRFLOW__VINEYARD__ON_UNAVAILABLE": "inline"},
    )
    assert run.state == "success", run.output[-6000:]
    facts = airflow_site.report("vy_unavailable", "consume")
    assert facts["sum_a"] == 100_000 * 99_999 // 2 + 3 * 100_000
    assert facts["first_sum_a"] == 100_000 * 99_999 // 2 + 100_000
    for key in ("first", "return_value"):
        assert run.row("produce", key)["__classname__"] == "pandas.DataFrame"
    warnings = [line for line in run.output.splitlines() if "on_unavailable = inline" in line]
    assert len(warnings) == 1, run.output[-6000:]
