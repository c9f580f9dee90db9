"""Pure helpers for the job's metrics (no pyflink).

Flink's Python metric API has counters, gauges and meters, but its "distribution" is not a
numeric metric that the Prometheus reporter can export. Latency is therefore exported as a
Prometheus-style cumulative histogram built from counters labelled ``le``: one counter per upper
bound (plus ``+Inf``), each counting the observations <= its bound, so that
``histogram_quantile(0.99, sum by (le) (rate(..._bucket[1m])))`` works in PromQL.
"""

from __future__ import annotations

from bisect import bisect_left

# Upper bounds in milliseconds of the event -> recommendation latency histogram.
LATENCY_BUCKETS_MS: tuple[float, ...] = (5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000)


def bucket_label(bound: float) -> str:
    return "+Inf" if bound == float("inf") else f"{bound:g}"


def histogram_labels(bounds: tuple[float, ...] = LATENCY_BUCKETS_MS) -> list[str]:
    """All ``le`` labels of the histogram, ascending, ending with ``+Inf``."""
    return [bucket_label(b) for b in bounds] + ["+Inf"]


def cumulative_buckets(value: float, bounds: tuple[float, ...] = LATENCY_BUCKETS_MS) -> list[str]:
    """The ``le`` labels whose counters an observation of ``value`` increments."""
    first = bisect_left(bounds, value)
    return [bucket_label(b) for b in bounds[first:]] + ["+Inf"]
