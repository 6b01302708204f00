"""The old name of :mod:`compress.time_limit` (wall-clock limits for phases and tracing steps).

The module moved below the strategies because :mod:`compress.phases`, which the strategies
import, needs it, and importing anything under ``compress.strategies`` first imports every
built-in strategy. This name stays the *same module object* (not a copy of its names), so code
that sets ``WATCHDOG_GRACE_S`` or reads ``HANG_EXIT_CODE`` through it acts on the one the limits use.
"""

import sys

from compress import time_limit as _time_limit

sys.modules[__name__] = _time_limit
