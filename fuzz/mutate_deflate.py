"""Hand-written mutants of protocol/deflate.py, each run against tests/protocol/test_deflate.py.

Each mutant is one textual change that a plausible bug would make (a comparison off by one, a
flag not reset, an RFC rule dropped). The script applies one at a time to a copy of the source
tree, runs the deflate tests with ``-x`` and reports whether they noticed (killed) or not
(survived). A survivor is either a gap in the tests or a change that is not observable (an
equivalent mutant); the list below says which was found, and why, for those::

    python fuzz/mutate_deflate.py            # about 30 mutants, ~5 s each
    python fuzz/mutate_deflate.py -k restart # only the mutants whose name contains "restart"
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET = Path("src/fullduplex/protocol/deflate.py")
TESTS = "tests/protocol/test_deflate.py"

# (name, old text, new text): ``old`` must occur exactly once in deflate.py.
MUTANTS: list[tuple[str, str, str]] = [
    ("window-bits-min", "not 8 <= bits <= 15", "not 9 <= bits <= 15"),
    ("window-bits-max", "not 8 <= bits <= 15", "not 8 <= bits <= 14"),
    ("level-range", "not -1 <= compress_level <= 9", "not 0 <= compress_level <= 9"),
    ("threshold-negative", "compress_threshold < 0", "compress_threshold < -1"),
    ("mem-level-range", "not 1 <= mem_level <= 9", "not 1 <= mem_level <= 8"),
    ("compression-8-bits", "local_max_window_bits >= _MIN_ZLIB_WINDOW_BITS", "True"),
    (
        "inflate-bits",
        "max(remote_max_window_bits, _MIN_ZLIB_WINDOW_BITS)",
        "remote_max_window_bits",
    ),
    ("cont-rsv1-allowed", 'raise ProtocolError("RSV1 set on a continuation frame")', "pass"),
    ("decoding-from-cont", "            self._decoding = frame.rsv1\n", "            pass\n"),
    ("no-tail", "            data += _EMPTY_BLOCK_TAIL\n", "            pass\n"),
    (
        "tail-every-frame",
        "        if frame.fin:\n            # RFC 7692 7.2.2",
        "        if True:\n            # RFC 7692 7.2.2",
    ),
    (
        "decoder-kept",
        "        if frame.fin and self.remote_no_context_takeover:\n            # The peer",
        "        if False:\n            # The peer",
    ),
    ("rsv1-kept", "payload, frame.fin, False, frame.rsv2", "payload, frame.fin, True, frame.rsv2"),
    ("rsv2-dropped", "payload, frame.fin, False, frame.rsv2", "payload, frame.fin, False, False"),
    ("budget-exact", "else max_size + 1", "else max_size"),
    ("budget-zero", "0 if max_size is None else", "None if max_size is None else"),
    ("too-big-off-by-one", "len(out) > max_size", "len(out) > max_size + 1"),
    ("error-code", '"invalid compressed data", 1007', '"invalid compressed data", 1002'),
    ("restart-skipped", "if decoder.eof and (", "if False and ("),
    (
        "two-final-blocks",
        '            raise zlib.error("more than one final DEFLATE block in a frame")',
        "            pass",
    ),
    ("restart-decoder-kept", "self._decoder = None if fin else decoder", "self._decoder = decoder"),
    ("threshold-le", "len(frame.payload) < self.compress_threshold", "len(frame.payload) <= 64"),
    (
        "threshold-fragments",
        "frame.fin and len(frame.payload) < self.compress_threshold",
        "len(frame.payload) < self.compress_threshold",
    ),
    ("no-sync-flush", "encoder.flush(zlib.Z_SYNC_FLUSH)", "encoder.flush(zlib.Z_FULL_FLUSH)"),
    ("tail-kept", "            data = _strip_tail(data)\n", "            pass\n"),
    (
        "encoder-kept",
        "            if self.local_no_context_takeover:\n                # RFC 7692 7.1.1.1",
        "            if False:\n                # RFC 7692 7.1.1.1",
    ),
    ("rsv1-on-cont", "first = frame.opcode != Opcode.CONT", "first = True"),
    ("strip-empty", 'return b"\\x00"', 'return b""'),
    ("duplicate-params", "if name in seen:", "if False:"),
    ("no-context-value", "if value is not None:\n", "if False:\n"),
    (
        "client-bits-unoffered",
        "        if offer.client_max_window_bits_offered:\n",
        "        if True:\n",
    ),
    ("rsv1-twice", "if any(ext.rsv_mask & RSV1 for ext in accepted):", "if False:"),
    (
        "server-takeover-unchecked",
        "if self.server_no_context_takeover and not answer.server_no_context_takeover:",
        "if False:",
    ),
    ("server-bits-raised", "server_bits > self.server_max_window_bits", "False"),
    ("client-bits-raised", "client_bits > self.client_max_window_bits", "False"),
    (
        "smallest-largest",
        "    return a if b is None else min(a, b)\n\n\nclass _FactoryOptions",
        "    return a if b is None else max(a, b)\n\n\nclass _FactoryOptions",
    ),
    (
        "leading-zero",
        "{str(bits): bits for bits in range(8, 16)}",
        "{f'{b:02}': b for b in range(8, 16)} | {str(b): b for b in range(8, 16)}",
    ),
]


def run(name: str, old: str, new: str, tree: Path) -> bool:
    """Apply one mutant in ``tree``; True if the tests fail (killed)."""
    path = tree / TARGET
    source = (ROOT / TARGET).read_text()
    if old and source.count(old) != 1:
        raise SystemExit(f"mutant {name}: its text occurs {source.count(old)} times")
    path.write_text(source.replace(old, new))
    try:
        env = {**os.environ, "PYTHONPATH": str(tree / "src")}
        cmd = [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-x",
            "-p",
            "no:randomly",
            "-p",
            "no:cacheprovider",
        ]
        result = subprocess.run(
            [*cmd, str(ROOT / TESTS)], capture_output=True, text=True, env=env, cwd=tree
        )
        return result.returncode != 0
    finally:
        path.write_text(source)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-k", default="", help="only mutants whose name contains this")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp)
        shutil.copytree(ROOT / "src", tree / "src", ignore=shutil.ignore_patterns("__pycache__"))
        if run("unchanged", "", "", tree):
            raise SystemExit("the deflate tests fail without a mutant: fix that first")
        survivors = []
        chosen = [m for m in MUTANTS if args.k in m[0]]
        for name, old, new in chosen:
            killed = run(name, old, new, tree)
            print(f"{'killed  ' if killed else 'SURVIVED'} {name}", flush=True)
            if not killed:
                survivors.append(name)
    print(f"{len(chosen) - len(survivors)} of {len(chosen)} killed; survived: {survivors or '-'}")


if __name__ == "__main__":
    main()
