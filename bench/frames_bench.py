"""Frame parsing and masking throughput: fullduplex against wsproto and websockets, in one run.

Usage::

    python bench/frames_bench.py [--quick] [--json out.json]

What is measured (payload bytes count towards MB/s, headers do not):

* ``parse``: a stream of masked binary client frames (as a server receives them), fed in 64 KiB
  chunks (a socket read) and parsed and unmasked frame by frame: fullduplex ``FrameParser``
  (``feed`` + ``next_frame`` loop), wsproto ``FrameProtocol`` (``receive_bytes`` +
  ``received_frames``), websockets ``Frame.parse`` driven by a ``StreamReader``.
* ``connection``: the same stream through the whole receiving state machine: fullduplex
  ``Connection(Side.SERVER).receive_data`` + ``events_received``, wsproto's post-handshake
  ``Connection``, websockets' ``Protocol`` in the OPEN state. Each reports one event per message.
* ``mask``: ``apply_mask(payload, key)`` on an in-cache payload: fullduplex C and pure Python,
  ``websockets.speedups`` (C) and ``websockets.utils`` (Python), wsproto's ``XorMaskerSimple``.

Each cell is run ``--repeat`` times, implementations interleaved so that machine noise hits all
of them alike, with the garbage collector off during a timed run (as ``timeit`` does). The table
shows the median, the spread as (max - min) / median, and the ratio of the median throughput to
fullduplex's (above 1: faster than fullduplex). fullduplex masks with its C accelerator when it
is built; run with ``FULLDUPLEX_NO_SPEEDUPS=1`` for the pure-Python path.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import struct
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from importlib.metadata import version

import websockets.frames
import websockets.protocol
import websockets.streams
import websockets.utils
import wsproto.connection
import wsproto.frame_protocol

from fullduplex.protocol import BinaryMessage, Connection, FrameParser, Side
from fullduplex.protocol import mask as fd_mask

try:
    from websockets.speedups import apply_mask as ws_apply_mask_c
except ImportError:  # websockets installed without its C extension
    ws_apply_mask_c = None

SIZES = [32, 1024, 64 * 1024, 2**20]
CHUNK = 64 * 1024  # bytes per receive_data call: one socket read
KEY = bytes.fromhex("37fa213d")

# A runner parses a list of chunks and returns how many complete frames (or messages) it saw.
Runner = Callable[[list[bytes]], int]


@dataclass
class Row:
    bench: str
    size: int
    impl: str
    frames_per_s: float
    mb_per_s: float
    spread: float
    ratio: float | None = None


# -- the input ----------------------------------------------------------------------------------


def masked_frame(payload: bytes, key: bytes = KEY) -> bytes:
    """A FIN binary frame, masked as a client sends it (written here, independent of all three)."""
    n = len(payload)
    if n < 126:
        head = bytes((0x82, 0x80 | n))
    elif n < 2**16:
        head = struct.pack("!BBH", 0x82, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x82, 0x80 | 127, n)
    return head + key + bytes(b ^ key[i & 3] for i, b in enumerate(payload))


def make_stream(size: int, n_frames: int) -> tuple[list[bytes], bytes]:
    payload = os.urandom(size)
    stream = masked_frame(payload) * n_frames
    return [stream[i : i + CHUNK] for i in range(0, len(stream), CHUNK)], payload


# -- parse runners ------------------------------------------------------------------------------


def fullduplex_parse(chunks: list[bytes]) -> int:
    parser = FrameParser(require_mask=True)
    feed = parser.feed
    next_frame = parser.next_frame
    n = 0
    for chunk in chunks:
        feed(chunk)
        while next_frame() is not None:
            n += 1
    return n


def wsproto_parse(chunks: list[bytes]) -> int:
    proto = wsproto.frame_protocol.FrameProtocol(client=False, extensions=[])
    n = 0
    for chunk in chunks:
        proto.receive_bytes(chunk)
        for frame in proto.received_frames():
            if frame.frame_finished:  # wsproto also yields partial payloads of large frames
                n += 1
    return n


def websockets_parse(chunks: list[bytes]) -> int:
    reader = websockets.streams.StreamReader()
    parse = websockets.frames.Frame.parse
    read_exact = reader.read_exact
    parser = parse(read_exact, mask=True)
    n = 0
    for chunk in chunks:
        reader.feed_data(chunk)
        while True:
            try:
                next(parser)
            except StopIteration:
                n += 1
                parser = parse(read_exact, mask=True)
            else:
                break  # waiting for more bytes
    return n


# -- connection runners -------------------------------------------------------------------------


def fullduplex_connection(chunks: list[bytes]) -> int:
    conn = Connection(Side.SERVER)
    n = 0
    for chunk in chunks:
        conn.receive_data(chunk)
        for event in conn.events_received():
            if type(event) is BinaryMessage:
                n += 1
    assert conn.failure is None, conn.failure
    return n


def wsproto_connection(chunks: list[bytes]) -> int:
    conn = wsproto.connection.Connection(wsproto.connection.ConnectionType.SERVER)
    n = 0
    for chunk in chunks:
        conn.receive_data(chunk)
        for event in conn.events():
            if event.message_finished:  # type: ignore[attr-defined]
                n += 1
    return n


def websockets_connection(chunks: list[bytes]) -> int:
    proto = websockets.protocol.Protocol(
        websockets.protocol.Side.SERVER, state=websockets.protocol.State.OPEN, max_size=None
    )
    n = 0
    for chunk in chunks:
        proto.receive_data(chunk)
        n += len(proto.events_received())
    return n


PARSERS: dict[str, Runner] = {
    "fullduplex FrameParser": fullduplex_parse,
    "wsproto FrameProtocol": wsproto_parse,
    "websockets Frame.parse": websockets_parse,
}
CONNECTIONS: dict[str, Runner] = {
    "fullduplex Connection": fullduplex_connection,
    "wsproto Connection": wsproto_connection,
    "websockets Protocol": websockets_connection,
}


# -- masking ------------------------------------------------------------------------------------


def wsproto_mask(data: bytes, key: bytes) -> bytes:
    return wsproto.frame_protocol.XorMaskerSimple(key).process(data)  # type: ignore[arg-type,return-value]


def maskers() -> dict[str, Callable[[bytes, bytes], bytes]]:
    impls: dict[str, Callable[[bytes, bytes], bytes]] = {}
    if fd_mask._c_apply_mask is not None:
        impls["fullduplex C"] = fd_mask._c_apply_mask
    else:
        try:
            from fullduplex.protocol._speedups import apply_mask as c_apply_mask
        except ImportError:
            pass
        else:  # FULLDUPLEX_NO_SPEEDUPS=1: still show the accelerator's figure
            impls["fullduplex C"] = c_apply_mask
    impls["fullduplex Python"] = fd_mask.apply_mask_python
    if ws_apply_mask_c is not None:
        impls["websockets speedups (C)"] = ws_apply_mask_c
    impls["websockets utils (Python)"] = websockets.utils.apply_mask
    impls["wsproto XorMaskerSimple"] = wsproto_mask
    return impls


# -- timing -------------------------------------------------------------------------------------


def time_once(fn: Callable[[], object], loops: int) -> float:
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        start = time.perf_counter()
        for _ in range(loops):
            fn()
        return (time.perf_counter() - start) / loops
    finally:
        if gc_was_enabled:
            gc.enable()


def calibrate(fn: Callable[[], object], target: float) -> int:
    """Loops per timed run so that a run lasts about ``target`` seconds."""
    elapsed = time_once(fn, 1)
    return max(1, int(target / max(elapsed, 1e-9)))


def interleaved(
    cells: dict[str, Callable[[], object]], repeat: int, target: float
) -> dict[str, list[float]]:
    loops = {name: calibrate(fn, target) for name, fn in cells.items()}
    times: dict[str, list[float]] = {name: [] for name in cells}
    for _ in range(repeat):
        for name, fn in cells.items():
            times[name].append(time_once(fn, loops[name]))
    return times


def rows_for(
    bench: str, size: int, frames: int, times: dict[str, list[float]], base: str
) -> Iterator[Row]:
    medians = {name: statistics.median(t) for name, t in times.items()}
    for name, t in times.items():
        med = medians[name]
        yield Row(
            bench=bench,
            size=size,
            impl=name,
            frames_per_s=frames / med,
            mb_per_s=frames * size / med / 1e6,
            spread=(max(t) - min(t)) / med,
            ratio=medians[base] / med if base in medians else None,
        )


def check(runners: dict[str, Runner], chunks: list[bytes], n_frames: int) -> None:
    for name, run in runners.items():
        got = run(chunks)
        if got != n_frames:
            raise SystemExit(f"{name}: {got} frames, expected {n_frames}")


def check_unmasking(payload: bytes) -> None:
    """Every parser must hand back the original payload, not just the right frame count."""
    frame = masked_frame(payload)
    parser = FrameParser(require_mask=True)
    parser.feed(frame)
    got = parser.next_frame()
    assert got is not None and got.payload == payload
    reader = websockets.streams.StreamReader()
    reader.feed_data(frame)
    gen = websockets.frames.Frame.parse(reader.read_exact, mask=True)
    try:
        next(gen)
    except StopIteration as exc:
        assert exc.value.data == payload
    proto = wsproto.frame_protocol.FrameProtocol(client=False, extensions=[])
    proto.receive_bytes(frame)
    assert b"".join(bytes(f.payload) for f in proto.received_frames()) == payload


def run(quick: bool, repeat: int) -> list[Row]:
    total = 2 * 2**20 if quick else 8 * 2**20  # payload bytes per stream
    target = 0.03 if quick else 0.1  # seconds per timed run
    rows: list[Row] = []
    for size in SIZES:
        n_frames = max(4 if quick else 8, min(total // size, 10_000 if quick else 50_000))
        chunks, payload = make_stream(size, n_frames)
        check_unmasking(payload)
        for bench, runners, base in (
            ("parse", PARSERS, "fullduplex FrameParser"),
            ("connection", CONNECTIONS, "fullduplex Connection"),
        ):
            check(runners, chunks, n_frames)
            cells = {name: (lambda r=r, c=chunks: r(c)) for name, r in runners.items()}
            rows += rows_for(bench, size, n_frames, interleaved(cells, repeat, target), base)
            print(".", end="", file=sys.stderr, flush=True)
        impls = maskers()
        for fn in impls.values():
            assert fn(fn(payload, KEY), KEY) == payload
        cells = {name: (lambda f=f, p=payload: f(p, KEY)) for name, f in impls.items()}
        base = "fullduplex C" if "fullduplex C" in impls else "fullduplex Python"
        rows += rows_for("mask", size, 1, interleaved(cells, repeat, target), base)
        print(".", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    return rows


def human_size(n: int) -> str:
    if n >= 2**20:
        return f"{n // 2**20} MiB"
    if n >= 1024:
        return f"{n // 1024} KiB"
    return f"{n} B"


def print_table(rows: list[Row]) -> None:
    header = f"{'bench':<10} {'size':>7}  {'implementation':<27} {'frames/s':>12} {'MB/s':>9}"
    header += f" {'spread':>7} {'vs fd':>6}"
    print(header)
    print("-" * len(header))
    last = None
    for r in rows:
        if last is not None and (r.bench, r.size) != last:
            print()
        last = (r.bench, r.size)
        ratio = "" if r.ratio is None else f"{r.ratio:.2f}x"
        fps = "" if r.bench == "mask" else f"{r.frames_per_s:,.0f}"
        print(
            f"{r.bench:<10} {human_size(r.size):>7}  {r.impl:<27} {fps:>12} {r.mb_per_s:>9,.0f}"
            f" {r.spread:>6.0%} {ratio:>6}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller streams, fewer repeats")
    parser.add_argument("--repeat", type=int, help="timed runs per cell (default 7, quick 3)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args()
    repeat = args.repeat or (3 if args.quick else 7)
    env = {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "fullduplex_accelerator": fd_mask.has_accelerator(),
        "websockets": version("websockets"),
        "websockets_speedups": ws_apply_mask_c is not None,
        "wsproto": version("wsproto"),
        "repeat": repeat,
        "quick": args.quick,
        "chunk": CHUNK,
    }
    print(" ".join(f"{k}={v}" for k, v in env.items()))
    rows = run(args.quick, repeat)
    print_table(rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": env, "rows": [asdict(r) for r in rows]}, f, indent=2)


if __name__ == "__main__":
    main()
