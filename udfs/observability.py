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


class MetricDeltas:
    """Metric updates of one micro-batch, aggregated in Python and handed to Java once.

    Counters add up within the batch; gauges keep their last value. ``drain`` returns the flat
    list the operator host applies (``flink_jobs/batch_host.py``): group path ("k=v,k=v", the
    Flink metric groups in order), name, kind (0 counter increment, 1 gauge), value.
    """

    __slots__ = ("counters", "gauges")

    def __init__(self) -> None:
        self.counters: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self.gauges: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}

    @staticmethod
    def path(labels: tuple[tuple[str, str], ...]) -> str:
        return ",".join(f"{k}={v}" for k, v in labels)

    def inc(self, name: str, n: float = 1, labels: tuple[tuple[str, str], ...] = ()) -> None:
        key = (name, labels)
        self.counters[key] = self.counters.get(key, 0) + n

    def set(self, name: str, value: float, labels: tuple[tuple[str, str], ...] = ()) -> None:
        self.gauges[(name, labels)] = float(value)

    def observe_latency(self, latency_ms: float) -> None:
        """One observation of the event -> recommendation latency histogram."""
        for le in cumulative_buckets(latency_ms):
            self.inc("recommendation_latency_ms_bucket", 1, (("le", le),))
        self.inc("recommendation_latency_ms_sum", latency_ms)
        self.inc("recommendation_latency_ms_count", 1)

    def drain(self) -> list[tuple[str, str, int, float]]:
        path = self.path
        out = [(path(labels), n, 0, v) for (n, labels), v in self.counters.items()]
        out += [(path(labels), n, 1, v) for (n, labels), v in self.gauges.items()]
        self.counters = {}
        self.gauges = {}
        return out
