"""Latency percentiles: the histogram of fullduplex bench, the exact percentile of bench/loadgen."""

from __future__ import annotations

import pytest

from fullduplex.bench import LatencyHistogram, percentile


def test_histogram_percentiles() -> None:
    h = LatencyHistogram()
    for us in range(1, 10_001):  # 1 us .. 10 ms, uniform
        h.record(us / 1e6)
    assert h.count == 10_000
    assert h.max == pytest.approx(0.01)
    assert h.percentile(50) == pytest.approx(0.005, rel=0.01)
    assert h.percentile(99) == pytest.approx(0.0099, rel=0.01)
    assert h.percentile(100) == h.max
    assert h.mean == pytest.approx(0.0050005)


def test_histogram_edges() -> None:
    h = LatencyHistogram()
    assert h.percentile(50) == 0.0
    assert h.mean == 0.0
    h.record(0.0)  # below 1 us: counted in the first bucket
    assert 0 <= h.percentile(50) <= 1e-6
    with pytest.raises(ValueError):
        h.percentile(101)


def test_exact_percentile_interpolates_between_ranks() -> None:
    values = [1.0, 2.0, 3.0, 4.0]
    assert percentile(values, 50) == 2.5
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 4.0
    assert percentile(values, 90) == pytest.approx(3.7)
    assert percentile([7.0], 99) == 7.0
    with pytest.raises(ValueError):
        percentile([], 50)
