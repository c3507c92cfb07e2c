"""Errors the XCom backend raises: each names the socket or object and the dag/task/key.

They subclass the core's errors, so ``except vineyard.StoreUnavailable`` and
``except vineyard.ObjectNotExistsException`` (or ``ConnectionError``/``KeyError``) catch them.
"""

from __future__ import annotations

from vineyard.errors import ObjectNotExistsException, StoreUnavailable

__all__ = ["XComObjectMissing", "XComStoreUnavailable"]


class XComStoreUnavailable(StoreUnavailable):
    """The store cannot be reached (or holds no room) for an XCom push or pull."""


class XComObjectMissing(ObjectNotExistsException):
    """An XCom row points at an object the store no longer holds, or holds on another host."""
