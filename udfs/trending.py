"""Forward-decayed popularity counters ("what is trending").

Forward decay (Cormode et al., 2009) keeps one number per key and never has to touch the other
keys when time passes: an event of weight ``w`` at time ``ts`` adds

    w * 2 ** ((ts - landmark) / half_life)

to its key's stored value, and the decayed score at time ``now`` is the stored value times
``2 ** (-(now - landmark) / half_life)``. So an event one half-life older than another counts
exactly half as much, whatever ``now`` is. Because that factor is the same for every key of one
counter, *the ranking of a counter's keys does not depend on ``now``* and the top-n list can be
maintained incrementally.

Numerics: stored values grow like ``2 ** (age of the newest event / half_life)``. A float64
overflows past ``2 ** 1024``, so the counter *re-bases* (moves its landmark forward to the newest
timestamp and scales every stored value down by the same factor) once the newest event is more than
``rebase_after`` half-lives (64 by default) past the landmark. With re-basing switched off, an
event more than ``MAX_EXPONENT`` half-lives past the landmark raises ``ValueError`` instead of
silently storing ``inf``; scoring at a ``now`` more than ``MAX_EXPONENT`` half-lives *before* the
landmark raises ``ValueError`` too. Values of very old events underflow to 0, which is their true
value to float precision.

Popularity only grows: counters take non-negative weights (``ValueError`` otherwise), and
``TrendingModel.record`` ignores negative weights (``not_interested``).

Top-n: with ``top_cache_size = M > 0`` a counter keeps the indices of its M largest keys up to
date on every add (exact, because values only grow: a key outside the top set can only enter it
when it is itself incremented). ``top(n)`` then sorts those M keys instead of partitioning every
key, and falls back to ``np.argpartition`` over all keys when the cache cannot answer exactly
(n + excluded keys > M, or a tie with the cache's smallest value at the cut).

State (``to_state``/``from_state``) is plain containers with a ``"v"`` version, as everywhere in
``state_schemas``; the top cache is not stored, it is rebuilt on first use.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Collection, Iterable, Sequence

import numpy as np

COUNTER_STATE_VERSION = 1
TRENDING_STATE_VERSION = 1

# 2 ** 1000 ~ 1e301 leaves 2 ** 24 of headroom below float64's max for the weights themselves.
MAX_EXPONENT = 1000.0
DEFAULT_REBASE_AFTER = 64.0  # half-lives; stored values stay below weight * 2**64


class DecayedCounter:
    """Forward-decayed counters of string keys, stored in numpy arrays (index map grows by doubling)."""

    __slots__ = ("half_life_ms", "landmark", "rebase_after", "top_cache_size",
                 "_keys", "_index", "_values", "_top", "_ranked")

    def __init__(self, half_life_ms: float, *, landmark: int | None = None,
                 top_cache_size: int = 0, rebase_after: float | None = DEFAULT_REBASE_AFTER,
                 initial_capacity: int = 16) -> None:
        if not (isinstance(half_life_ms, (int, float)) and math.isfinite(half_life_ms)
                and half_life_ms > 0):
            raise ValueError(f"half_life_ms must be a positive number, got {half_life_ms!r}")
        if rebase_after is not None and not 0 < rebase_after <= MAX_EXPONENT:
            raise ValueError(f"rebase_after must be in (0, {MAX_EXPONENT}] or None")
        if top_cache_size < 0:
            raise ValueError("top_cache_size must be >= 0")
        self.half_life_ms = half_life_ms
        self.landmark = landmark  # set by the first add when None
        self.rebase_after = rebase_after
        self.top_cache_size = int(top_cache_size)
        self._keys: list[str] = []
        self._index: dict[str, int] = {}
        self._values = np.zeros(max(1, int(initial_capacity)), dtype=np.float64)
        # Indices of the (at most top_cache_size) largest positive values; None = rebuild lazily.
        self._top: np.ndarray | None = np.empty(0, dtype=np.int64)
        # The top cache's indices in ranking order (``top_where``); None = stale, rebuilt lazily.
        self._ranked: list[int] | None = None

    # ----------------------------------------------------------------------------------- basics
    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: object) -> bool:
        return key in self._index

    def keys(self) -> list[str]:
        return list(self._keys)

    def _grow(self, need: int) -> None:
        cap = len(self._values)
        if need <= cap:
            return
        while cap < need:
            cap *= 2
        values = np.zeros(cap, dtype=np.float64)
        values[:len(self._keys)] = self._values[:len(self._keys)]
        self._values = values

    def _slot(self, key: str) -> int:
        i = self._index.get(key)
        if i is None:
            i = len(self._keys)
            self._grow(i + 1)
            self._keys.append(key)
            self._index[key] = i
        return i

    # ------------------------------------------------------------------------------ time maths
    def _exponent_or_raise(self, exponent: float, what: str) -> float:
        if exponent > MAX_EXPONENT:
            raise ValueError(
                f"decayed counter overflow: {what} is {exponent:.1f} half-lives "
                f"({self.half_life_ms} ms each) from the landmark {self.landmark}; at most "
                f"{MAX_EXPONENT:.0f} fit in a float64 (check the timestamps, or enable re-basing)")
        return exponent

    def _factor(self, now: float) -> float:
        """2 ** (-(now - landmark) / half_life): turns stored values into scores at ``now``."""
        if self.landmark is None:
            return 1.0
        if not math.isfinite(now):
            raise ValueError(f"now must be finite, got {now!r}")
        e = self._exponent_or_raise(-(now - self.landmark) / self.half_life_ms,
                                    f"now={now} (before the landmark)")
        return 2.0 ** e

    def rebase(self, new_landmark: int) -> None:
        """Move the landmark, scaling every stored value so that scores are unchanged."""
        new_landmark = int(new_landmark)
        if self.landmark is None:
            self.landmark = new_landmark
            return
        e = self._exponent_or_raise(-(new_landmark - self.landmark) / self.half_life_ms,
                                    f"the new landmark {new_landmark}")
        n = len(self._keys)
        if n:
            self._values[:n] *= 2.0 ** e  # same positive factor for all: ranking unchanged
        self.landmark = new_landmark
        self._ranked = None  # it holds stored values

    def _prepare(self, ts_max: float) -> None:
        """Set the landmark on first use and re-base before ``ts_max`` could overflow."""
        if self.landmark is None:
            self.landmark = int(ts_max)
        e = (ts_max - self.landmark) / self.half_life_ms
        if self.rebase_after is not None and e > self.rebase_after:
            self.rebase(int(ts_max))
            e = (ts_max - self.landmark) / self.half_life_ms
        self._exponent_or_raise(e, f"ts={ts_max}")

    # ------------------------------------------------------------------------------- updating
    def add(self, key: str, weight: float, ts: float) -> None:
        """Count ``weight`` (>= 0) for ``key`` at event time ``ts`` (ms)."""
        weight = float(weight)
        if not (math.isfinite(weight) and weight >= 0.0):
            raise ValueError(f"weight must be finite and >= 0, got {weight!r}")
        if not math.isfinite(ts):
            raise ValueError(f"ts must be finite, got {ts!r}")
        if weight == 0.0:
            return
        self._prepare(ts)
        inc = weight * 2.0 ** ((ts - self.landmark) / self.half_life_ms)
        i = self._slot(key)
        new = float(self._values[i]) + inc
        if not math.isfinite(new):
            raise ValueError(f"decayed counter overflow for key {key!r} (weight {weight})")
        self._values[i] = new
        self._touch(np.array([i], dtype=np.int64))

    def add_many(self, keys: Sequence[str], weights: Any, ts: Any) -> None:
        """Vectorised ``add``: ``weights`` and ``ts`` are arrays of len(keys), or scalars."""
        n = len(keys)
        if n == 0:
            return
        w = np.broadcast_to(np.asarray(weights, dtype=np.float64), (n,))
        t = np.broadcast_to(np.asarray(ts, dtype=np.float64), (n,))
        if not np.isfinite(w).all() or (w < 0).any():
            raise ValueError("weights must be finite and >= 0")
        if not np.isfinite(t).all():
            raise ValueError("timestamps must be finite")
        self._prepare(float(t.max()))
        inc = w * np.exp2((t - self.landmark) / self.half_life_ms)
        idx = np.fromiter((self._slot(k) for k in keys), dtype=np.int64, count=n)
        uniq, inverse = np.unique(idx, return_inverse=True)
        new = self._values[uniq] + np.bincount(inverse, weights=inc, minlength=len(uniq))
        if not np.isfinite(new).all():
            raise ValueError("decayed counter overflow (weights too large)")
        self._values[uniq] = new
        self._touch(uniq)

    # ---------------------------------------------------------------------------- top cache
    def _touch(self, idx: np.ndarray) -> None:
        """Keep the top cache exact after the values at ``idx`` grew."""
        self._ranked = None
        m = self.top_cache_size
        if m == 0 or self._top is None:
            return
        idx = idx[self._values[idx] > 0]
        if len(idx) == 0:
            return
        union = np.union1d(self._top, idx)
        if len(union) > m:
            part = np.argpartition(-self._values[union], m - 1)[:m]
            union = union[part]
        self._top = union

    def _rebuild_top(self) -> np.ndarray:
        m = self.top_cache_size
        vals = self._values[:len(self._keys)]
        pos = np.flatnonzero(vals > 0)
        if len(pos) > m:
            pos = pos[np.argpartition(-vals[pos], m - 1)[:m]]
        self._top = pos
        return pos

    # ------------------------------------------------------------------------------- reading
    def score(self, key: str, now: float) -> float:
        """The decayed count of ``key`` at ``now`` (0.0 for an unknown key)."""
        i = self._index.get(key)
        if i is None:
            return 0.0
        return float(self._values[i]) * self._factor(now)

    def scores(self, keys: Iterable[str], now: float) -> np.ndarray:
        """Vectorised ``score``."""
        idx = [self._index.get(k, -1) for k in keys]
        out = np.zeros(len(idx), dtype=np.float64)
        known = np.array([i >= 0 for i in idx], dtype=bool)
        if known.any():
            out[known] = self._values[np.array(idx)[known]] * self._factor(now)
        return out

    def _sorted(self, idx: np.ndarray) -> list[int]:
        """Indices ordered by value descending, then key ascending (deterministic ties).

        One numpy argsort; only runs of equal values (rare with float sums) are ordered by key
        in Python.
        """
        idx = np.asarray(idx, dtype=np.int64)
        vals = self._values[idx]
        order = np.argsort(-vals, kind="stable")
        ranked_vals = vals[order]
        out = idx[order].tolist()
        tied = np.flatnonzero(ranked_vals[1:] == ranked_vals[:-1])
        if len(tied):
            keys = self._keys
            v = ranked_vals.tolist()
            for start in tied.tolist():
                if start > 0 and v[start - 1] == v[start]:
                    continue  # inside a run already sorted
                end = start + 1
                while end < len(v) and v[end] == v[start]:
                    end += 1
                out[start:end] = sorted(out[start:end], key=keys.__getitem__)
        return out

    def _best_pool(self, want: int) -> tuple[np.ndarray, bool]:
        """The positive indices whose value is at least the ``want``-th largest (ties at the cut
        included): a prefix of the full order. True when that is every positive key."""
        size = len(self._keys)
        positive = np.flatnonzero(self._values[:size] > 0)
        if len(positive) <= want:
            return positive, True
        vals = self._values[positive]
        part = np.argpartition(-vals, want - 1)[:want]
        return positive[vals >= vals[part].min()], False

    def _select(self, pool: np.ndarray, n: int) -> list[int]:
        """The ``n`` best of the indices ``pool``, exactly as a full sort would order them."""
        if len(pool) > n:
            vals = self._values[pool]
            part = np.argpartition(-vals, n - 1)[:n]
            pool = pool[vals >= vals[part].min()]  # keep every index tied at the cut
        return self._sorted(pool)[:n]

    def _excluded(self, idx: np.ndarray, exclude: Collection[str]) -> np.ndarray:
        """Boolean mask over ``idx``: True where the key is in ``exclude``."""
        if not exclude:
            return np.zeros(len(idx), dtype=bool)
        if len(exclude) < len(idx):
            index = self._index
            ex = np.fromiter((index[k] for k in exclude if k in index), dtype=np.int64)
            return np.isin(idx, ex)
        keys = self._keys
        return np.fromiter((keys[i] in exclude for i in idx.tolist()), dtype=bool, count=len(idx))

    def top(self, n: int, now: float, exclude: Collection[str] | None = None
            ) -> list[tuple[str, float]]:
        """The ``n`` keys with the highest positive score at ``now``, best first.

        Ties are broken by key. Keys in ``exclude`` (ideally a set) are skipped; the result still
        has up to ``n`` entries.
        """
        if n <= 0 or not self._keys:
            return []
        factor = self._factor(now)
        exclude = exclude or ()
        values = self._values
        out: list[int] | None = None
        if self.top_cache_size > 0:
            top = self._top if self._top is not None else self._rebuild_top()
            pool = top[~self._excluded(top, exclude)]
            pool = pool[values[pool] > 0]
            out = self._select(pool, n)
            complete = len(top) < self.top_cache_size  # then it holds every positive key
            # Exact unless a key outside the cache could tie with or beat the last one taken.
            if not complete and not (len(out) == n and values[out[-1]] > values[top].min()):
                out = None
        if out is None:
            size = len(self._keys)
            pool = np.arange(size)
            pool = pool[(values[:size] > 0) & ~self._excluded(pool, exclude)]
            out = self._select(pool, n)
        return [(self._keys[i], float(values[i]) * factor) for i in out]

    def _ranked_top(self) -> tuple[list[str], list[float], bool]:
        """(keys, stored values) of the top cache in (value desc, key asc) order, cut to the
        entries no key outside the cache can tie with or beat; and whether the cache holds
        every positive key (then nothing is cut). Cached until the next add or re-base. With
        no top cache, every positive key (the whole counter is the cache)."""
        if self._ranked is None:
            size = len(self._keys)
            if self.top_cache_size > 0:
                pool = self._top if self._top is not None else self._rebuild_top()
                complete = len(pool) < self.top_cache_size
            else:
                pool, complete = np.arange(size), True
            pool = pool[self._values[pool] > 0]
            idx = self._sorted(pool)
            ranked_vals = self._values[np.asarray(idx, dtype=np.int64)]
            if not complete and len(idx):
                exact = int(np.count_nonzero(ranked_vals > ranked_vals[-1]))
                idx, ranked_vals = idx[:exact], ranked_vals[:exact]
            self._ranked = ([self._keys[i] for i in idx], ranked_vals.tolist(), complete)
        return self._ranked

    def top_where(self, n: int, now: float, exclude: Collection[str] | None = None,
                  allowed: Callable[[str], bool] | None = None) -> list[tuple[str, float]]:
        """``top(n, now, exclude)`` restricted to keys for which ``allowed(key)`` is true.

        Walks the ranked top cache lazily (one ``argsort`` per change of the counter, shared
        by every reader until the next add) and stops after ``n`` keys, so a reader that
        filters out some keys costs O(keys looked at), not a sort of the counter. Exact: a
        key is taken from the cache only while its value is above the cache's cut, where no
        key outside the cache can tie with or beat it; past that, the full order takes over.
        """
        if n <= 0 or not self._keys:
            return []
        factor = self._factor(now)
        ranked_keys, ranked_values, complete = self._ranked_top()
        excluded = exclude or ()
        out: list[tuple[str, float]] = []
        for k, value in zip(ranked_keys, ranked_values):
            if k in excluded or (allowed is not None and not allowed(k)):
                continue
            out.append((k, value * factor))
            if len(out) >= n:
                return out
        if complete:
            return out
        # The prefix ran out (many keys filtered out): continue in the full order, sorting
        # only a growing prefix of it rather than every key of the counter.
        keys, values = self._keys, self._values
        pos = len(ranked_keys)
        want = 4 * (pos + n)
        while True:
            pool, everything = self._best_pool(want)
            ordered = self._sorted(pool)
            for i in ordered[pos:]:
                k = keys[i]
                if k in excluded or (allowed is not None and not allowed(k)):
                    continue
                out.append((k, float(values[i]) * factor))
                if len(out) >= n:
                    return out
            if everything:
                return out
            pos, want = len(ordered), 4 * want

    # ----------------------------------------------------------------------------- pruning
    def prune(self, now: float, min_score: float = 0.0, max_keys: int | None = None) -> int:
        """Drop keys scoring below ``min_score`` at ``now`` (and zero-valued keys); then keep at
        most ``max_keys`` highest. Returns how many keys were dropped."""
        size = len(self._keys)
        if size == 0:
            return 0
        vals = self._values[:size]
        keep = vals * self._factor(now) >= min_score
        keep &= vals > 0
        kept = np.flatnonzero(keep)
        if max_keys is not None and len(kept) > max_keys:
            kept = np.array(sorted(self._sorted(kept)[:max(0, max_keys)]), dtype=np.int64)
        dropped = size - len(kept)
        if dropped == 0:
            return 0
        keys = [self._keys[i] for i in kept.tolist()]
        values = np.zeros(max(16, 1 << max(0, len(keys) - 1).bit_length()), dtype=np.float64)
        values[:len(keys)] = vals[kept]
        self._keys = keys
        self._index = {k: i for i, k in enumerate(keys)}
        self._values = values
        self._top = None
        self._ranked = None
        return dropped

    # ------------------------------------------------------------------------------- state
    def to_state(self) -> dict[str, Any]:
        n = len(self._keys)
        return {
            "v": COUNTER_STATE_VERSION,
            "half_life_ms": self.half_life_ms,
            "landmark": self.landmark,
            "keys": list(self._keys),
            "values": self._values[:n].tolist(),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any], *, top_cache_size: int = 0,
                   rebase_after: float | None = DEFAULT_REBASE_AFTER) -> "DecayedCounter":
        version = state.get("v") if isinstance(state, dict) else None
        if version != COUNTER_STATE_VERSION:
            raise ValueError(f"decayed counter state version {version!r} is not supported "
                             f"(this code reads {COUNTER_STATE_VERSION})")
        keys = list(state["keys"])
        values = state["values"]
        if len(keys) != len(values) or len(set(keys)) != len(keys):
            raise ValueError("decayed counter state is corrupt (keys/values mismatch)")
        c = cls(state["half_life_ms"], landmark=state["landmark"], top_cache_size=top_cache_size,
                rebase_after=rebase_after, initial_capacity=max(16, len(keys)))
        c._keys = keys
        c._index = {k: i for i, k in enumerate(keys)}
        c._values[:len(keys)] = np.asarray(values, dtype=np.float64)
        c._top = None
        c._ranked = None
        return c


class TrendingModel:
    """Item popularity: overall, within each category, and among users of each segment.

    Fed with one ``record`` per accepted user event (the "item activity" broadcast stream).
    """

    def __init__(self, half_life_ms: float, *, top_cache_size: int = 500) -> None:
        self.half_life_ms = half_life_ms
        self.top_cache_size = top_cache_size
        self.items = self._counter()
        self.by_category: dict[str, DecayedCounter] = {}
        self.by_segment: dict[str, DecayedCounter] = {}
        self.last_ts: int | None = None  # newest event time recorded

    def _counter(self) -> DecayedCounter:
        return DecayedCounter(self.half_life_ms, top_cache_size=self.top_cache_size)

    def record(self, item_id: str, categories: Iterable[str], segment: str | None,
               weight: float, ts: int) -> bool:
        """Count one interaction. Non-positive weights (``not_interested``, low ratings) are
        ignored for popularity; returns whether anything was counted."""
        weight = float(weight)
        if not (math.isfinite(weight) and weight > 0.0):
            return False
        self.items.add(item_id, weight, ts)
        for cat in dict.fromkeys(categories):
            counter = self.by_category.get(cat)
            if counter is None:
                counter = self.by_category[cat] = self._counter()
            counter.add(item_id, weight, ts)
        if segment:
            counter = self.by_segment.get(segment)
            if counter is None:
                counter = self.by_segment[segment] = self._counter()
            counter.add(item_id, weight, ts)
        if self.last_ts is None or ts > self.last_ts:
            self.last_ts = int(ts)
        return True

    def trending_items(self, n: int, now: float, exclude: Collection[str] | None = None,
                       allowed: Callable[[str], bool] | None = None) -> list[tuple[str, float]]:
        return self.items.top_where(n, now, exclude, allowed)

    def trending_in_category(self, category: str, n: int, now: float,
                             exclude: Collection[str] | None = None,
                             allowed: Callable[[str], bool] | None = None
                             ) -> list[tuple[str, float]]:
        counter = self.by_category.get(category)
        return counter.top_where(n, now, exclude, allowed) if counter is not None else []

    def trending_in_segment(self, segment: str, n: int, now: float,
                            exclude: Collection[str] | None = None,
                            allowed: Callable[[str], bool] | None = None
                            ) -> list[tuple[str, float]]:
        counter = self.by_segment.get(segment) if segment else None
        return counter.top_where(n, now, exclude, allowed) if counter is not None else []

    def prune(self, now: float, min_score: float = 0.0,
              max_items_per_counter: int | None = None) -> int:
        """Forget items whose popularity fell below ``min_score``; drops empty category/segment
        counters. Returns the number of (counter, item) entries removed."""
        removed = self.items.prune(now, min_score, max_items_per_counter)
        for table in (self.by_category, self.by_segment):
            for name in list(table):
                removed += table[name].prune(now, min_score, max_items_per_counter)
                if not len(table[name]):
                    del table[name]
        return removed

    def to_state(self) -> dict[str, Any]:
        return {
            "v": TRENDING_STATE_VERSION,
            "half_life_ms": self.half_life_ms,
            "last_ts": self.last_ts,
            "items": self.items.to_state(),
            "categories": {c: k.to_state() for c, k in self.by_category.items()},
            "segments": {s: k.to_state() for s, k in self.by_segment.items()},
        }

    @classmethod
    def from_state(cls, state: dict[str, Any], *, top_cache_size: int = 500) -> "TrendingModel":
        """Restore; the stored half-life wins over the configured one (stored values are only
        meaningful with it — compare ``model.half_life_ms`` with the config and start a fresh
        model if they differ)."""
        version = state.get("v") if isinstance(state, dict) else None
        if version != TRENDING_STATE_VERSION:
            raise ValueError(f"trending state version {version!r} is not supported "
                             f"(this code reads {TRENDING_STATE_VERSION})")
        m = cls(state["half_life_ms"], top_cache_size=top_cache_size)
        m.last_ts = state["last_ts"]
        m.items = DecayedCounter.from_state(state["items"], top_cache_size=top_cache_size)
        m.by_category = {c: DecayedCounter.from_state(s, top_cache_size=top_cache_size)
                         for c, s in state["categories"].items()}
        m.by_segment = {g: DecayedCounter.from_state(s, top_cache_size=top_cache_size)
                        for g, s in state["segments"].items()}
        return m
