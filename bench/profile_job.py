"""Profile the running job's Python hot path with py-spy (attached to the mini-cluster's JVM).

In thread mode the operators' Python runs in a CPython embedded in the job's JVM (pemja), so
py-spy attaches to that ``java`` process. The script starts its own broker, preloads a synthetic
backlog (``bench/workload.py``), starts the job, waits for its first recommendation (start-up
excluded), records ``--seconds`` of samples (``py-spy record --format raw``: collapsed stacks)
and prints/writes where the samples go, grouped by operator and stage.

    .venv/bin/pip install py-spy          # once
    .venv/bin/python bench/profile_job.py --seconds 40 [--native] [--set k=v ...]

Writes ``reports/profile_job.json`` (breakdown) and ``reports/profile_job.collapsed.txt``
(feed it to speedscope or flamegraph.pl). py-spy needs ptrace rights (root, or
``kernel.yama.ptrace_scope=0``).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from recsys.local import kafka_broker  # noqa: E402
from bench_e2e import Bench, JobRun, OffsetWatcher, log, loadavg, machine  # noqa: E402

# (category, substring of a frame "function (file:line)"), first match from the leaf wins.
CATEGORIES: list[tuple[str, str]] = [
    ("item side: similarity kernel (apply_pairs)", "apply_pairs"),
    ("item side: rows load/write-back, emissions", "udfs/similarity.py"),
    ("item side: other", "udfs/item_side.py"),
    ("recommend: scoring kernel (score_candidates)", "score_candidates"),
    ("recommend: inputs and reasons (Recommender)", "udfs/recommend.py"),
    ("item model: trending lists, model updates", "udfs/model.py"),
    ("item table (interning)", "udfs/items.py"),
    ("impressions and feedback (ab.py)", "udfs/ab.py"),
    ("profile: snapshot message", "snapshot (udfs/profile.py"),
    ("profile: step", "udfs/profile.py"),
    ("state codecs (profile, impressions)", "state_schemas/profile_state.py"),
    ("inter-operator record codecs", "state_schemas/records.py"),
    ("edge validation (parse_input)", "udfs/validation.py"),
    ("user side: recommendation message, routing", "udfs/user_side.py"),
    ("batch host: decode/encode the batch", "flink_jobs/batch_host.py"),
    ("pyflink", "pyflink"),
]


def leaf_first_category(stack: list[str]) -> str:
    """Innermost matching category: scan from the leaf towards the root."""
    for frame in reversed(stack):
        for cat, needle in CATEGORIES:
            if needle in frame:
                return cat
    return "other (no project/pyflink frame)"


def outer_category(stack: list[str]) -> str:
    """Which operator the sample belongs to (outermost project frame)."""
    for frame in stack:
        for name in ("UserSide", "ItemSide"):
            if name in frame:
                return name
    return "framework/other"


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds (user + system) of every thread of ``pid``."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[int, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            out[int(task.name)] = (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError, ValueError):
            pass
    return out


def process_cpu(pid: int) -> float:
    tick = os.sysconf("SC_CLK_TCK")
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / tick


def java_thread_names(pid: int) -> dict[int, str]:
    """Native thread id -> full Java thread name (``jstack``: ``"name" ... nid=0x...``)."""
    out = subprocess.run(["jstack", str(pid)], capture_output=True, text=True, timeout=60).stdout
    names: dict[int, str] = {}
    for m in re.finditer(r'^"(.*?)".*?nid=(0x[0-9a-f]+)', out, re.M):
        names[int(m.group(2), 16)] = m.group(1)
    return names


def thread_group(name: str) -> str:
    """Collapse subtask/attempt suffixes and numbered pools so threads of one kind add up."""
    name = re.sub(r"\s*\(\d+/\d+\)#\d+$", "", name)
    name = re.sub(r"[-#]?\d+$", "", name)
    return name


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=40_000)
    ap.add_argument("--users", type=int, default=10_000)
    ap.add_argument("--items", type=int, default=20_000)
    ap.add_argument("--zipf", type=float, default=1.1)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--seconds", type=float, default=40)
    ap.add_argument("--after-events", type=int, default=3000,
                    help="start recording once this many recommendations were written")
    ap.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    ap.add_argument("--native", action="store_true")
    ap.add_argument("--all-threads", action="store_true",
                    help="sample threads not holding the GIL too (default: --gil)")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--out", default=str(ROOT / "reports" / "profile_job.json"))
    args = ap.parse_args()
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")

    ns = argparse.Namespace(users=args.users, items=args.items, zipf=args.zipf, seed=args.seed,
                            events=args.events, keep=False)
    bench = Bench(ns)
    result: dict = {"command": " ".join(["python", *sys.argv]), "machine": machine()}
    try:
        bench.start_broker()
        bench.synthetic_data()
        job = JobRun(bench, "profile", 1, args.overrides)
        bench.preload_synthetic(job)
        job.start()
        watcher = OffsetWatcher(bench.bootstrap, job.topics.recommendations)
        watcher.start()
        while watcher.latest()[1] == 0:
            if not job.alive():
                raise SystemExit("job died")
            time.sleep(0.2)
        while watcher.latest()[1] < args.after_events:  # past start-up and the first burst
            if not job.alive():
                raise SystemExit("job died")
            time.sleep(0.2)
        pid = job.java_pid()
        names = java_thread_names(pid)
        cpu0, proc0 = thread_cpu(pid), process_cpu(pid)
        broker0 = process_cpu(kafka_broker.broker_status(bench.port, bench.data_dir).pid)
        _, hw0, _ = watcher.latest()
        t0 = time.time()
        collapsed = Path(args.out).with_suffix(".collapsed.txt")
        cmd = [py_spy, "record", "--pid", str(pid), "--duration", str(int(args.seconds)),
               "--rate", str(args.rate), "--format", "raw", "--output", str(collapsed),
               "--threads"] + (["--native"] if args.native else ["--nonblocking"]) \
            + ([] if args.all_threads else ["--gil"])
        log(f"py-spy on java pid {pid}: {' '.join(cmd)}")
        proc = subprocess.run(cmd, capture_output=True, text=True)
        t1 = time.time()
        _, hw1, _ = watcher.latest()
        cpu1, proc1 = thread_cpu(pid), process_cpu(pid)
        broker1 = process_cpu(kafka_broker.broker_status(bench.port, bench.data_dir).pid)
        names.update({t: n for t, n in java_thread_names(pid).items() if t not in names})
        watcher.stop()
        job.stop()
        if proc.returncode != 0 or not collapsed.is_file():
            result["error"] = proc.stderr[-3000:]
            print(result["error"])
            return 1
        result["py_spy"] = " ".join(cmd[1:])
        result["events_during_profile"] = hw1 - hw0
        result["events_per_s_during_profile"] = round((hw1 - hw0) / (t1 - t0), 1)
        result["loadavg"] = loadavg()
        by_leaf: collections.Counter = collections.Counter()
        by_op: collections.Counter = collections.Counter()
        by_thread: collections.Counter = collections.Counter()
        by_func: collections.Counter = collections.Counter()
        total = 0
        for line in collapsed.read_text().splitlines():
            stack_s, _, count_s = line.rpartition(" ")
            try:
                count = int(count_s)
            except ValueError:
                continue
            frames = stack_s.split(";")
            thread = frames[0]
            frames = frames[1:] if thread.startswith(("thread", "process")) else frames
            if not frames:
                frames = ["(no Python frame: thread in JVM code)"]
            total += count
            by_thread[thread] += count
            by_leaf[leaf_first_category(frames)] += count
            by_op[outer_category(frames)] += count
            if frames:
                by_func[frames[-1]] += count
        evs = max(1, hw1 - hw0)
        per_group: collections.Counter = collections.Counter()
        for tid, c1 in cpu1.items():
            per_group[thread_group(names.get(tid, f"tid {tid}"))] += c1 - cpu0.get(tid, 0.0)
        wall = t1 - t0
        result["cpu"] = {
            "window_s": round(wall, 1),
            "job_jvm_cpu_s": round(proc1 - proc0, 2),
            "job_jvm_cores_busy": round((proc1 - proc0) / wall, 2),
            "job_jvm_cpu_ms_per_event": round((proc1 - proc0) * 1000 / evs, 3),
            "broker_cpu_ms_per_event": round((broker1 - broker0) * 1000 / evs, 3),
            "by_thread_group": [{"thread": k, "cpu_s": round(v, 2),
                                 "cpu_ms_per_event": round(v * 1000 / evs, 3)}
                                for k, v in per_group.most_common(25) if v > 0.05],
        }
        ms_per_sample = 1000.0 / args.rate

        def table(c: collections.Counter, n: int = 40) -> list[dict]:
            return [{"what": k, "samples": v, "share": round(v / total, 4),
                     "us_per_event": round(v * ms_per_sample * 1000 / evs, 1)}
                    for k, v in c.most_common(n)]

        result.update({"samples": total, "by_stage": table(by_leaf), "by_operator": table(by_op),
                       "by_thread": table(by_thread, 20), "top_leaf_functions": table(by_func, 30),
                       "note": "us_per_event = samples x sample period / events answered during "
                               "the recording. With --gil (default) only the thread holding the "
                               "GIL is sampled, so the shares are shares of the Python CPU time; "
                               "all Python of all operators shares one GIL in thread mode."})
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
        for key in ("by_operator", "by_stage", "top_leaf_functions"):
            print(f"\n== {key}")
            for row in result[key][:25]:
                print(f"{row['share']:7.1%} {row['us_per_event']:9.1f} us/event  {row['what']}")
        print(f"\nevents/s during profile: {result['events_per_s_during_profile']}, samples {total}")
        print(json.dumps(result["cpu"], indent=1))
        return 0
    finally:
        bench.stop()


if __name__ == "__main__":
    raise SystemExit(main())
