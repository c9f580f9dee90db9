"""``make eval``: MovieLens-100k through the real pipeline, offline and streaming metrics.

Protocol A (offline, comparable with Microsoft Recommenders' MovieLens-100k table)
    Per-user random 75/25 split, seed 42, the procedure of Recommenders'
    ``python_stratified_split`` (``recsys.evaluation.movielens.stratified_split``). A fresh job (own broker
    topics, empty state) gets the catalogue and attributes, then the 75 % in event-time order;
    once it has applied every event (its ``recommendations`` topic holds one record per accepted
    event) and a few seconds more (the last similarity flush and neighbour emissions), one
    ``recommendation-requests`` record per user (k = 10, stamped with the user's last training
    event) is sent and the answers carrying those ``request_id`` are collected. Items the user
    rated in training are consumed and never recommended (``profile.consumed_event_types``
    contains ``rate``; ``profile.consumed_max`` = 1000 > the 737 ratings of the heaviest user).
    Metrics: ``recsys.evaluation.metrics`` (Recommenders' definitions, binary relevance, every test rating is
    relevant). Beside it, on the same split and with the same metric code: popularity, SAR
    (cosine, Jaccard) and EASE with lambda chosen on the split's validation part
    (``recsys/evaluation/compare.py``, ``recsys/evaluation/baselines.py``); and the published table. The same is run
    on seeds 43 and 44 (``--seeds``) and on the per-user temporal split (``--no-temporal`` to
    skip), each through a fresh job: mean and spread over the random seeds.

Protocol B (streaming, prequential)
    A second fresh job gets *all* ratings in event-time order. The job emits a recommendation
    after every accepted event, so "the user's latest top-10 before event e" is the list that the
    user's previous event triggered; a case counts as a hit when e's item is in it
    (HitRate@10) with reciprocal rank (MRR@10). A user's first event has no list and is not a
    case. Reported overall, per week of event time and per A/B variant: this run is an A/B
    experiment between the tuned blend (``tuned``) and the engine's shipped blend (``shipped``:
    the default ``control`` weights), 50/50 by the job's own hash assignment.
    "Frozen" comparison: the same engine with its item model (co-occurrence, neighbours,
    trending) frozen at the middle of the time range (``similarity.freeze_item_model_at_ms``;
    profiles keep updating), run by a third job and compared with the live job on the same
    users over the second half of the time range. By default that is every user, so that the
    ratio rests on every second-half case; ``--b-fraction`` takes a random share of the users
    instead, and the third job then gets every event before the freeze and only the share's
    events after it (other users' later events cannot reach a frozen model). The simulator
    (``recsys/evaluation/simulate.py``) runs both as well.

Simulator agreement: protocol A is also run in ``recsys.evaluation.simulate`` with the same configuration
and its clock set to the pipeline's measured throughput; the report gives both metric sets, the
mean overlap of the two top-10 lists per user, and for protocol B the live simulator against the
pipeline on the same users.

Protocol S: protocol B on a synthetic e-commerce stream (``recsys.evaluation.compare``), the shipped
defaults in the simulator beside popularity refreshed at every event and EASE trained on the
first half.

Output: ``reports/eval.json``, ``reports/eval_*.png`` and a table on stdout.

    python -m recsys.evaluation [--config deploy/ml-100k.toml] [--users N] [--protocols A,B,S]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import shutil
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from recsys.evaluation import compare, movielens, prequential
from recsys.evaluation.datasets import Data, load_data
from recsys.local.stack import JobStack, LocalBroker
from state_schemas.config import EngineConfig, VariantConfig, load_config
from recsys.paths import PROJECT_ROOT
from recsys.evaluation.metrics import ranking_metrics

DEFAULT_CONFIG = "deploy/ml-100k.toml"
# Protocol B asks what a user rates next: the streaming preset (deploy/presets/next_item.toml,
# chosen on the first half of the time range) rather than protocol A's whole-history one.
DEFAULT_B_CONFIG = "deploy/ml-100k-next-item.toml"
K = 10
PUBLISHED = {  # Recommenders' MovieLens-100k benchmark table (examples/06_benchmarks)
    "SAR": {"precision@10": 0.3308, "recall@10": 0.1764, "ndcg@10": 0.3825, "map": 0.1106},
    "BPR": {"ndcg@10": 0.3899},
    "LightGCN": {"ndcg@10": 0.4198},
}
# Protocol B's A/B experiment: the tuned blend against the engine's shipped default blend.
SHIPPED_VARIANT = [f"recommend.variants.shipped.{f.name}={getattr(VariantConfig(), f.name)}"
                   for f in fields(VariantConfig)]

# Replay-speed settings of the evaluation's jobs (not tuning): a checkpoint every 5 s instead of
# every second. Each checkpoint snapshots the whole broadcast model (MBs for ml-100k) and commits
# the sinks' transactions, which at full replay speed costs a good share of the throughput; the
# results do not depend on it (read_committed output just becomes visible in 5 s steps).
EVAL_JOB_SETTINGS = ["job.checkpoint_interval_ms=5000"]

Record = dict[str, Any]


def log(msg: str) -> None:
    print(f"eval: {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------- data

# ------------------------------------------------------------------------- the real pipeline

class RecommendationCollector(threading.Thread):
    """Reads the ``recommendations`` topic from the start (read_committed) in the background:
    event-triggered lists by ``trigger_event_id`` (or only their count), request answers by
    ``request_id``."""

    def __init__(self, bootstrap: str, topic: str, keep_event_lists: bool):
        super().__init__(daemon=True)
        self.bootstrap = bootstrap
        self.topic = topic
        self.keep = keep_event_lists
        self.event_lists: dict[str, tuple[str, list[str]]] = {}  # event id -> (variant, items)
        self.event_count = 0
        self.requests: dict[str, list[str]] = {}
        self.variants: dict[str, str] = {}
        self.stop_flag = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        import orjson

        from recsys.kafka_io import open_consumer

        try:
            consumer = open_consumer(self.bootstrap, self.topic, from_beginning=True,
                                     topic_wait_s=30, max_partition_fetch_bytes=8 << 20,
                                     fetch_max_bytes=64 << 20)
        except BaseException as e:  # noqa: BLE001
            self.error = e
            return
        try:
            while not self.stop_flag.is_set():
                batch = consumer.poll(timeout_ms=300, max_records=20_000)
                for records in batch.values():
                    for m in records:
                        if m.value is None:
                            continue
                        if not self.keep and b'"request_id":null' in m.value:
                            self.event_count += 1
                            continue
                        v = orjson.loads(m.value)
                        items = [i["item_id"] for i in v["items"]]
                        self.variants[v["user_id"]] = v["variant"]
                        if v.get("request_id") is not None:
                            self.requests[v["request_id"]] = items
                        elif v.get("trigger_event_id") is not None:
                            self.event_count += 1
                            self.event_lists[v["trigger_event_id"]] = (v["variant"], items)
        except BaseException as e:  # noqa: BLE001
            self.error = e
        finally:
            consumer.close(autocommit=False)


@dataclass
class PipelineRun:
    seconds_total: float = 0.0
    seconds_events: float = 0.0
    events: int = 0
    events_per_second: float = 0.0
    dead_letters: int = 0
    requests_sent: int = 0
    requests_answered: int = 0
    job_log: str = ""


class PipelineRunner:
    """Runs fresh jobs (own topics, empty state) against a broker."""

    def __init__(self, bootstrap: str, work_dir: Path):
        self.bootstrap = bootstrap
        self.work_dir = work_dir

    def run(self, tag: str, config_file: str, overrides: list[str], data: Data,
            events: Sequence[Record], requests: Sequence[Record], keep_event_lists: bool,
            timeout_s: float, speed: str = "max"
            ) -> tuple[PipelineRun, RecommendationCollector, EngineConfig]:
        """A fresh job on fresh topics: catalogue + attributes, ``events`` (at ``speed``:
        ``max`` or an event-time factor such as ``60000x``), then ``requests``."""
        from recsys.evaluation.replay import profiles_barrier, replay

        # The job stamps its outputs with event time; for 1997 data the broker would roll and
        # compact or expire them at once (``log.roll.ms``, retention): append time keeps them.
        job = JobStack(self.bootstrap, self.work_dir, tag=tag, config_file=config_file,
                       overrides=[*EVAL_JOB_SETTINGS, *overrides], checkpoints=True,
                       every_topic={"message.timestamp.type": "LogAppendTime"})
        cfg = job.config()
        run = PipelineRun(job_log=str(job.log_path))
        t0 = time.monotonic()
        job.start()
        collector = RecommendationCollector(self.bootstrap, job.topics.recommendations,
                                            keep_event_lists)
        collector.start()
        try:
            alive = job.check_alive
            barrier = profiles_barrier(cfg, [a["user_id"] for a in data.attributes],
                                       timeout_s=180, log=log)
            log(f"protocol {tag}: replaying {len(events)} events into the job "
                f"(log {job.log_path})")
            started = {}

            def ready() -> None:
                alive()
                barrier()
                started["t"] = time.monotonic()

            replay(cfg, data.catalog, data.attributes, events, speed=speed, progress=False,
                   barrier=ready)
            te = started["t"]
            # Wait until the job has applied every event (one recommendation per event).
            last_report, last_count, stalled_since = 0.0, -1, time.monotonic()
            expected = len(events)
            try:
                from tqdm import tqdm
                bar = tqdm(total=expected, desc=f"job {tag}", unit="ev", unit_scale=True,
                           file=sys.stderr, mininterval=1.0)
            except ImportError:
                bar = None
            while collector.event_count < expected:
                alive()
                if collector.error is not None:
                    raise RuntimeError(f"reading recommendations failed: {collector.error!r}")
                now = time.monotonic()
                if collector.event_count != last_count:
                    last_count, stalled_since = collector.event_count, now
                if now - stalled_since > 120 or now - t0 > timeout_s:
                    raise RuntimeError(f"the job answered {collector.event_count} of {expected} "
                                       f"events; giving up:\n{job.log_tail()}")
                if bar is not None:
                    bar.update(collector.event_count - bar.n)
                elif now - last_report > 15:
                    log(f"protocol {tag}: {collector.event_count}/{expected} events applied")
                    last_report = now
                time.sleep(0.5)
            if bar is not None:
                bar.update(expected - bar.n)
                bar.close()
            run.seconds_events = time.monotonic() - te
            run.events = collector.event_count
            run.events_per_second = run.events / max(run.seconds_events, 1e-9)
            if requests:
                # Let the last similarity flush and neighbour emissions reach the recommender.
                sim = cfg.similarity
                settle = (sim.flush_interval_ms + max(
                    sim.emit_min_interval_ms, sim.ease_refresh_ms if sim.ease_head_items else 0)
                    + 2 * cfg.job.checkpoint_interval_ms) / 1000.0 + 1.0
                time.sleep(settle)
                replay(cfg, events=[], requests=requests, progress=False)
                run.requests_sent = len(requests)
                wanted = {r["request_id"] for r in requests}
                deadline = time.monotonic() + 300
                while not wanted <= set(collector.requests) and time.monotonic() < deadline:
                    alive()
                    time.sleep(0.5)
                run.requests_answered = len(wanted & set(collector.requests))
            run.dead_letters = _count(self.bootstrap, job.topics.events_dlq)
        finally:
            collector.stop_flag.set()
            collector.join(timeout=10)
            job.stop()
        run.seconds_total = time.monotonic() - t0
        return run, collector, cfg


def _count(bootstrap: str, topic: str) -> int:
    from recsys.kafka_io import consume

    return len(consume(bootstrap, topic, timeout_s=3))


# ------------------------------------------------------------------------- protocols

def pipeline_protocol_a(runner: PipelineRunner, config_file: str, overrides: list[str],
                        data: Data, timeout_s: float = 1800.0, tag: str = "A"
                        ) -> tuple[dict[str, float], PipelineRun, dict[str, list[str]]]:
    """Protocol A through a fresh job: (metrics, run facts, the answer to every request)."""
    from recsys.evaluation.simulate import request_records

    requests = request_records(data.train_events, data.users, K)
    run, coll, _ = runner.run(tag, config_file, overrides, data, data.train_events, requests,
                              False, timeout_s)
    recs = {r["user_id"]: coll.requests[r["request_id"]] for r in requests
            if r["request_id"] in coll.requests}
    return ranking_metrics(recs, data.test, K), run, recs


def pipeline_protocol_b_frozen(runner: PipelineRunner, config_file: str, overrides: list[str],
                               data: Data, users: set[str], t_first: int, t_mid: int,
                               timeout_s: float = 1800.0, speed: str = "max") -> dict[str, Any]:
    """Protocol B through a job whose item model freezes at ``t_mid``, scored on ``users``.

    Only those users' events after ``t_mid`` are replayed: with the item model frozen, other
    users' later events change nothing the scored users see (profiles are per user), so the
    result is the frozen engine's on ``users`` at a fraction of the replay.
    """
    events = [e for e in data.all_events if e["ts"] < t_mid or e["user_id"] in users]
    run, coll, _ = runner.run("B-frozen", config_file,
                              overrides + SHIPPED_VARIANT
                              + [f"similarity.freeze_item_model_at_ms={t_mid}"],
                              data, events, [], True, timeout_s, speed=speed)
    out = prequential.summarise(prequential.cases(events, coll.event_lists, K, users),
                                t_first, t_mid, K)
    out["run"] = run.__dict__
    log(f"protocol B, frozen: {run.events} events in {run.seconds_events:.0f} s")
    return out


def _round(obj: Any, nd: int = 4) -> Any:
    if isinstance(obj, float):
        return round(obj, nd)
    if isinstance(obj, dict):
        return {k: _round(v, nd) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_round(v, nd) for v in obj]
    return obj


# ------------------------------------------------------------------------- plots and table

def plot(report: dict[str, Any], out_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []

    def save(fig: Any, name: str) -> str:
        fig.tight_layout()
        path = out_dir / name
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return str(path)

    b = report.get("protocol_b")
    if b:
        fig, ax = plt.subplots(figsize=(9, 4.5))
        n_sim = b.get("sim_users")
        series = [("the job, all users", b.get("pipeline"), ":"),
                  (f"the job, the {n_sim} simulated users", b.get("pipeline_on_sim_users"), "-"),
                  (f"the job, item model frozen at mid-time, the {n_sim} users",
                   b.get("pipeline_frozen_on_sim_users"), "-"),
                  ("simulator, live", b.get("sim_live"), "-"),
                  ("simulator, item model frozen at mid-time", b.get("sim_frozen"), "-")]
        for label, s, style in series:
            if not s:
                continue
            wk = [w for w in s["per_week"] if w["cases"] >= 50]
            ax.plot([w["week"] for w in wk], [w[f"hit_rate@{K}"] for w in wk], marker="o",
                    ms=3, ls=style, label=f"{label}")
        if b.get("freeze_week") is not None:
            ax.axvline(b["freeze_week"], color="grey", ls="--", lw=1)
            ax.text(b["freeze_week"], ax.get_ylim()[1] * 0.97, " frozen here", color="grey",
                    va="top", fontsize=8)
        ax.set_xlabel("week of the MovieLens-100k time range")
        ax.set_ylabel(f"HitRate@{K} (prequential)")
        ax.set_title("Protocol B: is the next rated movie in the latest top-10?")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        written.append(save(fig, "eval_protocol_b_over_time.png"))

        pv = (b.get("pipeline") or {}).get("per_variant") or {}
        if pv:
            fig, axes = plt.subplots(1, 2, figsize=(9, 4))
            names = sorted(pv)
            for ax, metric in zip(axes, (f"hit_rate@{K}", f"mrr@{K}")):
                vals = [pv[n][metric] for n in names]
                ax.bar(names, vals, color=["tab:blue", "tab:orange", "tab:green"][:len(names)])
                for x, v in enumerate(vals):
                    ax.text(x, v, f"{v:.3f}", ha="center", va="bottom", fontsize=9)
                ax.set_title(f"{metric} per A/B variant")
                ax.grid(axis="y", alpha=0.3)
            fig.suptitle("Protocol B through the job: tuned vs shipped blend (50/50 by user)")
            written.append(save(fig, "eval_protocol_b_variants.png"))

    a = report.get("protocol_a")
    if a:
        rows = [("ours (pipeline)", (a.get("pipeline") or {}).get("metrics")),
                ("ours (simulator)", (a.get("simulator") or {}).get("metrics")),
                ("popularity", a.get("popularity")),
                ("SAR (published)", PUBLISHED["SAR"])]
        rows = [(n, m) for n, m in rows if m]
        metrics = [f"precision@{K}", f"recall@{K}", f"ndcg@{K}", "map"]
        fig, ax = plt.subplots(figsize=(9, 4.5))
        width = 0.8 / len(rows)
        for i, (name, m) in enumerate(rows):
            xs = np.arange(len(metrics)) + i * width
            vals = [m.get(x, np.nan) for x in metrics]
            ax.bar(xs, vals, width, label=name)
        ax.axhline(PUBLISHED["LightGCN"]["ndcg@10"], xmin=0.5, xmax=0.75, color="k", ls=":",
                   lw=1)
        ax.set_xticks(np.arange(len(metrics)) + width * (len(rows) - 1) / 2, metrics)
        ax.set_title("Protocol A: MovieLens-100k, per-user 75/25 split (dotted: LightGCN nDCG)")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
        written.append(save(fig, "eval_protocol_a.png"))
    return written


def side_by_side_table(sbs: dict[str, Any]) -> list[str]:
    """Protocol A's engine-and-baselines table: nDCG@10 per split, mean +- sample std over
    the random splits' seeds."""
    splits = sbs["splits"]
    seeds = [sp["seed"] for sp in splits if sp["kind"] == "random"]
    temporal = [sp for sp in splits if sp["kind"] == "temporal"]
    rand_head = f"random 75/25, seeds {','.join(map(str, seeds))}"
    head = (f"{'Protocol A side by side: ' + sbs['metric']:<44}{rand_head:>30}"
            + (f"{'temporal 75/25':>18}" if temporal else ""))
    lines = [head, "-" * len(head)]
    lams = ", ".join(f"{sp['kind']}{'' if sp['seed'] is None else ' ' + str(sp['seed'])}: "
                     f"{sp['ease_lambda']:g}" for sp in splits)
    labels = {"engine": f"ours ({sbs['engine_source']})", "EASE": "EASE (lambda on validation)"}
    for name, row in sbs["summary"].items():
        r = row["random"]
        rand = (f"{r['mean']:.4f} +- {r['std']:.4f} (n={r['n']})" if r else "")
        temp = f"{row['temporal']:.4f}" if row["temporal"] is not None else ""
        lines.append(f"{labels.get(name, name):<44}{rand:>30}"
                     + (f"{temp:>18}" if temporal else ""))
    lines.append(f"  EASE lambda per split (chosen on its validation part): {lams}")
    return lines


