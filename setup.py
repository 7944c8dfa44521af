"""Build the optional C accelerator; all metadata lives in pyproject.toml.

``optional=True``: where the extension cannot be compiled (no compiler, no Python headers),
setuptools prints a warning and installs the package without it, and fullduplex masks in pure
Python (see ``fullduplex.protocol.mask``).
"""

from __future__ import annotations

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "fullduplex.protocol._speedups",
            ["src/fullduplex/protocol/_speedups.c"],
            optional=True,
        )
    ],
)
