"""Offline evaluation: data sets and splits, the replay into Kafka, the in-process simulator,
protocols A (ranking on a held-out split) and B (prequential), batch baselines, ranking metrics
and the tuning search. The engine never imports this package."""
