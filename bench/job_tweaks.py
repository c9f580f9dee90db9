"""Run the recsys job with Flink environment settings the configuration does not expose yet.

Bench-only: wraps ``flink_jobs/recsys_job.py`` unchanged and patches ``io.build_environment`` in
this process to apply the extra settings, so their effect can be measured before anyone adds them
to ``recsys/config.py``. Every other argument goes to the job as it is.

    .venv/bin/python bench/job_tweaks.py --buffer-timeout-ms 5 -- --set job.checkpoint_interval_ms=100 ...
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flink_jobs import io, recsys_job  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--buffer-timeout-ms", type=int, default=None,
                    help="StreamExecutionEnvironment.set_buffer_timeout (Flink's default: 100 ms)")
    args, rest = ap.parse_known_args()
    if rest and rest[0] == "--":
        rest = rest[1:]
    original = io.build_environment

    def build_environment(cfg):
        env = original(cfg)
        if args.buffer_timeout_ms is not None:
            env.set_buffer_timeout(args.buffer_timeout_ms)
        return env

    io.build_environment = build_environment
    return recsys_job.main(rest)


if __name__ == "__main__":
    raise SystemExit(main())
