"""The ``sqs`` source: long-polls an SQS queue.

Each receive asks for every system attribute (``SentTimestamp``, ``ApproximateReceiveCount``,
``AWSTraceHeader``, ...) and every message attribute. Poll cadence: a receive that returned
messages is followed by another at once, so a backlog drains at full speed and a steady trickle
is stored within a second; an empty one waits ``poll_interval_seconds``, so an idle queue costs
what the original service cost.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any
from urllib.parse import urlparse

from sqs_processor import (
    REQUIRED,
    AckFailure,
    BuildContext,
    ConfigError,
    HealthCheckSpec,
    LastCallCheck,
    Message,
    Option,
    Source,
    SourceSpec,
    describe_error,
    error_code,
    hookimpl,
)

log = logging.getLogger(__name__)

DEFAULT_VISIBILITY_TIMEOUT = 30  # SQS's own default, assumed when the queue cannot be asked

OPTIONS = (
    Option("queue_url", str, REQUIRED, "URL of the SQS queue to read."),
    Option("max_messages", int, 10, "Messages asked for per receive (MaxNumberOfMessages).",
           minimum=1, maximum=10),
    Option("wait_time_seconds", int, 20, "Long-poll duration of each receive (WaitTimeSeconds).",
           minimum=0, maximum=20),
    Option("poll_interval_seconds", float, 30.0,
           "Pause after a receive that returned no messages.", minimum=1, maximum=300),
    Option("visibility_timeout", int, None,
           "VisibilityTimeout to set on receive; unset keeps the queue's own.",
           minimum=0, maximum=43200),
)


def queue_name_from_url(url: str, where: str = "source.queue_url") -> str:
    """The queue name (last path segment) of an SQS queue URL, or a ConfigError."""
    parsed = urlparse(url)
    parts = [p for p in parsed.path.split("/") if p]
    if parsed.scheme not in ("http", "https") or not parsed.netloc or not parts:
        raise ConfigError(where, "is not an SQS queue URL", value=url,
                          expected="https://sqs.<region>.amazonaws.com/<account-id>/<queue-name>")
    return parts[-1]


def _message_attributes(raw: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    """SQS message attributes in SQS's own shape, binary values as base64 text."""
    result: dict[str, dict[str, str]] = {}
    for name, value in raw.items():
        entry = {"DataType": value.get("DataType", "String")}
        if "StringValue" in value:
            entry["StringValue"] = value["StringValue"]
        if "BinaryValue" in value:
            entry["BinaryValue"] = base64.b64encode(value["BinaryValue"]).decode("ascii")
        result[name] = entry
    return result


def message_from_sqs(raw: Mapping[str, Any], received_at: datetime) -> Message:
    """Turn one entry of a ReceiveMessage response into a Message envelope."""
    return Message(
        message_id=raw["MessageId"],
        receipt_handle=raw["ReceiptHandle"],
        body=raw.get("Body", ""),
        received_at=received_at,
        attributes=MappingProxyType(dict(raw.get("Attributes") or {})),
        message_attributes=MappingProxyType(
            _message_attributes(raw.get("MessageAttributes") or {})),
    )


