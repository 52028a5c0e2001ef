"""Example drop-in plugin: the ``attribute_filter`` transform drops messages by a message attribute.

With ``action: drop`` (the default) a message whose attribute ``attribute`` has one of
``values`` is dropped; with ``action: keep`` only such messages are kept. ``missing`` decides
for messages without the attribute. String and Number attributes compare by their text; a
Binary attribute never matches.

A dropped message is acknowledged, that is deleted from the queue, without being stored: that
is what filtering means here, so list only what is really not wanted.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from sqs_processor import (
    REQUIRED,
    BuildContext,
    ConfigError,
    Option,
    Record,
    TransformSpec,
    hookimpl,
)

OPTIONS = (
    Option("attribute", str, REQUIRED, "Name of the message attribute to look at."),
    Option("values", list, REQUIRED, "Attribute values that match, compared as text.",
           items=str),
    Option("action", str, "drop",
           "`drop`: drop the messages that match; `keep`: keep only the messages that match.",
           choices=("drop", "keep")),
    Option("missing", str, "keep", "What happens to a message without the attribute.",
           choices=("keep", "drop")),
)

# SQS's rule for attribute names.
_ATTRIBUTE_NAME = re.compile(r"^(?!\.)(?!.*\.\.)(?!.*\.$)[A-Za-z0-9_.-]{1,256}$")


class AttributeFilter:
    def __init__(self, attribute: str, values: frozenset[str], keep_matching: bool,
                 keep_missing: bool) -> None:
        self.attribute = attribute
        self.values = values
        self.keep_matching = keep_matching
        self.keep_missing = keep_missing

    def __call__(self, record: Record) -> Record | None:
        value = record.message.message_attributes.get(self.attribute)
        if value is None:
            return record if self.keep_missing else None
        matches = value.get("StringValue") in self.values
        return record if matches == self.keep_matching else None


def build(options: Mapping[str, Any], context: BuildContext) -> AttributeFilter:
    where = context.where
    if not _ATTRIBUTE_NAME.match(options["attribute"]):
        raise ConfigError(f"{where}.attribute", "is not an SQS attribute name",
                          value=options["attribute"],
                          expected="1-256 letters, digits, '_', '-' or '.'")
    if not options["values"]:
        raise ConfigError(f"{where}.values", "is empty", expected="at least one value")
    return AttributeFilter(options["attribute"], frozenset(options["values"]),
                           keep_matching=options["action"] == "keep",
                           keep_missing=options["missing"] == "keep")


@hookimpl
def sqs_processor_transforms():
    return TransformSpec(
        name="attribute_filter",
        factory=build,
        description="Drops (or keeps only) messages whose attribute has one of the values.",
        options=OPTIONS,
    )
