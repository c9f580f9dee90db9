"""The bundled sample stream: synthetic shop/media data that ``make run`` plays into Kafka.

The data is synthetic but *structured*, so a newcomer watching ``make run`` sees the engine learn
something: every user has 1-3 preferred categories (drawn with a bias from age band, region and
occupation, so demographic segments trend differently), browses mostly those, picks items by a
Zipf-like popularity within a category and walks a view -> click -> like/add_to_cart -> purchase
funnel with falling probabilities. Ratings are higher in preferred categories and
``not_interested`` only hits non-preferred items, so the signal is consistent.

Everything is generated from one seeded ``random.Random`` (no set iteration, no hashing), so the
same seed gives byte-identical files; ``data/sample/*.jsonl`` are ``generate_sample()`` with the
defaults, regenerated with ``python -m recsys.sample_data.synthetic``.
"""

from __future__ import annotations

import json
import math
import random
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence

from recsys.paths import SAMPLE_DATA_DIR

if TYPE_CHECKING:  # keep `import recsys.sample_data.synthetic` free of the Kafka client
    from state_schemas.config import EngineConfig

Record = dict[str, Any]

SECOND_MS = 1_000
MINUTE_MS = 60 * SECOND_MS
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS

SAMPLE_FILES = ("items.jsonl", "users.jsonl", "events.jsonl", "requests.jsonl")
COLD_START_USERS = 3
PROGRESS_EVERY = 500


# --------------------------------------------------------------------------------------------
# The catalogue's vocabulary
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CategorySpec:
    """Word lists of one category; titles are ``"<adjective> <noun>"`` so they read like products."""
    name: str
    adjectives: tuple[str, ...]
    nouns: tuple[str, ...]
    tags: tuple[str, ...]
    price_range: tuple[int, int]
    related: str | None  # the usual second category of a two-category item


CATEGORIES: tuple[CategorySpec, ...] = (
    CategorySpec("running",
                 ("Trail", "Lightweight", "Carbon", "Reflective", "Cushioned", "Marathon", "Breathable", "Winter"),
                 ("Running Shoes", "Running Jacket", "Hydration Vest", "Compression Socks", "GPS Watch",
                  "Running Shorts", "Headlamp", "Running Tights"),
                 ("trail", "road", "waterproof", "lightweight", "reflective", "marathon", "beginner", "bestseller"),
                 (15, 220), "outdoor"),
    CategorySpec("audio",
                 ("Noise-Cancelling", "Wireless", "Studio", "Portable", "Compact", "Premium", "Retro", "Hi-Res"),
                 ("Headphones", "Earbuds", "Bluetooth Speaker", "Soundbar", "Turntable", "USB Microphone",
                  "Headphone Amp", "Smart Speaker"),
                 ("wireless", "noise-cancelling", "bluetooth", "hi-fi", "portable", "studio", "bass", "bestseller"),
                 (20, 450), "gaming"),
    CategorySpec("books",
                 ("The Silent", "The Last", "The Hidden", "Midnight", "The Paper", "Northern", "The Glass", "Autumn"),
                 ("Orchard", "Lighthouse", "Cartographer", "Garden", "Kingdom", "Library", "Tide", "Letters"),
                 ("fiction", "mystery", "literary", "paperback", "award-winner", "classic", "book-club",
                  "bestseller"),
                 (8, 35), "movies"),
    CategorySpec("movies",
                 ("Edge of", "Return to", "Beyond", "Shadows of", "Echoes of", "Escape from", "Heart of",
                  "Nights in"),
                 ("Tomorrow", "Silver Lake", "the Frontier", "Iron Bay", "Neon City", "the Storm", "Red Canyon",
                  "the Deep"),
                 ("thriller", "sci-fi", "drama", "comedy", "4k", "family", "documentary", "award-winner"),
                 (5, 30), "books"),
    CategorySpec("kitchen",
                 ("Cast-Iron", "Stainless Steel", "Non-Stick", "Ceramic", "Copper", "Professional", "Compact",
                  "Enamelled"),
                 ("Skillet", "Saucepan", "Dutch Oven", "Wok", "Stock Pot", "Roasting Pan", "Grill Pan",
                  "Casserole Dish"),
                 ("cookware", "induction", "dishwasher-safe", "non-stick", "gift-idea", "professional", "family",
                  "bestseller"),
                 (18, 260), None),
    CategorySpec("gaming",
                 ("Wireless", "RGB", "Ergonomic", "Pro", "Compact", "Low-Latency", "Tournament", "Elite"),
                 ("Gaming Keyboard", "Gaming Mouse", "Controller", "Gaming Headset", "Mouse Pad", "Racing Wheel",
                  "Gaming Chair", "Capture Card"),
                 ("pc", "console", "rgb", "wireless", "esports", "ergonomic", "streaming", "bestseller"),
                 (15, 400), "audio"),
    CategorySpec("outdoor",
                 ("Ultralight", "Waterproof", "Insulated", "Packable", "Alpine", "Expedition", "All-Season",
                  "Rugged"),
                 ("Tent", "Sleeping Bag", "Hiking Backpack", "Trekking Poles", "Rain Jacket", "Camping Stove",
                  "Water Filter", "Hiking Boots"),
                 ("camping", "hiking", "waterproof", "ultralight", "winter", "family", "climbing", "bestseller"),
                 (20, 500), "running"),
    CategorySpec("fashion",
                 ("Linen", "Merino Wool", "Organic Cotton", "Denim", "Cashmere", "Vintage", "Slim-Fit",
                  "Oversized"),
                 ("Shirt", "Sweater", "Jacket", "Dress", "Chinos", "Scarf", "Hoodie", "Coat"),
                 ("casual", "formal", "sustainable", "summer", "winter", "unisex", "premium", "sale"),
                 (15, 250), None),
)
CATEGORY_NAMES: tuple[str, ...] = tuple(c.name for c in CATEGORIES)
_SPEC: dict[str, CategorySpec] = {c.name: c for c in CATEGORIES}

