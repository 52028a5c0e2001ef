"""`sqs-processor run` as a real subprocess: the spec's variables, health, signals, logs."""

from __future__ import annotations

import contextlib
import json
import signal
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from helpers.processes import ChildProcess
from helpers.support import (
    cli_env,
    dropin_folder,
    pipeline_config,
    queue_counts,
    stored_objects,
    unique,
    wait_for,
    write_config,
)

SLOW_TRANSFORM = '''
import time
from sqs_processor import Option, TransformSpec, hookimpl

def build(options, context):
    seconds = options["seconds"]

    def slow(record):
        time.sleep(seconds)
        return record

    return slow

@hookimpl
def sqs_processor_transforms():
    return TransformSpec(name="slow", factory=build, description="Sleeps, then passes on.",
                         options=(Option("seconds", float, 1.0),))
'''


@pytest.fixture
def processes():
    started: list[ChildProcess] = []

    def start(args: list[str], env: dict[str, str]) -> ChildProcess:
        process = ChildProcess(args, env)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


def get(port: int, path: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_run_without_config_uses_the_spec_variables_and_aws_endpoint_url(
    aws_env, sqs, s3, queue_url, bucket, processes
):
    ids = [sqs.send_message(QueueUrl=queue_url, MessageBody=f'{{"n": {i}}}')["MessageId"]
           for i in range(12)]
    env = cli_env(aws_env, SQS_QUEUE_URL=queue_url, S3_BUCKET_NAME=bucket, S3_PREFIX="raw/",
                  POLL_INTERVAL_SECONDS="1", MAX_MESSAGES_PER_POLL="5", HEALTH_PORT="0")
    process = processes(["--log-level", "debug", "run", "--log-format", "json"], env)
    port = process.wait_event("health_listening")["port"]

    wait_for(lambda: len(stored_objects(s3, bucket)) == 12, message="12 objects")
    wait_for(lambda: queue_counts(sqs, queue_url) == (0, 0), message="an empty queue")
    status, body = get(port, "/health")
    assert status == 200
    assert body["status"] == "healthy"
    assert body["messages_processed"] == 12
    assert datetime.fromisoformat(body["last_poll"]) <= datetime.now(UTC)

    objects = stored_objects(s3, bucket)
    assert {doc["message_id"] for doc in objects.values()} == set(ids)
    assert all(key.startswith("raw/") and key.endswith(f"/{doc['message_id']}.json")
               for key, doc in objects.items())
    # MAX_MESSAGES_PER_POLL=5 caps every receive at five messages.
    sizes = [int(line["count"]) for line in map(json.loads, process.lines)
             if line.get("event") == "received"]
    assert sizes and max(sizes) <= 5

    # After the last partial batch the poller waits POLL_INTERVAL_SECONDS (1 s), then starts a
    # 20 s long poll. A message sent after SIGTERM is returned by that receive and must be
    # released at once, not kept hidden.
    time.sleep(1.5)
    process.proc.send_signal(signal.SIGTERM)
    process.wait_event("stopping")
    late_id = sqs.send_message(QueueUrl=queue_url, MessageBody="late")["MessageId"]
    assert process.finish() == 0
    log = "".join(process.lines)
    assert "received during shutdown" in log
    assert queue_counts(sqs, queue_url) == (1, 0)
    assert late_id not in {doc["message_id"] for doc in stored_objects(s3, bucket).values()}


def test_sigterm_lets_in_flight_messages_finish_and_exits_zero(
    aws_env, sqs, s3, queue_url, bucket, processes, tmp_path: Path
):
    plugins = dropin_folder(tmp_path, slow=SLOW_TRANSFORM)
    config = pipeline_config(queue_url, bucket, plugins={"paths": [str(plugins)]},
                             transforms=["json_parse", {"type": "slow", "seconds": 1.5}, "enrich"])
    path = write_config(tmp_path, config)
    for i in range(5):
        sqs.send_message(QueueUrl=queue_url, MessageBody=f"m{i}")
    process = processes(["run", "--config", str(path), "--log-format", "json",
                         "--log-level", "debug"], cli_env(aws_env))
    process.wait_event("received", count=5)
    started = time.monotonic()
    process.proc.send_signal(signal.SIGTERM)
    assert process.finish() == 0
    assert time.monotonic() - started < 10  # well inside the 10 s grace
    assert len(stored_objects(s3, bucket)) == 5
    assert queue_counts(sqs, queue_url) == (0, 0)
    stopped = process.wait_event("stopped")
    assert stopped["processed"] == 5 and stopped["released"] == 0


def test_work_unfinished_at_the_shutdown_deadline_is_released_for_redelivery(
    aws_env, sqs, s3, queue_url, bucket, processes, tmp_path: Path
):
    plugins = dropin_folder(tmp_path, slow=SLOW_TRANSFORM)
    config = pipeline_config(queue_url, bucket, plugins={"paths": [str(plugins)]},
                             transforms=[{"type": "slow", "seconds": 30}],
                             service={"shutdown_grace_seconds": 1})
    path = write_config(tmp_path, config)
    for i in range(3):
        sqs.send_message(QueueUrl=queue_url, MessageBody=f"m{i}")
    process = processes(["run", "--config", str(path), "--log-format", "json",
                         "--log-level", "debug"], cli_env(aws_env))
    process.wait_event("received", count=3)
    process.proc.send_signal(signal.SIGTERM)
    assert process.finish() == 0
    released = process.wait_event("released")
    assert released["count"] == 3
    # Visible again at once (the queue's visibility timeout is 30 s), nothing written.
    assert queue_counts(sqs, queue_url) == (3, 0)
    assert stored_objects(s3, bucket) == {}


def test_readiness_fails_while_s3_rejects_writes_and_liveness_stays_up(
    aws_env, sqs, s3, queue_url, processes, tmp_path: Path
):
    missing = unique("bucket-not-yet")
    path = write_config(tmp_path, pipeline_config(queue_url, missing))
    sent = sqs.send_message(QueueUrl=queue_url, MessageBody="waiting for a bucket")["MessageId"]
    process = processes(["run", "--config", str(path), "--log-format", "json"], cli_env(aws_env))
    port = process.wait_event("health_listening")["port"]
    # The pause is logged once, before the per-message line.
    assert process.wait_event("paused")["stage"] == "write"
    failed = process.wait_event("system_failure")
    assert failed["stage"] == "sink:s3" and failed["error"] == "NoSuchBucket"

    status, body = get(port, "/readyz")
    assert status == 503
    checks = {check["name"]: check for check in body["checks"]}
    assert checks["s3_write"]["ok"] is False
    assert "NoSuchBucket" in checks["s3_write"]["detail"]
    assert checks["system"]["ok"] is False and "NoSuchBucket" in checks["system"]["detail"]
    assert checks["sqs_receive"]["ok"] is True
    assert get(port, "/healthz")[0] == 200
    status, body = get(port, "/health")
    assert status == 503 and body["status"] == "unhealthy"
    assert body["messages_processed"] == 0
    assert get(port, "/nope")[0] == 404
    # Nothing was deleted: the message is still in flight, held (not failed) while S3 is down.
    assert sum(queue_counts(sqs, queue_url)) == 1
    assert not any(e.get("event") == "failed" for e in _events(process))

    # Recovery needs no restart: once the bucket exists the held message is written.
    s3.create_bucket(Bucket=missing)
    wait_for(lambda: len(stored_objects(s3, missing)) == 1, timeout=30, message="the write")
    assert process.wait_event("resumed")
    wait_for(lambda: get(port, "/readyz")[0] == 200, timeout=10, message="ready again")
    wait_for(lambda: queue_counts(sqs, queue_url) == (0, 0), message="the delete")
    [stored] = stored_objects(s3, missing).values()
    assert stored["message_id"] == sent and stored["body"] == "waiting for a bucket"
    # Received once: the outage did not push it towards a DLQ.
    assert stored["attributes"]["ApproximateReceiveCount"] == "1"

    process.proc.send_signal(signal.SIGTERM)
    assert process.finish() == 0


def _events(process: ChildProcess) -> list[dict[str, Any]]:
    events = []
    for line in process.lines:
        with contextlib.suppress(ValueError):
            events.append(json.loads(line))
    return events


def test_json_logs_carry_structure_and_never_a_body_or_receipt_handle(
    aws_env, sqs, s3, queue_url, bucket, processes, tmp_path: Path
):
    secret = "BODY-SECRET-7f3a"
    path = write_config(tmp_path, pipeline_config(queue_url, bucket))
    sqs.send_message(QueueUrl=queue_url, MessageBody=f'{{"token": "{secret}"}}')
    sqs.send_message(QueueUrl=queue_url, MessageBody=f"plain {secret}")
    process = processes(["run", "--config", str(path), "--log-format", "json",
                         "--log-level", "debug"], cli_env(aws_env))
    wait_for(lambda: len(stored_objects(s3, bucket)) == 2, message="2 objects")
    process.wait_event("acked")
    handles = [doc["receipt_handle"] for doc in stored_objects(s3, bucket).values()]
    process.proc.send_signal(signal.SIGTERM)
    sqs.send_message(QueueUrl=queue_url, MessageBody="wake the long poll")
    assert process.finish() == 0

    records = [json.loads(line) for line in process.lines]
    assert records, "no log output"
    for record in records:
        assert {"timestamp", "level", "logger", "event", "message"} <= set(record)
    stored = [r for r in records if r["event"] == "stored"]
    assert len(stored) == 2 and all(r["message_id"] and r["location"] for r in stored)
    output = "".join(process.lines)
    assert secret not in output
    for handle in handles:
        assert handle not in output


def test_text_logs_escape_line_breaks_from_error_messages(
    aws_env, sqs, queue_url, bucket, processes, tmp_path: Path
):
    plugins = dropin_folder(tmp_path, forge=(
        "from sqs_processor import TransformSpec, hookimpl\n"
        "def forge(record):\n"
        "    raise ValueError('bad\\r\\n2026-01-01T00:00:00.000Z INFO    runner: forged line')\n"
        "@hookimpl\n"
        "def sqs_processor_transforms():\n"
        "    return TransformSpec(name='forge', factory=lambda options, context: forge)\n"))
    path = write_config(tmp_path, pipeline_config(queue_url, bucket,
                                                  plugins={"paths": [str(plugins)]},
                                                  transforms=["forge"]))
    sqs.send_message(QueueUrl=queue_url, MessageBody="x")
    process = processes(["run", "--config", str(path)], cli_env(aws_env))
    wait_for(lambda: any("failed at transform:forge" in line for line in process.lines),
             message="the failure log line")
    process.proc.send_signal(signal.SIGTERM)
    sqs.send_message(QueueUrl=queue_url, MessageBody="wake the long poll")
    assert process.finish() == 0
    failure = next(line for line in process.lines if "failed at transform:forge" in line)
    # The injected line break did not start a new log record: all of it is on the failure line.
    assert "forged line" in failure
    assert not any(line.startswith("2026-01-01T00:00:00.000Z") for line in process.lines)
