"""``python -m fullduplex``: the command line."""

from fullduplex.cli import main

raise SystemExit(main())
