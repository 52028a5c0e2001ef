"""Settlement: the one place where what happened to a message is recorded.

Every way a message can end, or move on, passes through one method here, which updates the
pipeline's stats, the metrics, the log, the message's ``process`` span and the observer hooks
together, and frees its place in :class:`~sqs_processor.inflight.InFlight` exactly once:

=================  ===========================================  ==================================
method             when                                         then
=================  ===========================================  ==================================
``written``        the sink stored the record (or found it       handed to the acks
                   already stored: a redelivery)
``dropped``        a transform returned None                     handed to the acks
``to_error_sink``  failed ``errors.after_receives`` times and    handed to the acks
                   the error sink stored it
``failed``         failed on its own account                     left in SQS for redelivery
``system_failure`` failed because the system did                 held in flight, retried later
``acked``          its delete succeeded                          done
``ack_gave_up``    its delete failed for good                    redelivered, recognised by its key
``released``       handed back unprocessed (shutdown)            visible again at once
=================  ===========================================  ==================================

Settlement calls no AWS API except the source's ``release`` (best effort). The runner's threads
and the test kit (:mod:`sqs_processor.testing`) use the same Settlement, so a plugin meets the
same rules in both.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from opentelemetry import trace

from sqs_processor.components import AckFailure, Source, WriteResult
from sqs_processor.errors import describe_error, error_code
from sqs_processor.inflight import InFlight, Job
from sqs_processor.message import Record
from sqs_processor.metrics import Metrics
from sqs_processor.observers import Observers
from sqs_processor.tracing import DROPPED, STAGE, MessageTracing

if TYPE_CHECKING:
    from sqs_processor.pipeline import Pipeline, Stats

log = logging.getLogger("sqs_processor.runner")

OUTCOME_LABELS = {outcome: {"outcome": outcome} for outcome in ("written", "existing", "dropped")}
"""Metric labels per outcome, built once rather than per message."""


def count_of(n: int) -> str:
    return f"{n} message" if n == 1 else f"{n} messages"


class Summary:
    """One INFO line every ``interval`` seconds summing up what happened since the last one,
    so no line is logged per message by default (those are DEBUG). Any thread that settles a
    message or polls calls :meth:`tick`; the first past the interval writes the line. Nothing is
    written for an interval in which nothing happened."""

    def __init__(self, stats: Stats, interval: float, queue: str,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stats = stats
        self.interval = interval
        self.queue = queue
        self._clock = clock
        self._lock = threading.Lock()
        self._due = clock() + interval
        self._since = clock()
        self._last = stats.snapshot()

    def tick(self) -> None:
        if self.interval <= 0 or self._clock() < self._due:
            return
        self.flush()

    def flush(self) -> None:
        """Write the line now (if anything happened since the last one)."""
        if not self._lock.acquire(blocking=False):
            return  # another thread is writing it
        try:
            now = self._clock()
            counts = self.stats.snapshot()
            delta = {name: counts[name] - self._last.get(name, 0) for name in counts}
            seconds, self._since = now - self._since, now
            self._last, self._due = counts, now + self.interval
        finally:
            self._lock.release()
        if not any(delta.values()):
            return
        polls, received = delta["polls"], delta["received"]
        stored = delta["written"] + delta["existing"]
        errors = delta["failed"] + delta["system_failures"] + delta["ack_failed"]
        per_poll = received / polls if polls else 0.0
        log.info("last %.0fs on %s: %d polls (%.1f messages per poll), %d received, %d stored "
                 "in S3 (%d new, %d already there), %d dropped, %d deleted from SQS in %d "
                 "calls, %d errors (%d failed, %d system, %d deletes), %d released",
                 seconds, self.queue, polls, per_poll, received, stored, delta["written"],
                 delta["existing"], delta["dropped"], delta["processed"],
                 delta["delete_calls"], errors, delta["failed"], delta["system_failures"],
                 delta["ack_failed"], delta["released"],
                 extra={"event": "summary", "seconds": round(seconds, 3), "polls": polls,
                        "messages_per_poll": round(per_poll, 2), "received": received,
                        "stored": stored, "written": delta["written"],
                        "existing": delta["existing"], "dropped": delta["dropped"],
                        "deleted": delta["processed"], "delete_calls": delta["delete_calls"],
                        "errors": errors, "failed": delta["failed"],
                        "system_failures": delta["system_failures"],
                        "ack_failed": delta["ack_failed"], "released": delta["released"]})


class Settlement:
    """Records outcomes for one pipeline. ``to_ack(job)`` receives every job whose message is
    done with and may be deleted (the ack pool's queue, or the test kit's list)."""

    def __init__(self, pipeline: Pipeline, metrics: Metrics, inflight: InFlight,
                 observers: Observers, tracing: MessageTracing,
                 to_ack: Callable[[Job], None]) -> None:
        self.pipeline = pipeline
        self.stats = pipeline.stats
        self.metrics = metrics
        self.inflight = inflight
        self.observers = observers
        self.tracing = tracing
        self.source: Source = pipeline.source
        self.to_ack = to_ack
        self.ack_label = pipeline.config.ack.type
        self.queue_labels = {"queue": tracing.queue}
        self.summary = Summary(pipeline.stats,
                               pipeline.config.service["log_summary_seconds"],
                               tracing.queue)

    # -- done with the sink: delete next -------------------------------------------------------

    def written(self, job: Job, record: Record, result: WriteResult, *,
                batched: bool = False) -> None:
        """The sink accepted ``record`` (``result.created`` False: it was already stored).
        In batched mode the object is counted once by the batch, not per message."""
        message, stats, metrics = job.message, self.stats, self.metrics
        job.written = True
        metrics.processing.record(time.monotonic() - job.picked_up)
        sent_at = message.sent_at
        if sent_at is not None:
            metrics.age_at_write.record(max(0.0, time.time() - sent_at.timestamp()))
        debug = log.isEnabledFor(logging.DEBUG)  # per message: DEBUG only (the summary counts)
        if result.created:
            job.outcome = "written"
            stats.add("written")
            if not batched:
                metrics.objects_written.add(1)
            if debug:
                log.debug("stored message %s at %s", message.message_id, result.location,
                          extra={"event": "stored", "message_id": message.message_id,
                                 "location": result.location})
        else:
            job.outcome = "existing"
            stats.add("existing")
            if not batched:
                metrics.objects_existing.add(1)
            if debug:
                log.debug("message %s was already stored at %s (redelivery)",
                          message.message_id, result.location,
                          extra={"event": "already_stored", "message_id": message.message_id,
                                 "location": result.location})
        metrics.processed.add(1, OUTCOME_LABELS[job.outcome])
        self.observers.notify("sqs_processor_message_written", pipeline=self.pipeline,
                              record=record, result=result)
        self.to_ack(job)

    def dropped(self, job: Job, step: str) -> None:
        """Transform ``step`` returned None: the message is deleted without an object."""
        self.stats.add("dropped")
        self.metrics.processed.add(1, OUTCOME_LABELS["dropped"])
        job.outcome = "dropped"
        job.written = True
        trace.get_current_span().set_attribute(DROPPED, True)
        log.debug("message %s dropped by transform %s", job.message.message_id, step,
                 extra={"event": "dropped", "message_id": job.message.message_id, "step": step})
        self.to_ack(job)

    def to_error_sink(self, job: Job, stage: str, error: BaseException,
                      stored: WriteResult) -> None:
        """The error sink stored the message that kept failing at ``stage``; delete it next."""
        message = job.message
        self.metrics.error_sink.add(1, {"stage": stage})
        log.warning("message %s failed at %s %d times (%s); stored at %s and deleted",
                    message.message_id, stage, message.receive_count, describe_error(error),
                    stored.location,
                    extra={"event": "to_error_sink", "message_id": message.message_id,
                           "stage": stage, "error": error_code(error),
                           "location": stored.location})
        job.outcome = "error_sink"
        job.written = True
        if job.span.is_recording():
            job.span.set_attribute(STAGE, stage)
            job.span.set_attribute("error.type", error_code(error))
        self.to_ack(job)

    # -- not done ------------------------------------------------------------------------------

    def counted_failure(self, stage: str, error: BaseException) -> None:
        """Count a message failure (before deciding between the error sink and redelivery)."""
        self.stats.add_failure(stage)
        self.metrics.failed.add(1, {"stage": stage, "error_type": error_code(error)})

    def failed(self, job: Job, stage: str, error: BaseException) -> None:
        """The message failed on its own account; it stays in SQS for redelivery."""
        message = job.message
        if not self.inflight.settle(job):
            return  # already released (shutdown deadline)
        log.warning("message %s failed at %s: %s; left in the queue for redelivery "
                    "(receive count %d)", message.message_id, stage, describe_error(error),
                    message.receive_count,
                    extra={"event": "failed", "message_id": message.message_id, "stage": stage,
                           "error": error_code(error)})
        self.tracing.end(job.span, "failed", error=error, stage=stage)
        self.observers.notify("sqs_processor_message_failed", pipeline=self.pipeline,
                              message=message, stage=stage, error=error)
        self.summary.tick()

    def error_sink_failed(self, job: Job, error: BaseException) -> None:
        message = job.message
        log.error("could not write message %s to the error sink: %s; it stays in the queue",
                  message.message_id, describe_error(error),
                  extra={"event": "error_sink_failed", "message_id": message.message_id,
                         "error": error_code(error)})

    def system_failure(self, jobs: Sequence[Job], stage: str, error: BaseException,
                       retry_in: float) -> None:
        """``jobs`` failed because the system did; they stay in flight and are retried."""
        self.metrics.system_failures.add(len(jobs), {"stage": stage,
                                                     "error_type": error_code(error)})
        self.stats.add("system_failures", len(jobs))
        if len(jobs) == 1:
            message_id = jobs[0].message.message_id
            log.warning("message %s: %s failed for a reason outside the message (%s); it stays "
                        "in flight and is retried in %.1fs", message_id, stage,
                        describe_error(error), retry_in,
                        extra={"event": "system_failure", "message_id": message_id,
                               "stage": stage, "error": error_code(error)})
        else:
            log.warning("a batch of %s failed for a reason outside the messages (%s); they "
                        "stay in flight and the batch is retried in %.1fs", count_of(len(jobs)),
                        describe_error(error), retry_in,
                        extra={"event": "system_failure", "stage": stage,
                               "error": error_code(error), "count": len(jobs)})
        for job in jobs:
            if job.span.is_recording():
                job.span.add_event("system failure", {
                    STAGE: stage, "error.type": error_code(error),
                    "sqs_processor.retry_in": round(retry_in, 3)})

    # -- after the delete ----------------------------------------------------------------------

    def acked(self, jobs: Sequence[Job]) -> None:
        """Their delete succeeded: the messages are done."""
        done = self.inflight.settle_all(jobs)
        if not done:
            return
        self.stats.add("processed", len(done))
        self.stats.add("delete_calls")
        self.metrics.deleted.add(len(done), self.queue_labels)
        for job in done:
            self.tracing.end(job.span, job.outcome or "processed")
        messages = [job.message for job in done]
        if log.isEnabledFor(logging.DEBUG):
            log.debug("deleted %s with %s: %s", count_of(len(done)), self.ack_label,
                      " ".join(m.message_id for m in messages),
                      extra={"event": "acked", "count": len(done)})
        self.observers.notify("sqs_processor_batch_acked", pipeline=self.pipeline,
                              messages=messages)
        self.summary.tick()

    def ack_gave_up(self, job: Job, failure: AckFailure) -> None:
        """Its delete failed for good: SQS redelivers it and the sink recognises it."""
        if not self.inflight.settle(job):
            return
        self.stats.add("ack_failed")
        self.metrics.ack_failed.add(1, {"error_type": failure.code})
        log.warning("could not delete message %s: %s %s; it will be redelivered and "
                    "recognised as already stored", job.message.message_id, failure.code,
                    failure.detail,
                    extra={"event": "ack_failed", "message_id": job.message.message_id,
                           "error": failure.code})
        self.tracing.end(job.span, "ack_failed", detail=f"delete failed: {failure.code}")

    # -- handing back --------------------------------------------------------------------------

    def released(self, jobs: Sequence[Job], why: str) -> None:
        """Hand ``jobs`` back for immediate redelivery (best effort; they return after their
        visibility timeout anyway). Jobs already settled elsewhere are skipped."""
        held = self.inflight.settle_all(jobs)
        if not held:
            return
        self.stats.add("released", len(held))
        self.metrics.released.add(len(held), self.queue_labels)
        log.info("releasing %s (%s) for immediate redelivery", count_of(len(held)), why,
                 extra={"event": "released", "count": len(held)})
        for job in held:
            self.tracing.end(job.span, "released")
        try:
            self.source.release([job.message for job in held])
        except Exception as exc:
            log.warning("could not release messages: %s; they return after their visibility "
                        "timeout", describe_error(exc), extra={"event": "release_failed"})
