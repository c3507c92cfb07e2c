"""Built-in data types: one module per family, registered into the default contexts.

numpy types are registered eagerly; pandas, pyarrow and scipy lazily, the first time a value
of theirs is put or an object of theirs is resolved, so ``import vineyard`` stays light.
"""

from __future__ import annotations

from typing import Any

__all__ = ["register_builtin_types"]

_LAZY_BUILDERS = {
    "pandas": "vineyard.data.pandas:register",
    "pyarrow": "vineyard.data.arrow:register",
    "scipy": "vineyard.data.sparse:register",
}
_LAZY_RESOLVERS = {
    "vineyard::DataFrame": "vineyard.data.pandas:register",
    "vineyard::GlobalDataFrame": "vineyard.data.pandas:register",
    "vineyard::Series": "vineyard.data.pandas:register",
    "vineyard::Index": "vineyard.data.pandas:register",
    "vineyard::MultiIndex": "vineyard.data.pandas:register",
    "vineyard::RangeIndex": "vineyard.data.pandas:register",
    "vineyard::SparseArray": "vineyard.data.pandas:register",
    "vineyard::pandas": "vineyard.data.pandas:register",
    "vineyard::NumericArray": "vineyard.data.arrow:register",
    "vineyard::BooleanArray": "vineyard.data.arrow:register",
    "vineyard::BaseBinaryArray": "vineyard.data.arrow:register",
    "vineyard::LargeBinaryArray": "vineyard.data.arrow:register",
    "vineyard::FixedSizeBinaryArray": "vineyard.data.arrow:register",
    "vineyard::NullArray": "vineyard.data.arrow:register",
    "vineyard::LargeListArray": "vineyard.data.arrow:register",
    "vineyard::ListArray": "vineyard.data.arrow:register",
    "vineyard::FixedSizeListArray": "vineyard.data.arrow:register",
    "vineyard::StructArray": "vineyard.data.arrow:register",
    "vineyard::DictionaryArray": "vineyard.data.arrow:register",
    "vineyard::FixedWidthArray": "vineyard.data.arrow:register",
    "vineyard::ChunkedArray": "vineyard.data.arrow:register",
    "vineyard::StringArray": "vineyard.data.arrow:register",
    "vineyard::LargeStringArray": "vineyard.data.arrow:register",
    "vineyard::BinaryArray": "vineyard.data.arrow:register",
    "vineyard::SchemaProxy": "vineyard.data.arrow:register",
    "vineyard::RecordBatch": "vineyard.data.arrow:register",
    "vineyard::Table": "vineyard.data.arrow:register",
    "vineyard::arrow": "vineyard.data.arrow:register",
    "vineyard::CSRMatrix": "vineyard.data.sparse:register",
    "vineyard::CSCMatrix": "vineyard.data.sparse:register",
    "vineyard::COOMatrix": "vineyard.data.sparse:register",
    "vineyard::BSRMatrix": "vineyard.data.sparse:register",
    "vineyard::DIAMatrix": "vineyard.data.sparse:register",
}


def register_builtin_types(builders: Any, resolvers: Any) -> None:
    """Register every built-in type (idempotent): pickle fallback, base, tensor, then lazy
    hooks for pandas, Arrow and scipy."""
    from vineyard.data import base, pickle, tensor

    for module in (pickle, base, tensor):
        module.register(builders, resolvers)
    if builders is not None:
        for root, spec in _LAZY_BUILDERS.items():
            builders.register_lazy(root, spec)
    if resolvers is not None:
        for prefix, spec in _LAZY_RESOLVERS.items():
            resolvers.register_lazy(prefix, spec)
    _load_entry_points(builders, resolvers)


def _load_entry_points(builders: Any, resolvers: Any) -> None:
    """Third-party types: entry points in the group ``vineyard.types``."""
    import logging
    from importlib.metadata import entry_points

    for entry in entry_points(group="vineyard.types"):
        try:
            entry.load()(builders, resolvers)
        except Exception:  # a broken plugin must not break vineyard
            logging.getLogger(__name__).warning("could not load vineyard type plugin %s", entry.name, exc_info=True)
