"""A test kit for plugin authors: run a pipeline in memory, in one call, with no AWS and no threads.

::

    from sqs_processor.testing import run_pipeline

    result = run_pipeline(['{"card": "4111111111111111"}'],
                          transforms=["json_parse", {"type": "redact", "paths": ["card"]}],
                          plugins=[redact])          # the module with your @hookimpl functions
    assert result.documents[0]["parsed_body"] == {"card": "[REDACTED]"}

:func:`run_pipeline` builds the pipeline exactly as ``sqs-processor run`` does (same YAML checks,
same plugin loading, same factories), swaps the source, the sink and the acker for in-memory ones,
and drives the engine's own units in this thread: the same poller step, the same worker step
(transforms, sink, error sink, the system-failure rule), the same
:class:`~sqs_processor.settlement.Settlement` and the same acknowledgement rules (batches of the
acker's ``max_batch``, retryable failures retried) as the runner. So: a transform that returns
``None`` drops the message and it is acknowledged; one that raises fails that message only,
which is *not* acknowledged (SQS would redeliver it); a record whose envelope was replaced is
that transform's error; a system failure (``SystemFailure``, an AWS outage) holds the message
and stops receiving, and what is held when the run ends is released, as a runner would at
shutdown. The result says what happened to each message.

The pieces are usable on their own: :class:`ListSource` (messages from a list),
:class:`ListSink` (keeps what it is given, as the S3 sink would store it), :class:`RecordingAcker`
(remembers what was acknowledged) and :func:`make_message` (an SQS-shaped envelope).

For pytest, the ``sqs_plugins`` fixture (a :class:`PluginSandbox`) is registered automatically
when sqs-processor is installed (entry point ``pytest11``); with plugin autoloading disabled, add
``pytest_plugins = ["sqs_processor.pytest_plugin"]`` to a ``conftest.py``. This module itself
never imports pytest.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import sys
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import boto3

from sqs_processor import hookimpl
from sqs_processor.components import Acker, AckFailure, Sink, Source
from sqs_processor.config import PluginSettings, parse_config
from sqs_processor.errors import describe_error
from sqs_processor.inflight import Job
from sqs_processor.loaders import build_plugin_manager, load_plugin_file
from sqs_processor.manager import PluginManager
from sqs_processor.message import Message, Record
from sqs_processor.pipeline import Pipeline, build_pipeline, close_pipeline
from sqs_processor.process import Outcome
from sqs_processor.provenance import Provider, source_file
from sqs_processor.records import AckerSpec, SinkSpec, SourceSpec
from sqs_processor.runner import Units, assemble
from sqs_processor.telemetry import Telemetry
from sqs_processor.testing_components import (
    ListSink,
    ListSource,
    MessageLike,
    RecordingAcker,
    make_message,
)
from sqs_processor.yaml_loading import read_document

__all__ = [
    "Failure",
    "ListSink",
    "ListSource",
    "PluginSandbox",
    "RecordingAcker",
    "RunResult",
    "StartError",
    "make_message",
    "run_pipeline",
]

KIT_COMPONENT = "testing.list"
"""The name of the kit's source and sink; the acker is ``testing.recording``."""
KIT_ACKER = "testing.recording"


class _KitPlugin:
    """Registers the kit's components, handing out the instances one run uses."""

    def __init__(self, source: Source, sink: Sink | None, acker: Acker) -> None:
        self.source, self.sink, self.acker = source, sink, acker

    @hookimpl
    def sqs_processor_sources(self):
        return SourceSpec(KIT_COMPONENT, lambda options, context: self.source,
                          "Messages from a Python list (sqs_processor.testing).")

    @hookimpl
    def sqs_processor_sinks(self):
        if self.sink is None:
            return None
        return SinkSpec(KIT_COMPONENT, lambda options, context: self.sink,
                        "Keeps records in memory (sqs_processor.testing).")

    @hookimpl
    def sqs_processor_ackers(self):
        return AckerSpec(KIT_ACKER, lambda options, context: self.acker,
                         "Records acknowledged messages (sqs_processor.testing).")


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Failure:
    """A message that failed: where (``transform:<name>``, ``sink:<name>``), why, and the plugin
    that provides that stage."""

    message: Message
    stage: str
    error: BaseException
    provider: Provider | None

    def __str__(self) -> str:
        plugin = f" ({self.provider})" if self.provider else ""
        return (f"message {self.message.message_id} failed at {self.stage}{plugin}: "
                f"{describe_error(self.error)}")


