"""Blobs, metadata trees, names and the rules that keep them consistent. Pure logic.

Rules:
- A blob is writable only by its creator and only before seal; after seal it never changes.
- An object's metadata is created whole (all its new members in one tree) and never
  changes afterwards, except ``transient`` (persist) and labels.
- Deleting an object removes its metadata and names at once. A blob's memory is freed only
  when it is deleted *and* no connection holds it: a reader's array never changes under it.
- An object still referenced by another object is not deleted unless ``force``; it is
  reported back instead of silently skipped. ``force`` also deletes every object that
  contains the target; ``deep`` deletes members left unreferenced.
- A connection that goes away drops every blob reference it held and its unsealed blobs.

Nothing here makes a syscall; memory work comes back as allocator actions.
"""

from __future__ import annotations

import fnmatch
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

from vineyard.errors import (
    AssertionFailedException,
    GlobalObjectInvalidException,
    InvalidException,
    MetaTreeInvalidException,
    ObjectNotExistsException,
    ObjectNotSealedException,
    ObjectSealedException,
)
from vineyard.ids import BLOB_BIT, EMPTY_BLOB_ID, IdGenerator
from vineyard.store.allocator import Action, Allocation, Allocator

__all__ = ["BLOB_TYPENAME", "BlobRecord", "ObjectRecord", "ObjectStore"]

BLOB_TYPENAME = "vineyard::Blob"
_TREE_BLOBS_KEPT = 65536  # objects whose blob lists ``get`` remembers
_GLOBAL_INSTANCE = (1 << 64) - 1
# keys the store itself maintains; shallow_copy's extra metadata may not override them
_SYSTEM_KEYS = frozenset(
    {"id", "typename", "signature", "instance_id", "transient", "nbytes", "global", "__timestamp", "__name"}
)


@dataclass(slots=True)
class Region:
    """One allocation shared by blobs created as a run (adjacent in memory, in order): it is
    freed when the last of them lets go of it (dropped, or spilled to disk)."""

    alloc: Allocation
    live: int


@dataclass(slots=True)
class BlobRecord:
    id: int
    size: int
    alloc: Allocation | None
    creator: int | None  # connection id while unsealed, None once sealed
    holders: set[int] = field(default_factory=set)
    deleted: bool = False
    created: float = field(default_factory=time.time)
    spilled: str | None = None  # the spill file while the bytes are on disk (then alloc is None)
    region: Region | None = None  # set when ``alloc`` is a slice of a run's allocation

    @property
    def sealed(self) -> bool:
        return self.creator is None


@dataclass(slots=True)
class ObjectRecord:
    id: int
    fields: dict[str, Any]  # plain values, including typename, nbytes, signature ...
    members: dict[str, int]  # key -> member id (object or blob)

    @property
    def typename(self) -> str:
        return str(self.fields["typename"])


def _oid(object_id: int) -> str:
    return f"o{object_id:016x}"


