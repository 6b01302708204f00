"""Moved to :mod:`compress.training.checkpoint` (the training runtime owns checkpoints); kept as an
alias so existing imports keep working."""

from compress.training.checkpoint import *  # noqa: F401,F403
from compress.training.checkpoint import __all__  # noqa: F401
