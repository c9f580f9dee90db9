"""Benchmark: the vectorised similarity kernel vs the plain-Python reference on one flush.

A realistic flush of one shard: ``--pairs`` pair updates (both directions of half as many
co-interactions) over ``--items`` items drawn with Zipf-like skew, every item already holding a
row of ~``--row-entries`` co-occurrence entries, top_k=20, max_pairs_per_item=200. Both
implementations get the same input (rows as the operator reads them, via ``from_state``); each
is timed best of ``--repeat``, the kernel first with the default allocator (``kernel_s``, the
headline ``speedup``), then again after ``tune_allocator()`` (``kernel_tuned_alloc_s``). The
results are printed and written as JSON to ``--out``.

    .venv/bin/python bench/bench_similarity_kernel.py [--out reports/bench_similarity_kernel.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from state_schemas.config import DAY_MS, SimilarityConfig  # noqa: E402
from udfs.similarity import (ItemRow, PairBatch, apply_pair_updates,  # noqa: E402
                             apply_pair_updates_reference, tune_allocator)

LANDMARK_MS = 1_700_000_000_000
NOW_MS = LANDMARK_MS + 3 * DAY_MS
ACTION_WEIGHTS = np.array([1.0, 2.0, 4.0, 5.0, 6.0, 10.0])


def zipf_items(rng: np.random.Generator, n_items: int, size: int, s: float = 1.1) -> np.ndarray:
    """Item indices in [0, n_items) with P(rank r) ~ 1 / r**s (a popularity long tail)."""
    p = 1.0 / np.arange(1, n_items + 1) ** s
    return rng.choice(n_items, size=size, p=p / p.sum())


def build_input(n_pairs: int, n_items: int, row_entries: int, seed: int):
    rng = np.random.default_rng(seed)
    ids = np.array([f"item-{k:07d}" for k in rng.permutation(10 * n_items)[:n_items]],
                   dtype=object)
    # Existing rows: ~row_entries entries per item, cols skewed towards popular items.
    rows: dict[str, ItemRow] = {}
    occurrence: dict[str, float] = {}
    row_sums = np.zeros(n_items)
    for i in range(n_items):
        k = max(1, int(rng.normal(row_entries, row_entries / 10)))
        cols = np.unique(zipf_items(rng, n_items, 3 * k))
        cols = cols[cols != i][:k]
        vals = rng.gamma(1.5, 3.0, size=len(cols)) * 2.0 ** ((NOW_MS - DAY_MS - LANDMARK_MS)
                                                           / (30 * DAY_MS))
        obs = rng.integers(1, 40, size=len(cols))
        state = ItemRow.from_columns(ids[cols].tolist(), vals, obs).to_state()
        rows[ids[i]] = ItemRow.from_state(state)  # as the operator reads it
        row_sums[i] = vals.sum()
    # Pair updates: both directions of n_pairs / 2 co-interactions within a 200 ms flush.
    half = n_pairs // 2
    a = zipf_items(rng, n_items, half)
    b = zipf_items(rng, n_items, half)
    b = np.where(a == b, (b + 1) % n_items, b)
    w = rng.choice(ACTION_WEIGHTS, size=half)
    ts = NOW_MS + rng.integers(0, 200, size=half)
    batch = PairBatch(np.concatenate([ids[a], ids[b]]), np.concatenate([ids[b], ids[a]]),
                      np.concatenate([w, w]), np.concatenate([ts, ts]))
    f = 2.0 ** ((NOW_MS - LANDMARK_MS) / (30 * DAY_MS))
    np.add.at(row_sums, a, w * f)
    np.add.at(row_sums, b, w * f)
    for i in range(n_items):
        occurrence[ids[i]] = float(row_sums[i]) * 1.2
    return rows, batch, occurrence


def best_of(fn, repeat: int) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def same_output(a: dict[str, ItemRow], b: dict[str, ItemRow]) -> bool:
    if a.keys() != b.keys():
        return False
    for item, ra in a.items():
        rb = b[item]
        if ra.cols != rb.cols or not np.array_equal(ra.obs, rb.obs):
            return False
        if not np.allclose(ra.vals, rb.vals, rtol=1e-9, atol=0):
            return False
        if [c for c, _ in ra.neighbors] != [c for c, _ in rb.neighbors]:
            return False
        if not np.allclose([s for _, s in ra.neighbors], [s for _, s in rb.neighbors],
                           rtol=1e-9, atol=0):
            return False
    return True


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "reports" / "bench_similarity_kernel.json"))
    ap.add_argument("--pairs", type=int, default=20_000)
    ap.add_argument("--items", type=int, default=2_000)
    ap.add_argument("--row-entries", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args(argv)

    cfg = SimilarityConfig(top_k=20, max_pairs_per_item=200, half_life_ms=30 * DAY_MS)
    rows, batch, occurrence = build_input(args.pairs, args.items, args.row_entries, args.seed)
    run_kernel = lambda: apply_pair_updates(rows, batch, occurrence, cfg, LANDMARK_MS)  # noqa
    kernel_s, out_k = best_of(run_kernel, args.repeat)
    reference_s, out_r = best_of(
        lambda: apply_pair_updates_reference(rows, batch, occurrence, cfg, LANDMARK_MS),
        args.repeat)
    tuned = tune_allocator()
    kernel_tuned_s, _ = best_of(run_kernel, args.repeat)
    # What the operator also pays per flush: reading and writing the touched rows' state.
    states = {k: rows[k].to_state() for k in out_k}
    state_io_s, _ = best_of(
        lambda: [ItemRow.from_state(s) for s in states.values()]
        and [r.to_state() for r in out_k.values()], args.repeat)

    report = {
        "kernel_s": round(kernel_s, 6),
        "reference_s": round(reference_s, 6),
        "speedup": round(reference_s / kernel_s, 2),
        "kernel_tuned_alloc_s": round(kernel_tuned_s, 6) if tuned else None,
        "speedup_tuned_alloc": round(reference_s / kernel_tuned_s, 2) if tuned else None,
        "pairs": len(batch),
        "items": args.items,
        "touched_rows": len(out_k),
        "entries_before": int(sum(len(rows[k]) for k in out_k)),
        "entries_after": int(sum(len(r) for r in out_k.values())),
        "state_io_s": round(state_io_s, 6),
        "outputs_equal": same_output(out_k, out_r),
        "config": {"top_k": cfg.top_k, "max_pairs_per_item": cfg.max_pairs_per_item,
                   "metric": cfg.metric, "row_entries": args.row_entries, "repeat": args.repeat},
        "machine": {"python": platform.python_version(), "numpy": np.__version__,
                    "platform": platform.platform(), "cpu": cpu_model(),
                    "cpus": os.cpu_count(), "loadavg_1m": round(os.getloadavg()[0], 2)},
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }
    print(json.dumps(report, indent=2))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if report["outputs_equal"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
