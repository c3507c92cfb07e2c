"""Builder and resolver registries and their contexts."""

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
) -> Iterator[tuple[BuilderContext, ResolverContext]]:
    """Both contexts at once: ``with context() as (builders, resolvers): ...``."""
    with builder_context(builders, base_builder) as b, resolver_context(resolvers, base_resolver) as r:
        yield b, r
