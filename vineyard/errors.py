"""Status codes and the exception tree.

Every error the daemon reports travels as ``{"code": int, "message": str}`` and becomes an
exception in exactly one place, :func:`error_from_status`. Class names follow upstream
Vineyard (``ObjectNotExistsException`` ...), so code written against it catches the same
names; where a builtin exception means the same thing it is a co-parent, so
``except KeyError`` also catches a missing object::

    RuntimeError
    └── VineyardException (alias VineyardError)
        ├── InvalidException, KeyErrorException(KeyError), TypeErrorException(TypeError),
        │   IOErrorException, EndOfFileException, NotImplementedException,
        │   AssertionFailedException, UserInputErrorException(ValueError), UnknownErrorException
        ├── ObjectError
        │   ├── ObjectExistsException, ObjectNotExistsException(KeyError),
        │   ├── ObjectSealedException, ObjectNotSealedException, ObjectIsBlobException,
        │   └── ObjectTypeErrorException, ObjectSpilledException, ObjectNotSpilledException
        ├── MetaTreeError
        │   └── MetaTreeInvalidException, MetaTreeTypeInvalidException, ... (codes 21-27)
        ├── StoreError
        │   ├── VineyardServerNotReadyException, ArrowErrorException, EtcdErrorException,
        │   ├── AlreadyStoppedException, RedisErrorException, NotEnoughMemoryException(MemoryError)
        │   └── GlobalObjectInvalidException
        ├── StoreUnavailable(ConnectionError)
        │   └── ConnectionFailedException, ConnectionErrorException
        ├── StreamError
        │   └── StreamDrainedException, StreamFailedException, InvalidStreamStateException,
        │       StreamOpenedException
        ├── ProtocolError
        │   └── LocalProtocolError, RemoteProtocolError
        └── UnknownTypeError(TypeError)

Codes are grouped by area as upstream's: 0x generic, 1x object, 2x meta tree, 3x server,
4x memory and streams, 5x global objects.
"""

from __future__ import annotations

import enum
from typing import Any, ClassVar

__all__ = [
    "AlreadyStoppedException",
    "ArrowErrorException",
    "AssertionFailedException",
    "ConnectionErrorException",
    "ConnectionFailedException",
    "EndOfFileException",
    "EtcdErrorException",
    "GlobalObjectInvalidException",
    "IOErrorException",
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
    "ObjectError",
    "ObjectExistsException",
    "ObjectIsBlobException",
    "ObjectNotExistsException",
    "ObjectNotSealedException",
    "ObjectNotSpilledException",
    "ObjectSealedException",
    "ObjectSpilledException",
    "ObjectTypeErrorException",
    "ProtocolError",
    "RedisErrorException",
    "RemoteProtocolError",
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
    "error_from_status",
]


class StatusCode(enum.IntEnum):
    """Upstream Vineyard's status codes (``src/common/util/status.h``)."""

    OK = 0
    INVALID = 1
    KEY_ERROR = 2
    TYPE_ERROR = 3
    IO_ERROR = 4
    END_OF_FILE = 5
    NOT_IMPLEMENTED = 6
    ASSERTION_FAILED = 7
    USER_INPUT_ERROR = 8
    OBJECT_EXISTS = 11
    OBJECT_NOT_EXISTS = 12
    OBJECT_SEALED = 13
    OBJECT_NOT_SEALED = 14
    OBJECT_IS_BLOB = 15
    OBJECT_TYPE_ERROR = 16
    OBJECT_SPILLED = 17
    OBJECT_NOT_SPILLED = 18
    META_TREE_INVALID = 21
    META_TREE_TYPE_INVALID = 22
    META_TREE_TYPE_NOT_EXISTS = 23
    META_TREE_NAME_INVALID = 24
    META_TREE_NAME_NOT_EXISTS = 25
    META_TREE_LINK_INVALID = 26
    META_TREE_SUBTREE_NOT_EXISTS = 27
    VINEYARD_SERVER_NOT_READY = 31
    ARROW_ERROR = 32
    CONNECTION_FAILED = 33
    CONNECTION_ERROR = 34
    ETCD_ERROR = 35
    ALREADY_STOPPED = 36
    REDIS_ERROR = 37
    NOT_ENOUGH_MEMORY = 41
    STREAM_DRAINED = 42
    STREAM_FAILED = 43
    INVALID_STREAM_STATE = 44
    STREAM_OPENED = 45
    GLOBAL_OBJECT_INVALID = 51
    PROTOCOL_ERROR = 60
    UNKNOWN_ERROR = 255


