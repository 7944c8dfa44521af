"""bench/scale.py at its smallest: both measurements run end to end; no figure is judged.

A real redis-server, ``fullduplex serve --workers 2 --broker redis://...`` and the fullduplex
echo server, all started by the script; a few seconds in all, so that the script does not rot.
Never skipped: CI installs Debian's redis-server (tests/hub/conftest.py), and a missing one
must fail.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "scale.py"


def test_scale_smallest_run(tmp_path: Path) -> None:
    out = tmp_path / "scale.json"
    command = [sys.executable, str(SCRIPT), "--quick", "--subscribers", "60", "--rounds", "2"]
    command += ["--burst", "20", "--idle", "100", "--steps", "2", "--servers", "fullduplex"]
    command += ["--json", str(out), "--results", str(tmp_path)]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    # Its own process group: on a timeout, Redis, the workers and the clients go with it.
    proc = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 0, stderr[-2000:]
    report = json.loads(out.read_text())

    fan = report["fanout"]["summary"]
    assert fan["subscribers"] == 60
    assert fan["deliveries"] == 60 * 2  # every subscriber got each round's message once
    assert sum(fan["per_worker"]) == 60  # every subscriber found on one of the two workers
    assert len(fan["per_worker"]) == 2
    assert 0 < fan["latency_p50_ms"] <= fan["latency_p99_ms"] <= fan["latency_max_ms"]
    assert fan["workers_cpu_us_per_delivery"] > 0
    assert fan["redis_cpu_us_per_publish_burst"] > 0
    assert fan["redis_exec_us_per_publish_2_readers"]["evalsha"] > 0
    assert report["fanout"]["raw"]["burst"]["two"]["commandstats"]["evalsha"]["calls"] >= 20

    idle = report["idle"]
    assert idle["measured"] == 100 and idle["skipped"] == {}
    result = idle["results"]["fullduplex"]
    assert [p["connections"] for p in result["points"]] == [50, 100]
    assert result["rss_after"] > result["rss_before"]
    assert "fullduplex" in stdout and "fan-out" in stdout  # the table
    assert "round 2/2" in stderr  # progress
