"""The visibility heartbeat: work that outlasts the visibility timeout keeps one delivery.

A drop-in transform sleeps three times the visibility timeout. Without a heartbeat SQS hands
the message to the next receive while the first delivery is still working on it; with one, the
processor extends the visibility (ChangeMessageVisibility[Batch]) before it expires, and the
message is received once. The processor talks to AWS through the fault proxy, which records
every extension and can make one fail.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from helpers.faultproxy import Error, FailEntries, FaultProxy
from helpers.invariants import assert_archived_exactly_once, create_queue, send_bodies
from helpers.support import dropin_folder, pipeline_config, queue_counts, unique, wait_for
from test_cli_run import SLOW_TRANSFORM

EXTENSIONS = ("ChangeMessageVisibilityBatch", "ChangeMessageVisibility")
TWELVE_HOURS = 43200


@pytest.fixture
def proxy(emulator: str) -> Iterator[FaultProxy]:
    with FaultProxy(emulator, seed=8) as running:
        yield running


def extensions(proxy: FaultProxy) -> list[tuple[str, int]]:
    """(receipt handle, requested visibility timeout) of every extension the processor sent."""
    result = []
    for request in proxy.seen(service="sqs", where=lambda r: r.operation in EXTENSIONS):
        params = request.params or {}
        for entry in params.get("Entries", [params]):
            result.append((entry["ReceiptHandle"], int(entry["VisibilityTimeout"])))
    return result


def slow_pipeline(tmp_path, proxy, queue_url, bucket, seconds, **sections: Any):
    plugins = dropin_folder(tmp_path, slow=SLOW_TRANSFORM)
    return pipeline_config(
        queue_url, bucket, aws={"endpoint_url": proxy.url}, plugins={"paths": [str(plugins)]},
        transforms=["json_parse", {"type": "slow", "seconds": seconds}, "enrich"], **sections)


@pytest.mark.parametrize(("queue_timeout", "receive_timeout"), [(2, None), (30, 2)],
                         ids=["queue-visibility-timeout", "set-on-receive"])
def test_processing_three_times_the_visibility_timeout_keeps_a_single_delivery(
    tmp_path, sqs, s3, bucket, proxy, run_pipeline, queue_timeout, receive_timeout
):
    # Either the queue's own timeout is 2 s (read from the queue), or the queue says 30 s and
    # the source sets 2 s on receive (then the heartbeat must go by the 2 s, not the 30 s).
    queue_url, _ = create_queue(sqs, unique("q"), visibility_timeout=queue_timeout)
    sent = send_bodies(sqs, queue_url, (f'{{"long": {i}}}' for i in range(3)))
    source = {"visibility_timeout": receive_timeout} if receive_timeout else {}
    config = slow_pipeline(tmp_path, proxy, queue_url, bucket, 6.0, source=source,
                           service={"shutdown_grace_seconds": 1})

    with run_pipeline(config) as running:
        # Stop as soon as the outcome is known: all done, or a message delivered twice.
        wait_for(lambda: running.stats["processed"] == 3 or running.stats["received"] > 3,
                 timeout=40, message="3 processed")
        assert running.stop() == 0

    stats = running.stats
    assert stats["received"] == 3, "a message was delivered again while it was being processed"
    assert stats["existing"] == 0
    stored = assert_archived_exactly_once(s3, sqs, bucket, queue_url, sent)
    assert {doc["attributes"]["ApproximateReceiveCount"] for doc in stored.values()} == {"1"}
    extended = extensions(proxy)
    handles = {doc["receipt_handle"] for doc in stored.values()}
    assert {handle for handle, _ in extended} == handles
    assert all(0 < timeout <= TWELVE_HOURS for _, timeout in extended)


def test_a_failed_extension_is_logged_and_neither_crashes_nor_loops(
    tmp_path, sqs, s3, bucket, proxy, run_pipeline, caplog
):
    # Every extension is refused as if the receipt handle were stale. The processor goes on
    # (the message comes back, is recognised by its key, and is archived once), logs the
    # failure, and does not retry a dead handle over and over.
    queue_url, _ = create_queue(sqs, unique("q"), visibility_timeout=2)
    sent = send_bodies(sqs, queue_url, ["stale handle"])
    proxy.add(FailEntries("ReceiptHandleIsInvalid", sender_fault=True),
              operation="ChangeMessageVisibilityBatch")
    proxy.add(Error(400, "ReceiptHandleIsInvalid", "The input receipt handle is invalid.",
                    sender_fault=True), operation="ChangeMessageVisibility")
    config = slow_pipeline(tmp_path, proxy, queue_url, bucket, 4.0)

    with caplog.at_level(logging.WARNING, logger="sqs_processor"), \
            run_pipeline(config) as running:
        wait_for(lambda: running.stats["processed"] >= 1, timeout=30, message="processed")
        wait_for(lambda: queue_counts(sqs, queue_url) == (0, 0), timeout=30,
                 message="queue empty")
        assert running.runner.liveness()[0]
        assert running.stop() == 0

    extended = extensions(proxy)
    assert extended, "the processor never tried to extend the visibility"
    per_handle: dict[str, int] = {}
    for handle, _ in extended:
        per_handle[handle] = per_handle.get(handle, 0) + 1
    assert max(per_handle.values()) <= 3, f"a stale handle was retried {per_handle}"
    logged = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("ReceiptHandleIsInvalid" in text or "receipt handle" in text.lower()
               for text in logged), logged
    assert_archived_exactly_once(s3, sqs, bucket, queue_url, sent)
