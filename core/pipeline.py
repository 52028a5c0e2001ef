"""Turning a validated config and a plugin manager into built components: the Pipeline.

Building resolves every ``type:`` to a registered component, checks each block against the
options that component declares, and calls the factories. Factories do no network I/O, so
``sqs-processor validate`` builds the whole pipeline offline and any problem is a ConfigError
that names the YAML key.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3

from sqs_processor.aws import AwsClients
from sqs_processor.components import Acker, BatchedSink, Sink, Source, Transform
from sqs_processor.config import ComponentConfig, PipelineConfig
from sqs_processor.errors import ConfigError, ConfigErrors, Problems, describe_error
from sqs_processor.manager import PluginManager, Registration
from sqs_processor.options import validate_options
from sqs_processor.process import Step
from sqs_processor.provenance import Provider, describe_plugin_error
from sqs_processor.records import BuildContext, HealthCheckSpec

STAT_NAMES = (
    "received",  # messages returned by the source
    "written",  # records the sink stored (a new object)
    "existing",  # records the sink found already stored (a redelivery)
    "dropped",  # records a transform dropped on purpose (acked, not written)
    "failed",  # messages that failed and were left for redelivery
    "processed",  # messages finished and acknowledged
    "ack_failed",  # acknowledgements that failed for good (the message is redelivered)
    "released",  # messages handed back on shutdown
    "polls",  # receive calls that returned (with messages or empty)
    "system_failures",  # failures blamed on S3/SQS (the message is retried)
    "delete_calls",  # delete calls that succeeded (one per batch of up to ten)
)


class Stats:
    """Counters and the time of the last poll, shared by the runner's threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(STAT_NAMES, 0)
        self._failures: Counter[str] = Counter()
        self.last_poll: datetime | None = None

    def add(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self._counts[name] += amount

    def add_failure(self, stage: str) -> None:
        """Count a failed message, in total and against the stage (plugin) where it failed."""
        with self._lock:
            self._counts["failed"] += 1
            self._failures[stage] += 1

    def failures_by_stage(self) -> dict[str, int]:
        """Failed messages per stage (``transform:<name>``, ``sink:<name>``)."""
        with self._lock:
            return dict(self._failures)

    def polled(self) -> None:
        self.last_poll = datetime.now(UTC)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


@dataclass(frozen=True)
class StartStep:
    """One thing that must succeed before the first poll: creating the AWS clients, a component's
    ``start()``, or a plugin's ``sqs_processor_startup`` hook."""

    where: str  # "aws clients", "source", "sink", "ack" or "plugin <name>"
    run: Callable[[], object]
    label: str  # how the failure reads: "the sink 's3' (built-in ...)"
    provider: Provider | None = None

    def describe_failure(self, exc: BaseException) -> str:
        if self.provider is None:
            return f"{self.label}: {describe_error(exc)}"
        return f"{self.label}: {describe_plugin_error(exc, self.provider)}"


@dataclass
class Pipeline:
    """The built components of one pipeline, in YAML order, and the plugins behind them."""

    config: PipelineConfig
    plugins: PluginManager
    aws: AwsClients
    source: Source
    transforms: list[tuple[str, Step]]
    sink: Sink
    acker: Acker
    used: dict[str, Registration]  # YAML key ("source", "transforms[0]") -> what built it
    health_checks: list[tuple[HealthCheckSpec, Provider]] = field(default_factory=list)
    stats: Stats = field(default_factory=Stats)
    error_sink: Sink | None = None

    def provider_of_stage(self, stage: str) -> Provider | None:
        """The plugin behind a stage name (``transform:redact``, ``sink:s3``), if known."""
        kind, _, name = stage.partition(":")
        for where, component in self.used.items():
            if component.name == name and (where == kind or where.startswith(f"{kind}s[")):
                return component.provider
        return None

    def start_steps(self) -> list[StartStep]:
        """What starting the pipeline runs, in order; the runner stops at the first failure."""
        steps = [StartStep("aws clients", self.aws.connect, "the AWS clients")]
        parts: list[tuple[str, Source | Sink | Acker | None]] = [
            ("source", self.source), ("sink", self.sink), ("ack", self.acker),
            ("errors.sink", self.error_sink)]
        for where, part in parts:
            if part is None:
                continue
            built = self.used.get(where)
            label = f"the {where}"
            if built is not None:
                label = f"the {where} {built.name!r} from {built.provider}"
            steps.append(StartStep(where, part.start, label,
                                   built.provider if built else None))
        for plugin_name, caller in self.plugins.callers("sqs_processor_startup"):
            provider = self.plugins.provider_of(plugin_name)

            def run(caller: Any = caller) -> object:
                return caller(pipeline=self)

            steps.append(StartStep(f"plugin {plugin_name}", run,
                                   f"plugin {provider}: sqs_processor_startup raised", provider))
        return steps

    def describe_line(self) -> str:
        steps = " -> ".join(name for name, _ in self.transforms)
        middle = f" -> {steps}" if steps else ""
        return (f"{self.config.source.type}{middle} -> {self.config.sink.type} "
                f"-> {self.config.ack.type}")

    def describe(self) -> str:
        """A human-readable account of the resolved pipeline, for ``validate``."""
        lines = [f"config: {self.config.path}", f"pipeline: {self.describe_line()}"]
        for where, component in self.used.items():
            lines.append(f"  {where}: {component.name} ({component.provider})")
        service = self.config.service
        lines.append(
            f"service: health on {service['health_host']}:{service['health_port']}, "
            f"{service['pollers']} poller(s), {service['workers']} worker(s), "
            f"at most {service['max_in_flight']} messages ({service['max_in_flight_mib']} MiB) "
            "in flight, "
            f"{service['shutdown_grace_seconds']:g}s shutdown grace"
        )
        endpoint = self.config.aws["endpoint_url"] or "boto3 default chain"
        lines.append(f"aws: region {self.aws.region}, endpoint {endpoint}")
        for spec, provider in self.health_checks:
            lines.append(f"  readiness check: {spec.name} ({provider})")
        return "\n".join(lines)


def _resolve_region(config: PipelineConfig) -> str:
    # boto3 reads AWS_DEFAULT_REGION; EKS (IRSA) and most tools also set AWS_REGION.
    region = (config.aws["region"] or boto3.session.Session().region_name
              or os.environ.get("AWS_REGION") or None)
    if not region:
        raise ConfigError("aws.region", "is not set and boto3 found no region either",
                          expected="aws.region in the YAML, or AWS_REGION in the environment")
    return region


BASE_CLASSES: dict[str, type] = {"source": Source, "sink": Sink, "acker": Acker}
"""What a factory of each kind must build (a transform is any callable, a Transform or not)."""


def _build(
    component: Registration,
    block: ComponentConfig,
    config: PipelineConfig,
    aws: AwsClients,
) -> Any:
    try:
        options = validate_options(component.spec.options, block.options, block.where,
                                   reserved=("type",))
        context = BuildContext(config=config, aws=aws, where=block.where,
                               base_dir=config.base_dir)
        built = component.spec.factory(options, context)
    except ConfigError as exc:
        error = config.explain(exc)
        if component.provider.origin != "built-in":
            error = error.with_plugin(f"{component.kind} {component.name!r} from "
                                      f"{component.provider}") if not error.plugin or \
                isinstance(error, ConfigErrors) else error
        raise error from None
    except Exception as exc:
        raise ConfigError(block.where, f"{component.kind} {component.name!r} from "
                                       f"{component.provider} could not be built: "
                                       f"{describe_plugin_error(exc, component.provider)}"
                          ) from None
    base = BASE_CLASSES.get(component.kind)
    if base is not None and not isinstance(built, base):
        raise ConfigError(block.where, f"{component.kind} {component.name!r} from "
                                       f"{component.provider} built a {type(built).__name__}, "
                                       f"which is not a {base.__name__}; subclass "
                                       f"sqs_processor.{base.__name__}")
    if base is None and not callable(built):
        raise ConfigError(block.where, f"transform {component.name!r} from "
                                       f"{component.provider} built a {type(built).__name__}, "
                                       "which is not callable; return a function "
                                       "record -> Record | None, or a sqs_processor.Transform")
    return built


def _error_sink_block(config: PipelineConfig, component: Registration) -> ComponentConfig:
    """The error sink's options: the main sink's when it is the same type (without its batch
    setting), the errors prefix where the sink takes one, then ``errors.options`` over them."""
    errors = config.errors
    options: dict[str, Any] = {}
    if component.name == config.sink.type:
        options.update(config.sink.options)
        options.pop("batch", None)  # error objects are one per message, whatever the main sink
    if any(option.name == "prefix" for option in component.spec.options):
        options["prefix"] = errors["prefix"]
    options.update(errors["options"] or {})
    options.pop("type", None)
    return ComponentConfig(type=component.name, options=options, where="errors.sink")


def _check_limits(config: PipelineConfig, source: Source, sink: Sink) -> None:
    """``service.max_in_flight`` must hold one receive and one batch of the sink."""
    service = config.service
    if isinstance(sink, BatchedSink) and service["max_in_flight"] < sink.batch_policy.max_records:
        max_records = sink.batch_policy.max_records
        raise config.explain(ConfigError(
            "service.max_in_flight", "is smaller than the sink's batch", value=service[
                "max_in_flight"], expected=f"at least batch.max_records ({max_records}), or "
                                           "batches only ever flush by age"))
    batch = int(source.max_batch)
    if service["max_in_flight"] < batch:
        raise config.explain(ConfigError(
            "service.max_in_flight", "is smaller than one receive", value=service["max_in_flight"],
            expected=f"at least the source's batch size ({batch})"))


def _build_error_sink(config: PipelineConfig, plugins: PluginManager,
                      build: Callable[[str, ComponentConfig], Any]) -> Sink | None:
    errors = config.errors
    if errors["sink"] == "none":
        return None
    block = _error_sink_block(config, plugins.get("sink", errors["sink"], "errors.sink"))
    if block.type == config.sink.type and block.options.get("prefix") == \
            config.sink.options.get("prefix", block.options.get("prefix")):
        raise config.explain(ConfigError(
            "errors.prefix", "is the main sink's prefix, so error objects would take the "
            "keys of archived messages", value=block.options.get("prefix"),
            expected="a different prefix, e.g. errors/"))
    error_sink = build("sink", block)
    if isinstance(error_sink, BatchedSink):
        raise config.explain(ConfigError(
            "errors.sink", "is a batched sink; error objects are written one per message",
            value=block.type, expected="a sink without batching (drop errors.options.batch)"))
    return error_sink


def build_pipeline(config: PipelineConfig, plugins: PluginManager) -> Pipeline:
    """Resolve and build every component the config names.

    Every component is built even after one failed, so that one run reports every problem
    (with those the config carries from ``load_config(defer_errors=True)``); raises
    :class:`ConfigError`, :class:`~sqs_processor.errors.ConfigErrors` for several.
    """
    problems = Problems(skip=config.unresolved)
    problems.found.extend(config.problems)
    service = config.service
    region = "us-east-1"  # stands in while problems are collected; nothing connects here
    with problems.collect():
        region = _resolve_region(config)
    aws = AwsClients(
        region=region,
        endpoint_url=config.aws["endpoint_url"],
        # Every thread that can call AWS at once: workers, pollers, ackers, the heartbeat and a
        # batch flusher.
        max_pool_connections=service["workers"] + service["pollers"] + service["ack_threads"] + 2,
        connect_timeout=config.aws["connect_timeout"],
        read_timeout=config.aws["read_timeout"],
        max_attempts=config.aws["max_attempts"],
    )
    used: dict[str, Registration] = {}

    def build(kind: str, block: ComponentConfig) -> Any:
        component = plugins.get(kind, block.type, block.where)
        used[block.where] = component
        return _build(component, block, config, aws)

    blocks = [("source", config.source), *(("transform", b) for b in config.transforms),
              ("sink", config.sink), ("acker", config.ack)]
    built: dict[str, Any] = {}
    for kind, block in blocks:
        with problems.collect():
            built[block.where] = build(kind, block)
    error_sink = None
    with problems.collect():
        error_sink = _build_error_sink(config, plugins, build)
    if "source" in built and "sink" in built:
        with problems.collect():
            _check_limits(config, built["source"], built["sink"])
    problems.raise_found()
    pipeline = Pipeline(config=config, plugins=plugins, aws=aws, source=built["source"],
                        transforms=[(b.type, built[b.where]) for b in config.transforms],
                        sink=built["sink"], acker=built["ack"], used=used, error_sink=error_sink)
    pipeline.health_checks = plugins.health_checks(pipeline)
    return pipeline


def load_pipeline(path: Path | None = None,
                  environ: Mapping[str, str] | None = None) -> Pipeline:
    """Read, check and build the pipeline file at ``path`` (the default when None), reporting
    every problem found in one :class:`ConfigError` (``ConfigErrors`` for several)."""
    from sqs_processor.config import load_config
    from sqs_processor.loaders import build_plugin_manager

    config = load_config(path, environ, defer_errors=True)
    try:
        manager = build_plugin_manager(config.plugin_settings)
    except ConfigError as exc:
        raise (ConfigErrors([*config.problems, exc]) if config.problems else exc) from None
    return build_pipeline(config, manager)


def close_pipeline(pipeline: Pipeline) -> None:
    """Close every component once, then the AWS clients; errors are collected, not raised."""
    errors: list[str] = []
    parts: list[tuple[str, Any]] = [
        ("source", pipeline.source), *pipeline.transforms, ("sink", pipeline.sink),
        ("ack", pipeline.acker), ("errors.sink", pipeline.error_sink)]
    for name, part in parts:
        # Transforms may be plain functions; only a Transform promises close().
        if part is None or (not isinstance(part, Source | Sink | Acker | Transform)):
            continue
        try:
            part.close()
        except Exception as exc:
            errors.append(f"{name}: {describe_error(exc)}")
    pipeline.aws.close()
    if errors:
        logging.getLogger(__name__).warning("errors while closing: %s", "; ".join(errors))
