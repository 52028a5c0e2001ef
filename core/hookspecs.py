"""Every hook a plugin can implement, documented hook by hook.

Hooks come in two groups.

* **Registration hooks** (``sqs_processor_sources`` ... ``sqs_processor_health_checks``) hand the
  engine named components. They do not run anything: the YAML decides which components are used
  and in what order, so plugin registration order never matters. The engine calls each plugin's
  implementation separately, so that two plugins registering the same name are reported together.
* **Lifecycle hooks** (``sqs_processor_startup`` ... ``sqs_processor_shutdown``) are for observers:
  every implementation is called, in no particular order, and return values are ignored. An
  exception in an observer is logged with the plugin's name and does not affect messages. The
  one exception is ``sqs_processor_startup``: a plugin that cannot start stops the run, with one
  error naming the plugin and the line that raised.

Every hook is called one plugin at a time, each through that plugin's own pluggy hook caller, so
pluggy's hook monitoring and tracing see every call and one plugin's exception never hides
another's.

Implement a hook by writing a function with the hook's name, marked ``@hookimpl``, taking any
subset of the listed arguments by name. Hook wrappers (``wrapper=True``) are rejected: the engine
calls each implementation on its own, so that one plugin's exception never hides another's. An
implementation whose arguments have default values is refused when it registers (pluggy versions
differ on whether they pass a defaulted argument, so its value would depend on the install).

Each example below is complete: save it as a ``.py`` file in a directory listed under
``plugins.paths`` in the pipeline YAML and it is loaded.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import pluggy

from sqs_processor.components import WriteResult
from sqs_processor.message import Message, Record
from sqs_processor.records import (
    AckerSpec,
    HealthCheckSpec,
    SinkSpec,
    SourceSpec,
    TransformSpec,
)

if TYPE_CHECKING:
    from sqs_processor.pipeline import Pipeline

hookspec = pluggy.HookspecMarker("sqs_processor")


# --------------------------------------------------------------------------------------------
# Registration: components the YAML can name
# --------------------------------------------------------------------------------------------


@hookspec
def sqs_processor_sources() -> SourceSpec | Iterable[SourceSpec] | None:
    """Register sources, the components that receive messages.

    Called once per pipeline build, before the YAML is resolved. Takes no arguments. Return one
    :class:`~sqs_processor.SourceSpec`, a list of them, or None. Every plugin's result is
    collected; a name registered twice is a configuration error naming both plugins.

    Example::

        from sqs_processor import Message, Option, Source, SourceSpec, hookimpl
        from datetime import UTC, datetime

        class FixedSource(Source):
            def __init__(self, bodies):
                self.bodies = list(bodies)

            def receive(self):
                batch, self.bodies = self.bodies[:10], self.bodies[10:]
                now = datetime.now(UTC)
                return [Message(f"fixed-{i}", f"rh-{i}", body, now) for i, body in enumerate(batch)]

            def idle_delay(self, received):
                return 1.0

        @hookimpl
        def sqs_processor_sources():
            return SourceSpec(
                name="fixed",
                factory=lambda options, context: FixedSource(options["bodies"]),
                description="Emits the bodies listed in the YAML, once.",
                options=(Option("bodies", list, description="Message bodies to emit."),),
            )
    """


@hookspec
def sqs_processor_transforms() -> TransformSpec | Iterable[TransformSpec] | None:
    """Register transforms, the steps listed under ``transforms:`` in the YAML.

    Called once per pipeline build. Takes no arguments. Return one
    :class:`~sqs_processor.TransformSpec`, a list of them, or None; all results are collected and
    duplicate names are an error. The factory gets the step's validated options and a
    :class:`~sqs_processor.BuildContext`, and returns a callable ``record -> Record | None``.
    Returning None from that callable drops the message (it is deleted without being written).

    Example::

        from sqs_processor import Option, TransformSpec, hookimpl

        def make_tagger(options, context):
            tag = options["tag"]

            def tag_record(record):
                record.document["tag"] = tag
                return record

            return tag_record

        @hookimpl
        def sqs_processor_transforms():
            return TransformSpec(
                name="tag",
                factory=make_tagger,
                description="Adds a fixed 'tag' field to every document.",
                options=(Option("tag", str, default="archived", description="The tag value."),),
            )
    """


@hookspec
def sqs_processor_sinks() -> SinkSpec | Iterable[SinkSpec] | None:
    """Register sinks, the components that store records.

    Called once per pipeline build. Takes no arguments. Return one
    :class:`~sqs_processor.SinkSpec`, a list of them, or None; all results are collected and
    duplicate names are an error. The sink's ``write`` must be idempotent per message id (see
    :class:`~sqs_processor.Sink`).

    Example::

        import threading
        from sqs_processor import Sink, SinkSpec, WriteResult, hookimpl

        class MemorySink(Sink):
            def __init__(self):
                self.objects = {}
                self.lock = threading.Lock()

            def write(self, record):
                key = record.message.message_id
                with self.lock:
                    created = key not in self.objects
                    self.objects.setdefault(key, dict(record.document))
                return WriteResult(location=f"memory:{key}", created=created)

        @hookimpl
        def sqs_processor_sinks():
            return SinkSpec(name="memory", factory=lambda options, context: MemorySink(),
                            description="Keeps documents in a dict (for experiments).")
    """


@hookspec
def sqs_processor_ackers() -> AckerSpec | Iterable[AckerSpec] | None:
    """Register ackers, the components that acknowledge (delete) finished messages.

    Called once per pipeline build. Takes no arguments. Return one
    :class:`~sqs_processor.AckerSpec`, a list of them, or None; all results are collected and
    duplicate names are an error. ``ack(messages)`` returns the messages it could not
    acknowledge as :class:`~sqs_processor.AckFailure` records.

    Example::

        from sqs_processor import Acker, AckerSpec, hookimpl

        class CountingAcker(Acker):
            def __init__(self):
                self.count = 0

            def ack(self, messages):
                self.count += len(messages)
                return []

        @hookimpl
        def sqs_processor_ackers():
            return AckerSpec(name="count_only", factory=lambda options, context: CountingAcker(),
                             description="Counts messages instead of deleting them.")
    """


@hookspec
def sqs_processor_health_checks(
    pipeline: Pipeline,
) -> HealthCheckSpec | Iterable[HealthCheckSpec] | None:
    """Contribute readiness checks to ``/readyz`` (and ``/health``).

    Called once, after the pipeline's components are built and before they start. ``pipeline`` is
    the built :class:`~sqs_processor.pipeline.Pipeline` (``pipeline.source``, ``.transforms``,
    ``.sink``, ``.acker``, ``.config``), so a plugin can check the components it provided. Return
    one :class:`~sqs_processor.HealthCheckSpec`, a list, or None; all results are collected.
    A check must answer quickly: it runs in the health server's thread. A check that raises is
    reported as failing, with the exception as its detail, and the other checks still run.

    Example::

        import shutil
        from sqs_processor import CheckResult, HealthCheckSpec, hookimpl

        def tmp_has_space():
            free = shutil.disk_usage("/tmp").free
            return CheckResult(ok=free > 10_000_000, detail=f"{free} bytes free in /tmp")

        @hookimpl
        def sqs_processor_health_checks(pipeline):
            return HealthCheckSpec(name="tmp_space", check=tmp_has_space,
                                   description="/tmp has room for spooled data.")
    """


# --------------------------------------------------------------------------------------------
# Lifecycle: observers, called in no particular order, results ignored
# --------------------------------------------------------------------------------------------


@hookspec
def sqs_processor_startup(pipeline: Pipeline) -> None:
    """Called once when the pipeline's components have started, just before the first poll.

    ``pipeline`` is the pipeline about to run. Called from the main thread. Every implementation
    is called; return values are ignored. An exception means the plugin could not start: the run
    stops before anything is received, with one error naming the plugin, its file and the line
    that raised, and the process exits with code 1.

    Example::

        import logging
        from sqs_processor import hookimpl

        @hookimpl
        def sqs_processor_startup(pipeline):
            logging.getLogger("my_plugin").info("pipeline %s is up", pipeline.describe_line())
    """


@hookspec
def sqs_processor_batch_received(pipeline: Pipeline, messages: Sequence[Message]) -> None:
    """Called after every receive that returned at least one message.

    ``pipeline`` is the running pipeline; ``messages`` are the envelopes just received, before any
    transform ran; read them, do not keep receipt handles. Called from a poller thread, so make
    it thread-safe and quick. Every implementation is called; return values are ignored;
    exceptions are logged.

    Example::

        from collections import Counter
        from sqs_processor import hookimpl

        RECEIVE_COUNTS = Counter()

        @hookimpl
        def sqs_processor_batch_received(messages):
            RECEIVE_COUNTS.update(m.receive_count for m in messages)
    """


@hookspec
def sqs_processor_message_written(pipeline: Pipeline, record: Record, result: WriteResult) -> None:
    """Called after the sink accepted a record, before its message is deleted.

    ``pipeline`` is the running pipeline, ``record`` what was written, ``result`` where
    (``result.location``) and whether this write created it (``result.created`` is False for a
    redelivery already stored). Called from a worker thread. Every implementation is called;
    return values are ignored; exceptions are logged and do not affect the message.

    Example::

        from sqs_processor import hookimpl

        WRITTEN = []

        @hookimpl
        def sqs_processor_message_written(record, result):
            WRITTEN.append((record.message.message_id, result.location))
    """


@hookspec
def sqs_processor_message_failed(
    pipeline: Pipeline, message: Message, stage: str, error: BaseException
) -> None:
    """Called when a message failed and is left in the queue for redelivery.

    ``pipeline`` is the running pipeline, ``message`` the envelope of the failed message,
    ``stage`` names where it failed (``transform:<name>`` or ``sink:<name>``) and ``error`` is
    the exception. Called from a worker thread. Every implementation is called;
    return values are ignored; exceptions are logged.

    Example::

        from collections import Counter
        from sqs_processor import hookimpl

        FAILURES = Counter()

        @hookimpl
        def sqs_processor_message_failed(stage, error):
            FAILURES[(stage, type(error).__name__)] += 1
    """


@hookspec
def sqs_processor_batch_acked(pipeline: Pipeline, messages: Sequence[Message]) -> None:
    """Called after the acker acknowledged (deleted) a batch of messages.

    ``pipeline`` is the running pipeline; ``messages`` are the ones acknowledged successfully
    (failures are not included). Called from one of the ack threads (``service.ack_threads``,
    several at once), so make it thread-safe. Every implementation is called; return values
    are ignored; exceptions are logged.

    Example::

        from sqs_processor import hookimpl

        DELETED = []

        @hookimpl
        def sqs_processor_batch_acked(messages):
            DELETED.extend(m.message_id for m in messages)
    """


@hookspec
def sqs_processor_shutdown(pipeline: Pipeline) -> None:
    """Called once when the pipeline has stopped: polling ended, in-flight work finished or
    released, deletes flushed, components closed.

    ``pipeline`` is the stopped pipeline; ``pipeline.stats.snapshot()`` has the final counts.
    Called from the main thread. Every implementation is called; return values are ignored;
    exceptions are logged.

    Example::

        import logging
        from sqs_processor import hookimpl

        @hookimpl
        def sqs_processor_shutdown(pipeline):
            stats = pipeline.stats.snapshot()
            logging.getLogger("my_plugin").info("processed %d messages", stats["processed"])
    """


# --------------------------------------------------------------------------------------------
# The hook names, for the engine (defined here once, from the functions above)
# --------------------------------------------------------------------------------------------

REGISTRATION_HOOKS = {
    "source": sqs_processor_sources.__name__,
    "transform": sqs_processor_transforms.__name__,
    "sink": sqs_processor_sinks.__name__,
    "acker": sqs_processor_ackers.__name__,
}
"""Component kind -> the registration hook that provides it."""

HEALTH_HOOK = sqs_processor_health_checks.__name__

OBSERVER_HOOKS = tuple(hook.__name__ for hook in (
    sqs_processor_startup, sqs_processor_batch_received, sqs_processor_message_written,
    sqs_processor_message_failed, sqs_processor_batch_acked, sqs_processor_shutdown))
"""The lifecycle hooks, in the order a run meets them."""
