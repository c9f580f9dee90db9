"""Everything around the engine, by role: the ``recsys`` command (``cli``), local
infrastructure (``local``: broker, cluster, topics, the job as a process, the stack harness,
the demo), the HTTP service (``serving``), offline evaluation (``evaluation``) and the sample
data (``sample_data``).
"""
