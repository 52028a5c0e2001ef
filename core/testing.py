"""A test kit for plugin authors: run a pipeline in memory, in one call, with no AWS and no threads.

::

    from sqs_processor.testing import run_pipeline

    result = run_pipeline(['{"card": "4111111111111111"}'],
                          transforms=["json_parse", {"type": "redact", "paths": ["card"]}],
                          plugins=[redact])          # the module with your @hookimpl functions
    assert result.documents[0]["parsed_body"] == {"card": "[REDACTED]"}

:func:`run_pipeline` builds the pipeline exactly as ``sqs-processor run`` does (same YAML checks,
same plugin loading, same factories), swaps the source, the sink and the acker for in-memory ones,
and runs every message through the engine's own per-message code
(:func:`sqs_processor.process.process_message`): a transform that returns ``None`` drops the
message and it is acknowledged; one that raises fails that message only, which is *not*
acknowledged (SQS would redeliver it); a record whose envelope was replaced is that transform's
error. The result says what happened to each message.

The pieces are usable on their own: :class:`ListSource` (messages from a list),
:class:`ListSink` (keeps what it is given, as the S3 sink would store it), :class:`RecordingAcker`
(remembers what was acknowledged) and :func:`make_message` (an SQS-shaped envelope).

For pytest, the ``sqs_plugins`` fixture (a :class:`PluginSandbox`) is registered automatically
when sqs-processor is installed (entry point ``pytest11``); with plugin autoloading disabled, add
``pytest_plugins = ["sqs_processor.pytest_plugin"]`` to a ``conftest.py``. This module itself
never imports pytest.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import os
import sys
import threading
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import boto3
import orjson

from sqs_processor import hookimpl
from sqs_processor.components import Acker, AckFailure, Sink, Source, WriteResult
from sqs_processor.config import parse_config, read_document
from sqs_processor.errors import MessageError, describe_error
from sqs_processor.manager import (
    PluginManager,
    Provider,
    build_plugin_manager,
    call_impl,
    load_plugin_file,
    source_file,
)
from sqs_processor.message import Message, Record
from sqs_processor.pipeline import build_pipeline, close_pipeline
from sqs_processor.process import Outcome, process_message
from sqs_processor.records import AckerSpec, SinkSpec, SourceSpec

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

MessageLike = Message | str | bytes | Mapping[str, Any] | list[Any]


# --------------------------------------------------------------------------------------------
# Messages
# --------------------------------------------------------------------------------------------


def _attribute(value: Any) -> dict[str, str]:
    if isinstance(value, Mapping):  # already in SQS's shape
        return {str(k): str(v) for k, v in value.items()}
    if isinstance(value, bytes):
        return {"DataType": "Binary", "BinaryValue": base64.b64encode(value).decode("ascii")}
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise TypeError(f"a message attribute is text, a number, bytes or an SQS-shaped "
                        f"mapping, not {type(value).__name__}")
    if isinstance(value, str):
        return {"DataType": "String", "StringValue": value}
    return {"DataType": "Number", "StringValue": str(value)}


def make_message(
    body: str | bytes | Mapping[str, Any] | list[Any],
    *,
    message_id: str | None = None,
    message_attributes: Mapping[str, Any] | None = None,
    attributes: Mapping[str, str] | None = None,
    sent_at: datetime | None = None,
    receive_count: int = 1,
    receipt_handle: str | None = None,
) -> Message:
    """An envelope shaped like one the SQS source returns.

    ``body`` is text; bytes are decoded as UTF-8 and a dict or list is encoded as JSON.
    ``message_attributes`` take plain values (``{"tenant": "acme", "size": 3, "raw": b"..."}``
    become String, Number and Binary attributes) or SQS's own shape. ``attributes`` are extra
    system attributes; ``SentTimestamp``, ``ApproximateReceiveCount`` and friends are filled in
    from ``sent_at`` (default: now) and ``receive_count``.
    """
    if isinstance(body, bytes):
        body = body.decode("utf-8")
    elif not isinstance(body, str):
        body = orjson.dumps(body).decode("utf-8")
    now = datetime.now(UTC)
    sent = sent_at or now
    if sent.tzinfo is None:
        raise ValueError("sent_at must be timezone-aware (for example datetime.now(UTC))")
    message_id = message_id or str(uuid.uuid4())
    system = {
        "SenderId": "AIDASQSPROCESSORTESTING",
        "SentTimestamp": str(int(sent.timestamp() * 1000)),
        "ApproximateReceiveCount": str(receive_count),
        "ApproximateFirstReceiveTimestamp": str(int(now.timestamp() * 1000)),
        **dict(attributes or {}),
    }
    return Message(
        message_id=message_id,
        receipt_handle=receipt_handle or f"receipt-{message_id}",
        body=body,
        received_at=now,
        attributes=system,
        message_attributes={name: _attribute(value)
                            for name, value in (message_attributes or {}).items()},
    )


# --------------------------------------------------------------------------------------------
# In-memory components
# --------------------------------------------------------------------------------------------


class ListSource(Source):
    """Returns the given messages, ``max_batch`` per receive, then nothing.

    Items that are not already :class:`Message` objects go through :func:`make_message`, with
    ids ``message-1``, ``message-2``... in list order. Messages the runner hands back are kept
    in :attr:`released`.
    """

    def __init__(self, messages: Iterable[MessageLike] = (), max_batch: int = 10) -> None:
        if not 1 <= max_batch <= 10:
            raise ValueError("max_batch must be from 1 to 10, as for SQS")
        self.max_batch = max_batch
        self._pending: list[Message] = []
        self._count = 0
        self._lock = threading.Lock()
        self.released: list[Message] = []
        self.add(*messages)

    def add(self, *messages: MessageLike) -> list[Message]:
        """Queue more messages; returns them as envelopes."""
        added = []
        with self._lock:
            for item in messages:
                if not isinstance(item, Message):
                    self._count += 1
                    item = make_message(item, message_id=f"message-{self._count}")
                added.append(item)
            self._pending.extend(added)
        return added

    def receive(self) -> list[Message]:
        with self._lock:
            batch, self._pending = (self._pending[:self.max_batch],
                                    self._pending[self.max_batch:])
        return batch

    def idle_delay(self, received: int) -> float:
        return 0.0

    def release(self, messages: Sequence[Message]) -> None:
        self.released.extend(messages)


class ListSink(Sink):
    """Keeps each record it is given, as the S3 sink would store it.

    The document is encoded to JSON and decoded again, so a test sees exactly the stored form
    (a value JSON cannot hold fails the message with a :class:`MessageError`, as in S3). Like
    every sink it is idempotent per message id: a second write of the same id keeps the first
    document and reports ``created=False``.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.records: list[Record] = []
        self.by_id: dict[str, dict[str, Any]] = {}

    def write(self, record: Record) -> WriteResult:
        try:
            stored = orjson.loads(orjson.dumps(record.document))
        except (TypeError, orjson.JSONEncodeError) as exc:
            raise MessageError(f"document cannot be encoded as JSON: {exc}") from None
        message_id = record.message.message_id
        with self._lock:
            if message_id in self.by_id:
                return WriteResult(f"memory:{message_id}", created=False)
            self.by_id[message_id] = stored
            self.records.append(Record(record.message, stored, copy.deepcopy(record.metadata)))
        return WriteResult(f"memory:{message_id}", created=True)

    @property
    def documents(self) -> list[dict[str, Any]]:
        """The stored documents, in the order they were written."""
        return [record.document for record in self.records]


