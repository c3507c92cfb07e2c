"""The values, errors and key layout shared by every metadata backend.

See :mod:`vineyard.store.meta` for the semantics and the layout table.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

from vineyard.errors import EtcdErrorException

__all__ = [
    "BARRIER_KEY",
    "Compare",
    "Delete",
    "Event",
    "EventType",
    "Get",
    "KeyValue",
    "LeaseExpired",
    "MetaTimeout",
    "NEXT_INSTANCE_ID",
    "Op",
    "Put",
    "Range",
    "RevisionCompacted",
    "TxnConflict",
    "TxnResult",
    "WatchClosed",
    "as_bytes",
    "data_key",
    "instance_key",
    "name_key",
    "prefix_end",
    "session_prefix",
    "signature_key",
]

NEXT_INSTANCE_ID = "/next_instance_id"
BARRIER_KEY = "/barrier"


# -- errors ------------------------------------------------------------------------------
# All are EtcdErrorException (status code ETCD_ERROR), as upstream reports any failure of
# its meta service, so they cross the wire to clients as the error they already know.


class TxnConflict(EtcdErrorException):
    """A transaction's compares failed; nothing was written. ``result`` holds the reply."""


class RevisionCompacted(EtcdErrorException):
    """The requested revision was compacted away; reload with a fresh range.

    ``compact_revision`` is the oldest revision still available.
    """


class LeaseExpired(EtcdErrorException):
    """The lease expired or was revoked: its keys are gone and its holder must fence itself."""


class MetaTimeout(EtcdErrorException, TimeoutError):
    """A blocking call (a lock, an ``wait``) did not complete in time."""


class WatchClosed(EtcdErrorException):
    """The watch was closed by its owner."""


# -- values ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KeyValue:
    """One key's state. Revisions are the store's; ``version`` counts puts since creation."""

    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int = 0

    def text(self) -> str:
        return self.value.decode()

    def json(self) -> Any:
        return json.loads(self.value)


class EventType(enum.Enum):
    PUT = "PUT"
    DELETE = "DELETE"


@dataclass(frozen=True, slots=True)
class Event:
    """A change seen by a watch; a DELETE's ``kv`` has an empty value and version 0."""

    type: EventType
    kv: KeyValue

    @property
    def key(self) -> str:
        return self.kv.key

    @property
    def revision(self) -> int:
        return self.kv.mod_revision


class Range(NamedTuple):
    """The result of a range read: the keys in key order and the revision they were read at."""

    kvs: list[KeyValue]
    revision: int


@dataclass(frozen=True, slots=True)
class Put:
    key: str
    value: bytes | str
    lease: int = 0


@dataclass(frozen=True, slots=True)
class Delete:
    key: str
    prefix: bool = False


@dataclass(frozen=True, slots=True)
class Get:
    key: str
    prefix: bool = False


Op = Put | Delete | Get

CompareTarget = Literal["value", "version", "create", "mod", "lease"]
CompareOp = Literal["==", "!=", "<", ">"]


@dataclass(frozen=True, slots=True)
class Compare:
    """A guard of a transaction, evaluated on one key as etcd does.

    On a missing key, ``version``, ``create``, ``mod`` and ``lease`` read as 0 and a
    ``value`` compare is always false.
    """

    key: str
    target: CompareTarget
    op: CompareOp
    operand: int | bytes | str

    @classmethod
    def absent(cls, key: str) -> Compare:
        return cls(key, "version", "==", 0)

    @classmethod
    def exists(cls, key: str) -> Compare:
        return cls(key, "version", ">", 0)

    @classmethod
    def unchanged(cls, key: str, mod_revision: int) -> Compare:
        """True while ``key`` was last written at ``mod_revision`` (0: while it is absent)."""
        return cls(key, "mod", "==", mod_revision)

    @classmethod
    def value_is(cls, key: str, value: bytes | str) -> Compare:
        return cls(key, "value", "==", value)


@dataclass(frozen=True, slots=True)
class TxnResult:
    """What a transaction did: which branch ran, at which revision, and each op's answer.

    ``responses`` follows the branch's ops: ``list[KeyValue]`` for a :class:`Get`, the
    number of deleted keys for a :class:`Delete`, ``None`` for a :class:`Put`.
    """

    succeeded: bool
    revision: int
    responses: list[list[KeyValue] | int | None]


# -- key layout --------------------------------------------------------------------------


def session_prefix(etcd_prefix: str = "vineyard", session: int = 0) -> str:
    """Upstream's per-session root: ``vineyard/S0000000000000000`` for the root session."""
    return f"{etcd_prefix.rstrip('/')}/S{session:016x}"


def instance_key(instance_id: int, field: str = "") -> str:
    return f"/instances/i{instance_id}/{field}"


def data_key(object_id: int) -> str:
    return f"/data/o{object_id:016x}"


def signature_key(instance_id: int, signature: int) -> str:
    return f"/signatures/i{instance_id}/s{signature:016x}"


def name_key(name: str) -> str:
    return f"/names/{name}"


def prefix_end(prefix: bytes) -> bytes:
    """The smallest key greater than every key starting with ``prefix`` (etcd's range_end).

    An empty result means "to the end of the keyspace".
    """
    end = bytearray(prefix)
    while end and end[-1] == 0xFF:
        end.pop()
    if end:
        end[-1] += 1
    return bytes(end)


def as_bytes(value: bytes | str) -> bytes:
    return value.encode() if isinstance(value, str) else bytes(value)
