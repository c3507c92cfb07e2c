"""Ray Data: read store objects into a ``Dataset``, write a ``Dataset`` into the store.

Reading (:class:`VineyardDatasource`, :func:`from_vineyard`): each DataFrame, Arrow table or
record batch becomes one block; a global DataFrame is expanded into its partitions. A read
task maps the object (no copy) and hands it to Ray, which copies the block once into its
object store — a ``Dataset``'s blocks are always Ray objects. :func:`from_vineyard` asks Ray
to run each read on the node whose store holds the object, softly: if that node is busy or
gone, the read runs elsewhere (and fails there with an error naming the object's host).

Writing (:class:`VineyardDatasink`, :func:`to_vineyard`): each write task concatenates the
blocks Ray gives it into one DataFrame (or Arrow table) and stores it, so the number of
objects is the number of write tasks. Ray bundles blocks up to ``min_rows_per_write`` rows,
or ``min_bytes_per_write`` bytes (64 MiB unless told otherwise), so a Dataset of many small
blocks does not turn into many tiny objects. After the write the sink's :attr:`result` is
the list of references, or one reference to a ``vineyard::GlobalDataFrame`` over them.
"""

from __future__ import annotations

import functools
import json
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import ray
from ray.data.block import Block, BlockAccessor, BlockMetadata
from ray.data.datasource import Datasink, Datasource, ReadTask

from vineyard.contrib.ray import lifetime
from vineyard.contrib.ray.ref import VineyardRef, put
from vineyard.contrib.ray.stores import client_for, default_socket, local_host
from vineyard.ids import ObjectID

if TYPE_CHECKING:
    from ray.data import Dataset
    from ray.data._internal.execution.interfaces import TaskContext
    from ray.data.datasource.datasink import WriteResult

    from vineyard.client import Client
    from vineyard.meta import ObjectMeta

__all__ = [
    "DEFAULT_MIN_BYTES_PER_WRITE",
    "LABEL_WRITE",
    "VineyardDatasink",
    "VineyardDatasource",
    "from_vineyard",
    "soft_affinity",
    "to_vineyard",
]

DEFAULT_MIN_BYTES_PER_WRITE = 64 << 20
# Every object one write stores carries this label, so a failed write can take back what
# its successful tasks already stored.
LABEL_WRITE = "ray.write"
_NODE_ID_LABEL = "ray.io/node-id"


@dataclass(frozen=True, slots=True)
class _Part:
    """One object to read: where it is and what it holds (only small fields: read tasks
    carry these to the workers)."""

    object_id: int
    socket: str
    host: str
    typename: str
    nbytes: int
    num_rows: int | None


# -- placement -------------------------------------------------------------------------
def soft_affinity(node_id: str) -> dict[str, Any]:
    """Ray remote options preferring ``node_id`` and falling back to any node.

    A node-ID label selector plus an empty fallback, the label-based form Ray Data's named
    read parameters accept (``NodeAffinitySchedulingStrategy`` only goes through its
    deprecated ``ray_remote_args``).
    """
    return {"label_selector": {_NODE_ID_LABEL: node_id}, "fallback_strategy": [{"label_selector": {}}]}


def _nodes_by_host() -> dict[str, str]:
    """Host name → ID of an alive Ray node on it (the first one, when several share a host)."""
    out: dict[str, str] = {}
    for node in ray.nodes():
        if node.get("Alive"):
            out.setdefault(str(node["NodeManagerHostname"]), str(node["NodeID"]))
    return out


# -- reading ---------------------------------------------------------------------------
def _blob_bytes(meta: ObjectMeta) -> int:
    from vineyard.meta import ObjectMeta

    if meta.typename == "vineyard::Blob":
        return int(meta.get("length", 0))
    return sum(_blob_bytes(value) for _, value in meta.items() if isinstance(value, ObjectMeta))