def protocol_b_ratios(b: dict[str, Any]) -> list[str]:
    """Protocol B's ratios as issue 14 states its bars: the live job over popularity refreshed
    at every event, and over the same job frozen at mid-time (second half, same users). Also
    the live job over the live simulator: the simulator applies item-model updates at once and
    charges nothing for the item operator's work, so a ratio well below 1 says the job's item
    model lags the replay, and that settings chosen in the simulator may not hold in the job."""
    hr, hr2 = f"hit_rate@{K}", f"second_half_hit_rate@{K}"
    pop = (b.get("baselines") or {}).get("popularity, live")
    p, on, frozen = b.get("pipeline"), b.get("pipeline_on_sim_users"), b.get(
        "pipeline_frozen_on_sim_users")
    sim = b.get("sim_live")
    out = []
    if p and pop:
        out.append(f"  the job over popularity: x{p[hr] / pop[hr]:.2f} (2nd half "
                   f"x{p[hr2] / pop[hr2]:.2f})")
    if on and frozen and frozen[hr2] > 0:
        out.append(f"  the job live over frozen (same users, 2nd half): x{on[hr2] / frozen[hr2]:.2f}")
    if on and sim and sim[hr2] > 0:
        out.append(f"  the job over the simulator (same users, 2nd half): x{on[hr2] / sim[hr2]:.2f}")
    return out


