"""Load generation: the ``fullduplex bench`` command and the engine it shares with ``bench/``.

* :mod:`.echo` - ``fullduplex bench``: load an echo endpoint with fullduplex's own client and
  report throughput and latency;
* :mod:`.load` - opening many connections a bounded number at a time, the open-file limit, the
  event loop;
* :mod:`.latency` - percentiles: a histogram for runs of any length, an exact percentile for
  kept samples.

The repository's benchmark harness (``bench/run.py``, ``bench/hub_bench.py``) drives servers
with raw-socket load generators (``bench/loadgen/``) built on :mod:`.load` and :mod:`.latency`.
"""

from __future__ import annotations

from .echo import *  # noqa: F403
from .echo import __all__ as _echo_all
from .latency import LatencyHistogram, percentile
from .load import BenchError, OpenError, open_many, raise_file_limit, run_loop

__all__ = [
    *_echo_all,
    "BenchError",
    "LatencyHistogram",
    "OpenError",
    "open_many",
    "percentile",
    "raise_file_limit",
    "run_loop",
]
