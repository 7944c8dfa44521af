"""Layers above the sans-I/O core use its public names only (issue 14).

The asyncio layer, the transports, the clients and the ASGI server talk to a
:class:`~fullduplex.protocol.Connection` and its parser through public attributes and methods
(``pending_events``, ``pending_output``, ``takes_prepared``, ``send_prepared``, ...): reading a
``core._something`` again would tie them to the core's internals.
"""

from __future__ import annotations

import ast
from pathlib import Path

import fullduplex

SRC = Path(fullduplex.__file__).parent
CORE_NAMES = {"core", "parser", "_parser"}  # how the layers name a Connection and its parser


def _private_reads_of_the_core(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.Attribute) or not node.attr.startswith("_"):
            continue
        if node.attr.startswith("__"):
            continue
        owner = node.value
        name = owner.attr if isinstance(owner, ast.Attribute) else getattr(owner, "id", None)
        if name in CORE_NAMES:
            found.append(f"{path.relative_to(SRC)}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_no_layer_reads_the_cores_private_names() -> None:
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        if "protocol" not in path.relative_to(SRC).parts:
            offenders += _private_reads_of_the_core(path)
    assert offenders == []


def test_the_check_sees_a_private_read() -> None:
    # The check itself: it notices the pattern it forbids.
    sample = SRC / "protocol" / "connection.py"
    assert any("parser._" in line for line in _private_reads_of_the_core(sample))
