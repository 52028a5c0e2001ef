"""The ``sqs-processor`` command: ``run``, ``validate``, ``plugins`` (``--describe NAME``) and
``schema`` (the JSON Schema of the pipeline YAML).

Exit codes: 0 success (including a graceful stop on SIGTERM/SIGINT), 2 a configuration error
(one line on stderr per problem, naming the key, the value and what was expected; every problem
found in one run; no traceback), 1 a failure at run time such as the health port being taken.
"""

from __future__ import annotations

import argparse
import difflib
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from sqs_processor import __version__
from sqs_processor.config import load_plugin_settings
from sqs_processor.errors import ConfigError, each_error
from sqs_processor.health import HealthServer
from sqs_processor.loaders import build_plugin_manager
from sqs_processor.logs import LEVELS, configure
from sqs_processor.manager import PluginManager, Registration
from sqs_processor.pipeline import Pipeline, load_pipeline
from sqs_processor.records import normalise_name
from sqs_processor.reload import Supervisor
from sqs_processor.telemetry import Telemetry
from sqs_processor.telemetry_settings import TelemetrySettings, resolve_settings

log = logging.getLogger("sqs_processor.cli")

CONFIG_ENV = "SQS_PROCESSOR_CONFIG"
EXIT_CONFIG = 2


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--log-level", choices=LEVELS, default=argparse.SUPPRESS,
                        help="log verbosity (default: info)")
    common.add_argument("--log-format", choices=("text", "json"), default=argparse.SUPPRESS,
                        help="text for people, json for log pipelines (default: text)")
    with_config = argparse.ArgumentParser(add_help=False)
    with_config.add_argument(
        "--config", type=Path, default=argparse.SUPPRESS, metavar="FILE",
        help=f"pipeline YAML (default: ${CONFIG_ENV}, else the built-in default.yaml, which "
             "reads SQS_QUEUE_URL, S3_BUCKET_NAME and the other variables of the original "
             "service)")

    parser = argparse.ArgumentParser(
        prog="sqs-processor", parents=[common],
        description="Archive SQS messages into S3 through a pipeline wired in YAML.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    commands.add_parser("run", parents=[common, with_config],
                        help="run the pipeline until SIGTERM or SIGINT")
    commands.add_parser("validate", parents=[common, with_config],
                        help="check the config and that every component resolves; print the "
                             "pipeline")
    plugins = commands.add_parser(
        "plugins", parents=[common, with_config],
        help="list every component, the plugin that provides it, and plugins not loaded")
    plugins.add_argument("--describe", metavar="NAME", default=None,
                         help="print the options of the component NAME")
    commands.add_parser(
        "schema", parents=[common, with_config],
        help="print the JSON Schema of the pipeline YAML, with the options of every registered "
             "component (the config's drop-in plugins included)")
    return parser


def _config_path(args: argparse.Namespace) -> Path | None:
    path = getattr(args, "config", None)
    if path is None and os.environ.get(CONFIG_ENV):
        path = Path(os.environ[CONFIG_ENV])
    return path


def _load(args: argparse.Namespace) -> Pipeline:
    return load_pipeline(_config_path(args))


def _telemetry_settings(pipeline: Pipeline) -> TelemetrySettings:
    try:
        return resolve_settings(pipeline.config.telemetry)
    except ConfigError as exc:
        raise pipeline.config.explain(exc) from None


def cmd_validate(args: argparse.Namespace) -> int:
    pipeline = _load(args)
    settings = _telemetry_settings(pipeline)
    print(pipeline.describe())
    print(f"telemetry: {settings.describe()}")
    print("config is valid")
    return 0


