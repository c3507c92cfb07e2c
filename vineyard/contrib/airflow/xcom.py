"""``VineyardXCom``: an Airflow 3 XCom backend that keeps large values in the store.

Enable it for every process that runs tasks (workers resolve the backend when they start)::

    AIRFLOW__CORE__XCOM_BACKEND=vineyard.contrib.airflow.xcom.VineyardXCom
    AIRFLOW__VINEYARD__IPC_SOCKET=/run/vineyard.sock      # or VINEYARD_IPC_SOCKET

A DataFrame, Series, ndarray, Arrow table or record batch of at least ``[vineyard]
threshold_bytes`` (and such items of a returned ``dict``/``list``) is ``put`` into the store and
labelled with its dag/run/task/map index/key; the XCom row holds a reference such as
``vineyard://host/0/o0006a3f1c2b40001`` (see :mod:`vineyard.contrib.airflow.refs`). The task
that pulls it gets the value back from the store, its buffers mapped rather than copied.
Everything else goes through Airflow's own serialization unchanged.

Only ``serialize_value``, ``deserialize_value`` and ``purge`` are overridden: ``set`` and
``get_one`` change their keyword arguments between Airflow releases (that is how upstream's
backend broke on Airflow 3), and workers have no database session to override them with.
"""

from __future__ import annotations

import json
import logging
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from airflow.sdk.bases.xcom import BaseXCom

from vineyard.contrib.airflow.cleanup import sweep_expired
from vineyard.contrib.airflow.errors import XComObjectMissing, XComStoreUnavailable
from vineyard.contrib.airflow.options import SECTION, XComOptions, load_options
from vineyard.contrib.airflow.refs import (
    LABEL_KEYS,
    StoreRef,
    escape,
    iter_refs,
    local_host,
    map_slots,
    object_labels,
    parse_keys,
    unescape,
)
from vineyard.contrib.airflow.store import (
    UNAVAILABLE,
    connect_store,
    is_local,
    release_object,
    storable_nbytes,
)
from vineyard.errors import ObjectNotExistsException, VineyardException
from vineyard.ids import ObjectID

if TYPE_CHECKING:
    from vineyard.client import Client

__all__ = ["VineyardXCom"]

log = logging.getLogger(__name__)


class VineyardXCom(BaseXCom):
    """XCom backend storing large columnar values in a vineyard daemon on the worker's host.

    See :mod:`vineyard.contrib.airflow.xcom` for configuration and ``docs/airflow.md`` for
    object lifetime (which rows Airflow purges and which it does not).
    """

    @staticmethod
    def serialize_value(
        value: Any,
        *,
        key: str | None = None,
        task_id: str | None = None,
        dag_id: str | None = None,
        run_id: str | None = None,
        map_index: int | None = None,
    ) -> Any:
        """Store ``value`` (or its large items) and return the row for the reference(s).

        Raises
        ------
        XComStoreUnavailable
            A value had to go to the store and the store is down, unconfigured or full,
            and ``[vineyard] on_unavailable`` is ``error``.
        ValueError
            A ``[vineyard]`` option is invalid.
        """
        push = _Push(
            dag_id=str(dag_id), run_id=str(run_id), task_id=str(task_id),
            map_index=-1 if map_index is None else int(map_index), key=str(key),
        )
        return BaseXCom.serialize_value(_to_row(value, push, load_options()))

    @staticmethod
    def deserialize_value(result: Any) -> Any:
        """The value behind an XCom row: references are fetched from the store.

        Raises
        ------
        XComObjectMissing
            The row refers to an object this store does not hold (deleted, or on another host).
        XComStoreUnavailable
            The store holding the object cannot be reached.
        """
        row = BaseXCom.deserialize_value(result)
        key = getattr(result, "key", None)  # get_all() passes a wrapper without a key
        fetch = _Fetcher(key)
        return map_slots(row, fetch)

    @classmethod
    def purge(cls, xcom: Any, *args: Any) -> None:
        """Drop the store objects behind ``xcom`` (Airflow calls this when a task is retried
        or cleared). An object shared with another row of the task survives until its last
        row is purged. Never raises: a purge that fails must not fail the retry."""
        refs = list(iter_refs(getattr(xcom, "value", None)))
        if not refs:
            return
        key = str(getattr(xcom, "key", ""))
        try:
            options = load_options()
            client = connect_store(options, "purge", f"key {key!r}")
            for ref in refs:
                if not is_local(ref, client):
                    log.warning("not purging %s: it belongs to another store instance", ref)
                    continue
                release_object(client, ref.object_id, key)
        except (*UNAVAILABLE, VineyardException, ValueError) as exc:
            log.warning("could not purge the store objects of XCom %r (%s): %s", key, refs, exc)


