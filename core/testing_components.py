"""The test kit's in-memory components and message builder (re-exported by
:mod:`sqs_processor.testing`, where plugin authors import them from).

:class:`ListSource` (messages from a list), :class:`ListSink` (keeps what it is given, as the S3
sink would store it), :class:`RecordingAcker` (remembers what was acknowledged) and
:func:`make_message` (an SQS-shaped envelope) work on their own as well as inside
:func:`~sqs_processor.testing.run_pipeline`.
"""

from __future__ import annotations

import base64
import copy
import threading
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson

from sqs_processor.components import Acker, AckFailure, Sink, Source, WriteResult
from sqs_processor.errors import MessageError
from sqs_processor.message import Message, Record

MessageLike = Message | str | bytes | Mapping[str, Any] | list[Any]


def _attribute(value: Any) -> dict[str, str]:
    if isinstance(value, Mapping):  # already in SQS's shape
        return {str(k): str(v) for k, v in value.items()}
    if isinstance(value, bytes):
        return {"DataType": "Binary", "BinaryValue": base64.b64encode(value).decode("ascii")}
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise TypeError(f"a message attribute is text, a number, bytes or an SQS-shaped "
                        f"mapping, not {type(value).__name__}")
    if isinstance(value, str):
        return {"DataType": "String", "StringValue": value}
    return {"DataType": "Number", "StringValue": str(value)}


def make_message(
    body: str | bytes | Mapping[str, Any] | list[Any],
    *,
    message_id: str | None = None,
    message_attributes: Mapping[str, Any] | None = None,
    attributes: Mapping[str, str] | None = None,
    sent_at: datetime | None = None,
    receive_count: int = 1,
    receipt_handle: str | None = None,
) -> Message:
    """An envelope shaped like one the SQS source returns.

    ``body`` is text; bytes are decoded as UTF-8 and a dict or list is encoded as JSON.
    ``message_attributes`` take plain values (``{"tenant": "acme", "size": 3, "raw": b"..."}``
    become String, Number and Binary attributes) or SQS's own shape. ``attributes`` are extra
    system attributes; ``SentTimestamp``, ``ApproximateReceiveCount`` and friends are filled in
    from ``sent_at`` (default: now) and ``receive_count``.
    """
    if isinstance(body, bytes):
        body = body.decode("utf-8")
    elif not isinstance(body, str):
        body = orjson.dumps(body).decode("utf-8")
    now = datetime.now(UTC)
    sent = sent_at or now
    if sent.tzinfo is None:
        raise ValueError("sent_at must be timezone-aware (for example datetime.now(UTC))")
    message_id = message_id or str(uuid.uuid4())
    system = {
        "SenderId": "AIDASQSPROCESSORTESTING",
        "SentTimestamp": str(int(sent.timestamp() * 1000)),
        "ApproximateReceiveCount": str(receive_count),
        "ApproximateFirstReceiveTimestamp": str(int(now.timestamp() * 1000)),
        **dict(attributes or {}),
    }
    return Message(
        message_id=message_id,
        receipt_handle=receipt_handle or f"receipt-{message_id}",
        body=body,
        received_at=now,
        attributes=system,
        message_attributes={name: _attribute(value)
                            for name, value in (message_attributes or {}).items()},
    )



class ListSource(Source):
    """Returns the given messages, ``max_batch`` per receive, then nothing.

    Items that are not already :class:`Message` objects go through :func:`make_message`, with
    ids ``message-1``, ``message-2``... in list order. Messages the runner hands back are kept
    in :attr:`released`.
    """

    def __init__(self, messages: Iterable[MessageLike] = (), max_batch: int = 10) -> None:
        if not 1 <= max_batch <= 10:
            raise ValueError("max_batch must be from 1 to 10, as for SQS")
        self.max_batch = max_batch
        self._pending: list[Message] = []
        self._count = 0
        self._lock = threading.Lock()
        self.released: list[Message] = []
        self.add(*messages)

    def add(self, *messages: MessageLike) -> list[Message]:
        """Queue more messages; returns them as envelopes."""
        added = []
        with self._lock:
            for item in messages:
                if not isinstance(item, Message):
                    self._count += 1
                    item = make_message(item, message_id=f"message-{self._count}")
                added.append(item)
            self._pending.extend(added)
        return added

    def receive(self) -> list[Message]:
        with self._lock:
            batch, self._pending = (self._pending[:self.max_batch],
                                    self._pending[self.max_batch:])
        return batch

    def idle_delay(self, received: int) -> float:
        return 0.0

    def release(self, messages: Sequence[Message]) -> None:
        self.released.extend(messages)


class ListSink(Sink):
    """Keeps each record it is given, as the S3 sink would store it.

    The document is encoded to JSON and decoded again, so a test sees exactly the stored form
    (a value JSON cannot hold fails the message with a :class:`MessageError`, as in S3). Like
    every sink it is idempotent per message id: a second write of the same id keeps the first
    document and reports ``created=False``.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.records: list[Record] = []
        self.by_id: dict[str, dict[str, Any]] = {}

    def write(self, record: Record) -> WriteResult:
        try:
            stored = orjson.loads(orjson.dumps(record.document))
        except (TypeError, orjson.JSONEncodeError) as exc:
            raise MessageError(f"document cannot be encoded as JSON: {exc}") from None
        message_id = record.message.message_id
        with self._lock:
            if message_id in self.by_id:
                return WriteResult(f"memory:{message_id}", created=False)
            self.by_id[message_id] = stored
            self.records.append(Record(record.message, stored, copy.deepcopy(record.metadata)))
        return WriteResult(f"memory:{message_id}", created=True)

    @property
    def documents(self) -> list[dict[str, Any]]:
        """The stored documents, in the order they were written."""
        return [record.document for record in self.records]


class RecordingAcker(Acker):
    """Remembers every message acknowledged; ids in ``fail`` are refused (not retryable)."""

    def __init__(self, fail: Iterable[str] = ()) -> None:
        self.fail = set(fail)
        self.acked: list[Message] = []
        self.calls = 0

    def ack(self, messages: Sequence[Message]) -> list[AckFailure]:
        self.calls += 1
        failures = [AckFailure(m, "RefusedByTest", "listed in RecordingAcker.fail")
                    for m in messages if m.message_id in self.fail]
        self.acked.extend(m for m in messages if m.message_id not in self.fail)
        return failures

    @property
    def acked_ids(self) -> list[str]:
        return [m.message_id for m in self.acked]