def _table(rows: Sequence[Sequence[str]], indent: str = "") -> list[str]:
    """Left-aligned columns; the last column is not padded."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return [indent + "  ".join([*(cell.ljust(w) for cell, w in zip(row, widths, strict=False)),
                                row[-1]]).rstrip() for row in rows]


def cmd_plugins(args: argparse.Namespace) -> int:
    manager = build_plugin_manager(load_plugin_settings(_config_path(args)))
    if args.describe is not None:
        return _describe(manager, args.describe)
    rows: list[tuple[str, ...]] = [("KIND", "NAME", "STATUS", "PROVIDER", "DESCRIPTION")]
    rows += [(c.kind, c.name, "ok", str(c.provider), c.spec.description)
             for c in manager.all_components()]
    rows += [("plugin", s.provider.name, s.status, str(s.provider), s.reason)
             for s in manager.skipped]
    rows += [("plugin", b.provider.name, "broken", str(b.provider), b.error)
             for b in manager.broken]
    for line in _table(rows):
        print(line)
    for warning in manager.unmatched:
        print(f"warning: {warning}")
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from sqs_processor.schema import pipeline_schema, render

    manager = build_plugin_manager(load_plugin_settings(_config_path(args)))
    for broken in manager.broken:  # its components are missing from the schema: say so
        print(f"warning: plugin {broken.provider} is broken and left out: {broken.error}",
              file=sys.stderr)
    sys.stdout.write(render(pipeline_schema(manager)))
    return 0


def _describe(manager: PluginManager, name: str) -> int:
    try:
        key = normalise_name(name)
    except (TypeError, ValueError):
        key = name
    found = [c for c in manager.all_components() if c.name == key]
    if not found:
        known = sorted({(c.name, c.kind) for c in manager.all_components()})
        close = difflib.get_close_matches(key, [n for n, _ in known], n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        listing = ", ".join(f"{n} ({kind})" for n, kind in known) or "none"
        message = f"sqs-processor: no component is named {name!r}{hint}; components: {listing}"
        if manager.skipped:  # the component may be one of theirs
            message += "; plugins not loaded: " + "; ".join(map(str, manager.skipped))
        print(message, file=sys.stderr)
        return EXIT_CONFIG
    for i, component in enumerate(found):
        if i:
            print()
        print(describe_component(component))
    return 0


def describe_component(component: Registration) -> str:
    """A component, its provider and its options, as ``plugins --describe`` prints them."""
    lines = [f"{component.kind} {component.name}",
             f"  provider: {component.provider}"]
    if component.spec.description:
        lines.append(f"  {component.spec.description}")
    options = component.spec.options
    if not options:
        lines.append("  options: none")
        return "\n".join(lines)
    lines.append("")
    rows = [("OPTION", "TYPE", "DEFAULT", "ALLOWED", "DESCRIPTION")]
    rows += [(o.name, o.type_label(), o.default_label(), o.allowed_label(), o.description)
             for o in options]
    lines += _table(rows, indent="  ")
    return "\n".join(lines)


def cmd_run(args: argparse.Namespace) -> int:
    pipeline = _load(args)
    telemetry = Telemetry(_telemetry_settings(pipeline))
    try:
        return _run(args, pipeline, telemetry)
    finally:
        telemetry.shutdown()


def _run(args: argparse.Namespace, pipeline: Pipeline, telemetry: Telemetry) -> int:
    service = pipeline.config.service
    supervisor = Supervisor(pipeline, telemetry, lambda: _load(args),
                            watch=service["reload_on_change"])
    try:
        health = HealthServer(supervisor, service["health_host"], service["health_port"])
    except OSError as exc:
        print(f"sqs-processor: cannot serve health checks on {service['health_host']}:"
              f"{service['health_port']}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    _install_signal_handlers(supervisor)
    health.start()
    log.info("health server listening on %s:%d (/health, /healthz, /readyz, /metrics)",
             service["health_host"], health.port, extra={"event": "health_listening",
                                                         "port": health.port})
    log.info("telemetry: %s", telemetry.settings.describe(), extra={"event": "telemetry"})
    try:
        return supervisor.run()
    finally:
        health.stop()


def _install_signal_handlers(supervisor: Supervisor) -> None:
    if threading.current_thread() is not threading.main_thread():
        return

    def handle(signum: int, _frame: object) -> None:
        name = signal.Signals(signum).name
        if supervisor.stopping:
            log.warning("%s again: exiting now; unfinished messages return to the queue after "
                        "their visibility timeout", name, extra={"event": "forced_exit"})
            logging.shutdown()
            os._exit(128 + signum)
        log.info("%s received: shutting down gracefully", name, extra={"event": "signal"})
        supervisor.stop()

    def reload(signum: int, _frame: object) -> None:
        log.info("SIGHUP received: reloading the pipeline", extra={"event": "signal"})
        supervisor.request_reload()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    signal.signal(signal.SIGHUP, reload)


def print_config_errors(error: ConfigError) -> None:
    """Every problem on a line of its own, on stderr."""
    for one in each_error(error):
        print(f"sqs-processor: config error: {one}", file=sys.stderr)


COMMANDS = {"run": cmd_run, "validate": cmd_validate, "plugins": cmd_plugins,
            "schema": cmd_schema}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    configure(getattr(args, "log_level", "info"), getattr(args, "log_format", "text"))
    try:
        return COMMANDS[args.command](args)
    except ConfigError as exc:
        print_config_errors(exc)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
