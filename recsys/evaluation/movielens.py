"""MovieLens-100k as the engine's input streams (``recsys replay ml-100k``, ``make eval``).

Source: the copy of ml-100k shipped inside the PyPI wheel ``recbole==1.2.1``. The wheel is
fetched with ``pip download --no-deps`` (recbole itself is never installed) into
``.cache/wheels/`` and three "atomic files" are extracted, once, into ``.cache/ml-100k/``:

* ``ml-100k.inter`` — ``user_id:token  item_id:token  rating:float  timestamp:float`` (100,000 rows,
  the rows of the original ``u.data`` in the same order; timestamps are epoch seconds, 1997-09-20
  .. 1998-04-22)
* ``ml-100k.user``  — ``user_id:token  age:token  gender:token  occupation:token  zip_code:token``
* ``ml-100k.item``  — ``item_id:token  movie_title:token_seq  release_year:token  class:token_seq``
  (genres space-separated; one movie has an unknown title/year/genre)

RecBole atomic files are UTF-8 TSV with a typed header ``name:type``; ``token_seq`` fields are
space-separated sequences. The extracted files are checked against pinned SHA-256 digests, so the
evaluation always runs on the same bytes.

Mapping to the topics of the contract (``state_schemas/json``):

* ``user-attributes``: ``{"age": int, "gender": "M"|"F", "occupation": str, "region": str}``.
  The zip code is *not* passed on (a quasi-identifier); ``region`` is coarse: ``us-<first digit>``
  for the ten US zip areas, ``non-us`` for the Canadian-style postcodes.
* ``item-catalog``: ``title`` with the year when known (``"Toy Story (1995)"``), ``categories`` =
  the genres (the placeholder genre ``unknown`` is dropped), ``tags`` = the decade
  (``"1990s"``), ``price`` null, ``available`` true.
* ``user-events``: every rating is ``event_type="rate"`` with ``value`` = the rating (1..5),
  ``ts`` = timestamp * 1000, ``event_id = "ml-<user>-<item>"`` (a user rates a movie once, so the
  id is unique and the same on every run).

Ids get a prefix so users and movies never share a name: user ``196`` is ``u196``, movie ``242``
is ``m242``. Catalogue and attribute records are stamped one day before the first rating.

How a rating becomes a weight is configuration (``profile.rate_neutral`` /
``profile.rate_weight_scale``: ``weight = scale * (rating - neutral)``); see ``deploy/ml-100k.toml``
for the values used on this data set and why.

Note the timestamps are from 1997-98, before the engine's default sanity floor
(``validation.min_ts_ms`` = 2000-01-01): replaying ml-100k needs ``deploy/ml-100k.toml`` (or an
equivalent override).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from recsys import paths

DAY_MS = 86_400_000
WHEEL_REQUIREMENT = "recbole==1.2.1"
WHEEL_NAME = "recbole-1.2.1-py3-none-any.whl"
MEMBER_DIR = "recbole/dataset_example/ml-100k"
FILES: dict[str, str] = {  # extension -> sha256 of the extracted file
    "inter": "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
    "user": "4f670007d9cfbeb9807e757209af1555b9bcc186bde25e767f67cb67c6dd5972",
    "item": "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532",
}
UNKNOWN_GENRE = "unknown"
DEFAULT_SPLIT_SEED = 42   # Recommenders' default SEED
DEFAULT_SPLIT_RATIO = 0.75
VALIDATION_SEED_OFFSET = 1000       # the validation split's seed: the test split's + this

Record = dict[str, Any]


class DatasetError(RuntimeError):
    """The data set could not be fetched, extracted or parsed; the message says why."""


def data_dir() -> Path:
    return paths.CACHE_DIR / "ml-100k"


def wheels_dir() -> Path:
    return paths.CACHE_DIR / "wheels"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _complete(directory: Path) -> bool:
    return all((directory / f"ml-100k.{ext}").is_file()
               and _sha256(directory / f"ml-100k.{ext}") == digest
               for ext, digest in FILES.items())


def _download_wheel(target: Path) -> Path:
    wheel = target / WHEEL_NAME
    if wheel.is_file():
        return wheel
    target.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           "--only-binary=:all:", WHEEL_REQUIREMENT, "-d", str(target)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not wheel.is_file():
        raise DatasetError(f"`{' '.join(cmd)}` failed (exit {proc.returncode}):\n"
                           f"{(proc.stderr or proc.stdout)[-2000:]}")
    return wheel


def fetch(directory: str | os.PathLike | None = None, *, quiet: bool = False) -> Path:
    """Make sure ``ml-100k.{inter,user,item}`` are in ``directory`` (default ``.cache/ml-100k``).

    Idempotent: files already there with the pinned digests are kept; otherwise the wheel is
    downloaded (or reused from ``.cache/wheels``) and the files are extracted atomically.
    """
    target = Path(directory) if directory else data_dir()
    if _complete(target):
        return target
    wheel = _download_wheel(wheels_dir())
    if not quiet:
        print(f"ml-100k: extracting from {wheel.name} into {target}", file=sys.stderr)
    target.mkdir(parents=True, exist_ok=True)
    try:
        with zipfile.ZipFile(wheel) as z:
            for ext, digest in FILES.items():
                data = z.read(f"{MEMBER_DIR}/ml-100k.{ext}")
                if hashlib.sha256(data).hexdigest() != digest:
                    raise DatasetError(f"ml-100k.{ext} in {wheel} does not have the pinned "
                                       f"SHA-256 {digest}")
                tmp = target / f".ml-100k.{ext}.tmp"
                tmp.write_bytes(data)
                tmp.replace(target / f"ml-100k.{ext}")
    except (zipfile.BadZipFile, KeyError) as e:
        raise DatasetError(f"{wheel} is not the expected recbole wheel: {e}") from e
    return target


# --------------------------------------------------------------------------- parsing

def parse_atomic(text: str) -> tuple[list[tuple[str, str]], list[list[str]]]:
    """A RecBole atomic file: ([(field name, type)], rows of raw string fields)."""
    lines = text.split("\n")
    header = lines[0].rstrip("\r").split("\t")
    fields = []
    for h in header:
        name, sep, ftype = h.partition(":")
        if not sep or ftype not in ("token", "token_seq", "float", "float_seq"):
            raise DatasetError(f"bad atomic-file header field {h!r}")
        fields.append((name, ftype))
    rows = []
    for n, line in enumerate(lines[1:], start=2):
        line = line.rstrip("\r")
        if not line:
            continue
        parts = line.split("\t")
        if len(parts) != len(fields):
            raise DatasetError(f"line {n}: {len(parts)} fields, header has {len(fields)}")
        rows.append(parts)
    return fields, rows


@dataclass(frozen=True, slots=True)
class Rating:
    user: str      # raw ids (no prefix)
    item: str
    rating: int
    ts: int        # epoch seconds


@dataclass
class MovieLens:
    users: dict[str, dict[str, Any]] = field(default_factory=dict)   # raw id -> fields
    items: dict[str, dict[str, Any]] = field(default_factory=dict)
    ratings: list[Rating] = field(default_factory=list)              # file order

    @property
    def first_ts_ms(self) -> int:
        return min(r.ts for r in self.ratings) * 1000

    @property
    def last_ts_ms(self) -> int:
        return max(r.ts for r in self.ratings) * 1000


def _columns(fields: list[tuple[str, str]], expected: Sequence[str], what: str) -> list[int]:
    names = [f for f, _ in fields]
    missing = [e for e in expected if e not in names]
    if missing:
        raise DatasetError(f"{what}: missing column(s) {missing} (has {names})")
    return [names.index(e) for e in expected]


def _year(raw: str) -> int | None:
    return int(raw) if raw.isdigit() and len(raw) == 4 else None


def load(directory: str | os.PathLike | None = None, *, fetch_if_missing: bool = True) -> MovieLens:
    """Parse the three files (fetching them first if needed)."""
    d = Path(directory) if directory else data_dir()
    if fetch_if_missing:
        fetch(d, quiet=True)
    ml = MovieLens()
    fields, rows = parse_atomic((d / "ml-100k.user").read_text(encoding="utf-8"))
    iu, ia, ig, io_, iz = _columns(fields, ["user_id", "age", "gender", "occupation", "zip_code"],
                                   "ml-100k.user")
    for r in rows:
        ml.users[r[iu]] = {"age": int(r[ia]), "gender": r[ig], "occupation": r[io_],
                           "zip_code": r[iz]}
    fields, rows = parse_atomic((d / "ml-100k.item").read_text(encoding="utf-8"))
    ii, it, iy, ic = _columns(fields, ["item_id", "movie_title", "release_year", "class"],
                              "ml-100k.item")
    for r in rows:
        ml.items[r[ii]] = {"title": r[it].strip(), "year": _year(r[iy].strip()),
                           "genres": [g for g in r[ic].split(" ") if g]}
    fields, rows = parse_atomic((d / "ml-100k.inter").read_text(encoding="utf-8"))
    cu, ci, cr, ct = _columns(fields, ["user_id", "item_id", "rating", "timestamp"],
                              "ml-100k.inter")
    ml.ratings = [Rating(r[cu], r[ci], int(float(r[cr])), int(float(r[ct]))) for r in rows]
    return ml


# --------------------------------------------------------------------------- mapping

def user_id(raw: str) -> str:
    return f"u{raw}"


def item_id(raw: str) -> str:
    return f"m{raw}"


def event_id(user_raw: str, item_raw: str) -> str:
    return f"ml-{user_id(user_raw)}-{item_id(item_raw)}"


def region_of(zip_code: str) -> str:
    """Coarse region from a zip code: ``us-<first digit>`` or ``non-us``."""
    z = zip_code.strip()
    return f"us-{z[0]}" if len(z) == 5 and z.isdigit() else "non-us"


def decade_of(year: int | None) -> str | None:
    return f"{year // 10 * 10}s" if year else None


def attributes_record(raw_id: str, u: dict[str, Any], ts_ms: int) -> Record:
    return {"user_id": user_id(raw_id), "ts": ts_ms,
            "attributes": {"age": u["age"], "gender": u["gender"], "occupation": u["occupation"],
                           "region": region_of(u["zip_code"])}}


def catalog_record(raw_id: str, i: dict[str, Any], ts_ms: int) -> Record:
    title = i["title"] if i["title"] and i["title"] != "unkonwn" else f"Movie {raw_id}"
    if i["year"] and not title.endswith(f"({i['year']})"):
        title = f"{title} ({i['year']})"
    decade = decade_of(i["year"])
    return {"item_id": item_id(raw_id), "ts": ts_ms, "title": title,
            "categories": [g for g in i["genres"] if g != UNKNOWN_GENRE],
            "tags": [decade] if decade else [], "price": None, "available": True}


def rating_event(r: Rating) -> Record:
    return {"event_id": event_id(r.user, r.item), "user_id": user_id(r.user),
            "item_id": item_id(r.item), "event_type": "rate", "ts": r.ts * 1000,
            "value": float(r.rating), "context": None}


def reference_ts_ms(ml: MovieLens) -> int:
    """When catalogue and attributes are stamped: one day before the first rating."""
    return ml.first_ts_ms - DAY_MS


def catalog_records(ml: MovieLens) -> list[Record]:
    ts = reference_ts_ms(ml)
    return [catalog_record(i, info, ts) for i, info in sorted(ml.items.items(), key=_num_key)]


def attribute_records(ml: MovieLens) -> list[Record]:
    ts = reference_ts_ms(ml)
    return [attributes_record(u, info, ts) for u, info in sorted(ml.users.items(), key=_num_key)]


def _num_key(kv: tuple[str, Any]) -> tuple[int, str]:
    k = kv[0]
    return (int(k), k) if k.isdigit() else (1 << 62, k)


def time_ordered(ratings: Iterable[Rating]) -> list[Rating]:
    """Event-time order; ties (same second) by user then item, numerically: deterministic."""
    return sorted(ratings, key=lambda r: (r.ts, _num_key((r.user, None))[0],
                                          _num_key((r.item, None))[0]))


def events(ratings: Iterable[Rating]) -> list[Record]:
    """``user-events`` records of ``ratings`` in event-time order."""
    return [rating_event(r) for r in time_ordered(ratings)]


# --------------------------------------------------------------------------- split

def stratified_split(ratings: Sequence[Rating], ratio: float = DEFAULT_SPLIT_RATIO,
                     seed: int = DEFAULT_SPLIT_SEED) -> tuple[list[Rating], list[Rating]]:
    """Per-user random split: (train, test), ``ratio`` of each user's ratings in train.

    The same procedure as Recommenders' ``python_stratified_split(data, ratio, seed=seed)``: one
    uniform number per row from ``np.random.seed(seed); np.random.rand(n)`` in file order, each
    user's rows ranked by it, and a row goes to train when ``rank / count <= ratio``. On the
    rows in ``ml-100k.inter`` order this reproduces that split.
    """
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"ratio must be in (0, 1), got {ratio}")
    draws = np.random.RandomState(seed).rand(len(ratings))
    return _split_per_user(ratings, ratio, lambda n: (draws[n], n))


def temporal_split(ratings: Sequence[Rating], ratio: float = DEFAULT_SPLIT_RATIO
                   ) -> tuple[list[Rating], list[Rating]]:
    """Per-user split in time: (train, test), each user's oldest ``ratio`` of ratings in train
    (the same rank rule as :func:`stratified_split`, ranks by event time, ties by item) and
    the newest in test. A real-time engine lives in time order; a random split lets it pair a
    user's test items with training items rated in the same sitting.

    Per user rather than one global cut: on ml-100k most users rate in one burst, so the newest
    20 % of all ratings belong mostly to users with no rating before the cut (109 users of 943
    would be scored), a cold-start test no batch baseline can take part in."""
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"ratio must be in (0, 1), got {ratio}")
    return _split_per_user(ratings, ratio,
                           lambda n: (ratings[n].ts, _num_key((ratings[n].item, None))[0], n))


def _split_per_user(ratings: Sequence[Rating], ratio: float, order_key: Callable[[int], Any]
                    ) -> tuple[list[Rating], list[Rating]]:
    """Each user's ratings ranked by ``order_key`` (of the rating's index); a rating goes to
    train when ``rank / count <= ratio``. Both parts keep the input order."""
    by_user: dict[str, list[int]] = {}
    for n, r in enumerate(ratings):
        by_user.setdefault(r.user, []).append(n)
    train_idx: list[int] = []
    test_idx: list[int] = []
    for rows in by_user.values():
        order = sorted(rows, key=order_key)
        count = len(order)
        for rank, n in enumerate(order, start=1):
            (train_idx if rank / count <= ratio else test_idx).append(n)
    train_idx.sort()
    test_idx.sort()
    return [ratings[n] for n in train_idx], [ratings[n] for n in test_idx]


def validation_split(train: Sequence[Rating], seed: int = DEFAULT_SPLIT_SEED,
                     kind: str = "random") -> tuple[list[Rating], list[Rating]]:
    """(fit, validation) carved from training ratings only, the same way the test set was
    carved from all ratings: tuning on it never sees a test rating."""
    if kind == "temporal":
        return temporal_split(train)
    return stratified_split(train, DEFAULT_SPLIT_RATIO, seed + VALIDATION_SEED_OFFSET)


SPLIT_KINDS = ("random", "temporal")


def make_split(ratings: Sequence[Rating], kind: str = "random", seed: int = DEFAULT_SPLIT_SEED,
          validation: bool = False) -> tuple[list[Rating], list[Rating]]:
    """(train, test) of ``kind`` (``random``: per user 75/25 with ``seed``; ``temporal``: each
    user's newest 25 %). With ``validation``, (fit, validation) carved from that train instead."""
    if kind not in SPLIT_KINDS:
        raise ValueError(f"split kind must be one of {SPLIT_KINDS}, got {kind!r}")
    train, test = (stratified_split(ratings, DEFAULT_SPLIT_RATIO, seed) if kind == "random"
                   else temporal_split(ratings))
    return validation_split(train, seed, kind) if validation else (train, test)


SPLITS = ("all", "train", "test")


def select(ml: MovieLens, split: str, ratio: float = DEFAULT_SPLIT_RATIO,
           seed: int = DEFAULT_SPLIT_SEED, users: Iterable[str] | None = None) -> list[Rating]:
    """The ratings of ``split`` (``all`` | ``train`` | ``test``), optionally only of ``users``
    (raw ids). The split is made over all users first, so a subset sees the same split."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    ratings = ml.ratings
    if split != "all":
        train, test = stratified_split(ratings, ratio, seed)
        ratings = train if split == "train" else test
    if users is not None:
        keep = set(users)
        ratings = [r for r in ratings if r.user in keep]
    return ratings
