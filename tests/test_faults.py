"""Faults between the processor and AWS, injected by a proxy in front of the moto server.

Each scenario ends with the reliability invariant (:func:`invariants.assert_archived_exactly_once`):
every sent message id is stored exactly once at its key with its body unchanged, and the queue
is empty. The processor runs in process (the runner and the shipped components) and reaches
SQS and S3 only through the proxy; the test's own clients talk to moto directly.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from helpers.faultproxy import (
    ACCESS_DENIED,
    S3_INTERNAL_ERROR,
    SLOW_DOWN,
    SQS_INTERNAL_ERROR,
    Delay,
    DropAfterForward,
    DropBeforeForward,
    FailEntries,
    FaultProxy,
    Request,
)
from helpers.invariants import assert_archived_exactly_once, create_queue, raw_objects, send_bodies
from helpers.support import pipeline_config, queue_counts, unique, wait_for

from sqs_processor.health import HealthServer


@pytest.fixture
def proxy(emulator: str) -> Iterator[FaultProxy]:
    with FaultProxy(emulator, seed=4) as running:
        yield running


def via(proxy: FaultProxy, queue_url: str, bucket: str, **sections: Any) -> dict[str, Any]:
    """The test pipeline, with every AWS call going through the proxy."""
    aws = {"endpoint_url": proxy.url, **sections.pop("aws", {})}
    return pipeline_config(queue_url, bucket, aws=aws, **sections)


def first_request_per_key() -> Callable[[Request], bool]:
    """A rule filter that matches only the first request for each S3 key."""
    seen: set[str | None] = set()

    def where(request: Request) -> bool:
        if request.key in seen:
            return False
        seen.add(request.key)
        return True

    return where


def http_get(port: int, path: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


# ------------------------------------------------------------------------------------------
# Lost responses and lost deletes
# ------------------------------------------------------------------------------------------


def test_a_put_whose_answer_is_lost_after_the_write_is_recognised_by_412_and_stored_once(
    sqs, s3, bucket, proxy, run_pipeline
):
    queue_url, _ = create_queue(sqs, unique("q"), visibility_timeout=30)
    sent = send_bodies(sqs, queue_url, (f'{{"n": {i}}}' for i in range(30)))
    lost = proxy.add(DropAfterForward(), operation="PutObject", probability=0.5,
                     where=first_request_per_key())

    with run_pipeline(via(proxy, queue_url, bucket)) as running:
        wait_for(lambda: running.stats["processed"] == 30, message="30 messages processed")
        assert running.stop() == 0

    stats = running.stats
    assert 0 < lost.fired < 30
    # botocore retried each PUT whose answer was lost; the object was already there (412).
    assert stats["existing"] == lost.fired
    assert stats["written"] == 30 - lost.fired
    assert stats["failed"] == 0 and stats["received"] == 30
    assert proxy.count("PutObject") == 30 + lost.fired
    assert_archived_exactly_once(s3, sqs, bucket, queue_url, sent)


def test_a_delete_whose_answer_is_lost_after_it_took_effect_causes_no_redelivery(
    sqs, s3, bucket, proxy, run_pipeline
):
    queue_url, _ = create_queue(sqs, unique("q"), visibility_timeout=30)
    sent = send_bodies(sqs, queue_url, (f"plain {i}" for i in range(25)))
    lost = proxy.add(DropAfterForward(), operation="DeleteMessageBatch", times=3)

    with run_pipeline(via(proxy, queue_url, bucket)) as running:
        wait_for(lambda: running.stats["processed"] == 25, message="25 messages processed")
        wait_for(lambda: queue_counts(sqs, queue_url) == (0, 0), message="queue empty")
        assert running.stop() == 0

    stats = running.stats
    assert lost.fired == 3
    assert stats["ack_failed"] == 0 and stats["received"] == 25 and stats["existing"] == 0
    assert_archived_exactly_once(s3, sqs, bucket, queue_url, sent)


def test_a_delete_that_never_arrives_brings_the_message_back_and_it_is_not_stored_twice(
    sqs, s3, bucket, proxy, run_pipeline
):
    queue_url, _ = create_queue(sqs, unique("q"), visibility_timeout=2)
    sent = send_bodies(sqs, queue_url, (f'{{"order": {i}}}' for i in range(5)))
    # Every delete vanishes on the way until the processor has given up on all five.
    lost = proxy.add(DropBeforeForward(), operation="DeleteMessageBatch")

    with run_pipeline(via(proxy, queue_url, bucket, aws={"max_attempts": 1})) as running:
        wait_for(lambda: running.stats["ack_failed"] >= 5, message="the deletes to be given up")
        lost.enabled = False
        wait_for(lambda: running.stats["existing"] >= 5, timeout=20,
                 message="the undeleted messages to come back and be recognised")
        wait_for(lambda: queue_counts(sqs, queue_url) == (0, 0), message="queue empty")
        assert running.stop() == 0

    stats = running.stats
    assert lost.fired >= 3  # at least three tries of the batch
    assert stats["written"] == 5
    assert_archived_exactly_once(s3, sqs, bucket, queue_url, sent)


def test_retryable_failed_delete_entries_are_retried_and_nothing_is_redelivered(
    sqs, s3, bucket, proxy, run_pipeline
):
    queue_url, _ = create_queue(sqs, unique("q"), visibility_timeout=30)
    sent = send_bodies(sqs, queue_url, (f"entry {i}" for i in range(20)))
    # Every odd entry of the first two batches fails with a server-side error.
    partial = proxy.add(FailEntries("InternalError", sender_fault=False,
                                    select=lambda entry: int(entry["Id"]) % 2 == 1),
                        operation="DeleteMessageBatch", times=2)

    with run_pipeline(via(proxy, queue_url, bucket)) as running:
        wait_for(lambda: running.stats["processed"] == 20, message="20 messages deleted")
        # Visibility is 30 s: an empty queue now means the retries deleted them.
        wait_for(lambda: queue_counts(sqs, queue_url) == (0, 0), timeout=10,
                 message="queue empty without waiting for a redelivery")
        assert running.stop() == 0

    stats = running.stats
    assert partial.fired == 2
    assert stats["ack_failed"] == 0 and stats["received"] == 20 and stats["existing"] == 0
    assert proxy.count("DeleteMessageBatch") >= 3
    assert_archived_exactly_once(s3, sqs, bucket, queue_url, sent)


def test_a_sender_fault_delete_entry_is_reported_and_recognised_when_redelivered(
    sqs, s3, bucket, proxy, run_pipeline, caplog
):
    queue_url, _ = create_queue(sqs, unique("q"), visibility_timeout=2)
    sent = send_bodies(sqs, queue_url, ["only one"])
    [message_id] = sent
    stale = proxy.add(FailEntries("ReceiptHandleIsInvalid", sender_fault=True),
                      operation="DeleteMessageBatch", times=1)

    with caplog.at_level(logging.WARNING, logger="sqs_processor.runner"), \
            run_pipeline(via(proxy, queue_url, bucket)) as running:
        wait_for(lambda: running.stats["existing"] == 1, timeout=20,
                 message="the redelivery to be recognised as already stored")
        wait_for(lambda: queue_counts(sqs, queue_url) == (0, 0), message="queue empty")
        assert running.stop() == 0

    stats = running.stats
    assert stale.fired == 1
    assert stats["ack_failed"] == 1 and stats["written"] == 1 and stats["received"] == 2
    # A sender fault is not retried: one delete call failed, the next one is the redelivery's.
    assert proxy.count("DeleteMessageBatch") == 2
    reported = [r for r in caplog.records if getattr(r, "event", None) == "ack_failed"]
    assert [r.message_id for r in reported] == [message_id]
    assert "ReceiptHandleIsInvalid" in reported[0].getMessage()
    assert_archived_exactly_once(s3, sqs, bucket, queue_url, sent)


# ------------------------------------------------------------------------------------------
# Error storms, latency, timeouts, retries
# ------------------------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_a_storm_of_5xx_slow_down_and_lost_answers_neither_loses_nor_duplicates(
    sqs, s3, bucket, proxy, run_pipeline
):
    queue_url, _ = create_queue(sqs, unique("q"), visibility_timeout=2)
    sent = send_bodies(sqs, queue_url, (f'{{"storm": {i}}}' for i in range(60)))
    rules = [
        proxy.add(SLOW_DOWN, operation="PutObject", probability=0.25),
        proxy.add(S3_INTERNAL_ERROR, operation="PutObject", probability=0.1),
        proxy.add(DropAfterForward(), operation="PutObject", skip=5, times=3),
        proxy.add(Delay(0.2), operation="PutObject", probability=0.2),
        # The SQS calls are few (60 messages are about six receives and six delete batches), too
        # few for a random rule to be sure to fire (nor is 5 % of the puts): these fire on chosen
        # calls instead, the second and third of their kind.
        proxy.add(SQS_INTERNAL_ERROR, operation="ReceiveMessage", skip=1, times=2),
        proxy.add(SQS_INTERNAL_ERROR, operation="DeleteMessageBatch", skip=1, times=2),
        proxy.add(FailEntries(select=lambda entry: entry["Id"] == "0"),
                  operation="DeleteMessageBatch", skip=1, times=2),
    ]

    config = via(proxy, queue_url, bucket, aws={"max_attempts": 3},
                 service={"workers": 8, "max_in_flight": 30})
    with run_pipeline(config) as running:
        wait_for(lambda: queue_counts(sqs, queue_url) == (0, 0), timeout=90,
                 message="the queue to drain through the storm")
        assert running.stop() == 0

    assert all(rule.fired > 0 for rule in rules), [rule.fired for rule in rules]
    assert_archived_exactly_once(s3, sqs, bucket, queue_url, sent)


def test_a_write_that_times_out_but_commits_later_is_stored_once(
    sqs, s3, bucket, proxy, run_pipeline
):
    queue_url, _ = create_queue(sqs, unique("q"), visibility_timeout=30)
    sent = send_bodies(sqs, queue_url, (f"slow {i}" for i in range(5)))
    # The first attempt of each write waits 3 s before reaching S3: the client gives up
    # after 2 s and retries, and S3 then also stores the first attempt.
    slow = proxy.add(Delay(3.0), operation="PutObject", where=first_request_per_key())

    config = via(proxy, queue_url, bucket, aws={"read_timeout": 2, "max_attempts": 3})
    with run_pipeline(config) as running:
        wait_for(lambda: running.stats["processed"] == 5, timeout=30, message="5 processed")
        assert running.stop() == 0

    assert slow.fired == 5
    time.sleep(1.5)  # let the last delayed attempts reach S3
    assert proxy.count("PutObject") >= 10
    assert_archived_exactly_once(s3, sqs, bucket, queue_url, sent)


def test_aws_max_attempts_is_the_number_of_attempts_per_call(
    sqs, s3, bucket, proxy, run_pipeline
):
    queue_url, _ = create_queue(sqs, unique("q"), visibility_timeout=30)
    send_bodies(sqs, queue_url, ["always slowed down"])
    proxy.add(SLOW_DOWN, operation="PutObject")

    with run_pipeline(via(proxy, queue_url, bucket, aws={"max_attempts": 2})) as running:
        # SlowDown after the retries is a system failure: polling pauses (at least 0.5 s)
        # before the held message is tried again, so the count is one call's attempts.
        wait_for(lambda: running.runner.pause_reason() is not None, timeout=20,
                 message="the write to fail after its attempts")
        attempts = proxy.count("PutObject")
        assert running.stop() == 0

    assert attempts == 2


def test_no_connection_pool_is_full_warning_when_every_worker_writes_at_once(
    sqs, s3, bucket, proxy, run_pipeline, caplog
):
    queue_url, _ = create_queue(sqs, unique("q"), visibility_timeout=30)
    sent = send_bodies(sqs, queue_url, (f"pool {i}" for i in range(60)))
    proxy.add(Delay(0.3), operation="PutObject")  # keeps every worker inside a request

    config = via(proxy, queue_url, bucket, service={"workers": 16, "max_in_flight": 40})
    with caplog.at_level(logging.WARNING, logger="urllib3"), run_pipeline(config) as running:
        wait_for(lambda: running.stats["processed"] == 60, timeout=30, message="60 processed")
        assert running.stop() == 0

    # More writes were open at once than botocore's default pool (10) holds.
    overlapping = proxy.max_concurrent("PutObject")
    assert overlapping > 10, f"only {overlapping} writes overlapped; the test proves nothing"
    warnings = [r.getMessage() for r in caplog.records if "pool" in r.getMessage().lower()]
    assert warnings == []
    assert_archived_exactly_once(s3, sqs, bucket, queue_url, sent)


# ------------------------------------------------------------------------------------------
# System failures: the whole of S3 is failing, not one message
# ------------------------------------------------------------------------------------------


def test_readiness_names_an_s3_outage_liveness_stays_up_and_recovery_needs_no_restart(
    sqs, s3, bucket, proxy, run_pipeline
):
    queue_url, _ = create_queue(sqs, unique("q"), visibility_timeout=2)
    sent = send_bodies(sqs, queue_url, (f"during the outage {i}" for i in range(3)))
    outage = proxy.add(ACCESS_DENIED, operation="PutObject")

    running = run_pipeline(via(proxy, queue_url, bucket))
    health = HealthServer(running.runner, "127.0.0.1", 0)
    health.start()
    try:
        wait_for(lambda: outage.fired >= 1, message="a write to be denied")
        _, body = wait_for(
            lambda: (answer := http_get(health.port, "/readyz"))[0] == 503 and answer,
            timeout=10, message="/readyz to report the outage")
        assert body["status"] == "not ready"
        assert "AccessDenied" in json.dumps(body)
        assert http_get(health.port, "/healthz")[0] == 200
        assert running.stats["processed"] == 0
        assert sum(queue_counts(sqs, queue_url)) == 3, "nothing may be deleted during an outage"

        outage.enabled = False
        wait_for(lambda: running.stats["processed"] == 3, timeout=60,
                 message="processing to resume after the outage, without a restart")
        wait_for(lambda: http_get(health.port, "/readyz")[0] == 200, timeout=10,
                 message="/readyz to recover")
        assert http_get(health.port, "/healthz")[0] == 200
        assert running.stop() == 0
    finally:
        health.stop()
    assert_archived_exactly_once(s3, sqs, bucket, queue_url, sent)


@pytest.mark.timeout(120)
def test_an_s3_outage_does_not_push_good_messages_to_the_dlq(sqs, s3, bucket, proxy,
                                                            run_pipeline):
    # The queue hands a message back after 1 s and dead-letters it on its seventh receive.
    # A processor that keeps receiving while S3 denies every write burns about a receive a
    # second and dead-letters good messages within the 10 s outage. One that pauses polling
    # with exponential backoff (waiting at least half of 1 s, 2 s, 4 s, 8 s, ...) receives at
    # most five times in those 10 s, and the next receive, after the outage, succeeds.
    queue_url, dlq_url = create_queue(sqs, unique("q"), visibility_timeout=1,
                                      max_receive_count=6)
    sent = send_bodies(sqs, queue_url, (f'{{"good": {i}}}' for i in range(3)))
    outage = proxy.add(ACCESS_DENIED, operation="PutObject")

    with run_pipeline(via(proxy, queue_url, bucket)) as running:
        wait_for(lambda: outage.fired >= 1, message="a write to be denied")
        ends = time.monotonic() + 10
        while time.monotonic() < ends and sum(queue_counts(sqs, dlq_url)) == 0:
            time.sleep(0.2)
        outage.enabled = False
        wait_for(lambda: running.stats["processed"] + sum(queue_counts(sqs, dlq_url)) >= 3,
                 timeout=90, message="every message archived or dead-lettered")
        assert running.stop() == 0

    assert_archived_exactly_once(s3, sqs, bucket, queue_url, sent, dlq_url=dlq_url,
                                 expected_in_dlq=())


@pytest.mark.timeout(120)
def test_a_system_failure_never_sends_a_message_to_the_error_sink(sqs, s3, bucket, proxy,
                                                                 run_pipeline):
    # Writes to the archive are denied for 5 s (the error prefix stays writable, so a
    # processor that blamed the message could file it there): after recovery every message
    # is archived and nothing is under errors/.
    queue_url, _ = create_queue(sqs, unique("q"), visibility_timeout=1)
    sent = send_bodies(sqs, queue_url, (f'{{"good": {i}}}' for i in range(3)))
    outage = proxy.add(ACCESS_DENIED, operation="PutObject", key_prefix="archive/")

    config = via(proxy, queue_url, bucket,
                 errors={"after_receives": 2, "sink": "s3", "prefix": "errors/"})
    with run_pipeline(config) as running:
        wait_for(lambda: outage.fired >= 1, message="a write to be denied")
        time.sleep(5)
        outage.enabled = False
        wait_for(lambda: queue_counts(sqs, queue_url) == (0, 0), timeout=90,
                 message="the queue to drain after the outage")
        assert running.stop() == 0

    assert [key for key in raw_objects(s3, bucket) if key.startswith("errors/")] == []
    assert_archived_exactly_once(s3, sqs, bucket, queue_url, sent)
