"""The strategy registry: strategies plug in by decorator, the API looks them up by name.

A leaf: it holds the name -> class dict, the :func:`register_strategy` decorator and the lookup
(:func:`get_strategy`, :func:`list_strategies`), and imports nothing of the project but
:mod:`compress.errors`. It does not know the built-in strategies: importing
:mod:`compress.strategies` registers them, and ``compress.get_strategy`` /
``compress.list_strategies``, :func:`compress.compress` and the CLI import that package first.

Adding a strategy inside slimforge takes three steps:

1. write a frozen config dataclass (validated in ``__post_init__`` with :class:`ConfigError`);
2. subclass :class:`compress.strategies.base.Strategy`, set ``config_cls`` and implement ``run``;
3. decorate it with ``@register_strategy("my-name")`` in a module imported by
   ``compress/strategies/__init__.py``.

**Out-of-tree strategies** register through the entry-point group ``slimforge.strategies``
(:data:`ENTRY_POINT_GROUP`) of the package that ships them::

    [project.entry-points."slimforge.strategies"]
    my-name = "my_package.strategy:MyStrategy"

The entry point's name is the strategy's name. Its object is either

* a :class:`~compress.strategies.base.Strategy` subclass: registered under the entry point's
  name (a class already decorated with ``@register_strategy`` must carry that same name); or
* a module (``my-name = "my_package.strategy"``): imported, and it must register a strategy under
  the entry point's name with ``@register_strategy`` when it is imported.

Entry points are loaded lazily, once, on the first :func:`get_strategy` or
:func:`list_strategies` call. One that fails to load (an import error, an object of another kind,
a name already taken) raises :class:`~compress.errors.StrategyPluginError`, which names the entry
point and its distribution and says what to do: :func:`list_strategies` raises it for any broken
entry point, :func:`get_strategy` for the name asked for. :func:`reset_plugins` forgets what the
entry points registered (for tests).

The registry is the only place a strategy name is turned into code.
"""

from __future__ import annotations

import difflib
import sys
import types
from importlib import metadata
from typing import TYPE_CHECKING, Any, Callable, TypeVar

from compress.errors import StrategyError, StrategyPluginError

if TYPE_CHECKING:  # pragma: no cover
    from compress.strategies.base import Strategy

__all__ = ["register_strategy", "get_strategy", "list_strategies", "reset_plugins", "ENTRY_POINT_GROUP"]

#: the entry-point group out-of-tree strategies register through
ENTRY_POINT_GROUP = "slimforge.strategies"

_REGISTRY: dict[str, type["Strategy"]] = {}
_PLUGINS: dict[str, str] = {}  # strategy name -> "entry point (distribution)" that registered it
_BROKEN: dict[str, str] = {}  # entry-point name -> the message of its StrategyPluginError
_loaded = False
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


def _is_strategy_class(obj: Any) -> bool:
    # a Strategy subclass has imported compress.strategies.base, so the class can be found there
    # without this leaf importing it
    base = sys.modules.get("compress.strategies.base")
    return isinstance(obj, type) and base is not None and issubclass(obj, base.Strategy) and obj is not base.Strategy


def _distribution(ep: Any) -> str:
    dist = getattr(ep, "dist", None)
    name = getattr(dist, "name", None) if dist is not None else None
    return f"{name} {getattr(dist, 'version', '')}".strip() if name else "an unknown distribution"


