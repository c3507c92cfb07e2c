"""Builder and resolver registries and their contexts.

``builder_context``/``resolver_context``/``context`` install a child of the current (or a
given) context for the duration of a ``with`` block. The current contexts live in
``ContextVar``s: nesting restores the outer context on exit, and each thread (or asyncio
task) starts with the defaults rather than another thread's override.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from vineyard.core.builder import (
    BuilderContext,
    builder_context,
    default_builder_context,
    get_current_builders,
)
from vineyard.core.resolver import (
    ResolverContext,
    default_resolver_context,
    get_current_resolvers,
    resolver_context,
)

__all__ = [
    "BuilderContext",
    "ResolverContext",
    "builder_context",
    "context",
    "default_builder_context",
    "default_resolver_context",
    "get_current_builders",
    "get_current_resolvers",
    "resolver_context",
]


@contextlib.contextmanager
def context(
    builders: dict[type, Callable[..., Any]] | None = None,
    resolvers: dict[str, Callable[..., Any]] | None = None,
    base_builder: BuilderContext | None = None,
    base_resolver: ResolverContext | None = None,
    *,
    allow_pickle: bool | None = None,
) -> Iterator[tuple[BuilderContext, ResolverContext]]:
    """Both contexts at once: ``with context() as (builders, resolvers): ...``.

    Parameters
    ----------
    builders, resolvers
        Registrations added for the block only.
    base_builder, base_resolver
        Contexts to extend instead of the current ones.
    allow_pickle
        ``False`` refuses the pickle fallback in both directions inside the block: putting a
        value no builder handles raises :class:`~vineyard.errors.UnknownTypeError`, and so
        does getting a pickled object. ``None`` keeps the base contexts' setting.
    """
    with builder_context(builders, base_builder, allow_pickle=allow_pickle) as b, \
            resolver_context(resolvers, base_resolver, allow_pickle=allow_pickle) as r:
        yield b, r
