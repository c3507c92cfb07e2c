"""A 100 MB DataFrame between two Airflow tasks: Airflow's default XCom against VineyardXCom.

    .venv/bin/python -m bench.engines.airflow_xcom                   # 3 rounds per backend
    .venv/bin/python -m bench.engines.airflow_xcom --rounds 1 --json out.json

Each round runs ``airflow dags test`` on a two-task DAG in a fresh process (private
AIRFLOW_HOME, SQLite, tasks in the runner's process as ``dag.test()`` does): the producer
builds a DataFrame of three 8-byte numeric columns and a string column (~100 MB, random
values so that Parquet cannot shrink them), the consumer reads every column. The backends
differ only in ``AIRFLOW__CORE__XCOM_BACKEND``:

* ``default``: Airflow's serde writes the frame as hex-encoded Parquet into the ``xcom`` row;
* ``vineyard``: the frame goes to a store daemon, the row holds a reference.

Reported as medians over the rounds (backends interleaved, order alternating): the size of
the producer's ``xcom`` row, the wall time of the whole ``airflow dags test`` command, the
producer's and consumer's task durations, the runner's peak RSS (``wait4``; it counts the
store pages the process touched), the bytes the store holds afterwards, and whether the
consumer's buffers lay in the store's mapping. The daemon is stopped by its handle.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = ["main"]

MB = 1_000_000
BACKEND = "vineyard.contrib.airflow.xcom.VineyardXCom"
DAG_ID = "bench_xcom"
DAG_FILE = '''
import datetime, json, os
import numpy as np, pandas as pd, pyarrow as pa, pyarrow.compute as pc
from airflow.sdk import dag, task

ROWS = int(os.environ["BENCH_XCOM_ROWS"])

@dag(dag_id="bench_xcom", schedule=None, start_date=datetime.datetime(2024, 1, 1), catchup=False)
def bench_xcom():
    @task
    def produce():
        rng = np.random.default_rng(0)  # random values: Parquet cannot shrink them, as with real data
        keys = pa.array(rng.integers(0, 10**7, ROWS))
        labels = pc.binary_join_element_wise("item-", pc.cast(keys, pa.string()), "")
        frame = pd.DataFrame({"a": rng.integers(0, 2**62, ROWS), "b": rng.random(ROWS), "c": rng.normal(size=ROWS)})
        frame["s"] = labels.to_pandas(types_mapper={pa.string(): pd.StringDtype("pyarrow", na_value=np.nan)}.get)
        return frame

    @task
    def consume(frame):
        from vineyard.testing import address_in_store, store_mappings
        numeric = [frame[c].to_numpy() for c in ("a", "b", "c")]
        strings = frame["s"].array.__arrow_array__()
        maps = store_mappings()
        facts = {
            "nbytes": int(frame.memory_usage(deep=True).sum()),
            "sum": float(sum(float(c.sum()) for c in numeric)),
            "chars": int(pc.sum(pc.utf8_length(strings)).as_py()),
            "in_store": all(address_in_store(c.__array_interface__["data"][0], maps) for c in numeric)
            and all(address_in_store(b.address, maps) for ch in strings.chunks for b in ch.buffers() if b),
        }
        with open(os.environ["BENCH_XCOM_OUT"], "w") as f:
            json.dump(facts, f)

    consume(produce())

bench_xcom()
'''


def _run(home: Path, env: dict[str, str]) -> dict[str, Any]:
    """One ``airflow dags test``; its wall time, peak RSS and what the database recorded."""
    out = home / "consumer.json"
    out.unlink(missing_ok=True)
    with open(home / "run.log", "wb") as log:
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "airflow", "dags", "test", DAG_ID], env=env,
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
    with sqlite3.connect(home / "airflow.db") as db:
        run_id, state = db.execute(
            "SELECT run_id, state FROM dag_run WHERE dag_id = ? ORDER BY id DESC LIMIT 1", (DAG_ID,)
        ).fetchone()
        if state != "success":
            raise RuntimeError(f"the run failed ({state}); see {home / 'run.log'}")
        (row,) = db.execute(
            "SELECT length(CAST(value AS BLOB)) FROM xcom WHERE dag_id = ? AND run_id = ? AND task_id = 'produce'",
            (DAG_ID, run_id),
        ).fetchone()
        durations = dict(db.execute(
            "SELECT task_id, duration FROM task_instance WHERE dag_id = ? AND run_id = ?", (DAG_ID, run_id)
        ).fetchall())
    return {
        "row_bytes": int(row),
        "wall_s": wall,
        "produce_s": float(durations["produce"]),
        "consume_s": float(durations["consume"]),
        "peak_rss_bytes": usage.ru_maxrss * 1024,
        **json.loads(out.read_text()),
    }


def _median(samples: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(s[key] for s in samples))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=2_500_000, help="rows of the frame (default ~100 MB)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per backend (default 3)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)

    from vineyard.testing import Daemon

    home = Path(tempfile.mkdtemp(prefix="bench-airflow-"))
    daemon = Daemon(size="2Gi")
    try:
        (home / "dags").mkdir()
        (home / "dags" / "bench_xcom.py").write_text(DAG_FILE)
        base = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "VINEYARD_"))}
        base.update({
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
            "BENCH_XCOM_ROWS": str(args.rows),
            "BENCH_XCOM_OUT": str(home / "consumer.json"),
        })
        subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], env=base, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        envs = {
            "default": base,
            "vineyard": {
                **base, "AIRFLOW__CORE__XCOM_BACKEND": BACKEND, "AIRFLOW__VINEYARD__IPC_SOCKET": daemon.socket,
            },
        }
        import vineyard

        samples: dict[str, list[dict[str, Any]]] = {name: [] for name in envs}
        with vineyard.connect(daemon.socket) as client:
            for round_ in range(args.rounds):
                order = list(envs) if round_ % 2 == 0 else list(reversed(envs))
                for name in order:
                    client.clear()
                    sample = _run(home, envs[name])
                    sample["store_bytes"] = client.status.memory_usage
                    samples[name].append(sample)
                    print(f"round {round_ + 1} {name:8s} row {sample['row_bytes']:>10d} B  "
                          f"wall {sample['wall_s']:5.1f} s  peak RSS {sample['peak_rss_bytes'] / MB:7.1f} MB",
                          flush=True)
    finally:
        daemon.stop()
        shutil.rmtree(home, ignore_errors=True)

    keys = ("row_bytes", "wall_s", "produce_s", "consume_s", "peak_rss_bytes", "store_bytes")
    summary = {name: {k: _median(s, k) for k in keys} | {"in_store": all(x["in_store"] for x in s),
                                                          "nbytes": s[0]["nbytes"]}
               for name, s in samples.items()}
    d, v = summary["default"], summary["vineyard"]
    print(f"\n{args.rows} rows, {d['nbytes'] / MB:.1f} MB in memory; medians of {args.rounds} round(s)\n")
    print(f"{'':24s}{'default':>14s}{'vineyard':>14s}{'default/ours':>14s}")
    for key, label, scale, unit in (
        ("row_bytes", "xcom row", 1, "B"), ("wall_s", "wall time", 1, "s"),
        ("produce_s", "producer task", 1, "s"), ("consume_s", "consumer task", 1, "s"),
        ("peak_rss_bytes", "peak RSS (runner)", MB, "MB"), ("store_bytes", "held by the store", MB, "MB"),
    ):
        ratio = f"{d[key] / v[key]:13.1f}x" if d[key] and v[key] else f"{'-':>14s}"
        print(f"{label:24s}{d[key] / scale:11.{0 if unit == 'B' else 2}f} {unit:2s}"
              f"{v[key] / scale:11.{0 if unit == 'B' else 2}f} {unit:2s}{ratio}")
    print(f"\nconsumer buffers in the store's mapping: default {d['in_store']}, vineyard {v['in_store']}")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": args.rows, "summary": summary, "samples": samples}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
