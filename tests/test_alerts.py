"""The monitoring component: alert rules, their promtool unit tests, the Grafana dashboard, and
the metrics they read, checked against a live processor and a real Prometheus.

promtool and prometheus come from Debian's ``prometheus`` package (``.ci/run`` installs it);
where they are absent those tests skip with the reason. The rules are kept once, in the
PrometheusRule (k8s/components/monitoring/prometheusrule.yaml); the tests write its groups to a
plain rules file for promtool and Prometheus.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import socket
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers.k8s import K8S, one, overlay, render
from helpers.processes import ProcessorProcess
from helpers.support import ROOT, cli_env, dropin_folder, pipeline_config, wait_for, write_config

MONITORING = K8S / "components" / "monitoring"
UNIT_TESTS = ROOT / "tests" / "promtool" / "alerts_test.yaml"
PROMTOOL = shutil.which("promtool")
PROMETHEUS = shutil.which("prometheus")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (Debian package prometheus; .ci/run has it)")
needs_prometheus = pytest.mark.skipif(
    PROMETHEUS is None, reason="prometheus not installed (Debian package prometheus)")

# Series the rules read that come from elsewhere, not from the processor's /metrics.
EXTERNAL = {"up": "Prometheus's own scrape health",
            "kube_pod_container_status_restarts_total": "kube-state-metrics"}
PROMQL_WORDS = {"sum", "min", "max", "avg", "count", "rate", "increase", "histogram_quantile",
                "by", "on", "without", "ignoring", "group_left", "group_right", "unless", "and",
                "or", "label_values", "clamp_min", "offset", "bool"}


@pytest.fixture(scope="module")
def monitoring(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """The production kustomization with components/monitoring switched on."""
    folder = overlay(tmp_path_factory.mktemp("monitoring"), resources=[K8S],
                     components=[MONITORING])
    return render(folder)


def rule_groups(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return {"groups": copy.deepcopy(one(objects, "PrometheusRule")["spec"]["groups"])}


def alerts(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for g in rule_groups(objects)["groups"] for r in g["rules"] if "alert" in r]


def dashboard(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (text,) = one(objects, "ConfigMap", "sqs-processor-dashboard")["data"].values()
    return json.loads(text)


def dashboard_queries(board: dict[str, Any]) -> list[str]:
    queries = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    queries += [v["query"]["query"] for v in board["templating"]["list"]
                if v["type"] == "query"]
    return queries


def metric_names(expr: str) -> set[str]:
    """The series names a PromQL expression selects (strings, matchers, ranges removed)."""
    text = re.sub(r'"[^"]*"', "", expr)
    text = re.sub(r"\$\w+", "", text)
    text = re.sub(r"label_values\(([^,)]+),[^)]*\)", r" \1 ", text)  # Grafana's variable query
    text = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    tokens = set(re.findall(r"\b[a-zA-Z_:][a-zA-Z0-9_:]*\b", text))
    return {t for t in tokens if t not in PROMQL_WORDS and not re.fullmatch(r"\d\w*", t)}


def write_rules(objects: list[dict[str, Any]], folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "rules.yaml"
    path.write_text(yaml.safe_dump(rule_groups(objects), sort_keys=False))
    return path


def promtool_test(rules: dict[str, Any], folder: Path) -> subprocess.CompletedProcess[str]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "rules.yaml").write_text(yaml.safe_dump(rules, sort_keys=False))
    shutil.copy(UNIT_TESTS, folder / "alerts_test.yaml")
    return subprocess.run([PROMTOOL, "test", "rules", "alerts_test.yaml"], cwd=folder,
                          capture_output=True, text=True, timeout=120)


# --------------------------------------------------------------------------------------------
# The component as rendered
# --------------------------------------------------------------------------------------------


def test_the_component_scrapes_the_processor_pods_on_their_health_port(monitoring):
    pod_monitor = one(monitoring, "PodMonitor")
    deployment = one(monitoring, "Deployment", "sqs-processor")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert pod_monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (endpoint,) = pod_monitor["spec"]["podMetricsEndpoints"]
    ports = [p["name"] for c in deployment["spec"]["template"]["spec"]["containers"]
             for p in c["ports"]]
    assert endpoint["port"] in ports and endpoint["path"] == "/metrics"
    assert {o["metadata"]["namespace"] for o in monitoring if o["kind"] != "Namespace"} == \
        {"sqs-processor"}
    board = one(monitoring, "ConfigMap", "sqs-processor-dashboard")
    assert board["metadata"]["labels"]["grafana_dashboard"] == "1"
    # Without the component, none of it is deployed.
    assert not [o for o in render(K8S) if o["apiVersion"].startswith("monitoring.coreos.com")]


def test_the_components_objects_are_valid(monitoring):
    import kubernetes_validate.utils as kv

    board = one(monitoring, "ConfigMap", "sqs-processor-dashboard")
    kv.validate(board, kv.latest_version(), strict=True)  # the schemas kubernetes-validate ships
    # The Prometheus Operator's CRDs have no schema there: their required fields, by hand.
    pod_monitor = one(monitoring, "PodMonitor")
    assert pod_monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(pod_monitor["spec"]) <= {"selector", "podMetricsEndpoints", "namespaceSelector",
                                        "jobLabel", "podTargetLabels"}
    rule = one(monitoring, "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    for group in rule["spec"]["groups"]:
        assert group["name"] and group["rules"]
        for item in group["rules"]:
            assert set(item) <= {"alert", "record", "expr", "for", "labels", "annotations"}
            assert isinstance(item["expr"], str) and ("alert" in item) != ("record" in item)


def test_every_alert_has_a_severity_a_summary_a_unit_test_and_a_runbook(monitoring):
    tested = {t["alertname"] for case in yaml.safe_load(UNIT_TESTS.read_text())["tests"]
              for t in case.get("alert_rule_test", []) if t.get("exp_alerts")}
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### Alerts\n"):]
    section = section[:section.index("\n## ")]
    names = [a["alert"] for a in alerts(monitoring)]
    assert len(names) >= 8 and len(set(names)) == len(names)
    for rule in alerts(monitoring):
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        assert rule["alert"] in tested, f"{rule['alert']} has no promtool test that fires it"
        assert re.search(rf"^\| `{rule['alert']}` \|.+\|", section, flags=re.M), \
            f"{rule['alert']} has no runbook line in the README"


def test_the_dashboard_shows_what_an_operator_watches(monitoring):
    board = dashboard(monitoring)
    assert board["uid"] == "sqs-processor"
    text = " ".join(dashboard_queries(board))
    for series in ("sqs_processor_messages_processed_total",
                   "sqs_processor_message_age_at_write_seconds_bucket",
                   "sqs_processor_messages_in_flight", "sqs_processor_messages_failed_total",
                   "sqs_processor_aws_call_duration_seconds_bucket", "sqs_processor_ready"):
        assert series in text, f"the dashboard has no panel on {series}"
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]


def test_metric_names_are_found_in_promql():
    assert metric_names('sum by (namespace, le) (rate(a_bucket{x="y"}[5m])) / on (ns) '
                        'group_left b_total > 0.05 unless up') == {"a_bucket", "b_total", "up"}
    assert metric_names("label_values(c_gauge, namespace)") == {"c_gauge"}


# --------------------------------------------------------------------------------------------
# promtool
# --------------------------------------------------------------------------------------------


@needs_promtool
def test_the_rules_pass_promtool_check(monitoring, tmp_path):
    path = write_rules(monitoring, tmp_path)
    result = subprocess.run([PROMTOOL, "check", "rules", str(path)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rule_groups(monitoring)['groups'][0]['rules'])} rules found" in \
        result.stdout


@needs_promtool
def test_every_alert_fires_and_stays_quiet_as_its_unit_tests_expect(monitoring, tmp_path):
    result = promtool_test(rule_groups(monitoring), tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@needs_promtool
def test_the_unit_tests_catch_a_changed_threshold(monitoring, tmp_path):
    rules = rule_groups(monitoring)
    for rule in rules["groups"][0]["rules"]:
        if rule.get("alert") == "SqsProcessorMessageAgeHigh":
            assert "> 300" in rule["expr"]
            rule["expr"] = rule["expr"].replace("> 300", "> 1000")
    result = promtool_test(rules, tmp_path)
    assert result.returncode != 0
    assert "SqsProcessorMessageAgeHigh" in result.stdout + result.stderr


# --------------------------------------------------------------------------------------------
# A live processor and a real Prometheus
# --------------------------------------------------------------------------------------------

FAILING_TRANSFORM = '''
import time
from sqs_processor import TransformSpec, hookimpl

def build(options, context):
    def explode(record):
        if "boom" in record.message.body:
            raise ValueError("boom in the body")
        if "slow" in record.message.body:
            time.sleep(4)  # twice the visibility timeout: the heartbeat extends it
        return record
    return explode

@hookimpl
def sqs_processor_transforms():
    return TransformSpec(name="explode", factory=build,
                         description="Fails on 'boom', takes 4 s on 'slow'.")
'''


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


def _series(text: str) -> set[str]:
    return {re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line).group(0)
            for line in text.splitlines() if line and not line.startswith("#")}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _used_series(objects: list[dict[str, Any]]) -> dict[str, set[str]]:
    used: dict[str, set[str]] = {}
    for rule in alerts(objects):
        for name in metric_names(rule["expr"]):
            used.setdefault(name, set()).add(f"alert {rule['alert']}")
    for query in dashboard_queries(dashboard(objects)):
        for name in metric_names(query):
            used.setdefault(name, set()).add("dashboard")
    return used


def _start(tmp_path: Path, name: str, config: dict[str, Any], env: dict[str, str]
           ) -> tuple[ProcessorProcess, Path]:
    folder = tmp_path / name
    folder.mkdir()
    path = write_config(folder, config)
    return ProcessorProcess(path, cli_env(env), name=name), path


@pytest.mark.timeout(300)
def test_every_series_the_rules_and_the_dashboard_read_is_in_a_live_scrape(
        monitoring, tmp_path, aws_env, sqs, s3, queue_url, bucket):
    used = _used_series(monitoring)
    assert len(used) >= 15
    # One processor that stores, fails a message into the error sink, extends the visibility
    # of a slow one and rejects a reload; one whose bucket does not exist (system failures,
    # not ready).
    plugins = dropin_folder(tmp_path, explode=FAILING_TRANSFORM)
    good, good_config = _start(tmp_path, "good", pipeline_config(
        queue_url, bucket, plugins={"paths": [str(plugins)]},
        source={"visibility_timeout": 2},
        transforms=["json_parse", "explode", "enrich"],
        errors={"after_receives": 1, "sink": "s3", "prefix": "errors/"}), aws_env)
    other_queue = sqs.create_queue(QueueName=queue_url.rsplit("/", 1)[1] + "-b")["QueueUrl"]
    broken, _ = _start(tmp_path, "broken", pipeline_config(other_queue, bucket + "-missing"),
                       aws_env)
    try:
        for body in ('{"n": 1}', '{"n": 2}', "boom", "slow"):
            sqs.send_message(QueueUrl=queue_url, MessageBody=body)
        sqs.send_message(QueueUrl=other_queue, MessageBody='{"n": 3}')
        good.wait_event("stored", timeout=60)
        good.wait_event("to_error_sink", timeout=60)
        wait_for(lambda: "sqs_processor_visibility_extensions_total" in _scrape(good.port),
                 timeout=60, message="a visibility extension in /metrics")
        broken.wait_event("system_failure", timeout=60)
        good_config.write_text(good_config.read_text() + "\nno_such_section: 1\n")
        good.wait_event("reload_rejected", timeout=60)
        wait_for(lambda: "sqs_processor_config_reloads_total" in _scrape(good.port),
                 timeout=30, message="the rejected reload in /metrics")
        present = _series(_scrape(good.port)) | _series(_scrape(broken.port))
    finally:
        good.stop()
        broken.stop()
    missing = {name: sorted(where) for name, where in used.items()
               if name not in present and name not in EXTERNAL}
    assert missing == {}, f"read by the rules or the dashboard but not in /metrics: {missing}"
    # The exceptions hold only names that are used.
    assert set(EXTERNAL) <= set(used)


def _api(port: int, path: str) -> Any:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/{path}", timeout=5) as response:
        body = json.loads(response.read())
    assert body["status"] == "success", body
    return body["data"]


@needs_prometheus
@pytest.mark.timeout(300)
def test_a_real_prometheus_scrapes_the_processor_and_raises_its_alerts(
        monitoring, tmp_path, aws_env, sqs, queue_url, bucket):
    # A processor whose bucket does not exist: S3 fails for everyone, so it is not ready.
    processor, _ = _start(tmp_path, "broken", pipeline_config(queue_url, bucket + "-missing"),
                          aws_env)
    prometheus = None
    try:
        sqs.send_message(QueueUrl=queue_url, MessageBody='{"n": 1}')
        processor.wait_event("system_failure", timeout=60)
        write_rules(monitoring, tmp_path / "prometheus")
        port = _free_port()
        (tmp_path / "prometheus" / "prometheus.yml").write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": ["rules.yaml"],
            "scrape_configs": [{
                "job_name": "sqs-processor/sqs-processor",
                "static_configs": [{"targets": [f"127.0.0.1:{processor.port}"],
                                    "labels": {"namespace": "test", "pod": "broken-0"}}]}]}))
        prometheus = subprocess.Popen(
            [PROMETHEUS, "--config.file=prometheus.yml", f"--storage.tsdb.path={tmp_path}/tsdb",
             f"--web.listen-address=127.0.0.1:{port}"], cwd=tmp_path / "prometheus",
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def pending() -> set[str]:
            try:
                found = _api(port, "alerts")["alerts"]
            except OSError:
                return set()
            return {a["labels"]["alertname"] for a in found
                    if a["labels"].get("namespace") == "test" and a["state"] == "pending"}

        # Both alerts have a 'for' of 5 minutes: pending shows the condition held in a real
        # evaluation of the shipped rules over the scraped series.
        wanted = {"SqsProcessorNotReady", "SqsProcessorSystemFailures"}
        wait_for(lambda: wanted <= pending(), timeout=90, interval=1,
                 message=f"Prometheus to raise {sorted(wanted)} from the scrape")
        # The scrape is clean and every rule evaluates without error against real data.
        (target,) = _api(port, "targets")["activeTargets"]
        assert target["health"] == "up", target.get("lastError")
        rules = [r for g in _api(port, "rules")["groups"] for r in g["rules"]]
        assert len(rules) == len(alerts(monitoring))
        assert all(r["health"] == "ok" for r in rules), [r for r in rules if r["health"] != "ok"]
    finally:
        processor.stop()
        if prometheus is not None:
            prometheus.terminate()
            prometheus.wait(30)
