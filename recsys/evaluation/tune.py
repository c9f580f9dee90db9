"""``recsys tune``: choose engine settings on validation data, never on the test split.

A search file (``deploy/tuning/*.toml``) names the data set's split, the settings to start
from and, per setting, the values to try. The tuner runs coordinate descent: setting after
setting, every value is tried with the others held at their current best, and the best
validation nDCG@10 is kept (a tie keeps the current value); rounds repeat until one changes
nothing or ``rounds`` is reached. Each trial is protocol A in the in-process simulator
(``recsys.evaluation.simulate.run_protocol_a``, the job's own engine) on the validation split carved from
the training ratings (``recsys.evaluation.datasets``, ``validation=True``): the test ratings are not even
loaded.

It writes the whole search (every trial and its score) as JSON and Markdown, and with
``--write`` the chosen settings as a preset file, each with the scores of the values it beat.

    recsys tune deploy/tuning/ratings.toml --report docs/tuning/ratings.md \\
        --write deploy/presets/ratings.toml
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
import time
import tomllib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recsys.paths import PROJECT_ROOT

K = 10


DATASETS = ("ml-100k", "ml-100k-first-half", "synthetic")
OBJECTIVES = ("mean", "worst_vs_ease")


@dataclass
class Search:
    path: Path
    dataset: str       # ml-100k: protocol A nDCG@10 on validation splits of the training
    splits: list[str]  # ratings (their mean over these kinds of split: random, temporal);
    seed: int          # ml-100k-first-half: protocol B HitRate@10 on the ratings of the first
                       # half of the time range (make eval reports the second half apart);
                       # synthetic: protocol B HitRate@10 on the synthetic e-commerce stream
                       # generated with this seed (the evaluation reports another)
    users: int
    rounds: int
    objective: str     # over several splits: "mean" nDCG, or "worst_vs_ease": the smallest
                       # ratio of the engine's nDCG to EASE's on the same validation split
    fixed: dict[str, Any]
    start: dict[str, Any]
    space: dict[str, list[Any]]

    @property
    def metric(self) -> str:
        if self.dataset != "ml-100k":
            return f"hit_rate@{K}"
        return f"ndcg@{K}" if self.objective == "mean" else f"ndcg@{K}/EASE (worst split)"

    @classmethod
    def load(cls, path: Path) -> "Search":
        raw = tomllib.loads(path.read_text())
        t = raw.get("tune", {})
        space = raw.get("space", {})
        if not space:
            raise SystemExit(f"{path}: [space] names no setting to tune")
        for key, values in space.items():
            if not isinstance(values, list) or not values:
                raise SystemExit(f"{path}: space.{key} must be a non-empty list of values")
        dataset = t.get("dataset", "ml-100k")
        if dataset not in DATASETS:
            raise SystemExit(f"{path}: tune.dataset must be one of {DATASETS}")
        splits = t.get("split", "random")
        splits = [splits] if isinstance(splits, str) else list(splits)
        if not splits or any(k not in ("random", "temporal") for k in splits):
            raise SystemExit(f"{path}: tune.split must be random, temporal or a list of them")
        objective = t.get("objective", "mean")
        if objective not in OBJECTIVES:
            raise SystemExit(f"{path}: tune.objective must be one of {OBJECTIVES}")
        return cls(path, dataset, splits, int(t.get("seed", 42)),
                   int(t.get("users", 0)), int(t.get("rounds", 2)), objective,
                   dict(raw.get("fixed", {})),
                   dict(raw.get("start", {})), {k: list(v) for k, v in space.items()})


def literal(value: Any) -> str:
    """A TOML literal of a setting's value (for ``--set`` and the preset file)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {literal(v)}" for k, v in value.items()) + "}"
    return repr(value)


def overrides(settings: dict[str, Any]) -> list[str]:
    return [f"{k}={literal(v)}" for k, v in settings.items()]


# Each worker process loads the validation data once (and, for "worst_vs_ease", EASE's best
# validation nDCG on each split, its lambda chosen on that split as in `make eval`).
_DATA: Any = None
_EASE: list[float] = []
_OBJECTIVE = "mean"


def _init(dataset: str, splits: list[str], seed: int, users: int, objective: str) -> None:
    global _DATA, _EASE, _OBJECTIVE
    _OBJECTIVE = objective
    if dataset == "synthetic":
        from recsys.evaluation.compare import synthetic_stream

        _DATA = synthetic_stream(seed)
        return
    if dataset == "ml-100k-first-half":
        from recsys.evaluation.compare import movielens_first_half

        _DATA = movielens_first_half(users)
        return
    from recsys.evaluation.compare import tune_ease
    from recsys.evaluation.datasets import load_data

    _DATA = [load_data(users, seed, kind=kind, validation=True) for kind in splits]
    if objective == "worst_vs_ease":
        _EASE = [max(tune_ease(users, seed, kind, K)[1].values()) for kind in splits]