# Demographics. Preferences are drawn from these affinities, so "demographic" segments of the
# engine (age band / region) see genuinely different trending items.
AGE_BANDS: tuple[tuple[str, int, int, float], ...] = (  # name, min age, max age, share of users
    ("16-24", 16, 24, 0.25), ("25-39", 25, 39, 0.35), ("40-54", 40, 54, 0.25), ("55+", 55, 75, 0.15),
)
REGIONS: tuple[str, ...] = ("north", "south", "east", "west")
GENDERS: tuple[tuple[str, float], ...] = (("F", 0.47), ("M", 0.47), ("X", 0.06))
OCCUPATIONS_BY_BAND: dict[str, tuple[tuple[str, float], ...]] = {
    "16-24": (("student", 0.6), ("designer", 0.15), ("sales", 0.15), ("engineer", 0.1)),
    "25-39": (("engineer", 0.25), ("designer", 0.2), ("teacher", 0.15), ("nurse", 0.15), ("sales", 0.15),
              ("chef", 0.1)),
    "40-54": (("engineer", 0.2), ("teacher", 0.2), ("manager", 0.25), ("nurse", 0.15), ("chef", 0.1),
              ("sales", 0.1)),
    "55+": (("retired", 0.5), ("teacher", 0.2), ("manager", 0.2), ("nurse", 0.1)),
}
BAND_AFFINITY: dict[str, dict[str, float]] = {
    "16-24": {"gaming": 3.0, "audio": 2.5, "fashion": 2.0, "movies": 1.5, "running": 1.0},
    "25-39": {"running": 2.5, "audio": 1.5, "kitchen": 1.5, "outdoor": 1.5, "fashion": 1.5, "books": 1.0},
    "40-54": {"kitchen": 2.5, "outdoor": 2.0, "books": 2.0, "running": 1.0, "movies": 1.0},
    "55+": {"books": 3.0, "kitchen": 2.0, "movies": 2.0, "outdoor": 1.5},
}
REGION_AFFINITY: dict[str, dict[str, float]] = {
    "north": {"outdoor": 1.5}, "south": {"fashion": 1.0}, "east": {"gaming": 1.0}, "west": {"running": 1.0},
}
OCCUPATION_AFFINITY: dict[str, dict[str, float]] = {
    "chef": {"kitchen": 4.0}, "student": {"gaming": 1.0, "books": 0.5}, "designer": {"fashion": 1.5},
    "retired": {"books": 1.0},
}
BASE_AFFINITY = 0.3
DEVICES: tuple[tuple[str, float], ...] = (("mobile", 0.6), ("desktop", 0.3), ("tablet", 0.1))
# Sessions start more often in the evening than at night (hour of day -> relative weight).
HOUR_WEIGHTS: tuple[float, ...] = (0.3, 0.2, 0.1, 0.1, 0.1, 0.2, 0.5, 1.0, 1.2, 1.0, 1.0, 1.1,
                                   1.4, 1.2, 1.0, 1.0, 1.1, 1.4, 1.8, 2.2, 2.4, 2.0, 1.4, 0.8)