class ObjectStore:
    """Every blob and object of one instance, plus names and per-connection references."""

    def __init__(self, allocator: Allocator, instance_id: int = 0) -> None:
        self.allocator = allocator
        self.instance_id = instance_id
        self.ids = IdGenerator(instance_id)
        self.blobs: dict[int, BlobRecord] = {
            EMPTY_BLOB_ID: BlobRecord(EMPTY_BLOB_ID, 0, None, None)
        }
        self.objects: dict[int, ObjectRecord] = {}
        self.parents: dict[int, set[int]] = {}  # member id -> ids of objects holding it
        self.names: dict[str, int] = {}
        self.names_of: dict[int, set[str]] = {}  # object id -> its names
        self.held: dict[int, set[int]] = {}  # connection id -> blob ids it references
        self._trees: dict[int, dict[str, Any]] = {}
        self._tree_blobs: dict[int, tuple[dict[str, Any], list[int]]] = {}  # id -> (tree, its blob ids)
        # store/spill.py's Spiller when spilling is on: told when blobs turn cold, hot or go
        self.spill: Any = None
        # in a cluster (store/clusterview.py): blobs of other instances, known by size and owner
        # (id -> tree), and the view, told of every deleted record
        self.remote_blobs: dict[int, dict[str, Any]] = {}
        self.cluster: Any = None

    # -- blobs -------------------------------------------------------------------------
    def create_blobs(
        self, conn: int, sizes: list[int], runs: list[list[int]] | None = None
    ) -> tuple[list[BlobRecord], list[Action]]:
        """Allocate unsealed blobs for ``conn``; all or none (memory errors roll back).

        ``runs`` (``[start, count]`` pairs) ask for blobs that lie next to each other, in
        order, in one allocation: a client copies such a run with one copy and can view it
        as one array (the columns of a DataFrame block).

        Raises
        ------
        InvalidException
            A run is out of range, overlaps another, has fewer than two blobs or an empty one.
        """
        run_at = self._check_runs(sizes, runs or [])
        made: list[BlobRecord] = []
        actions: list[Action] = []
        try:
            i = 0
            while i < len(sizes):
                count = run_at.get(i, 0)
                if count:
                    made.extend(self._create_run(conn, sizes[i : i + count], actions))
                    i += count
                    continue
                size = sizes[i]
                i += 1
                if size == 0:
                    made.append(self.blobs[EMPTY_BLOB_ID])
                    continue
                alloc, acts = (self.spill or self.allocator).allocate(size)
                actions.extend(acts)
                made.append(BlobRecord(self.ids.blob_id(), size, alloc, conn))
        except BaseException as exc:
            for blob in made:
                actions.extend(self.free_memory(blob))
            # segments made on the way are in the allocator's books: the memory layer must
            # still carry these actions out, or the two disagree (the server applies them)
            exc.actions = actions  # type: ignore[attr-defined]
            raise
        for blob in made:
            if blob.id != EMPTY_BLOB_ID:
                self.blobs[blob.id] = blob
                self.held.setdefault(conn, set()).add(blob.id)
                blob.holders.add(conn)
        return made, actions

    @staticmethod
    def _check_runs(sizes: list[int], runs: list[list[int]]) -> dict[int, int]:
        run_at: dict[int, int] = {}
        end = 0
        for run in sorted(runs):
            if len(run) != 2:
                raise InvalidException(f"a run is [start, count], not {run!r}")
            start, count = run
            if start < end or count < 2 or start + count > len(sizes) or 0 in sizes[start : start + count]:
                raise InvalidException(
                    f"run {run!r} does not fit {len(sizes)} blob sizes: runs need two or more "
                    "non-empty blobs, inside the request, without overlapping"
                )
            run_at[start] = count
            end = start + count
        return run_at

    def _create_run(self, conn: int, sizes: list[int], actions: list[Action]) -> list[BlobRecord]:
        alloc, acts = (self.spill or self.allocator).allocate(sum(sizes))
        actions.extend(acts)
        region = Region(alloc, len(sizes))
        made, offset = [], alloc.offset
        for size in sizes:
            part = Allocation(alloc.segment, offset, size)
            made.append(BlobRecord(self.ids.blob_id(), size, part, conn, region=region))
            offset += size
        return made

    def free_memory(self, blob: BlobRecord) -> list[Action]:
        """Let go of ``blob``'s memory: its allocation, or its share of a run's."""
        alloc, blob.alloc = blob.alloc, None
        region, blob.region = blob.region, None
        if region is not None:
            region.live -= 1
            return self.allocator.free(region.alloc) if region.live == 0 else []
        return self.allocator.free(alloc) if alloc is not None else []

    def seal(self, conn: int, blob_ids: list[int]) -> None:
        for blob_id in blob_ids:
            blob = self._blob(blob_id)
            if blob.creator is None:
                if blob_id == EMPTY_BLOB_ID:
                    continue
                raise ObjectSealedException(f"blob {_oid(blob_id)} is already sealed", object_id=blob_id)
            if blob.creator != conn:
                raise InvalidException(
                    f"blob {_oid(blob_id)} belongs to another connection", object_id=blob_id
                )
        for blob_id in blob_ids:
            self.blobs[blob_id].creator = None

    def abort(self, conn: int, blob_id: int) -> list[Action]:
        blob = self._blob(blob_id)
        if blob.creator is None:
            raise ObjectSealedException(f"blob {_oid(blob_id)} is sealed and cannot be aborted")
        if blob.creator != conn:
            raise InvalidException(f"blob {_oid(blob_id)} belongs to another connection")
        return self._drop_blob(blob)

    def shrink(self, conn: int, blob_id: int, size: int) -> list[Action]:
        blob = self._blob(blob_id)
        if blob.creator is None:
            raise ObjectSealedException(f"blob {_oid(blob_id)} is sealed and cannot shrink")
        if blob.creator != conn:
            raise InvalidException(f"blob {_oid(blob_id)} belongs to another connection")
        if size > blob.size:
            raise InvalidException(f"cannot shrink blob {_oid(blob_id)} of {blob.size} bytes to {size}")
        if blob.region is not None:
            raise InvalidException(f"blob {_oid(blob_id)} is part of a run and cannot shrink")
        if size == 0 or blob.alloc is None:
            blob.size = size
            return []
        blob.alloc, actions = self.allocator.shrink(blob.alloc, size)
        blob.size = size
        return actions

    def get_blobs(self, conn: int, blob_ids: list[int], unsafe: bool = False) -> list[BlobRecord | None]:
        """The blobs, referenced by ``conn``; missing ones come back as ``None``."""
        out: list[BlobRecord | None] = []
        for blob_id in blob_ids:
            blob = self.blobs.get(blob_id)
            if blob is None or blob.deleted:
                out.append(None)
                continue
            if blob.creator is not None and not unsafe:
                raise ObjectNotSealedException(f"blob {_oid(blob_id)} is not sealed", object_id=blob_id)
            self._hold(conn, blob)
            out.append(blob)
        return out

    def release(self, conn: int, blob_ids: list[int]) -> list[Action]:
        held = self.held.get(conn)
        actions: list[Action] = []
        if not held:
            return actions
        for blob_id in blob_ids:
            blob = self.blobs.get(blob_id)
            if blob_id in held and blob is not None and blob.creator is None:
                held.discard(blob_id)
                blob.holders.discard(conn)
                if blob.deleted and not blob.holders:
                    actions.extend(self._drop_blob(blob))
                elif self.spill is not None and not blob.holders:
                    self.spill.cold(blob)
        return actions

    def disconnect(self, conn: int) -> list[Action]:
        """Drop every reference of ``conn`` and its unsealed blobs."""
        actions: list[Action] = []
        for blob_id in self.held.pop(conn, ()):
            blob = self.blobs.get(blob_id)
            if blob is None:
                continue
            blob.holders.discard(conn)
            if blob.creator == conn or (blob.deleted and not blob.holders):
                actions.extend(self._drop_blob(blob))
            elif self.spill is not None and not blob.holders:
                self.spill.cold(blob)
        return actions

    def _hold(self, conn: int, blob: BlobRecord) -> None:
        if blob.id != EMPTY_BLOB_ID:
            blob.holders.add(conn)
            self.held.setdefault(conn, set()).add(blob.id)
            if self.spill is not None:
                self.spill.hot(blob)

    def _drop_blob(self, blob: BlobRecord) -> list[Action]:
        self.blobs.pop(blob.id, None)
        if self.spill is not None:
            self.spill.dropped(blob)
        for holder in blob.holders:
            held = self.held.get(holder)
            if held is not None:
                held.discard(blob.id)
        blob.holders.clear()
        return self.free_memory(blob)

    def _blob(self, blob_id: int) -> BlobRecord:
        blob = self.blobs.get(blob_id)
        if blob is None or blob.deleted:
            raise ObjectNotExistsException(f"blob {_oid(blob_id)} does not exist", object_id=blob_id)
        return blob

    # -- metadata ----------------------------------------------------------------------
    def create(self, conn: int, tree: dict[str, Any], persist: bool = False) -> list[list[int]]:
        """Create the new objects of ``tree`` (nodes without an ``id``) in one step.

        Member nodes that carry an ``id`` refer to existing objects or blobs; blobs this
        connection created and has not sealed yet are sealed by this call. Returns
        ``[id, signature]`` of every created node, in pre-order.

        Raises
        ------
        MetaTreeInvalidException, ObjectNotExistsException, GlobalObjectInvalidException
            Before anything is created: the call is all or nothing.
        """
        to_seal: list[int] = []
        plan: list[dict[str, Any]] = []
        self._plan(conn, tree, plan, to_seal, top=True)
        if not plan:
            raise MetaTreeInvalidException("the metadata tree has no new object to create")
        created: list[list[int]] = []
        ids = {id(node): self.ids.object_id() for node in plan}
        now = int(time.time() * 1000)
        for node in plan:  # pre-order: parents before members
            object_id = ids[id(node)]
            fields: dict[str, Any] = {}
            members: dict[str, int] = {}
            for key, value in node.items():
                if type(value) is dict:
                    members[key] = ids[id(value)] if "id" not in value else int(value["id"])
                else:
                    fields[key] = value
            fields["id"] = object_id
            fields.setdefault("signature", self.ids.signature())
            fields.setdefault("nbytes", 0)
            fields["transient"] = not persist
            fields["__timestamp"] = now
            if fields.get("global"):
                fields["instance_id"] = self._global_instance(members)
            else:
                fields["instance_id"] = self.instance_id
            self.objects[object_id] = ObjectRecord(object_id, fields, members)
            for member in members.values():
                self.parents.setdefault(member, set()).add(object_id)
            created.append([object_id, int(fields["signature"])])
        for blob_id in to_seal:
            self.blobs[blob_id].creator = None
        if persist:  # existing members are published too: persist is recursive
            for record in (self.objects[object_id] for object_id, _ in created):
                for member in record.members.values():
                    if not member & BLOB_BIT and self.objects[member].fields["transient"]:
                        self.persist(member)
        return created

    def _plan(
        self,
        conn: int,
        node: dict[str, Any],
        plan: list[dict[str, Any]],
        to_seal: list[int],
        top: bool = False,
    ) -> None:
        if "id" in node and not top:
            member = node["id"]
            if type(member) is not int:
                raise MetaTreeInvalidException(f"member id {member!r} is not an integer")
            if member & BLOB_BIT:
                blob = self._blob(member)
                if blob.creator is not None:
                    if blob.creator != conn:
                        raise InvalidException(f"blob {_oid(member)} belongs to another connection")
                    to_seal.append(member)
            elif member not in self.objects:
                raise ObjectNotExistsException(f"member {_oid(member)} does not exist", object_id=member)
            return
        typename = node.get("typename")
        if type(typename) is not str or not typename:
            raise MetaTreeInvalidException("every new object needs a string 'typename'")
        if typename == BLOB_TYPENAME:
            raise AssertionFailedException("blobs cannot be created as metadata")
        plan.append(node)
        is_global = bool(node.get("global"))
        for value in node.values():
            if type(value) is dict:
                if is_global and "id" not in value and value.get("global"):
                    raise GlobalObjectInvalidException("Global object cannot have nested structure")
                self._plan(conn, value, plan, to_seal)
                if is_global and "id" in value:
                    member = self.objects.get(int(value["id"]))
                    if member is not None and member.fields.get("global"):
                        raise GlobalObjectInvalidException("Global object cannot have nested structure")
                elif "id" in value:  # only a global object may span instances
                    member = self.objects.get(int(value["id"]))
                    if member is not None and member.fields.get("instance_id", self.instance_id) != self.instance_id:
                        raise GlobalObjectInvalidException("Local object cannot refer remote objects")

    def _global_instance(self, members: dict[str, int]) -> int:
        instances = {self._instance_of(m) for m in members.values()}
        return instances.pop() if len(instances) == 1 else _GLOBAL_INSTANCE

    def _instance_of(self, object_id: int) -> int:
        record = self.objects.get(object_id)
        return int(record.fields["instance_id"]) if record else self.instance_id

    def tree(self, object_id: int) -> dict[str, Any]:
        """The full metadata tree of an object or blob, members expanded."""
        cached = self._trees.get(object_id)
        if cached is not None:
            return cached
        if object_id & BLOB_BIT:
            remote = self.remote_blobs.get(object_id)
            if remote is not None:
                return remote
            blob = self._blob(object_id)
            return {
                "id": blob.id,
                "typename": BLOB_TYPENAME,
                "length": blob.size,
                "nbytes": blob.size,
                "instance_id": self.instance_id,
                "transient": True,
            }
        record = self.objects.get(object_id)
        if record is None:
            raise ObjectNotExistsException(
                f"failed to get metadata for {_oid(object_id)}: it does not exist", object_id=object_id
            )
        out = dict(record.fields)
        for key, member in record.members.items():
            out[key] = self.tree(member)
        self._trees[object_id] = out
        return out

    def blob_ids(self, tree: dict[str, Any], out: list[int]) -> list[int]:
        """Every blob id under ``tree`` (depth first)."""
        for value in tree.values():
            if type(value) is dict:
                if value.get("typename") == BLOB_TYPENAME:
                    out.append(value["id"])
                else:
                    self.blob_ids(value, out)
        return out

    def get(self, conn: int, object_id: int) -> tuple[dict[str, Any], list[BlobRecord]]:
        """The tree of ``object_id`` and its blobs, now referenced by ``conn``."""
        tree = self.tree(object_id)
        if object_id & BLOB_BIT:
            ids = [object_id]
        else:
            # a tree's blobs never change; a rebuilt tree (after any change) is a new dict
            known = self._tree_blobs.get(object_id)
            if known is not None and known[0] is tree:
                ids = known[1]
            else:
                ids = self.blob_ids(tree, [])
                if len(self._tree_blobs) >= _TREE_BLOBS_KEPT:
                    self._tree_blobs.clear()
                self._tree_blobs[object_id] = (tree, ids)
        blobs = []
        for blob_id in ids:
            blob = self.blobs.get(blob_id)
            if blob is None and blob_id in self.remote_blobs:
                continue  # its bytes are on another instance: the client fetches them there
            if blob is None or blob.deleted:
                raise ObjectNotExistsException(
                    f"blob {_oid(blob_id)} of {_oid(object_id)} is gone", object_id=object_id
                )
            self._hold(conn, blob)
            blobs.append(blob)
        return tree, blobs

    def exists(self, object_id: int) -> bool:
        if object_id & BLOB_BIT:
            blob = self.blobs.get(object_id)
            return blob is not None and not blob.deleted and blob.creator is None
        return object_id in self.objects

    def ref_counts(self, ids: list[int]) -> list[int | None]:
        """How many connections hold each blob, or any blob of each object (``None``: no such id)."""
        out: list[int | None] = []
        for object_id in ids:
            if object_id & BLOB_BIT:
                blob = self.blobs.get(object_id)
                out.append(None if blob is None or blob.deleted else len(blob.holders))
            elif object_id not in self.objects:
                out.append(None)
            else:
                holders: set[int] = set()
                for blob_id in self.blob_ids(self.tree(object_id), []):
                    blob = self.blobs.get(blob_id)
                    if blob is not None:
                        holders |= blob.holders
                out.append(len(holders))
        return out

    def persist(self, object_id: int) -> None:
        if object_id & BLOB_BIT:
            raise AssertionFailedException("The blobs cannot be persisted", object_id=object_id)
        self._record(object_id)
        stack = [object_id]
        while stack:
            record = self.objects.get(stack.pop())
            if record is not None and record.fields["transient"]:
                record.fields["transient"] = False
                stack.extend(m for m in record.members.values() if not m & BLOB_BIT)
        self._trees.clear()

    def label(self, object_id: int, labels: dict[str, Any]) -> None:
        record = self._record(object_id)
        current = json.loads(record.fields.get("__labels", "{}"))
        current.update({str(k): str(v) for k, v in labels.items()})
        record.fields["__labels"] = json.dumps(current, separators=(",", ":"))
        self._trees.clear()

    def labels_of(self, record: ObjectRecord) -> dict[str, str]:
        raw = record.fields.get("__labels")
        return json.loads(raw) if raw else {}

    def shallow_copy(self, object_id: int, extra: dict[str, Any] | None) -> int:
        if object_id & BLOB_BIT:
            raise AssertionFailedException("blobs cannot be shallow-copied", object_id=object_id)
        record = self._record(object_id)
        new_id = self.ids.object_id()
        fields = dict(record.fields)
        for key, value in (extra or {}).items():
            if type(key) is not str or key in _SYSTEM_KEYS:
                raise InvalidException(f"extra metadata cannot set {key!r}", object_id=object_id)
            if not isinstance(value, (str, int, float, bool, type(None))):
                raise InvalidException(
                    f"extra metadata {key!r} must be a plain value, not {type(value).__name__}",
                    object_id=object_id,
                )
            fields[key] = value
        fields["id"] = new_id
        fields["transient"] = True
        fields.pop("__name", None)
        self.objects[new_id] = ObjectRecord(new_id, fields, dict(record.members))
        for member in record.members.values():
            self.parents.setdefault(member, set()).add(new_id)
        return new_id

    def _record(self, object_id: int) -> ObjectRecord:
        record = self.objects.get(object_id)
        if record is None:
            raise ObjectNotExistsException(f"object {_oid(object_id)} does not exist", object_id=object_id)
        return record

    def list(self, pattern: str, regex: bool, limit: int, nobuffer: bool = False) -> list[dict[str, Any]]:
        if regex:
            try:
                matcher = re.compile(pattern)
            except re.error:
                return []
            match = lambda t: matcher.fullmatch(t) is not None  # noqa: E731
        else:
            match = lambda t: fnmatch.fnmatchcase(t, pattern)  # noqa: E731
        out: list[dict[str, Any]] = []
        for record in self.objects.values():
            if len(out) >= limit:
                return out
            if match(record.typename):
                out.append(dict(record.fields) if nobuffer else self.tree(record.id))
        if len(out) < limit and match(BLOB_TYPENAME):
            for blob in self.blobs.values():
                if len(out) >= limit:
                    break
                if blob.sealed and not blob.deleted and blob.id != EMPTY_BLOB_ID:
                    out.append(self.tree(blob.id))
        return out

    # -- deletion ----------------------------------------------------------------------
    def delete(self, ids: list[int], force: bool = False, deep: bool = True) -> tuple[list[int], list[Action]]:
        """Delete objects/blobs. Returns (ids kept because still referenced, memory actions)."""
        kept: list[int] = []
        actions: list[Action] = []
        for object_id in ids:
            if object_id == EMPTY_BLOB_ID:
                continue
            if object_id not in self.objects and object_id not in self.blobs:
                continue  # deleting what is not there is not an error, as upstream
            if self.parents.get(object_id) and not force:
                kept.append(object_id)
                continue
            if force:
                for parent in list(self.parents.get(object_id, ())):
                    _, acts = self.delete([parent], force=True, deep=deep)
                    actions.extend(acts)
            actions.extend(self._delete_one(object_id, deep))
        if kept or actions:
            self._trees.clear()
        return kept, actions

    def _delete_one(self, object_id: int, deep: bool) -> list[Action]:
        if object_id & BLOB_BIT:
            blob = self.blobs.get(object_id)
            if blob is None or blob.deleted or object_id == EMPTY_BLOB_ID:  # shared by every object
                return []
            if blob.creator is not None:
                return []  # unsealed blobs belong to their writer until seal or abort
            blob.deleted = True
            self.parents.pop(object_id, None)
            return [] if blob.holders else self._drop_blob(blob)
        record = self.objects.pop(object_id, None)
        if record is None:
            return []
        if self.cluster is not None:
            self.cluster.deleted(record)
        self._trees.clear()
        for name in self.names_of.pop(object_id, ()):
            del self.names[name]
        self.parents.pop(object_id, None)
        actions: list[Action] = []
        for member in record.members.values():
            if self.unlink_member(object_id, member) and (deep or member & BLOB_BIT):
                actions.extend(self._delete_one(member, deep))
        return actions

    def unlink_member(self, parent: int, member: int) -> bool:
        """Forget that ``parent`` holds ``member``; True if no object holds it any more."""
        parents = self.parents.get(member)
        if parents is not None:
            parents.discard(parent)
            if not parents:
                del self.parents[member]
        return not self.parents.get(member)

    def clear(self) -> list[Action]:
        actions: list[Action] = []
        for object_id in list(self.objects):
            if object_id in self.objects:
                _, acts = self.delete([object_id], force=True, deep=True)
                actions.extend(acts)
        for blob_id in list(self.blobs):
            blob = self.blobs.get(blob_id)
            if blob is not None and blob.sealed and blob_id != EMPTY_BLOB_ID:
                actions.extend(self._delete_one(blob_id, True))
        self.names.clear()
        self.names_of.clear()
        return actions

    def delete_by_labels(self, labels: dict[str, str], older_than: float | None) -> tuple[list[int], list[Action]]:
        """Delete every top-level object whose labels include ``labels`` (and older than)."""
        now = time.time() * 1000
        targets = [
            record.id
            for record in self.objects.values()
            if not self.parents.get(record.id)
            and all(self.labels_of(record).get(k) == str(v) for k, v in labels.items())
            and (older_than is None or now - record.fields["__timestamp"] >= older_than * 1000)
        ]
        kept, actions = self.delete(targets, force=False, deep=True)
        return [t for t in targets if t not in kept], actions

    # -- names -------------------------------------------------------------------------
    def put_name(self, object_id: int, name: str) -> None:
        if object_id & BLOB_BIT:
            raise InvalidException("blobs cannot have name", object_id=object_id)
        record = self._record(object_id)
        if record.fields["transient"]:
            raise InvalidException(
                f"transient objects cannot have name, please persist it first: {_oid(object_id)}",
                object_id=object_id,
            )
        previous = self.names.get(name)
        if previous is not None:
            self.names_of[previous].discard(name)
            old = self.objects.get(previous)
            if previous != object_id and old is not None and old.fields.get("__name") == name:
                del old.fields["__name"]  # the name moved on: the old object no longer has it
        self.names[name] = object_id
        self.names_of.setdefault(object_id, set()).add(name)
        record.fields["__name"] = name
        self._trees.clear()

    def get_name(self, name: str) -> int | None:
        return self.names.get(name)

    def drop_name(self, name: str) -> None:
        object_id = self.names.pop(name, None)
        if object_id is not None:
            self.names_of[object_id].discard(name)
            record = self.objects.get(object_id)
            if record is not None and record.fields.get("__name") == name:
                del record.fields["__name"]
                self._trees.clear()

    def list_names(self, pattern: str, regex: bool, limit: int) -> dict[str, int]:
        out: dict[str, int] = {}
        if regex:
            try:
                matcher = re.compile(pattern)
            except re.error:
                return out
        for name, object_id in self.names.items():
            if len(out) >= limit:
                break
            if (matcher.fullmatch(name) is not None) if regex else fnmatch.fnmatchcase(name, pattern):
                out[name] = object_id
        return out