def _trial(settings: list[str]) -> float:
    from state_schemas.config import load_config

    cfg = load_config(None, settings, environ={})
    d = _DATA
    if isinstance(d, dict):  # a stream: protocol B
        from recsys.evaluation.compare import engine_protocol_b

        return float(engine_protocol_b(cfg, d)[f"hit_rate@{K}"])
    from recsys.evaluation.simulate import run_protocol_a

    scores = [float(run_protocol_a(cfg, v.catalog, v.attributes, v.train_events, v.test,
                                   k=K).metrics[f"ndcg@{K}"]) for v in d]
    return combine(scores, _EASE, _OBJECTIVE)


def combine(scores: list[float], ease: list[float], objective: str) -> float:
    """One trial's score from its validation nDCG per split (``ease``: EASE's per split)."""
    if objective == "worst_vs_ease":
        return min(s / e for s, e in zip(scores, ease, strict=True))
    return sum(scores) / len(scores)


@dataclass
class Trial:
    round: int
    setting: str
    value: Any
    ndcg: float


@dataclass
class Result:
    settings: dict[str, Any]
    score: float
    trials: list[Trial] = field(default_factory=list)
    seconds: float = 0.0


def coordinate_descent(search: Search, workers: int, log=print) -> Result:
    cache: dict[tuple, float] = {}
    pool = ProcessPoolExecutor(max_workers=workers, initializer=_init,
                               initargs=(search.dataset, search.splits, search.seed,
                                         search.users, search.objective))
    t0 = time.monotonic()

    def score_all(candidates: list[dict[str, Any]]) -> list[float]:
        keys = [tuple(sorted((k, literal(v)) for k, v in c.items())) for c in candidates]
        todo = {k: c for k, c in zip(keys, candidates) if k not in cache}
        futures = {k: pool.submit(_trial, overrides({**search.fixed, **c}))
                   for k, c in todo.items()}
        for k, f in futures.items():
            cache[k] = f.result()
        return [cache[k] for k in keys]

    try:
        current = {**search.start}
        best = score_all([current])[0]
        log(f"tune: start {best:.4f}")
        result = Result(dict(current), best)
        for rnd in range(1, search.rounds + 1):
            changed = False
            for key, values in search.space.items():
                candidates = [{**current, key: v} for v in values]
                scores = score_all(candidates)
                for v, s in zip(values, scores):
                    result.trials.append(Trial(rnd, key, v, s))
                top = max(range(len(values)), key=lambda n: scores[n])
                if scores[top] > best:
                    current, best, changed = candidates[top], scores[top], True
                elif key not in current and scores[top] == best:
                    # the default scored best (the first value of a list is the default): say so
                    current = candidates[top]
                log(f"tune: round {rnd} {key}: "
                    + ", ".join(f"{literal(v)} {s:.4f}" for v, s in zip(values, scores))
                    + f" -> {literal(current.get(key))} ({best:.4f})")
            if not changed:
                break
        result.settings, result.score = current, best
        result.seconds = time.monotonic() - t0
        return result
    finally:
        pool.shutdown(cancel_futures=True)


# ------------------------------------------------------------------------- reports

def markdown(search: Search, result: Result, command: str) -> str:
    shown = search.path.resolve()
    if shown.is_relative_to(PROJECT_ROOT):
        shown = shown.relative_to(PROJECT_ROOT)
    lines = [f"# Tuning: `{shown}`",
             "",
             f"Written by `{command}` ({result.seconds / 60:.0f} min). " + describe(search),
             "",
             f"**Chosen (validation {search.metric} {result.score:.4f}):**",
             "", "```toml"] + [f"{k} = {literal(v)}" for k, v in result.settings.items()] + [
             "```", "", "Fixed (not tuned; see the search file for why): "
             + ", ".join(f"`{k} = {literal(v)}`" for k, v in search.fixed.items()), "",
             f"| round | setting | value | validation {search.metric} |", "|---|---|---|---|"]
    for t in result.trials:
        chosen = " **(kept)**" if result.settings.get(t.setting) == t.value else ""
        lines.append(f"| {t.round} | `{t.setting}` | `{literal(t.value)}`{chosen} | {t.ndcg:.4f} |")
    return "\n".join(lines) + "\n"