@dataclass(frozen=True)
class Behaviour:
    """Probabilities of the funnel; preferred categories convert better, which is the signal."""
    p_preferred_category: float = 0.85  # else the user explores a random category
    p_click_preferred: float = 0.55
    p_click_other: float = 0.25
    p_like: float = 0.25  # after a click
    p_cart: float = 0.22  # after a click, available items only
    p_purchase: float = 0.45  # after add_to_cart
    p_share: float = 0.04
    p_comment: float = 0.03
    p_rate_purchase: float = 0.5
    p_rate_click: float = 0.06
    p_not_interested: float = 0.12  # a viewed, unclicked, non-preferred item
    items_per_session_p: float = 0.3  # geometric: 1 + Geometric(p) items per session, capped
    items_per_session_max: int = 10
    zipf_exponent: float = 1.1
    requests: int = 12  # recommendation requests at the end of random sessions


RATING_WEIGHTS_PREFERRED = (0.02, 0.05, 0.18, 0.40, 0.35)  # ratings 1..5
RATING_WEIGHTS_OTHER = (0.15, 0.25, 0.35, 0.18, 0.07)


@dataclass
class SampleData:
    """The sample stream as plain contract records (dicts), one list per input topic.

    ``preferred_categories`` is the generator's ground truth (user -> categories), handy for tests
    and evaluations; it is not part of the stream, not written to disk and not compared by ``==``.
    """
    items: list[Record] = field(default_factory=list)
    users: list[Record] = field(default_factory=list)
    events: list[Record] = field(default_factory=list)
    requests: list[Record] = field(default_factory=list)
    preferred_categories: dict[str, list[str]] = field(default_factory=dict, compare=False)


@dataclass
class _User:
    user_id: str
    record: Record
    preferred: list[str]
    activity: float
    device: str


@dataclass
class _Session:
    user: _User
    number: int
    events: list[Record]  # "ts" holds the offset from the session start until times are placed
    start_ms: int = 0

    @property
    def end_ms(self) -> int:
        """The last event's time (valid once ``_place_sessions`` has placed the session)."""
        return self.events[-1]["ts"]


# --------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------

def _weighted(rng: random.Random, pairs: Sequence[tuple[str, float]]) -> str:
    return rng.choices([p[0] for p in pairs], weights=[p[1] for p in pairs])[0]


def _titles(rng: random.Random, spec: CategorySpec) -> Iterator[str]:
    """Every adjective/noun pair once in a shuffled order, then numbered editions if more are needed."""
    combos = [f"{a} {n}" for a in spec.adjectives for n in spec.nouns]
    rng.shuffle(combos)
    edition = 1
    while True:
        for title in combos:
            yield title if edition == 1 else f"{title} {edition}"
        edition += 1


def _price(rng: random.Random, spec: CategorySpec) -> float:
    """Shop-like prices ending in .99 (or .49 for the cheap end)."""
    lo, hi = spec.price_range
    whole = round(math.exp(rng.uniform(math.log(lo), math.log(hi))))  # more cheap items than dear ones
    return round(max(whole, 1) - (0.51 if whole < 10 else 0.01), 2)


