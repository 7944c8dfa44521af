"""Cost of a publish on the memory hub: to one topic, and to ever new topics (churn).

    python bench/topic_bench.py [--count N] [--callgrind]

Cases, each ``Hub.publish`` on a started memory hub with no subscriber:

* ``same``: N publishes to one topic (the hot path: lookup, history append and trim);
* ``fresh``: N publishes to N new topics, past ``max_topics`` (here 10,000) when the backend has
  one: each new topic drops the least recently used idle one (the cap's path);
* ``listened``: N publishes to one topic with one callback subscriber (the fan-out path).

Timed with ``time.perf_counter`` (best of 5). With ``--callgrind`` each case runs instead under
``valgrind --tool=callgrind`` twice, with N and 2N publishes, and the difference of the total
instruction counts (``Ir``) divided by N is printed: start-up cancels out, and counts are
stable on a busy machine. Compare two trees by running it with each on ``PYTHONPATH``.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fullduplex.hub import Hub, MemoryBackend

CASES = ("same", "fresh", "listened")
CAP = 10_000


def make_backend() -> MemoryBackend:
    if "max_topics" in inspect.signature(MemoryBackend).parameters:
        return MemoryBackend(max_topics=CAP)  # type: ignore[call-arg]
    return MemoryBackend()  # a tree without the cap


async def run(case: str, count: int) -> float:
    async with Hub(make_backend()) as hub:
        if case == "listened":
            hub.subscribe("t", on_message=lambda item: None)
        names = [f"t.{i}" for i in range(count)] if case == "fresh" else ["t"] * count
        for i in range(CAP):  # warm up, and fill up to the cap (the same whatever N)
            await hub.publish(f"w.{i}" if case == "fresh" else "t", 0)
        start = time.perf_counter()
        for name in names:
            await hub.publish(name, 0)
        return time.perf_counter() - start


def instructions(case: str, count: int) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        command = ["valgrind", "-q", "--tool=callgrind", f"--callgrind-out-file={out}"]
        command += [sys.executable, __file__, "--case", case, "--count", str(count), "--once"]
        subprocess.run(command, check=True, capture_output=True)
        summary = re.search(r"^summary:\s+(\d+)", out.read_text(), re.MULTILINE)
        assert summary is not None
        return int(summary.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--callgrind", action="store_true")
    parser.add_argument("--case", choices=CASES)
    parser.add_argument("--once", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.once:
        asyncio.run(run(args.case, args.count))
        return
    for case in [args.case] if args.case else CASES:
        if args.callgrind:
            base = instructions(case, args.count)
            double = instructions(case, 2 * args.count)
            print(f"{case:9} {(double - base) / args.count:10,.0f} instructions per publish")
        else:
            best = min(asyncio.run(run(case, args.count)) for _ in range(5))
            print(f"{case:9} {best / args.count * 1e6:8.2f} us per publish")


if __name__ == "__main__":
    main()
