"""User-space instructions of the per-IP abuse limits alone: ``ClientLimits.admit`` +
``acquire`` + ``release``, as every native and ASGI handshake calls them (issue 12).

::

    python bench/limits_bench.py            # each scenario under callgrind: ~1 min
    python bench/limits_bench.py --rounds 20000 --scenario storm   # one, without valgrind

Each scenario runs under ``valgrind --tool=callgrind`` twice, with 0 and ``--rounds`` rounds;
the difference divided by the rounds is the cost of one round, the loop's own ~330
instructions included (an empty loop of the same shape). Scenarios:

* ``storm``: one IP, already tracked, 10 connections of it open (what ``bench/run.py``'s
  handshake test does: every handshake from 127.0.0.1, 64 in flight), rate and connection
  limits on but never reached;
* ``single``: the same with no other connection of that IP open;
* ``new-ip``: every round a client IP not seen for over a second (rate 50: its entry expired),
  so each admission drops one entry and adds one; the clock is a Python function here (+~0.4k);
* ``no-rate``: ``rate_per_ip=None``, the connection limit alone.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys

SCENARIOS = ("storm", "single", "new-ip", "no-rate")


def run(scenario: str, rounds: int) -> None:
    """The rounds themselves (in the process valgrind counts)."""
    from fullduplex.asyncio.limits import ClientLimits

    now = [0.0]
    if scenario == "new-ip":
        limits = ClientLimits(256, 50.0, clock=lambda: now[0])
        ips = [f"10.0.{i // 256}.{i % 256}" for i in range(rounds + 20)]
    else:
        limits = ClientLimits(10**9, None if scenario == "no-rate" else 1e9)
        ips = ["127.0.0.1"] * (rounds + 20)
        for _ in range(10 if scenario == "storm" else 0):
            limits.acquire("127.0.0.1")
    for ip in ips[:20]:  # warm: entries exist, the code is specialised
        now[0] += 0.1
        limits.admit(ip)
    for ip in ips[20:]:
        now[0] += 0.1
        if limits.admit(ip) is None:
            limits.acquire(ip)
            limits.release(ip)


def instructions(scenario: str, rounds: int) -> int:
    """Callgrind's total for one run of ``scenario`` with ``rounds`` rounds."""
    command = [
        "valgrind",
        "--tool=callgrind",
        "--callgrind-out-file=/dev/null",
        sys.executable,
        __file__,
        "--scenario",
        scenario,
        "--rounds",
        str(rounds),
    ]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stderr
    match = re.search(r"Collected : (\d+)", out)
    assert match is not None, out
    return int(match.group(1))


def main() -> None:
    """Run one scenario (``--scenario``) or measure them all under callgrind."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", choices=SCENARIOS)
    parser.add_argument("--rounds", type=int, default=20_000)
    args = parser.parse_args()
    if args.scenario is not None:
        run(args.scenario, args.rounds)
        return
    for scenario in SCENARIOS:
        base = instructions(scenario, 0)
        total = instructions(scenario, args.rounds)
        print(f"{scenario:8} {(total - base) / args.rounds:8.0f} instructions per round")


if __name__ == "__main__":
    main()
