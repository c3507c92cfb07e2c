"""vineyard: an in-memory immutable object store with zero-copy sharing between processes.

>>> import vineyard, numpy as np
>>> client = vineyard.connect("/tmp/vineyard.sock")     # doctest: +SKIP
>>> object_id = client.put(np.arange(10))                 # doctest: +SKIP
>>> client.get(object_id)                                 # doctest: +SKIP
"""

from __future__ import annotations

import os
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
from vineyard.errors import (
    AlreadyStoppedException,
    ArrowErrorException,
    AssertionFailedException,
    ConnectionErrorException,
    ConnectionFailedException,
    EndOfFileException,
    EtcdErrorException,
    GlobalObjectInvalidException,
    InvalidException,
    InvalidStreamStateException,
    IOErrorException,
    KeyErrorException,
    LocalProtocolError,
    MetaTreeError,
    MetaTreeInvalidException,
    MetaTreeLinkInvalidException,
    MetaTreeNameInvalidException,
    MetaTreeNameNotExistsException,
    MetaTreeSubtreeNotExistsException,
    MetaTreeTypeInvalidException,
    MetaTreeTypeNotExistsException,
    NotEnoughMemoryException,
    NotImplementedException,
    ObjectError,
    ObjectExistsException,
    ObjectIsBlobException,
    ObjectNotExistsException,
    ObjectNotSealedException,
    ObjectNotSpilledException,
    ObjectSealedException,
    ObjectSpilledException,
    ObjectTypeErrorException,
    ProtocolError,
    RedisErrorException,
    RemoteProtocolError,
    StatusCode,
    StoreError,
    StoreUnavailable,
    StreamDrainedException,
    StreamError,
    StreamFailedException,
    StreamOpenedException,
    TypeErrorException,
    UnknownErrorException,
    UnknownTypeError,
    UserInputErrorException,
    VineyardError,
    VineyardException,
    VineyardServerNotReadyException,
    error_from_status,
)
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


_default: tuple[int, Client] | None = None


def _default_client() -> Client:
    """One connection per process for the module-level ``put``/``get`` (upstream opened a
    new one on every call and never closed it)."""
    global _default
    if _default is None or _default[0] != os.getpid() or not _default[1].connected:
        _default = (os.getpid(), connect())
    return _default[1]


def put(value: Any, builder: Any = None, persist: bool = False, name: str | None = None, **kw: Any) -> ObjectID:
    """``client.put(...)`` on this process's default connection (see :func:`connect`)."""
    return _default_client().put(value, builder=builder, persist=persist, name=name, **kw)


def get(object_id: Any = None, name: Any = None, resolver: Any = None, fetch: bool = False, **kw: Any) -> Any:
    """``client.get(...)`` on this process's default connection (see :func:`connect`)."""
    return _default_client().get(object_id, name=name, resolver=resolver, fetch=fetch, **kw)


__all__ = [
    "AlreadyStoppedException",
    "ArrowErrorException",
    "AssertionFailedException",
    "Blob",
    "BlobBuilder",
    "BuilderContext",
    "Client",
    "ConnectionErrorException",
    "ConnectionFailedException",
    "EndOfFileException",
    "EtcdErrorException",
    "GlobalObjectInvalidException",
    "IOErrorException",
    "IPCClient",
    "InstanceStatus",
    "InvalidException",
    "InvalidStreamStateException",
    "KeyErrorException",
    "LocalProtocolError",
    "MetaTreeError",
    "MetaTreeInvalidException",
    "MetaTreeLinkInvalidException",
    "MetaTreeNameInvalidException",
    "MetaTreeNameNotExistsException",
    "MetaTreeSubtreeNotExistsException",
    "MetaTreeTypeInvalidException",
    "MetaTreeTypeNotExistsException",
    "NotEnoughMemoryException",
    "NotImplementedException",
    "Object",
    "ObjectBuilder",
    "ObjectError",
    "ObjectExistsException",
    "ObjectID",
    "ObjectIsBlobException",
    "ObjectMeta",
    "ObjectName",
    "ObjectNotExistsException",
    "ObjectNotSealedException",
    "ObjectNotSpilledException",
    "ObjectSealedException",
    "ObjectSpilledException",
    "ObjectTypeErrorException",
    "ProtocolError",
    "RPCClient",
    "RedisErrorException",
    "RemoteBlob",
    "RemoteBlobBuilder",
    "RemoteProtocolError",
    "ResolverContext",
    "StatusCode",
    "StoreError",
    "StoreUnavailable",
    "StreamDrainedException",
    "StreamError",
    "StreamFailedException",
    "StreamOpenedException",
    "TypeErrorException",
    "UnknownErrorException",
    "UnknownTypeError",
    "UserInputErrorException",
    "VineyardError",
    "VineyardException",
    "VineyardServerNotReadyException",
    "__version__",
    "builder_context",
    "connect",
    "context",
    "default_builder_context",
    "default_resolver_context",
    "error_from_status",
    "get",
    "get_current_socket",
    "put",
    "register_builtin_types",
    "resolver_context",
    "shutdown",
    "try_init",
]
