"""Running a built pipeline: pollers, workers and the acker, in threads.

* **Pollers** (``service.pollers``) call ``source.receive()``. Before each receive a poller
  reserves as many in-flight slots as the receive can return, so at most
  ``service.max_in_flight`` messages are ever held. A receive error backs off exponentially
  (with jitter) and the source's readiness check reports it.
* **Workers** (``service.workers``) run each message through the transforms in YAML order and
  hand it to the sink. A message whose write succeeded, or that a transform dropped, goes to the
  acker; a message that failed anywhere is left alone, so SQS redelivers it after its
  visibility timeout.
* **The acker** thread batches finished messages (up to the acker's ``max_batch``, waiting at
  most :data:`ACK_LINGER_SECONDS` for a batch to fill) and retries failed entries that are
  retryable.

Shutdown (:meth:`Runner.stop`, called on SIGTERM/SIGINT): pollers stop after the receive in
progress, and release whatever it returns; workers finish in-flight messages until
``service.shutdown_grace_seconds`` have passed; what is still unfinished then is released
(visibility 0) for another consumer; pending deletes are flushed; components close.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode

from sqs_processor import telemetry as tel
from sqs_processor.batching import Batch, Batcher, BatchPolicy
from sqs_processor.components import AckFailure, WriteResult
from sqs_processor.errors import (
    SYSTEM_ERROR_CODES,
    describe_error,
    error_code,
    is_system_failure,
)
from sqs_processor.manager import call_impl
from sqs_processor.message import Message, Record
from sqs_processor.pipeline import Pipeline, close_pipeline
from sqs_processor.process import process_message
from sqs_processor.telemetry import Telemetry

log = logging.getLogger("sqs_processor.runner")

ACK_LINGER_SECONDS = 0.05
ACK_ATTEMPTS = 3
BACKOFF_START_SECONDS = 1.0
BACKOFF_MAX_SECONDS = 60.0
MAX_VISIBILITY_SECONDS = 43200  # SQS: a message can stay hidden at most 12 hours in all
HEARTBEAT_MARGIN = 0.6  # extend when less than this share of the visibility timeout is left
SYSTEM_RETRIES_BEFORE_BLAME = 3  # system failures of one message while others succeed
OBSERVER_HOOKS = (
    "sqs_processor_startup",
    "sqs_processor_batch_received",
    "sqs_processor_message_written",
    "sqs_processor_message_failed",
    "sqs_processor_batch_acked",
    "sqs_processor_shutdown",
)


@dataclass(eq=False)
class Job:
    """One message in flight and its ``process`` span. The runner owns it; plugins never see it."""

    message: Message
    span: Span
    context: Context
    outcome: str = ""
    written: bool = False
    picked_up: float = 0.0
    received: float = 0.0  # monotonic time of the receive call that returned it
    visible_until: float = float("inf")  # monotonic; when its visibility runs out
    extend_failed: bool = False
    system_retries: int = 0
    record: Record | None = None  # batched mode: the record waiting in its batch
    writes_seen: int = 0  # the runner's successful-write count at its first system failure


class Runner:
    """Drives one pipeline until :meth:`stop` is called. Not reusable after it returns.

    ``telemetry`` receives the traces and metrics; without one, metrics are still counted (for
    ``/metrics``) and spans are no-ops.
    """

    def __init__(self, pipeline: Pipeline, telemetry: Telemetry | None = None) -> None:
        self.pipeline = pipeline
        self._owns_telemetry = telemetry is None
        self.telemetry = telemetry or Telemetry()
        self.metrics = self.telemetry.metrics
        self.tracer = self.telemetry.tracer
        service = pipeline.config.service
        self.max_in_flight: int = service["max_in_flight"]
        self.worker_count: int = service["workers"]
        self.poller_count: int = service["pollers"]
        self.grace_seconds: float = service["shutdown_grace_seconds"]
        self.heartbeat_enabled: bool = service.get("heartbeat", True)
        self.ack_threads: int = service.get("ack_threads", 2)
        self.system_backoff_max: float = service.get("system_backoff_max_seconds",
                                                      BACKOFF_MAX_SECONDS)
        errors = pipeline.config.errors
        self.error_sink = pipeline.error_sink
        self.error_after: int = errors["after_receives"] if self.error_sink is not None else 0
        aws = pipeline.config.aws
        attempts = aws["max_attempts"]
        # How long one receive may take before the poll loop counts as stuck (liveness).
        self.receive_allowance = (aws["read_timeout"] + aws["connect_timeout"]) * attempts + 30
        self.source = pipeline.source
        self.sink = pipeline.sink
        self.acker = pipeline.acker
        self.source_label = getattr(self.source, "queue_name", pipeline.config.source.type)
        self.sink_label = pipeline.config.sink.type
        self.sink_stage = f"sink:{self.sink_label}"
        self.ack_label = pipeline.config.ack.type
        # Attribute sets built once: metric labels and span attributes per queue.
        self._queue_attributes = {"queue": self.source_label}
        self._poll_messages = {"queue": self.source_label, "outcome": "messages"}
        self._poll_empty = {"queue": self.source_label, "outcome": "empty"}
        self._poll_error = {"queue": self.source_label, "outcome": "error"}
        system = getattr(self.source, "messaging_system", "aws_sqs")
        self._queue_span_attributes = {tel.MESSAGING_SYSTEM: system,
                                       tel.DESTINATION: self.source_label}
        self._receive_attributes = {**self._queue_span_attributes, tel.OPERATION_TYPE: "receive",
                                    tel.OPERATION_NAME: "receive"}
        self.state = "created"

        self._stop = threading.Event()
        self._abandon = threading.Event()
        self._started = threading.Event()
        self._cond = threading.Condition()
        self._in_flight = 0
        self._jobs: dict[int, Job] = {}  # id(message) -> its job, until finished
        self._work: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._acks: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._poll_deadlines: dict[int, float | None] = {}
        self._pollers: list[threading.Thread] = []
        self._workers: list[threading.Thread] = []
        self._ackers: list[threading.Thread] = []
        self._heartbeat_thread: threading.Thread | None = None
        self._heartbeat_stop = threading.Event()
        self._visibility: float | None = None
        # System-failure pause: polling waits until _pause_until while _pause_reason is set.
        self._pause_lock = threading.Lock()
        self._pause_until = 0.0
        self._pause_reason: str | None = None
        self._pause_kind = ""
        self._pause_backoff = 0.0
        self._writes = 0  # successful writes, to tell a failing system from a failing message
        self._observers = {hook: pipeline.plugins.observers(hook) for hook in OBSERVER_HOOKS}
        self._traced_sink = _TracedSink(self.sink)
        policy = getattr(self.sink, "batch", None)
        self._batcher: Batcher | None = None
        if isinstance(policy, BatchPolicy):
            self._batcher = Batcher(self.sink, policy, self._flush_batch)
            self._collector = _BatchCollector(self)

    # -- public ------------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the runner to shut down gracefully. Safe from any thread or a signal handler."""
        self._stop.set()
        # Pollers waiting for capacity notice within their wait interval; a signal handler must
        # not block on the lock here.

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def wait_started(self, timeout: float | None = None) -> bool:
        return self._started.wait(timeout)

    def run(self) -> int:
        """Start everything, block until stopped, shut down gracefully. Returns the exit code."""
        self.state = "starting"
        try:
            return self._run()
        finally:
            if self._owns_telemetry:
                self.telemetry.shutdown()

    def _run(self) -> int:
        pipeline = self.pipeline
        self.telemetry.start()
        pipeline.aws.add_client_hook(self.telemetry.watch_client)
        metrics = self.metrics
        metrics.gauge("in_flight", lambda: len(self._jobs))
        # Series that exist from the start, so a rate over them is defined before traffic.
        for counter in (metrics.received, metrics.deleted, metrics.redelivered,
                        metrics.released):
            counter.add(0, self._queue_attributes)
        for outcome in ("written", "existing", "dropped"):
            metrics.processed.add(0, OUTCOME_LABELS[outcome])
        metrics.objects_written.add(0)
        metrics.objects_existing.add(0)
        for step in pipeline.start_steps():  # components, then sqs_processor_startup hooks
            try:
                step.run()
            except Exception as exc:
                log.error("could not start %s", step.describe_failure(exc),
                          extra={"event": "start_failed", "component": step.where})
                close_pipeline(pipeline)
                self.state = "stopped"
                return 1
        for i in range(self.ack_threads):
            thread = threading.Thread(target=self._ack_loop, name=f"acker-{i}", daemon=True)
            thread.start()
            self._ackers.append(thread)
        reader = getattr(self.source, "visibility_timeout", None)
        visibility = reader() if callable(reader) else None
        if self._batcher is not None:
            age = self._batcher.policy.max_age
            if visibility and not self.heartbeat_enabled and age >= visibility * 0.5:
                log.error("could not start: the sink's batch max_age_seconds (%g) is not below "
                          "half the visibility timeout (%gs) and service.heartbeat is off, so "
                          "waiting messages would be redelivered; turn the heartbeat on or "
                          "lower max_age_seconds", age, visibility,
                          extra={"event": "start_failed", "component": "sink"})
                self._stop.set()
                for _ in self._ackers:
                    self._acks.put(None)
                close_pipeline(self.pipeline)
                self.state = "stopped"
                return 1
            self._batcher.start()
        if self.heartbeat_enabled and visibility:
            self._visibility = float(visibility)
            self._heartbeat_thread = threading.Thread(target=self._heartbeat_loop,
                                                      name="heartbeat", daemon=True)
            self._heartbeat_thread.start()
        for i in range(self.worker_count):
            thread = threading.Thread(target=self._work_loop, name=f"worker-{i}", daemon=True)
            thread.start()
            self._workers.append(thread)
        for i in range(self.poller_count):
            self._poll_deadlines[i] = None
            thread = threading.Thread(target=self._poll_loop, args=(i,), name=f"poller-{i}",
                                      daemon=True)
            thread.start()
            self._pollers.append(thread)
        self.state = "running"
        self._started.set()
        log.info("pipeline running: %s (%d poller(s), %d worker(s), at most %d in flight)",
                 pipeline.describe_line(), self.poller_count, self.worker_count,
                 self.max_in_flight,
                 extra={"event": "started", "pollers": self.poller_count,
                        "workers": self.worker_count, "max_in_flight": self.max_in_flight})
        while not self._stop.wait(0.5):
            pass
        try:
            self._shutdown()
        finally:
            self.state = "stopped"
        return 0

    # -- health ------------------------------------------------------------------------------

    def liveness(self) -> tuple[bool, str]:
        """Whether the poll loop is alive: threads running and no receive stuck past its limit."""
        if self.state in ("created", "starting"):
            return True, self.state
        if self.state == "stopped":
            return False, "stopped"
        now = time.monotonic()
        for i, thread in enumerate(self._pollers):
            if not thread.is_alive() and not self._stop.is_set():
                return False, f"poller-{i} has died"
            deadline = self._poll_deadlines.get(i)
            if deadline is not None and now > deadline and not self._stop.is_set():
                late = now - deadline
                return False, f"poller-{i} has made no progress for {late:.0f}s past its limit"
        dead = [t.name for t in (*self._workers, *self._ackers, self._heartbeat_thread)
                if t and not t.is_alive()]
        if dead and not self._stop.is_set():
            return False, f"{', '.join(dead)} died"
        return True, "stopping" if self._stop.is_set() else "polling"

    # -- polling -----------------------------------------------------------------------------

    def _poll_loop(self, index: int) -> None:
        backoff = 0.0
        source = self.source
        reserve = int(getattr(source, "max_batch", 10))
        metrics = self.metrics

        def room_or_stop() -> bool:
            return self._stop.is_set() or self._in_flight + reserve <= self.max_in_flight

        while not self._stop.is_set():
            self._poll_deadlines[index] = None  # waiting for capacity is not a stall
            self._wait_while_paused()
            with self._cond:
                while not room_or_stop():
                    self._cond.wait(0.5)
                if self._stop.is_set():
                    break
                self._in_flight += reserve
            started = time.monotonic()
            self._poll_deadlines[index] = started + self.receive_allowance
            span = self.tracer.start_span(f"receive {self.source_label}", kind=SpanKind.CLIENT,
                                          attributes=self._receive_attributes)
            try:
                with trace.use_span(span, end_on_exit=True):
                    messages = source.receive()
                    span.set_attribute(tel.BATCH_COUNT, len(messages))
            except Exception as exc:
                self._finish(reserve)
                metrics.polls.add(1, self._poll_error)
                backoff = min(BACKOFF_MAX_SECONDS, backoff * 2 or BACKOFF_START_SECONDS)
                delay = random.uniform(backoff / 2, backoff)
                log.error("receive from %s failed: %s; retrying in %.1fs", self.source_label,
                          describe_error(exc), delay,
                          extra={"event": "receive_failed", "error": error_code(exc)})
                self._sleep(index, delay)
                continue
            except BaseException:
                self._finish(reserve)  # the thread dies; liveness reports it
                raise
            backoff = 0.0
            self.pipeline.stats.polled()
            count = len(messages)
            if count > reserve:  # a source that returned more than it promised
                with self._cond:
                    self._in_flight += count - reserve
            elif count < reserve:
                self._finish(reserve - count)
            if count:
                metrics.polls.add(1, self._poll_messages)
                self.pipeline.stats.add("received", count)
                self._accept(messages, span, started)
            else:
                metrics.polls.add(1, self._poll_empty)
                log.debug("no messages from %s", self.source_label,
                          extra={"event": "received", "count": 0})
            self._sleep(index, source.idle_delay(count))

    def _accept(self, messages: list[Message], receive_span: Span, started: float) -> None:
        jobs = [self._job(message, receive_span) for message in messages]
        if self._visibility is not None:
            for job in jobs:
                job.received = started
                job.visible_until = started + self._visibility
        metrics = self.metrics
        metrics.received.add(len(messages), self._queue_attributes)
        redelivered = sum(1 for message in messages if message.receive_count > 1)
        if redelivered:
            metrics.redelivered.add(redelivered, self._queue_attributes)
        if self._stop.is_set():
            # The receive returned after the signal: hand the messages straight back.
            self._release(jobs, "received during shutdown")
            self._finish(len(messages))
            return
        with self._cond:
            for job in jobs:
                self._jobs[id(job.message)] = job
        log.info("received %s from %s", _count(len(messages)), self.source_label,
                 extra={"event": "received", "count": len(messages)})
        self._observe("sqs_processor_batch_received", pipeline=self.pipeline, messages=messages)
        for job in jobs:
            self._work.put(job)

    def _job(self, message: Message, receive_span: Span) -> Job:
        """Open the message's ``process`` span: in the producer's trace when it sent one."""
        parent = tel.producer_context(message)
        if not self.telemetry.tracing:
            # No spans are recorded, but logs still carry the producer's trace id.
            context = parent or Context()
            return Job(message, trace.get_current_span(context), context)
        attributes = dict(self._queue_span_attributes)
        attributes[tel.OPERATION_TYPE] = "process"
        attributes[tel.OPERATION_NAME] = "process"
        attributes[tel.MESSAGE_ID] = message.message_id
        attributes[tel.RECEIVE_COUNT] = message.receive_count
        attributes[tel.BODY_SIZE] = len(message.body.encode("utf-8", "surrogatepass"))
        links = [Link(receive_span.get_span_context())]
        span = self.tracer.start_span(f"process {self.source_label}", context=parent or Context(),
                                      kind=SpanKind.CONSUMER, attributes=attributes, links=links)
        return Job(message, span, trace.set_span_in_context(span))

    def _sleep(self, index: int, delay: float) -> None:
        if delay > 0 and not self._stop.is_set():
            self._poll_deadlines[index] = time.monotonic() + delay + self.receive_allowance
            self._stop.wait(delay)

    # -- processing --------------------------------------------------------------------------

    def _work_loop(self) -> None:
        while True:
            job = self._work.get()
            if job is None:
                return
            if self._abandon.is_set():
                continue  # past the shutdown deadline: the main thread releases it
            token = otel_context.attach(job.context)
            try:
                self._process(job)
            except Exception:  # a bug in the engine itself; never let it kill the worker
                log.exception("unexpected error while processing message %s",
                              job.message.message_id,
                              extra={"event": "internal_error",
                                     "message_id": job.message.message_id})
                self._failed(job, "engine", RuntimeError("internal error"))
            finally:
                otel_context.detach(token)

    def _process(self, job: Job) -> None:
        message = job.message
        job.picked_up = time.monotonic()
        tracing = self.telemetry.tracing
        if self._batcher is not None:
            sink: Any = self._collector
        else:
            sink = self._traced_sink if tracing else self.sink
        outcome = process_message(message, self.pipeline.transforms, sink, self.sink_stage,
                                  self._stage_span if tracing else None)
        if outcome.status == "dropped":
            self._dropped(job, outcome.stage.removeprefix("transform:"))
            return
        if outcome.status == "failed":
            error = outcome.error
            assert error is not None
            if is_system_failure(error) and not self._blame_message(job):
                self._system_failure(job, outcome.stage, error)
            else:
                self._failed(job, outcome.stage, error)
            return
        record, written = outcome.record, outcome.result
        assert written is not None and record is not None
        if written is PENDING:
            return  # in a batch: acknowledged when the batch's object is written
        self._write_succeeded()
        self._written(job, record, written)

    def _written(self, job: Job, record: Record, written: WriteResult,
                 batched: bool = False) -> None:
        message = job.message
        stats = self.pipeline.stats
        metrics = self.metrics
        job.written = True
        metrics.processing.record(time.monotonic() - job.picked_up)
        sent_at = message.sent_at
        if sent_at is not None:
            metrics.age_at_write.record(max(0.0, time.time() - sent_at.timestamp()))
        level = logging.DEBUG if batched else logging.INFO
        if written.created:
            job.outcome = "written"
            stats.add("written")
            if not batched:
                metrics.objects_written.add(1)
            log.log(level, "stored message %s at %s", message.message_id, written.location,
                    extra={"event": "stored", "message_id": message.message_id,
                           "location": written.location})
        else:
            job.outcome = "existing"
            stats.add("existing")
            if not batched:
                metrics.objects_existing.add(1)
            log.log(level, "message %s was already stored at %s (redelivery)", message.message_id,
                    written.location, extra={"event": "already_stored",
                                             "message_id": message.message_id,
                                             "location": written.location})
        metrics.processed.add(1, OUTCOME_LABELS[job.outcome])
        self._observe("sqs_processor_message_written", pipeline=self.pipeline, record=record,
                      result=written)
        self._to_ack(job)

    def _stage_span(self, stage: str) -> Any:
        """The span around one transform or the sink write (only when tracing)."""
        kind, _, name = stage.partition(":")
        label = f"transform {name}" if kind == "transform" else f"write {name}"
        return self.tracer.start_as_current_span(label, attributes={tel.STAGE: stage})

    def _dropped(self, job: Job, step: str) -> None:
        self.pipeline.stats.add("dropped")
        self.metrics.processed.add(1, OUTCOME_LABELS["dropped"])
        job.outcome = "dropped"
        job.written = True
        trace.get_current_span().set_attribute(OUTCOME_DROPPED, True)
        log.info("message %s dropped by transform %s", job.message.message_id, step,
                 extra={"event": "dropped", "message_id": job.message.message_id, "step": step})
        self._to_ack(job)

    def _to_ack(self, job: Job) -> None:
        self._acks.put(job)

    def _failed(self, job: Job, stage: str, error: BaseException) -> None:
        message = job.message
        self.pipeline.stats.add_failure(stage)
        self.metrics.failed.add(1, {"stage": stage, "error_type": error_code(error)})
        if self.error_after and message.receive_count >= self.error_after and \
                self._to_error_sink(job, stage, error):
            return
        with self._cond:
            self._jobs.pop(id(message), None)
        log.warning("message %s failed at %s: %s; left in the queue for redelivery "
                    "(receive count %d)", message.message_id, stage, describe_error(error),
                    message.receive_count,
                    extra={"event": "failed", "message_id": message.message_id, "stage": stage,
                           "error": error_code(error)})
        self._end_span(job, "failed", error=error, stage=stage)
        self._observe("sqs_processor_message_failed", pipeline=self.pipeline, message=message,
                      stage=stage, error=error)
        self._finish(1)

    def _to_error_sink(self, job: Job, stage: str, error: BaseException) -> bool:
        """Write the failed message to the error sink and acknowledge it; False if that failed."""
        message = job.message
        document = {
            "message_id": message.message_id,
            "stage": stage,
            "error": {"type": error_code(error), "message": describe_error(error)},
            "receive_count": message.receive_count,
            "failed_at": datetime.now(UTC).isoformat(),
            "body": message.body,
            "attributes": dict(message.attributes),
            "message_attributes": {k: dict(v) for k, v in message.message_attributes.items()},
        }
        try:
            with self.tracer.start_as_current_span("write error sink",
                                                  attributes={tel.STAGE: "errors.sink"}) as span:
                written = self.error_sink.write(Record(message, document))
                if span.is_recording():
                    span.set_attributes(_location_attributes(written.location, written.created))
        except Exception as exc:
            log.error("could not write message %s to the error sink: %s; it stays in the queue",
                      message.message_id, describe_error(exc),
                      extra={"event": "error_sink_failed", "message_id": message.message_id,
                             "error": error_code(exc)})
            return False
        self.metrics.error_sink.add(1, {"stage": stage})
        log.warning("message %s failed at %s %d times (%s); stored at %s and deleted",
                    message.message_id, stage, message.receive_count, describe_error(error),
                    written.location,
                    extra={"event": "to_error_sink", "message_id": message.message_id,
                           "stage": stage, "error": error_code(error),
                           "location": written.location})
        job.outcome = "error_sink"
        job.written = True
        if job.span.is_recording():
            job.span.set_attribute(tel.STAGE, stage)
            job.span.set_attribute("error.type", error_code(error))
        self._to_ack(job)
        return True

    def _end_span(self, job: Job, outcome: str, *, error: BaseException | None = None,
                  stage: str | None = None, detail: str | None = None) -> None:
        span = job.span
        if not span.is_recording():
            return
        span.set_attribute(tel.OUTCOME, outcome)
        if stage:
            span.set_attribute(tel.STAGE, stage)
        if error is not None:
            span.set_attribute("error.type", error_code(error))
            span.set_status(Status(StatusCode.ERROR, f"{stage}: {describe_error(error)}"))
        elif detail:
            span.set_status(Status(StatusCode.ERROR, detail))
        span.end()

    def _finish(self, count: int) -> None:
        with self._cond:
            self._in_flight -= count
            self._cond.notify_all()

    # -- batched writes ----------------------------------------------------------------------

    def _flush_batch(self, batch: Batch) -> None:
        """Write one batch (a flusher thread); acknowledge its messages, or hold or fail them."""
        jobs = batch.jobs
        messages = [job.message for job in jobs]
        links = [Link(job.span.get_span_context()) for job in jobs[:128]]
        span = self.tracer.start_span(f"write {self.sink_label} batch", links=links,
                                      attributes={tel.STAGE: self.sink_stage,
                                                  tel.BATCH_COUNT: len(jobs)})
        try:
            with trace.use_span(span, end_on_exit=True):
                written = self.sink.write_batch(batch.key, batch.lines, messages)
                if span.is_recording():
                    span.set_attributes(_location_attributes(written.location, written.created))
        except Exception as exc:
            if is_system_failure(exc):
                self.metrics.system_failures.add(len(jobs), {
                    "stage": self.sink_stage, "error_type": error_code(exc)})
                delay = self._pause("write", f"{self.sink_stage}: {describe_error(exc)}")
                log.warning("a batch of %s failed for a reason outside the messages (%s); they "
                            "stay in flight and the batch is retried in %.1fs", _count(len(jobs)),
                            describe_error(exc), delay,
                            extra={"event": "system_failure", "stage": self.sink_stage,
                                   "error": error_code(exc), "count": len(jobs)})
                if self._stop.wait(delay) or self._abandon.is_set():
                    with self._cond:
                        held = [j for j in jobs if self._jobs.pop(id(j.message), None)]
                    self._release(held, "shutdown during a system failure")
                    self._finish(len(held))
                else:
                    assert self._batcher is not None
                    self._batcher.retry(batch)
                return
            for job in jobs:
                self._failed(job, self.sink_stage, exc)
            return
        self._write_succeeded()
        if written.created:
            self.metrics.objects_written.add(1)
        else:
            self.metrics.objects_existing.add(1)
        log.info("stored %s at %s", _count(len(jobs)), written.location,
                 extra={"event": "stored_batch", "count": len(jobs),
                        "location": written.location})
        for job in jobs:
            record = job.record
            job.record = None
            assert record is not None
            self._written(job, record, written, batched=True)

    # -- system failures ---------------------------------------------------------------------

    def pause_reason(self) -> str | None:
        """Why polling is paused (a system failure not yet recovered from), or None."""
        return self._pause_reason

    def _pause(self, kind: str, reason: str) -> float:
        """Pause polling after a system failure; returns how long until the next attempt."""
        now = time.monotonic()
        with self._pause_lock:
            if now >= self._pause_until:  # a new round: back off further
                self._pause_backoff = min(self.system_backoff_max,
                                          self._pause_backoff * 2 or BACKOFF_START_SECONDS)
                self._pause_until = now + random.uniform(self._pause_backoff / 2,
                                                         self._pause_backoff)
            first = self._pause_reason is None
            self._pause_reason = reason
            self._pause_kind = kind
            delay = self._pause_until - now
        if first:
            log.error("system failure, pausing polling: %s; messages stay in the queue and "
                      "in-flight ones are retried (not failed)", reason,
                      extra={"event": "paused", "stage": kind})
        return delay

    def _recovered(self, kind: str) -> None:
        if self._pause_reason is None:
            return
        with self._pause_lock:
            if self._pause_reason is None or self._pause_kind != kind:
                return
            reason, self._pause_reason = self._pause_reason, None
            self._pause_backoff = 0.0
            self._pause_until = 0.0
        log.info("recovered from the system failure (%s); polling resumes", reason,
                 extra={"event": "resumed"})

    def _wait_while_paused(self) -> None:
        while not self._stop.is_set():
            remaining = self._pause_until - time.monotonic()
            if remaining <= 0:
                return
            self._stop.wait(min(remaining, 1.0))

    def _write_succeeded(self) -> None:
        self._writes += 1
        if self._pause_reason is not None:
            self._recovered("write")

    def _blame_message(self, job: Job) -> bool:
        """A message whose 'system' failures repeat while other writes succeed is at fault."""
        return (job.system_retries >= SYSTEM_RETRIES_BEFORE_BLAME
                and self._writes > job.writes_seen)

    def _system_failure(self, job: Job, stage: str, error: BaseException) -> None:
        message = job.message
        if job.system_retries == 0:
            job.writes_seen = self._writes
        job.system_retries += 1
        self.metrics.system_failures.add(1, {"stage": stage, "error_type": error_code(error)})
        delay = self._pause("write", f"{stage}: {describe_error(error)}")
        log.warning("message %s: %s failed for a reason outside the message (%s); it stays in "
                    "flight and is retried in %.1fs", message.message_id, stage,
                    describe_error(error), delay,
                    extra={"event": "system_failure", "message_id": message.message_id,
                           "stage": stage, "error": error_code(error)})
        span = job.span
        if span.is_recording():
            span.add_event("system failure", {tel.STAGE: stage, "error.type": error_code(error),
                                              "sqs_processor.retry_in": round(delay, 3)})
        if self._stop.wait(delay) or self._abandon.is_set():
            # Shutting down: give it back now rather than hold it to the deadline.
            with self._cond:
                tracked = self._jobs.pop(id(message), None)
            if tracked is not None:
                self._release([job], "shutdown during a system failure")
                self._finish(1)
            return
        self._work.put(job)

    # -- visibility heartbeat ----------------------------------------------------------------

    def _heartbeat_loop(self) -> None:
        visibility = self._visibility or 0.0
        tick = heartbeat_tick(visibility)
        while not self._heartbeat_stop.wait(tick):
            try:
                self._heartbeat(visibility)
            except Exception:  # never let the heartbeat die; liveness would report it
                log.exception("unexpected error in the visibility heartbeat",
                              extra={"event": "internal_error"})

    def _heartbeat(self, visibility: float) -> None:
        now = time.monotonic()
        with self._cond:
            jobs = [job for job in self._jobs.values()
                    if not job.extend_failed and job.visible_until - now
                    < visibility * HEARTBEAT_MARGIN]
        if not jobs:
            return
        groups: dict[int, list[Job]] = {}
        for job in jobs:
            left_in_cap = int(MAX_VISIBILITY_SECONDS - (now - job.received)) - 1
            seconds = min(int(max(visibility, 1)), left_in_cap)
            if seconds <= 0:
                job.extend_failed = True
                log.warning("message %s has been hidden for the 12-hour maximum; it becomes "
                            "visible again and may be processed a second time (the write stays "
                            "single)", job.message.message_id,
                            extra={"event": "visibility_capped",
                                   "message_id": job.message.message_id})
                continue
            groups.setdefault(seconds, []).append(job)
        for seconds, group in groups.items():
            by_message = {id(job.message): job for job in group}
            failures = self.source.extend([job.message for job in group], seconds)
            failed = {id(f.message) for f in failures}
            for job in group:
                if id(job.message) not in failed:
                    job.visible_until = now + seconds
            self.metrics.extensions.add(len(group) - len(failed), {"outcome": "ok"})
            for failure in failures:
                job = by_message.get(id(failure.message))
                if job is None:
                    continue
                self.metrics.extensions.add(1, {"outcome": "failed"})
                if failure.retryable and job.visible_until > time.monotonic() + tick_margin(
                        visibility):
                    continue  # try again on the next tick, there is still time
                job.extend_failed = True
                log.warning("could not extend the visibility of message %s: %s %s; it may be "
                            "delivered again while in flight (the write stays single)",
                            job.message.message_id, failure.code, failure.detail,
                            extra={"event": "extend_failed",
                                   "message_id": job.message.message_id,
                                   "error": failure.code})

    # -- acknowledging -----------------------------------------------------------------------

    def _ack_loop(self) -> None:
        limit = max(1, int(getattr(self.acker, "max_batch", 10)))
        closing = False
        while not closing:
            first = self._acks.get()
            if first is None:
                return
            batch = [first]
            deadline = time.monotonic() + ACK_LINGER_SECONDS
            while len(batch) < limit:
                remaining = deadline - time.monotonic()
                try:
                    item = self._acks.get(timeout=remaining) if remaining > 0 else \
                        self._acks.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    closing = True
                    break
                batch.append(item)
            try:
                self._ack(batch)
            except (Exception, SystemExit):
                log.exception("unexpected error while acknowledging %d messages", len(batch),
                              extra={"event": "internal_error"})
                self._finish(len(batch))

    def _ack(self, jobs: Sequence[Job]) -> None:
        by_message = {id(job.message): job for job in jobs}
        pending = [job.message for job in jobs]
        for attempt in range(1, ACK_ATTEMPTS + 1):
            spans = [self.tracer.start_span(f"ack {self.ack_label}",
                                            context=by_message[id(m)].context,
                                            attributes={tel.STAGE: "ack", "sqs_processor.attempt":
                                                        attempt})
                     for m in pending]
            token = otel_context.attach(trace.set_span_in_context(spans[0]))
            try:
                failures = self.acker.ack(pending)
            except (Exception, SystemExit) as exc:
                failures = [AckFailure(m, error_code(exc), describe_error(exc), retryable=True)
                            for m in pending]
            finally:
                otel_context.detach(token)
            failed = {id(f.message): f for f in failures}
            for message, span in zip(pending, spans, strict=True):
                failure = failed.get(id(message))
                if failure is not None and span.is_recording():
                    span.set_attribute("error.type", failure.code)
                    span.set_status(Status(StatusCode.ERROR, failure.detail))
                span.end()
            done = [by_message[id(m)] for m in pending if id(m) not in failed]
            if done:
                self._recovered("ack")
                self._acked(done)
            elif failures and all(f.code in SYSTEM_ERROR_CODES for f in failures):
                self._pause("ack", f"{self.ack_label}: {failures[0].code} {failures[0].detail}")
            retry: list[Message] = []
            for failure in failures:
                if failure.retryable and attempt < ACK_ATTEMPTS and not self._abandon.is_set():
                    retry.append(failure.message)
                else:
                    self._ack_gave_up(by_message[id(failure.message)], failure)
            if not retry:
                return
            pending = retry
            time.sleep(0.2 * attempt)

    def _acked(self, jobs: list[Job]) -> None:
        self.pipeline.stats.add("processed", len(jobs))
        self.metrics.deleted.add(len(jobs), self._queue_attributes)
        messages = [job.message for job in jobs]
        with self._cond:
            for message in messages:
                self._jobs.pop(id(message), None)
        for job in jobs:
            self._end_span(job, job.outcome or "processed")
        ids = [m.message_id for m in messages]
        log.info("deleted %s with %s: %s", _count(len(messages)), self.ack_label, " ".join(ids),
                 extra={"event": "acked", "count": len(messages)})
        self._observe("sqs_processor_batch_acked", pipeline=self.pipeline, messages=messages)
        self._finish(len(messages))

    def _ack_gave_up(self, job: Job, failure: AckFailure) -> None:
        self.pipeline.stats.add("ack_failed")
        self.metrics.ack_failed.add(1, {"error_type": failure.code})
        with self._cond:
            self._jobs.pop(id(job.message), None)
        log.warning("could not delete message %s: %s %s; it will be redelivered and "
                    "recognised as already stored", failure.message.message_id, failure.code,
                    failure.detail,
                    extra={"event": "ack_failed", "message_id": failure.message.message_id,
                           "error": failure.code})
        self._end_span(job, "ack_failed", detail=f"delete failed: {failure.code}")
        self._finish(1)

    # -- shutdown ----------------------------------------------------------------------------

    def _release(self, jobs: Sequence[Job], why: str) -> None:
        if not jobs:
            return
        self.pipeline.stats.add("released", len(jobs))
        self.metrics.released.add(len(jobs), self._queue_attributes)
        log.info("releasing %s (%s) for immediate redelivery", _count(len(jobs)), why,
                 extra={"event": "released", "count": len(jobs)})
        for job in jobs:
            self._end_span(job, "released")
        try:
            self.source.release([job.message for job in jobs])
        except Exception as exc:
            log.warning("could not release messages: %s; they return after their visibility "
                        "timeout", describe_error(exc), extra={"event": "release_failed"})

    def _shutdown(self) -> None:
        self.state = "stopping"
        deadline = time.monotonic() + self.grace_seconds
        with self._cond:
            in_flight = self._in_flight
        log.info("stopping: finishing in-flight messages for up to %gs", self.grace_seconds,
                 extra={"event": "stopping", "in_flight": in_flight})
        for thread in self._pollers:
            thread.join(max(0.0, deadline - time.monotonic()))
        if self._batcher is not None:
            # Nothing more will be received: write the open batches now, not at their age.
            self._batcher.flush_all()
        with self._cond:
            self._cond.wait_for(lambda: self._in_flight <= 0,
                                timeout=max(0.0, deadline - time.monotonic()))
            leftovers = [job for job in self._jobs.values() if not job.written]
            for job in leftovers:
                del self._jobs[id(job.message)]
        self._heartbeat_stop.set()
        if self._heartbeat_thread is not None:
            self._heartbeat_thread.join(5)
        if leftovers:
            self._abandon.set()
            self._release(leftovers, "shutdown deadline reached")
        for _ in self._workers:
            self._work.put(None)
        for thread in self._workers:
            thread.join(max(0.0, deadline - time.monotonic()))
        if self._batcher is not None:
            self._batcher.close(max(1.0, deadline - time.monotonic()))
        # The deletes of everything already written must still go out.
        for _ in self._ackers:
            self._acks.put(None)
        for thread in self._ackers:
            thread.join(max(5.0, deadline - time.monotonic()))
        self._observe("sqs_processor_shutdown", pipeline=self.pipeline)
        close_pipeline(self.pipeline)
        stats = self.pipeline.stats.snapshot()
        log.info("stopped: %d processed, %d failed, %d released", stats["processed"],
                 stats["failed"], stats["released"], extra={"event": "stopped", **stats})

    # -- observers ---------------------------------------------------------------------------

    def _observe(self, hook: str, **kwargs: Any) -> None:
        for function, argnames, plugin_name in self._observers[hook]:
            try:
                call_impl(function, argnames, kwargs)
            except (Exception, SystemExit) as exc:  # sys.exit() in a plugin must not kill us
                log.warning("%s of plugin %s raised %s", hook, plugin_name, describe_error(exc),
                            extra={"event": "observer_failed", "plugin": plugin_name})


