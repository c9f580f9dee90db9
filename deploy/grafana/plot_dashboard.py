"""Render key panels of the Grafana dashboard from a real Prometheus, as a PNG.

A screenshot-equivalent of deploy/grafana/dashboards/recsys.json for places without Grafana: the
same panel titles and PromQL (Grafana's variables substituted), evaluated with Prometheus'
query_range API over the last ``--minutes`` and drawn with matplotlib.

    python deploy/grafana/plot_dashboard.py --prometheus http://127.0.0.1:9090 \
        --minutes 15 --out docs/dashboard.png

Needs matplotlib (not a runtime dependency of the project: ``pip install matplotlib``).
"""

from __future__ import annotations

import argparse
import json
import math
import time
import urllib.parse
import urllib.request
from datetime import datetime
from pathlib import Path

DASHBOARD = Path(__file__).resolve().parent / "dashboards" / "recsys.json"
# The panels drawn, in this order (titles of the dashboard).
PANELS = [
    "Events in by type",
    "Dead letters by reason",
    "Recommendations by variant and trigger",
    "Latency ingest -> recommendation",
    "CTR and conversion per variant (1h)",
    "Model size",
    "Consumer lag",
    "Checkpoint duration",
    "Checkpointed state size",
]
UNITS = {"ops": "per second", "ms": "ms", "percentunit": "ratio", "bytes": "bytes", "short": ""}


def substitute(expr: str, rate_interval: str) -> str:
    return (expr.replace("$__rate_interval", rate_interval).replace("${job_name}", ".*")
            .replace("$job_name", ".*"))


def legend(fmt: str, labels: dict[str, str]) -> str:
    out = fmt
    for key, value in labels.items():
        out = out.replace("{{" + key + "}}", value.replace("Source: kafka:", ""))
    return out if out.strip() else json.dumps(labels)


def query_range(base: str, expr: str, start: float, end: float, step: float) -> list[dict]:
    params = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step})
    with urllib.request.urlopen(f"{base}/api/v1/query_range?{params}", timeout=30) as resp:
        body = json.loads(resp.read())
    if body.get("status") != "success":
        raise RuntimeError(f"{expr}: {body}")
    return body["data"]["result"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prometheus", default="http://127.0.0.1:9090")
    parser.add_argument("--minutes", type=float, default=15)
    parser.add_argument("--end", type=float, default=0, help="end time (epoch s; default now)")
    parser.add_argument("--step", type=float, default=5)
    parser.add_argument("--rate-interval", default="1m", help="what $__rate_interval becomes")
    parser.add_argument("--out", default="docs/dashboard.png")
    args = parser.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    dashboard = json.loads(DASHBOARD.read_text())
    panels = {p["title"]: p for p in dashboard["panels"] if p.get("targets")}
    end = args.end or time.time()
    start = end - args.minutes * 60
    cols = 3
    rows = math.ceil(len(PANELS) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(18, 4.2 * rows), squeeze=False)
    fig.suptitle(f"{dashboard['title']} - {datetime.fromtimestamp(start):%Y-%m-%d %H:%M} to "
                 f"{datetime.fromtimestamp(end):%H:%M} (Prometheus {args.prometheus})", fontsize=13)
    for ax, title in zip(axes.flat, PANELS):
        panel = panels[title]
        unit = panel["fieldConfig"]["defaults"].get("unit", "short")
        drawn = 0
        for target in panel["targets"]:
            expr = substitute(target["expr"], args.rate_interval)
            for series in query_range(args.prometheus, expr, start, end, args.step):
                points = [(float(t), float(v)) for t, v in series["values"]
                          if v not in ("NaN", "+Inf", "-Inf")]
                if not points:
                    continue
                xs = [datetime.fromtimestamp(t) for t, _ in points]
                label = legend(target.get("legendFormat", ""), series["metric"])
                ax.plot(xs, [v for _, v in points], label=label[:48], linewidth=1.3)
                drawn += 1
        ax.set_title(title, fontsize=11)
        ax.set_ylabel(UNITS.get(unit, unit))
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M"))
        ax.grid(alpha=0.3)
        if drawn:
            ax.set_ylim(bottom=min(0, ax.get_ylim()[0]))
            ax.legend(fontsize=7, loc="best", ncol=2 if drawn > 4 else 1, framealpha=0.6)
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    for ax in list(axes.flat)[len(PANELS):]:
        ax.axis("off")
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=90)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
