"""Example drop-in plugin: route records to different S3 prefixes by a field of the parsed body.

Two components work together:

* the ``route`` transform reads ``field`` (a dot-separated path in the parsed body, e.g.
  ``region`` or ``customer.tier``) and puts the route in ``record.metadata["route"]``, which is
  passed to the sink but not stored;
* the ``routed_s3`` sink is the built-in ``s3`` sink (all its options, checks and guarantees)
  with the route inserted after the prefix: ``<prefix><route>/YYYY/MM/DD/HH/<message-id>.json``.

Keys stay safe although part of them now comes from the body: a route is lower-cased, every run
of characters outside ``a-z``, ``0-9``, ``_`` and ``-`` becomes one ``-``, it is cut to
``max_length`` characters, and an empty result, a missing field or a value that is not text or a
whole number takes the ``default`` route. With ``allowed``, any other route takes the default
too, which keeps the number of prefixes bounded whatever producers send. The sink applies the
same rule again to whatever it finds in the metadata, so no other plugin can put an unsafe
segment into a key. A redelivered message has the same body, so the same key, and the
conditional write still recognises it.
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
    SinkSpec,
    TransformSpec,
    hookimpl,
)
from sqs_processor.plugins import s3_sink

MAX_ROUTE_LENGTH = 64
_UNSAFE = re.compile(r"[^a-z0-9_-]+")


def sanitise(value: Any, max_length: int = MAX_ROUTE_LENGTH) -> str:
    """A route made only of ``a-z0-9_-``, at most ``max_length`` long; "" when nothing is left."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        return ""
    text = _UNSAFE.sub("-", str(value).lower()).strip("-_")
    return text[:max_length].strip("-_")


def _safe_route(value: Any, key: str, max_length: int) -> str:
    if not isinstance(value, str) or sanitise(value, max_length) != value:
        raise ConfigError(key, "is not a safe route", value=value,
                          expected=f"1-{max_length} characters from a-z, 0-9, '_' and '-', "
                                   "not starting or ending with '_' or '-'")
    return value


# --------------------------------------------------------------------------------------------
# The route transform
# --------------------------------------------------------------------------------------------

ROUTE_OPTIONS = (
    Option("field", str, REQUIRED,
           "Dot-separated path of the field in the parsed body, e.g. `region`."),
    Option("default", str, "other",
           "Route for a missing, unusable or (with `allowed`) unknown value."),
    Option("allowed", list, None,
           "If set, the only routes used; any other value takes the default.", items=str),
    Option("max_length", int, 32, "Longest route, in characters.", minimum=1,
           maximum=MAX_ROUTE_LENGTH),
    Option("target", str, "parsed_body",
           "The document field holding the parsed body (json_parse's `target`)."),
)


class Route:
    def __init__(self, field: tuple[str, ...], default: str, allowed: frozenset[str] | None,
                 max_length: int, target: str) -> None:
        self.field, self.default, self.allowed = field, default, allowed
        self.max_length, self.target = max_length, target

    def route_of(self, document: Mapping[str, Any]) -> str:
        value: Any = document.get(self.target)
        for name in self.field:
            value = value.get(name) if isinstance(value, dict) else None
        route = sanitise(value, self.max_length)
        if not route or (self.allowed is not None and route not in self.allowed):
            return self.default
        return route

    def __call__(self, record: Record) -> Record:
        record.metadata["route"] = self.route_of(record.document)
        return record


def build_route(options: Mapping[str, Any], context: BuildContext) -> Route:
    where = context.where
    field = tuple(options["field"].split("."))
    if not all(field):
        raise ConfigError(f"{where}.field", "is not a path into the body",
                          value=options["field"], expected="field names joined by '.'")
    max_length = options["max_length"]
    default = _safe_route(options["default"], f"{where}.default", max_length)
    allowed = None
    if options["allowed"] is not None:
        allowed = frozenset(_safe_route(v, f"{where}.allowed[{i}]", max_length)
                            for i, v in enumerate(options["allowed"]))
    return Route(field, default, allowed, max_length, options["target"])


# --------------------------------------------------------------------------------------------
# The routed_s3 sink
# --------------------------------------------------------------------------------------------

# Every option of the s3 sink but batch: routed objects are one per message.
S3_OPTIONS = tuple(option for option in s3_sink.OPTIONS if option.name != "batch")

ROUTED_S3_OPTIONS = (
    *S3_OPTIONS,
    Option("default_route", str, "other",
           "Route for a record that reaches the sink without one (no route step ran)."),
)


class RoutedS3Sink(s3_sink.S3Sink):
    """The S3 sink, with ``<route>/`` between the prefix and the date folders."""

    def __init__(self, writer: Any, options: Mapping[str, Any],
                 put_options: Mapping[str, Any]) -> None:
        super().__init__(writer, options, put_options)
        self.default_route: str = options["default_route"]

    def key_for(self, record: Record) -> str:
        key = super().key_for(record)  # the built-in key, with its checks on the message id
        route = sanitise(record.metadata.get("route")) or self.default_route
        return f"{self.prefix}{route}/{key[len(self.prefix):]}"


def build_routed_s3(options: Mapping[str, Any], context: BuildContext) -> RoutedS3Sink:
    where = context.where
    s3_sink.check_bucket(options["bucket"], f"{where}.bucket")
    s3_sink.check_prefix(options["prefix"], f"{where}.prefix")
    put_options = s3_sink.put_parameters(options, where)  # encryption, tags, metadata...
    _safe_route(options["default_route"], f"{where}.default_route", MAX_ROUTE_LENGTH)
    room = s3_sink.MAX_PREFIX_BYTES - MAX_ROUTE_LENGTH - 1
    if len(options["prefix"].encode("utf-8")) > room:
        raise ConfigError(f"{where}.prefix", "leaves no room for the route in a key",
                          value=options["prefix"], expected=f"at most {room} bytes")
    # The s3 sink's client option (obstore or boto3) picks the writer, as it does there.
    return RoutedS3Sink(s3_sink.writer_for(options, put_options, context), options, put_options)


@hookimpl
def sqs_processor_transforms():
    return TransformSpec(
        name="route",
        factory=build_route,
        description="Picks a route from a field of the parsed body (sanitised) for routed_s3.",
        options=ROUTE_OPTIONS,
    )


@hookimpl
def sqs_processor_sinks():
    return SinkSpec(
        name="routed_s3",
        factory=build_routed_s3,
        description="The s3 sink with the record's route after the prefix: "
                    "<prefix><route>/YYYY/MM/DD/HH/<message-id>.json.",
        options=ROUTED_S3_OPTIONS,
    )
