"""What an XCom row holds when its value lives in the store, and the labels on stored objects.

A row that points into the store holds a reference string such as::

    vineyard://worker-1/0/o0006a3f1c2b40001

that is ``vineyard://<host>/<instance id>/<object id>``: readable in the Airflow UI (which
never calls a custom backend and shows the row as it is), under 128 bytes, and naming the
store instance so that a task on another host gets a clear error instead of "not found".

References are only looked for where the backend puts them: the top-level value, or an item
of a top-level ``dict``/``list`` (``multiple_outputs`` pushes a dict). A user string at one
of those places that would read as a reference is escaped with :data:`LITERAL_PREFIX` on the
way in and unescaped on the way out, so no user value is ever mistaken for a reference.

This module imports neither Airflow nor the client, so the cleanup command and the tests
can use it anywhere.
"""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from vineyard.ids import ObjectID

__all__ = [
    "LABEL_KEYS",
    "LABEL_SOURCE",
    "LITERAL_PREFIX",
    "SCHEME",
    "SOURCE",
    "StoreRef",
    "escape",
    "iter_refs",
    "local_host",
    "map_slots",
    "object_labels",
    "parse_keys",
    "unescape",
]

SCHEME = "vineyard://"
LITERAL_PREFIX = "vineyard-literal:"
# Label on every object the backend stores, so cleanup never touches anything else.
LABEL_SOURCE = "source"
SOURCE = "airflow-xcom"
# JSON list of the XCom keys (rows of one task instance) that point at the object: an object
# shared by several rows (``multiple_outputs``) is deleted when the last of them is purged.
LABEL_KEYS = "xcom_keys"

# HOST_NAME_MAX is 64 on Linux; capping keeps every reference under 128 bytes.
_MAX_HOST = 64
_REF = re.compile(r"vineyard://([^/\s]{1,64})/(\d{1,10})/o([0-9a-f]{16})")


@dataclass(frozen=True, slots=True)
class StoreRef:
    """A parsed reference: which store (host and instance) and which object."""

    host: str
    instance_id: int
    object_id: ObjectID

    def __str__(self) -> str:
        return f"{SCHEME}{self.host}/{self.instance_id}/{self.object_id!r}"

    @classmethod
    def parse(cls, text: object) -> StoreRef | None:
        """The reference ``text`` spells, or ``None`` if it is not exactly one."""
        if not isinstance(text, str):
            return None
        match = _REF.fullmatch(text)
        if match is None:
            return None
        return cls(match[1], int(match[2]), ObjectID(int(match[3], 16)))


def local_host() -> str:
    """This host's name as references spell it (``/`` and blanks replaced, at most 64 chars)."""
    name = re.sub(r"[/\s]", "_", socket.gethostname()) or "localhost"
    return name[:_MAX_HOST]


def escape(value: Any) -> Any:
    """``value`` made safe to sit where a reference could: only look-alike strings change."""
    if isinstance(value, str) and (value.startswith(LITERAL_PREFIX) or _REF.fullmatch(value)):
        return LITERAL_PREFIX + value
    return value


def unescape(value: Any) -> Any:
    """Undo :func:`escape` (for a slot that holds no reference)."""
    if isinstance(value, str) and value.startswith(LITERAL_PREFIX):
        return value[len(LITERAL_PREFIX) :]
    return value


def map_slots(value: Any, fn: Callable[[Any], Any]) -> Any:
    """Apply ``fn`` to every slot that may hold a reference: the value or its direct items.

    Only a plain ``dict`` with ``str`` keys and a plain ``list`` are opened, because those are
    what the backend writes references into (and what Airflow's serde keeps as they are).
    """
    if type(value) is dict and all(isinstance(k, str) for k in value):
        return {k: fn(v) for k, v in value.items()}
    if type(value) is list:
        return [fn(v) for v in value]
    return fn(value)


def iter_refs(row: Any) -> Iterator[StoreRef]:
    """Every reference in a row as stored (a JSON-decoded XCom value)."""
    found: list[StoreRef] = []

    def collect(item: Any) -> Any:
        ref = StoreRef.parse(item)
        if ref is not None:
            found.append(ref)
        return item

    map_slots(row, collect)
    return iter(found)


def object_labels(*, dag_id: str, run_id: str, task_id: str, map_index: int, key: str) -> dict[str, str]:
    """The labels an XCom object gets (``delete_by_labels`` selects on any subset of them)."""
    return {
        LABEL_SOURCE: SOURCE,
        "dag_id": str(dag_id),
        "run_id": str(run_id),
        "task_id": str(task_id),
        "map_index": str(map_index),
        "key": str(key),
        LABEL_KEYS: json.dumps([str(key)], separators=(",", ":")),
    }


def parse_keys(labels: dict[str, str]) -> list[str]:
    """The XCom keys recorded in ``labels`` (tolerates a missing or damaged label)."""
    try:
        keys = json.loads(labels.get(LABEL_KEYS, "[]"))
    except ValueError:
        return []
    return [str(k) for k in keys] if isinstance(keys, list) else []
