"""Monitoring as shipped in deploy/: a real Prometheus server scrapes the running job.

* ``promtool check config`` / ``check rules`` accept deploy/prometheus/ and deploy/docker/;
* the Grafana dashboard JSON is valid and its provisioning points at it;
* the job runs on the mini-cluster with the PrometheusReporter on a free port, gets traffic
  (events of several types, a malformed record, a duplicate, a request, feedback on recommended
  items, a forget request), and our own Prometheus (temporary config derived from
  deploy/prometheus/prometheus.yml, with deploy/prometheus/alerts.yml) scrapes it every second;
* EVERY PromQL expression of the dashboard and of the alert rules returns data through
  Prometheus' HTTP API (an alert's comparison is turned into ``<op> bool`` so a quiet alert still
  returns its signal), the rules evaluate without errors, and the dashboard references only metric
  names the job really exports (compared with the scraped /metrics).

Prometheus comes from the Debian package (scripts/install_prometheus.sh, idempotent).
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from recsys.local.processes import log_tail
from recsys.paths import PROJECT_ROOT
from tests.integration.conftest import RunningJob, start_running_job

pytestmark = pytest.mark.slow

DEPLOY = PROJECT_ROOT / "deploy"
PROM_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
DOCKER_PROM_CONFIG = DEPLOY / "docker" / "prometheus.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "recsys.json"
PROVISIONING = DEPLOY / "grafana" / "provisioning"
# Grafana's variables, as the test evaluates the panels.
DASHBOARD_VARIABLES = {"$__rate_interval": "1m", "${job_name}": ".*", "$job_name": ".*"}
METRIC_TOKEN = re.compile(r"\b(flink_[A-Za-z0-9_]+)")
NAME_REGEX = re.compile(r'__name__=~"([^"]+)"')
COMPARISON = re.compile(r"(==|!=|>=|<=|>|<)\s*(-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)(?![\w.])")
T0 = int(time.time() * 1000) - 120_000


# --------------------------------------------------------------------------- helpers

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, timeout: float = 10) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return resp.read().decode()


def dashboard_exprs(dashboard: dict) -> list[tuple[str, str]]:
    """(panel title, PromQL with Grafana variables substituted) of every panel target."""
    out = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for var, value in DASHBOARD_VARIABLES.items():
                expr = expr.replace(var, value)
            out.append((panel["title"], expr))
    return out


def alert_rules() -> list[dict[str, Any]]:
    rules = []
    for group in yaml.safe_load(ALERTS.read_text())["groups"]:
        rules.extend(group["rules"])
    return rules


def as_signal(expr: str) -> str:
    """``x > 0.05`` -> ``x > bool 0.05``: the comparison returns 0/1 instead of filtering."""
    return COMPARISON.sub(lambda m: f"{m.group(1)} bool {m.group(2)}", expr)


def referenced_names(expr: str) -> tuple[set[str], set[str]]:
    """(metric names, ``__name__`` regexes) an expression refers to."""
    regexes = set(NAME_REGEX.findall(expr))
    stripped = NAME_REGEX.sub("", expr)
    return set(METRIC_TOKEN.findall(stripped)), regexes


def metric_values(body: str, name: str) -> list[float]:
    """Values of every series of ``name`` in a /metrics page."""
    out = []
    for line in body.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            out.append(float(line.rsplit(" ", 1)[1]))
    return out


def exported_names(*bodies: str) -> set[str]:
    names = set()
    for body in bodies:
        for line in body.splitlines():
            if line and not line.startswith("#"):
                names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


# --------------------------------------------------------------------------- static checks

@pytest.fixture(scope="module")
def promtool() -> str:
    if not (shutil.which("promtool") and shutil.which("prometheus")):
        result = subprocess.run(["bash", str(PROJECT_ROOT / "scripts" / "install_prometheus.sh")],
                                capture_output=True, text=True, timeout=600)
        if result.returncode != 0:
            pytest.fail(f"scripts/install_prometheus.sh failed:\n{result.stdout}{result.stderr}",
                        pytrace=False)
    return shutil.which("promtool")


def test_promtool_accepts_the_configs_and_rules(promtool: str, tmp_path: Path):
    for args in (["check", "rules", str(ALERTS)], ["check", "config", str(PROM_CONFIG)]):
        result = subprocess.run([promtool, *args], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, f"promtool {' '.join(args)}:\n{result.stdout}{result.stderr}"
        assert "SUCCESS" in result.stdout + result.stderr
    # docker-compose mounts alerts.yml next to its prometheus.yml: check it the same way.
    shutil.copy(DOCKER_PROM_CONFIG, tmp_path / "prometheus.yml")
    shutil.copy(ALERTS, tmp_path / "alerts.yml")
    result = subprocess.run([promtool, "check", "config", str(tmp_path / "prometheus.yml")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_json_and_provisioning_are_valid():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "recsys-engine" and dashboard["title"]
    assert isinstance(dashboard["schemaVersion"], int)
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    graphs = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len(graphs) >= 20
    for panel in graphs:
        assert panel["type"] in ("timeseries", "stat"), panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        pos = panel["gridPos"]
        assert pos["w"] > 0 and pos["h"] > 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        assert panel["targets"], panel["title"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip() and target["datasource"] == panel["datasource"]
    # The panels the issue asks for.
    titles = " | ".join(p["title"] for p in graphs).lower()
    for wanted in ("events in by type", "dead letters by reason", "variant and trigger", "latency",
                   "ctr", "model size", "late events", "checkpoint duration", "consumer lag"):
        assert wanted in titles, wanted

    datasources = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())
    (ds,) = datasources["datasources"]
    assert ds["type"] == "prometheus" and ds["uid"] == variables["datasource"]["current"]["value"]
    providers = yaml.safe_load((PROVISIONING / "dashboards" / "recsys.yml").read_text())
    (provider,) = providers["providers"]
    assert provider["type"] == "file"
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./grafana/dashboards:{provider['options']['path']}:ro" in mounts


def test_deployment_manifests_are_consistent():
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    assert {"kafka", "jobmanager", "taskmanager", "prometheus", "grafana"} <= set(compose["services"])
    docs = list(yaml.safe_load_all((DEPLOY / "k8s" / "flinkdeployment.yaml").read_text()))
    deployment = next(d for d in docs if d["kind"] == "FlinkDeployment")
    spec = deployment["spec"]
    assert spec["job"]["entryClass"] == "org.apache.flink.client.python.PythonDriver"
    args = spec["job"]["args"]
    assert args[args.index("-py") + 1] == "/opt/recsys/flink_jobs/recsys_job.py"
    assert "-pyfs" in args
    assert spec["job"]["upgradeMode"] == "savepoint"
    conf = spec["flinkConfiguration"]
    assert conf["metrics.reporter.prom.factory.class"].endswith("PrometheusReporterFactory")
    assert conf["execution.checkpointing.dir"] and conf["high-availability.type"] == "kubernetes"


# --------------------------------------------------------------------------- the live job

def _wait_for(predicate, timeout_s: float, what: str, job: RunningJob | None = None):
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        if job is not None:
            job.check_alive()
        try:
            last = predicate()
            if last:
                return last
        except OSError:
            pass
        time.sleep(0.5)
    pytest.fail(f"timed out waiting for {what}"
                + (f"\n{log_tail(job.log_path)}" if job is not None else ""), pytrace=False)


def ev(eid: str, user: str, etype: str, item: str, dt: int, value=None) -> dict:
    return {"event_id": eid, "user_id": user, "item_id": item, "event_type": etype,
            "ts": T0 + dt, "value": value}


class Prometheus:
    def __init__(self, port: int, proc: subprocess.Popen, log: Path):
        self.url = f"http://127.0.0.1:{port}"
        self.proc = proc
        self.log = log

    def api(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        body = json.loads(http_get(f"{self.url}/api/v1/{path}" + (f"?{query}" if query else "")))
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        return self.api("query", query=expr)["result"]


@pytest.fixture(scope="module")
def monitored(promtool: str, kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
              ) -> Iterator[tuple[RunningJob, Prometheus, int]]:
    """The job with its reporter on a free port, traffic driven, scraped by our Prometheus."""
    tmp = tmp_path_factory.mktemp("monitoring")
    reporter_port = free_port()
    job = start_running_job(kafka_bootstrap, tmp, [f'job.prometheus_port="{reporter_port}"'])
    prom_proc = None
    try:
        # The operators have opened (and registered their metrics) once this answers.
        _wait_for(lambda: "flink_taskmanager_job_task_operator_late_events" in
                  http_get(f"http://127.0.0.1:{reporter_port}/metrics"), 120,
                  "the job's PrometheusReporter", job)

        # Our own Prometheus: deploy/prometheus/prometheus.yml with the test's target, 1 s scrapes.
        config = yaml.safe_load(PROM_CONFIG.read_text())
        config["global"].update(scrape_interval="1s", evaluation_interval="1s")
        config["rule_files"] = [str(ALERTS)]
        (flink,) = [c for c in config["scrape_configs"] if c["job_name"] == "flink"]
        flink["static_configs"] = [{"targets": [f"127.0.0.1:{reporter_port}"]}]
        config["scrape_configs"] = [flink]
        (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
        prom_port = free_port()
        prom_log = tmp / "prometheus.log"
        with open(prom_log, "wb") as log:
            prom_proc = subprocess.Popen(
                [shutil.which("prometheus"), f"--config.file={tmp / 'prometheus.yml'}",
                 f"--storage.tsdb.path={tmp / 'tsdb'}", f"--web.listen-address=127.0.0.1:{prom_port}"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        prom = Prometheus(prom_port, prom_proc, prom_log)
        _wait_for(lambda: prom.query('up{job="flink"} == 1'), 60, "Prometheus to scrape the job")

        # Traffic: catalogue, attributes, then events (so activity counts in segments).
        job.seed([{"item_id": i, "ts": T0 - 1_000, "title": f"Item {i}",
                   "categories": [f"cat-{i}"], "tags": ["t"], "price": 10.0 + n,
                   "available": True} for n, i in enumerate("abcdefgh")],
                 [{"user_id": u, "ts": T0 - 500, "attributes": {"age": 30, "gender": "F"}}
                  for u in ("u0", "u1", "u2", "uGone")], timeout_s=90)
        # The whole catalogue is in the recommender's model before the events arrive.
        _wait_for(lambda: 8.0 in metric_values(
            http_get(f"http://127.0.0.1:{reporter_port}/metrics"),
            "flink_taskmanager_job_task_operator_model_catalog_items"), 60,
            "the catalogue in the recommender's model", job)
        # Two waves: u0 and u1 act on half of the catalogue each; once their activity has made
        # items popular (the item operator's model update reached the recommender), u2 acts,
        # and has popular items left to be recommended.
        kinds = ("view", "click", "like", "add_to_cart")
        events = [ev(f"e{n}", f"u{n % 2}", kinds[n % 4], ("abcd", "efgh")[n % 2][(n // 2) % 4],
                     1_000 + n) for n in range(20)]
        events += [ev(f"e{n}", "u2", kinds[n % 4], "abcd"[n - 20], 1_000 + n)
                   for n in range(20, 24)]
        job.produce("user_events", events[:20], key_field="user_id")
        _wait_for(lambda: any(v >= 1 for v in metric_values(
            http_get(f"http://127.0.0.1:{reporter_port}/metrics"),
            "flink_taskmanager_job_task_operator_model_trending_items")), 60,
            "popular items in the recommender's model", job)
        job.produce("user_events", events[20:], key_field="user_id")
        job.produce("user_events", [events[0]], key_field="user_id")  # duplicate_event
        job.produce_raw("user_events", [b"{not json"])  # malformed_json
        job.produce("recommendation_requests", [
            {"request_id": "q1", "user_id": "u1", "ts": T0 + 2_000, "k": 3}], key_field="user_id")
        recs = job.consume("recommendations",
                           lambda rs: len(rs) >= 25 and any(r["value"]["items"] for r in rs),
                           timeout_s=90)
        with_items = [r["value"] for r in recs if r["value"]["items"]]
        assert len(recs) >= 25 and with_items, (
            f"{len(recs)} recommendations, {len(with_items)} with items\n{log_tail(job.log_path)}")
        # Feedback: u's click and purchase of an item recommended to u.
        shown = with_items[-1]
        item = shown["items"][0]["item_id"]
        job.produce("user_events", [
            ev("fb-click", shown["user_id"], "click", item, 5_000),
            ev("fb-buy", shown["user_id"], "purchase", item, 6_000)], key_field="user_id")
        job.produce("privacy_requests", [{"user_id": "uGone", "ts": T0 + 7_000, "action": "forget"}],
                    key_field="user_id")
        job.consume("recommendations",
                    lambda rs: any(r["value"]["trigger_event_id"] == "fb-buy" for r in rs),
                    timeout_s=60)
        _wait_for(lambda: prom.query(
            'sum(flink_taskmanager_job_task_operator_variant_kind_feedback_events{kind="purchase"}) >= 1'
            ' and on() sum(flink_taskmanager_job_task_operator_users_forgotten) >= 1'
            ' and on() max(flink_jobmanager_job_numberOfCompletedCheckpoints) >= 3'),
            60, "the feedback, forget and checkpoints in Prometheus", job)
        time.sleep(3)  # a few more scrapes, so every rate() window holds the increase
        yield job, prom, reporter_port
    finally:
        if prom_proc is not None:
            prom_proc.terminate()
            try:
                prom_proc.wait(15)
            except subprocess.TimeoutExpired:
                prom_proc.kill()
        job.stop()


def test_every_dashboard_expression_returns_data(monitored):
    job, prom, _ = monitored
    empty = [(title, expr) for title, expr in dashboard_exprs(json.loads(DASHBOARD.read_text()))
             if not prom.query(expr)]
    assert not empty, "dashboard queries without data:\n" + "\n".join(f"{t}: {e}" for t, e in empty)
    # The variable of the dashboard lists the job.
    jobs = prom.api("label/job_name/values", **{"match[]": "flink_jobmanager_job_uptime"})
    assert "recsys-engine" in jobs


def test_key_signals_carry_the_traffic(monitored):
    """Not just present: the series show what the traffic did."""
    _, prom, _ = monitored
    P = "flink_taskmanager_job_task_operator_"

    def values(expr: str) -> dict[str, float]:
        return {json.dumps(r["metric"], sort_keys=True): float(r["value"][1])
                for r in prom.query(expr)}

    by_type = {json.loads(k).get("event_type"): v for k, v in
               values(f"sum by (event_type) ({P}event_type_events_in)").items()}
    assert by_type["view"] == 6 and by_type["click"] == 7 and by_type["purchase"] == 1
    reasons = {json.loads(k)["reason"]: v for k, v in values(
        f'sum by (reason) ({P}source_topic_reason_dlq_records)').items()}
    assert reasons["malformed_json"] == 1 and reasons["duplicate_event"] == 1
    emitted = values(f"sum by (trigger) ({P}variant_trigger_recommendations_emitted)")
    assert {json.loads(k)["trigger"]: v for k, v in emitted.items()}["request"] == 1
    assert sum(values(f"sum({P}variant_trigger_recommendations_emitted)").values()) == 27
    assert sum(values(f'sum({P}le_recommendation_latency_ms_bucket{{le="+Inf"}})').values()) == 27
    p99 = list(values(f"histogram_quantile(0.99, sum by (le) ({P}le_recommendation_latency_ms_bucket))").values())
    assert p99 and 0 < p99[0] < 10_000
    ctr = values(f'sum by (variant) ({P}variant_kind_feedback_events{{kind="click"}}) '
                 f'/ sum by (variant) ({P}variant_kind_impressions)')
    assert any(0 < v <= 1 for v in ctr.values())
    assert max(values(f"max({P}model_catalog_items)").values()) == 8
    assert max(values(f"sum({P}users_forgotten)").values()) == 1


def test_every_alert_rule_signal_returns_data(monitored):
    _, prom, _ = monitored
    rules = alert_rules()
    assert {r["alert"] for r in rules} >= {
        "RecsysNoRecommendations", "RecsysDlqRateSpike", "RecsysRecommendationLatencyHigh",
        "RecsysCheckpointsFailing", "RecsysConsumerLag"}
    empty = []
    for rule in rules:
        signal = as_signal(rule["expr"])
        assert signal != rule["expr"], f"{rule['alert']}: no literal threshold to evaluate"
        if not prom.query(signal):
            empty.append(f"{rule['alert']}: {signal}")
    assert not empty, "alert signals without data:\n" + "\n".join(empty)
    # Prometheus itself loaded and evaluated every rule without errors.
    groups = prom.api("rules")["groups"]
    loaded = [r for g in groups for r in g["rules"]]
    assert len(loaded) == len(rules)
    unhealthy = [(r["name"], r.get("lastError")) for r in loaded if r["health"] != "ok"]
    assert not unhealthy, unhealthy
    # A healthy, busy job has no critical alert even pending (the job's start-up, with its one
    # or two early-triggered checkpoints, must not look like failing checkpoints).
    pending = [a["labels"]["alertname"] for a in prom.api("alerts")["alerts"]
               if a["labels"].get("severity") == "critical"]
    assert not pending, pending


def test_dashboard_references_only_exported_metrics(monitored):
    _, prom, reporter_port = monitored
    exported = exported_names(http_get(f"http://127.0.0.1:{reporter_port}/metrics"))
    dashboard = json.loads(DASHBOARD.read_text())
    names: set[str] = set()
    regexes: set[str] = set()
    for _, expr in dashboard_exprs(dashboard):
        n, r = referenced_names(expr)
        names |= n
        regexes |= r
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            names |= referenced_names(var["definition"])[0]
    missing = sorted(names - exported)
    assert not missing, f"the dashboard uses metrics the job does not export: {missing}"
    for regex in regexes:
        assert any(re.fullmatch(regex, name) for name in exported), regex
    # Alert rules too (plus Prometheus' own `up`).
    alert_names: set[str] = set()
    for rule in alert_rules():
        n, r = referenced_names(rule["expr"])
        alert_names |= n
        for regex in r:
            assert any(re.fullmatch(regex, name) for name in exported), regex
    assert not sorted(alert_names - exported), sorted(alert_names - exported)
    # The names the issue names, exported under the reporter's scope names.
    for name in ("event_type_events_in", "source_topic_reason_dlq_records",
                 "profiles_updated", "similarity_pair_updates", "similarity_updates_emitted",
                 "variant_trigger_recommendations_emitted", "le_recommendation_latency_ms_bucket",
                 "recommendation_latency_ms_sum", "recommendation_latency_ms_count",
                 "model_catalog_items", "model_items_with_neighbors", "model_neighbor_pairs",
                 "variant_kind_impressions", "variant_kind_feedback_events", "late_events",
                 "event_time_lag_ms", "users_forgotten", "pendingRecords"):
        assert f"flink_taskmanager_job_task_operator_{name}" in exported, name