class SqsSource(Source):
    """Receives from one SQS queue; safe to call from several poller threads."""

    messaging_system = "aws_sqs"

    def __init__(self, client: Any, options: Mapping[str, Any]) -> None:
        self.client = client
        self.queue_url: str = options["queue_url"]
        self.queue_name = queue_name_from_url(self.queue_url)
        self.max_batch = options["max_messages"]
        self.wait_time_seconds: int = options["wait_time_seconds"]
        self.poll_interval: float = options["poll_interval_seconds"]
        self.receive_visibility: int | None = options["visibility_timeout"]
        self._request: dict[str, Any] = {
            "QueueUrl": self.queue_url,
            "MaxNumberOfMessages": self.max_batch,
            "WaitTimeSeconds": self.wait_time_seconds,
            "MessageSystemAttributeNames": ["All"],
            "MessageAttributeNames": ["All"],
        }
        if self.receive_visibility is not None:
            self._request["VisibilityTimeout"] = self.receive_visibility
        self.check = LastCallCheck(f"receive from {self.queue_name}")
        self._visibility: int | None = self.receive_visibility

    def start(self) -> None:
        """Read the queue's MaximumMessageSize (what the in-flight budget assumes a receive in
        progress may bring) and its VisibilityTimeout, unless the YAML sets one for every
        receive; once, with one call."""
        names = ["MaximumMessageSize"] + (["VisibilityTimeout"] if self._visibility is None else [])
        try:
            response = self.client.get_queue_attributes(QueueUrl=self.queue_url,
                                                        AttributeNames=names)
            attributes = response["Attributes"]
            self.max_message_bytes = int(attributes.get("MaximumMessageSize",
                                                        Source.max_message_bytes))
            if self._visibility is None:
                self._visibility = int(attributes["VisibilityTimeout"])
        except Exception as exc:
            self.max_message_bytes = Source.max_message_bytes  # SQS's largest
            assumed = f"messages of up to {self.max_message_bytes} bytes"
            if self._visibility is None:
                self._visibility = DEFAULT_VISIBILITY_TIMEOUT
                assumed += (f" and {self._visibility}s of visibility for the heartbeat (set "
                            "source.visibility_timeout to be exact)")
            log.warning("could not read the attributes of %s (%s); assuming %s",
                        self.queue_name, describe_error(exc), assumed,
                        extra={"event": "visibility_unknown", "error": error_code(exc)})

    def visibility_timeout(self) -> float | None:
        return None if self._visibility is None else float(self._visibility)

    def extend(self, messages: Sequence[Message], seconds: int) -> list[AckFailure]:
        """ChangeMessageVisibilityBatch, ten at a time; returns the entries that failed."""
        failures: list[AckFailure] = []
        for start in range(0, len(messages), 10):
            chunk = messages[start:start + 10]
            entries = [{"Id": str(i), "ReceiptHandle": m.receipt_handle,
                        "VisibilityTimeout": int(seconds)} for i, m in enumerate(chunk)]
            try:
                response = self.client.change_message_visibility_batch(
                    QueueUrl=self.queue_url, Entries=entries)
            except Exception as exc:
                failures.extend(AckFailure(m, error_code(exc), describe_error(exc), True)
                                for m in chunk)
                continue
            for failure in response.get("Failed", ()):
                message = _entry(chunk, failure)
                if message is None:
                    continue
                failures.append(AckFailure(
                    message, failure.get("Code", "Failed"),
                    failure.get("Message", ""), retryable=not failure.get("SenderFault", False)))
        return failures

    def receive(self) -> list[Message]:
        try:
            response = self.client.receive_message(**self._request)
        except Exception as exc:
            self.check.failed(exc)
            raise
        self.check.succeeded()
        now = datetime.now(UTC)
        return [message_from_sqs(raw, now) for raw in response.get("Messages", ())]

    def idle_delay(self, received: int) -> float:
        # Any message means traffic: poll again at once (the long poll itself waits when the
        # queue runs dry). Only an empty receive pauses, so an idle queue costs what it did.
        return 0.0 if received else self.poll_interval

    def release(self, messages: Sequence[Message]) -> None:
        """Set visibility to 0 so the messages are redelivered at once (best effort)."""
        for start in range(0, len(messages), 10):
            chunk = messages[start:start + 10]
            entries = [{"Id": str(i), "ReceiptHandle": m.receipt_handle, "VisibilityTimeout": 0}
                       for i, m in enumerate(chunk)]
            try:
                response = self.client.change_message_visibility_batch(
                    QueueUrl=self.queue_url, Entries=entries)
            except Exception as exc:
                log.warning("could not release %d messages on %s: %s; they return when their "
                            "visibility timeout expires", len(chunk), self.queue_name,
                            describe_error(exc))
                continue
            for failure in response.get("Failed", ()):
                message = _entry(chunk, failure)
                if message is None:
                    continue
                log.warning("could not release message %s: %s; it returns when its visibility "
                            "timeout expires", message.message_id, failure.get("Code"),
                            extra={"message_id": message.message_id})


def _entry(chunk: Sequence[Message], failure: Mapping[str, Any]) -> Message | None:
    """The message a batch-response failure entry names by its positional Id, if valid."""
    try:
        return chunk[int(failure["Id"])]
    except (KeyError, ValueError, TypeError, IndexError):
        log.warning("ignoring a batch response entry with an unknown Id: %r", failure.get("Id"))
        return None


def build(options: Mapping[str, Any], context: BuildContext) -> SqsSource:
    queue_name_from_url(options["queue_url"], f"{context.where}.queue_url")
    read_timeout = context.config.aws["read_timeout"]
    if read_timeout <= options["wait_time_seconds"]:
        raise ConfigError("aws.read_timeout", "is not longer than the long poll",
                          value=read_timeout,
                          expected=f"more than {context.where}.wait_time_seconds "
                                   f"({options['wait_time_seconds']})")
    return SqsSource(context.aws.client("sqs"), options)


@hookimpl
def sqs_processor_sources():
    return SourceSpec(
        name="sqs",
        factory=build,
        description="Long-polls an SQS queue, with all system and message attributes.",
        options=OPTIONS,
    )


@hookimpl
def sqs_processor_health_checks(pipeline):
    if isinstance(pipeline.source, SqsSource):
        return HealthCheckSpec(name="sqs_receive", check=pipeline.source.check,
                               description="The last receive from the queue succeeded.")
    return None
