from udfs.observability import LATENCY_BUCKETS_MS, cumulative_buckets, histogram_labels


def test_labels_end_with_inf():
    labels = histogram_labels()
    assert labels[-1] == "+Inf" and len(labels) == len(LATENCY_BUCKETS_MS) + 1
    assert labels[:3] == ["5", "10", "25"]


def test_observation_increments_its_bucket_and_all_above():
    assert cumulative_buckets(7) == histogram_labels()[1:]
    assert cumulative_buckets(10) == histogram_labels()[1:]  # le is inclusive
    assert cumulative_buckets(0) == histogram_labels()
    assert cumulative_buckets(60_000) == ["+Inf"]
