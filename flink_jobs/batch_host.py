"""The Python side of the micro-batch operator (``deploy/java/.../MicroBatchPythonOperator``).

The Java operator buffers records, reads the keyed state of every key in a batch, and calls
``process_batch`` once per batch; this module turns its arguments into the engine's types
(``udfs.user_side.Record``), calls the engine (:class:`udfs.user_side.UserSide` or
:class:`udfs.item_side.ItemSide`), and turns the result back into the plain tuples Java applies.

Arguments of ``process_batch``:

* ``keys`` — the distinct keys of the batch (str), in first-seen order;
* ``states`` — for each key, its value of each keyed state (bytes or None), key-major;
* ``header`` — int64 little-endian rows of (kind, key index or -1, ts, ingest_ms, length);
* ``payload`` — the records' payloads, concatenated;
* ``reason`` — why the batch is flushed (2: before a checkpoint barrier, 4: end of input);
* ``proc_time``, ``watermark`` — the operator's processing time and current watermark.

It returns ``(state updates, output groups, timers, shared state, metrics)``: flat tuples of
(key, state index, value), groups of (tag, kind, keys, concatenated values, int32 lengths with -1
for None), (key, time), (shared key, value), (metric group path, name, kind, value). A key is the
batch's key index or, for keys not in the batch (rows written back at a checkpoint), the key
string itself.
"""

from __future__ import annotations

import time

import numpy as np

from state_schemas.config import EngineConfig
from udfs.memory import freeze_survivors, tune_collector

FLUSH_CHECKPOINT = 2
FLUSH_END = 4
ROLE_USER = "user"
ROLE_ITEM = "item"


def decode_batch(header: bytes, payload: bytes):
    """The records of a batch, as :class:`udfs.user_side.Record` objects."""
    from udfs.user_side import Record

    h = np.frombuffer(header, dtype="<i8").reshape(-1, 5)
    ends = np.cumsum(h[:, 4]).tolist()
    starts = [0] + ends[:-1]
    return [Record(kind, key, ts, ingest, payload[a:b])
            for (kind, key, ts, ingest), a, b in zip(h[:, :4].tolist(), starts, ends)]


def encode_result(result) -> tuple:
    """A :class:`udfs.user_side.BatchResult` as the tuples the Java operator applies."""
    updates: list = []
    for key, state, value in result.state_updates:
        updates.extend((key, state, value))
    groups = []
    for (tag, kind), (keys, values) in result.outputs.groups.items():
        lengths = np.fromiter((-1 if v is None else len(v) for v in values), dtype="<i4",
                              count=len(values))
        groups.append((tag, kind, tuple(keys), b"".join(v for v in values if v is not None),
                       lengths.tobytes()))
    timers: list = []
    for key, at in result.timers:
        timers.extend((key, int(at)))
    shared: list = []
    for key, value in result.shared.items():
        shared.extend((key, value))
    metrics: list = []
    for entry in result.metrics:
        metrics.extend(entry)
    return tuple(updates), tuple(groups), tuple(timers), tuple(shared), tuple(metrics)


class BatchFunction:
    """What the Java operator unpickles and calls: the user or the item side of the engine."""

    def __init__(self, cfg: EngineConfig, role: str) -> None:
        if role not in (ROLE_USER, ROLE_ITEM):
            raise ValueError(f"unknown role {role!r}")
        self.cfg = cfg
        self.role = role
        self.engine = None

    @property
    def state_names(self) -> tuple[str, ...]:
        if self.role == ROLE_USER:
            from udfs.user_side import STATE_NAMES
        else:
            from udfs.item_side import STATE_NAMES
        return STATE_NAMES

    def open(self, subtask: int, parallelism: int, max_parallelism: int, shared_keys,
             shared_values, legacy) -> tuple:
        shared = dict(zip(shared_keys, shared_values))
        if self.role == ROLE_USER:
            from udfs.privacy import load_pseudonym_key
            from udfs.user_side import UserSide

            privacy = self.cfg.privacy
            key = load_pseudonym_key(privacy) if privacy.pseudonymize_user_ids else None
            self.engine = UserSide(self.cfg, subtask=subtask, pseudonym_key=key)
            old: dict[str, dict[str, bytes]] = {}
            for n in range(0, len(legacy), 3):
                old.setdefault(legacy[n], {})[legacy[n + 1]] = legacy[n + 2]
            self.engine.restore(shared, old)
        else:
            from udfs.item_side import ItemSide

            self.engine = ItemSide(self.cfg, subtask=subtask)
            self.engine.restore(shared)
        self.n_states = len(self.state_names)
        tune_collector()
        self._engine_us = self._glue_us = self._cpu_us = 0.0
        return (), (), (), (), ()

    def process_batch(self, keys, states, header, payload, reason, proc_time, watermark):
        started = time.perf_counter()
        records = decode_batch(header, payload)
        ns = self.n_states
        per_key = [states[k * ns:(k + 1) * ns] for k in range(len(keys))]
        checkpoint = reason in (FLUSH_CHECKPOINT, FLUSH_END)
        engine_started = time.perf_counter()
        cpu_started = time.thread_time()
        if self.role == ROLE_USER:
            result = self.engine.process(keys, per_key, records, proc_time, watermark,
                                         checkpoint=checkpoint)
        else:
            result = self.engine.process(keys, per_key, records, proc_time,
                                         checkpoint=checkpoint)
        engine_done = time.perf_counter()
        self._cpu_us = (time.thread_time() - cpu_started) * 1e6
        # The time of this call is reported with the next one (Python time per batch, the
        # figure to watch before anything else when the job falls behind).
        result.metrics.append(("", "python_engine_us", 0, round(self._engine_us)))
        result.metrics.append(("", "python_glue_us", 0, round(self._glue_us)))
        result.metrics.append(("", "python_engine_cpu_us", 0, round(self._cpu_us)))
        encoded = encode_result(result)
        if checkpoint:
            freeze_survivors()
        self._engine_us = (engine_done - engine_started) * 1e6
        self._glue_us = (time.perf_counter() - engine_done + engine_started - started) * 1e6
        return encoded

    def close(self) -> None:
        self.engine = None
