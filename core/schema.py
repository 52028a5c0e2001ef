"""A JSON Schema of the pipeline YAML, generated from the option declarations.

The schema is made of the same ``Option`` tuples the validator checks (the engine's sections
and every registered component's options), so it cannot drift from what ``validate`` accepts.
An editor with a YAML language server checks and completes the file as it is typed, from the
modeline at the top of each shipped config::

    # yaml-language-server: $schema=pipeline.schema.json

``sqs-processor schema [--config FILE]`` prints it with every registered plugin's options (the
built-ins, installed distributions, and the drop-ins and modules ``FILE`` names);
``configs/pipeline.schema.json`` is the built-ins' schema, rewritten by ``make docs`` and
checked by the test suite (``python -m sqs_processor.schema --check FILE``).

What the schema cannot know, the validator still checks: the values of ``${VAR}`` references
(a string holding ``${`` is accepted wherever a number or a boolean is), and cross-field rules
such as ``service.max_in_flight`` against the sink's batch. A component type no registered
plugin provides is accepted with any options, since the plugin may come from elsewhere.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from sqs_processor.config import PluginSettings
from sqs_processor.engine_options import (
    AWS_OPTIONS,
    ERRORS_OPTIONS,
    PLUGIN_OPTIONS,
    SERVICE_OPTIONS,
)
from sqs_processor.manager import PluginManager, Registration
from sqs_processor.options import Option
from sqs_processor.telemetry_settings import TELEMETRY_OPTIONS

DRAFT = "http://json-schema.org/draft-07/schema#"
SHIPPED = "pipeline.schema.json"  # beside the shipped configs
SECTIONS = (("service", SERVICE_OPTIONS), ("aws", AWS_OPTIONS), ("plugins", PLUGIN_OPTIONS),
            ("errors", ERRORS_OPTIONS), ("telemetry", TELEMETRY_OPTIONS))
KINDS = (("source", "source"), ("transforms", "transform"), ("sink", "sink"), ("ack", "acker"))

_REFERENCE = {"type": "string", "pattern": r"\$\{",
              "description": "A ${VAR} reference, checked once it is replaced."}
_WORDS = ("true", "false", "yes", "no", "on", "off")
_BOOLEAN_TEXT = "|".join([*(w for word in _WORDS for w in (word, word.title(), word.upper())),
                          "1", "0"])
_TEXT_FORMS = {  # what the validator also accepts as text, as environment values arrive
    int: r"^\s*[+-]?[0-9]+\s*$",
    float: r"^\s*[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?\s*$",
    bool: rf"^\s*({_BOOLEAN_TEXT})\s*$",
}
_JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean", list: "array",
               dict: "object"}


def _value_schema(option_type: type, option: Option | None = None) -> dict[str, Any]:
    """The values of one type (with the option's range and choices), and their text forms."""
    typed: dict[str, Any] = {"type": _JSON_TYPES[option_type]}
    if option is not None and option.choices is not None:
        typed = {"enum": list(option.choices)}
    elif option is not None and option_type in (int, float):
        if option.minimum is not None:
            typed["minimum"] = option.minimum
        if option.maximum is not None:
            typed["maximum"] = option.maximum
    if option_type is list:
        items = option.items if option is not None else None
        typed["items"] = _value_schema(items) if items is not None else {}
    alternatives = [typed]
    if option_type in _TEXT_FORMS and (option is None or option.choices is None):
        alternatives.append({"type": "string", "pattern": _TEXT_FORMS[option_type]})
    if option_type in _TEXT_FORMS or (option is not None and option.choices is not None):
        alternatives.append(_REFERENCE)
    return typed if len(alternatives) == 1 else {"anyOf": alternatives}


def option_schema(option: Option) -> dict[str, Any]:
    """One option: its values, description and default, as an editor shows them."""
    schema = _value_schema(option.type, option)
    if option.default is None:  # optional and unset: null is accepted
        schema = {"anyOf": [*schema.get("anyOf", [schema]), {"type": "null"}]}
    schema["description"] = option.description
    if not option.required and option.default is not None:
        schema["default"] = option.default
    return schema


def options_object(options: Iterable[Option], extra: dict[str, Any] | None = None
                   ) -> dict[str, Any]:
    """A mapping of exactly these options (``extra``: more keys, such as ``type``)."""
    options = tuple(options)
    schema: dict[str, Any] = {
        "type": "object", "additionalProperties": False,
        "properties": {**(extra or {}), **{o.name: option_schema(o) for o in options}}}
    required = [o.name for o in options if o.required]
    if required:
        schema["required"] = required
    return schema


def component_schema(kind: str, components: Sequence[Registration]) -> dict[str, Any]:
    """A component block of ``kind``: ``type`` and, for a known type, exactly its options."""
    names = [c.name for c in components]
    schema: dict[str, Any] = {
        "type": "object", "required": ["type"],
        "properties": {"type": {"description": f"The {kind}: a registered {kind} name.",
                                "anyOf": [{"enum": names}, {"type": "string"}]}},
    }
    cases = []
    for component in components:
        then = options_object(component.spec.options, {"type": {"const": component.name}})
        then["description"] = component.spec.description
        cases.append({"if": {"properties": {"type": {"const": component.name}},
                             "required": ["type"]}, "then": then})
    if cases:
        schema["allOf"] = cases
    return schema


def pipeline_schema(manager: PluginManager) -> dict[str, Any]:
    """The whole pipeline file, with the components ``manager`` has registered."""
    by_kind: dict[str, list[Registration]] = {}
    for component in manager.all_components():
        by_kind.setdefault(component.kind, []).append(component)
    definitions = {kind: component_schema(kind, by_kind.get(kind, [])) for _, kind in KINDS}
    properties: dict[str, Any] = {}
    for name, options in SECTIONS:  # a section may be written empty (null)
        section = options_object(options)
        section.update(type=["object", "null"], description=f"The {name} section.")
        properties[name] = section
    for key, kind in KINDS:
        ref = {"$ref": f"#/definitions/{kind}"}
        properties[key] = ref
        if key == "transforms":
            names = [c.name for c in by_kind.get("transform", [])]
            shorthand = {"anyOf": [{"enum": names}, {"type": "string"}]}
            properties[key] = {
                "description": "Transforms, run in this order; a name alone is short for "
                               "{type: name}.",
                "type": ["array", "null"],
                "items": {"if": {"type": "string"}, "then": shorthand, "else": ref}}
    return {
        "$schema": DRAFT,
        "title": "sqs-processor pipeline",
        "description": "The pipeline YAML of sqs-processor, generated from its option "
                       "declarations (sqs-processor schema).",
        "type": "object", "additionalProperties": False,
        "required": ["source", "sink", "ack"],
        "properties": properties,
        "definitions": definitions,
    }


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def builtin_schema() -> str:
    """The schema of the built-in components only (what ``configs/pipeline.schema.json``
    holds): nothing installed alongside is imported, so it reads the same anywhere."""
    from sqs_processor.loaders import build_plugin_manager

    return render(pipeline_schema(build_plugin_manager(
        PluginSettings(base_dir=Path.cwd(), load_entrypoints=False))))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sqs_processor.schema",
                                     description="Write the built-in components' schema.")
    parser.add_argument("--check", action="store_true",
                        help="only report whether the file is current (exit 1 when stale)")
    parser.add_argument("file", type=Path, metavar="FILE")
    args = parser.parse_args(argv)
    current = builtin_schema()
    try:
        old = args.file.read_text(encoding="utf-8") if args.file.exists() else ""
        if args.check:
            if old != current:
                print(f"{args.file}: the schema is stale; run `make docs`", file=sys.stderr)
                return 1
            return 0
        if old != current:
            args.file.write_text(current, encoding="utf-8")
            print(f"updated {args.file}")
        else:
            print(f"{args.file} is up to date")
    except OSError as exc:
        print(f"python -m sqs_processor.schema: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
