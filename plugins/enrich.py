"""The ``enrich`` transform: the original service's metadata, plus static fields.

Adds ``attributes`` (SQS system attributes), ``message_attributes`` (SQS's shape, binary values
as base64), ``received_at`` (when this processor received the message, ISO-8601 UTC with its
offset) and ``receipt_handle``. ``add`` sets static fields on every document; ``drop`` removes
fields, including ones this transform adds (``receipt_handle`` is a common one to drop).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from sqs_processor import (
    IDENTITY_FIELDS,
    BuildContext,
    ConfigError,
    Option,
    Record,
    Transform,
    TransformSpec,
    check_field_name,
    hookimpl,
)

ADDED_FIELDS = ("attributes", "message_attributes", "received_at", "receipt_handle")

OPTIONS = (
    Option("add", dict, {}, "Static fields set on every document (JSON values)."),
    Option("drop", list, [], "Fields removed from every document (message_id and body stay).",
           items=str),
)


class Enrich(Transform):
    def __init__(self, add: Mapping[str, Any], drop: tuple[str, ...]) -> None:
        # Encoded once and decoded per message, so no document shares a mutable value.
        self._add = orjson.dumps(dict(add)) if add else None
        self._drop = drop
        self._drop_added = {name for name in ADDED_FIELDS if name in drop}

    def __call__(self, record: Record) -> Record:
        message = record.message
        document = record.document
        added = {
            "attributes": dict(message.attributes),
            "message_attributes": {k: dict(v) for k, v in message.message_attributes.items()},
            "received_at": message.received_at.isoformat(),
            "receipt_handle": message.receipt_handle,
        }
        for name, value in added.items():
            if name not in self._drop_added:
                document[name] = value
        if self._add is not None:
            document.update(orjson.loads(self._add))
        for name in self._drop:
            document.pop(name, None)
        return record


def build(options: Mapping[str, Any], context: BuildContext) -> Enrich:
    where = context.where
    add = options["add"]
    for name in add:
        check_field_name(name, f"{where}.add")
        if name in IDENTITY_FIELDS or name in ADDED_FIELDS:
            raise ConfigError(f"{where}.add.{name}", "would overwrite a field enrich or the "
                              "message provides", expected="a new field name")
    try:
        orjson.dumps(add)
    except TypeError as exc:
        raise ConfigError(f"{where}.add", f"cannot be stored as JSON: {exc}") from None
    drop = []
    for i, name in enumerate(options["drop"]):
        check_field_name(name, f"{where}.drop[{i}]")
        if name in IDENTITY_FIELDS:
            raise ConfigError(f"{where}.drop[{i}]", "cannot be dropped: every stored document "
                              "keeps its message id and body", value=name,
                              expected="another field name")
        drop.append(name)
    return Enrich(add, tuple(drop))


@hookimpl
def sqs_processor_transforms():
    return TransformSpec(
        name="enrich",
        factory=build,
        description="Adds attributes, message_attributes, received_at and receipt_handle.",
        options=OPTIONS,
    )