def table(report: dict[str, Any]) -> str:
    lines = []
    a = report.get("protocol_a") or {}
    if a.get("side_by_side"):
        lines += side_by_side_table(a["side_by_side"]) + [""]
    metrics = [f"precision@{K}", f"recall@{K}", f"ndcg@{K}", "map"]
    head = f"{'Protocol A (ml-100k, 75/25 per user, k=10)':<44}" + "".join(
        f"{m:>14}" for m in metrics)
    lines += [head, "-" * len(head)]
    rows = [("ours: the real job (Kafka + Flink)", (a.get("pipeline") or {}).get("metrics")),
            ("ours: in-process simulator", (a.get("simulator") or {}).get("metrics")),
            ("popularity (offline)", a.get("popularity"))]
    rows += [(f"{n} (published, Recommenders)", m) for n, m in PUBLISHED.items()]
    for name, m in rows:
        if not m:
            continue
        lines.append(f"{name:<44}" + "".join(
            f"{m[x]:>14.4f}" if x in m else f"{'':>14}" for x in metrics))
    b = report.get("protocol_b") or {}
    if b:
        lines.append("")
        head = f"{'Protocol B (prequential, all ratings)':<44}{'cases':>10}{'HitRate@10':>12}" \
               f"{'MRR@10':>10}{'2nd half HR':>13}{'2nd half MRR':>14}"
        lines += [head, "-" * len(head)]
        entries = []
        p = b.get("pipeline")
        if p:
            entries.append(("the real job, all users", p))
            for v, s in sorted(p["per_variant"].items()):
                entries.append((f"  variant {v}", s))
        for name, s in sorted((b.get("baselines") or {}).items()):
            entries.append((f"baseline: {name}", s))
        for key, label in (("pipeline_on_sim_users", "the real job, simulated users"),
                           ("pipeline_frozen_on_sim_users", "the real job frozen at mid-time"),
                           ("sim_live", "simulator, live"),
                           ("sim_frozen", "simulator, frozen at mid-time")):
            if b.get(key):
                entries.append((label, b[key]))
        for name, s in entries:
            lines.append(f"{name:<44}{s['cases']:>10}{s[f'hit_rate@{K}']:>12.4f}"
                         f"{s[f'mrr@{K}']:>10.4f}"
                         f"{s.get(f'second_half_hit_rate@{K}', float('nan')):>13.4f}"
                         f"{s.get(f'second_half_mrr@{K}', float('nan')):>14.4f}")
        lines += protocol_b_ratios(b)
    syn = report.get("synthetic")
    if syn:
        lines.append("")
        head = (f"{'Protocol B, synthetic e-commerce (seed ' + str(syn['seed']) + ')':<44}"
                f"{'cases':>10}{'HitRate@10':>12}{'MRR@10':>10}{'2nd half HR':>13}")
        lines += [head, "-" * len(head)]
        rows = [("the engine, shipped defaults", syn["engine_defaults"])] + [
            (f"baseline: {n}" + (f" (lambda {syn['ease_lambda']:g})" if n.startswith("EASE")
                                  else ""), v) for n, v in sorted(syn["baselines"].items())]
        for name, s in rows:
            lines.append(f"{name:<44}{s['cases']:>10}{s[f'hit_rate@{K}']:>12.4f}"
                         f"{s[f'mrr@{K}']:>10.4f}"
                         f"{s.get(f'second_half_hit_rate@{K}', float('nan')):>13.4f}")
    return "\n".join(lines)


