"""The cost of metrics per message: server CPU per echoed message with and without metrics.

Runs ``bench/servers/fullduplex_echo.py`` (pinned to CPU 0) with and without ``--metrics``
(``app.enable_metrics()``), drives it with ``bench/loadgen/loadgen.py echo`` (pinned to CPU 1:
100 connections, one 32-byte message in flight on each), and, while metrics are on, scrapes
``/metrics`` every ``--scrape-interval`` seconds (1 s: fifteen times Prometheus' default
rate, so the scrapes' own cost is counted generously). The two modes alternate within each
repeat, so drift in the machine's speed hits both. Prints the median server CPU time per
message of each mode and their ratio, for the async API and the callback API::

    python bench/metrics_bench.py            # 5 repeats x 5 s per mode and API: ~4 min
    python bench/metrics_bench.py --quick    # 1 repeat x 1 s: a check that it runs

The target (issue 13): metrics add under 5% per message.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SERVER = HERE / "servers" / "fullduplex_echo.py"
LOADGEN = HERE / "loadgen" / "loadgen.py"
TARGET = 1.05


def pin(cpu: int) -> Callable[[], None] | None:
    if not hasattr(os, "sched_setaffinity") or cpu >= (os.cpu_count() or 1):
        return None
    return lambda: os.sched_setaffinity(0, {cpu})


class Scraper(threading.Thread):
    """GET /metrics every ``interval`` seconds until stopped."""

    def __init__(self, port: int, interval: float) -> None:
        super().__init__(daemon=True)
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.interval = interval
        self.stop_event = threading.Event()
        self.scrapes = 0
        self.sizes: list[int] = []

    def run(self) -> None:
        while not self.stop_event.is_set():
            with urllib.request.urlopen(self.url, timeout=5) as response:
                body = response.read()
            assert b"fullduplex_messages_total" in body
            self.scrapes += 1
            self.sizes.append(len(body))
            self.stop_event.wait(self.interval)


def measure(args: argparse.Namespace, api: str, metrics: bool) -> dict[str, Any]:
    command = [sys.executable, str(SERVER), "--api", api, *(["--metrics"] if metrics else [])]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, preexec_fn=pin(0))
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        scraper = Scraper(port, args.scrape_interval) if metrics else None
        if scraper is not None:
            scraper.start()
        result = subprocess.run(
            [
                *(sys.executable, str(LOADGEN), "echo", "--port", str(port)),
                *("--server-pid", str(server.pid), "--connections", str(args.connections)),
                *("--size", str(args.size), "--warmup", str(args.warmup)),
                *("--duration", str(args.duration)),
            ],
            capture_output=True,
            text=True,
            preexec_fn=pin(1),
            check=False,
        )
        if scraper is not None:
            scraper.stop_event.set()
            scraper.join(10)
        report = json.loads(result.stdout.strip().splitlines()[-1])
        if "error" in report:
            raise RuntimeError(report["error"])
        echo = report["echo"]
        return {
            "cpu_us": echo["server_cpu_us"],
            "rate": echo["rate_per_s"],
            "scrapes": scraper.scrapes if scraper else 0,
            "scrape_bytes": max(scraper.sizes, default=0) if scraper else 0,
        }
    finally:
        server.terminate()
        server.wait(10)
        if server.stdout is not None:
            server.stdout.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--quick", action="store_true", help="1 repeat, 1 s windows")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds measured")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--scrape-interval", type=float, default=1.0)
    parser.add_argument("--api", choices=["async", "listener", "both"], default="both")
    parser.add_argument("--json", help="also write the raw results to this file")
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.duration, args.warmup = 1, 1.0, 0.5
    apis = ["async", "listener"] if args.api == "both" else [args.api]
    raw: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for api in apis:
        runs: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
        for repeat in range(args.repeats):
            # Alternate which mode goes first, so slow drift hits both alike.
            order = [False, True] if repeat % 2 == 0 else [True, False]
            for metrics in order:
                runs["on" if metrics else "off"].append(measure(args, api, metrics))
        raw[api] = runs
    print(f"server CPU per echoed {args.size} B message, {args.connections} connections, ")
    print(f"median of {args.repeats}; metrics scraped every {args.scrape_interval} s")
    print(f"{'API':<10}{'without':>12}{'with':>12}{'ratio':>9}  target < {TARGET:.2f}")
    status = 0
    for api, runs in raw.items():
        off = statistics.median(r["cpu_us"] for r in runs["off"])
        on = statistics.median(r["cpu_us"] for r in runs["on"])
        ratio = on / off
        verdict = "PASS" if ratio < TARGET else "FAIL"
        status |= verdict == "FAIL"
        print(f"{api:<10}{off:>10.2f}us{on:>10.2f}us{ratio:>9.3f}  {verdict}")
        scrapes = sum(r["scrapes"] for r in runs["on"])
        size = max(r["scrape_bytes"] for r in runs["on"])
        print(f"{'':<10}({scrapes} scrapes of up to {size} bytes in the 'with' windows)")
    if args.json:
        Path(args.json).write_text(json.dumps(raw, indent=2))
    return status


if __name__ == "__main__":
    sys.exit(main())