OUTCOME_DROPPED = "sqs_processor.dropped"
# Metric labels per outcome, built once rather than per message.
OUTCOME_LABELS = {outcome: {"outcome": outcome} for outcome in ("written", "existing", "dropped")}


PENDING = WriteResult(location="(batch)", created=True)
"""What the batch collector returns: the record waits in a batch, nothing is stored yet."""


class _BatchCollector:
    """Stands in for the sink in batched mode: encodes the record into its batch."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner

    def write(self, record: Record) -> WriteResult:
        runner = self.runner
        job = runner._jobs.get(id(record.message))
        if job is None:  # released meanwhile (shutdown deadline): nothing to do
            raise RuntimeError("message no longer in flight")
        assert runner._batcher is not None
        job.record = record
        runner._batcher.add(job, record)
        return PENDING


class _TracedSink:
    """The sink, adding where each record went to the write span (bucket and key for S3)."""

    def __init__(self, sink: Any) -> None:
        self.sink = sink

    def write(self, record: Record) -> Any:
        written = self.sink.write(record)
        location = getattr(written, "location", None)
        if isinstance(location, str):
            trace.get_current_span().set_attributes(
                _location_attributes(location, bool(getattr(written, "created", True))))
        return written


def heartbeat_tick(visibility: float) -> float:
    """How often the heartbeat looks at in-flight messages: six times per visibility timeout
    (10 s at most), so an extension has 0.6 - 1/6 of the timeout to complete."""
    return min(max(visibility / 6, 0.1), 10.0)


def tick_margin(visibility: float) -> float:
    """Time a retryable extension failure may wait for the next heartbeat tick."""
    return heartbeat_tick(visibility) + 1.0


def _location_attributes(location: str, created: bool) -> dict[str, Any]:
    """Span attributes for where a record was written (bucket and key for ``s3://`` URLs)."""
    attributes: dict[str, Any] = {"sqs_processor.location": location,
                                  tel.OUTCOME: "written" if created else "existing"}
    if location.startswith("s3://"):
        bucket, _, key = location[5:].partition("/")
        attributes["aws.s3.bucket"] = bucket
        attributes["aws.s3.key"] = key
    return attributes


def _count(n: int) -> str:
    return f"{n} message" if n == 1 else f"{n} messages"
