"""``python -m api.cli``: the ``relaypacs`` command without its console script."""

from api.cli import main

main()