class RecordingAcker(Acker):
    """Remembers every message acknowledged; ids in ``fail`` are refused (not retryable)."""

    def __init__(self, fail: Iterable[str] = ()) -> None:
        self.fail = set(fail)
        self.acked: list[Message] = []
        self.calls = 0

    def ack(self, messages: Sequence[Message]) -> list[AckFailure]:
        self.calls += 1
        failures = [AckFailure(m, "RefusedByTest", "listed in RecordingAcker.fail")
                    for m in messages if m.message_id in self.fail]
        self.acked.extend(m for m in messages if m.message_id not in self.fail)
        return failures

    @property
    def acked_ids(self) -> list[str]:
        return [m.message_id for m in self.acked]


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
    messages are acknowledged in batches. Unlike the runner, failed acknowledgements are not
    retried. A configuration problem raises :class:`~sqs_processor.ConfigError`.
    """
    environ = os.environ if environ is None else environ
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
    if keep_sink and sink is not None:
        raise ValueError("pass either sink= or keep_sink=True, not both")
    if keep_sink and "sink" not in document:
        raise ValueError("keep_sink=True needs a config with a sink section")

    source = ListSource(messages)
    acker = RecordingAcker()
    kit_sink = None if keep_sink else (sink if sink is not None else ListSink())
    document["source"] = {"type": KIT_COMPONENT}
    document["ack"] = {"type": KIT_ACKER}
    if not keep_sink:
        document["sink"] = {"type": KIT_COMPONENT}
    aws = document.setdefault("aws", {}) or {}
    document["aws"] = aws
    if isinstance(aws, dict) and not aws.get("region") and not boto3.session.Session().region_name:
        aws["region"] = "us-east-1"  # only so the pipeline builds; the kit calls no AWS

    parsed = parse_config(document, path=path, base_dir=base_dir, environ=environ)
    settings = parsed.plugin_settings
    settings = dataclasses.replace(settings,
                                   load_entrypoints=settings.load_entrypoints and entry_points)
    entries = [("sqs_processor.testing", _KitPlugin(source, kit_sink, acker), Provider(
        "module", "sqs_processor.testing", name="testing")), *_plugin_entries(plugins)]
    manager = build_plugin_manager(settings, extra_plugins=entries)
    pipeline = build_pipeline(dataclasses.replace(parsed, plugin_settings=settings), manager)
    return _run(pipeline, source, acker, raise_errors)


def _run(pipeline: Any, source: ListSource, acker: RecordingAcker,
         raise_errors: bool) -> RunResult:
    observers = {hook: pipeline.plugins.observers(hook) for hook in (
        "sqs_processor_batch_received", "sqs_processor_message_written",
        "sqs_processor_message_failed", "sqs_processor_batch_acked", "sqs_processor_shutdown")}
    observer_errors: list[str] = []

    def observe(hook: str, **kwargs: Any) -> None:
        for function, argnames, plugin_name in observers[hook]:
            try:
                call_impl(function, argnames, kwargs)
            except Exception as exc:
                observer_errors.append(f"{hook} of plugin {plugin_name} raised "
                                       f"{describe_error(exc)}")

    for step in pipeline.start_steps():
        try:
            step.run()
        except Exception as exc:
            close_pipeline(pipeline)
            raise StartError(f"could not start {step.describe_failure(exc)}") from exc

    outcomes: list[Outcome] = []
    failures: list[Failure] = []
    ack_failures: list[AckFailure] = []
    sink_stage = f"sink:{pipeline.config.sink.type}"
    limit = max(1, int(getattr(pipeline.acker, "max_batch", 10)))
    try:
        while batch := pipeline.source.receive():
            pipeline.stats.add("received", len(batch))
            observe("sqs_processor_batch_received", pipeline=pipeline, messages=batch)
            done: list[Message] = []
            for message in batch:
                outcome = process_message(message, pipeline.transforms, pipeline.sink,
                                          sink_stage)
                outcomes.append(outcome)
                if outcome.status == "failed":
                    assert outcome.error is not None
                    pipeline.stats.add_failure(outcome.stage)
                    failures.append(Failure(message, outcome.stage, outcome.error,
                                            pipeline.provider_of_stage(outcome.stage)))
                    observe("sqs_processor_message_failed", pipeline=pipeline, message=message,
                            stage=outcome.stage, error=outcome.error)
                    continue
                if outcome.status == "dropped":
                    pipeline.stats.add("dropped")
                else:
                    assert outcome.result is not None
                    pipeline.stats.add("written" if outcome.result.created else "existing")
                    observe("sqs_processor_message_written", pipeline=pipeline,
                            record=outcome.record, result=outcome.result)
                done.append(message)
            for start in range(0, len(done), limit):
                chunk = done[start:start + limit]
                refused = list(pipeline.acker.ack(chunk))
                ack_failures.extend(refused)
                refused_ids = {id(f.message) for f in refused}
                finished = [m for m in chunk if id(m) not in refused_ids]
                pipeline.stats.add("processed", len(finished))
                pipeline.stats.add("ack_failed", len(refused))
                if finished:
                    observe("sqs_processor_batch_acked", pipeline=pipeline, messages=finished)
    finally:
        observe("sqs_processor_shutdown", pipeline=pipeline)
        close_pipeline(pipeline)

    result = RunResult(outcomes=outcomes, failures=failures, sink=pipeline.sink, acker=acker,
                       ack_failures=ack_failures, observer_errors=observer_errors,
                       failures_by_stage=pipeline.stats.failures_by_stage())
    if raise_errors:
        result.raise_first_failure()
    return result


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
        from sqs_processor.config import PluginSettings

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
