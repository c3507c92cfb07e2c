"""Freeing store objects Airflow never purges.

Airflow calls the backend's ``purge`` only when a task instance is retried or cleared. The
end of a run, deleting an XCom or a run in the UI or the REST API, and ``airflow db clean``
delete rows without telling the backend, so their objects stay in the store. Three remedies,
all working on the labels every XCom object carries (``source=airflow-xcom``, ``dag_id``,
``run_id``, ``task_id``, ``map_index``, ``key``):

* :func:`delete_run_objects` — what :class:`~vineyard.contrib.airflow.operators.VineyardXComCleanupOperator`
  (a last task with ``trigger_rule="all_done"``) and ``airflow vineyard cleanup`` run;
* :func:`sweep_expired` — the optional TTL (``[vineyard] ttl_seconds``);
* :func:`collect_garbage` — ``airflow vineyard gc``: delete objects no XCom row refers to.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from vineyard.contrib.airflow.refs import LABEL_SOURCE, SOURCE, StoreRef, iter_refs, local_host
from vineyard.ids import ObjectID

if TYPE_CHECKING:
    from vineyard.client import Client

__all__ = [
    "collect_garbage",
    "delete_run_objects",
    "referenced_objects",
    "row_refs",
    "sweep_expired",
    "xcom_objects",
]

# Every object in the store, whatever the count (list_metadatas needs a limit).
_ALL = 1 << 31
_NOT_A_BLOB = r"(?!vineyard::Blob$).*"


def delete_run_objects(
    client: Client,
    dag_id: str,
    run_id: str | None = None,
    *,
    task_id: str | None = None,
    older_than: float | None = None,
) -> list[ObjectID]:
    """Delete the XCom objects of a dag (optionally one run, one task). Returns their ids."""
    labels = {LABEL_SOURCE: SOURCE, "dag_id": dag_id}
    if run_id is not None:
        labels["run_id"] = run_id
    if task_id is not None:
        labels["task_id"] = task_id
    return client.delete_by_labels(labels, older_than=older_than)


def sweep_expired(client: Client, ttl_seconds: float) -> list[ObjectID]:
    """Delete every XCom object older than ``ttl_seconds``. Returns their ids."""
    return client.delete_by_labels({LABEL_SOURCE: SOURCE}, older_than=ttl_seconds)


def xcom_objects(client: Client) -> list[dict[str, Any]]:
    """``{"id", "labels", "timestamp", "nbytes", "typename"}`` of every XCom object in the store."""
    out = []
    for meta in client.list_metadatas(_NOT_A_BLOB, regex=True, limit=_ALL, nobuffer=True):
        labels = meta.labels
        if labels.get(LABEL_SOURCE) == SOURCE:
            out.append({
                "id": meta.id, "labels": labels, "timestamp": meta.timestamp,
                "nbytes": int(meta.get("nbytes", 0) or 0), "typename": meta.typename,
            })
    return out


def row_refs(value: Any) -> list[StoreRef]:
    """The references in one XCom row value as the database returns it.

    Rows written through the Execution API are stored as JSON values; older rows may hold
    a JSON document in a string, so a string that is not itself a reference is decoded once.
    """
    refs = list(iter_refs(value))
    if not refs and isinstance(value, str):
        try:
            refs = list(iter_refs(json.loads(value)))
        except ValueError:
            pass
    return refs


def referenced_objects() -> set[StoreRef]:
    """Every reference held by an XCom row in Airflow's database.

    Needs database access, so it runs where the scheduler or API server runs, not in a task.
    """
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import Text, cast, select

    found: set[StoreRef] = set()
    with create_session() as session:
        query = select(XComModel.value).where(cast(XComModel.value, Text).like("%vineyard://%"))
        for (value,) in session.execute(query):
            found.update(row_refs(value))
    return found


def collect_garbage(
    client: Client,
    referenced: Iterable[StoreRef],
    *,
    grace_seconds: float = 300.0,
    dry_run: bool = False,
) -> list[ObjectID]:
    """Delete XCom objects of this store that no row refers to.

    Parameters
    ----------
    client
        A client of the store to clean.
    referenced
        The references the XCom rows hold (:func:`referenced_objects`).
    grace_seconds
        Leave objects younger than this: a task stores its value before its row is written,
        so a very young object without a row may simply be in flight.
    dry_run
        Only report what would be deleted.

    Returns
    -------
    list of ObjectID
        The objects deleted (or that would be).
    """
    host, instance = local_host(), client.instance_id
    keep = {ref.object_id for ref in referenced if ref.host == host and ref.instance_id == instance}
    now_ms = time.time() * 1000
    orphans = [
        ObjectID(obj["id"])
        for obj in xcom_objects(client)
        if obj["id"] not in keep and now_ms - obj["timestamp"] >= grace_seconds * 1000
    ]
    if orphans and not dry_run:
        client.delete(orphans)
    return orphans
