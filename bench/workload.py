"""Synthetic workload for the benchmarks: catalogue, users and events with realistic skew.

* Items: ``n_items`` ids ``i000000``.., 1-2 of 16 categories, 2-4 of 64 tags, a log-normal price,
  2% unavailable. Popularity is Zipf: P(item of rank r) ~ 1 / r**zipf_s (ranks are a random
  permutation of the ids, so popularity does not follow the id order).
* Users: ``n_users`` ids ``u0000000``.. with age, gender, occupation and region attributes.
  Activity is Zipf too (P(user of rank r) ~ 1 / r**user_s): a few heavy users, a long tail.
* Events: every type of the contract in a shop/media-like mix (``EVENT_MIX``: mostly views and
  clicks, a few purchases, ratings 1-5 with ml-100k's rating distribution, 2% "not interested").

Everything comes from one seeded ``numpy.random.Generator``; the same arguments give the same
records. Only numpy, orjson and the standard library: the offline benchmarks import it too.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import orjson

CATEGORIES = ("books", "movies", "music", "games", "electronics", "audio", "running", "outdoor",
              "kitchen", "garden", "toys", "fashion", "beauty", "sports", "travel", "pets")
TAGS = tuple(f"t{n:02d}" for n in range(64))
OCCUPATIONS = ("student", "engineer", "artist", "doctor", "teacher", "writer", "retired",
               "sales", "lawyer", "other")
REGIONS = tuple(f"us-{d}" for d in range(10)) + ("non-us",)

# Event type -> share of events (normalised).
EVENT_MIX: dict[str, float] = {
    "view": 0.55, "click": 0.20, "like": 0.05, "share": 0.015, "comment": 0.015,
    "add_to_cart": 0.05, "purchase": 0.03, "rate": 0.06, "not_interested": 0.02,
}
RATING_P = np.array([0.061, 0.114, 0.271, 0.341, 0.213])  # ml-100k's 1..5 distribution


def zipf_p(n: int, s: float) -> np.ndarray:
    p = 1.0 / np.arange(1, n + 1, dtype=np.float64) ** s
    return p / p.sum()


@dataclass
class Workload:
    n_users: int = 10_000
    n_items: int = 20_000
    zipf_s: float = 1.1      # item popularity exponent
    user_s: float = 0.8      # user activity exponent
    seed: int = 7
    rng: np.random.Generator = field(init=False, repr=False)
    item_ids: list[str] = field(init=False, repr=False)
    user_ids: list[str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)
        self.item_ids = [f"i{n:06d}" for n in range(self.n_items)]
        self.user_ids = [f"u{n:07d}" for n in range(self.n_users)]
        self._item_rank = self.rng.permutation(self.n_items)   # rank -> item index
        self._user_rank = self.rng.permutation(self.n_users)
        self._item_p = zipf_p(self.n_items, self.zipf_s)
        self._user_p = zipf_p(self.n_users, self.user_s)
        self._types = list(EVENT_MIX)
        w = np.array([EVENT_MIX[t] for t in self._types])
        self._type_p = w / w.sum()
        self._seq = 0

    # ------------------------------------------------------------------ catalogue and users
    def catalog(self, ts_ms: int) -> list[dict[str, Any]]:
        rng = np.random.default_rng(self.seed + 1)
        out = []
        for n, item in enumerate(self.item_ids):
            ncat = 1 if rng.random() < 0.7 else 2
            cats = [CATEGORIES[c] for c in rng.choice(len(CATEGORIES), ncat, replace=False)]
            tags = [TAGS[t] for t in rng.choice(len(TAGS), int(rng.integers(2, 5)), replace=False)]
            out.append({"item_id": item, "ts": ts_ms, "title": f"Item {n} {cats[0]}",
                        "categories": cats, "tags": tags,
                        "price": round(float(rng.lognormal(3.2, 1.0)), 2),
                        "available": bool(rng.random() >= 0.02)})
        return out

    def users(self, ts_ms: int) -> list[dict[str, Any]]:
        rng = np.random.default_rng(self.seed + 2)
        return [{"user_id": u, "ts": ts_ms,
                 "attributes": {"age": int(rng.integers(16, 75)),
                                "gender": "F" if rng.random() < 0.5 else "M",
                                "occupation": OCCUPATIONS[int(rng.integers(len(OCCUPATIONS)))],
                                "region": REGIONS[int(rng.integers(len(REGIONS)))]}}
                for u in self.user_ids]

    # ------------------------------------------------------------------ events
    def events(self, n: int, ts_start: int, ts_step: float = 1.0,
               tag: str = "e") -> list[dict[str, Any]]:
        """``n`` events with ids ``<tag>-<seq>``; ts from ``ts_start`` every ``ts_step`` ms."""
        rng = self.rng
        users = self._user_rank[rng.choice(self.n_users, n, p=self._user_p)]
        items = self._item_rank[rng.choice(self.n_items, n, p=self._item_p)]
        types = rng.choice(len(self._types), n, p=self._type_p)
        ratings = rng.choice(5, n, p=RATING_P) + 1
        devices = rng.integers(0, 3, n)
        out = []
        for k in range(n):
            et = self._types[types[k]]
            self._seq += 1
            out.append({"event_id": f"{tag}-{self._seq}", "user_id": self.user_ids[users[k]],
                        "item_id": self.item_ids[items[k]], "event_type": et,
                        "ts": int(ts_start + k * ts_step),
                        "value": float(ratings[k]) if et == "rate" else None,
                        "context": {"device": ("web", "ios", "android")[devices[k]]}})
        return out

    def event_stream(self, tag: str = "live", chunk: int = 2_000) -> Iterator[dict[str, Any]]:
        """Endless events (ts is filled in by the caller at send time)."""
        while True:
            yield from self.events(chunk, 0, 0, tag)


def encode(record: dict[str, Any]) -> bytes:
    return orjson.dumps(record)


def now_ms() -> int:
    return time.time_ns() // 1_000_000