def _make_items(rng: random.Random, n_items: int, start_ms: int) -> tuple[list[Record], dict[str, list[str]]]:
    """Items plus, per category, its item ids ordered from most to least popular."""
    primaries = [CATEGORY_NAMES[i % len(CATEGORY_NAMES)] for i in range(n_items)]
    rng.shuffle(primaries)
    titles = {c.name: _titles(rng, c) for c in CATEGORIES}
    unavailable = set(rng.sample(range(n_items), max(1, round(0.05 * n_items)))) if n_items >= 10 else set()
    items: list[Record] = []
    for i, primary in enumerate(primaries):
        spec = _SPEC[primary]
        categories = [primary]
        if spec.related and rng.random() < 0.3:
            categories.append(spec.related)
        tags = sorted(rng.sample(spec.tags, rng.randint(2, 4)))
        items.append({
            "item_id": f"i{i + 1:04d}",
            "ts": start_ms - 2 * DAY_MS + i * MINUTE_MS,
            "title": next(titles[primary]),
            "categories": categories,
            "tags": tags,
            "price": None if rng.random() < 0.08 else _price(rng, spec),
            "available": i not in unavailable,
        })
    popularity = list(range(n_items))
    rng.shuffle(popularity)  # popularity[i]: rank of item i (0 = most popular)
    by_category: dict[str, list[str]] = {c: [] for c in CATEGORY_NAMES}
    for i in sorted(range(n_items), key=lambda i: popularity[i]):
        for c in items[i]["categories"]:
            by_category[c].append(items[i]["item_id"])
    return items, by_category


def _preferences(rng: random.Random, band: str, region: str, occupation: str) -> list[str]:
    """1-3 categories, drawn without replacement from demographic affinities."""
    weights = {c: BASE_AFFINITY for c in CATEGORY_NAMES}
    for table in (BAND_AFFINITY[band], REGION_AFFINITY.get(region, {}), OCCUPATION_AFFINITY.get(occupation, {})):
        for c, w in table.items():
            weights[c] += w
    chosen: list[str] = []
    for _ in range(rng.choices((1, 2, 3), weights=(0.3, 0.45, 0.25))[0]):
        names = [c for c in CATEGORY_NAMES if c not in chosen]
        chosen.append(rng.choices(names, weights=[weights[c] for c in names])[0])
    return chosen


def _make_users(rng: random.Random, n_users: int, start_ms: int) -> list[_User]:
    """Users with attributes; the last ``COLD_START_USERS`` sign up on the last day and stay silent."""
    users: list[_User] = []
    n_active = n_users - COLD_START_USERS
    for i in range(n_users):
        band, lo, hi, _ = rng.choices(AGE_BANDS, weights=[b[3] for b in AGE_BANDS])[0]
        region = rng.choice(REGIONS)
        occupation = _weighted(rng, OCCUPATIONS_BY_BAND[band])
        user_id = f"u{i + 1:03d}"
        cold = i >= n_active
        ts = start_ms + 6 * DAY_MS + rng.randint(0, 20 * HOUR_MS) if cold else start_ms - DAY_MS + i * MINUTE_MS
        record = {"user_id": user_id, "ts": ts,
                  "attributes": {"age": rng.randint(lo, hi), "gender": _weighted(rng, GENDERS),
                                 "occupation": occupation, "region": region}}
        users.append(_User(user_id, record, _preferences(rng, band, region, occupation),
                           activity=0.0 if cold else 1.0 / (rng.random() * 4 + 0.5),
                           device=_weighted(rng, DEVICES)))
    return users


def _pick_item(rng: random.Random, user: _User, by_category: dict[str, list[str]],
               behaviour: Behaviour) -> str:
    """A preferred category (the first preference weighs most) or, sometimes, any; then Zipf."""
    if rng.random() < behaviour.p_preferred_category:
        category = rng.choices(user.preferred, weights=[3, 2, 1][: len(user.preferred)])[0]
    else:
        category = rng.choice(CATEGORY_NAMES)
    pool = by_category[category] or [i for ids in by_category.values() for i in ids]
    weights = [1.0 / (rank + 1) ** behaviour.zipf_exponent for rank in range(len(pool))]
    return rng.choices(pool, weights=weights)[0]


