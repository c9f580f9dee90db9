"""The ``recsys`` command: local broker, topics, the job, sample data.

Each sub-command is a thin wrapper over a module function, so tests call the same code.
"""

from __future__ import annotations

import argparse
import sys

from recsys.config_args import add_config_arguments, config_from_arguments
from state_schemas.config import ConfigError


def _kafka_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--port", type=int, default=9092, help="client port (controller uses port+1)")
    p.add_argument("--data-dir", metavar="DIR", help="broker data/log directory (default var/kafka-PORT)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recsys", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    kafka = sub.add_parser("kafka", help="a local single-node Kafka broker (KRaft)")
    ksub = kafka.add_subparsers(dest="action", required=True)
    for action in ("start", "stop", "status"):
        _kafka_args(ksub.add_parser(action))

    topics = sub.add_parser("topics", help="Kafka topics of the contract")
    tsub = topics.add_subparsers(dest="action", required=True)
    create = tsub.add_parser("create", help="create every topic (idempotent)")
    add_config_arguments(create)
    create.add_argument("--partitions", type=int)

    job = sub.add_parser("job", help="the streaming job")
    jsub = job.add_subparsers(dest="action", required=True)
    run = jsub.add_parser("run", help="run the job on the local mini-cluster")
    add_config_arguments(run)
    run.add_argument("--parallelism", type=int)
    from recsys.local import cluster
    cluster.add_job_arguments(jsub)  # submit | list | cancel | savepoint
    cluster.add_arguments(sub.add_parser(
        "cluster", help="a local standalone Flink cluster (JobManager + TaskManagers)"))

    sample = sub.add_parser("sample", help="the bundled sample stream")
    ssub = sample.add_subparsers(dest="action", required=True)
    produce = ssub.add_parser("produce", help="produce the bundled sample stream into Kafka")
    add_config_arguments(produce)
    produce.add_argument("--rate", type=float, default=0.0, help="events per second (0: as fast as possible)")
    produce.add_argument("--loop", action="store_true", help="keep producing (fresh event ids, current time)")

    from recsys.evaluation import replay as replay_mod  # imports neither kafka nor numpy
    replay = sub.add_parser("replay", help="replay a data set (ml-100k) into Kafka in event-time order")
    add_config_arguments(replay)
    replay_mod.add_arguments(replay)

    tail = sub.add_parser("tail", help="print records of a topic as they arrive")
    add_config_arguments(tail)
    tail.add_argument("topic")
    tail.add_argument("--from-beginning", action="store_true")
    tail.add_argument("--max", type=int, default=0, help="stop after this many records (0: never)")

    serve = sub.add_parser("serve", help="HTTP API and explorer page over the live profiles and "
                                         "recommendations")
    add_config_arguments(serve)
    from recsys.serving.api import add_arguments as add_serve_arguments
    add_serve_arguments(serve)

    from recsys.evaluation import tune as tune_mod  # imports nothing heavy at parse time
    tune = sub.add_parser("tune", help="choose engine settings on validation data (coordinate "
                                       "descent, simulator) and write the search and a preset")
    tune_mod.add_arguments(tune)

    demo = sub.add_parser("demo", help="make run: broker + topics + job + sample stream + tail")
    add_config_arguments(demo)
    demo.add_argument("--port", type=int, default=9092)
    demo.add_argument("--seconds", type=float, default=0, help="stop after this long (0: until Ctrl-C)")
    demo.add_argument("--http-port", type=int, default=8080, help="HTTP API + explorer page (0: off)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "kafka":
            from recsys.local import kafka_broker
            return kafka_broker.main(args.action, port=args.port, data_dir=args.data_dir)
        if args.command == "topics":
            from recsys.local import topics
            return topics.create_topics(config_from_arguments(args))
        if args.command == "cluster" or (args.command == "job" and args.action != "run"):
            from recsys.local import cluster
            return cluster.main(args)
        if args.command == "job":
            from flink_jobs import recsys_job
            return recsys_job.run(config_from_arguments(args))
        if args.command == "sample":
            from recsys.sample_data import synthetic
            return synthetic.produce(config_from_arguments(args), rate=args.rate, loop=args.loop)
        if args.command == "replay":
            from recsys.evaluation import replay
            return replay.main(args, config_from_arguments(args))
        if args.command == "tail":
            from recsys.local import tail
            return tail.tail(config_from_arguments(args), args.topic, from_beginning=args.from_beginning,
                             max_records=args.max)
        if args.command == "serve":
            from recsys.serving import api
            return api.main(args, config_from_arguments(args))
        if args.command == "tune":
            from recsys.evaluation import tune
            return tune.run(args, argv[1:] if argv is not None else None)
        if args.command == "demo":
            from recsys.local import demo
            return demo.run_demo(args, config_from_arguments(args))
    except ConfigError as e:
        print(f"recsys: configuration error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 1


if __name__ == "__main__":
    sys.exit(main())