class StartError(RuntimeError):
    """A component's ``start()`` or a plugin's ``sqs_processor_startup`` raised."""


@dataclasses.dataclass
class RunResult:
    """What one :func:`run_pipeline` call did to each message, in the order received."""

    outcomes: list[Outcome]
    failures: list[Failure]
    sink: Any
    source: ListSource
    acker: RecordingAcker
    ack_failures: list[AckFailure]
    observer_errors: list[str]
    failures_by_stage: dict[str, int]

    @property
    def documents(self) -> list[dict[str, Any]]:
        """The stored documents (as JSON would hold them, when the sink is the kit's)."""
        if isinstance(self.sink, ListSink):
            return self.sink.documents
        return [o.record.document for o in self.outcomes if o.record is not None]

    @property
    def written(self) -> list[Record]:
        """The records the sink accepted, as they reached it."""
        return [o.record for o in self.outcomes if o.record is not None]

    @property
    def dropped(self) -> list[Message]:
        """Messages a transform dropped; they are acknowledged, never written."""
        return [o.message for o in self.outcomes if o.status == "dropped"]

    @property
    def failed(self) -> list[Message]:
        """Messages that failed; they are not acknowledged, so SQS would redeliver them."""
        return [f.message for f in self.failures]

    @property
    def acked(self) -> list[Message]:
        return list(self.acker.acked)

    @property
    def released(self) -> list[Message]:
        """Messages handed back unprocessed: held by a system failure when the run ended."""
        return list(self.source.released)

    def outcome(self, message_id: str) -> Outcome:
        for outcome in self.outcomes:
            if outcome.message.message_id == message_id:
                return outcome
        raise KeyError(f"no message {message_id!r} went through this run")

    def raise_first_failure(self) -> None:
        """Re-raise the first failure's own exception (with its traceback), if there is one."""
        if self.failures:
            raise self.failures[0].error



# --------------------------------------------------------------------------------------------
# The one-call runner
# --------------------------------------------------------------------------------------------


def _plugin_entries(plugins: Iterable[Any]) -> list[tuple[str, object]]:
    entries = []
    for i, plugin in enumerate(plugins):
        if isinstance(plugin, tuple) and len(plugin) in (2, 3) and isinstance(plugin[0], str):
            entries.append(plugin)
        elif isinstance(plugin, ModuleType):
            entries.append((plugin.__name__, plugin))
        else:
            entries.append((f"{type(plugin).__name__}-{i}-{id(plugin):x}", plugin))
    return entries



def _document(config: str | os.PathLike[str] | Mapping[str, Any] | None,
              transforms: Sequence[str | Mapping[str, Any]] | None,
              keep_sink: bool) -> tuple[dict[str, Any], Path | None, Path]:
    """The pipeline document the kit runs, its path and its base folder."""
    if config is None:
        document: dict[str, Any] = {}
        path, base_dir = None, Path.cwd()
    elif isinstance(config, Mapping):
        document, path, base_dir = copy.deepcopy(dict(config)), None, Path.cwd()
    else:
        path = Path(config)
        document, base_dir = read_document(path), path.resolve().parent
    if transforms is not None:
        document["transforms"] = list(transforms)
    if keep_sink and "sink" not in document:
        raise ValueError("keep_sink=True needs a config with a sink section")
    document["source"] = {"type": KIT_COMPONENT}
    document["ack"] = {"type": KIT_ACKER}
    if not keep_sink:
        document["sink"] = {"type": KIT_COMPONENT}
    aws = document.setdefault("aws", {}) or {}
    document["aws"] = aws
    if isinstance(aws, dict) and not aws.get("region") and not boto3.session.Session().region_name:
        aws["region"] = "us-east-1"  # only so the pipeline builds; the kit calls no AWS
    return document, path, base_dir


