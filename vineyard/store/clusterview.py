"""This daemon's picture of the cluster, kept inside its object table. Pure logic, no I/O.

The metadata backend (see :mod:`vineyard.store.meta`) holds, under the session prefix,
every instance's registry entry, one JSON value per persisted object and the names. A
:class:`ClusterView` turns the watched changes of those keys into changes of the
:class:`~vineyard.store.objects.ObjectStore`, and the store's deletions back into keys to
delete. :mod:`vineyard.store.cluster` does the talking to the backend.

Rules:

- Objects persisted by other instances are *installed* as ordinary records (so that local
  global objects may refer to them and ``get_data`` finds them); their blobs are known by
  size and owner only (``store.remote_blobs``), the bytes stay with the owner.
- This instance's persisted objects are *published*: their keys were written by us, under
  our lease. Our own echoes are ignored; a deletion of one of them by another instance
  deletes it here (members that are ours go with it only if their keys go too).
- Names mirror ``/names/`` exactly: the backend is the only source of truth for them.
- An object whose key vanished is *uninstalled*; references to it dangle until the lowest
  live instance reaps what dangles (global objects and names), as its owner died.
- Nothing here is ever trusted more than the key it came from: a malformed value is skipped.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from vineyard.ids import BLOB_BIT, EMPTY_BLOB_ID
from vineyard.store.meta import Compare, Delete, Event, EventType, KeyValue, Op, Put, data_key
from vineyard.store.objects import BLOB_TYPENAME, ObjectRecord, ObjectStore

if TYPE_CHECKING:
    from vineyard.store.allocator import Action

__all__ = ["ClusterView", "Outcome", "encode_record"]

log = logging.getLogger("vineyard.store")

_DATA = "/data/o"
_NAMES = "/names/"
_INSTANCES = "/instances/i"


@dataclass
class Outcome:
    """What applying a batch of changes did, for the daemon to act on."""

    actions: list[Action] = field(default_factory=list)  # memory work of local deletions
    departed: set[int] = field(default_factory=set)  # instances whose registry entry vanished
    names: set[str] = field(default_factory=set)  # names that changed (wake their waiters)
    lost: bool = False  # our own registry entry vanished: we are no member any more


def encode_record(store: ObjectStore, record: ObjectRecord) -> str:
    """The ``/data/o<id>`` value of a record: fields, members, and each blob member's size and
    owner (blobs have no keys of their own)."""
    blobs: dict[str, list[int]] = {}
    for member in record.members.values():
        if member & BLOB_BIT and member != EMPTY_BLOB_ID:
            local = store.blobs.get(member)
            if local is not None:
                blobs[str(member)] = [local.size, store.instance_id]
                continue
            remote = store.remote_blobs.get(member)
            if remote is not None:
                blobs[str(member)] = [int(remote["length"]), int(remote["instance_id"])]
    fields = {k: v for k, v in record.fields.items() if k != "__name"}
    return json.dumps({"fields": fields, "members": record.members, "blobs": blobs}, separators=(",", ":"))


class ClusterView:
    """The cluster as seen from one daemon: instances, remote objects, names.

    Parameters
    ----------
    store
        The daemon's object table; the view installs itself as its ``cluster`` hook, so the
        store reports every deleted record (:meth:`deleted`).
    """

    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        self.me = store.instance_id
        self.instances: dict[int, dict[str, Any]] = {}
        self.published: set[int] = set()  # our persisted objects whose keys we wrote
        self.remote: set[int] = set()  # records installed from other instances' keys
        self.name_revs: dict[str, int] = {}  # name -> mod revision of its key
        self._deletes: list[int] = []  # object keys to delete (the store deleted the records)
        self._name_deletes: list[tuple[str, int]] = []
        self._orphans: list[int] = []  # remote blobs that may have lost their last referrer
        self._gone: set[int] = set()  # keys the backend already deleted (being applied now)
        store.cluster = self

    # -- queries -------------------------------------------------------------------------
    def known(self, object_id: int) -> bool:
        """Whether the object or blob is in this daemon's view."""
        store = self.store
        if object_id & BLOB_BIT:
            blob = store.blobs.get(object_id)
            return (blob is not None and not blob.deleted) or object_id in store.remote_blobs
        return object_id in store.objects

    def unknown_members(self, tree: dict[str, Any]) -> bool:
        """Whether a ``create_data`` tree refers to an object this view does not know (yet)."""
        stack = [tree]
        top = True
        while stack:
            node = stack.pop()
            member = node.get("id")
            if not top and member is not None:
                if type(member) is int and not member & BLOB_BIT and member not in self.store.objects:
                    return True
                continue
            top = False
            stack.extend(value for value in node.values() if type(value) is dict)
        return False

    def owner(self, object_id: int) -> int:
        record = self.store.objects.get(object_id)
        return int(record.fields.get("instance_id", self.me)) if record is not None else self.me

    def lowest_live(self) -> bool:
        """Whether this instance has the lowest id among the live ones (it reaps)."""
        return bool(self.instances) and min(self.instances) == self.me

    def dangling_globals(self) -> list[int]:
        """Global objects with a member that is no longer in the view."""
        objects = self.store.objects
        return [
            record.id
            for record in objects.values()
            if record.fields.get("global")
            and any(not m & BLOB_BIT and m not in objects for m in record.members.values())
        ]

    def dangling_names(self) -> list[tuple[str, int]]:
        """Names whose object is gone, with their keys' mod revisions."""
        objects = self.store.objects
        return [(name, self.name_revs.get(name, 0)) for name, oid in self.store.names.items() if oid not in objects]

    # -- publishing ----------------------------------------------------------------------
    def unpublished(self, object_id: int) -> list[ObjectRecord]:
        """Our persisted records reachable from ``object_id`` whose keys are not written yet."""
        store = self.store
        out: list[ObjectRecord] = []
        seen: set[int] = set()
        stack = [object_id]
        while stack:
            oid = stack.pop()
            if oid in seen or oid & BLOB_BIT:
                continue
            seen.add(oid)
            record = store.objects.get(oid)
            if record is None or oid in self.remote or oid in self.published or record.fields["transient"]:
                continue
            out.append(record)
            stack.extend(record.members.values())
        return out

    def publish_txn(self, records: list[ObjectRecord], lease: int) -> tuple[list[Compare], list[Op]]:
        """Compares and puts that publish ``records``: each member not written in the same
        transaction must still exist (a global object's members may be anybody's)."""
        ids = {record.id for record in records}
        compares: list[Compare] = []
        seen: set[int] = set()
        for record in records:
            for member in record.members.values():
                if not member & BLOB_BIT and member not in ids and member not in seen:
                    seen.add(member)
                    compares.append(Compare.exists(data_key(member)))
        ops: list[Op] = [Put(data_key(r.id), encode_record(self.store, r), lease) for r in records]
        return compares, ops

    # -- the store's deletions -----------------------------------------------------------
    def deleted(self, record: ObjectRecord) -> None:
        """Called by the store for each record it deletes, before its names are dropped."""
        oid = record.id
        if oid in self.remote:
            self.remote.discard(oid)
            self._orphans.extend(m for m in record.members.values() if m & BLOB_BIT)
        elif oid in self.published:
            self.published.discard(oid)
        else:
            return  # transient: never left this daemon
        if oid not in self._gone:
            self._deletes.append(oid)
            for name in self.store.names_of.get(oid, ()):
                self._name_deletes.append((name, oid))

    def take_deletes(self) -> tuple[list[Op], list[tuple[str, int]]]:
        """Keys to delete for the records deleted since the last call: object keys (one
        transaction) and ``(name, object id)`` pairs (each deleted only if still pointing
        at that object)."""
        store = self.store
        for blob_id in self._orphans:
            if not store.parents.get(blob_id):
                store.remote_blobs.pop(blob_id, None)
        self._orphans.clear()
        ops: list[Op] = [Delete(data_key(oid)) for oid in self._deletes]
        names = self._name_deletes
        self._deletes, self._name_deletes = [], []
        return ops, names

    # -- applying the backend's changes --------------------------------------------------
    def apply(self, events: list[Event]) -> Outcome:
        """Apply one batch of watched changes (whole revisions, in order)."""
        outcome = Outcome()
        for event in events:
            self._apply_one(event, outcome)
        self._gone.clear()
        self.store._trees.clear()
        return outcome

    def reset(self, kvs: list[KeyValue]) -> Outcome:
        """Make the view match a full read of the keyspace (at start, or after compaction)."""
        outcome = Outcome()
        data: dict[int, KeyValue] = {}
        names: dict[str, KeyValue] = {}
        instances: dict[int, dict[str, Any]] = {}
        for kv in kvs:
            oid = _data_id(kv.key)
            if oid is not None:
                data[oid] = kv
            elif kv.key.startswith(_NAMES):
                names[kv.key[len(_NAMES) :]] = kv
            elif kv.key.startswith(_INSTANCES):
                parsed = _instance_field(kv.key)
                if parsed is not None:
                    instances.setdefault(parsed[0], {})[parsed[1]] = _json(kv.value)
        for oid in [o for o in self.remote if o not in data]:
            self.uninstall(oid)
        for oid in [o for o in self.published if o not in data]:
            self._delete_ours(oid, outcome)
        for oid, kv in data.items():
            self.install(oid, kv.value)
        for name in [n for n in self.store.names if n not in names]:
            self._drop_name(name)
            outcome.names.add(name)
        for name, kv in names.items():
            self._put_name(name, kv)
            outcome.names.add(name)
        outcome.departed = set(self.instances) - set(instances)
        outcome.lost = self.me in outcome.departed
        self.instances = instances
        self._gone.clear()
        self.store._trees.clear()
        return outcome

    def _apply_one(self, event: Event, outcome: Outcome) -> None:
        key = event.key
        put = event.type is EventType.PUT
        if key.startswith(_DATA):
            oid = _data_id(key)
            if oid is None:
                return  # upstream's per-field keys and __name: nothing we use
            if put:
                self.install(oid, event.kv.value)
            elif oid in self.remote:
                self.uninstall(oid)
            elif oid in self.published:
                self._delete_ours(oid, outcome)
        elif key.startswith(_NAMES):
            name = key[len(_NAMES) :]
            if put:
                self._put_name(name, event.kv)
            else:
                self._drop_name(name)
            outcome.names.add(name)
        elif key.startswith(_INSTANCES):
            parsed = _instance_field(key)
            if parsed is None:
                return
            rank, name = parsed
            if put:
                self.instances.setdefault(rank, {})[name] = _json(event.kv.value)
                return
            fields = self.instances.get(rank)
            if fields is not None:
                fields.pop(name, None)
                if not fields:  # registrations come and go whole, under one lease
                    del self.instances[rank]
                    outcome.departed.add(rank)
                    outcome.lost = outcome.lost or rank == self.me

    def _delete_ours(self, oid: int, outcome: Outcome) -> None:
        """Another instance deleted one of our objects: delete it here too (and whatever
        local object still holds it, which would dangle otherwise)."""
        self._gone.add(oid)
        _, actions = self.store.delete([oid], force=True, deep=False)
        outcome.actions.extend(actions)
        self.published.discard(oid)

    # -- remote records ------------------------------------------------------------------
    def install(self, oid: int, value: bytes) -> None:
        """Add (or refresh) the record of an object another instance persisted."""
        store = self.store
        if oid in self.published:
            return  # our own echo
        existing = store.objects.get(oid)
        if existing is not None and oid not in self.remote:
            return  # ours, not published yet: keys of an id we made are ours
        try:
            doc = json.loads(value)
            fields = dict(doc["fields"])
            members = {str(k): int(v) for k, v in doc["members"].items()}
            blobs = {int(k): (int(v[0]), int(v[1])) for k, v in doc.get("blobs", {}).items()}
            fields["typename"] = str(fields["typename"])
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            log.warning("ignoring the malformed metadata of o%016x in the cluster: %s", oid, exc)
            return
        fields["id"] = oid
        fields["transient"] = False
        if existing is not None:  # a refresh (labels): members never change
            name = existing.fields.get("__name")
            existing.fields = fields
            if name is not None:
                fields["__name"] = name
            return
        names = store.names_of.get(oid)
        if names:
            fields["__name"] = next(iter(names))
        store.objects[oid] = ObjectRecord(oid, fields, members)
        self.remote.add(oid)
        for blob_id, (size, owner) in blobs.items():
            if blob_id not in store.blobs:
                store.remote_blobs[blob_id] = {
                    "id": blob_id,
                    "typename": BLOB_TYPENAME,
                    "length": size,
                    "nbytes": size,
                    "instance_id": owner,
                    "transient": True,
                }
        for member in members.values():
            store.parents.setdefault(member, set()).add(oid)

    def uninstall(self, oid: int) -> None:
        """Forget a remote record whose key vanished; references to it now dangle."""
        store = self.store
        record = store.objects.pop(oid, None)
        self.remote.discard(oid)
        if record is None:
            return
        for member in record.members.values():
            if store.unlink_member(oid, member) and member in store.remote_blobs:
                del store.remote_blobs[member]

    # -- names ---------------------------------------------------------------------------
    def _put_name(self, name: str, kv: KeyValue) -> None:
        store = self.store
        try:
            oid = int(json.loads(kv.value))
        except (ValueError, TypeError):
            log.warning("ignoring the malformed name %r in the cluster", name)
            return
        self._drop_name(name)
        store.names[name] = oid
        store.names_of.setdefault(oid, set()).add(name)
        record = store.objects.get(oid)
        if record is not None:
            record.fields["__name"] = name
        self.name_revs[name] = kv.mod_revision

    def _drop_name(self, name: str) -> None:
        store = self.store
        self.name_revs.pop(name, None)
        oid = store.names.pop(name, None)
        if oid is None:
            return
        names = store.names_of.get(oid)
        if names is not None:
            names.discard(name)
            if not names:
                del store.names_of[oid]
        record = store.objects.get(oid)
        if record is not None and record.fields.get("__name") == name:
            del record.fields["__name"]


def _data_id(key: str) -> int | None:
    rest = key[len(_DATA) :] if key.startswith(_DATA) else ""
    if len(rest) != 16:
        return None
    try:
        return int(rest, 16)
    except ValueError:
        return None


def _instance_field(key: str) -> tuple[int, str] | None:
    rank, _, name = key[len(_INSTANCES) :].partition("/")
    if not rank.isdigit() or not name:
        return None
    return int(rank), name


def _json(value: bytes) -> Any:
    try:
        return json.loads(value)
    except ValueError:
        return value.decode(errors="replace")
