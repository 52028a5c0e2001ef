"""The ``sqs_delete`` acker: deletes finished messages with DeleteMessageBatch.

Entries carry positional ids ("0".."9"), so every entry of the response maps back to its message
without trusting anything the message contains. Every failed entry is returned to the runner:
a server-side failure (``SenderFault`` false) is retried, a sender fault (for example a receipt
handle that expired) is logged; that message is redelivered and its write is recognised as
already done.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqs_processor import (
    Acker,
    AckerSpec,
    AckFailure,
    BuildContext,
    ConfigError,
    Message,
    Option,
    hookimpl,
)
from sqs_processor.plugins.sqs_source import queue_name_from_url

OPTIONS = (
    Option("queue_url", str, None,
           "Queue to delete from; unset means the source's queue_url."),
)


class SqsDelete(Acker):
    max_batch = 10

    def __init__(self, client: Any, queue_url: str) -> None:
        self.client = client
        self.queue_url = queue_url
        self.queue_name = queue_name_from_url(queue_url, "ack.queue_url")

    def ack(self, messages: Sequence[Message]) -> list[AckFailure]:
        entries = [{"Id": str(i), "ReceiptHandle": m.receipt_handle}
                   for i, m in enumerate(messages)]
        response = self.client.delete_message_batch(QueueUrl=self.queue_url, Entries=entries)
        failures: list[AckFailure] = []
        answered: set[str] = {entry["Id"] for entry in response.get("Successful", ())}
        for entry in response.get("Failed", ()):
            entry_id = entry.get("Id", "")
            if not entry_id.isdigit() or int(entry_id) >= len(messages):
                continue  # not one of ours; the unanswered check below covers our entry
            answered.add(entry_id)
            failures.append(AckFailure(
                message=messages[int(entry_id)],
                code=str(entry.get("Code", "Unknown")),
                detail=str(entry.get("Message", "")),
                retryable=not entry.get("SenderFault", False),
            ))
        for i, message in enumerate(messages):
            if str(i) not in answered:
                failures.append(AckFailure(message, "NoResult",
                                           "the batch response did not mention this entry",
                                           retryable=True))
        return failures


def build(options: Mapping[str, Any], context: BuildContext) -> SqsDelete:
    queue_url = options["queue_url"]
    if queue_url is None:
        queue_url = context.config.source.options.get("queue_url")
        if not isinstance(queue_url, str):
            raise ConfigError(f"{context.where}.queue_url", "is required when the source has no "
                              "queue_url", expected="the URL of the queue to delete from")
    queue_name_from_url(queue_url, f"{context.where}.queue_url")
    return SqsDelete(context.aws.client("sqs"), queue_url)


@hookimpl
def sqs_processor_ackers():
    return AckerSpec(
        name="sqs_delete",
        factory=build,
        description="Deletes finished messages from SQS with DeleteMessageBatch.",
        options=OPTIONS,
    )
