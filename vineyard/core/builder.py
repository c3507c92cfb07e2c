"""Builders: how a Python value becomes an object in the store.

``builder(client, value, **kw) -> ObjectMeta | Object | ObjectID`` is looked up along
``type(value).__mro__``. As upstream, a builder that declares a ``builder`` parameter (or
``**kwargs``) also receives ``builder=<the context>`` so it can build members.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from types import MappingProxyType
from typing import Any

from vineyard.core.registry import accepts, load_entry
from vineyard.errors import UnknownTypeError

__all__ = [
    "BuilderContext",
    "builder_context",
    "default_builder_context",
    "get_current_builders",
    "put",
]

log = logging.getLogger(__name__)


class BuilderContext:
    """A registry of builders by Python type, with lazy registration by module."""

    def __init__(self, parent_context: BuilderContext | None = None) -> None:
        self._factory: dict[type, Callable[..., Any]] = {}
        self._wants_builder: dict[Callable[..., Any], bool] = {}
        self._lazy: dict[str, list[str]] = {}
        if parent_context is not None:
            self._factory.update(parent_context._factory)
            self._wants_builder.update(parent_context._wants_builder)
            self._lazy = {k: list(v) for k, v in parent_context._lazy.items()}

    @property
    def factory(self) -> MappingProxyType[type, Callable[..., Any]]:
        return MappingProxyType(self._factory)

    def register(self, type_: type, builder: Callable[..., Any]) -> None:
        """Use ``builder`` for values of ``type_`` (and its subclasses)."""
        if not callable(builder):
            raise TypeError(f"a builder must be callable, not {type(builder).__name__}")
        var_kw, names = accepts(builder)
        self._factory[type_] = builder
        self._wants_builder[builder] = var_kw or "builder" in names

    def register_lazy(self, module_root: str, register: str) -> None:
        """Call ``register`` (``'pkg.mod:func'``, taking ``(builders, resolvers)``) the first
        time a value whose type comes from ``module_root`` is built."""
        self._lazy.setdefault(module_root, []).append(register)

    def _load_lazy(self, type_: type) -> bool:
        loaded = False
        for klass in type_.__mro__:
            root = (klass.__module__ or "").split(".")[0]
            for spec in self._lazy.pop(root, []):
                try:
                    load_entry(spec)(self, None)
                    loaded = True
                except ImportError as exc:
                    log.debug("could not load builders from %s: %s", spec, exc)
        return loaded

    def __contains__(self, type_: type) -> bool:
        return type_ in self._factory

    def lookup(self, type_: type) -> Callable[..., Any] | None:
        for _ in range(2):
            for klass in type_.__mro__:
                builder = self._factory.get(klass)
                if builder is not None and (klass is not object or not self._has_lazy(type_)):
                    return builder
            if not self._load_lazy(type_):
                break
        return self._factory.get(object)

    def _has_lazy(self, type_: type) -> bool:
        return any((k.__module__ or "").split(".")[0] in self._lazy for k in type_.__mro__)

    def run(self, client: Any, value: Any, **kw: Any) -> Any:
        builder = self.lookup(type(value))
        if builder is None:
            raise UnknownTypeError(
                f"no builder for {type(value).__module__}.{type(value).__qualname__}, and the "
                "pickle fallback is not registered"
            )
        if self._wants_builder.get(builder, True):
            kw.setdefault("builder", self)
        return builder(client, value, **kw)

    __call__ = run

    def extend(self, builders: dict[type, Callable[..., Any]] | None = None) -> BuilderContext:
        child = BuilderContext(self)
        for type_, builder in (builders or {}).items():
            child.register(type_, builder)
        return child


default_builder_context = BuilderContext()
_current: ContextVar[BuilderContext | None] = ContextVar("vineyard_builders", default=None)


def get_current_builders() -> BuilderContext:
    current = _current.get()
    return default_builder_context if current is None else current


@contextlib.contextmanager
def builder_context(
    builders: dict[type, Callable[..., Any]] | None = None, base: BuilderContext | None = None
) -> Iterator[BuilderContext]:
    """Use ``(base or current).extend(builders)`` inside the block."""
    ctx = (base or get_current_builders()).extend(builders)
    token = _current.set(ctx)
    try:
        yield ctx
    finally:
        _current.reset(token)


def put(client: Any, value: Any, builder: Any = None, persist: bool = False, name: str | None = None, **kw: Any) -> Any:
    """Module-level form of ``client.put``."""
    return client.put(value, builder=builder, persist=persist, name=name, **kw)
