"""DAGs the Airflow tests run with ``airflow dags test``; tasks report what they saw as JSON.

Every task writes ``$VINEYARD_AIRFLOW_TEST_OUT/<dag_id>/<task_id>.<try>.json``; the tests read
those files, the SQLite database and the store. An audit hook installed when this file is
imported (before any XCom is pulled in the process) records every ``pickle.find_class`` of a
numpy/pandas/pyarrow class, i.e. every payload that was unpickled instead of mapped.
"""

from __future__ import annotations

import datetime
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from airflow.sdk import dag, get_current_context, task

from vineyard.contrib.airflow.operators import VineyardXComCleanupOperator

__all__: list[str] = []

FRAME_ROWS = 2_500_000  # ~100 MB: three 8-byte numeric columns and a string column
START = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)
UNPICKLED: list[tuple[str, str]] = []


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if event == "pickle.find_class" and str(args[0]).partition(".")[0] in ("numpy", "pandas", "pyarrow"):
        UNPICKLED.append((str(args[0]), str(args[1])))


sys.addaudithook(_audit)  # audit hooks cannot be removed; this one only appends to a list


def report(**facts: Any) -> None:
    ti = get_current_context()["ti"]
    out = Path(os.environ["VINEYARD_AIRFLOW_TEST_OUT"]) / ti.dag_id
    out.mkdir(parents=True, exist_ok=True)
    facts.setdefault("pid", os.getpid())
    (out / f"{ti.task_id}.{ti.try_number}.json").write_text(json.dumps(facts, default=str))


def make_frame(rows: int = FRAME_ROWS, seed: int = 0) -> pd.DataFrame:
    labels = pc.binary_join_element_wise("item-", pc.cast(pa.array((np.arange(rows) + seed) % 1000), pa.string()), "")
    frame = pd.DataFrame({
        "a": np.arange(rows, dtype=np.int64) + seed,
        "b": np.linspace(0.0, 1.0, rows),
        "c": np.arange(rows, dtype=np.float64) * 2,
    })
    frame["s"] = labels.to_pandas(types_mapper={pa.string(): pd.StringDtype("pyarrow", na_value=np.nan)}.get)
    return frame


def buffer_addresses(value: Any) -> list[int]:
    """Start address of every data buffer behind a DataFrame/Series/ndarray."""
    if isinstance(value, np.ndarray):
        return [value.__array_interface__["data"][0]] if value.nbytes else []
    if isinstance(value, pd.Series):
        if isinstance(value.dtype, pd.StringDtype):
            chunked = value.array.__arrow_array__()
            return [b.address for chunk in chunked.chunks for b in chunk.buffers() if b is not None and b.size]
        return buffer_addresses(value.to_numpy())
    return [a for name in value.columns for a in buffer_addresses(value[name])]


def frame_facts(frame: pd.DataFrame) -> dict[str, Any]:
    """What a consumer checks: where the buffers are, that they are read-only, the content."""
    from vineyard.testing import address_in_store, store_mappings

    maps = store_mappings()
    addresses = buffer_addresses(frame)
    return {
        "shape": list(frame.shape),
        "buffers": len(addresses),
        "buffers_in_store": sum(address_in_store(a, maps) for a in addresses),
        "numeric_writeable": [bool(frame[c].to_numpy().flags.writeable) for c in ("a", "b", "c")],
        "sum_a": int(frame["a"].sum()),
        "sum_c": float(frame["c"].sum()),
        "len_s": int(pc.sum(pc.utf8_length(frame["s"].array.__arrow_array__())).as_py()),
        "first_s": str(frame["s"].iloc[0]),
    }


# -- a 100 MB frame between two tasks -------------------------------------------------------


@dag(dag_id="vy_frame", schedule=None, start_date=START, catchup=False)
def vy_frame() -> None:
    @task
    def produce() -> pd.DataFrame:
        frame = make_frame()
        report(nbytes=int(frame.memory_usage(deep=True).sum()))
        return frame

    @task
    def consume(frame: pd.DataFrame) -> int:
        from vineyard.testing import rss_anon

        facts = frame_facts(frame)
        ti = get_current_context()["ti"]
        # A second pull measures what a pull costs in private memory: a copy would add ~100 MB.
        before = rss_anon()
        again = ti.xcom_pull(task_ids="produce")
        touched = frame_facts(again)
        grew = rss_anon() - before
        report(**facts, again=touched, rss_anon_growth=grew, unpickled=UNPICKLED)
        return facts["sum_a"]

    consume(produce())


vy_frame()


# -- retry purge, multiple_outputs, small values, a missing object, cleanup ---------------------


