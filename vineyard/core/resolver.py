"""Resolvers: how an object in the store becomes a Python value.

A resolver is registered for a typename *prefix*; the longest registered prefix of an
object's typename wins, and an object no prefix matches comes back as the raw
:class:`~vineyard.meta.Object`. Calling conventions follow upstream, decided once at
registration: a resolver taking ``**kwargs`` is called ``resolver(obj, resolver=ctx, **kw)``
with the keywords given to ``get``; one declaring a ``resolver`` parameter gets
``resolver(obj, resolver=ctx)``; any other ``resolver(obj)``. A resolver returning ``None``
makes ``get`` return ``None`` (a blob itself for blobs).

``allow_pickle=False`` on a context makes the pickle resolvers refuse to unpickle.
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any

from vineyard.core.registry import accepts, load_entry
from vineyard.meta import Blob

__all__ = [
    "ResolverContext",
    "default_resolver_context",
    "get",
    "get_current_resolvers",
    "resolver_context",
]

log = logging.getLogger(__name__)

_lazy_lock = threading.RLock()


class ResolverContext:
    """A registry of resolvers by typename prefix, with lazy registration.

    Parameters
    ----------
    parent_context
        A context whose registrations (and pending lazy ones) are copied.
    allow_pickle
        Whether pickled objects may be unpickled; ``None`` inherits the parent's setting
        (``True`` without a parent).
    """

    def __init__(self, parent_context: ResolverContext | None = None, *, allow_pickle: bool | None = None) -> None:
        self._factory: dict[str, Callable[..., Any]] = {}
        self._keys: list[str] = []
        self._conv: dict[str, str] = {}
        self._lazy: list[tuple[str, str]] = []
        self._lazy_checked: set[str] = set()  # typenames already scanned against _lazy
        inherited = True
        if parent_context is not None:
            self._factory.update(parent_context._factory)
            self._keys = list(parent_context._keys)
            self._conv.update(parent_context._conv)
            self._lazy = list(parent_context._lazy)
            inherited = parent_context.allow_pickle
        self.allow_pickle: bool = inherited if allow_pickle is None else bool(allow_pickle)

    @property
    def factory(self) -> dict[str, Callable[..., Any]]:
        """A copy of the registered resolvers by prefix."""
        return dict(self._factory)

    def register(self, typename_prefix: str, resolver: Callable[..., Any]) -> None:
        """Use ``resolver`` for typenames starting with ``typename_prefix`` (replacing any
        resolver registered for the same prefix).

        Raises
        ------
        TypeError
            The prefix is not a str or ``resolver`` is not callable.
        """
        if not isinstance(typename_prefix, str):
            raise TypeError(f"resolvers are registered for a typename prefix (str), not {typename_prefix!r}")
        if not callable(resolver):
            raise TypeError(f"a resolver must be callable, not {type(resolver).__name__}")
        if typename_prefix not in self._factory:
            bisect.insort(self._keys, typename_prefix)
        self._factory[typename_prefix] = resolver
        var_kw, names = accepts(resolver)
        self._conv[typename_prefix] = "kwargs" if var_kw else ("resolver" if "resolver" in names else "plain")

    def unregister(self, typename_prefix: str) -> None:
        """Forget the resolver registered for exactly ``typename_prefix`` (if any)."""
        if self._factory.pop(typename_prefix, None) is not None:
            self._keys.remove(typename_prefix)
            self._conv.pop(typename_prefix, None)

    def register_lazy(self, typename_prefix: str, register: str) -> None:
        """Call ``register`` (``'pkg.mod:func'``, taking ``(builders, resolvers)``) the first
        time an object whose typename starts with ``typename_prefix`` is resolved."""
        if (typename_prefix, register) not in self._lazy:
            self._lazy.append((typename_prefix, register))
            self._lazy_checked.clear()

    def _load_lazy(self, typename: str) -> None:
        with _lazy_lock:
            due = [spec for prefix, spec in self._lazy if typename.startswith(prefix)]
            if not due:
                return
            # every prefix served by a module is done once the module registered itself
            self._lazy = [(p, s) for p, s in self._lazy if s not in due]
            for spec in dict.fromkeys(due):
                try:
                    load_entry(spec)(None, self)
                except ImportError as exc:
                    log.debug("could not load resolvers from %s: %s", spec, exc)

    def _match(self, typename: str) -> str | None:
        if self._lazy and typename not in self._lazy_checked:
            self._load_lazy(typename)
            # a typename once checked needs no second scan of the lazy list (hot path: get)
            self._lazy_checked.add(typename)
        keys = self._keys
        i = bisect.bisect_right(keys, typename)
        while i > 0:
            i -= 1
            key = keys[i]
            if typename.startswith(key):
                return key
            if not key or key[0] != typename[:1]:
                # keys are sorted: every prefix of ``typename`` shares its first character
                break
        return None

    def lookup(self, typename: str) -> Callable[..., Any] | None:
        """The resolver of the longest registered prefix of ``typename``, or None."""
        key = self._match(typename)
        return None if key is None else self._factory[key]

    def __call__(self, obj: Any, **kw: Any) -> Any:
        return self.run(obj, **kw)

    def run(self, obj: Any, **kw: Any) -> Any:
        """Resolve ``obj`` with the resolver of its typename (the raw object if none)."""
        kw.pop("__vineyard_client", None)
        key = self._match(obj.meta.typename)
        if key is None:
            return obj
        resolver = self._factory[key]
        conv = self._conv.get(key, "kwargs")
        if conv == "kwargs":
            value = resolver(obj, resolver=self, **kw)
        elif conv == "resolver":
            value = resolver(obj, resolver=self)
        else:
            value = resolver(obj)
        if value is None:
            return obj if isinstance(obj, Blob) else None
        return value

    def extend(self, resolvers: dict[str, Callable[..., Any]] | None = None, *,
               allow_pickle: bool | None = None) -> ResolverContext:
        """A child context: a copy of this one plus ``resolvers``."""
        child = ResolverContext(self, allow_pickle=allow_pickle)
        for prefix, resolver in (resolvers or {}).items():
            child.register(prefix, resolver)
        return child

    def __repr__(self) -> str:
        return f"ResolverContext({len(self._factory)} resolvers, allow_pickle={self.allow_pickle})"


default_resolver_context = ResolverContext()
_current: ContextVar[ResolverContext | None] = ContextVar("vineyard_resolvers", default=None)


def get_current_resolvers() -> ResolverContext:
    """The resolver context in effect here (per thread and per asyncio task)."""
    current = _current.get()
    return default_resolver_context if current is None else current


@contextlib.contextmanager
def resolver_context(
    resolvers: dict[str, Callable[..., Any]] | None = None,
    base: ResolverContext | None = None,
    *,
    allow_pickle: bool | None = None,
) -> Iterator[ResolverContext]:
    """Use ``(base or current).extend(resolvers)`` inside the block; yields the new context."""
    ctx = (base or get_current_resolvers()).extend(resolvers, allow_pickle=allow_pickle)
    token = _current.set(ctx)
    try:
        yield ctx
    finally:
        _current.reset(token)


def get(client: Any, object_id: Any = None, name: Any = None, resolver: Any = None, fetch: bool = False,
        **kw: Any) -> Any:
    """Module-level form of ``client.get``."""
    return client.get(object_id, name=name, resolver=resolver, fetch=fetch, **kw)
