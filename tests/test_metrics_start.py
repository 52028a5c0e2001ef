"""Every documented counter and gauge is on /metrics from start-up, before any event.

An idle ``sqs-processor run`` (a real child process, an empty queue) is scraped over HTTP and
compared with the README's Metrics table: each counter and gauge is there with its documented
type, at 0, with a series for every documented label value and for each stage the pipeline
has, and no series carries a label the table does not document.
"""

from __future__ import annotations

import re
import urllib.request
from typing import Any

from helpers.otlp import parse_prometheus
from helpers.processes import ProcessorProcess
from helpers.support import ROOT, cli_env, pipeline_config, wait_for, write_config

LABEL = re.compile(r"`([a-z_]+)`(?: \(([^)]*)\))?")


def documented_metrics() -> dict[str, tuple[str, dict[str, list[str]]]]:
    """The README's Metrics table: series -> (type, {label: documented values})."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("### Metrics", 1)[1].split("\n## ", 1)[0]
    table: dict[str, tuple[str, dict[str, list[str]]]] = {}
    for row in re.findall(r"^\| `(sqs_processor_[a-z_]+)` \| (\w+) \|([^|]*)\|", section,
                          flags=re.M):
        name, kind, labels = row
        table[name] = (kind, {label: re.findall(r"`([^`]+)`", values)
                              for label, values in LABEL.findall(labels)})
    return table


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return response.read().decode("utf-8")


def _series(samples: dict[str, float], name: str) -> list[tuple[dict[str, str], float]]:
    found = []
    for key, value in samples.items():
        base, _, rest = key.partition("{")
        if base == name:
            found.append((dict(re.findall(r'([a-z_]+)="([^"]*)"', rest)), value))
    return found


def test_an_idle_processor_exports_every_documented_counter_and_gauge_at_zero(
        tmp_path, aws_env, queue_url, bucket):
    config = pipeline_config(queue_url, bucket, transforms=["json_parse", "enrich"])
    config["source"].update(wait_time_seconds=1, poll_interval_seconds=1)
    path = write_config(tmp_path, config)
    child = ProcessorProcess(path, cli_env(aws_env))
    try:
        port = child.port
        child.wait_event("started", timeout=60)
        # Idle means at least one empty receive and nothing else: no message was ever sent.
        wait_for(lambda: 'outcome="empty"' in _scrape(port)
                 and re.search(r'polls_total\{outcome="empty",queue="[^"]+"\} [1-9]',
                               _scrape(port)), timeout=60, message="an empty poll")
        text = _scrape(port)
    finally:
        child.terminate()
        child.finish(60)
        child.stop()
    samples = parse_prometheus(text)
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, flags=re.M))
    stages = {"transform:json_parse", "transform:enrich", "sink:s3"}
    queue = queue_url.rsplit("/", 1)[1]
    checked: list[str] = []
    for name, (kind, labels) in documented_metrics().items():
        if kind == "histogram":  # a histogram has no sample before its first observation
            assert types.get(name, kind) == kind, name
            continue
        checked.append(name)
        assert types.get(name) == kind, f"{name}: no '# TYPE {name} {kind}' line on /metrics"
        series = _series(samples, name)
        assert series, f"{name} has no sample on an idle processor"
        for attributes, _ in series:
            assert set(attributes) <= set(labels), (name, attributes, labels)
        if kind == "counter" and name != "sqs_processor_polls_total":
            assert all(value == 0 for _, value in series), (name, series)
        for label, values in labels.items():
            seen = {attributes.get(label) for attributes, _ in series}
            if values:
                assert set(values) <= seen, f"{name}: no series for {label} in {values}"
            elif label == "queue":
                assert seen == {queue}, (name, seen)
            elif label == "stage":
                assert seen == stages, (name, seen)
    assert len(checked) == 16, checked  # 14 counters and 2 gauges are documented
    assert samples["sqs_processor_messages_in_flight"] == 0
    assert samples["sqs_processor_ready"] == 1


def test_failure_counters_start_per_stage_so_the_documented_alert_reads_zero(
        tmp_path, aws_env, queue_url, bucket, run_pipeline):
    config = pipeline_config(queue_url, bucket, transforms=["json_parse"])
    running = run_pipeline(config)
    wait_for(lambda: running.runner.state == "running", timeout=60, message="running")
    samples: dict[str, Any] = parse_prometheus(running.runner.telemetry.prometheus_text())
    for name in ("sqs_processor_messages_failed_total", "sqs_processor_system_failures_total",
                 "sqs_processor_messages_to_error_sink_total"):
        assert samples[f'{name}{{stage="transform:json_parse"}}'] == 0
        assert samples[f'{name}{{stage="sink:s3"}}'] == 0
    assert samples["sqs_processor_ack_failures_total"] == 0
    assert samples['sqs_processor_config_reloads_total{outcome="rejected"}'] == 0
    assert samples['sqs_processor_visibility_extensions_total{outcome="failed"}'] == 0


def test_a_reload_that_adds_a_stage_exports_its_series_at_zero(tmp_path, aws_env, queue_url,
                                                               bucket):
    import threading

    from sqs_processor.pipeline import load_pipeline
    from sqs_processor.reload import Supervisor
    from sqs_processor.telemetry import Telemetry

    config = pipeline_config(queue_url, bucket, transforms=["json_parse"])
    config["source"].update(wait_time_seconds=1, poll_interval_seconds=1)
    path = write_config(tmp_path, config)
    telemetry = Telemetry()
    supervisor = Supervisor(load_pipeline(path), telemetry, lambda: load_pipeline(path),
                            watch=False)
    thread = threading.Thread(target=supervisor.run, daemon=True)
    thread.start()
    series = 'sqs_processor_messages_failed_total{stage="transform:enrich"}'
    try:
        wait_for(lambda: supervisor.state == "running", timeout=60, message="running")
        assert series not in parse_prometheus(telemetry.prometheus_text())
        config["transforms"] = ["json_parse", "enrich"]
        write_config(tmp_path, config)
        supervisor.request_reload()
        wait_for(lambda: parse_prometheus(telemetry.prometheus_text()).get(
            'sqs_processor_config_reloads_total{outcome="ok"}') == 1, timeout=60,
            message="the reload")
        samples = parse_prometheus(telemetry.prometheus_text())
        assert samples[series] == 0
        assert samples['sqs_processor_config_reloads_total{outcome="rejected"}'] == 0
    finally:
        supervisor.stop()
        thread.join(60)
        telemetry.shutdown()
