"""The README's configuration reference, generated from the option declarations.

Every table between :data:`BEGIN` and :data:`END` in the README comes from the ``Option`` tuples
of the engine's sections (``service``, ``aws``, ``plugins``) and of each built-in component, so
the reference cannot drift from what the validator accepts. Regenerate it with one command::

    make docs        # or: python -m sqs_processor.docs README.md

``python -m sqs_processor.docs --check README.md`` exits 1 when the file is stale (the test
suite checks the same).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from sqs_processor.config import PluginSettings
from sqs_processor.engine_options import (
    AWS_OPTIONS,
    ERRORS_OPTIONS,
    PLUGIN_OPTIONS,
    SERVICE_OPTIONS,
)
from sqs_processor.loaders import build_plugin_manager
from sqs_processor.options import Option
from sqs_processor.telemetry_settings import TELEMETRY_OPTIONS

BEGIN = "<!-- BEGIN GENERATED CONFIG REFERENCE: run `make docs` to update -->"
END = "<!-- END GENERATED CONFIG REFERENCE -->"

SECTIONS = (
    ("service", "the engine's threads, limits and health server", SERVICE_OPTIONS),
    ("aws", "how boto3 clients are created", AWS_OPTIONS),
    ("plugins", "where plugins come from and which may load", PLUGIN_OPTIONS),
    ("errors", "the error sink for messages that keep failing", ERRORS_OPTIONS),
    ("telemetry", "OpenTelemetry export; overrides the OTEL_* variables", TELEMETRY_OPTIONS),
)
KIND_SECTIONS = {"source": "source", "transform": "transforms[]", "sink": "sink", "acker": "ack"}


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell: one line, ``|`` escaped, and ``<`` ``>`` outside
    code spans written as entities so ``<prefix>`` is not taken for an HTML tag."""
    pieces = " ".join(text.split()).replace("|", "\\|").split("`")
    for i in range(0, len(pieces), 2):  # even pieces are outside code spans
        pieces[i] = pieces[i].replace("<", "&lt;").replace(">", "&gt;")
    return "`".join(pieces)


def _code(text: str) -> str:
    return f"`{text}`" if text and not text.startswith("(") else text


def options_table(options: Iterable[Option]) -> str:
    """A Markdown table of options: name, type, default, allowed values, meaning."""
    lines = ["| Option | Type | Default | Allowed | Meaning |", "|---|---|---|---|---|"]
    for option in options:
        allowed = option.allowed_label()
        lines.append("| " + " | ".join([
            f"`{option.name}`", option.type_label(), _cell(_code(option.default_label())),
            _cell(allowed), _cell(option.description)]) + " |")
    return "\n".join(lines)


def config_reference() -> str:
    """The generated Markdown, markers included: the engine's sections, then each built-in
    component by kind and name."""
    parts = [BEGIN, ""]
    for name, what, options in SECTIONS:
        parts += [f"**`{name}:`** {what}", "", options_table(options), ""]
    # Built-ins only: nothing installed alongside is imported, and the text is the same anywhere.
    manager = build_plugin_manager(PluginSettings(base_dir=Path.cwd(), load_entrypoints=False))
    for component in manager.all_components():
        kind = component.kind
        heading = (f"**`{component.name}` {kind}** (`{KIND_SECTIONS[component.kind]}`, "
                   f"`type: {component.name}`): {_cell(component.spec.description)}")
        parts += [heading, ""]
        if component.spec.options:
            parts += [options_table(component.spec.options), ""]
        else:
            parts += ["No options.", ""]
    parts.append(END)
    return "\n".join(parts)


def current_block(text: str, where: str = "README.md") -> str:
    """The generated block as it stands in ``text``, markers included."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"{where} has no generated configuration reference: the markers "
                         f"{BEGIN!r} and {END!r} are missing or out of order")
    return text[start:end + len(END)]


def update(path: Path) -> bool:
    """Rewrite the generated block of ``path``; True when it changed."""
    text = path.read_text(encoding="utf-8")
    old = current_block(text, str(path))
    new = config_reference()
    if old == new:
        return False
    path.write_text(text.replace(old, new), encoding="utf-8")
    return True


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sqs_processor.docs",
                                     description="Regenerate the configuration reference.")
    parser.add_argument("--check", action="store_true",
                        help="only report whether the file is current (exit 1 when stale)")
    parser.add_argument("files", nargs="+", type=Path, metavar="FILE")
    args = parser.parse_args(argv)
    stale = []
    for path in args.files:
        try:
            text = path.read_text(encoding="utf-8")
            if args.check:
                if current_block(text, str(path)) != config_reference():
                    stale.append(path)
            elif update(path):
                print(f"updated {path}")
            else:
                print(f"{path} is up to date")
        except (OSError, ValueError) as exc:
            print(f"python -m sqs_processor.docs: {exc}", file=sys.stderr)
            return 2
    for path in stale:
        print(f"{path}: the configuration reference is stale; run `make docs`", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
