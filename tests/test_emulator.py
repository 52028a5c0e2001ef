"""The emulator (moto's server with two fixes, ``sqs_processor.emulator``) keeps the SQS
guarantees the processor's tests rely on, over real HTTP."""

from __future__ import annotations

import threading
from collections import Counter

from helpers.invariants import send_bodies
from helpers.support import unique


def test_concurrent_receives_never_hand_one_message_to_two_of_them(sqs):
    # Two pollers are the default: SQS hides a received message from other receives until its
    # visibility timeout ends, so none may come back twice within it.
    queue_url = sqs.create_queue(QueueName=unique("q"),
                                 Attributes={"VisibilityTimeout": "300"})["QueueUrl"]
    sent = send_bodies(sqs, queue_url, [f"m{i}" for i in range(400)])
    seen: Counter[str] = Counter()
    lock = threading.Lock()

    def receive() -> None:
        while True:
            got = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10,
                                      WaitTimeSeconds=0).get("Messages", [])
            if not got:
                return
            with lock:
                seen.update(m["MessageId"] for m in got)

    threads = [threading.Thread(target=receive) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert set(seen) == set(sent)
    assert [m for m, n in seen.items() if n > 1] == []