@dag(dag_id="vy_values", schedule=None, start_date=START, catchup=False)
def vy_values() -> None:
    @task(retries=1, retry_delay=datetime.timedelta(0), multiple_outputs=True)
    def flaky() -> dict[str, Any]:
        import vineyard
        from vineyard.contrib.airflow.cleanup import xcom_objects

        ti = get_current_context()["ti"]
        if ti.try_number == 1:
            ti.xcom_push(key="early", value=np.arange(500_000, dtype=np.int64))
            with vineyard.connect(os.environ["AIRFLOW__VINEYARD__IPC_SOCKET"]) as client:
                mine = [
                    repr(o["id"]) for o in xcom_objects(client)
                    if (o["labels"]["run_id"], o["labels"]["task_id"]) == (ti.run_id, ti.task_id)
                ]
            report(objects=mine)
            raise RuntimeError("first try fails on purpose")
        return {
            "frame": make_frame(200_000, seed=2),
            "arr": np.full(300_000, 2.5),
            "n": ti.try_number,
            "lookalike": "vineyard://elsewhere/0/o00000000000000ff",
        }

    @task
    def check_multi(frame: pd.DataFrame, whole: dict[str, Any]) -> None:
        same = buffer_addresses(frame) == buffer_addresses(whole["frame"])
        report(
            frame=frame_facts(frame), whole_keys=sorted(whole), same_buffers=same,
            arr_sum=float(whole["arr"].sum()), n=whole["n"], lookalike=whole["lookalike"],
        )

    @task
    def small_int() -> int:
        return 42

    @task
    def small_frame() -> pd.DataFrame:
        return pd.DataFrame({"x": [1, 2, 3], "y": ["a", "b", "c"]})

    @task
    def small_dict() -> dict[str, Any]:
        return {
            "i": 7, "text": "hello", "nested": {"k": [1, 2]}, "pair": (1, 2),
            "lookalike": "vineyard://elsewhere/0/o00000000000000ff", "literal": "vineyard-literal:x",
        }

    @task
    def mixed_list() -> list[Any]:
        return [np.arange(400_000, dtype=np.int64), "vineyard://elsewhere/0/o00000000000000ff", 5]

    @task
    def check_small(i: int, frame: pd.DataFrame, d: dict[str, Any], items: list[Any]) -> None:
        report(
            i=i, frame=frame.to_dict(orient="list"), frame_dtypes=[str(t) for t in frame.dtypes], d=d,
            pair_is_tuple=isinstance(d["pair"], tuple), items_sum=int(items[0].sum()), items_rest=items[1:],
        )

    out = flaky()
    check_multi(out["frame"], out)
    check_small(small_int(), small_frame(), small_dict(), mixed_list())

    # A missing object, the cleanup task, and objects left for `airflow vineyard gc`.
    @task
    def produce_gone() -> np.ndarray:
        return np.arange(300_000, dtype=np.int64)

    @task
    def drop() -> None:
        import vineyard
        from vineyard.contrib.airflow.cleanup import delete_run_objects

        ti = get_current_context()["ti"]
        with vineyard.connect(os.environ["AIRFLOW__VINEYARD__IPC_SOCKET"]) as client:
            deleted = delete_run_objects(client, ti.dag_id, ti.run_id, task_id="produce_gone")
        report(deleted=[repr(d) for d in deleted])

    @task
    def consume_gone(values: np.ndarray) -> None:
        report(unexpected="the task ran although its input was deleted")

    @task
    def keep_a() -> np.ndarray:
        return np.ones(300_000)

    @task
    def keep_b() -> np.ndarray:
        return np.zeros(300_000)

    gone = produce_gone()
    consumed = consume_gone(gone)
    gone >> drop() >> consumed  # the object is deleted before its consumer pulls it
    done = [consumed, keep_a(), keep_b()]
    done >> VineyardXComCleanupOperator(task_id="cleanup", task_ids=["keep_b"])


vy_values()




# -- store down ------------------------------------------------------------------------------


@dag(dag_id="vy_unavailable", schedule=None, start_date=START, catchup=False)
def vy_unavailable() -> None:
    @task
    def produce() -> pd.DataFrame:
        ti = get_current_context()["ti"]
        ti.xcom_push(key="first", value=make_frame(100_000, seed=1))
        return make_frame(100_000, seed=3)

    @task
    def consume(frame: pd.DataFrame) -> None:
        first = get_current_context()["ti"].xcom_pull(task_ids="produce", key="first")
        report(sum_a=int(frame["a"].sum()), first_sum_a=int(first["a"].sum()))

    consume(produce())


vy_unavailable()