class VineyardException(RuntimeError):
    """Root of every error this package raises on purpose.

    ``str(exc)`` is ``"<code text>: <message>"`` as upstream prints it.
    """

    code: ClassVar[StatusCode] = StatusCode.UNKNOWN_ERROR
    text: ClassVar[str] = "Unknown error"

    def __init__(self, message: str = "", **context: Any) -> None:
        super().__init__(message)
        self.message = message
        self.context = context
        for key, value in context.items():
            setattr(self, key, value)

    def __str__(self) -> str:
        if self.message:
            return f"{self.text}: {self.message}"
        return self.text

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.message, self.context))


def _rebuild(cls: type[VineyardException], message: str, context: dict[str, Any]) -> Any:
    return cls(message, **context)


VineyardError = VineyardException


class ObjectError(VineyardException):
    """An error about one object or blob."""


class MetaTreeError(VineyardException):
    """A metadata tree is malformed or refers to something that does not exist."""


class StoreError(VineyardException):
    """The daemon could not do what was asked (memory, backend, state)."""


class StoreUnavailable(VineyardException, ConnectionError):
    """The daemon cannot be reached, or the connection to it broke."""

    code = StatusCode.CONNECTION_ERROR
    text = "Connection error"


class StreamError(VineyardException):
    """A stream operation failed."""


class ProtocolError(VineyardException):
    """A frame or message did not follow the wire protocol."""

    code = StatusCode.PROTOCOL_ERROR
    text = "Protocol error"