# ------------------------------------------------------------------------- main

def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.monotonic()
    protocols = {p.strip().upper() for p in args.protocols.split(",") if p.strip()}
    data = load_data(args.users)
    cfg = load_config(args.config, list(args.overrides), environ={})
    t_first, t_mid = prequential.time_range(data.all_events)
    report: dict[str, Any] = {
        "command": " ".join(["python -m recsys.evaluation"] + (args.argv or [])),
        "dataset": {"name": "MovieLens-100k (recbole==1.2.1 wheel)", "users": len(data.users),
                    "items": len(data.catalog), "ratings": len(data.all_events),
                    "train": len(data.train_events),
                    "test": sum(len(v) for v in data.test.values()),
                    "split": {"kind": "per-user random (Recommenders python_stratified_split)",
                              "ratio": movielens.DEFAULT_SPLIT_RATIO,
                              "seed": movielens.DEFAULT_SPLIT_SEED}},
        "config": {"file": args.config, "protocol_b_file": args.b_config,
                   "overrides": list(args.overrides),
                   "profile": cfg.to_dict()["profile"], "similarity": cfg.to_dict()["similarity"],
                   "recommend": cfg.to_dict()["recommend"]},
        "machine": {"cpus": __import__("os").cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version()},
        "published": PUBLISHED,
    }
    ms_per_event = args.ms_per_event

    # The simulator runs go to one worker process, concurrently with the (mostly single-core,
    # GIL-bound) job; they are submitted once the job's throughput is known (after protocol A).
    rng = np.random.RandomState(args.b_seed)
    subset = sorted(rng.choice(data.users, max(1, int(round(len(data.users) * args.b_fraction))),
                               replace=False).tolist())
    pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
    futures: dict[str, Any] = {}

    def submit_sims(ms: float) -> None:
        if "A" in protocols and "sim_a" not in futures:
            futures["sim_a"] = pool.submit(_sim_a_job, args.config, list(args.overrides),
                                           args.users, ms)
        if "B" in protocols and not args.no_frozen and "sim_live" not in futures:
            for name, freeze in (("sim_live", None), ("sim_frozen", t_mid)):
                futures[name] = pool.submit(_sim_b_job, args.b_config, list(args.overrides),
                                            args.users, ms, subset, freeze, t_first, t_mid)

    # Protocol A's other splits (the first seed's random split is the primary one above).
    seeds = [int(x) for x in str(args.seeds).split(",") if x.strip()]
    other_splits = [("random", sd) for sd in seeds if sd != movielens.DEFAULT_SPLIT_SEED]
    if not args.no_temporal:
        other_splits.append(("temporal", movielens.DEFAULT_SPLIT_SEED))
    engine_on_split: dict[tuple[str, int], dict[str, Any]] = {}
    if args.simulator_only and "A" in protocols:
        for kind, seed in other_splits:
            futures[f"sim_a:{kind}:{seed}"] = pool.submit(
                _sim_a_job, args.config, list(args.overrides), args.users, ms_per_event,
                seed, kind)

    work = Path(tempfile.mkdtemp(prefix="recsys-eval-"))
    failed = True
    try:
        if not args.simulator_only and protocols & {"A", "B"}:
            with LocalBroker(work) as bootstrap:
                log(f"Kafka broker on {bootstrap}")
                pipe = PipelineRunner(bootstrap, work)
                if "A" in protocols:
                    metrics_a, run_a, recs = pipeline_protocol_a(
                        pipe, args.config, list(args.overrides), data, args.timeout)
                    report.setdefault("protocol_a", {})["pipeline"] = {
                        "metrics": metrics_a, "run": run_a.__dict__}
                    report["protocol_a"]["pipeline"]["_recs"] = recs
                    ms_per_event = 1000.0 / max(run_a.events_per_second, 1e-9)
                    log(f"protocol A: {run_a.events} events in {run_a.seconds_events:.0f} s "
                        f"({run_a.events_per_second:.0f} events/s); "
                        f"{run_a.requests_answered}/{run_a.requests_sent} requests answered")
                submit_sims(ms_per_event)
                if "A" in protocols:
                    for kind, seed in other_splits:
                        data_s = load_data(args.users, seed, kind=kind)
                        m_s, run_s, _ = pipeline_protocol_a(
                            pipe, args.config, list(args.overrides), data_s, args.timeout,
                            tag=f"A-{kind}-{seed}")
                        engine_on_split[(kind, seed)] = {"metrics": m_s, "run": run_s.__dict__,
                                                         "_data": data_s}
                        log(f"protocol A, {kind} split {seed or ''}: nDCG@{K} "
                            f"{m_s[f'ndcg@{K}']:.4f}")
                if "B" in protocols:
                    run_b, coll, _ = pipe.run("B", args.b_config,
                                              list(args.overrides) + SHIPPED_VARIANT, data,
                                              data.all_events, [], True, args.timeout,
                                              speed=args.b_speed)
                    cases = prequential.cases(data.all_events, coll.event_lists, K)
                    report.setdefault("protocol_b", {})["pipeline"] = prequential.summarise(
                        cases, t_first, t_mid, K)
                    report["protocol_b"]["pipeline"]["run"] = run_b.__dict__
                    report["protocol_b"]["pipeline_on_sim_users"] = prequential.summarise(
                        prequential.cases(data.all_events, coll.event_lists, K, set(subset)),
                        t_first, t_mid, K)
                    log(f"protocol B: {run_b.events} events in {run_b.seconds_events:.0f} s "
                        f"({run_b.events_per_second:.0f} events/s)")
                    if not args.no_frozen:
                        report["protocol_b"]["pipeline_frozen_on_sim_users"] = \
                            pipeline_protocol_b_frozen(pipe, args.b_config, list(args.overrides),
                                                       data, set(subset), t_first, t_mid,
                                                       args.timeout, args.b_speed)
        submit_sims(ms_per_event)
        if futures:
            log("waiting for the simulator runs")
        results = {name: f.result() for name, f in futures.items()}
        failed = False
    finally:
        pool.shutdown(cancel_futures=True)
        if args.keep_work or failed:
            log(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    if "A" in protocols:
        a = report.setdefault("protocol_a", {})
        a["side_by_side"] = side_by_side(args, data, report, engine_on_split, results,
                                         other_splits)
        a["popularity"] = a["side_by_side"]["splits"][0]["baselines"]["popularity"]
        sim_a = results["sim_a"]
        sim_recs = sim_a.pop("recs")
        a["simulator"] = sim_a
        pipe_recs = (a.get("pipeline") or {}).pop("_recs", None)
        if pipe_recs is not None:
            overlaps = [len(set(pipe_recs.get(u, [])) & set(sim_recs.get(u, []))) / K
                        for u in data.users]
            same = [pipe_recs.get(u) == sim_recs.get(u) for u in data.users]
            pm, sm = a["pipeline"]["metrics"], sim_a["metrics"]
            a["agreement"] = {
                "mean_top10_overlap": float(np.mean(overlaps)),
                "identical_lists": float(np.mean(same)),
                "metric_differences": {m: pm[m] - sm[m] for m in pm if m != "users"}}

    if "B" in protocols:
        b = report.setdefault("protocol_b", {})
        lam = (report.get("protocol_a") or {}).get("side_by_side", {}).get(
            "splits", [{}])[0].get("ease_lambda") or compare.tune_ease(
            args.users, movielens.DEFAULT_SPLIT_SEED, "random", K)[0]
        log(f"protocol B baselines (EASE lambda {lam:g}, chosen on protocol A's validation)")
        b["baselines"] = {name: prequential.summarise(c, t_first, t_mid, K) for name, c in
                          compare.prequential_baselines(data.all_events, t_mid, K,
                                                        ease_lambda=lam).items()}
        b["baselines"]["EASE, first half"]["ease_lambda"] = lam

    if "B" in protocols and not args.no_frozen:
        b = report.setdefault("protocol_b", {})
        b["sim_users"] = len(subset)
        b["freeze_at_ms"] = t_mid
        b["freeze_week"] = (t_mid - t_first) / prequential.WEEK_MS
        b["sim_live"] = results["sim_live"]
        b["sim_frozen"] = results["sim_frozen"]

    if "S" in protocols:
        log("protocol B on the synthetic e-commerce stream (shipped defaults, simulator)")
        report["synthetic"] = compare.synthetic_report(K)

    report["seconds"] = time.monotonic() - started
    return report


def side_by_side(args: argparse.Namespace, data: Data, report: dict[str, Any],
                 engine_on_split: dict[tuple[str, int], dict[str, Any]],
                 results: dict[str, Any], other_splits: list[tuple[str, int]]
                 ) -> dict[str, Any]:
    """Protocol A on every split: the engine (the job, or the simulator with
    ``--simulator-only``) beside the baselines, EASE's lambda chosen on each split's
    validation part; then mean and spread over the random splits' seeds."""
    a = report.get("protocol_a") or {}
    primary = (a.get("pipeline") or {}).get("metrics") or results["sim_a"]["metrics"]
    source = "the job" if a.get("pipeline") else "the simulator"
    splits = []
    for kind, seed in [("random", movielens.DEFAULT_SPLIT_SEED)] + list(other_splits):
        if (kind, seed) == ("random", movielens.DEFAULT_SPLIT_SEED):
            data_s, engine = data, primary
        else:
            got = engine_on_split.get((kind, seed)) or results.get(f"sim_a:{kind}:{seed}")
            data_s = (engine_on_split.get((kind, seed), {}).pop("_data", None)
                      or load_data(args.users, seed, kind=kind))  # loaded once per split
            engine = got["metrics"] if got else None
        lam, search = compare.tune_ease(args.users, seed, kind, K)
        log(f"baselines on the {kind} split {seed}: EASE lambda {lam:g} on validation")
        splits.append({"kind": kind, "seed": seed if kind == "random" else None,
                       "engine": engine, "baselines": compare.baseline_metrics(data_s, K, lam),
                       "ease_lambda": lam, "ease_validation_ndcg": search,
                       "train": len(data_s.train_events), "users": len(data_s.test)})
    names = ["engine", *splits[0]["baselines"]]
    metric = f"ndcg@{K}"

    def value(sp: dict[str, Any], name: str) -> float | None:
        m = sp["engine"] if name == "engine" else sp["baselines"].get(name)
        return m[metric] if m else None

    summary: dict[str, Any] = {}
    for name in names:
        rand = [v for sp in splits if sp["kind"] == "random"
                if (v := value(sp, name)) is not None]
        temp = [v for sp in splits if sp["kind"] == "temporal"
                if (v := value(sp, name)) is not None]
        summary[name] = {"random": compare.spread(rand) if rand else None,
                         "temporal": temp[0] if temp else None}
    return {"metric": metric, "engine_source": source, "splits": splits, "summary": summary}


def _sim_a_job(config: str, overrides: list[str], users: int, ms_per_event: float,
               seed: int = movielens.DEFAULT_SPLIT_SEED, kind: str = "random"
               ) -> dict[str, Any]:
    """Protocol A in the simulator (a worker process: loads its own data)."""
    from recsys.evaluation import simulate

    data = load_data(users, seed, kind=kind)
    cfg = load_config(config, overrides, environ={})
    res = simulate.run_protocol_a(cfg, data.catalog, data.attributes, data.train_events,
                                  data.test, k=K, ms_per_event=ms_per_event)
    return {"metrics": res.metrics, "per_variant": res.per_variant, "seconds": res.seconds,
            "ms_per_event": ms_per_event, "recs": res.recommendations}


def _sim_b_job(config: str, overrides: list[str], users: int, ms_per_event: float,
               subset: list[str], freeze_after_ms: int | None, t_first: int, t_mid: int
               ) -> dict[str, Any]:
    """Protocol B in the simulator on ``subset`` (live, or frozen after ``freeze_after_ms``)."""
    from recsys.evaluation import simulate

    data = load_data(users)
    cfg = load_config(config, overrides + SHIPPED_VARIANT, environ={})
    res = simulate.run_protocol_b(cfg, data.catalog, data.attributes, data.all_events, k=K,
                                  ms_per_event=ms_per_event, freeze_after_ms=freeze_after_ms,
                                  users=set(subset))
    out = prequential.summarise(res.cases, t_first, t_mid, K)
    out["seconds"] = res.seconds
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m recsys.evaluation", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=DEFAULT_CONFIG, help="protocol A's engine settings")
    p.add_argument("--b-config", default=DEFAULT_B_CONFIG, help="protocol B's engine settings")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="SECTION.KEY=VALUE")
    p.add_argument("--protocols", default="A,B,S",
                   help="A (offline, ml-100k), B (prequential, ml-100k), S (prequential on the "
                        "synthetic e-commerce stream, shipped defaults)")
    p.add_argument("--users", type=int, default=0, help="only the first N users (0: all 943)")
    p.add_argument("--out", default="reports", help="directory of eval.json and the PNGs")
    p.add_argument("--simulator-only", action="store_true",
                   help="skip the real pipeline (minutes faster; for tuning)")
    p.add_argument("--ms-per-event", type=float, default=2.0,
                   help="simulator clock when the pipeline's throughput is not measured")
    p.add_argument("--b-fraction", type=float, default=1.0,
                   help="share of users in protocol B's live-vs-frozen comparison (job and "
                        "simulator)")
    p.add_argument("--b-seed", type=int, default=7)
    p.add_argument("--b-speed", default="max",
                   help="protocol B's replay speed: max, or an event-time factor (60000x: the "
                        "7 months of ml-100k in ~5 min, ~330 events/s)")
    p.add_argument("--no-frozen", action="store_true", help="skip protocol B's simulator runs")
    p.add_argument("--seeds", default="42,43,44",
                   help="protocol A's random per-user splits (the first is the primary one)")
    p.add_argument("--no-temporal", action="store_true",
                   help="skip protocol A on the per-user temporal split")
    p.add_argument("--timeout", type=float, default=1800.0, help="per pipeline run, seconds")
    p.add_argument("--keep-work", action="store_true", help="keep broker data and job logs")
    p.add_argument("--plot-only", action="store_true",
                   help="redraw the plots and the table from an existing eval.json")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(argv if argv is not None else sys.argv[1:])
    out = Path(args.out)
    if not out.is_absolute():
        out = PROJECT_ROOT / out
    if args.plot_only:
        report = json.loads((out / "eval.json").read_text())
        report["plots"] = plot(report, out)
        print(table(report))
        return 0
    movielens.fetch()
    report = run(args)
    out.mkdir(parents=True, exist_ok=True)
    report["plots"] = plot(report, out)
    report = _round(report, 5)
    (out / "eval.json").write_text(json.dumps(report, indent=2) + "\n")
    print(table(report))
    print(f"\nreport: {out / 'eval.json'}; plots: {', '.join(report['plots'])} "
          f"({report['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
