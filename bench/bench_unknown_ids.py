"""Memory under a flood of unknown item ids (part of ``make bench``; issue 13, "bounded state").

The engine (both operators, through the simulator: the job's own classes, without Flink) takes
a catalogue of ``--known`` items, then ``--events`` events from ``--users`` users, each naming
an item id never seen before, with one event in ten on a catalogue item. Every ``--every``
events it records the process's resident memory and the size of every global structure: the
items the recommender's and the item operator's tables hold, the resident similarity rows, the
similarity rows in keyed state, the per-user state. Once per admission policy:

* ``similarity.admit = "catalogue"``: unknown ids stay out of the global models;
* ``similarity.admit = "all"``: they enter, the tables' bound (``recommend.model_max_items``,
  lowered to ``--max-items`` so the run reaches it) evicts, and similarity rows not written
  for ``--row-ttl-ms`` leave keyed state (``similarity.row_ttl_ms``, Flink's state TTL, which
  the simulator applies on its virtual clock of 1 ms per event).

Per-user state grows with the users (bounded per user by the profile's lists), not with the
items; the report separates the two.

    python bench/bench_unknown_ids.py --out reports/unknown_ids.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_e2e import code_version, machine  # noqa: E402
from recsys.evaluation.simulate import EngineSimulator  # noqa: E402
from state_schemas.config import load_config  # noqa: E402

T0 = 1_767_225_600_000


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def sizes(sim: EngineSimulator) -> dict[str, Any]:
    return {
        "rss_mb": round(rss_mb(), 1),
        "recommender_items": len(sim.user.model.items),
        "item_operator_items": len(sim.item.stats.items),
        "resident_similarity_rows": len(sim.item.shard),
        "similarity_rows_in_keyed_state": sum(1 for v in sim.item_state.values() if v[0]),
        "users_in_keyed_state": len(sim.user_state),
        "user_state_mb": round(sum(len(b) for v in sim.user_state.values() for b in v if b)
                               / 2**20, 1),
    }


def run(admit: str, args: argparse.Namespace) -> dict[str, Any]:
    cfg = load_config(overrides=[f'similarity.admit="{admit}"',
                                 f"recommend.model_max_items={args.max_items}",
                                 f"similarity.row_ttl_ms={args.row_ttl_ms}",
                                 "validation.min_ts_ms=0"], environ={})
    sim = EngineSimulator(cfg, recommend_on_events=False)
    sim.add_items([{"item_id": f"known-{n}", "ts": T0, "title": f"Known {n}",
                    "categories": [f"c{n % 20}"], "tags": [], "price": 1.0, "available": True}
                   for n in range(args.known)])
    sim.drain()
    gc.collect()
    rows = [{"events": 0, **sizes(sim)}]
    started = time.perf_counter()
    n = 0
    while n < args.events:
        chunk = []
        for i in range(n, min(n + args.every, args.events)):
            item = f"known-{(i * 7919) % args.known}" if i % 10 == 0 else f"unknown-{i}"
            chunk.append({"event_id": f"x{i}", "user_id": f"u{i % args.users}", "item_id": item,
                          "event_type": "view", "ts": T0 + i, "value": None})
        sim.process_events(chunk, batch=500)
        n += len(chunk)
        sim.drain()
        gc.collect()
        rows.append({"events": n, **sizes(sim)})
        print(f"[unknown-ids {admit}] {rows[-1]}", flush=True)
    return {"admit": admit, "seconds": round(time.perf_counter() - started, 1), "samples": rows}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--known", type=int, default=2_000)
    ap.add_argument("--max-items", type=int, default=50_000)
    ap.add_argument("--every", type=int, default=100_000)
    ap.add_argument("--row-ttl-ms", type=int, default=120_000,
                    help="similarity.row_ttl_ms (the simulator's clock: 1 ms per event)")
    ap.add_argument("--admit", action="append", default=[],
                    help="catalogue and/or all (default: both)")
    ap.add_argument("--out", default=str(ROOT / "reports" / "unknown_ids.json"))
    args = ap.parse_args(argv)
    report = {"command": " ".join(["python", "bench/bench_unknown_ids.py",
                                   *(argv if argv is not None else sys.argv[1:])]),
              "machine": machine(), "code": code_version(),
              "runs": [run(a, args) for a in (args.admit or ["catalogue", "all"])]}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
