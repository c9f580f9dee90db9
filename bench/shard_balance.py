"""How Flink spreads the job's keys over subtasks: key groups, max parallelism, shard balance.

Re-implements Flink's ``KeyGroupRangeAssignment`` (``MathUtils.murmurHash`` of the key's Java
``hashCode()``, modulo the max parallelism = number of key groups, then
``keyGroup * parallelism / maxParallelism``) to show, without a cluster:

* how the ``similarity.shards`` integer keys (``Integer.hashCode() == value``) land on the
  similarity operator's subtasks — with few shards the load is far from even;
* how user ids (``String.hashCode()``) spread (they are many, so evenly).

    .venv/bin/python bench/shard_balance.py [--parallelism 1,2,4,8,16,32] [--shards 1,2,4,8,64,256]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter


def _i32(x: int) -> int:
    x &= 0xFFFFFFFF
    return x - (1 << 32) if x >= 1 << 31 else x


def _rotl(x: int, r: int) -> int:
    x &= 0xFFFFFFFF
    return _i32((x << r) | (x >> (32 - r)))


def _bitmix(x: int) -> int:
    x &= 0xFFFFFFFF
    x ^= x >> 16
    x = (x * 0x85EBCA6B) & 0xFFFFFFFF
    x ^= x >> 13
    x = (x * 0xC2B2AE35) & 0xFFFFFFFF
    x ^= x >> 16
    return _i32(x)


def murmur_hash(code: int) -> int:
    """org.apache.flink.util.MathUtils.murmurHash(int)."""
    code = _i32(code * 0xCC9E2D51)
    code = _rotl(code, 15)
    code = _i32(code * 0x1B873593)
    code = _rotl(code, 13)
    code = _i32(code * 5 + 0xE6546B64)
    code ^= 4
    code = _bitmix(code)
    if code >= 0:
        return code
    return -code if code != -(1 << 31) else 0


def java_string_hash(s: str) -> int:
    h = 0
    for ch in s.encode("utf-16-be").decode("utf-16-be"):
        h = _i32(31 * h + ord(ch))
    return h


def default_max_parallelism(p: int) -> int:
    """KeyGroupRangeAssignment.computeDefaultMaxParallelism."""
    n = p + p // 2
    pow2 = 1 << max(0, (n - 1).bit_length())
    return min(max(pow2, 128), 1 << 15)


def subtask(key_hash: int, max_par: int, p: int) -> int:
    return (murmur_hash(key_hash) % max_par) * p // max_par


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parallelism", default="1,2,4,8,16,32")
    ap.add_argument("--shards", default="1,2,4,8,16,64,256")
    ap.add_argument("--max-parallelism", type=int, default=0, help="0: Flink's default")
    ap.add_argument("--users", type=int, default=100_000)
    args = ap.parse_args(argv)
    out = {"shards": [], "users": []}
    for p in map(int, args.parallelism.split(",")):
        mp = args.max_parallelism or default_max_parallelism(p)
        for s in map(int, args.shards.split(",")):
            if s < p:
                continue
            load = Counter(subtask(k, mp, p) for k in range(s))
            busiest = max(load.values())
            out["shards"].append({"parallelism": p, "max_parallelism": mp, "shards": s,
                                  "idle_subtasks": p - len(load),
                                  "busiest_subtask_share": round(busiest / s, 3),
                                  "ideal_share": round(1 / p, 3),
                                  "speedup_bound": round(s / busiest, 2)})
        load = Counter(subtask(java_string_hash(f"u{k:07d}"), mp, p) for k in range(args.users))
        out["users"].append({"parallelism": p, "max_parallelism": mp,
                             "busiest_subtask_share": round(max(load.values()) / args.users, 4),
                             "ideal_share": round(1 / p, 4)})
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
