"""``recsys replay ml-100k [--split all|train|test] [--speed max|Nx]``: a data set into Kafka.

The static records go first (``item-catalog``, then ``user-attributes``); then, optionally after
a barrier (the CLI waits until the job has a profile for every user, so that every event is
applied with its item's catalogue entry and the user's demographic segment known — the job
reads its input topics in parallel, so without the barrier the first events may overtake the
catalogue), the ``user-events`` in event-time order (ties by user then item). ``--speed max``
produces as fast as the broker takes it; ``--speed 3600x`` replays an hour of event time per
second of wall time (the gaps between events are divided by N). A progress bar (tqdm, on
stderr) shows the events sent.

Keys are the entity ids (user id for events and attributes, item id for the catalogue), as the
job expects; every record is acknowledged by the broker (acks=all) before ``replay`` returns.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

from state_schemas.config import EngineConfig

Record = dict[str, Any]


@dataclass
class ReplayStats:
    catalog: int = 0
    attributes: int = 0
    events: int = 0
    requests: int = 0
    seconds: float = 0.0

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


def parse_speed(speed: str | float | None) -> float | None:
    """``"max"`` (or None/0) -> None; ``"60x"``/``"60"``/``60`` -> 60.0 (event time per wall time)."""
    if speed is None:
        return None
    if isinstance(speed, (int, float)):
        factor = float(speed)
    else:
        text = speed.strip().lower()
        if text in ("max", "", "0", "0x"):
            return None
        try:
            factor = float(text[:-1] if text.endswith("x") else text)
        except ValueError:
            raise ValueError(f"speed must be 'max' or a factor such as '3600x', got {speed!r}") from None
    if factor <= 0:
        return None
    return factor


def _progress(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is in requirements.txt; degrade to no bar rather than fail
        return None
    return tqdm(total=total, desc=desc, unit="ev", unit_scale=True, file=sys.stderr,
                mininterval=0.5, smoothing=0.1)


def replay(cfg: EngineConfig, catalog: Sequence[Record] = (), attributes: Sequence[Record] = (),
           events: Sequence[Record] = (), requests: Sequence[Record] = (), *,
           speed: str | float | None = "max", progress: bool = True,
           barrier: Callable[[], None] | None = None, sort: bool = True,
           **producer_kwargs: Any) -> ReplayStats:
    """Produce the records into the topics of ``cfg`` (see the module docstring).

    ``requests`` (``recommendation-requests``) are interleaved with the events by ``ts`` (a
    request goes after the events with the same ts). ``barrier`` is called after the static
    records are acknowledged and before the first event. ``sort=False`` keeps the given order.
    """
    from recsys.kafka_io import client_kwargs, json_producer

    factor = parse_speed(speed)
    topics = cfg.topics
    stats = ReplayStats()
    t0 = time.monotonic()
    producer = json_producer(cfg.kafka.bootstrap_servers, linger_ms=20, batch_size=256 * 1024,
                             **{**client_kwargs(cfg.kafka), **producer_kwargs})
    try:
        for rec in catalog:
            producer.send(topics.item_catalog, key=rec["item_id"], value=rec)
            stats.catalog += 1
        for rec in attributes:
            producer.send(topics.user_attributes, key=rec["user_id"], value=rec)
            stats.attributes += 1
        producer.flush()
        if barrier is not None:
            barrier()
        stream: list[tuple[int, int, str, Record]] = (
            [(e["ts"], 0, topics.user_events, e) for e in events]
            + [(r["ts"], 1, topics.recommendation_requests, r) for r in requests])
        if sort:
            stream.sort(key=lambda x: (x[0], x[1]))  # stable: ties keep the given order
        bar = _progress(len(stream), "replay", progress)
        start_wall = time.monotonic()
        first_ts = stream[0][0] if stream else 0
        for n, (ts, _, topic, rec) in enumerate(stream):
            if factor is not None:
                due = start_wall + (ts - first_ts) / 1000.0 / factor
                delay = due - time.monotonic()
                if delay > 0:
                    producer.flush()  # what is due now goes out now, not after linger
                    time.sleep(delay)
            producer.send(topic, key=rec["user_id"], value=rec)
            if topic == topics.user_events:
                stats.events += 1
            else:
                stats.requests += 1
            if bar is not None and n % 256 == 255:
                bar.update(256)
        producer.flush()
        if bar is not None:
            bar.update(len(stream) - bar.n)
            bar.close()
    finally:
        producer.close(timeout=30)
    stats.seconds = time.monotonic() - t0
    return stats


# --------------------------------------------------------------------------- CLI

DATASETS = ("ml-100k",)
SPLITS = ("all", "train", "test")   # recsys.evaluation.movielens.SPLITS (not imported here: keeps the CLI light)
SPLIT_SEED = 42                     # recsys.evaluation.movielens.DEFAULT_SPLIT_SEED


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of ``recsys replay`` (the caller adds --config/--set/--bootstrap-servers)."""
    p.add_argument("dataset", choices=DATASETS)
    p.add_argument("--split", choices=SPLITS, default="all",
                   help="all ratings, or the train/test part of the per-user random 75/25 split "
                        "(Recommenders' python_stratified_split procedure)")
    p.add_argument("--split-seed", type=int, default=SPLIT_SEED)
    p.add_argument("--speed", default="max", help="max, or Nx: N times real (event) time")
    p.add_argument("--users", type=int, default=0, help="only the first N users (0: all)")
    p.add_argument("--no-wait", action="store_true",
                   help="do not wait for the job's profiles before sending events")
    p.add_argument("--wait-timeout", type=float, default=120.0,
                   help="seconds to wait for the job's profiles (the barrier)")
    p.add_argument("--no-progress", action="store_true")


