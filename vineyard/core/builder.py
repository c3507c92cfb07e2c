"""Builders: how a Python value becomes an object in the store.

``builder(client, value, **kw) -> ObjectMeta | Object | ObjectID`` is looked up along
``type(value).__mro__``, so a subclass uses its nearest registered ancestor's builder and a
registration for the subclass itself wins. As upstream, a builder that declares a
``builder`` parameter (or ``**kwargs``) also receives ``builder=<the context>`` so it can
build its members with the same registry.

The ``object`` entry is the pickle fallback. ``BuilderContext(allow_pickle=False)`` (or
``builder_context(allow_pickle=False)``) keeps the entry but refuses to use it, and a
context without an ``object`` entry (``ctx.unregister(object)``) has no fallback at all;
either way an unknown type raises :class:`~vineyard.errors.UnknownTypeError`.
"""

from __future__ import annotations

import contextlib
import logging
import threading
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

# Lazy registration mutates a context; two threads building their first DataFrame at once
# must not both see "nothing registered yet" and fall through to pickle.
_lazy_lock = threading.RLock()


def _root(klass: type) -> str:
    return (getattr(klass, "__module__", None) or "").split(".")[0]


class BuilderContext:
    """A registry of builders by Python type, with lazy registration by module.

    Parameters
    ----------
    parent_context
        A context whose registrations (and pending lazy ones) are copied.
    allow_pickle
        Whether the pickle fallback may be used; ``None`` inherits the parent's setting
        (``True`` without a parent).
    """

    def __init__(self, parent_context: BuilderContext | None = None, *, allow_pickle: bool | None = None) -> None:
        self._factory: dict[type, Callable[..., Any]] = {}
        self._wants_builder: dict[type, bool] = {}
        self._lazy: dict[str, list[str]] = {}
        inherited = True
        if parent_context is not None:
            self._factory.update(parent_context._factory)
            self._wants_builder.update(parent_context._wants_builder)
            self._lazy = {k: list(v) for k, v in parent_context._lazy.items()}
            inherited = parent_context.allow_pickle
        self.allow_pickle: bool = inherited if allow_pickle is None else bool(allow_pickle)

    @property
    def factory(self) -> MappingProxyType[type, Callable[..., Any]]:
        """A read-only view of the registered builders."""
        return MappingProxyType(self._factory)

    def register(self, type_: type, builder: Callable[..., Any]) -> None:
        """Use ``builder`` for values of ``type_`` (and its subclasses); replaces any
        builder registered for exactly ``type_``.

        Raises
        ------
        TypeError
            ``type_`` is not a class or ``builder`` is not callable.
        """
        if not isinstance(type_, type):
            raise TypeError(f"builders are registered for a type, not {type(type_).__name__} {type_!r}")
        if not callable(builder):
            raise TypeError(f"a builder must be callable, not {type(builder).__name__}")
        var_kw, names = accepts(builder)
        self._factory[type_] = builder
        self._wants_builder[type_] = var_kw or "builder" in names

    def unregister(self, type_: type) -> None:
        """Forget the builder registered for exactly ``type_`` (no error if there is none)."""
        self._factory.pop(type_, None)
        self._wants_builder.pop(type_, None)

    def register_lazy(self, module_root: str, register: str) -> None:
        """Call ``register`` (``'pkg.mod:func'``, taking ``(builders, resolvers)``) the first
        time a value whose type comes from the top-level package ``module_root`` is built."""
        specs = self._lazy.setdefault(module_root, [])
        if register not in specs:
            specs.append(register)

    def _load_lazy(self, type_: type) -> bool:
        loaded = False
        with _lazy_lock:
            for klass in type_.__mro__:
                for spec in self._lazy.pop(_root(klass), []):
                    try:
                        load_entry(spec)(self, None)
                        loaded = True
                    except ImportError as exc:
                        log.debug("could not load builders from %s: %s", spec, exc)
        return loaded

    def _has_lazy(self, type_: type) -> bool:
        return bool(self._lazy) and any(_root(k) in self._lazy for k in type_.__mro__)

    def __contains__(self, type_: object) -> bool:
        return type_ in self._factory

    def _find(self, type_: type) -> type | None:
        """The class along ``type_.__mro__`` whose builder applies."""
        for _ in range(2):
            for klass in type_.__mro__:
                if klass in self._factory and (klass is not object or not self._has_lazy(type_)):
                    return klass
            if not self._has_lazy(type_) or not self._load_lazy(type_):
                break
        return object if object in self._factory else None

    def lookup(self, type_: type) -> Callable[..., Any] | None:
        """The builder for values of ``type_`` (loading lazy registrations first), or None."""
        klass = self._find(type_)
        return None if klass is None else self._factory[klass]

    def run(self, client: Any, value: Any, **kw: Any) -> Any:
        """Build ``value`` with the builder registered for its type.

        Raises
        ------
        UnknownTypeError
            No builder applies and there is no pickle fallback.
        """
        klass = self._find(type(value))
        if klass is None:
            raise UnknownTypeError(
                f"no builder for {type(value).__module__}.{type(value).__qualname__}, and this "
                "builder context has no pickle fallback (no builder registered for 'object')"
            )
        builder = self._factory[klass]
        if self._wants_builder.get(klass, True):
            kw.setdefault("builder", self)
        return builder(client, value, **kw)

    __call__ = run

    def extend(self, builders: dict[type, Callable[..., Any]] | None = None, *,
               allow_pickle: bool | None = None) -> BuilderContext:
        """A child context: a copy of this one plus ``builders``."""
        child = BuilderContext(self, allow_pickle=allow_pickle)
        for type_, builder in (builders or {}).items():
            child.register(type_, builder)
        return child

    def __repr__(self) -> str:
        return f"BuilderContext({len(self._factory)} builders, allow_pickle={self.allow_pickle})"


default_builder_context = BuilderContext()
_current: ContextVar[BuilderContext | None] = ContextVar("vineyard_builders", default=None)


def get_current_builders() -> BuilderContext:
    """The builder context in effect here (per thread and per asyncio task)."""
    current = _current.get()
    return default_builder_context if current is None else current


@contextlib.contextmanager
def builder_context(
    builders: dict[type, Callable[..., Any]] | None = None,
    base: BuilderContext | None = None,
    *,
    allow_pickle: bool | None = None,
) -> Iterator[BuilderContext]:
    """Use ``(base or current).extend(builders)`` inside the block; yields the new context.

    A ``ContextVar`` holds the current context, so a new thread starts with the default one
    and the previous context is back after the block, even if it raised.
    """
    ctx = (base or get_current_builders()).extend(builders, allow_pickle=allow_pickle)
    token = _current.set(ctx)
    try:
        yield ctx
    finally:
        _current.reset(token)


def put(client: Any, value: Any, builder: Any = None, persist: bool = False, name: str | None = None,
        **kw: Any) -> Any:
    """Module-level form of ``client.put``."""
    return client.put(value, builder=builder, persist=persist, name=name, **kw)
