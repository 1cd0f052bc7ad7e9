"""``python -m limner``: the same as the ``limner`` command."""

from limner.cli import main

main()