# -- push -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Push:
    dag_id: str
    run_id: str
    task_id: str
    map_index: int
    key: str

    @property
    def ti(self) -> tuple[str, str, str, int]:
        return (self.dag_id, self.run_id, self.task_id, self.map_index)

    def describe(self) -> str:
        where = f"task {self.task_id!r} of dag {self.dag_id!r} (run {self.run_id!r}"
        where += f", map index {self.map_index})" if self.map_index >= 0 else ")"
        return f"XCom key {self.key!r} of {where}"


@dataclass
class _Pushed:
    """What this process stored for the task instance it is running."""

    ti: tuple[str, str, str, int] | None = None
    # id(value) -> (weak reference to the value, object id): multiple_outputs pushes each item
    # and then the whole dict, and the second push must reuse the first object.
    by_value: dict[int, tuple[Callable[[], Any], ObjectID]] = field(default_factory=dict)
    by_key: dict[str, list[ObjectID]] = field(default_factory=dict)

    def reset(self, ti: tuple[str, str, str, int]) -> None:
        if self.ti != ti:
            self.ti = ti
            self.by_value.clear()
            self.by_key.clear()


_PUSHED = _Pushed()
_PUSH_LOCK = threading.Lock()
_warned_inline = False


def _wants_store(value: Any, options: XComOptions) -> bool:
    if options.threshold_bytes < 0:
        return False
    size = storable_nbytes(value)
    if size is None:
        return False
    # Airflow's serde knows DataFrames (as Parquet) but not Series, ndarrays or Arrow data:
    # for those the database is no alternative, only a failed task, so any size is stored.
    return size >= options.threshold_bytes or not _airflow_serializes(value)


def _airflow_serializes(value: Any) -> bool:
    return type(value).__name__ == "DataFrame" and type(value).__module__.partition(".")[0] == "pandas"


def _to_row(value: Any, push: _Push, options: XComOptions) -> Any:
    """The value to hand to Airflow's serialization: large items replaced by references."""
    stored: list[ObjectID] = []
    with _PUSH_LOCK:
        _PUSHED.reset(push.ti)  # what an earlier task instance stored is none of this push's business

    def slot(item: Any) -> Any:
        if _wants_store(item, options):
            ref = _store(item, push, options)
            stored.append(ref.object_id)
            return str(ref)
        return escape(item)

    try:
        row = map_slots(value, slot)
    except BaseException as exc:
        # Items stored before the failure would have no row: give them back.
        _undo(options, stored, push.key)
        if not isinstance(exc, XComStoreUnavailable) or options.on_unavailable != "inline":
            raise
        _warn_inline(exc)
        return map_slots(value, escape)
    with _PUSH_LOCK:
        previous = _PUSHED.by_key.get(push.key, [])
        _PUSHED.by_key[push.key] = stored
    replaced = [oid for oid in previous if oid not in stored]
    if replaced:
        # The same key pushed twice in one try: Airflow overwrites the row without purging.
        _undo(options, replaced, push.key)
    return row


