"""No receipt handle in any log line, span or error document, whatever SQS's wording.

SQS quotes the handle in its reasons ("Value <handle> for parameter ReceiptHandle is invalid.
Reason: The receipt handle has expired."), and the service used to copy those reasons verbatim
into its warnings (issue 14, finding 4). The end-to-end test runs ``sqs-processor run`` through
the fault proxy, which answers the visibility extension and the delete with AWS's own wording
and codes (InvalidParameterValue, ReceiptHandleIsInvalid, per entry and for a whole call), with
traces exported to a real OTLP receiver and an error sink; then every handle the proxy saw is
searched for in the log, the exported bytes and the error objects.
"""

from __future__ import annotations

import json
import secrets
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers.faultproxy import Error, FailEntries, FaultProxy, Request
from helpers.otlp import OtlpHttpReceiver
from helpers.processes import ProcessorProcess
from helpers.support import cli_env, dropin_folder, pipeline_config, stored_objects, wait_for

from sqs_processor.components import AckFailure
from sqs_processor.errors import REDACTED, describe_error, redact

EXPIRED = ("Value {handle} for parameter ReceiptHandle is invalid. "
           "Reason: The receipt handle has expired.")


def aws_like_handle() -> str:
    """A receipt handle shaped like AWS's: a long standard-base64 token."""
    import base64

    return "AQEB" + base64.b64encode(secrets.token_bytes(280)).decode("ascii")


def moto_like_handle() -> str:
    return "".join(secrets.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(185))


@pytest.mark.parametrize("handle", [aws_like_handle(), moto_like_handle()],
                         ids=["aws-shaped", "emulator-shaped"])
def test_a_handle_is_redacted_whatever_the_wording(handle):
    for wording in (EXPIRED.format(handle=handle),
                    f'The input receipt handle "{handle}" is not a valid receipt handle.',
                    f"receipt handle {handle}: gone", f"{handle}"):
        text = redact(wording)
        assert handle not in text
        assert REDACTED in text


def test_ordinary_error_text_is_left_alone():
    kept = [
        "User: arn:aws:sts::123456789012:assumed-role/sqs-processor-role/botocore-session-1764 "
        "is not authorized to perform: s3:PutObject on resource: "
        "arn:aws:s3:::orders-archive/sqs-messages/2026/11/28/14/0e6b5d0c-6a1f-4b43-9a42-"
        "2b8f0e3c5d11.json",
        "s3://orders-archive/some/deep/prefix/with/many/folders/2026/11/28/14/"
        "0e6b5d0c-6a1f-4b43-9a42-2b8f0e3c5d11.json",
        "The specified bucket does not exist",
        "arn:aws:kms:us-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab",
    ]
    for text in kept:
        assert redact(text) == text


def test_a_known_handle_is_redacted_even_when_short():
    from types import SimpleNamespace

    message = SimpleNamespace(receipt_handle="short-handle-1")
    failure = AckFailure(message, "ReceiptHandleIsInvalid",  # type: ignore[arg-type]
                         EXPIRED.format(handle="short-handle-1"))
    assert "short-handle-1" not in failure.detail
    assert failure.detail.startswith(f"Value {REDACTED} for parameter ReceiptHandle")


def test_describe_error_redacts_aws_error_messages():
    from botocore.exceptions import ClientError

    handle = aws_like_handle()
    error = ClientError({"Error": {"Code": "InvalidParameterValue",
                                   "Message": EXPIRED.format(handle=handle)}},
                        "ChangeMessageVisibility")
    text = describe_error(error)
    assert handle not in text
    assert text == f"InvalidParameterValue: {EXPIRED.format(handle=REDACTED)}"


# A transform that fails the way a plugin calling SQS itself would: with AWS's error quoting the
# message's own handle. The body "slow" outlasts the visibility timeout (the heartbeat extends).
PLUGIN = '''
import time
from botocore.exceptions import ClientError
from sqs_processor import TransformSpec, hookimpl

WORDING = ("Value {handle} for parameter ReceiptHandle is invalid. "
           "Reason: The receipt handle has expired.")

def build(options, context):
    def step(record):
        body = record.message.body
        if body == "slow":
            time.sleep(6)
        if body == "poison":
            raise ClientError({"Error": {"Code": "InvalidParameterValue",
                                         "Message": WORDING.format(
                                             handle=record.message.receipt_handle)}},
                              "ChangeMessageVisibility")
        return record
    return step

@hookimpl
def sqs_processor_transforms():
    return TransformSpec(name="quoting", factory=build, description="Fails quoting a handle.")
'''