def run_pipeline(
    messages: Iterable[MessageLike] = (),
    *,
    transforms: Sequence[str | Mapping[str, Any]] | None = None,
    config: str | os.PathLike[str] | Mapping[str, Any] | None = None,
    plugins: Iterable[Any] = (),
    sink: Sink | None = None,
    keep_sink: bool = False,
    entry_points: bool = False,
    environ: Mapping[str, str] | None = None,
    raise_errors: bool = False,
) -> RunResult:
    """Run ``messages`` through a pipeline in this thread and return what happened.

    * ``transforms``: the YAML's transform steps (``"json_parse"`` or ``{"type": ..., options}``).
    * ``config``: a pipeline YAML file (or the same as a dict); its transforms and plugin settings
      are used, relative paths starting at its folder. Its source, sink and acker are replaced by
      the kit's, unless ``keep_sink`` keeps its sink.
    * ``plugins``: plugin objects to register (modules, instances, or ``(name, plugin)``).
    * ``sink``: a sink instance to use instead of the :class:`ListSink`.
    * ``entry_points``: also load installed distributions' plugins (off, so tests are hermetic).
    * ``environ``: the environment for ``${VAR}`` references (default ``os.environ``).
    * ``raise_errors``: re-raise the first failure's exception instead of returning it.

    Components are started and closed, ``sqs_processor_startup`` and the other lifecycle hooks
    are called as in a real run (a startup failure raises :class:`StartError`), and finished
    messages are acknowledged in batches with the runner's retry rules. A configuration problem
    raises :class:`~sqs_processor.ConfigError`.
    """
    if keep_sink and sink is not None:
        raise ValueError("pass either sink= or keep_sink=True, not both")
    document, path, base_dir = _document(config, transforms, keep_sink)
    source = ListSource(messages)
    acker = RecordingAcker()
    kit_sink = None if keep_sink else (sink if sink is not None else ListSink())
    parsed = parse_config(document, path=path, base_dir=base_dir,
                          environ=os.environ if environ is None else environ)
    settings = parsed.plugin_settings
    settings = dataclasses.replace(settings,
                                   load_entrypoints=settings.load_entrypoints and entry_points)
    entries = [("sqs_processor.testing", _KitPlugin(source, kit_sink, acker), Provider(
        "module", "sqs_processor.testing", name="testing")), *_plugin_entries(plugins)]
    manager = build_plugin_manager(settings, extra_plugins=entries)
    pipeline = build_pipeline(dataclasses.replace(parsed, plugin_settings=settings), manager)
    return _run(pipeline, source, acker, raise_errors)


def _run(pipeline: Pipeline, source: ListSource, acker: RecordingAcker,
         raise_errors: bool) -> RunResult:
    observer_errors: list[str] = []

    def collect(hook: str, plugin: str, error: BaseException) -> None:
        observer_errors.append(f"{hook} of plugin {plugin} raised {describe_error(error)}")

    for step in pipeline.start_steps():
        try:
            step.run()
        except Exception as exc:
            close_pipeline(pipeline)
            raise StartError(f"could not start {step.describe_failure(exc)}") from exc
    telemetry = Telemetry()  # metrics in memory, spans no-ops
    received: list[Job] = []
    units = assemble(pipeline, telemetry, threaded=False, stop=threading.Event(),
                     abandon=threading.Event(), hand_off=received.append,
                     on_observer_error=collect)
    outcomes: list[Outcome] = []
    ack_failures: list[AckFailure] = []
    try:
        ack_failures += _drive(units, received, outcomes)
    finally:
        units.retries.cancel_all()  # held by a system failure: released, as at shutdown
        units.observers.notify("sqs_processor_shutdown", pipeline=pipeline)
        close_pipeline(pipeline)
        telemetry.shutdown()
    failures = [Failure(o.message, o.stage, o.error, pipeline.provider_of_stage(o.stage))
                for o in outcomes if o.status == "failed" and o.error is not None]
    result = RunResult(outcomes=outcomes, failures=failures, sink=pipeline.sink, source=source,
                       acker=acker, ack_failures=ack_failures, observer_errors=observer_errors,
                       failures_by_stage=pipeline.stats.failures_by_stage())
    if raise_errors:
        result.raise_first_failure()
    return result


