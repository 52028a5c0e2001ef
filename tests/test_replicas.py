"""Scale-out: three `sqs-processor` processes on one queue never store a message twice or lose one.

The replicas reach AWS through the fault proxy, which slows some writes, loses the answer of a
few committed ones, and holds some delete answers longer than the queue's 2 s visibility
timeout, so messages regularly reach a second replica while the first still holds them. The
conditional write lets exactly one delivery create the object; every other one meets the 412.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.faultproxy import Delay, DelayResponse, DropAfterForward, FailEntries, FaultProxy
from helpers.invariants import Producer, assert_archived_exactly_once, create_queue
from helpers.processes import ProcessorProcess
from helpers.support import cli_env, pipeline_config, queue_counts, unique, wait_for, write_config

MESSAGES = 200
REPLICAS = 3


@pytest.fixture
def proxy(emulator: str) -> Iterator[FaultProxy]:
    with FaultProxy(emulator, seed=3) as running:
        yield running


@pytest.mark.timeout(150)
def test_three_replicas_on_one_queue_store_every_message_exactly_once(
    tmp_path: Path, aws_env, sqs, s3, bucket, proxy, child
):
    replicas = child  # stopped when the test ends
    queue_url, _ = create_queue(sqs, unique("q"), visibility_timeout=2)
    proxy.add(Delay(0.5), operation="PutObject", probability=0.1)
    proxy.add(DropAfterForward(), operation="PutObject", probability=0.03)
    # Deletes refused for good: those messages come back after the visibility timeout, to any
    # replica, which must find them already stored. (A delayed delete answer no longer causes
    # a redelivery: the heartbeat keeps the message hidden while its delete is pending.)
    proxy.add(FailEntries("ReceiptHandleIsInvalid", sender_fault=True),
              operation="DeleteMessageBatch", probability=0.15)
    proxy.add(DelayResponse(1.0), operation="DeleteMessageBatch", probability=0.1)
    config = write_config(tmp_path, pipeline_config(
        queue_url, bucket, aws={"endpoint_url": proxy.url},
        service={"workers": 4, "max_in_flight": 20}))
    producer = Producer(sqs, queue_url, MESSAGES, 80, lambda i: f"replicated {i}")

    env = cli_env(aws_env)
    for i in range(REPLICAS):
        replicas.append(ProcessorProcess(config, env, f"replica-{i}"))
    for replica in replicas:
        replica.wait_event("started", timeout=30)
    producer.start()
    sent = producer.finish()
    wait_for(lambda: queue_counts(sqs, queue_url) == (0, 0), timeout=90, interval=0.5,
             message="the replicas to drain the queue")
    for replica in replicas:
        replica.terminate()
    totals = []
    for replica in replicas:
        assert replica.finish() == 0
        totals.append(replica.wait_event("stopped"))

    assert all(t["written"] > 0 for t in totals), f"a replica did no work: {totals}"
    created = Counter(r["message_id"] for p in replicas for r in p.events("stored"))
    assert not [mid for mid, n in created.items() if n > 1], "two replicas created one object"
    # Messages that reached two replicas: one stored it, another found it stored.
    handled_by: dict[str, set[int]] = {}
    for index, replica in enumerate(replicas):
        for event in ("stored", "already_stored"):
            for record in replica.events(event):
                handled_by.setdefault(record["message_id"], set()).add(index)
    shared = [mid for mid, owners in handled_by.items() if len(owners) > 1]
    assert shared, "no message reached two replicas; the test proves nothing"
    assert_archived_exactly_once(s3, sqs, bucket, queue_url, sent)