def profiles_barrier(cfg: EngineConfig, user_ids: Iterable[str], timeout_s: float,
                     log: Callable[[str], None] = lambda s: print(s, file=sys.stderr)
                     ) -> Callable[[], None]:
    """A barrier that waits until ``user-profiles`` has a record of every user in ``user_ids``
    (the job applied their attributes; the catalogue, produced before, is then in too)."""
    from recsys.kafka_io import consume

    wanted = set(user_ids)

    def wait() -> None:
        seen: set[str] = set()

        def done(records: list) -> bool:
            seen.update(r["key"] for r in records if r["key"] is not None)
            return wanted <= seen

        consume(cfg.kafka.bootstrap_servers, cfg.topics.user_profiles, timeout_s=timeout_s,
                until=done)
        missing = wanted - seen
        if missing:
            log(f"replay: {len(missing)} of {len(wanted)} profiles did not arrive within "
                f"{timeout_s:g} s (is the job running on these topics?); sending events anyway")
        time.sleep(1.0)  # the catalogue's broadcast reaches the recommender, too

    return wait


def main(args: argparse.Namespace, cfg: EngineConfig) -> int:
    from recsys.evaluation import movielens

    ml = movielens.load()
    users = sorted(ml.users, key=int)[:args.users] if args.users else None
    ratings = movielens.select(ml, args.split, seed=args.split_seed, users=users)
    catalog = movielens.catalog_records(ml)
    attributes = movielens.attribute_records(ml)
    if users is not None:
        keep = {movielens.user_id(u) for u in users}
        attributes = [a for a in attributes if a["user_id"] in keep]
    events = movielens.events(ratings)
    barrier = None if args.no_wait else profiles_barrier(
        cfg, [a["user_id"] for a in attributes], args.wait_timeout)
    print(f"replay: ml-100k split={args.split}: {len(catalog)} items, {len(attributes)} users, "
          f"{len(events)} ratings -> {cfg.kafka.bootstrap_servers} (speed {args.speed})",
          file=sys.stderr)
    stats = replay(cfg, catalog, attributes, events, speed=args.speed,
                   progress=not args.no_progress, barrier=barrier)
    print(f"replay: sent {stats.catalog} catalogue, {stats.attributes} attribute and "
          f"{stats.events} event records in {stats.seconds:.1f} s", file=sys.stderr)
    return 0
