"""What one EASE refresh costs as the head grows (part of ``make bench``; issue 14).

For each head size M the engine's own :class:`udfs.ease.EaseHead` takes the recent-item sets
of ``--users`` synthetic users (``--set-size`` items each, Zipf-popular items over the head), so
that every head item has a non-zero diagonal, then runs :meth:`EaseHead.refresh` (solve and
publish every row) ``--repeats`` times. Each M runs in a fresh process pinned to one BLAS
thread, so the report gives one core's time and the process's peak resident memory (the Gram
matrix in float32 plus the float64 working copies of the solve).

    python bench/bench_ease.py --out reports/ease.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

ONE_THREAD = {v: "1" for v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}


def one(m: int, users: int, set_size: int, repeats: int, seed: int) -> dict:
    """One head size, in this process (the parent runs it in a child)."""
    import numpy as np

    from state_schemas.config import load_config
    from udfs.ease import EaseHead

    cfg = load_config(overrides=[f"similarity.ease_head_items={m}"], environ={})
    ease = EaseHead(cfg)
    rng = np.random.default_rng(seed)
    ids = [f"i{j}" for j in range(m)]
    for start in range(0, m, 200):  # every item admitted in order, by sets that then leave
        chunk = ids[start:start + 200]  # again (G back to zero)
        ease.apply([([], chunk, []), ([], [], chunk)])
    p = 1.0 / np.arange(1, m + 1) ** 0.8
    p /= p.sum()
    t0 = time.perf_counter()
    for _ in range(users):
        chosen = np.unique(rng.choice(m, set_size, p=p))
        ease.apply([([], [ids[j] for j in chosen.tolist()], [])])
    fill_s = time.perf_counter() - t0
    n_active = int((np.diag(ease.gram[:m, :m]) > 0).sum())
    times = []
    for r in range(repeats):
        t0 = time.perf_counter()
        rows = ease.refresh(r)
        times.append(time.perf_counter() - t0)
    return {"head_items": m, "active_items": n_active, "rows_published": len(rows),
            "users": users, "set_size": set_size, "fill_seconds": fill_s,
            "refresh_seconds": times, "refresh_seconds_best": min(times),
            "gram_bytes": int(ease.gram.nbytes),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000,5000,10000")
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument("--set-size", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default="reports/ease.json")
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(one(args.child, args.users, args.set_size, args.repeats, args.seed)))
        return 0
    from bench_e2e import code_version, machine

    results = []
    for m in (int(x) for x in args.sizes.split(",")):
        out = subprocess.run(
            [sys.executable, __file__, "--child", str(m), "--users", str(args.users),
             "--set-size", str(args.set_size), "--repeats", str(args.repeats),
             "--seed", str(args.seed)],
            env={**os.environ, **ONE_THREAD}, capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        results.append(r)
        print(f"M={m}: refresh {r['refresh_seconds_best']:.2f} s (best of {args.repeats}), "
              f"peak RSS {r['peak_rss_mb']:.0f} MB, Gram {r['gram_bytes'] / 2**20:.0f} MB",
              flush=True)
    report = {"command": " ".join([Path(sys.argv[0]).name] + (argv or sys.argv[1:])),
              "machine": machine(), "code": code_version(), "one_blas_thread": True,
              "results": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
