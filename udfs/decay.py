"""Time decay, in one place: every half-life in the engine goes through these functions.

* :func:`decay_factors` — how much of a signal is left after ``elapsed_ms`` (``2^(-t/h)``): the
  recency of a user's items (collaborative votes).
* :func:`forward_exponent` — forward decay of one user's interest weights (each event adds
  ``w * 2^((ts - L) / h)`` against the profile's landmark ``L``).
* :class:`ForwardDecay` — forward decay (Cormode et al., 2009) for counters that must never be
  rewritten as time passes: an event at ``ts`` adds ``w * 2^((ts - L) / h)`` to its counter, so
  every counter stays comparable to every other at any read time. The landmark ``L`` moves
  forward (every stored value rescaled by one common factor) before the exponent could overflow a
  float64, and weights whose exponent would still overflow are rejected, never stored as inf.
* :func:`landmark_factor` — the one conversion of stored values from one landmark to another
  (a moved landmark, a row stored under an older one, values of two runs or two operators
  compared). Each run picks its landmark from its own first batch, so stored values of two runs
  are comparable only after it.

Decay never boosts: a timestamp ahead of "now" counts as now (factor 1).
"""

from __future__ import annotations

import math

import numpy as np

# 2^64 headroom: stored values stay below weight * 2^REBASE_AFTER, far from float64's 2^1024.
REBASE_AFTER = 64.0
# Beyond this many half-lives between an event and the landmark, an event is refused.
MAX_EXPONENT = 1000.0


def forward_exponent(ts: float, landmark: float, half_life_ms: float) -> float:
    """``(ts - landmark) / half_life``: the log2 of an event's forward-decay multiplier."""
    return (ts - landmark) / half_life_ms if half_life_ms > 0 else 0.0


def landmark_factor(from_landmark: float, to_landmark: float, half_life_ms: float) -> float:
    """The multiplier that restates a value stored against ``from_landmark`` against
    ``to_landmark``: ``2^((from - to) / half_life)`` (an event at ``ts`` is stored as
    ``w * 2^((ts - L) / h)``, so a later landmark means smaller stored values)."""
    return 2.0 ** ((from_landmark - to_landmark) / half_life_ms)


def decay_factors(elapsed_ms: np.ndarray, half_life_ms: float) -> np.ndarray:
    """``2^(-elapsed/half_life)`` of each element (float64); 1 for no decay (half-life <= 0)
    or elapsed <= 0: decay never boosts."""
    elapsed = np.maximum(np.asarray(elapsed_ms, dtype=np.float64), 0.0)
    if half_life_ms <= 0:
        return np.ones_like(elapsed)
    return np.exp2(-elapsed / half_life_ms)


class ForwardDecay:
    """The landmark and half-life of a family of forward-decayed counters.

    ``weights(ts)`` gives the multipliers of events at ``ts`` against the current landmark; call
    :meth:`prepare` first with the newest timestamp of a batch: it moves the landmark when the
    exponent grows past :data:`REBASE_AFTER` and returns the factor every stored value must be
    multiplied by (1.0 when the landmark did not move).
    """

    __slots__ = ("half_life_ms", "landmark")

    def __init__(self, half_life_ms: float, landmark: int | None = None) -> None:
        if not (math.isfinite(half_life_ms) and half_life_ms > 0):
            raise ValueError(f"half_life_ms must be a positive number, got {half_life_ms!r}")
        self.half_life_ms = float(half_life_ms)
        self.landmark = landmark

    def prepare(self, newest_ts: float) -> float:
        """Set or move the landmark for events up to ``newest_ts``; the rescale factor."""
        if self.landmark is None:
            self.landmark = int(newest_ts)
            return 1.0
        exponent = (newest_ts - self.landmark) / self.half_life_ms
        if exponent <= REBASE_AFTER:
            return 1.0
        old, self.landmark = self.landmark, int(newest_ts)
        return landmark_factor(old, self.landmark, self.half_life_ms)

    def weight(self, ts: float) -> float:
        """The multiplier of one event at ``ts`` (0 when it is too old to be represented)."""
        assert self.landmark is not None, "prepare() first"
        exponent = (ts - self.landmark) / self.half_life_ms
        if exponent > MAX_EXPONENT:
            raise ValueError(f"timestamp {ts} is {exponent:.0f} half-lives past the landmark")
        return 2.0 ** exponent if exponent > -MAX_EXPONENT else 0.0

    def weights(self, ts: np.ndarray) -> np.ndarray:
        assert self.landmark is not None, "prepare() first"
        exponent = (np.asarray(ts, dtype=np.float64) - self.landmark) / self.half_life_ms
        if exponent.size and exponent.max() > MAX_EXPONENT:
            raise ValueError("a timestamp is too far past the forward-decay landmark")
        return np.exp2(np.maximum(exponent, -MAX_EXPONENT))

    def read_factor(self, now: float) -> float:
        """Turns stored values into decayed values at ``now``: ``2^(-(now - L)/h)``."""
        if self.landmark is None:
            return 1.0
        exponent = -(now - self.landmark) / self.half_life_ms
        return 2.0 ** min(exponent, MAX_EXPONENT) if exponent > -MAX_EXPONENT else 0.0
