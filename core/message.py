"""The two data types that flow through a pipeline: the message envelope and the record.

A :class:`Message` is what the source received. The runner owns it: the acker needs its
``receipt_handle`` to delete it, so it is immutable all the way down (its attribute mappings are
read-only views of private copies) and transforms never replace it.

A :class:`Record` is what transforms work on and the sink writes: the message it came from and
the ``document`` (a plain dict, created for this message alone) that becomes the stored JSON
object. The document is the transforms' copy to change; the envelope is not theirs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

_EMPTY: Mapping[str, Any] = MappingProxyType({})

IDENTITY_FIELDS = ("message_id", "body")
"""Document fields every stored object keeps as received; no option may replace them."""


@dataclass(frozen=True, slots=True)
class Message:
    """One message as received from the source, in SQS's own terms.

    ``attributes`` are the system attributes (``SentTimestamp``, ``ApproximateReceiveCount``,
    ...) as strings. ``message_attributes`` keep SQS's shape: ``{"name": {"DataType": "String",
    "StringValue": "..."}}``, with ``BinaryValue`` as base64 text. ``received_at`` is the
    consumer's UTC clock when the receive call returned.
    """

    message_id: str
    receipt_handle: str = field(repr=False)  # a secret of sorts: never in logs or reprs
    body: str = field(repr=False)  # may hold personal data: never in logs or reprs
    received_at: datetime
    attributes: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    message_attributes: Mapping[str, Mapping[str, Any]] = field(
        default_factory=lambda: _EMPTY, repr=False)
    _sent_at: datetime | None = field(init=False, default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Private read-only copies: neither the source that built the message nor a plugin that
        # reads it can change what the runner acknowledges or what the next transform sees.
        object.__setattr__(self, "attributes", MappingProxyType(dict(self.attributes)))
        object.__setattr__(self, "message_attributes", MappingProxyType(
            {name: MappingProxyType(dict(value))
             for name, value in self.message_attributes.items()}))
        object.__setattr__(self, "_sent_at", _timestamp(self.attributes.get("SentTimestamp")))

    @property
    def sent_at(self) -> datetime | None:
        """When the producer sent the message (SQS ``SentTimestamp``), or None if unknown."""
        return self._sent_at

    @property
    def receive_count(self) -> int:
        """How many times SQS has delivered this message (1 on first delivery)."""
        try:
            return int(self.attributes.get("ApproximateReceiveCount", 1))
        except (TypeError, ValueError):
            return 1


def _timestamp(raw: str | None) -> datetime | None:
    """SQS's milliseconds since the epoch as a UTC datetime; None when absent or not one."""
    if raw is None:
        return None
    try:
        return datetime.fromtimestamp(int(raw) / 1000, tz=UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        return None


@dataclass(slots=True)
class Record:
    """A message on its way through the transforms to the sink.

    ``document`` is the JSON object that will be stored; transforms add, change or remove its
    keys. ``metadata`` carries values between plugins that are not stored (for example a
    routing hint a custom sink reads). ``message`` is the envelope, read-only.
    """

    message: Message
    document: dict[str, Any]
    metadata: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_message(cls, message: Message) -> Record:
        """The record every pipeline starts from: the message id and the body, verbatim."""
        document = {"message_id": message.message_id, "body": message.body}
        return cls(message=message, document=document)