def _store(value: Any, push: _Push, options: XComOptions) -> StoreRef:
    client = connect_store(options, "store", push.describe())
    try:
        if options.ttl_seconds is not None:
            sweep_expired(client, options.ttl_seconds)
        object_id = _reuse(client, value, push)
        if object_id is None:
            object_id = client.put(value, persist=options.persist)
            try:
                client.label(object_id, object_labels(
                    dag_id=push.dag_id, run_id=push.run_id, task_id=push.task_id,
                    map_index=push.map_index, key=push.key,
                ))
            except BaseException:
                client.delete(object_id)  # an unlabelled object would escape every cleanup
                raise
            with _PUSH_LOCK:
                _PUSHED.by_value[id(value)] = (weakref.ref(value), object_id)
    except UNAVAILABLE as exc:
        raise XComStoreUnavailable(
            f"cannot store {push.describe()} in the vineyard store at {options.ipc_socket}: {exc}",
            socket=options.ipc_socket,
        ) from exc
    return StoreRef(local_host(), client.instance_id, object_id)


def _reuse(client: Client, value: Any, push: _Push) -> ObjectID | None:
    """The object already holding ``value`` for this task instance, now also owned by ``push.key``."""
    with _PUSH_LOCK:
        hit = _PUSHED.by_value.get(id(value))
    if hit is None or hit[0]() is not value:
        return None
    object_id = hit[1]
    try:
        keys = parse_keys(client.get_meta(object_id).labels)
        if push.key not in keys:
            keys.append(push.key)
            client.label(object_id, {LABEL_KEYS: json.dumps(keys, separators=(",", ":"))})
    except ObjectNotExistsException:
        return None  # deleted meanwhile (a cleanup task, the TTL): store it again
    return object_id


def _undo(options: XComOptions, object_ids: list[ObjectID], key: str) -> None:
    if not object_ids:
        return
    try:
        client = connect_store(options, "release", f"key {key!r}")
        for object_id in object_ids:
            release_object(client, object_id, key)
    except (*UNAVAILABLE, VineyardException) as exc:
        log.warning("could not release store objects %s of XCom %r: %s", object_ids, key, exc)


def _warn_inline(exc: BaseException) -> None:
    global _warned_inline
    if not _warned_inline:
        _warned_inline = True
        log.warning(
            "vineyard XCom backend: the store is unavailable (%s); [%s] on_unavailable = inline, so "
            "values go through Airflow's own serialization into the database instead. "
            "This warning is given once per process.", exc, SECTION,
        )


# -- pull -------------------------------------------------------------------------------


class _Fetcher:
    """Resolves references for one pull (one client, errors naming the pulling task)."""

    def __init__(self, key: str | None) -> None:
        self.key = key
        self._client: Client | None = None

    def __call__(self, item: Any) -> Any:
        ref = StoreRef.parse(item)
        if ref is None:
            return unescape(item)
        options = load_options()
        what = (f"XCom key {self.key!r}" if self.key else "an XCom") + f" pulled by {_current_task()}"
        if ref.host != local_host():
            raise XComObjectMissing(
                f"{what} refers to {ref}, which lives in the store on host {ref.host!r}, but this task "
                f"runs on {local_host()!r}: run producer and consumer on one host (e.g. one queue per host)",
                object_id=ref.object_id,
            )
        if self._client is None:
            self._client = connect_store(options, "fetch", f"{ref} for {what}")
        if not is_local(ref, self._client):
            raise XComObjectMissing(
                f"{what} refers to {ref}, but the store at {options.ipc_socket} is instance "
                f"{self._client.instance_id}", object_id=ref.object_id,
            )
        try:
            return self._client.get(ref.object_id)
        except ObjectNotExistsException as exc:
            raise XComObjectMissing(
                f"{what} refers to {ref}, which the store at {options.ipc_socket} no longer holds "
                "(deleted by a cleanup task, the TTL or `airflow vineyard gc`, or the daemon restarted)",
                object_id=ref.object_id,
            ) from exc
        except UNAVAILABLE as exc:
            raise XComStoreUnavailable(
                f"cannot fetch {ref} for {what} from the store at {options.ipc_socket}: {exc}",
                socket=options.ipc_socket,
            ) from exc


def _current_task() -> str:
    try:
        from airflow.sdk import get_current_context

        ti = get_current_context()["ti"]
    except Exception:  # only for a message: never hide the real error behind this one
        return "this task"
    where = f"task {ti.task_id!r} of dag {ti.dag_id!r} (run {ti.run_id!r}"
    return where + (f", map index {ti.map_index})" if ti.map_index is not None and ti.map_index >= 0 else ")")
