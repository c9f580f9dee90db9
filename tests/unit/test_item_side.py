"""The item operator's engine (``udfs/item_side.py``) on hand-made inter-operator records.

Item activity (broadcast) and pair updates (keyed) reach the item operator on two edges, in no
fixed order. Pair updates carry the stamp of the activity they were sent with and wait for it:
a row scored before its occurrence counts arrived would keep a wrong score (zero, or inflated by
too-small counts) until it is next touched. On ml-100k that lost a third of the top-10s.
"""

from __future__ import annotations

import orjson

from state_schemas import records as rec
from state_schemas.config import load_config
from udfs.item_side import ItemSide
from udfs.user_side import Record

T0 = 1_767_225_600_000
PROC = 10_000_000


def activity(origin: int, seq: int, counts: dict[str, float]) -> Record:
    ids = list(counts)
    return Record(rec.KIND_ACTIVITY, -1, T0, 0, rec.encode_activity(
        origin, seq, ids, [counts[i] for i in ids], [counts[i] for i in ids], [T0] * len(ids),
        [""] * len(ids)))


def pairs(key: int, origin: int, seq: int, cols: dict[str, float]) -> Record:
    return Record(rec.KIND_PAIRS, key, T0, 0, rec.encode_pairs(
        origin, seq, list(cols), list(cols.values()), [T0] * len(cols)))


KEYS = ["a", "b", "c"]
STATES = [[None], [None], [None]]


def rows_of(side: ItemSide, records: list[Record], proc_now: int = PROC,
            checkpoint: bool = False) -> dict[str, list[tuple[str, float]]]:
    out = side.process(KEYS, STATES, records, proc_now, checkpoint=checkpoint)
    return {k: [(n["item_id"], n["score"]) for n in orjson.loads(v)["neighbors"]]
            for k, v in out.outputs.of(rec.ITEM_OUT_SIMILARITY, 0)}


def stream():
    """One user-operator batch: a, b and c occur (a twice), and a co-occurs with b and c."""
    return (activity(0, 1, {"a": 2.0, "b": 1.0, "c": 1.0}),
            [pairs(0, 0, 1, {"b": 1.0, "c": 1.0}), pairs(1, 0, 1, {"a": 1.0}),
             pairs(2, 0, 1, {"a": 1.0})])


def test_pairs_arriving_before_their_activity_wait_for_it():
    act, prs = stream()
    in_order = ItemSide(load_config(None, environ={}))
    expected = rows_of(in_order, [act, *prs])
    assert set(expected) == {"a", "b", "c"} and expected["a"]

    late = ItemSide(load_config(None, environ={}))
    assert rows_of(late, prs) == {}          # nothing scored without the occurrence counts
    assert len(late.waiting_pairs) == 3
    assert rows_of(late, [act]) == expected  # the same rows, the same scores
    assert late.waiting_pairs == []


def test_activity_of_another_subtask_does_not_release_pairs():
    act, prs = stream()
    side = ItemSide(load_config(None, environ={}))
    assert rows_of(side, [activity(1, 5, {"x": 1.0}), *prs]) == {}
    assert len(side.waiting_pairs) == 3
    assert set(rows_of(side, [act])) == {"a", "b", "c"}


def test_a_checkpoint_applies_what_still_waits():
    """With aligned barriers nothing waits at a checkpoint; without, applying late beats
    leaving pair updates out of the snapshot."""
    _, prs = stream()
    side = ItemSide(load_config(None, environ={}))
    rows_of(side, prs[:1])
    out = side.process(KEYS, STATES, prs[1:], PROC, checkpoint=True)
    assert side.waiting_pairs == []
    assert {k for k, _, _ in out.state_updates} == {"a", "b", "c"}
