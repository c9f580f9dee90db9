"""Flink configuration options derived from the engine's settings: pure functions, no pyflink.

The job (``flink_jobs/io.py``) sets them on its environment; the local standalone cluster
(``recsys/local/cluster.py``) writes the reporter's into its ``config.yaml``; unit tests check them
without a JVM.
"""

from __future__ import annotations

from state_schemas.config import EngineConfig

PROMETHEUS_FACTORY = "org.apache.flink.metrics.prometheus.PrometheusReporterFactory"


def prometheus_reporter_settings(port: str) -> dict[str, str]:
    """Flink configuration of the PrometheusReporter, named ``prom``, on ``port`` (or a range).

    Label values are kept as they are (``filterLabelValueCharacters: false``): the default filter
    would turn the histogram's ``le="+Inf"`` into ``"_Inf"`` (which breaks
    ``histogram_quantile``) and ``user-events`` into ``user_events``.
    """
    return {
        "metrics.reporter.prom.factory.class": PROMETHEUS_FACTORY,
        "metrics.reporter.prom.port": str(port),
        "metrics.reporter.prom.filterLabelValueCharacters": "false",
    }


def restart_settings(cfg: EngineConfig) -> dict[str, str]:
    """Flink's restart-strategy options for ``job.restart_*`` (see ``JobConfig``)."""
    j = cfg.job
    if j.restart_strategy == "none":
        return {"restart-strategy.type": "none"}
    if j.restart_strategy == "fixed-delay":
        return {"restart-strategy.type": "fixed-delay",
                "restart-strategy.fixed-delay.attempts": str(j.restart_attempts),
                "restart-strategy.fixed-delay.delay": f"{j.restart_delay_ms} ms"}
    out = {"restart-strategy.type": "exponential-delay",
           "restart-strategy.exponential-delay.initial-backoff": f"{j.restart_delay_ms} ms",
           "restart-strategy.exponential-delay.max-backoff": f"{j.restart_max_delay_ms} ms",
           "restart-strategy.exponential-delay.backoff-multiplier": "2.0",
           "restart-strategy.exponential-delay.reset-backoff-threshold":
               f"{j.restart_reset_after_ms} ms",
           "restart-strategy.exponential-delay.jitter-factor": "0.1"}
    if j.restart_attempts > 0:
        out["restart-strategy.exponential-delay.attempts-before-reset-backoff"] = \
            str(j.restart_attempts)
    return out
