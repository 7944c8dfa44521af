"""Latency percentiles: a histogram for long runs, an exact percentile for kept samples.

``fullduplex bench`` records every round trip of a run of any length in a
:class:`LatencyHistogram`; the benchmark harness's load generators (``bench/loadgen/``) keep their
few thousand samples and take :func:`percentile` of them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["HISTOGRAM_GROWTH", "LatencyHistogram", "percentile"]

#: Relative precision of the latency histogram: buckets grow by 1%.
HISTOGRAM_GROWTH = 1.01


class LatencyHistogram:
    """Round-trip times in log-spaced buckets: constant memory, 1% precision.

    Keeping every sample of a long run at 100k messages per second would take gigabytes; the
    buckets (about 2,000 from 1 us to 1,000 s) keep percentiles within 1%. The maximum is exact.
    """

    def __init__(self) -> None:
        self._counts: dict[int, int] = {}
        #: Samples recorded.
        self.count = 0
        #: Largest sample, in seconds.
        self.max = 0.0
        self._sum = 0.0
        self._log_growth = math.log(HISTOGRAM_GROWTH)

    def record(self, seconds: float) -> None:
        """Add one round-trip time."""
        us = max(seconds * 1e6, 1.0)
        bucket = int(math.log(us) / self._log_growth)
        self._counts[bucket] = self._counts.get(bucket, 0) + 1
        self.count += 1
        self._sum += seconds
        if seconds > self.max:
            self.max = seconds

    @property
    def mean(self) -> float:
        """Mean round-trip time in seconds (0 without samples)."""
        return self._sum / self.count if self.count else 0.0

    def percentile(self, p: float) -> float:
        """The ``p``-th percentile (0-100) in seconds: its bucket's middle; 100 gives the max."""
        if not 0 <= p <= 100:
            raise ValueError("percentile must be between 0 and 100")
        if not self.count:
            return 0.0
        rank = max(1, math.ceil(self.count * p / 100))
        if rank >= self.count:
            return self.max
        seen = 0
        for bucket in sorted(self._counts):
            seen += self._counts[bucket]
            if seen >= rank:
                middle: float = HISTOGRAM_GROWTH ** (bucket + 0.5) / 1e6
                return min(middle, self.max)
        return self.max  # pragma: no cover - the loop always reaches rank


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (0-100) of samples sorted in ascending order.

    Interpolated linearly between the two closest ranks (numpy's default, "linear"): the
    median of ``[1, 2, 3, 4]`` is 2.5.

    Raises:
        ValueError: no samples.
    """
    if not sorted_values:
        raise ValueError("no values")
    k = (len(sorted_values) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)
