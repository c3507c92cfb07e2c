"""Resolvers: how an object in the store becomes a Python value.

A resolver is registered for a typename *prefix*; the longest registered prefix of an
object's typename wins. Calling conventions follow upstream: a resolver taking ``**kwargs``
gets ``resolver=<context>`` and the keywords given to ``get``; one declaring ``resolver``
gets the context; otherwise it is called with the object alone.
"""

from __future__ import annotations

import bisect
import contextlib
import logging
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


class ResolverContext:
    """A registry of resolvers by typename prefix, with lazy registration."""

    def __init__(self, parent_context: ResolverContext | None = None) -> None:
        self._factory: dict[str, Callable[..., Any]] = {}
        self._keys: list[str] = []
        self._conv: dict[Callable[..., Any], str] = {}
        self._lazy: list[tuple[str, str]] = []
        if parent_context is not None:
            self._factory.update(parent_context._factory)
            self._keys = list(parent_context._keys)
            self._conv.update(parent_context._conv)
            self._lazy = list(parent_context._lazy)

    @property
    def factory(self) -> dict[str, Callable[..., Any]]:
        return dict(self._factory)

    def register(self, typename_prefix: str, resolver: Callable[..., Any]) -> None:
        if not callable(resolver):
            raise TypeError(f"a resolver must be callable, not {type(resolver).__name__}")
        if typename_prefix not in self._factory:
            bisect.insort(self._keys, typename_prefix)
        self._factory[typename_prefix] = resolver
        var_kw, names = accepts(resolver)
        self._conv[resolver] = "kwargs" if var_kw else ("resolver" if "resolver" in names else "plain")

    def register_lazy(self, typename_prefix: str, register: str) -> None:
        """Call ``register`` (``'pkg.mod:func'``, taking ``(builders, resolvers)``) the first
        time an object whose typename starts with ``typename_prefix`` is resolved."""
        self._lazy.append((typename_prefix, register))

    def _load_lazy(self, typename: str) -> None:
        keep = []
        for prefix, spec in self._lazy:
            if typename.startswith(prefix):
                try:
                    load_entry(spec)(None, self)
                except ImportError as exc:
                    log.debug("could not load resolvers from %s: %s", spec, exc)
            else:
                keep.append((prefix, spec))
        self._lazy = keep

    def lookup(self, typename: str) -> Callable[..., Any] | None:
        if self._lazy:
            self._load_lazy(typename)
        keys = self._keys
        i = bisect.bisect_right(keys, typename)
        while i > 0:
            i -= 1
            key = keys[i]
            if typename.startswith(key):
                return self._factory[key]
            if not key or key[0] != typename[:1]:
                break
        return None

    def __call__(self, obj: Any, **kw: Any) -> Any:
        return self.run(obj, **kw)

    def run(self, obj: Any, **kw: Any) -> Any:
        kw.pop("__vineyard_client", None)
        resolver = self.lookup(obj.meta.typename)
        if resolver is None:
            return obj
        conv = self._conv.get(resolver, "kwargs")
        if conv == "kwargs":
            value = resolver(obj, resolver=self, **kw)
        elif conv == "resolver":
            value = resolver(obj, resolver=self)
        else:
            value = resolver(obj)
        if value is None:
            return obj if isinstance(obj, Blob) else None
        return value

    def extend(self, resolvers: dict[str, Callable[..., Any]] | None = None) -> ResolverContext:
        child = ResolverContext(self)
        for prefix, resolver in (resolvers or {}).items():
            child.register(prefix, resolver)
        return child


default_resolver_context = ResolverContext()
_current: ContextVar[ResolverContext | None] = ContextVar("vineyard_resolvers", default=None)


def get_current_resolvers() -> ResolverContext:
    current = _current.get()
    return default_resolver_context if current is None else current


@contextlib.contextmanager
def resolver_context(
    resolvers: dict[str, Callable[..., Any]] | None = None, base: ResolverContext | None = None
) -> Iterator[ResolverContext]:
    """Use ``(base or current).extend(resolvers)`` inside the block."""
    ctx = (base or get_current_resolvers()).extend(resolvers)
    token = _current.set(ctx)
    try:
        yield ctx
    finally:
        _current.reset(token)


def get(client: Any, object_id: Any = None, name: Any = None, resolver: Any = None, fetch: bool = False, **kw: Any) -> Any:
    """Module-level form of ``client.get``."""
    return client.get(object_id, name=name, resolver=resolver, fetch=fetch, **kw)