class LocalProtocolError(ProtocolError):
    """We were asked to send something the protocol cannot carry."""


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes that do not decode to a valid message."""


class UnknownTypeError(VineyardException, TypeError):
    """No builder or resolver is registered for a type, or its optional dependency is missing."""

    code = StatusCode.TYPE_ERROR
    text = "Type error"


class InvalidException(VineyardException):
    code = StatusCode.INVALID
    text = "Invalid"


class KeyErrorException(VineyardException, KeyError):
    code = StatusCode.KEY_ERROR
    text = "Key error"


class TypeErrorException(VineyardException, TypeError):
    code = StatusCode.TYPE_ERROR
    text = "Type error"


class IOErrorException(VineyardException):
    code = StatusCode.IO_ERROR
    text = "IOError"


class EndOfFileException(VineyardException):
    code = StatusCode.END_OF_FILE
    text = "End Of File"


class NotImplementedException(VineyardException):
    code = StatusCode.NOT_IMPLEMENTED
    text = "Not implemented"


class AssertionFailedException(VineyardException):
    code = StatusCode.ASSERTION_FAILED
    text = "Assertion failed"


class UserInputErrorException(VineyardException, ValueError):
    code = StatusCode.USER_INPUT_ERROR
    text = "User input error"


class UnknownErrorException(VineyardException):
    code = StatusCode.UNKNOWN_ERROR
    text = "Unknown error"


class ObjectExistsException(ObjectError):
    code = StatusCode.OBJECT_EXISTS
    text = "Object exists"


class ObjectNotExistsException(ObjectError, KeyError):
    code = StatusCode.OBJECT_NOT_EXISTS
    text = "Object not exists"


class ObjectSealedException(ObjectError):
    code = StatusCode.OBJECT_SEALED
    text = "Object sealed"


class ObjectNotSealedException(ObjectError):
    code = StatusCode.OBJECT_NOT_SEALED
    text = "Object not sealed"


class ObjectIsBlobException(ObjectError):
    code = StatusCode.OBJECT_IS_BLOB
    text = "Object not blob"


class ObjectTypeErrorException(ObjectError):
    code = StatusCode.OBJECT_TYPE_ERROR
    text = "Object type mismatch"


class ObjectSpilledException(ObjectError):
    code = StatusCode.OBJECT_SPILLED
    text = "Object spilled"


class ObjectNotSpilledException(ObjectError):
    code = StatusCode.OBJECT_NOT_SPILLED
    text = "Object not spilled"


class MetaTreeInvalidException(MetaTreeError):
    code = StatusCode.META_TREE_INVALID
    text = "Metatree invalid"


class MetaTreeTypeInvalidException(MetaTreeError):
    code = StatusCode.META_TREE_TYPE_INVALID
    text = "Metatree type invalid"


class MetaTreeTypeNotExistsException(MetaTreeError):
    code = StatusCode.META_TREE_TYPE_NOT_EXISTS
    text = "Metatree type not exists"


class MetaTreeNameInvalidException(MetaTreeError):
    code = StatusCode.META_TREE_NAME_INVALID
    text = "Metatree name invalid"


class MetaTreeNameNotExistsException(MetaTreeError):
    code = StatusCode.META_TREE_NAME_NOT_EXISTS
    text = "Metatree name not exists"


class MetaTreeLinkInvalidException(MetaTreeError):
    code = StatusCode.META_TREE_LINK_INVALID
    text = "Metatree link invalid"


class MetaTreeSubtreeNotExistsException(MetaTreeError):
    code = StatusCode.META_TREE_SUBTREE_NOT_EXISTS
    text = "Metatree subtree not exists"


class VineyardServerNotReadyException(StoreError):
    code = StatusCode.VINEYARD_SERVER_NOT_READY
    text = "Vineyard server not ready"


class ArrowErrorException(StoreError):
    code = StatusCode.ARROW_ERROR
    text = "Arrow error"


class ConnectionFailedException(StoreUnavailable):
    code = StatusCode.CONNECTION_FAILED
    text = "Connection failed"


class ConnectionErrorException(StoreUnavailable):
    code = StatusCode.CONNECTION_ERROR
    text = "Connection error"


class EtcdErrorException(StoreError):
    code = StatusCode.ETCD_ERROR
    text = "Etcd error"


class AlreadyStoppedException(StoreError):
    code = StatusCode.ALREADY_STOPPED
    text = "Already stopped"


class RedisErrorException(StoreError):
    code = StatusCode.REDIS_ERROR
    text = "Redis error"


class NotEnoughMemoryException(StoreError, MemoryError):
    code = StatusCode.NOT_ENOUGH_MEMORY
    text = "Not enough memory"


class StreamDrainedException(StreamError):
    code = StatusCode.STREAM_DRAINED
    text = "Stream drain"


class StreamFailedException(StreamError):
    code = StatusCode.STREAM_FAILED
    text = "Stream failed"


class InvalidStreamStateException(StreamError):
    code = StatusCode.INVALID_STREAM_STATE
    text = "Invalid stream state"


class StreamOpenedException(StreamError):
    code = StatusCode.STREAM_OPENED
    text = "Stream opened"


class GlobalObjectInvalidException(StoreError):
    code = StatusCode.GLOBAL_OBJECT_INVALID
    text = "Global object invalid"


_BY_CODE: dict[int, type[VineyardException]] = {
    cls.code: cls
    for cls in (
        InvalidException,
        KeyErrorException,
        TypeErrorException,
        IOErrorException,
        EndOfFileException,
        NotImplementedException,
        AssertionFailedException,
        UserInputErrorException,
        ObjectExistsException,
        ObjectNotExistsException,
        ObjectSealedException,
        ObjectNotSealedException,
        ObjectIsBlobException,
        ObjectTypeErrorException,
        ObjectSpilledException,
        ObjectNotSpilledException,
        MetaTreeInvalidException,
        MetaTreeTypeInvalidException,
        MetaTreeTypeNotExistsException,
        MetaTreeNameInvalidException,
        MetaTreeNameNotExistsException,
        MetaTreeLinkInvalidException,
        MetaTreeSubtreeNotExistsException,
        VineyardServerNotReadyException,
        ArrowErrorException,
        ConnectionFailedException,
        ConnectionErrorException,
        EtcdErrorException,
        AlreadyStoppedException,
        RedisErrorException,
        NotEnoughMemoryException,
        StreamDrainedException,
        StreamFailedException,
        InvalidStreamStateException,
        StreamOpenedException,
        GlobalObjectInvalidException,
        RemoteProtocolError,
        UnknownErrorException,
    )
}


def error_from_status(code: int, message: str) -> VineyardException:
    """Turn an error reply into the exception it stands for.

    This is the only place a ``{"code", "message"}`` reply becomes an exception; an unknown
    code becomes :class:`UnknownErrorException` with the code in its message.
    """
    cls = _BY_CODE.get(code)
    if cls is None:
        return UnknownErrorException(f"status code {code}: {message}")
    return cls(message)


def class_for_code(code: StatusCode) -> type[VineyardException]:
    """The exception class raised for ``code`` (used by the daemon to check coverage)."""
    return _BY_CODE[code]