def _funnel(rng: random.Random, item: Record, preferred: bool, behaviour: Behaviour) -> list[tuple[str, int, Any]]:
    """(event_type, delay_ms since the previous step, value) for one item, view first."""
    b = behaviour
    steps: list[tuple[str, int, Any]] = [("view", 0, None)]
    clicked = rng.random() < (b.p_click_preferred if preferred else b.p_click_other)
    if not clicked:
        if not preferred and rng.random() < b.p_not_interested:
            steps.append(("not_interested", rng.randint(2, 15) * SECOND_MS, None))
        return steps
    steps.append(("click", rng.randint(3, 40) * SECOND_MS, None))
    if rng.random() < b.p_like:
        steps.append(("like", rng.randint(5, 90) * SECOND_MS, None))
    purchased = False
    if item["available"] and rng.random() < b.p_cart:
        steps.append(("add_to_cart", rng.randint(10, 120) * SECOND_MS, None))
        if rng.random() < b.p_purchase:
            steps.append(("purchase", rng.randint(30, 300) * SECOND_MS, None))
            purchased = True
    if rng.random() < b.p_share:
        steps.append(("share", rng.randint(5, 60) * SECOND_MS, None))
    if rng.random() < b.p_comment:
        steps.append(("comment", rng.randint(30, 240) * SECOND_MS, None))
    if rng.random() < (b.p_rate_purchase if purchased else b.p_rate_click):
        weights = RATING_WEIGHTS_PREFERRED if preferred else RATING_WEIGHTS_OTHER
        steps.append(("rate", rng.randint(10, 120) * SECOND_MS, rng.choices(range(1, 6), weights=weights)[0]))
    return steps


def _make_session(rng: random.Random, user: _User, number: int, items: dict[str, Record],
                  by_category: dict[str, list[str]], behaviour: Behaviour) -> _Session:
    """One visit: a few items, each walked down the funnel; ts are offsets from the session start."""
    n = 1
    while n < behaviour.items_per_session_max and rng.random() > behaviour.items_per_session_p:
        n += 1
    device = user.device if rng.random() < 0.85 else _weighted(rng, DEVICES)
    context = {"session": f"s{number:04d}", "device": device}
    preferred = set(user.preferred)
    events: list[Record] = []
    offset = 0
    for _ in range(n):
        item = items[_pick_item(rng, user, by_category, behaviour)]
        is_preferred = any(c in preferred for c in item["categories"])
        offset += rng.randint(10, 180) * SECOND_MS if events else 0
        for event_type, delay, value in _funnel(rng, item, is_preferred, behaviour):
            offset += delay
            events.append({"event_id": "", "user_id": user.user_id, "item_id": item["item_id"],
                           "event_type": event_type, "ts": offset, "value": value, "context": dict(context)})
    return _Session(user, number, events)


def _make_sessions(rng: random.Random, users: list[_User], items: dict[str, Record],
                   by_category: dict[str, list[str]], n_events: int, behaviour: Behaviour) -> list[_Session]:
    """Sessions until exactly ``n_events`` events: every active user twice, then by activity."""
    active = [u for u in users if u.activity > 0]
    sessions: list[_Session] = []
    total = 0
    queue = active + active
    while total < n_events:
        user = queue.pop(0) if queue else rng.choices(active, weights=[u.activity for u in active])[0]
        session = _make_session(rng, user, len(sessions) + 1, items, by_category, behaviour)
        session.events = session.events[: n_events - total]
        total += len(session.events)
        sessions.append(session)
    return sessions


def _session_start(rng: random.Random, start_ms: int, days: int) -> int:
    day = rng.randrange(days)
    hour = rng.choices(range(24), weights=HOUR_WEIGHTS)[0]
    return start_ms + day * DAY_MS + hour * HOUR_MS + rng.randrange(HOUR_MS)


