"""Protocol B (prequential, in time order): its cases and their summary.

A case is an event whose user had an earlier event: the event's item is looked up in the list
the user was shown after that earlier event (the list it triggered). The job (lists read from
its ``recommendations`` topic), the simulator and the batch baselines each record the list shown
after every event and go through the same two functions, so the protocol is written once.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, NamedTuple, Sequence

import numpy as np

from recsys.evaluation.metrics import hit_and_rr, rank_of

WEEK_MS = 7 * 86_400_000

# event id -> (variant, the items shown after that event)
ListsAfter = Mapping[str, tuple[str, Sequence[str]]]


class Case(NamedTuple):
    ts: int
    user_id: str
    variant: str
    rank: int  # 1-based rank of the event's item in the previous list; 0 = not in its top k


def time_range(events: Iterable[Mapping[str, Any]]) -> tuple[int, int]:
    """The first event time of ``events`` and the middle of their time range: protocol B's
    second half (and its frozen model's freeze) starts at the middle."""
    ts = [e["ts"] for e in events]
    first = min(ts)
    return first, (first + max(ts)) // 2


def cases(events: Iterable[Mapping[str, Any]], lists_after: ListsAfter, k: int,
          users: set[str] | None = None, since_ts: int | None = None) -> list[Case]:
    """The cases of ``events`` (in event-time order): each event whose user's previous event
    has a list in ``lists_after``; only ``users`` if given, only events at or after
    ``since_ts`` if given."""
    previous: dict[str, str] = {}
    out = []
    for e in events:
        u = e["user_id"]
        p = previous.get(u)
        if (p is not None and p in lists_after and (users is None or u in users)
                and (since_ts is None or e["ts"] >= since_ts)):
            variant, items = lists_after[p]
            out.append(Case(e["ts"], u, variant, rank_of(e["item_id"], items, k)))
        previous[u] = e["event_id"]
    return out


def summarise(cases_: Sequence[Case], t0: int, t_mid: int, k: int) -> dict[str, Any]:
    """HitRate@k and MRR@k overall, over the second half (``ts >= t_mid``), per week of event
    time since ``t0`` and per A/B variant."""
    ranks = np.array([c.rank for c in cases_], dtype=np.int64)
    ts = np.array([c.ts for c in cases_], dtype=np.int64)
    hr, mrr = hit_and_rr(ranks)
    second = ts >= t_mid
    hr2, mrr2 = hit_and_rr(ranks[second])
    weeks: dict[int, list[int]] = {}
    for t, r in zip(ts.tolist(), ranks.tolist()):
        weeks.setdefault((t - t0) // WEEK_MS, []).append(r)
    per_week = []
    for w in sorted(weeks):
        h, m = hit_and_rr(np.array(weeks[w]))
        per_week.append({"week": int(w), "start_ms": int(t0 + w * WEEK_MS), "cases": len(weeks[w]),
                         f"hit_rate@{k}": h, f"mrr@{k}": m})
    variants: dict[str, Any] = {}
    for v in sorted({c.variant for c in cases_}):
        sel = np.array([c.variant == v for c in cases_], dtype=bool)
        h, m = hit_and_rr(ranks[sel])
        h2, m2 = hit_and_rr(ranks[sel & second])
        variants[v] = {"cases": int(sel.sum()), f"hit_rate@{k}": h, f"mrr@{k}": m,
                       f"second_half_hit_rate@{k}": h2, f"second_half_mrr@{k}": m2}
    return {"cases": len(cases_), f"hit_rate@{k}": hr, f"mrr@{k}": mrr,
            "second_half_cases": int(second.sum()), f"second_half_hit_rate@{k}": hr2,
            f"second_half_mrr@{k}": mrr2, "per_week": per_week, "per_variant": variants}
