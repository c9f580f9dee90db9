"""The item operator's engine: item activity and pair updates in, similarity rows out.

:class:`ItemSide` is one subtask of the item operator (keyed by item). Per micro-batch it

* counts the item activity broadcast by the user operator into the replicated counters
  (:class:`udfs.similarity.ItemStats`: occurrence N and popularity, for *all* items);
* applies the pair updates of its own rows in one kernel call
  (:class:`udfs.similarity.SimilarityShard`);
* publishes changed neighbour rows, at most once per ``emit_min_interval_ms`` per item (a timer
  sends a row that changed again too soon), to ``item-similarity`` and, with the popularity of
  the items changed in the batch (subtask 0 only: every subtask holds the same counters), as one
  model update for the user operator.

Rows live in memory between checkpoints and go back to keyed state at each checkpoint; the
counters go to replicated state. Callers: ``flink_jobs/batch_host.py``, the simulator, the
benchmarks.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import numpy as np
import orjson

from state_schemas import records as rec
from state_schemas.config import EngineConfig
from udfs.ease import EaseHead
from udfs.observability import MetricDeltas
from udfs.similarity import Emission, ItemStats, SimilarityShard
from udfs.user_side import BatchResult, Record

STATE_ROW = 0
STATE_NAMES = ("similarity-row",)


def similarity_message(e: Emission) -> bytes:
    """The ``item-similarity`` record of one row (``item-similarity.v1.json``)."""
    return orjson.dumps({"schema_version": 1, "item_id": e.item_id, "updated_at": e.updated_at,
                         "neighbors": [{"item_id": j, "score": round(s, 6)}
                                       for j, s in zip(e.neighbor_ids, e.scores)]})


class ItemSide:
    """One item-operator subtask's engine (see the module docstring)."""

    def __init__(self, cfg: EngineConfig, *, subtask: int = 0) -> None:
        self.cfg = cfg
        self.subtask = subtask
        self.stats = ItemStats(cfg)
        self.shard = SimilarityShard(cfg, self.stats)
        self.metrics = MetricDeltas()
        # Per user-operator subtask, the number of its last activity record counted, and the
        # pair updates that arrived before the activity they were stamped with (in order).
        self.activity_counted: dict[int, int] = {}
        self.waiting_pairs: list[tuple[int, int, str, list, list, list]] = []
        # EASE over the head (similarity.ease_head_items > 0): used on the subtask that owns
        # records.EASE_KEY only; the others never receive its records.
        self.ease = EaseHead(cfg, self.stats) if cfg.similarity.ease_head_items > 0 else None
        self.ease_timer_at: int | None = None
        if self.ease is not None:
            for name in ("ease_refreshes", "ease_updates_outside_head"):
                self.metrics.inc(name, 0)
        # Registered at 0: Prometheus' increase() cannot see the growth of a series whose first
        # scrape already holds its value, and dashboards show 0 rather than "no data".
        for name in ("similarity_pair_updates", "similarity_batches",
                     "similarity_updates_emitted", "similarity_rows_created"):
            self.metrics.inc(name, 0)

    def restore(self, shared: dict[str, bytes]) -> None:
        self.stats.restore(shared)

    @contextmanager
    def _boundary(self, r: Record) -> Iterator[None]:
        """The exception boundary: no record fails the task. Records here come from the user
        operator, validated there: a failure is a defect, counted (the internal_errors metric
        alerts) rather than crash-looping."""
        try:
            yield
        except Exception:  # noqa: BLE001
            self.metrics.inc("internal_errors", 1, (("kind", rec.KIND_NAMES.get(r.kind, "?")),))

    def _count_activity(self, payload: bytes) -> None:
        origin, seq, ids, weights, deltas, ts, segments = rec.decode_activity(payload)
        self.stats.apply_activity(
            ids, np.asarray(weights, dtype=np.float64), np.asarray(deltas, dtype=np.float64),
            np.asarray(ts, dtype=np.int64), segments)
        if seq > self.activity_counted.get(origin, 0):
            self.activity_counted[origin] = seq

    def _on_ease_record(self, r: Record, blob: bytes | None, proc_now: int,
                        out: BatchResult) -> bool:
        """A Gram update or the refresh timer of the EASE key; True when a refresh is due now.
        One timer at a time: a change registers one for the next refresh time."""
        ease = self.ease
        if ease is None:  # records from a user operator configured differently: a defect
            raise RuntimeError("an EASE record reached an item operator with EASE off")
        ease.load(blob)
        if r.kind == rec.KIND_GRAM:
            ease.apply(rec.decode_gram(r.payload))
        elif r.kind == rec.KIND_TIMER:
            self.ease_timer_at = None
        if not ease.pending:
            return False
        if proc_now >= ease.due_at():
            return True
        if self.ease_timer_at is None:
            self.ease_timer_at = ease.due_at()
            out.timers.append((rec.EASE_KEY, self.ease_timer_at))
        return False

    def _release_waiting_pairs(self, checkpoint: bool) -> int:
        """Hand the waiting pair updates whose activity has been counted to the shard (all of
        them before a checkpoint: with aligned barriers their activity has arrived by then, and
        without alignment applying them late beats keeping them out of the snapshot). Returns
        the number of pair updates released."""
        if not self.waiting_pairs:
            return 0
        released = 0
        still: list[tuple[int, int, str, list, list, list]] = []
        for entry in self.waiting_pairs:
            origin, seq, item, cols, deltas, ts = entry
            if checkpoint or seq <= self.activity_counted.get(origin, 0):
                self.shard.on_pairs(item, cols, deltas, ts)
                released += len(cols)
            else:
                still.append(entry)
        self.waiting_pairs = still
        return released

    def process(self, keys: Sequence[str], states: Sequence[Sequence[bytes | None]],
                records: Sequence[Record], proc_now: int,
                checkpoint: bool = False) -> BatchResult:
        out = BatchResult()
        self.stats.items.tick()
        timer_items: list[str] = []
        # The batch's activity first: pair updates wait for the activity they were stamped with
        # (it travels on the other input edge), and later activity only brings counts closer to
        # what a row will be scored with at its next update anyway.
        for r in records:
            if r.kind == rec.KIND_ACTIVITY:
                with self._boundary(r):
                    self._count_activity(r.payload)
        pair_records = self._release_waiting_pairs(checkpoint)
        ease_due = False
        ease_on = self.ease is not None  # else only a stray Gram record (a defect) can be here
        for r in records:
            if r.kind == rec.KIND_GRAM or (ease_on and r.key >= 0
                                           and keys[r.key] == rec.EASE_KEY):
                with self._boundary(r):
                    ease_due |= self._on_ease_record(r, states[r.key][STATE_ROW], proc_now, out)
            elif r.kind == rec.KIND_PAIRS:
                with self._boundary(r):
                    item = keys[r.key]
                    self.shard.load(item, states[r.key][STATE_ROW])
                    origin, seq, cols, deltas, ts = rec.decode_pairs(r.payload)
                    if seq <= self.activity_counted.get(origin, 0) or checkpoint:
                        self.shard.on_pairs(item, cols, deltas, ts)
                        pair_records += len(cols)
                    else:
                        self.waiting_pairs.append((origin, seq, item, cols, deltas, ts))
            elif r.kind == rec.KIND_TIMER:
                with self._boundary(r):
                    item = keys[r.key]
                    self.shard.load(item, states[r.key][STATE_ROW])
                    timer_items.append(item)
        emitted, timers = self.shard.flush(proc_now)
        for item in timer_items:
            now_due, later = self.shard.on_timer(item, proc_now)
            emitted += now_due
            timers += later
        if pair_records:
            self.metrics.inc("similarity_pair_updates", pair_records)
            self.metrics.inc("similarity_batches")
        for e in emitted:
            out.outputs.emit(rec.ITEM_OUT_SIMILARITY, 0, e.item_id, similarity_message(e))
        self.metrics.inc("similarity_updates_emitted", len(emitted))
        if ease_due:
            # EASE rows reach the recommender only (item-similarity carries the item-CF rows).
            try:
                emitted += self.ease.refresh(proc_now)
                self.metrics.inc("ease_refreshes")
            except Exception:  # noqa: BLE001 - a defect: counted, the previous rows stay
                self.metrics.inc("internal_errors", 1, (("kind", "ease_refresh"),))
            self.metrics.set("ease_head_items", len(self.ease.ids))
        if self.shard.rows_created:
            self.metrics.inc("similarity_rows_created", self.shard.rows_created)
            self.shard.rows_created = 0
        popularity = self.stats.popularity_update()
        if self.subtask != 0:  # every subtask counts the same; one publishes
            popularity = None
        if emitted or popularity is not None:
            for payload in rec.encode_model_updates(
                    [(e.item_id, e.neighbor_ids, e.scores, e.source) for e in emitted],
                    popularity,
                    self.cfg.kafka.max_message_bytes):
                out.outputs.emit(rec.ITEM_OUT_MODEL, rec.KIND_MODEL_UPDATE, "", payload)
        out.timers.extend(timers)
        if checkpoint:
            for item, blob in self.shard.dirty_rows():
                out.state_updates.append((item, STATE_ROW, blob))
            if self.ease is not None:
                blob = self.ease.snapshot()
                if blob is not None:
                    out.state_updates.append((rec.EASE_KEY, STATE_ROW, blob))
                if self.ease.updates_outside_head:
                    self.metrics.inc("ease_updates_outside_head", self.ease.updates_outside_head)
                    self.ease.updates_outside_head = 0
            out.shared.update(self.stats.snapshot())
            self.metrics.set("similarity_rows_resident", len(self.shard))
            self.metrics.set("similarity_items_with_occurrence", len(self.stats.items))
        out.metrics = self.metrics.drain()
        return out
