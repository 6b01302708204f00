"""Lazy package attributes (PEP 562) for the package ``__init__`` files of every layer.

``compress``, ``compress.budgets``, ``compress.profiling`` and ``compress.exporters`` name their public
objects in a table ``{name: (module, attribute)}`` and load each on first use, so that importing a
package (and ``compress.errors``, the CLI's top level) loads neither torch nor onnxruntime. Like
``compress._error_root`` this is a shared leaf: it imports only the standard library, so any layer may
use it (``tests/test_layering.py``).
"""

import importlib


def lazy_getattr(package: str, table: dict, namespace: dict):
    """The module ``__getattr__`` of ``package``: ``name`` in ``table`` (``{name: (module, attribute)}``)
    is imported on first use and cached in ``namespace`` (the package's ``globals()``), so later lookups
    skip this function.

    Raises:
        AttributeError: ``name`` is not in ``table`` (as Python's own message for a missing attribute).
    """

    def __getattr__(name: str):
        if name in table:
            mod, attr = table[name]
            value = getattr(importlib.import_module(mod), attr)
            namespace[name] = value
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
