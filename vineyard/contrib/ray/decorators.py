"""Decorators for Ray task functions: resolve reference arguments, store large results.

Put them under ``@ray.remote``::

    @ray.remote
    @vineyard.contrib.ray.resolve_args
    @vineyard.contrib.ray.store_returns(threshold=1 << 20)
    def clean(df):             # df arrives as a DataFrame even when a VineyardRef was passed
        return df.dropna()     # returned as a VineyardRef when it is 1 MiB or more

Both keep the function's name, docstring and signature (``functools.wraps``), so Ray's
argument checks and task names are unchanged.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar, overload

from vineyard.contrib.ray import lifetime
from vineyard.contrib.ray.ref import VineyardRef, put
from vineyard.contrib.ray.stores import default_socket
from vineyard.errors import StoreUnavailable

__all__ = ["DEFAULT_THRESHOLD", "resolve_args", "store_returns"]

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_THRESHOLD = 1 << 20
"""Results smaller than this (1 MiB) travel through Ray as usual: a reference is not worth a
round trip to the store for them."""

_warned_fallback = False


class _DriverHook:
    """Carried in a decorated function's ``__dict__``. Ray pickles remote functions in the process
    that first calls ``.remote()``, usually the driver, so pickling is the moment a driver
    learns that tasks will store objects of its job in ``socket``."""

    __slots__ = ("socket",)

    def __init__(self, socket: str | None) -> None:
        self.socket = socket

    def __reduce__(self) -> tuple[Any, ...]:
        try:
            lifetime.note_store(default_socket(self.socket))
        except StoreUnavailable:  # no socket configured here: the workers may still have one
            pass
        return (_DriverHook, (self.socket,))


def _resolve(value: Any) -> Any:
    if isinstance(value, VineyardRef):
        return value.get()
    if type(value) in (list, tuple):
        return type(value)(_resolve(v) for v in value)
    if type(value) is dict:
        return {k: _resolve(v) for k, v in value.items()}
    return value


def resolve_args(func: F) -> F:
    """Replace every :class:`VineyardRef` argument by its value before calling ``func``.

    References are looked for in positional and keyword arguments and inside plain lists,
    tuples and dicts among them. Values are zero-copy, read-only views of the store.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return func(*_resolve(args), **_resolve(kwargs))

    # An inner store_returns may have brought its own hook (with its socket) along.
    wrapper.__dict__.setdefault("__vineyard_hook__", _DriverHook(None))
    return wrapper  # type: ignore[return-value]


def _nbytes(value: Any) -> int | None:
    """Size of a columnar value worth storing, or None for anything else."""
    root = type(value).__module__.partition(".")[0]
    if root == "numpy" and hasattr(value, "nbytes") and getattr(value, "ndim", 0) > 0:
        return int(value.nbytes)
    if root == "pandas" and hasattr(value, "memory_usage"):
        usage = value.memory_usage(index=True, deep=False)
        return int(usage.sum() if hasattr(usage, "sum") else usage)
    if root == "pyarrow" and hasattr(value, "nbytes") and hasattr(value, "schema"):
        return int(value.nbytes)
    return None


@overload
def store_returns(func: F) -> F: ...


@overload
def store_returns(
    func: None = None, *, threshold: int = ..., socket: str | None = ..., persist: bool = ...,
    fallback: str | None = ...,
) -> Callable[[F], F]: ...


def store_returns(
    func: Any = None,
    *,
    threshold: int = DEFAULT_THRESHOLD,
    socket: str | None = None,
    persist: bool = False,
    fallback: str | None = None,
) -> Any:
    """Store large DataFrames, Series, arrays and Arrow tables a function returns; return
    a :class:`VineyardRef` instead.

    A tuple result (``num_returns > 1``) is handled item by item. Other values, and values
    under ``threshold`` bytes, are returned unchanged.

    Parameters
    ----------
    threshold
        Smallest size in bytes to store.
    socket
        The store's socket; default ``$VINEYARD_IPC_SOCKET`` of the worker.
    persist
        Keep the objects after the Ray job ends.
    fallback
        ``"ray"``: if the store is unreachable, return the value itself (Ray's object store
        carries it) and log a warning once. Default: raise, so the task fails with an error
        naming the socket.
    """
    if fallback not in (None, "ray"):
        raise ValueError(f"fallback must be None or 'ray', not {fallback!r}")

    def decorate(function: F) -> F:
        hook = _DriverHook(socket)

        def store(value: Any) -> Any:
            size = _nbytes(value)
            if size is None or size < threshold:
                return value
            try:
                return put(value, socket=hook.socket, persist=persist)
            except StoreUnavailable as exc:
                if fallback != "ray":
                    raise
                global _warned_fallback
                if not _warned_fallback:
                    _warned_fallback = True
                    log.warning("vineyard store unavailable, returning values through Ray instead: %s", exc)
                return value

        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            result = function(*args, **kwargs)
            if type(result) is tuple:
                return tuple(store(item) for item in result)
            return store(result)

        wrapper.__vineyard_hook__ = hook  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorate(func) if func is not None else decorate
