"""compress.data becomes a package (issue 15, part 4): step 1, the module moved unchanged."""

from compress.data.sources import *  # noqa: F401,F403
from compress.data.sources import __all__  # noqa: F401