def _drive(units: Units, received: list[Job], outcomes: list[Outcome]) -> list[AckFailure]:
    """Receive, process and acknowledge until the source is empty, or until messages held by
    a system failure leave no room (a runner would stop receiving then too)."""
    gave_up: list[AckFailure] = []
    poller = units.poller
    while (reservation := units.inflight.try_reserve(poller.reserve)) is not None \
            and poller.poll_once(reservation):
        for job in received:
            outcomes.append(units.workers.process(job))
        received.clear()
        gave_up += units.acks.send_queued()
    if units.batches is not None:  # open batches are written at the end, as at shutdown
        units.batches.batcher.flush_here()
        gave_up += units.acks.send_queued()
    return gave_up


# --------------------------------------------------------------------------------------------
# Temporary plugins (the sqs_plugins fixture)
# --------------------------------------------------------------------------------------------


class PluginSandbox:
    """Plugins registered for one test and removed after it.

    ``register(plugin)`` adds a plugin object (a module with ``@hookimpl`` functions, or an
    instance of a class with ``@hookimpl`` methods); ``load_file(path)`` imports a drop-in file
    the way ``plugins.paths`` does and registers it. :attr:`manager` is a fresh
    :class:`~sqs_processor.manager.PluginManager` with the built-ins and these plugins (no entry
    points), and :meth:`run` is :func:`run_pipeline` with them registered. On exit every plugin
    is unregistered and every drop-in module the sandbox imported is removed from
    ``sys.modules``, so nothing leaks into the next test.
    """

    def __init__(self) -> None:
        self._plugins: list[tuple[str, object, Provider]] = []
        self._modules: list[str] = []

    def register(self, plugin: object, name: str | None = None) -> object:
        """Register ``plugin`` for the rest of the test; returns it."""
        if any(p is plugin for _, p, _ in self._plugins):
            raise ValueError(f"{plugin!r} is already registered")
        if name is None:
            [(name, _)] = _plugin_entries([plugin])
        if any(n == name for n, _, _ in self._plugins):
            raise ValueError(f"a plugin named {name!r} is already registered")
        self._plugins.append((name, plugin, Provider("module", name, name=name,
                                                     path=source_file(plugin))))
        return plugin

    def load_file(self, path: str | os.PathLike[str]) -> ModuleType:
        """Import a drop-in plugin file and register it as ``plugins.paths`` would."""
        file = Path(path).resolve()
        module = load_plugin_file(file)
        self._modules.append(module.__name__)
        self._plugins.append((f"file:{file}", module,
                              Provider("file", str(file), name=file.stem, path=str(file))))
        return module

    def unregister(self, plugin: object) -> None:
        before = len(self._plugins)
        self._plugins = [entry for entry in self._plugins
                         if entry[1] is not plugin and entry[0] != plugin]
        if len(self._plugins) == before:
            raise ValueError(f"{plugin!r} is not registered")

    @property
    def plugins(self) -> list[object]:
        return [plugin for _, plugin, _ in self._plugins]

    @property
    def manager(self) -> PluginManager:
        """A new plugin manager: the built-ins plus the plugins registered so far."""
        return build_plugin_manager(PluginSettings(base_dir=Path.cwd(), load_entrypoints=False),
                                    extra_plugins=list(self._plugins))

    def run(self, messages: Iterable[MessageLike] = (), **kwargs: Any) -> RunResult:
        """:func:`run_pipeline` with this sandbox's plugins (and any ``plugins=`` given)."""
        extra = list(kwargs.pop("plugins", ()))
        return run_pipeline(messages, plugins=[*self._plugins, *extra], **kwargs)

    def close(self) -> None:
        self._plugins.clear()
        for name in self._modules:
            sys.modules.pop(name, None)
        self._modules.clear()

    def __enter__(self) -> PluginSandbox:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
