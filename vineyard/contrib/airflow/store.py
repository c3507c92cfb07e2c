"""The backend's side of the store: one client per process, what can be stored, releasing.

Nothing here imports Airflow; :mod:`vineyard.contrib.airflow.xcom` and the cleanup tools use it.
"""

from __future__ import annotations

import json
import os
import threading
from typing import TYPE_CHECKING, Any

from vineyard.contrib.airflow.errors import XComStoreUnavailable
from vineyard.contrib.airflow.options import SECTION, XComOptions
from vineyard.contrib.airflow.refs import LABEL_KEYS, StoreRef, local_host, parse_keys
from vineyard.errors import NotEnoughMemoryException, ObjectNotExistsException, StoreUnavailable
from vineyard.ids import ObjectID

if TYPE_CHECKING:
    from vineyard.client import Client

__all__ = ["UNAVAILABLE", "connect_store", "is_local", "release_object", "storable_nbytes"]

# Failures that ``on_unavailable = inline`` turns into a fallback: the daemon cannot be
# reached, the connection broke, or the store is full.
UNAVAILABLE = (StoreUnavailable, NotEnoughMemoryException, OSError)


def storable_nbytes(value: Any) -> int | None:
    """The size of ``value`` if the store keeps it natively (zero-copy), else ``None``.

    Exact types only: a subclass (a masked array, a GeoDataFrame) would come back as its
    base class. Object-dtype arrays are left to Airflow, whose serde refuses arbitrary
    classes; the store would pickle them.
    """
    module = type(value).__module__.partition(".")[0]
    if module == "numpy":
        import numpy as np

        if type(value) is np.ndarray and not value.dtype.hasobject:
            return int(value.nbytes)
    elif module == "pandas":
        import pandas as pd

        if type(value) is pd.DataFrame:
            return int(value.memory_usage(index=True, deep=False).sum())
        if type(value) is pd.Series:
            return int(value.memory_usage(index=True, deep=False))
    elif module == "pyarrow":
        import pyarrow as pa

        if type(value) in (pa.Table, pa.RecordBatch):
            return int(value.nbytes)
    return None


def release_object(client: Client, object_id: ObjectID, key: str) -> bool:
    """Drop row ``key``'s hold on an XCom object; delete it when no row holds it any more.

    Returns whether the object was deleted. A missing object counts as released.
    """
    try:
        keys = parse_keys(client.get_meta(object_id).labels)
    except ObjectNotExistsException:
        return False
    remaining = [k for k in keys if k != key]
    if remaining:
        client.label(object_id, {LABEL_KEYS: json.dumps(remaining, separators=(",", ":"))})
        return False
    client.delete(object_id)
    return True


# One client per socket and process: the values handed out are views of its mappings, so it
# must outlive them; a forked child needs its own connection.
_CLIENTS: dict[str, tuple[int, Client]] = {}
_CLIENTS_LOCK = threading.Lock()


def connect_store(options: XComOptions, action: str, what: str) -> Client:
    """This process's client of the configured store (``action``/``what`` word the error).

    Raises
    ------
    XComStoreUnavailable
        No socket is configured, or the daemon cannot be reached.
    """
    if not options.ipc_socket:
        raise XComStoreUnavailable(
            f"cannot {action} {what}: no vineyard socket is configured "
            f"(set [{SECTION}] ipc_socket, AIRFLOW__VINEYARD__IPC_SOCKET or VINEYARD_IPC_SOCKET)",
        )
    import vineyard

    with _CLIENTS_LOCK:
        hit = _CLIENTS.get(options.ipc_socket)
        if hit is not None and hit[0] == os.getpid() and hit[1].connected:
            return hit[1]
        try:
            client = vineyard.connect(options.ipc_socket)
        except UNAVAILABLE as exc:
            raise XComStoreUnavailable(
                f"cannot {action} {what}: the vineyard store at {options.ipc_socket} is unavailable: {exc}",
                socket=options.ipc_socket,
            ) from exc
        # A replaced client is kept referenced by the views it handed out; it is not closed here.
        _CLIENTS[options.ipc_socket] = (os.getpid(), client)
        return client


def is_local(ref: StoreRef, client: Client) -> bool:
    """Whether ``ref`` names an object of the store ``client`` is connected to."""
    return ref.host == local_host() and ref.instance_id == client.instance_id