def _place_sessions(rng: random.Random, sessions: list[_Session], start_ms: int, days: int = 7) -> None:
    """Spread sessions over ``days`` with a daily rhythm; a user's sessions never overlap."""
    for s in sessions:
        s.start_ms = _session_start(rng, start_ms, days)
    last_end: dict[str, int] = {}
    for s in sorted(sessions, key=lambda s: (s.start_ms, s.number)):
        previous = last_end.get(s.user.user_id)
        if previous is not None and s.start_ms < previous + 20 * MINUTE_MS:
            s.start_ms = previous + 20 * MINUTE_MS + rng.randrange(2 * HOUR_MS)
        for e in s.events:
            e["ts"] += s.start_ms
        last_end[s.user.user_id] = s.end_ms


def _number_events(sessions: list[_Session]) -> list[Record]:
    """All events in time order, ts made strictly increasing, ids ``ev-000001``.. in that order."""
    events = sorted((e for s in sessions for e in s.events), key=lambda e: e["ts"])
    previous = -1
    for n, e in enumerate(events, start=1):
        e["ts"] = max(e["ts"], previous + 1)
        previous = e["ts"]
        e["event_id"] = f"ev-{n:06d}"
    return events


def _make_requests(rng: random.Random, sessions: list[_Session], users: list[_User],
                   behaviour: Behaviour) -> list[Record]:
    """Requests at the end of some sessions, plus one per cold-start user after they sign up."""
    out: list[tuple[int, str]] = []
    chosen = rng.sample(sessions, min(behaviour.requests, len(sessions)))
    for s in chosen:
        out.append((s.end_ms + rng.randint(2, 10) * SECOND_MS, s.user.user_id))
    for u in users:
        if u.activity == 0:
            out.append((u.record["ts"] + rng.randint(30, 120) * SECOND_MS, u.user_id))
    out.sort()
    return [{"request_id": f"req-{n:04d}", "user_id": user_id, "ts": ts, "k": 5,
             "context": {"surface": "home"}} for n, (ts, user_id) in enumerate(out, start=1)]


def generate_sample(seed: int = 7, n_users: int = 60, n_items: int = 120, n_events: int = 3000,
                    start_ms: int = 1_767_225_600_000) -> SampleData:
    """Deterministic synthetic catalogue, users, events and requests (see the module docstring).

    ``n_users`` includes the 3 cold-start users (attributes and one request, no events).
    Events span about 7 days from ``start_ms``; items and active users appear before it.
    """
    if n_users <= COLD_START_USERS:
        raise ValueError(f"n_users must exceed the {COLD_START_USERS} cold-start users")
    if n_items < len(CATEGORIES) or n_events < 1:
        raise ValueError(f"n_items must be >= {len(CATEGORIES)} and n_events >= 1")
    rng = random.Random(seed)
    behaviour = Behaviour()
    items, by_category = _make_items(rng, n_items, start_ms)
    users = _make_users(rng, n_users, start_ms)
    sessions = _make_sessions(rng, users, {i["item_id"]: i for i in items}, by_category, n_events, behaviour)
    _place_sessions(rng, sessions, start_ms)
    events = _number_events(sessions)
    requests = _make_requests(rng, sessions, users, behaviour)
    return SampleData(items=items, users=[u.record for u in users], events=events, requests=requests,
                      preferred_categories={u.user_id: list(u.preferred) for u in users})


# --------------------------------------------------------------------------------------------
# Bundled files
# --------------------------------------------------------------------------------------------

def _write_jsonl(path: Path, records: Iterable[Record]) -> None:
    with path.open("w", encoding="utf-8", newline="\n") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def _read_jsonl(path: Path) -> list[Record]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_sample(dir: str | Path = SAMPLE_DATA_DIR, data: SampleData | None = None) -> list[Path]:
    """Write ``data`` (default: ``generate_sample()``) as the four ``*.jsonl`` files in ``dir``."""
    out = Path(dir)
    out.mkdir(parents=True, exist_ok=True)
    data = data if data is not None else generate_sample()
    paths = []
    for name, records in zip(SAMPLE_FILES, (data.items, data.users, data.events, data.requests)):
        _write_jsonl(out / name, records)
        paths.append(out / name)
    return paths


