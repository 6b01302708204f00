"""``python -m compress`` runs the ``slimforge`` CLI."""

from compress.cli import main

main()
