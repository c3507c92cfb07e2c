"""Getting started: put and get a numpy array and a DataFrame, then share a dataset by name
between a producer process and a consumer process.

Run it with a daemon listening (``python -m vineyard --socket /tmp/vineyard.sock``) and
``VINEYARD_IPC_SOCKET=/tmp/vineyard.sock python examples/getting_started.py``.
"""

from __future__ import annotations

import multiprocessing as mp
import os

import numpy as np
import pandas as pd

import vineyard


def producer(socket: str) -> None:
    client = vineyard.connect(socket)
    df = pd.DataFrame({"a": np.arange(1_000_000, dtype=np.int64), "b": np.ones(1_000_000)})
    client.put(df, persist=True, name="dataset")
    print(f"producer (pid {os.getpid()}): stored a DataFrame of {len(df):,} rows as 'dataset'")


def consumer(socket: str) -> None:
    client = vineyard.connect(socket)
    object_id = client.get_name("dataset", wait=True, timeout=30)
    df = client.get(object_id)  # zero-copy: the columns are views of the store's memory
    sums = {column: df[column].sum() for column in df.columns}
    print(f"consumer (pid {os.getpid()}): column sums {sums}")


def main() -> None:
    socket = os.environ["VINEYARD_IPC_SOCKET"]
    client = vineyard.connect(socket)

    array = np.arange(12, dtype=np.float64).reshape(3, 4)
    array_id = client.put(array)
    back = client.get(array_id)
    print(f"array {array_id!r}: {back.tolist()} (read-only view: {not back.flags.writeable})")

    frame = pd.DataFrame({"x": [1, 2, 3], "y": ["a", "b", "c"]})
    frame_id = client.put(frame)
    print(f"DataFrame {frame_id!r}:\n{client.get(frame_id)}")

    ctx = mp.get_context("spawn")
    consumer_process = ctx.Process(target=consumer, args=(socket,))
    consumer_process.start()  # waits for the name to appear
    producer_process = ctx.Process(target=producer, args=(socket,))
    producer_process.start()
    producer_process.join()
    consumer_process.join()
    if producer_process.exitcode or consumer_process.exitcode:
        raise SystemExit("the producer or the consumer failed")


if __name__ == "__main__":
    main()
