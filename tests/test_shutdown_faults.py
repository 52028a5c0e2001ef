"""Graceful shutdown under slow AWS calls: `sqs-processor run` as a child, behind the proxy.

The Kubernetes contract: after SIGTERM, in-flight messages finish or are handed back
(visibility 0), the process exits 0 before ``service.shutdown_grace_seconds`` (plus a little),
which must be shorter than ``terminationGracePeriodSeconds``, and nothing is left hidden in the
queue. A write still travelling when the process gave up may land later: the message was handed
back, comes again, and is recognised by its key.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.faultproxy import Delay, DelayResponse, FaultProxy
from helpers.invariants import assert_archived_exactly_once, create_queue, raw_objects, send_bodies
from helpers.processes import ProcessorProcess
from helpers.support import cli_env, pipeline_config, queue_counts, unique, wait_for, write_config

# Exiting may take the grace period plus closing down (the acker's last batch, the clients).
EXIT_SLACK_SECONDS = 4.0


@pytest.fixture
def proxy(emulator: str) -> Iterator[FaultProxy]:
    with FaultProxy(emulator, seed=15) as running:
        yield running


@pytest.fixture
def processor(aws_env, tmp_path: Path) -> Iterator[Callable[..., ProcessorProcess]]:
    started: list[ProcessorProcess] = []

    def start(config: dict[str, Any], name: str = "processor") -> ProcessorProcess:
        path = write_config(tmp_path, config, f"{name}-{len(started)}.yaml")
        process = ProcessorProcess(path, cli_env(aws_env), name)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


def via(proxy: FaultProxy, queue_url: str, bucket: str, **sections: Any) -> dict[str, Any]:
    return pipeline_config(queue_url, bucket, aws={"endpoint_url": proxy.url}, **sections)


def _drain(processor, config: dict[str, Any], sqs, queue_url: str) -> dict[str, Any]:
    """Run a fresh processor until the queue is empty; return its final totals."""
    process = processor(config, "drain")
    process.wait_event("started")  # SIGTERM before the handlers are installed would kill it
    wait_for(lambda: queue_counts(sqs, queue_url) == (0, 0), timeout=30,
             message="the restarted processor to drain the queue")
    process.terminate()
    assert process.finish() == 0
    return process.wait_event("stopped")


def test_sigterm_with_slow_writes_in_flight_finishes_them_and_exits_zero(
    sqs, s3, bucket, proxy, processor
):
    queue_url, _ = create_queue(sqs, unique("q"), visibility_timeout=30)
    sent = send_bodies(sqs, queue_url, (f'{{"slow": {i}}}' for i in range(20)))
    proxy.add(Delay(2.0), operation="PutObject")
    grace = 10.0
    config = via(proxy, queue_url, bucket,
                 service={"workers": 10, "max_in_flight": 20, "shutdown_grace_seconds": grace})

    process = processor(config)
    # All 20 received: ten writes on the wire, ten waiting for a worker.
    wait_for(lambda: sum(r["count"] for r in process.events("received")) == 20
             and proxy.count("PutObject") >= 5, message="20 messages in flight")
    signalled = time.monotonic()
    process.terminate()
    assert process.finish(timeout=grace + 10) == 0
    assert time.monotonic() - signalled < grace + EXIT_SLACK_SECONDS

    stopped = process.wait_event("stopped")
    assert (stopped["processed"], stopped["released"]) == (20, 0), process.log_tail()
    assert queue_counts(sqs, queue_url) == (0, 0)

    proxy.clear()
    _drain(processor, config, sqs, queue_url)
    assert_archived_exactly_once(s3, sqs, bucket, queue_url, sent)


def test_writes_unfinished_at_the_deadline_are_released_and_their_late_commits_stored_once(
    sqs, s3, bucket, proxy, processor
):
    queue_url, _ = create_queue(sqs, unique("q"), visibility_timeout=30)
    sent = send_bodies(sqs, queue_url, (f"late {i}" for i in range(10)))
    # Every write takes 3 s to reach S3; the processor gets 1 s after SIGTERM.
    proxy.add(Delay(3.0), operation="PutObject")
    grace = 1.0
    config = via(proxy, queue_url, bucket, service={"shutdown_grace_seconds": grace})

    process = processor(config)
    wait_for(lambda: proxy.count("PutObject") == 10, message="all ten writes in flight")
    signalled = time.monotonic()
    process.terminate()
    assert process.finish(timeout=grace + 10) == 0
    assert time.monotonic() - signalled < grace + EXIT_SLACK_SECONDS

    assert process.wait_event("released")["count"] == 10
    assert queue_counts(sqs, queue_url) == (10, 0), "messages were left hidden"
    # The writes the processor abandoned still reach S3 (they were on the wire).
    wait_for(lambda: len(raw_objects(s3, bucket)) == 10, timeout=15,
             message="the abandoned writes to land")

    proxy.clear()
    totals = _drain(processor, config, sqs, queue_url)
    assert totals["existing"] == 10 and totals["written"] == 0
    assert_archived_exactly_once(s3, sqs, bucket, queue_url, sent)


def test_a_receive_that_answers_after_sigterm_has_its_messages_released(
    sqs, s3, bucket, proxy, processor
):
    queue_url, _ = create_queue(sqs, unique("q"), visibility_timeout=30)
    sent = send_bodies(sqs, queue_url, (f"caught in the receive {i}" for i in range(5)))
    # SQS hands the messages out at once, the answer reaches the processor 3 s later.
    slow_receive = proxy.add(DelayResponse(3.0), operation="ReceiveMessage", times=1)
    config = via(proxy, queue_url, bucket)

    process = processor(config)
    wait_for(lambda: queue_counts(sqs, queue_url) == (0, 5), message="the messages in flight")
    process.terminate()
    assert process.finish() == 0

    assert slow_receive.fired == 1
    assert process.wait_event("released")["count"] == 5
    assert queue_counts(sqs, queue_url) == (5, 0), "messages received after SIGTERM stay hidden"
    assert raw_objects(s3, bucket) == {}

    proxy.clear()
    _drain(processor, config, sqs, queue_url)
    assert_archived_exactly_once(s3, sqs, bucket, queue_url, sent)