def _num_rows(meta: ObjectMeta) -> int | None:
    """Rows, from upstream's metadata conventions, when the metadata says so cheaply."""
    from vineyard.meta import ObjectMeta

    for key in ("num_rows_", "row_num_"):  # vineyard::Table, vineyard::RecordBatch
        if key in meta:
            return int(meta[key])
    for i in range(int(meta.get("__values_-size", 0))):  # a DataFrame: any Tensor column
        column = meta.get(f"__values_-value-{i}")
        if isinstance(column, ObjectMeta) and "shape_" in column:
            shape = json.loads(column["shape_"])
            return int(shape[0]) if shape else None
    return None


def _instance_sockets(client: Client) -> dict[int, tuple[str, str]]:
    """Instance ID → (IPC socket, host) of every instance the store's cluster knows."""
    return {int(i): (str(v.get("ipc_socket", "")), str(v.get("hostname", ""))) for i, v in client.meta.items()}


def _expand(objects: Any, socket: str | None) -> list[_Part]:
    """References or IDs (global objects included) → the parts to read, in order."""
    items = objects if isinstance(objects, (list, tuple)) else [objects]
    parts: list[_Part] = []
    clusters: dict[str, dict[int, tuple[str, str]]] = {}
    for item in items:
        ref = item if isinstance(item, VineyardRef) else VineyardRef(item, socket)
        meta = ref.get_meta()
        members = [meta]
        if meta.isglobal or meta.typename.startswith("vineyard::Global"):
            members = [meta[f"partitions_-{i}"] for i in range(int(meta["partitions_-size"]))]
        if ref.socket not in clusters:
            clusters[ref.socket] = _instance_sockets(ref.client)
        instances = clusters[ref.socket]
        for member in members:
            member_socket, host = instances.get(member.instance_id, (ref.socket, ref.host))
            parts.append(_Part(
                int(member.id), member_socket or ref.socket, host or ref.host,
                member.typename, _blob_bytes(member), _num_rows(member),
            ))
    return parts


def _as_block(value: Any, part: _Part) -> Block:
    import pandas as pd
    import pyarrow as pa

    if isinstance(value, (pd.DataFrame, pa.Table)):
        return value
    if isinstance(value, pd.Series):
        return value.to_frame()
    if isinstance(value, pa.RecordBatch):
        return pa.Table.from_batches([value])
    raise TypeError(
        f"{ObjectID(part.object_id)!r} ({part.typename}) is a {type(value).__name__}: Ray Data reads "
        "DataFrames, Series, Arrow tables and record batches from vineyard"
    )


def _read_parts(parts: tuple[_Part, ...]) -> Iterator[Block]:
    for part in parts:
        yield _as_block(VineyardRef(part.object_id, part.socket, part.host).get(), part)


