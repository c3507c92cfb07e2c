"""Object ids and names.

An :class:`ObjectID` is a 64-bit unsigned integer; bit 63 set marks a blob. It prints as
``o%016x`` like upstream's. It subclasses ``int`` so that it costs nothing on the wire and
in dictionaries; unlike upstream, ``ObjectID(5) == 5`` is true (see ``docs/compat.md``).
"""

from __future__ import annotations

import threading
import time
from typing import Any

__all__ = [
    "BLOB_BIT",
    "EMPTY_BLOB_ID",
    "INVALID_ID",
    "IdGenerator",
    "ObjectID",
    "ObjectName",
    "is_blob",
]

BLOB_BIT = 1 << 63
EMPTY_BLOB_ID = BLOB_BIT
INVALID_ID = (1 << 64) - 1
_MASK = (1 << 64) - 1
_URI = "vineyard://"


class ObjectID(int):
    """A 64-bit object id: ``ObjectID()``, ``ObjectID(int)`` or ``ObjectID("o…")``."""

    __slots__ = ()

    def __new__(cls, value: int | str | ObjectID | None = None) -> ObjectID:
        if value is None:
            return int.__new__(cls, INVALID_ID)
        if isinstance(value, str):
            text = value[1:] if value[:1] in ("o", "s", "S") else value
            try:
                number = int(text, 16)
            except ValueError:
                raise ValueError(f"not an object id: {value!r}") from None
        else:
            number = int(value)
        if not 0 <= number <= _MASK:
            raise ValueError(f"object id out of the 64-bit range: {value!r}")
        return int.__new__(cls, number)

    def __repr__(self) -> str:
        return f"o{int(self):016x}"

    def __str__(self) -> str:
        return f'ObjectID <"o{int(self):016x}">'

    def __format__(self, spec: str) -> str:
        return format(repr(self), spec) if not spec or spec[-1] == "s" else format(int(self), spec)

    def __reduce__(self) -> tuple[Any, ...]:
        return (ObjectID, (int(self),))

    @property
    def uri(self) -> str:
        return f"{_URI}{self!r}"

    @staticmethod
    def from_uri(uri: str) -> ObjectID:
        if not uri.startswith(_URI):
            from vineyard.errors import UserInputErrorException

            raise UserInputErrorException(f"not a vineyard object uri: {uri!r}")
        return ObjectID(uri[len(_URI) :])

    @property
    def is_blob(self) -> bool:
        return bool(self & BLOB_BIT)


def is_blob(object_id: int) -> bool:
    """True if ``object_id`` names a blob (bit 63 set)."""
    return bool(object_id & BLOB_BIT)


class ObjectName(str):
    """A name for an object, accepted wherever a name string is."""

    __slots__ = ()

    def __repr__(self) -> str:
        return repr(str(self))

    @property
    def uri(self) -> str:
        return f"{_URI}{self}"

    @staticmethod
    def from_uri(uri: str) -> ObjectName:
        if not uri.startswith(_URI):
            from vineyard.errors import UserInputErrorException

            raise UserInputErrorException(f"not a vineyard name uri: {uri!r}")
        return ObjectName(uri[len(_URI) :])

    def __reduce__(self) -> tuple[Any, ...]:
        return (ObjectName, (str(self),))


class IdGenerator:
    """Upstream's id layout: 41 bits of milliseconds, 10 of instance, 12 of sequence.

    Ids stay unique and increasing within a process even when more than 4096 are made in
    one millisecond or the clock steps back: the counter then runs ahead of the clock.
    """

    def __init__(self, instance_id: int) -> None:
        self._instance = (instance_id & 0x3FF) << 12
        self._last = 0
        self._lock = threading.Lock()

    def _next(self) -> int:
        with self._lock:
            now = (int(time.time() * 1000) & 0x1FFFFFFFFFF) << 22 | self._instance
            candidate = max(now, self._last + 1)
            self._last = candidate
            return candidate

    def object_id(self) -> int:
        return self._next() & ~BLOB_BIT

    def blob_id(self) -> int:
        return self._next() | BLOB_BIT

    def signature(self) -> int:
        return self._next() & ~BLOB_BIT
