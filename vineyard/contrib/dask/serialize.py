"""Dask serializers that send an object ID instead of the bytes when both ends share a store.

Registered (by :func:`register_serializers`, called when a worker attaches to its store) for
``numpy.ndarray``, ``pandas.DataFrame``, ``pandas.Series`` and ``pyarrow.Table``, in the
``"dask"`` serialization family. For a value that is a registered view of a stored object
(:func:`vineyard.contrib.dask.store.backing_of`) going to a peer that announced the same store
in its connection handshake, the header carries the object ID and there are no frames; the
receiving worker maps the object (:meth:`WorkerStore.get`), holding a reference of its own.
Anything else goes the usual way: distributed's own numpy/Arrow serializers, or pickle for
pandas (raising ``NotImplementedError`` hands the value to the next family).

Why the handshake: on the sending side, the serializer sees the peer's connection info but not
its worker address (a fetching worker connects from an ephemeral port). So each worker adds
``{HANDSHAKE_KEY: <store identity>}`` to the handshake of the connections it opens
(:class:`vineyard.contrib.dask.plugin.VineyardWorkerPlugin`); a peer that did not is sent bytes.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from distributed.protocol.serialize import dask_deserialize, dask_serialize
from distributed.utils import has_keyword

from vineyard.contrib.dask.store import backing_of, find_store
from vineyard.errors import ObjectNotExistsException
from vineyard.ids import ObjectID

__all__ = ["HANDSHAKE_KEY", "HEADER_KEY", "id_header", "register_serializers"]

log = logging.getLogger(__name__)

#: Key a worker adds to the handshake of its outgoing connections: its store's identity.
HANDSHAKE_KEY = "vineyard-store"
#: Key of the sub-header that replaces the frames of a value sent by ID.
HEADER_KEY = "vineyard"

_registered = False
_register_lock = threading.Lock()


def id_header(value: Any, context: dict[str, Any] | None) -> dict[str, Any] | None:
    """The header that sends ``value`` by ID to the peer in ``context``, or ``None`` if it must
    travel as bytes (not stored, peer on another store, or the object is gone)."""
    backing = backing_of(value)
    if backing is None or not context:
        return None
    recipient = context.get("recipient")
    if not isinstance(recipient, dict) or recipient.get(HANDSHAKE_KEY) != backing.store.identity:
        return None
    # An object deleted since (a crashed peer's objects swept, say) must go as bytes: one
    # round trip here instead of a failed fetch on the other side.
    if not backing.store.exists(backing.object_id):
        return None
    backing.store.stats["ids_sent"] += 1
    return {HEADER_KEY: {"store": backing.store.identity, "id": repr(backing.object_id), "managed": backing.managed}}


def _adopt(ref: dict[str, Any]) -> Any:
    store = find_store(ref["store"])
    if store is None:
        raise ObjectNotExistsException(
            f"received vineyard object {ref['id']} of store {ref['store']}, which this process is not attached to"
        )
    value = store.get(ObjectID(ref["id"]), managed=bool(ref.get("managed", False)))
    store.stats["ids_received"] += 1
    return value


def _make_dumps(fallback: Callable[..., Any] | None) -> Callable[..., Any]:
    wants_context = fallback is not None and has_keyword(fallback, "context")

    def dumps(x: Any, context: dict[str, Any] | None = None) -> tuple[dict[str, Any], list[Any]]:
        header = id_header(x, context)
        if header is not None:
            return header, []
        if fallback is None:
            raise NotImplementedError(type(x).__name__)  # let the pickle family have it
        return fallback(x, context=context) if wants_context else fallback(x)  # type: ignore[no-any-return]

    return dumps


def _make_loads(fallback: Callable[..., Any] | None) -> Callable[..., Any]:
    def loads(header: dict[str, Any], frames: list[Any]) -> Any:
        ref = header.get(HEADER_KEY) if isinstance(header, dict) else None
        if ref is not None:
            return _adopt(ref)
        if fallback is None:
            raise TypeError(f"not a vineyard object reference: {header!r:.200}")
        return fallback(header, frames)

    return loads


def _override(types: list[type]) -> None:
    """Put our functions in front of whatever is registered for ``types``."""
    originals = []
    # look every type up before registering any: a subclass must wrap distributed's
    # function, not ours
    for type_ in types:
        try:
            old_dumps = dask_serialize.dispatch(type_)  # runs distributed's lazy registration
        except TypeError:
            old_dumps = None
        try:
            old_loads = dask_deserialize.dispatch(type_)
        except TypeError:
            old_loads = None
        originals.append((type_, old_dumps, old_loads))
    for type_, old_dumps, old_loads in originals:
        dask_serialize.register(type_, _make_dumps(old_dumps))
        dask_deserialize.register(type_, _make_loads(old_loads))


def register_serializers() -> None:
    """Register the ID-sending serializers in this process (idempotent)."""
    global _registered
    with _register_lock:
        if _registered:
            return
        import numpy as np

        from vineyard.data.tensor import ndarray as tensor_ndarray

        # the subclass ``get`` returns is named too: a cached dispatch for it would bypass us
        types: list[type] = [np.ndarray, tensor_ndarray]
        try:
            import pandas as pd

            types += [pd.DataFrame, pd.Series]
        except ImportError:
            pass
        try:
            import pyarrow as pa

            types.append(pa.Table)
        except ImportError:
            pass
        _override(types)
        _registered = True