def _load_entry_point(ep: Any) -> None:
    """Load one entry point and register its strategy under ``ep.name``.

    Raises:
        StrategyPluginError: the entry point does not load, or does not give a strategy named ``ep.name``.
    """
    where = f"entry point {ep.name!r} = {ep.value!r} of the group {ENTRY_POINT_GROUP!r}, from {_distribution(ep)}"
    fix = (f"fix or upgrade that distribution, or uninstall it (`pip uninstall {getattr(ep.dist, 'name', 'PACKAGE')}`)"
           if getattr(ep, "dist", None) is not None else "fix or uninstall the package that declares it")
    before = set(_REGISTRY)
    try:
        obj = ep.load()
    except Exception as exc:  # noqa: BLE001 - any failure of third-party code becomes our error
        raise StrategyPluginError(f"The strategy {where} failed to load ({type(exc).__name__}: {exc}); {fix}.") from exc
    try:
        if isinstance(obj, types.ModuleType):
            if ep.name not in _REGISTRY:
                _reregister_from(obj)
            if ep.name not in _REGISTRY:
                raise StrategyPluginError(
                    f"The strategy {where} is the module {obj.__name__}, which registered no strategy named "
                    f"{ep.name!r}; decorate its Strategy subclass with @register_strategy({ep.name!r}), or point "
                    f"the entry point at the class. Otherwise {fix}.")
        elif _is_strategy_class(obj):
            own = obj.__dict__.get("name")
            if own and own != ep.name and _REGISTRY.get(own) is obj:
                raise StrategyPluginError(
                    f"The strategy {where} is the class {obj.__qualname__}, registered as {own!r}; name the entry "
                    f"point {own!r}, or drop the @register_strategy decorator. Otherwise {fix}.")
            register_strategy(ep.name)(obj)
        else:
            raise StrategyPluginError(
                f"The strategy {where} gave {obj!r}, neither a compress.strategies.base.Strategy subclass nor a "
                f"module; point the entry point at the strategy class. Otherwise {fix}.")
    except StrategyError as exc:
        if isinstance(exc, StrategyPluginError):
            raise
        raise StrategyPluginError(f"The strategy {where} could not be registered: {exc} Rename the entry point, "
                                  f"or {fix}.") from exc
    for name in set(_REGISTRY) - before:
        if not _REGISTRY[name].__module__.startswith("compress."):  # not a built-in the plugin's imports registered
            _PLUGINS[name] = where


def _reregister_from(module: types.ModuleType) -> None:
    """After :func:`reset_plugins`, a module already imported does not run its decorators again:
    register once more the strategy classes it defines (their ``name`` was set by the decorator)."""
    for obj in list(vars(module).values()):
        if _is_strategy_class(obj) and obj.__module__ == module.__name__ and obj.__dict__.get("name"):
            register_strategy(obj.__dict__["name"])(obj)


def _load_plugins() -> None:
    """Load every entry point of :data:`ENTRY_POINT_GROUP`, once; remember the ones that fail."""
    global _loaded
    if _loaded:
        return
    _loaded = True  # set first: a plugin that looks a strategy up while it loads does not recurse
    seen: set[tuple[str, str]] = set()
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if (ep.name, ep.value) in seen:  # the same distribution found twice on sys.path
            continue
        seen.add((ep.name, ep.value))
        try:
            _load_entry_point(ep)
        except StrategyPluginError as exc:
            _BROKEN[ep.name] = str(exc)


def reset_plugins() -> None:
    """Forget the strategies that entry points registered and which entry points failed; the next
    lookup loads the entry points again. The strategies registered by import (the built-ins) stay."""
    global _loaded
    for name in _PLUGINS:
        _REGISTRY.pop(name, None)
    _PLUGINS.clear()
    _BROKEN.clear()
    _loaded = False


def get_strategy(name: str) -> type["Strategy"]:
    """Return the strategy class registered under ``name``.

    Raises:
        StrategyPluginError: ``name`` is the name of an entry point that failed to load.
        StrategyError: unknown name; the message lists the registered names and close matches.
    """
    _load_plugins()
    try:
        return _REGISTRY[name]
    except KeyError:
        pass
    if name in _BROKEN:
        raise StrategyPluginError(_BROKEN[name])
    close = difflib.get_close_matches(str(name), list(_REGISTRY), n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    if "compress.strategies" not in sys.modules:
        hint += (" The built-in strategies register when compress.strategies is imported: use "
                 "compress.get_strategy, or import compress.strategies first.")
    if _BROKEN:
        hint += f" Entry points that failed to load: {', '.join(sorted(_BROKEN))} (compress.list_strategies() says why)."
    raise StrategyError(
        f"Unknown strategy {name!r}.{hint} Registered strategies: {', '.join(sorted(_REGISTRY)) or 'none'}."
    )


def list_strategies() -> list[str]:
    """Names of every registered strategy, sorted.

    Raises:
        StrategyPluginError: an entry point of :data:`ENTRY_POINT_GROUP` failed to load (every
            failure in one message).
    """
    _load_plugins()
    if _BROKEN:
        raise StrategyPluginError(" ".join(_BROKEN[k] for k in sorted(_BROKEN)))
    return sorted(_REGISTRY)
