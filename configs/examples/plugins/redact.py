"""Example drop-in plugin: the ``redact`` transform masks personal data before it is stored.

``paths`` address values inside the JSON body, written with dots: ``card.number``,
``customer.email``, ``items.*.iban`` (``*`` matches every key of an object or every item of a
list; a number picks one list item). Each value found is replaced by ``mask``; with
``keep_last: 4`` a text value keeps its last four characters (``[REDACTED]1111``).

Both copies of the body are masked: the parsed one (``parsed_body``, or json_parse's ``target``)
and ``body`` itself, which is re-encoded from the masked JSON. That re-encoding is the point:
a masked ``parsed_body`` next to the original ``body`` text would still store the data. A body
that is not JSON, or has none of the paths, is stored unchanged. The step must come after
``json_parse``, which would otherwise parse the original body again; the YAML is rejected if it
does not.

The transform never logs values, and keeps no state between messages.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

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
    Option("paths", list, REQUIRED,
           "Dot-separated paths into the JSON body, e.g. `card.number`; `*` matches every key "
           "or list item, a number one list item.", items=str),
    Option("mask", str, "[REDACTED]", "Text that replaces each masked value."),
    Option("keep_last", int, 0,
           "Characters kept at the end of a masked text value (4 for card numbers); 0 keeps "
           "none.", minimum=0, maximum=8),
    Option("target", str, "parsed_body",
           "The document field holding the parsed body (json_parse's `target`)."),
)


def parse_path(text: str, key: str) -> tuple[str, ...]:
    """``"items.*.iban"`` -> ``("items", "*", "iban")``, or a ConfigError naming ``key``."""
    segments = tuple(text.split("."))
    if not text or any(not s or s != s.strip() for s in segments):
        raise ConfigError(key, "is not a path into the body", value=text,
                          expected="field names joined by '.', e.g. card.number or items.*.iban")
    return segments


def _children(node: Any, segment: str) -> list[tuple[Any, Any]]:
    """(container, key) pairs the segment selects in ``node``."""
    if isinstance(node, dict):
        keys = list(node) if segment == "*" else [segment] if segment in node else []
        return [(node, k) for k in keys]
    if isinstance(node, list):
        if segment == "*":
            return [(node, i) for i in range(len(node))]
        if segment.isdigit() and int(segment) < len(node):
            return [(node, int(segment))]
    return []


class Redact:
    def __init__(self, paths: list[tuple[str, ...]], mask: str, keep_last: int,
                 target: str) -> None:
        self.paths, self.mask, self.keep_last, self.target = paths, mask, keep_last, target

    def _masked(self, value: Any) -> Any:
        if isinstance(value, str) and self.keep_last and len(value) > self.keep_last:
            return self.mask + value[-self.keep_last:]
        return self.mask

    def mask_in(self, data: Any) -> int:
        """Mask every path in ``data`` in place; returns how many values were masked."""
        count = 0
        for path in self.paths:
            nodes = [data]
            for segment in path[:-1]:
                nodes = [container[k] for node in nodes for container, k in
                         _children(node, segment)]
            for node in nodes:
                for container, k in _children(node, path[-1]):
                    if container[k] is not None:
                        container[k] = self._masked(container[k])
                        count += 1
        return count

    def __call__(self, record: Record) -> Record:
        document = record.document
        parsed = document.get(self.target)
        if isinstance(parsed, dict | list):
            self.mask_in(parsed)
        body = document.get("body")
        if isinstance(body, str):
            try:
                data = orjson.loads(body)
            except orjson.JSONDecodeError:
                return record
            if self.mask_in(data):
                document["body"] = orjson.dumps(data).decode("utf-8")
        return record


def build(options: Mapping[str, Any], context: BuildContext) -> Redact:
    where = context.where
    paths = [parse_path(text, f"{where}.paths[{i}]") for i, text in enumerate(options["paths"])]
    if not paths:
        raise ConfigError(f"{where}.paths", "is empty", expected="at least one path")
    # json_parse after this step would parse the original body again, unmasked.
    position = next((i for i, block in enumerate(context.config.transforms)
                     if block.where == where), None)
    if position is not None:
        for block in context.config.transforms[position + 1:]:
            if block.type == "json_parse":
                raise ConfigError(where, f"comes before json_parse ({block.where}), which would "
                                         "store the unmasked body again",
                                  expected="redact after json_parse")
    return Redact(paths, options["mask"], options["keep_last"], options["target"])


@hookimpl
def sqs_processor_transforms():
    return TransformSpec(
        name="redact",
        factory=build,
        description="Masks values at configured paths of a JSON body, in body and parsed_body.",
        options=OPTIONS,
    )
