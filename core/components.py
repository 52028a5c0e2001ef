"""Base classes for the four kinds of pipeline component, and the guarantees around them.

The runner drives components from several threads. What each method may do, when it is called
and what the runner promises in return is stated here, once; plugins rely on nothing else. What a
component can do beyond the basics is declared here too, as attributes and methods with
defaults (a source's queue name and visibility timeout, a :class:`BatchedSink`'s batch policy),
so the engine reads them directly and never probes a component for optional extras.

Lifecycle, for every component: the factory builds it (no network I/O there: ``validate`` builds
the whole pipeline offline), ``start()`` is called once before the first message, ``close()``
once after the last, even when start-up failed half way. Neither is called more than once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqs_processor.errors import redact
from sqs_processor.message import Message, Record


class Source:
    """Where messages come from.

    * ``receive()`` may block (a long poll), and is called from each poller thread, so it must be
      thread-safe when ``service.pollers`` is above 1. It returns at most ``max_batch`` messages;
      the runner reserves that many in-flight slots before it calls. An exception means the
      source is unreachable: the runner backs off, reports not-ready and calls again.
    * ``idle_delay(received)`` says how long to wait before the next receive after one that
      returned ``received`` messages (0 to poll again at once). Shutdown interrupts the wait.
    * ``release(messages)`` gives messages back for immediate redelivery (used on shutdown for
      work that did not finish). Best effort: a message it cannot release comes back anyway when
      its visibility timeout expires.
    * ``visibility_timeout()`` is how long a received message stays hidden, in seconds (None: no
      such limit, no heartbeat). While a message is in flight the runner calls
      ``extend(messages, seconds)`` (from its heartbeat thread) before that time runs out; it
      returns the messages it could not extend, as :class:`AckFailure` entries.
    * Nothing is guaranteed to be called after a SIGKILL: messages that were in flight simply
      reappear after their visibility timeout. That is why delivery is at-least-once.

    * ``max_message_bytes`` is the largest message ``receive()`` can return, body and
      attributes, in bytes (SQS's 1 MiB by default; the ``sqs`` source reads its queue's
      ``MaximumMessageSize`` in ``start()``). With several pollers, the in-flight memory budget
      assumes a receive that starts while another is in progress may bring ``max_batch``
      messages of that size.

    Identity, for metric labels, span names and logs: ``queue_name`` (None: the source's type
    name from the YAML is used) and ``messaging_system`` (the OpenTelemetry
    ``messaging.system``, e.g. ``aws_sqs``; None: the source's type name).
    """

    max_batch: int = 10
    max_message_bytes: int = 1024 * 1024
    queue_name: str | None = None
    messaging_system: str | None = None

    def start(self) -> None:
        """Check the source can be used (called once, from the main thread, before polling)."""

    def receive(self) -> list[Message]:
        raise NotImplementedError

    def idle_delay(self, received: int) -> float:
        return 0.0

    def release(self, messages: Sequence[Message]) -> None:
        """Make ``messages`` visible again at once. Default: do nothing and let them time out."""

    def visibility_timeout(self) -> float | None:
        """Seconds a received message stays hidden; None when the source has no such limit."""
        return None

    def extend(self, messages: Sequence[Message], seconds: int) -> list[AckFailure]:
        """Keep ``messages`` hidden for another ``seconds`` from now. Default: nothing to do."""
        return []

    def close(self) -> None:
        """Release clients and threads. Called once, after the last receive."""


class Transform:
    """A step that changes a record on its way to the sink.

    ``__call__(record)`` returns the record (the same object or a new one) to pass on, or
    ``None`` to drop the message: a dropped message is acknowledged (deleted) without being
    written. An exception fails only this message; it is not deleted and SQS redelivers it.
    Transforms run in worker threads, several at once, so keep them free of shared mutable
    state. A plain function ``record -> Record | None`` works as well as a subclass.
    """

    def __call__(self, record: Record) -> Record | None:
        raise NotImplementedError

    def close(self) -> None:
        """Release anything the transform holds. Called once on shutdown."""


@dataclass(frozen=True, slots=True)
class WriteResult:
    """Where the sink stored a record, and whether this call created it.

    ``created`` is False when the object already existed (a redelivered message whose first
    write succeeded): that is success too, and the message is deleted.
    """

    location: str
    created: bool = True


class Sink:
    """Where records are written, one record at a time.

    * ``write(record)`` stores one record and returns a :class:`WriteResult` only once the
      storage has accepted it; the runner deletes the message after that and never before.
      It is called from worker threads concurrently and must be thread-safe.
    * Writing must be idempotent per message: a redelivered message (same message id) must not
      produce a second object. The S3 sink does this with a deterministic key and a conditional
      put.
    * An exception fails the message (it is redelivered). Raise
      :class:`~sqs_processor.errors.MessageError` when the record itself is at fault; anything
      else is taken as the storage being unavailable.
    """

    def start(self) -> None:
        """Called once, from the main thread, before the first write."""

    def write(self, record: Record) -> WriteResult:
        raise NotImplementedError

    def close(self) -> None:
        """Called once, after the last write has returned."""


@dataclass(frozen=True)
class BatchPolicy:
    """When a :class:`BatchedSink`'s batch is written: whichever limit is reached first."""

    max_records: int
    max_bytes: int
    max_age: float  # seconds the batch's first record may wait


class BatchedSink(Sink):
    """A sink that stores many records per object (for the S3 sink: NDJSON, optionally gzip).

    The engine collects records per ``batch_key(record)`` and hands a batch to
    ``write_batch(key, lines, messages)`` when it reaches ``batch_policy.max_records`` or
    ``max_bytes``, or when its first record has waited ``max_age`` seconds.

    * ``encode(record)`` returns one record's bytes in the object. It runs in a worker thread, so
      a record that cannot be encoded fails on its own (raise
      :class:`~sqs_processor.MessageError`).
    * ``write_batch`` runs in the engine's flush threads, several at once, and returns only once
      the storage accepted the whole object. The batch's messages are deleted after that and
      never before; until then they stay in flight, kept hidden by the visibility heartbeat.
      Writing the same batch again must not make a second object (the S3 sink names the object
      after its first message and its size and writes it conditionally).
    * An exception fails every message of the batch (each is redelivered), unless it is a system
      failure, which holds the batch and retries it once the system pause is over.
    * ``write`` is not called.
    """

    def __init__(self, batch_policy: BatchPolicy) -> None:
        self.batch_policy = batch_policy

    def batch_key(self, record: Record) -> str:
        raise NotImplementedError

    def encode(self, record: Record) -> bytes:
        raise NotImplementedError

    def write_batch(self, key: str, lines: Sequence[bytes],
                    messages: Sequence[Message]) -> WriteResult:
        raise NotImplementedError

    def write(self, record: Record) -> WriteResult:
        raise TypeError(f"{type(self).__name__} is a batched sink: records go through "
                        "encode() and write_batch()")


@dataclass(frozen=True, slots=True)
class AckFailure:
    """A message an acker could not acknowledge, with the reason from the service."""

    message: Message
    code: str
    detail: str = ""
    retryable: bool = False

    def __post_init__(self) -> None:
        # SQS quotes the receipt handle in its reasons ("Value <handle> for parameter
        # ReceiptHandle is invalid"); the detail is logged and put on spans, so never keep it.
        handle = getattr(self.message, "receipt_handle", "") or ""
        object.__setattr__(self, "detail", redact(str(self.detail), (handle,)))


class Acker:
    """Acknowledges messages that are done (written, or dropped on purpose).

    * ``ack(messages)`` is called from the ack threads (``service.ack_threads``, several at
      once, so it must be thread-safe) with at most ``max_batch`` messages and returns the ones
      it could not acknowledge (an empty list when all succeeded). Failures marked
      ``retryable`` are offered again a few times; the others are logged. An unacknowledged
      message is redelivered later and recognised by the sink's idempotent write, so a failed
      ack never loses or duplicates data.
    * An exception means the whole call failed; the runner treats every message in it as a
      retryable failure.
    """

    max_batch: int = 10

    def start(self) -> None:
        """Called once, from the main thread, before the first ack."""

    def ack(self, messages: Sequence[Message]) -> list[AckFailure]:
        raise NotImplementedError

    def close(self) -> None:
        """Called once, after the last ack."""
