"""Stalls show: a hung SQS or S3 makes /readyz answer 503 naming the call; /healthz stays 200.

Issue 14, finding 7: with SQS frozen for 40 s or S3 hung for 15 s, both probes stayed 200,
because the checks only looked at the last result. Here the fault proxy holds every receive (or
every PutObject) of a real ``sqs-processor run`` until the test releases it; readiness must name
the call while it hangs and recover by itself once it completes.
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.faultproxy import FaultProxy, Hold
from helpers.processes import ProcessorProcess
from helpers.support import cli_env, pipeline_config, stored_objects, wait_for, write_config

from sqs_processor.stalls import OutstandingCalls


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_call_is_stalled_only_past_its_limit_and_a_long_poll_gets_its_wait():
    clock = Clock()
    calls = OutstandingCalls(5, clock=clock)
    calls.begin("SQS.ReceiveMessage", extra=20)
    other = threading.Thread(target=calls.begin, args=("S3.PutObject",))
    other.start()
    other.join()
    clock.now += 6
    assert calls.stalled() == ["S3.PutObject has been outstanding for 6s (limit 5s)"]
    clock.now += 20
    assert calls.stalled() == ["S3.PutObject has been outstanding for 26s (limit 5s)",
                               "SQS.ReceiveMessage has been outstanding for 26s (limit 25s)"]
    calls.end()  # this thread's receive completed
    assert calls.stalled() == ["S3.PutObject has been outstanding for 26s (limit 5s)"]


@pytest.fixture
def proxy(emulator: str) -> Iterator[FaultProxy]:
    with FaultProxy(emulator, seed=7) as running:
        yield running


def probe(port: int, path: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def stalled_detail(port: int) -> str | None:
    status, body = probe(port, "/readyz")
    if status != 503:
        return None
    details = [c["detail"] for c in body["checks"] if c["name"] == "stalled"]
    return details[0] if details else None


@pytest.fixture
def processor(tmp_path: Path, aws_env: dict[str, str], queue_url: str, bucket: str,
              proxy: FaultProxy) -> Iterator[ProcessorProcess]:
    config = pipeline_config(queue_url, bucket, aws={"endpoint_url": proxy.url},
                             service={"stall_seconds": 2})
    process = ProcessorProcess(write_config(tmp_path, config), cli_env(aws_env))
    try:
        process.wait_event("started", timeout=60)
        wait_for(lambda: probe(process.port, "/readyz")[0] == 200, timeout=30,
                 message="ready before the fault")
        yield process
    finally:
        process.stop()


@pytest.mark.timeout(150)
def test_a_frozen_sqs_makes_readyz_name_the_receive_and_it_recovers(processor, proxy):
    port = processor.port
    release = threading.Event()
    rule = proxy.add(Hold(release), operation="ReceiveMessage")
    try:
        detail = wait_for(lambda: stalled_detail(port), timeout=60,
                          message="/readyz naming the stalled receive")
        assert "SQS.ReceiveMessage has been outstanding for" in detail
        assert "(limit 3s)" in detail  # 2 s past the 1 s long poll
        assert probe(port, "/healthz")[0] == 200  # the process is not stuck: no restart
    finally:
        rule.enabled = False
        release.set()
    wait_for(lambda: probe(port, "/readyz")[0] == 200, timeout=60,
             message="/readyz back to 200 once the receive completed")
    assert probe(port, "/healthz")[0] == 200
    processor.terminate()
    assert processor.finish(60) == 0


@pytest.mark.timeout(150)
def test_a_hung_s3_makes_readyz_name_the_write_and_it_recovers(processor, proxy, sqs, s3,
                                                               queue_url, bucket):
    port = processor.port
    release = threading.Event()
    rule = proxy.add(Hold(release), operation="PutObject")
    try:
        sqs.send_message(QueueUrl=queue_url, MessageBody='{"waits": "for S3"}')
        detail = wait_for(lambda: stalled_detail(port), timeout=60,
                          message="/readyz naming the stalled write")
        assert "S3.PutObject has been outstanding for" in detail
        assert probe(port, "/healthz")[0] == 200
        assert stored_objects(s3, bucket) == {}
    finally:
        rule.enabled = False
        release.set()
    wait_for(lambda: len(stored_objects(s3, bucket)) == 1, timeout=60,
             message="the held message stored once S3 answers")
    wait_for(lambda: probe(port, "/readyz")[0] == 200, timeout=60,
             message="/readyz back to 200 once the write completed")
    processor.terminate()
    assert processor.finish(60) == 0
