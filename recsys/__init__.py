"""Everything around the engine: the ``recsys`` command (``cli``), local infrastructure (Kafka
broker, topics, standalone cluster, job processes), the HTTP service, the sample stream and the
demo, and the offline side: MovieLens, splits, the simulator, the evaluation, its baselines and
the tuner.
"""
