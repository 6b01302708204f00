"""The strategy registry: strategies plug in by decorator, the API looks them up by name.

Adding a strategy takes three steps:

1. write a frozen config dataclass (validated in ``__post_init__`` with :class:`ConfigError`);
2. subclass :class:`compress.strategies.base.Strategy`, set ``config_cls`` and implement ``run``;
3. decorate it with ``@register_strategy("my-name")`` in a module imported by
   ``compress/strategies/__init__.py``.

The registry is the only place a strategy name is turned into code.
"""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING, Callable, TypeVar

from compress.errors import StrategyError

if TYPE_CHECKING:  # pragma: no cover
    from compress.strategies.base import Strategy

__all__ = ["register_strategy", "get_strategy", "list_strategies"]

_REGISTRY: dict[str, type["Strategy"]] = {}
S = TypeVar("S", bound=type)


def register_strategy(name: str) -> Callable[[S], S]:
    """Class decorator registering a :class:`Strategy` subclass under ``name``.

    Raises:
        StrategyError: the name is already taken by another class.
    """

    def deco(cls: S) -> S:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise StrategyError(
                f"Strategy name {name!r} is already registered by {_REGISTRY[name].__qualname__}; choose another name."
            )
        cls.name = name  # type: ignore[attr-defined]
        _REGISTRY[name] = cls  # type: ignore[assignment]
        return cls

    return deco


def _load_builtin() -> None:
    import compress.strategies  # noqa: F401  (registers the built-in strategies)


def get_strategy(name: str) -> type["Strategy"]:
    """Return the strategy class registered under ``name``.

    Raises:
        StrategyError: unknown name; the message lists the registered names and close matches.
    """
    _load_builtin()
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(str(name), list(_REGISTRY), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise StrategyError(
            f"Unknown strategy {name!r}.{hint} Registered strategies: {', '.join(sorted(_REGISTRY))}."
        ) from None


def list_strategies() -> list[str]:
    """Names of every registered strategy, sorted."""
    _load_builtin()
    return sorted(_REGISTRY)