class VineyardDatasource(Datasource):
    """Read DataFrames, Arrow tables and global DataFrames from vineyard into Ray Data.

    Parameters
    ----------
    objects
        A :class:`VineyardRef`, an object ID, or a list of them; a global DataFrame stands
        for all its partitions.
    socket
        The store holding objects given by bare ID; default ``$VINEYARD_IPC_SOCKET``.

    Notes
    -----
    The objects are looked up when the datasource is made, on the driver, so a missing
    object fails there. One read task reads one or more whole objects; a task never splits
    an object, so there are at most as many read tasks as objects.
    """

    def __init__(self, objects: Any, *, socket: str | None = None) -> None:
        super().__init__()
        self._parts = tuple(_expand(objects, socket))
        if self._parts:
            lifetime.note_store(self._parts[0].socket)

    @classmethod
    def _of_parts(cls, parts: Iterable[_Part]) -> VineyardDatasource:
        source = cls.__new__(cls)
        Datasource.__init__(source)
        source._parts = tuple(parts)
        return source

    @property
    def parts(self) -> list[VineyardRef]:
        """References to the objects this source reads, in order."""
        return [VineyardRef(p.object_id, p.socket, p.host) for p in self._parts]

    def get_name(self) -> str:
        return "Vineyard"

    def estimate_inmemory_data_size(self) -> int | None:
        return sum(p.nbytes for p in self._parts)

    def get_read_tasks(
        self, parallelism: int, per_task_row_limit: int | None = None, data_context: Any = None,
    ) -> list[ReadTask]:
        n = max(1, min(parallelism, len(self._parts)))
        tasks = []
        for i in range(n):
            chunk = self._parts[i * len(self._parts) // n : (i + 1) * len(self._parts) // n]
            rows = [p.num_rows for p in chunk]
            metadata = BlockMetadata(
                num_rows=None if None in rows else sum(r for r in rows if r is not None),
                size_bytes=sum(p.nbytes for p in chunk),
                input_files=None,
                exec_stats=None,
            )
            tasks.append(ReadTask(functools.partial(_read_parts, chunk), metadata,
                                  per_task_row_limit=per_task_row_limit))
        return tasks

    def placement(self) -> dict[str, Any]:
        """Options for :func:`ray.data.read_datasource` preferring the node of the store that
        holds the objects, or ``{}`` when they are spread over several hosts (use
        :func:`from_vineyard`, which splits the read per host)."""
        hosts = {p.host for p in self._parts}
        if len(hosts) != 1:
            return {}
        node = _nodes_by_host().get(hosts.pop())
        return soft_affinity(node) if node else {}


def from_vineyard(objects: Any, *, socket: str | None = None, **read_kwargs: Any) -> Dataset:
    """A ``Dataset`` over store objects, each read on (preferably) the node that holds it.

    Parameters
    ----------
    objects
        A :class:`VineyardRef`, an object ID, or a list of them; global DataFrames are
        expanded into their partitions.
    socket
        The store holding objects given by bare ID; default ``$VINEYARD_IPC_SOCKET``.
    **read_kwargs
        Passed to :func:`ray.data.read_datasource`. Giving ``label_selector`` turns the
        automatic placement off.

    Raises
    ------
    ObjectNotExistsException
        An object does not exist (raised here, on the driver, before any task runs).
    """
    parts = _expand(objects, socket)
    if parts:
        lifetime.note_store(parts[0].socket)
    by_host: dict[str, list[_Part]] = {}
    for part in parts:
        by_host.setdefault(part.host, []).append(part)
    nodes = _nodes_by_host() if "label_selector" not in read_kwargs else {}
    datasets = []
    for host, group in by_host.items() or {local_host(): []}.items():
        options = dict(read_kwargs)
        if host in nodes:
            options.update(soft_affinity(nodes[host]))
        datasets.append(ray.data.read_datasource(VineyardDatasource._of_parts(group), **options))
    return datasets[0] if len(datasets) == 1 else datasets[0].union(*datasets[1:])


# -- writing ---------------------------------------------------------------------------
def _make_global_dataframe(client: Client, ids: list[ObjectID]) -> ObjectMeta:
    """A persisted ``vineyard::GlobalDataFrame`` over ``ids``, with ``partitions_-i`` members."""
    from vineyard.data.dataframe import make_global_dataframe

    return make_global_dataframe(client, ids)  # type: ignore[no-any-return]


class VineyardDatasink(Datasink[list[tuple[int, int, int, str, str]]]):
    """Write a ``Dataset`` into vineyard: one object per write task.

    Parameters
    ----------
    socket
        The store's socket; default ``$VINEYARD_IPC_SOCKET`` (of each write task's node).
    global_
        Also make one ``vineyard::GlobalDataFrame`` over the objects and make :attr:`result`
        a reference to it (needs ``format="pandas"`` and one store: the driver's node).
    format
        ``"pandas"`` (a DataFrame per object) or ``"arrow"`` (an Arrow table per object).
    min_rows_per_write, min_bytes_per_write
        Smallest object Ray should bundle blocks into; at most one of the two. Default:
        64 MiB.
    persist
        Keep the objects after the Ray job ends.
    distributed
        Let write tasks run on every node, each writing to its node's store. Default False:
        all write tasks run on the driver's node.

    Attributes
    ----------
    result
        After the write: a list of :class:`VineyardRef` in dataset order, or one reference
        to the global object.
    """

    def __init__(
        self,
        socket: str | None = None,
        *,
        global_: bool = False,
        format: str = "pandas",
        min_rows_per_write: int | None = None,
        min_bytes_per_write: int | None = None,
        persist: bool = False,
        distributed: bool = False,
    ) -> None:
        if format not in ("pandas", "arrow"):
            raise ValueError(f"format must be 'pandas' or 'arrow', not {format!r}")
        if global_ and (format != "pandas" or distributed):
            raise ValueError("global_=True needs format='pandas' and distributed=False")
        if min_rows_per_write is not None and min_bytes_per_write is not None:
            raise ValueError("give min_rows_per_write or min_bytes_per_write, not both")
        if min_rows_per_write is None and min_bytes_per_write is None:
            min_bytes_per_write = DEFAULT_MIN_BYTES_PER_WRITE
        self.socket = socket
        self.global_ = global_
        self.format = format
        self._min_rows = min_rows_per_write
        self._min_bytes = min_bytes_per_write
        self.persist = persist
        self.distributed = distributed
        # Made here, not in on_write_start: the write tasks may be pickled before it runs.
        self.write_id = uuid.uuid4().hex
        self.result: list[VineyardRef] | VineyardRef | None = None

    @property
    def min_rows_per_write(self) -> int | None:
        return self._min_rows

    @property
    def min_bytes_per_write(self) -> int | None:
        return self._min_bytes

    @property
    def supports_distributed_writes(self) -> bool:
        return self.distributed

    def get_name(self) -> str:
        return "Vineyard"

    def on_write_start(self, schema: Any = None) -> None:
        """Fail before any task runs if the driver's store is down; track the job."""
        path = default_socket(self.socket)
        client_for(path)
        lifetime.note_store(path)

    def write(self, blocks: Iterable[Block], ctx: TaskContext) -> list[tuple[int, int, int, str, str]]:
        accessors = [BlockAccessor.for_block(b) for b in blocks]
        accessors = [a for a in accessors if a.num_rows() > 0]
        if not accessors:
            return []
        if self.format == "pandas":
            import pandas as pd

            frames = [a.to_pandas() for a in accessors]
            value: Any = frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)
        else:
            import pyarrow as pa

            tables = [a.to_arrow() for a in accessors]
            value = tables[0] if len(tables) == 1 else pa.concat_tables(tables)
        ref = put(value, socket=self.socket, persist=self.persist, labels={LABEL_WRITE: self.write_id})
        return [(ctx.task_idx, len(value), int(ref.object_id), ref.socket, ref.host)]

    def on_write_complete(self, write_result: WriteResult[list[tuple[int, int, int, str, str]]]) -> None:
        written = sorted(item for items in write_result.write_returns for item in items)
        refs = [VineyardRef(object_id, socket, host) for _, _, object_id, socket, host in written]
        for ref in refs:
            lifetime.note_store(ref.socket)
        if not self.global_:
            self.result = refs
            return
        client = client_for(default_socket(self.socket))
        meta = _make_global_dataframe(client, [r.object_id for r in refs])
        # make_global_dataframe persists the global object and its partitions, as global
        # objects must be; unless the user asked to keep them, they still belong to the job.
        persisted = {lifetime.LABEL_PERSIST: "user" if self.persist else "auto"}
        for ref in refs:
            client.label(ref.object_id, persisted)
        client.label(meta.id, {LABEL_WRITE: self.write_id, **persisted})
        lifetime.label_new_object(client, meta.id, default_socket(self.socket), persist=self.persist)
        self.result = VineyardRef(meta.id, default_socket(self.socket), local_host())

    def on_write_failed(self, error: Exception) -> None:
        """Delete what the successful write tasks stored (on the driver's store)."""
        try:
            client_for(default_socket(self.socket)).delete_by_labels({LABEL_WRITE: self.write_id})
        except Exception:  # best effort: the error being reported matters more
            pass


def to_vineyard(ds: Dataset, *, socket: str | None = None, global_: bool = True,
                **sink_kwargs: Any) -> list[VineyardRef] | VineyardRef:
    """Write ``ds`` into vineyard; by default one global DataFrame over the written objects,
    as upstream's ``Dataset.to_vineyard()`` returned.

    ``sink_kwargs`` go to :class:`VineyardDatasink`. Returns :attr:`VineyardDatasink.result`.
    """
    sink = VineyardDatasink(socket, global_=global_, **sink_kwargs)
    ds.write_datasink(sink)
    assert sink.result is not None
    return sink.result
