"""``python -m compress.cli`` runs the ``slimforge`` CLI, as ``python -m compress`` does."""

from compress.cli import main

main()
