"""The root of every error slimforge raises on purpose: :class:`SlimforgeError`.

A leaf: this module imports nothing, of the project or otherwise, so every layer may import it
(``compress.exporters`` and ``compress.profiling`` too, which import nothing else of the project;
``tests/test_layering.py`` allows exactly this one module across layers). It lives at the package
root rather than in the lowest layer because importing it then runs only ``compress/__init__.py``
(which is lazy), not a layer's ``__init__`` with its torch import.

The public names are ``compress.SlimforgeError`` and ``compress.errors.SlimforgeError``.
"""

__all__ = ["SlimforgeError"]


class SlimforgeError(Exception):
    """Base of every error slimforge raises on purpose, in every layer (``compress.exporters``,
    ``compress.profiling``, ``compress.budgets`` and ``compress`` proper).

    Catch it to handle any slimforge failure: the message says what went wrong and what to do, so
    it can be shown as it is (the ``slimforge`` CLI prints it and exits 2). Each subclass also
    derives from the closest built-in exception (``ValueError``, ``RuntimeError``, ``TimeoutError``
    ...), so code that catches those keeps working.

    Not a subclass: :class:`compress.signals.Terminated` (a ``SystemExit``), which is a signal
    that unwinds the process, not an error.
    """
