"""The command-line options that choose a configuration (``--config``, ``--set``,
``--bootstrap-servers``), shared by every ``recsys`` sub-command and the stand-alone module
entry points, and their conversion to the one typed ``EngineConfig``."""

from __future__ import annotations

import argparse

from state_schemas.config import EngineConfig, load_config


def add_config_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="TOML configuration file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one setting (repeatable), e.g. --set similarity.top_k=30")
    p.add_argument("--bootstrap-servers", metavar="H:P", help="Kafka bootstrap servers")


def config_from_arguments(args: argparse.Namespace) -> EngineConfig:
    """The configuration file and ``--set`` overrides, then the dedicated options on top."""
    overrides = list(args.overrides)
    if getattr(args, "bootstrap_servers", None):
        overrides.append(f'kafka.bootstrap_servers="{args.bootstrap_servers}"')
    if getattr(args, "parallelism", None):
        overrides.append(f"job.parallelism={args.parallelism}")
    if getattr(args, "partitions", None):
        overrides.append(f"kafka.partitions={args.partitions}")
    return load_config(args.config, overrides)