def load_sample(dir: str | Path = SAMPLE_DATA_DIR) -> SampleData:
    """Read the four ``*.jsonl`` files back (``preferred_categories`` stays empty)."""
    base = Path(dir)
    missing = [n for n in SAMPLE_FILES if not (base / n).is_file()]
    if missing:
        raise FileNotFoundError(f"sample data missing in {base}: {', '.join(missing)} "
                                f"(regenerate with: python -m recsys.sample_data.synthetic)")
    items, users, events, requests = (_read_jsonl(base / n) for n in SAMPLE_FILES)
    return SampleData(items=items, users=users, events=events, requests=requests)


# --------------------------------------------------------------------------------------------
# Producing into Kafka
# --------------------------------------------------------------------------------------------

def shift_to_now(records: Sequence[Record], now_ms: int) -> list[Record]:
    """Copies of ``records`` with every ``ts`` moved by one offset so the latest is ``now_ms``.

    One offset for all keeps the gaps (the engine's decay, windows and sessions see the same
    history); putting the end at "now" keeps the stream inside the engine's time sanity checks
    and makes "recent" mean the sample's last days.
    """
    if not records:
        return []
    delta = now_ms - max(r["ts"] for r in records)
    return _shift(records, delta)


def _shift(records: Iterable[Record], delta: int) -> list[Record]:
    return [{**r, "ts": r["ts"] + delta} for r in records]


def _merge_in_time_order(events: Sequence[Record], requests: Sequence[Record]) -> list[Record]:
    """Events and requests interleaved by ts; on a tie the event goes first so the request sees it."""
    tagged = [(e["ts"], 0, n, e) for n, e in enumerate(events)] + \
             [(r["ts"], 1, n, r) for n, r in enumerate(requests)]
    return [t[3] for t in sorted(tagged, key=lambda t: t[:3])]


class _TickingClock:
    """Wall-clock milliseconds that never repeat or go back, across loop rounds."""

    def __init__(self, last_ms: int, now: Callable[[], int] | None = None) -> None:
        self.last_ms = last_ms
        self._now = now or _now_ms

    def __call__(self) -> int:
        self.last_ms = max(self._now(), self.last_ms + 1)
        return self.last_ms


def _next_round(stream: Sequence[Record], round_no: int, clock_ms: Callable[[], int],
                run_tag: str = "") -> Iterator[Record]:
    """The stream again with ids suffixed ``-<run_tag>r<round>`` and ts from ``clock_ms`` (send time).

    ``run_tag`` tells apart two ``--loop`` runs against the same running job, whose dedup state
    would otherwise drop the second run's ``-r1`` events as duplicates of the first's.

    The sample's original gaps span 7 days; replayed from "now" they would land up to 7 days in
    the future and be dead-lettered (the engine accepts at most a day of skew). Stamping the send
    time keeps the order and event time tracking the wall clock, so ``--rate`` sets the pace.
    """
    for r in stream:
        id_field = "event_id" if "event_id" in r else "request_id"
        yield {**r, id_field: f"{r[id_field]}-{run_tag}r{round_no}", "ts": clock_ms()}


class _Throttle:
    """Waits so that at most ``rate`` records per second go out (``rate <= 0``: no limit).

    Waiting on ``stop`` rather than sleeping lets a slow demo stream end as soon as it is told to.
    """

    def __init__(self, rate: float, stop: threading.Event) -> None:
        self.rate = rate
        self.stop = stop
        self.started = time.monotonic()
        self.count = 0

    def wait(self) -> None:
        if self.rate > 0:
            delay = self.started + self.count / self.rate - time.monotonic()
            if delay > 0:
                self.stop.wait(delay)
        self.count += 1


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _key(record: Record) -> str:
    """Partition key: items by item, everything else by user (keeps one user's records in order)."""
    return record["item_id"] if "title" in record else record["user_id"]


