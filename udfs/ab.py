"""A/B experiments: deterministic variant assignment and feedback attribution.

Assignment
    ``assign_variant`` hashes ``salt + user_id`` (UTF-8, SHA-256), reads the first 53 bits of the
    digest as a uniform number ``u`` in [0, 1) and walks the variants *sorted by name*, each
    taking ``traffic / sum(traffic)`` of the unit interval. The same user, salt and variant table
    always give the same variant, on every task and after every restart; changing the salt
    (``recommend.experiment_salt``) reshuffles everybody. Variants with ``traffic == 0`` get nobody.

Attribution
    Per user, an ``ImpressionLog`` (``state_schemas/profile_state.py``) remembers which items were recommended recently (bounded,
    oldest recording evicted first), under which variant and when. A later event on one of those
    items counts for that variant if it happened within ``window_ms`` after the item was shown:

    * ``"click"``    — ``click``, ``like``, ``share``, ``comment``, ``add_to_cart``
                       (active, positive engagement; ``CLICK_EVENT_TYPES``)
    * ``"purchase"`` — ``purchase`` (``PURCHASE_EVENT_TYPES``)

    Not counted: ``view`` (passive; a list being rendered may itself log views), ``rate`` (a rating
    may be negative) and ``not_interested`` (negative).

    Each impression is counted at most once per kind ("unique clicks"), so
    ``ctr(impressions, clicks) <= 1`` when impressions are counted with the return value of
    ``record_impressions`` (which counts an item again only once its previous impression is
    older than the window). Attribute an event *before* recording the recommendations that the
    same event triggers. Timestamps are event times (ms), the same clock for both sides.
"""

from __future__ import annotations

import hashlib
from typing import Collection, Mapping, Sequence

from state_schemas.config import VariantConfig
from state_schemas.profile_state import ImpressionLog

CLICK_EVENT_TYPES: frozenset[str] = frozenset({"click", "like", "share", "comment", "add_to_cart"})
PURCHASE_EVENT_TYPES: frozenset[str] = frozenset({"purchase"})


# ------------------------------------------------------------------------------ assignment
def variant_bucket(user_id: str, salt: str) -> float:
    """Uniform number in [0, 1) from SHA-256(salt + user_id): the user's place in the split."""
    digest = hashlib.sha256((salt + user_id).encode("utf-8")).digest()
    return (int.from_bytes(digest[:8], "big") >> 11) / float(1 << 53)


def assign_variant(user_id: str, salt: str, variants: Mapping[str, VariantConfig]) -> str:
    """The user's variant: deterministic, with shares proportional to ``traffic``."""
    if not variants:
        raise ValueError("assign_variant needs at least one variant")
    names = sorted(variants)
    shares = [float(variants[name].traffic) for name in names]
    if any(s < 0 for s in shares):
        raise ValueError(f"variant traffic shares must be >= 0, got {dict(zip(names, shares))}")
    total = sum(shares)
    if not total > 0:
        raise ValueError("variant traffic shares must add up to more than 0")
    u = variant_bucket(user_id, salt)
    cumulative = 0.0
    for name, share in zip(names, shares):
        cumulative += share / total
        if u < cumulative:
            return name
    # Rounding may leave the cumulative sum a hair below 1: the last variant with traffic.
    return [n for n, s in zip(names, shares) if s > 0][-1]


# ------------------------------------------------------------------------------ attribution
_KIND_BIT = {"click": 1, "purchase": 2}


MAX_VARIANT_CODES = 256  # stored in one byte (state_schemas/profile_state.py)


def _variant_code(log: ImpressionLog, variant: str) -> int:
    try:
        return log.variants.index(variant)
    except ValueError:
        pass
    if len(log.variants) >= MAX_VARIANT_CODES:  # drop names no entry refers to any more
        used = sorted({e[2] for e in log.entries.values()})
        remap = {old: new for new, old in enumerate(used)}
        log.variants = [log.variants[old] for old in used]
        log.entries = {h: (a, b, remap[v], k) for h, (a, b, v, k) in log.entries.items()}
        if len(log.variants) >= MAX_VARIANT_CODES:  # every one is still in use: forget the oldest
            oldest = next(iter(log.entries))
            del log.entries[oldest]
            return _variant_code(log, variant)
    log.variants.append(variant)
    return len(log.variants) - 1


def record_impressions(log: ImpressionLog, item_hashes: Sequence[int], variant: str, ts: int,
                       max_items: int, *, window_ms: int | None = None) -> int:
    """Remember that the items (by hash) were recommended at ``ts`` under ``variant``.

    An item already in the log under the same variant is refreshed (its attribution window now
    runs from this showing) and keeps its attributed kinds; it counts as a *new* impression only
    if its previous showing is more than ``window_ms`` old (never, when ``window_ms`` is None).
    Returns the number of new impressions (for CTR denominators). At most ``max_items`` entries
    are kept; the least recently recorded go first.
    """
    if max_items < 1:
        raise ValueError("max_items must be >= 1")
    code = _variant_code(log, variant)
    entries = log.entries
    new = 0
    for h in dict.fromkeys(item_hashes):
        old = entries.pop(h, None)
        if old is None:
            entries[h] = (ts, ts, code, 0)
            new += 1
        elif ts < old[1]:  # a late, older recording: keep the newer showing
            entries[h] = old
        elif old[2] != code or (window_ms is not None and ts - old[1] > window_ms):
            entries[h] = (ts, ts, code, 0)
            new += 1
        else:
            entries[h] = (old[0], ts, code, old[3])
    while len(entries) > max_items:
        del entries[next(iter(entries))]
    return new


def feedback_kind(event_type: str, *, click_types: Collection[str] = CLICK_EVENT_TYPES,
                  purchase_types: Collection[str] = PURCHASE_EVENT_TYPES) -> str | None:
    """``"purchase"``, ``"click"`` or None (the event type is not feedback)."""
    if event_type in purchase_types:
        return "purchase"
    if event_type in click_types:
        return "click"
    return None


def attribute_feedback(log: ImpressionLog, item_hash: int, event_type: str, ts: int,
                       window_ms: int) -> tuple[str, str] | None:
    """``(variant, kind)`` if this event is feedback on a recommendation, else None.

    It is, when the item was recommended at or before ``ts`` and at most ``window_ms`` before it
    (counting from the latest showing), and that impression has not been credited with this kind
    yet. Marks the impression as credited.
    """
    entry = log.entries.get(item_hash)
    if entry is None:
        return None
    kind = feedback_kind(event_type)
    if kind is None:
        return None
    first, last, variant, kinds = entry
    bit = _KIND_BIT[kind]
    if ts < first or ts - last > window_ms or kinds & bit:
        return None
    log.entries[item_hash] = (first, last, variant, kinds | bit)
    return log.variants[variant], kind


def expire_impressions(log: ImpressionLog, now: int, window_ms: int) -> int:
    """Drop entries whose latest showing is more than ``window_ms`` before ``now``."""
    stale = [h for h, (_, last, _, _) in log.entries.items() if now - last > window_ms]
    for h in stale:
        del log.entries[h]
    return len(stale)


def ctr(impressions: float, clicks: float) -> float:
    """Click-through rate; 0.0 when there were no impressions."""
    return clicks / impressions if impressions > 0 else 0.0
