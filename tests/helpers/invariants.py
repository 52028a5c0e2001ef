"""The end-of-scenario check of the reliability tests, and the helpers around it.

Every reliability scenario ends with :func:`assert_archived_exactly_once`: each message id that
was sent is stored exactly once at its expected key, its stored ``body`` equals the sent body
character for character, the stored object is strict UTF-8 JSON, nothing else is in the
bucket, and the queue is empty (apart from what the scenario expects in its DLQ).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from helpers.support import queue_counts

KEY = re.compile(r"^(?P<prefix>.*?)(?P<hour>\d{4}/\d{2}/\d{2}/\d{2})/(?P<id>[^/]+)\.json$")


def send_bodies(sqs: Any, queue_url: str, bodies: Iterable[str],
                attributes: Mapping[str, Any] | None = None) -> dict[str, str]:
    """Send each body (ten per SendMessageBatch while they are small); returns id -> body."""
    sent: dict[str, str] = {}
    batch: list[str] = []

    def flush() -> None:
        if not batch:
            return
        entries = [{"Id": str(i), "MessageBody": body} for i, body in enumerate(batch)]
        if attributes:
            for entry in entries:
                entry["MessageAttributes"] = dict(attributes)
        response = sqs.send_message_batch(QueueUrl=queue_url, Entries=entries)
        assert not response.get("Failed"), response.get("Failed")
        for entry in response["Successful"]:
            sent[entry["MessageId"]] = batch[int(entry["Id"])]
        batch.clear()

    for body in bodies:
        if len(body.encode("utf-8")) > 20_000:
            flush()
            kwargs: dict[str, Any] = {"QueueUrl": queue_url, "MessageBody": body}
            if attributes:
                kwargs["MessageAttributes"] = dict(attributes)
            sent[sqs.send_message(**kwargs)["MessageId"]] = body
            continue
        batch.append(body)
        if len(batch) == 10:
            flush()
    flush()
    return sent


def raw_objects(s3: Any, bucket: str) -> dict[str, bytes]:
    """Every object in ``bucket``: key -> the stored bytes, unparsed."""
    result = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", ()):
            result[item["Key"]] = s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
    return result


def strict_document(raw: bytes, key: str) -> dict[str, Any]:
    """Decode a stored object as strict UTF-8 and strict (RFC 8259) JSON, or fail the test."""
    try:
        raw.decode("utf-8", errors="strict")
    except UnicodeDecodeError as exc:
        pytest.fail(f"object {key} is not valid UTF-8: {exc}")
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        pytest.fail(f"object {key} is not valid JSON: {exc}")
    assert isinstance(document, dict), f"object {key} holds {type(document).__name__}"
    return document


def wait_queue_empty(sqs: Any, queue_url: str, timeout: float = 30.0) -> None:
    """Wait until the queue has no visible and no in-flight messages."""
    deadline = time.monotonic() + timeout
    counts = queue_counts(sqs, queue_url)
    while counts != (0, 0):
        if time.monotonic() > deadline:
            pytest.fail(f"queue not empty after {timeout}s: {counts[0]} visible, "
                        f"{counts[1]} in flight")
        time.sleep(0.2)
        counts = queue_counts(sqs, queue_url)


def dlq_message_ids(sqs: Any, dlq_url: str) -> list[str]:
    """The ids of the messages in a dead-letter queue (they stay there: visibility 0)."""
    ids: list[str] = []
    visible, hidden = queue_counts(sqs, dlq_url)
    assert hidden == 0, f"{hidden} messages of the DLQ are in flight"
    for _ in range(visible + 2):
        if len(ids) >= visible:
            break
        response = sqs.receive_message(QueueUrl=dlq_url, MaxNumberOfMessages=10,
                                       VisibilityTimeout=30, WaitTimeSeconds=0)
        for message in response.get("Messages", ()):
            ids.append(message["MessageId"])
    return ids


def assert_archived_exactly_once(
    s3: Any,
    sqs: Any,
    bucket: str,
    queue_url: str,
    sent: Mapping[str, str],
    *,
    prefix: str = "archive/",
    other_prefixes: tuple[str, ...] = (),
    expected_elsewhere: Iterable[str] = (),
    dlq_url: str | None = None,
    expected_in_dlq: Iterable[str] = (),
    settle: float = 30.0,
) -> dict[str, dict[str, Any]]:
    """The reliability invariant; returns message id -> stored document.

    ``sent`` maps every sent message id to its body. Ids in ``expected_elsewhere`` (for example
    sent to an error sink) and ``expected_in_dlq`` must not be archived; objects under
    ``other_prefixes`` are left to the caller to check. The queue must drain within ``settle``
    seconds; a DLQ, when given, must hold exactly ``expected_in_dlq``.
    """
    wait_queue_empty(sqs, queue_url, settle)
    if dlq_url is not None:
        in_dlq = dlq_message_ids(sqs, dlq_url)
        assert sorted(in_dlq) == sorted(set(expected_in_dlq)), \
            f"DLQ holds {sorted(in_dlq)}, expected {sorted(set(expected_in_dlq))}"
    skipped = set(expected_elsewhere) | set(expected_in_dlq)
    expected = {mid: body for mid, body in sent.items() if mid not in skipped}

    stored: dict[str, dict[str, Any]] = {}
    keys_by_id: dict[str, list[str]] = {}
    unexpected: list[str] = []
    for key, raw in raw_objects(s3, bucket).items():
        if any(key.startswith(other) for other in other_prefixes):
            continue
        match = KEY.match(key)
        if not key.startswith(prefix) or match is None or match.group("prefix") != prefix:
            unexpected.append(key)
            continue
        document = strict_document(raw, key)
        message_id = match.group("id")
        assert document.get("message_id") == message_id, f"{key} holds {document.get('message_id')}"
        keys_by_id.setdefault(message_id, []).append(key)
        stored[message_id] = document

    assert not unexpected, f"objects outside {prefix!r}: {sorted(unexpected)[:10]}"
    duplicated = {mid: keys for mid, keys in keys_by_id.items() if len(keys) > 1}
    assert not duplicated, f"{len(duplicated)} message ids stored more than once: " \
                           f"{dict(list(duplicated.items())[:5])}"
    missing = set(expected) - set(stored)
    extra = set(stored) - set(expected)
    assert not missing, f"{len(missing)} of {len(expected)} messages were lost: " \
                        f"{sorted(missing)[:10]}"
    assert not extra, f"{len(extra)} objects for ids not expected in the archive: " \
                      f"{sorted(extra)[:10]}"

    for message_id, document in stored.items():
        [key] = keys_by_id[message_id]
        sent_ms = int(document["attributes"]["SentTimestamp"])
        hour = datetime.fromtimestamp(sent_ms / 1000, tz=UTC)
        assert key == f"{prefix}{hour:%Y/%m/%d/%H}/{message_id}.json", key
        if document["body"] != expected[message_id]:
            got, want = document["body"], expected[message_id]
            at = next((i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b),
                      min(len(got), len(want)))
            pytest.fail(f"body of {message_id} differs from the sent body at character {at} "
                        f"(stored {len(got)} characters, sent {len(want)})")

    return stored


def create_queue(sqs: Any, name: str, visibility_timeout: int = 30,
                 max_receive_count: int | None = None) -> tuple[str, str | None]:
    """A queue (and, with ``max_receive_count``, its DLQ wired by a redrive policy).

    Returns (queue URL, DLQ URL or None).
    """
    attributes = {"VisibilityTimeout": str(visibility_timeout)}
    dlq_url = None
    if max_receive_count is not None:
        dlq_url = sqs.create_queue(QueueName=f"{name}-dlq")["QueueUrl"]
        dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])[
            "Attributes"]["QueueArn"]
        attributes["RedrivePolicy"] = orjson.dumps(
            {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(max_receive_count)}).decode()
    return sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"], dlq_url


class Producer(threading.Thread):
    """Sends ``total`` messages (``body(i)``) while keeping at most ``depth`` in the queue.

    moto's SendMessage and ReceiveMessage cost grows with the queue's depth, so runs of
    thousands of messages feed the queue while the processors drain it. ``sent`` maps id ->
    body; ``error`` holds what stopped the thread, if anything.
    """

    def __init__(self, sqs: Any, queue_url: str, total: int, depth: int,
                 body: Callable[[int], str]) -> None:
        super().__init__(name="producer", daemon=True)
        self.sqs, self.queue_url = sqs, queue_url
        self.total, self.depth, self.body = total, depth, body
        self.sent: dict[str, str] = {}
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while len(self.sent) < self.total:
                if sum(queue_counts(self.sqs, self.queue_url)) >= self.depth:
                    time.sleep(0.1)
                    continue
                start = len(self.sent)
                count = min(30, self.total - start)
                self.sent.update(send_bodies(self.sqs, self.queue_url,
                                             map(self.body, range(start, start + count))))
        except BaseException as exc:  # surfaced by finish()
            self.error = exc

    def finish(self, timeout: float = 120.0) -> dict[str, str]:
        """Wait until everything is sent; fail the test if sending failed."""
        self.join(timeout)
        assert not self.is_alive(), f"the producer did not finish within {timeout}s"
        assert self.error is None, f"the producer failed: {self.error!r}"
        return self.sent
