"""The ``json_parse`` transform: adds ``parsed_body`` when the body is valid JSON.

Parsing follows RFC 8259 strictly (orjson): ``NaN``, ``Infinity``, a byte-order mark, numbers
that do not fit a double and nesting deeper than 1024 levels are not JSON here. A body that does
not parse is left alone and still archived, with ``body`` holding it verbatim.
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

OPTIONS = (
    Option("target", str, "parsed_body", "Document field that receives the parsed body."),
)


class JsonParse(Transform):
    def __init__(self, target: str) -> None:
        self.target = target

    def __call__(self, record: Record) -> Record:
        try:
            parsed = orjson.loads(record.message.body)
        except orjson.JSONDecodeError:
            return record
        record.document[self.target] = parsed
        return record


def build(options: Mapping[str, Any], context: BuildContext) -> JsonParse:
    target = check_field_name(options["target"], f"{context.where}.target")
    if target in IDENTITY_FIELDS:
        raise ConfigError(f"{context.where}.target", "would replace a field every document keeps "
                          "verbatim", value=target, expected="another field name")
    return JsonParse(options["target"])


@hookimpl
def sqs_processor_transforms():
    return TransformSpec(
        name="json_parse",
        factory=build,
        description="Adds parsed_body when the message body is valid JSON (RFC 8259).",
        options=OPTIONS,
    )