@pytest.fixture
def proxy(emulator: str) -> Iterator[FaultProxy]:
    with FaultProxy(emulator, seed=14) as running:
        yield running


def _first_handle(request: Request) -> str:
    return (request.params or {}).get("Entries", [{}])[0].get("ReceiptHandle", "")


def _handles_seen(proxy: FaultProxy) -> set[str]:
    handles = set()
    for request in proxy.seen(service="sqs"):
        params = request.params or {}
        if params.get("ReceiptHandle"):
            handles.add(params["ReceiptHandle"])
        for entry in params.get("Entries", ()):
            if entry.get("ReceiptHandle"):
                handles.add(entry["ReceiptHandle"])
    return handles


@pytest.mark.timeout(180)
def test_no_log_line_span_or_error_document_carries_a_receipt_handle(
        tmp_path: Path, aws_env: dict[str, str], sqs: Any, s3: Any, queue_url: str,
        bucket: str, proxy: FaultProxy):
    # The first delete fails as a whole call, quoting a handle; the next two fail per entry;
    # the first visibility extension fails per entry. All with AWS's wording and codes.
    proxy.add(Error(400, "ReceiptHandleIsInvalid",
                    lambda request: EXPIRED.format(handle=_first_handle(request)),
                    sender_fault=True), operation="DeleteMessageBatch", times=1)
    proxy.add(FailEntries(code="ReceiptHandleIsInvalid", sender_fault=True,
                          message=lambda entry: EXPIRED.format(handle=entry["ReceiptHandle"])),
              operation="DeleteMessageBatch", times=2)
    proxy.add(FailEntries(code="InvalidParameterValue", sender_fault=True,
                          message=lambda entry: EXPIRED.format(handle=entry["ReceiptHandle"])),
              operation="ChangeMessageVisibilityBatch", times=1,
              where=lambda r: all(e.get("VisibilityTimeout", 0) > 0
                                  for e in (r.params or {}).get("Entries", ())))
    folder = dropin_folder(tmp_path, quoting=PLUGIN)
    config = pipeline_config(
        queue_url, bucket, aws={"endpoint_url": proxy.url, "max_attempts": 2},
        plugins={"paths": [str(folder)]}, transforms=["quoting", "json_parse", "enrich"],
        source={"visibility_timeout": 3},
        errors={"after_receives": 1, "sink": "s3", "prefix": "errors/"})
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    with OtlpHttpReceiver() as receiver:
        env = cli_env(aws_env, OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
                      OTEL_BSP_SCHEDULE_DELAY="100")
        process = ProcessorProcess(path, env)
        try:
            process.wait_event("started", timeout=60)
            for body in ("fine", "slow", "poison"):
                sqs.send_message(QueueUrl=queue_url, MessageBody=body)
            extend = process.wait_event("extend_failed", timeout=60)
            ack = process.wait_event("ack_failed", timeout=60)
            process.wait_event("to_error_sink", timeout=60)
            wait_for(lambda: {d.get("body") for k, d in stored_objects(s3, bucket).items()
                              if not k.startswith("errors/")} >= {"fine", "slow"},
                     timeout=90, message="both good messages stored")
            process.proc.send_signal(signal.SIGTERM)
            assert process.finish(60) == 0
        finally:
            process.stop()
        wait_for(lambda: any(REDACTED in (s.get("status_message") or "")
                             for s in receiver.collected.snapshot()), timeout=30,
                 message="an exported span with a redacted failure reason")
        raw_exports = b"".join(receiver.collected.raw_span_bytes)
        spans = receiver.collected.snapshot()

    assert "InvalidParameterValue" in extend["message"] and REDACTED in extend["message"]
    assert "ReceiptHandleIsInvalid" in ack["message"] and REDACTED in ack["message"]
    objects = stored_objects(s3, bucket)
    error_documents = [doc for key, doc in objects.items() if key.startswith("errors/")]
    assert len(error_documents) == 1
    assert error_documents[0]["error"]["message"] == \
        f"InvalidParameterValue: {EXPIRED.format(handle=REDACTED)}"

    handles = _handles_seen(proxy) | {d["receipt_handle"] for k, d in objects.items()
                                      if not k.startswith("errors/")}
    assert len(handles) >= 3
    log_text = "".join(process.lines)
    assert len(log_text) > 1000
    error_text = json.dumps(error_documents)
    span_text = json.dumps(spans, default=str)
    for handle in handles:
        assert handle not in log_text
        assert handle.encode() not in raw_exports
        assert handle not in span_text
        assert handle not in error_text
