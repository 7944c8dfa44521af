"""``python -m fullduplex.bench``: the same as ``fullduplex bench``."""

from fullduplex.bench import main

raise SystemExit(main())
