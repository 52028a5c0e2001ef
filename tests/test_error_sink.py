"""Message failures: a transform that raises, a document that cannot be encoded.

Such a failure belongs to one message. It is left in SQS and redelivered; once its receive
count reaches ``errors.after_receives`` the processor files it in the error sink (S3 under
``errors/``) and deletes it, or, with ``errors.sink: none`` or no ``errors`` section, leaves it
to the queue's redrive policy, which moves it to the DLQ. Every other message flows on.
"""

from __future__ import annotations

import base64
import json
import logging
import re

import pytest
from helpers.invariants import (
    assert_archived_exactly_once,
    create_queue,
    raw_objects,
    send_bodies,
    strict_document,
)
from helpers.support import dropin_folder, pipeline_config, queue_counts, unique, wait_for

PICKY_TRANSFORM = '''
from sqs_processor import TransformSpec, hookimpl


def picky(record):
    body = record.message.body
    if body.startswith("poison"):
        raise ValueError(f"refusing {body}")
    if body.startswith("unencodable"):
        record.document["tags"] = {"a", "b"}  # a set is not JSON
    return record


@hookimpl
def sqs_processor_transforms():
    return TransformSpec(name="picky", factory=lambda options, context: picky,
                         description="Fails on poison, makes unencodable documents.")
'''

ERROR_KEY = re.compile(r"^errors/\d{4}/\d{2}/\d{2}/\d{2}/(?P<id>[^/]+)\.json$")
BLOB = bytes(range(256))


def _send_mix(sqs, queue_url):
    """20 good messages, 3 that the transform rejects, 1 whose document cannot be stored."""
    good = send_bodies(sqs, queue_url, (f'{{"good": {i}}}' for i in range(20)))
    poison = send_bodies(sqs, queue_url, (f"poison-{i}" for i in range(3)),
                         attributes={"blob": {"DataType": "Binary", "BinaryValue": BLOB}})
    unencodable = send_bodies(sqs, queue_url, ["unencodable-0"])
    return good, poison, unencodable


def _config(tmp_path, queue_url, bucket, **sections):
    plugins = dropin_folder(tmp_path, picky=PICKY_TRANSFORM)
    return pipeline_config(queue_url, bucket, plugins={"paths": [str(plugins)]},
                           transforms=["json_parse", "picky", "enrich"], **sections)


@pytest.mark.timeout(90)
def test_without_an_error_sink_failing_messages_reach_the_dlq_and_the_rest_flow(
    tmp_path, sqs, s3, bucket, run_pipeline, caplog
):
    queue_url, dlq_url = create_queue(sqs, unique("q"), visibility_timeout=1,
                                      max_receive_count=3)
    good, poison, unencodable = _send_mix(sqs, queue_url)
    bad = {**poison, **unencodable}

    with caplog.at_level(logging.WARNING, logger="sqs_processor.runner"), \
            run_pipeline(_config(tmp_path, queue_url, bucket)) as running:
        wait_for(lambda: queue_counts(sqs, dlq_url)[0] == len(bad), timeout=60,
                 message="the failing messages to reach the DLQ")
        assert running.stop() == 0

    stats = running.stats
    assert stats["written"] == len(good) and stats["processed"] == len(good)
    assert stats["failed"] == 3 * len(bad)  # three receives each, then the redrive policy
    failures = {(r.message_id, r.stage) for r in caplog.records
                if getattr(r, "event", None) == "failed"}
    assert failures == {(mid, "transform:picky") for mid in poison} | {
        (mid, "sink:s3") for mid in unencodable}
    assert_archived_exactly_once(s3, sqs, bucket, queue_url, {**good, **bad},
                                 dlq_url=dlq_url, expected_in_dlq=bad)


@pytest.mark.timeout(90)
def test_failing_messages_go_to_the_error_sink_after_the_receive_limit_and_the_rest_flow(
    tmp_path, sqs, s3, bucket, run_pipeline
):
    # The error sink files a message on its third receive, before the redrive policy (fifth)
    # would move it to the DLQ.
    queue_url, dlq_url = create_queue(sqs, unique("q"), visibility_timeout=1,
                                      max_receive_count=5)
    good, poison, unencodable = _send_mix(sqs, queue_url)
    bad = {**poison, **unencodable}
    config = _config(tmp_path, queue_url, bucket,
                     errors={"after_receives": 3, "sink": "s3", "prefix": "errors/"})

    with run_pipeline(config) as running:
        wait_for(lambda: queue_counts(sqs, queue_url) == (0, 0), timeout=60,
                 message="the queue to drain")
        assert running.stop() == 0

    assert_archived_exactly_once(s3, sqs, bucket, queue_url, {**good, **bad},
                                 other_prefixes=("errors/",), expected_elsewhere=bad,
                                 dlq_url=dlq_url, expected_in_dlq=())
    errors = {}
    for key, raw in raw_objects(s3, bucket).items():
        if key.startswith("errors/"):
            match = ERROR_KEY.match(key)
            assert match, f"error object at an unexpected key: {key}"
            assert match.group("id") not in errors, f"two error objects for {key}"
            errors[match.group("id")] = strict_document(raw, key)
    assert set(errors) == set(bad)

    for message_id, document in errors.items():
        assert document["message_id"] == message_id
        assert document["body"] == bad[message_id]
        assert int(document["receive_count"]) >= 3
        assert document["attributes"]["SentTimestamp"]
        error = json.dumps(document["error"])
        if message_id in poison:
            assert document["stage"] == "transform:picky"
            assert "ValueError" in error and f"refusing {bad[message_id]}" in error
            assert document["message_attributes"]["blob"] == {
                "DataType": "Binary", "BinaryValue": base64.b64encode(BLOB).decode()}
        else:
            assert document["stage"] and document["stage"] != "transform:picky"
            assert "encode" in error.lower()


@pytest.mark.timeout(90)
def test_with_error_sink_none_failing_messages_are_left_to_the_redrive_policy(
    tmp_path, sqs, s3, bucket, run_pipeline
):
    queue_url, dlq_url = create_queue(sqs, unique("q"), visibility_timeout=1,
                                      max_receive_count=3)
    good, poison, unencodable = _send_mix(sqs, queue_url)
    bad = {**poison, **unencodable}
    config = _config(tmp_path, queue_url, bucket, errors={"after_receives": 2, "sink": "none"})

    with run_pipeline(config) as running:
        wait_for(lambda: queue_counts(sqs, dlq_url)[0] == len(bad), timeout=60,
                 message="the failing messages to reach the DLQ")
        assert running.stop() == 0

    assert [key for key in raw_objects(s3, bucket) if not key.startswith("archive/")] == []
    assert_archived_exactly_once(s3, sqs, bucket, queue_url, {**good, **bad},
                                 dlq_url=dlq_url, expected_in_dlq=bad)
