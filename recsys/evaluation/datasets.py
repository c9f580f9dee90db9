"""The evaluation's data: MovieLens-100k split into what the engine replays and what it is
scored on, for every protocol, the tuner and the baselines.

Splits (``recsys.evaluation.movielens.make_split``):

* ``random``: per user 75/25 with a seed (Recommenders' ``python_stratified_split``);
* ``temporal``: each user's newest 25 % of ratings are the test set (the engine still sees
  other users' later ratings, as in leave-last-out protocols).

Only users with at least one training rating are scored.

With ``validation=True`` the same kind of split is carved from the *training* ratings only
(``movielens.validation_split``): "train" is then the fit part and "test" the validation part,
and no test rating can reach the tuning (``recsys tune``). Data carries which split it is, so a
report always says what its numbers were measured on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from recsys.evaluation import movielens
from recsys.evaluation.baselines import Interaction, InteractionMatrix

Record = dict[str, Any]


@dataclass
class Data:
    ml: movielens.MovieLens
    catalog: list[Record]
    attributes: list[Record]
    train_events: list[Record]
    all_events: list[Record]             # train + test, event-time order (protocol B)
    test: dict[str, set[str]]            # user -> test items (prefixed ids)
    users: list[str]                     # prefixed ids, sorted numerically
    split: dict[str, Any]                # kind, seed, validation

    def interactions(self) -> InteractionMatrix:
        """The training events as the baselines' matrix (weight = the rating), with the whole
        catalogue as its items."""
        return InteractionMatrix.of(
            (Interaction(e["user_id"], e["item_id"], e["ts"], float(e["value"] or 1.0))
             for e in self.train_events),
            items=[c["item_id"] for c in self.catalog])


def load_data(users_limit: int = 0, seed: int = movielens.DEFAULT_SPLIT_SEED, *,
              kind: str = "random", validation: bool = False) -> Data:
    """The first ``users_limit`` users (0: all 943) of MovieLens-100k, split. The split is made
    over all users first, so a subset sees the same split as the whole."""
    ml = movielens.load()
    raw_users = sorted(ml.users, key=int)
    if users_limit:
        raw_users = raw_users[:users_limit]
    keep = set(raw_users)
    train_r, test_r = movielens.make_split(ml.ratings, kind, seed, validation)
    train_r = [r for r in train_r if r.user in keep]
    test_r = [r for r in test_r if r.user in keep]
    trained = {r.user for r in train_r}
    test: dict[str, set[str]] = {}
    for r in test_r:
        if r.user in trained:
            test.setdefault(movielens.user_id(r.user), set()).add(movielens.item_id(r.item))
    users = [movielens.user_id(u) for u in raw_users]
    user_set = set(users)
    attributes = [a for a in movielens.attribute_records(ml) if a["user_id"] in user_set]
    return Data(ml, movielens.catalog_records(ml), attributes, movielens.events(train_r),
                movielens.events(train_r + test_r), test, users,
                {"kind": kind, "seed": seed if kind == "random" else None,
                 "validation": validation})