class _Sender:
    """Sends records to their topic with throttling, failure collection and progress lines."""

    def __init__(self, producer: Any, cfg: EngineConfig, rate: float, stop: threading.Event) -> None:
        self.producer = producer
        self.topics = {"items": cfg.topics.item_catalog, "users": cfg.topics.user_attributes,
                       "events": cfg.topics.user_events, "requests": cfg.topics.recommendation_requests}
        self.stop = stop
        self.throttle = _Throttle(rate, stop)
        self.counts = dict.fromkeys(self.topics, 0)
        self.failures: list[BaseException] = []
        self.started = time.monotonic()

    def send_all(self, records: Iterable[Record], kind: str | None, round_no: int) -> bool:
        """Send ``records`` (``kind`` None: events and requests mixed); False once told to stop."""
        for record in records:
            self.throttle.wait()
            if self.stop.is_set():
                return False
            this_kind = kind or ("events" if "event_id" in record else "requests")
            future = self.producer.send(self.topics[this_kind], key=_key(record), value=record)
            future.add_errback(self.failures.append)
            self.counts[this_kind] += 1
            if self.total % PROGRESS_EVERY == 0:
                self.progress(f"{self.total} records sent (round {round_no}; ")
        return True

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def progress(self, head: str) -> None:
        print(f"sample: {head}" + ", ".join(f"{k} {v}" for k, v in self.counts.items())
              + f"; {time.monotonic() - self.started:.1f}s)", flush=True)


def produce(cfg: EngineConfig, rate: float = 0.0, loop: bool = False,
            stop: threading.Event | None = None) -> int:
    """Play the bundled sample into Kafka: catalogue and users first, then events + requests.

    Returns 0 when every record was acknowledged, 1 when the broker cannot be reached or a send
    failed. With ``loop`` it only ends on Ctrl-C or when ``stop`` is set (the demo runs it in a
    thread, where Ctrl-C does not arrive).
    """
    from kafka import KafkaProducer
    from kafka.errors import KafkaError

    from recsys.kafka_io import client_kwargs

    stop = stop or threading.Event()
    data = load_sample()
    stream = _merge_in_time_order(data.events, data.requests)
    shifted = shift_to_now(stream, _now_ms())
    delta = shifted[-1]["ts"] - stream[-1]["ts"] if stream else 0
    try:
        producer = KafkaProducer(
            bootstrap_servers=cfg.kafka.bootstrap_servers, acks="all",
            key_serializer=lambda k: k.encode("utf-8"),
            value_serializer=lambda v: json.dumps(v, separators=(",", ":"), ensure_ascii=False).encode("utf-8"),
            **client_kwargs(cfg.kafka))
    except KafkaError as e:
        print(f"sample: cannot reach Kafka at {cfg.kafka.bootstrap_servers}: {e}", file=sys.stderr)
        return 1
    sender = _Sender(producer, cfg, rate, stop)
    try:
        going = (sender.send_all(_shift(data.items, delta), "items", 0)
                 and sender.send_all(_shift(data.users, delta), "users", 0))
        producer.flush()  # the catalogue and attributes are in before the first event
        going = going and sender.send_all(shifted, None, 0)
        producer.flush()
        clock = _TickingClock(shifted[-1]["ts"] if shifted else 0)
        run_tag = f"{_now_ms() // 1000:x}-"  # e.g. "692a1b3c-": unique per produce invocation
        round_no = 1
        while loop and going and not sender.failures:
            going = sender.send_all(_next_round(stream, round_no, clock, run_tag), None, round_no)
            producer.flush()
            round_no += 1
    finally:
        producer.close(timeout=10)
    if sender.failures:
        print(f"sample: {len(sender.failures)} records failed, first: {sender.failures[0]!r}", file=sys.stderr)
        return 1
    sender.progress(f"done, {sender.total} records (")
    return 0


if __name__ == "__main__":
    for written in write_sample(sys.argv[1] if len(sys.argv) > 1 else SAMPLE_DATA_DIR):
        print(f"{written} ({written.stat().st_size} bytes)")
