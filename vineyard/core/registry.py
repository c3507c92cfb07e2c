"""Shared machinery of the builder, resolver and driver registries: lazy loading."""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from typing import Any

__all__ = ["accepts", "load_entry"]

log = logging.getLogger(__name__)


def load_entry(spec: str) -> Callable[..., Any]:
    """``'package.module:function'`` → the function."""
    module_name, _, attr = spec.partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, attr)  # type: ignore[no-any-return]


def accepts(func: Callable[..., Any]) -> tuple[bool, set[str]]:
    """Whether ``func`` takes ``**kwargs``, and the names of its parameters."""
    import inspect

    try:
        params = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return True, set()
    var_kw = any(p.kind is p.VAR_KEYWORD for p in params)
    return var_kw, {p.name for p in params}