def describe(search: Search) -> str:
    if search.dataset == "synthetic":
        return (f"Coordinate descent on the synthetic e-commerce stream generated with seed "
                f"{search.seed} (`recsys.evaluation.compare.synthetic_stream`; `make eval` reports another "
                f"seed). Metric: protocol B (prequential) HitRate@{K} in the simulator.")
    if search.dataset == "ml-100k-first-half":
        return (f"Coordinate descent on the MovieLens-100k ratings of the first half of their "
                f"time range (`recsys.evaluation.compare.movielens_first_half`; `make eval` "
                f"reports protocol B's second half apart, and none of its ratings was "
                f"replayed). Metric: protocol B (prequential) HitRate@{K} in the simulator.")
    splits = " and the ".join(search.splits)
    several = len(search.splits) > 1
    if search.objective == "worst_vs_ease":
        mean = (", divided by EASE's on the same validation split (lambda chosen there), the "
                "worst split counting")
    else:
        mean = " (the mean over the splits)" if several else ""
    return (f"Coordinate descent on the validation {'splits' if several else 'split'} carved from "
            f"the training ratings of the {splits} split (seed {search.seed}) of MovieLens-100k: "
            f"the test ratings were not loaded. Metric: protocol A nDCG@{K} in the simulator"
            f"{mean}.")


def preset_toml(search: Search, result: Result, command: str) -> str:
    """The chosen settings as a config file, grouped by section, each with the validation
    scores of the values tried for it in the last round that varied it."""
    last: dict[str, dict[str, float]] = {}
    for t in result.trials:
        last.setdefault(t.setting, {})
        if t.round == max(x.round for x in result.trials if x.setting == t.setting):
            last[t.setting][literal(t.value)] = t.ndcg
    sections: dict[str, list[str]] = {}
    for key, value in result.settings.items():
        section, _, name = key.rpartition(".")
        tried = last.get(key)
        comment = (f"  # validation {search.metric}: "
                   + ", ".join(f"{v} {s:.4f}" for v, s in tried.items()) if tried else "")
        sections.setdefault(section, []).append(f"{name} = {literal(value)}{comment}")
    out = [f"# Generated by `{command}`.",
           *(f"# {line}" for line in textwrap.wrap(describe(search), 94)),
           f"# Validation {search.metric}: {result.score:.4f}. The whole search is in the report",
           "# (docs/tuning/). Do not hand-edit: change the search file and re-run the tuner.", ""]
    for section, lines in sections.items():
        out += [f"[{section}]", *lines, ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="recsys tune", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    argv = list(argv if argv is not None else sys.argv[1:])
    return run(p.parse_args(argv), argv)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("search", help="the search file, e.g. deploy/tuning/ratings.toml")
    p.add_argument("--report", metavar="MD", help="write the search as Markdown (and .json)")
    p.add_argument("--write", metavar="TOML", help="write the chosen settings as a preset file")
    p.add_argument("--workers", type=int, default=2, help="simulator processes")
    p.add_argument("--rounds", type=int, help="override the search file's rounds")
    p.add_argument("--users", type=int, help="only the first N users (quick runs)")


def run(args: argparse.Namespace, argv: list[str] | None = None) -> int:
    """``argv``: the arguments after ``tune`` (for the report's command line)."""
    from recsys.evaluation import movielens

    movielens.fetch()
    search = Search.load(Path(args.search))
    if args.rounds is not None:
        search.rounds = args.rounds
    if args.users is not None:
        search.users = args.users
    command = "recsys tune " + " ".join(argv if argv is not None else sys.argv[2:])
    result = coordinate_descent(search, args.workers,
                                log=lambda s: print(s, file=sys.stderr, flush=True))
    print(json.dumps({"settings": result.settings, f"validation_{search.metric}": result.score}))
    if args.report:
        md = Path(args.report)
        md.parent.mkdir(parents=True, exist_ok=True)
        md.write_text(markdown(search, result, command))
        md.with_suffix(".json").write_text(json.dumps(
            {"command": command, "search": str(search.path), "dataset": search.dataset,
             "splits": search.splits,
             "seed": search.seed, "fixed": search.fixed, "start": search.start,
             "chosen": result.settings, f"validation_{search.metric}": result.score,
             "trials": [t.__dict__ for t in result.trials], "seconds": result.seconds},
            indent=1) + "\n")
    if args.write:
        Path(args.write).write_text(preset_toml(search, result, command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
