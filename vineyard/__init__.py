"""vineyard: an in-memory immutable object store with zero-copy sharing between processes.

>>> import vineyard, numpy as np
>>> client = vineyard.connect("/tmp/vineyard.sock")     # doctest: +SKIP
>>> object_id = client.put(np.arange(10))                 # doctest: +SKIP
>>> client.get(object_id)                                 # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

from vineyard._version import __version__
from vineyard.client import Client, InstanceStatus, IPCClient, RPCClient, connect
from vineyard.core import (
    BuilderContext,
    ResolverContext,
    builder_context,
    context,
    default_builder_context,
    default_resolver_context,
    resolver_context,
)
from vineyard.data import register_builtin_types
from vineyard.deploy.local import get_current_socket, shutdown, try_init
from vineyard.errors import *  # noqa: F403 - the exception classes are public API
from vineyard.errors import __all__ as _errors_all
from vineyard.ids import ObjectID, ObjectName
from vineyard.meta import (
    Blob,
    BlobBuilder,
    Object,
    ObjectBuilder,
    ObjectMeta,
    RemoteBlob,
    RemoteBlobBuilder,
)

register_builtin_types(default_builder_context, default_resolver_context)


def put(value: Any, builder: Any = None, persist: bool = False, name: str | None = None, **kw: Any) -> ObjectID:
    """``connect().put(...)`` with the default connection."""
    return connect().put(value, builder=builder, persist=persist, name=name, **kw)


def get(object_id: Any = None, name: Any = None, resolver: Any = None, fetch: bool = False, **kw: Any) -> Any:
    """``connect().get(...)`` with the default connection."""
    return connect().get(object_id, name=name, resolver=resolver, fetch=fetch, **kw)


__all__ = sorted(
    [
        "Blob",
        "BlobBuilder",
        "BuilderContext",
        "Client",
        "IPCClient",
        "InstanceStatus",
        "Object",
        "ObjectBuilder",
        "ObjectID",
        "ObjectMeta",
        "ObjectName",
        "RPCClient",
        "RemoteBlob",
        "RemoteBlobBuilder",
        "ResolverContext",
        "__version__",
        "builder_context",
        "connect",
        "context",
        "default_builder_context",
        "default_resolver_context",
        "get",
        "get_current_socket",
        "put",
        "register_builtin_types",
        "resolver_context",
        "shutdown",
        "try_init",
        *_errors_all,
    ]
)
