"""Python CPU per event on the hot path, and the compiled kernels against their Python twins.

Replays the synthetic workload (``bench/workload.py``: 10k users, 20k Zipf items) through the
job's own engine — ``udfs.user_side.UserSide`` and ``udfs.item_side.ItemSide``, driven by the
simulator (``recsys/evaluation/simulate.py``) in micro-batches of ``--batch`` records, as the job's user
operator takes them from a backlog — and measures the CPU time (``time.thread_time``) spent in
the two engines per event, after ``--warm`` events have grown the model to a steady size.
No Flink, no Kafka: what the replay cannot see is the Java side (Kafka clients, network
stack, the micro-batch operator's state access and conversions), which ``make bench`` measures
end to end.

It also times the two kernels of the hot path against their plain-Python twins
(``udfs/jit.py``) on inputs captured from the replay: the scoring kernel
(``udfs.recommend.score_candidates``) and the similarity kernel (``udfs.similarity.apply_pairs``).

A digest (crc32) of every recommendation the replay made identifies its output: two versions of
the code that make the same recommendations give the same digest.

    .venv/bin/python bench/bench_hot_path.py [--warm 40000 --events 6000 --batch 500] [--set k=v]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import zlib
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import numpy as np  # noqa: E402

import udfs.item_side as item_side  # noqa: E402
import udfs.recommend as recommend  # noqa: E402
import udfs.similarity as similarity  # noqa: E402
import udfs.user_side as user_side  # noqa: E402
from recsys.evaluation.simulate import EngineSimulator  # noqa: E402
from state_schemas.config import load_config  # noqa: E402
from udfs import jit  # noqa: E402
from workload import Workload, now_ms  # noqa: E402


class CpuMeter:
    """Accumulates the thread CPU time of calls to one method (patched in place)."""

    def __init__(self, owner: Any, name: str) -> None:
        self.seconds = 0.0
        self.calls = 0
        original = getattr(owner, name)
        meter = self

        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.thread_time()
            try:
                return original(*args, **kwargs)
            finally:
                meter.seconds += time.thread_time() - t0
                meter.calls += 1

        setattr(owner, name, timed)
        self.restore = lambda: setattr(owner, name, original)


def capture(module: Any, name: str, keep: int) -> tuple[list[tuple], Callable[[], None]]:
    """Record the arguments of the first ``keep`` calls of ``module.name`` (copies of small
    arrays, so later in-place updates do not change them)."""
    calls: list[tuple] = []
    original = getattr(module, name)

    def spy(*args: Any) -> Any:
        if len(calls) < keep:
            calls.append(tuple(a.copy() if isinstance(a, np.ndarray) else a for a in args))
        return original(*args)

    setattr(module, name, spy)
    return calls, lambda: setattr(module, name, original)


def time_calls(fn: Callable, calls: list[tuple], repeat: int = 1) -> float:
    """Mean seconds per call (arguments copied afresh for every call: kernels write in place)."""
    total = 0.0
    for _ in range(repeat):
        for args in calls:
            fresh = [a.copy() if isinstance(a, np.ndarray) else a for a in args]
            t0 = time.perf_counter()
            fn(*fresh)
            total += time.perf_counter() - t0
    return total / (repeat * len(calls))


def with_twins(module: Any, names: list[str]) -> Callable[[], None]:
    """Swap the compiled helpers a kernel calls for their Python twins (so the twin of a kernel
    runs pure Python throughout); returns the undo."""
    saved = {n: getattr(module, n) for n in names}
    for n, f in saved.items():
        setattr(module, n, getattr(f, "py", f))
    return lambda: [setattr(module, n, f) for n, f in saved.items()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--warm", type=int, default=40_000)
    ap.add_argument("--events", type=int, default=6_000)
    ap.add_argument("--batch", type=int, default=500, help="records per user-operator batch")
    ap.add_argument("--rate", type=float, default=5_000.0,
                    help="events per second of virtual processing time")
    ap.add_argument("--twin-calls", type=int, default=30)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--out", default="")
    args = ap.parse_args(argv)

    cfg = load_config(overrides=args.overrides, environ={})
    wl = Workload(n_users=10_000, n_items=20_000)
    t = now_ms()
    n = args.warm + args.events
    events = list(wl.events(n, t - 3_600_000, 3_600_000 / n, tag="hot"))
    sim = EngineSimulator(cfg, ms_per_event=1000.0 / args.rate, wall_now_ms=t)
    sim.add_items(list(wl.catalog(t - 86_400_000)))
    sim.add_attributes(list(wl.users(t - 86_400_000)))
    started = time.perf_counter()
    sim.process_events(events[:args.warm], args.batch)
    warm_s = time.perf_counter() - started

    meters = {"user operator engine": CpuMeter(user_side.UserSide, "process"),
              "item operator engine": CpuMeter(item_side.ItemSide, "process"),
              "  of which scoring kernel": CpuMeter(recommend, "score_candidates"),
              "  of which similarity kernel": CpuMeter(similarity, "apply_pairs")}
    scoring_calls, undo1 = capture(recommend, "score_candidates", args.twin_calls)
    pair_calls, undo2 = capture(similarity, "apply_pairs", 3)
    measured = events[args.warm:]
    made = sim.process_events(measured, args.batch)
    undo1()
    undo2()
    for m in meters.values():
        m.restore()
    digest = 0
    for r in made:
        digest = zlib.crc32(json.dumps([r.user_id, r.trigger_event_id, r.items, r.reasons],
                                       separators=(",", ":")).encode(), digest)

    per_event = {k: round(m.seconds / len(measured) * 1e6, 1) for k, m in meters.items()}
    python_per_event = round(per_event["user operator engine"]
                             + per_event["item operator engine"], 1)
    # kernels against their twins (the twin also runs the helpers it calls in pure Python)
    compiled = time_calls(recommend.score_candidates, scoring_calls, repeat=3)
    undo = with_twins(recommend, ["lex_order", "best_n", "_hash_set", "_in_set",
                                  "sorted_contains"])
    twin = time_calls(recommend.score_candidates.py, scoring_calls[:max(3, len(scoring_calls) // 3)])
    undo()
    pair_compiled = time_calls(similarity.apply_pairs, pair_calls, repeat=3)
    undo = with_twins(similarity, ["lex_order", "pair_score"])
    pair_twin = time_calls(similarity.apply_pairs.py, pair_calls[:1])
    undo()
    report = {
        "command": " ".join([sys.executable] + sys.argv),
        "machine": {"cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                    "python": platform.python_version(), "numpy": np.__version__,
                    "jit": jit.JIT_ENABLED, "loadavg": [round(x, 2) for x in os.getloadavg()]},
        "settings": {"warm_events": args.warm, "measured_events": len(measured),
                     "batch_records": args.batch, "virtual_rate": args.rate,
                     "overrides": args.overrides},
        "warm_seconds": round(warm_s, 1),
        "cpu_us_per_event": per_event,
        "python_cpu_us_per_event": python_per_event,
        "recommendations": len(made),
        "recommendations_crc32": digest,
        "scoring_kernel": {"compiled_us": round(compiled * 1e6, 1),
                           "python_twin_us": round(twin * 1e6, 1),
                           "speedup": round(twin / compiled, 1), "calls": len(scoring_calls)},
        "similarity_kernel": {"compiled_ms": round(pair_compiled * 1e3, 2),
                              "python_twin_ms": round(pair_twin * 1e3, 1),
                              "speedup": round(pair_twin / pair_compiled, 1),
                              "pairs_per_flush": int(np.mean([len(c[1]) for c in pair_calls]))
                              if pair_calls else 0},
    }
    print(json.dumps(report, indent=1))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
