"""SIGKILL at random moments during a run of 2,000 messages, restarted each time (slow: ~30 s).

A killed processor deletes nothing it had not finished: the messages it held come back after
the queue's visibility timeout (3 s here), and any it had already stored are recognised by
their key when they come back (the conditional write answers 412), so nothing is lost and
nothing is stored twice. No heartbeat is needed for that: a second delivery of a message whose
first is still running only meets the 412.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.invariants import Producer, assert_archived_exactly_once, create_queue
from helpers.processes import ProcessorProcess
from helpers.support import cli_env, pipeline_config, queue_counts, unique, wait_for, write_config

MESSAGES = 2000
KILLS = 5
DEPTH = 60  # the producer keeps the queue this shallow (see invariants.Producer)


@pytest.fixture
def started(aws_env) -> Iterator[list[ProcessorProcess]]:
    processes: list[ProcessorProcess] = []
    yield processes
    for process in processes:
        process.stop()


@pytest.mark.timeout(180)
def test_sigkill_at_random_moments_loses_and_duplicates_nothing(
    tmp_path: Path, aws_env, sqs, s3, bucket, started
):
    queue_url, _ = create_queue(sqs, unique("q"), visibility_timeout=3)
    config = write_config(tmp_path, pipeline_config(
        queue_url, bucket,
        service={"workers": 8, "pollers": 2, "max_in_flight": 40, "shutdown_grace_seconds": 5}))
    env = cli_env(aws_env)
    moments = random.Random(20261128)
    producer = Producer(sqs, queue_url, MESSAGES, DEPTH,
                        lambda i: f'{{"seq": {i}, "pad": "{"x" * (i % 50)}"}}')
    producer.start()

    held_at_kill = []
    for run in range(KILLS):
        process = ProcessorProcess(config, env, f"run-{run}")
        started.append(process)
        process.wait_event("received", timeout=30)
        time.sleep(moments.uniform(0.5, 4.0))
        process.sigkill()
        held_at_kill.append(queue_counts(sqs, queue_url)[1])
    assert any(held_at_kill), "no kill caught messages in flight; the test proves nothing"

    final = ProcessorProcess(config, env, "final")
    started.append(final)
    sent = producer.finish()
    wait_for(lambda: queue_counts(sqs, queue_url) == (0, 0), timeout=90, interval=0.5,
             message="the last processor to drain the queue")
    final.terminate()
    assert final.finish() == 0

    # Each message was created in S3 at most once; any later delivery met the 412.
    created = Counter(r["message_id"] for p in started for r in p.events("stored"))
    assert not [mid for mid, n in created.items() if n > 1]
    recognised = {r["message_id"] for p in started for r in p.events("already_stored")}
    assert recognised, "no redelivery of a stored message happened; the test proves nothing"
    assert_archived_exactly_once(s3, sqs, bucket, queue_url, sent)
