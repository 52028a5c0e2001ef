"""The worker pool: each message through the transforms in YAML order, then the sink.

A worker takes a job, runs :func:`~sqs_processor.process.process_message` and tells
:class:`~sqs_processor.settlement.Settlement` how it ended. A failure is sorted first:

* **the system's** (S3 or SQS unreachable or refusing, as
  :func:`~sqs_processor.errors.is_system_failure` decides): the pipeline pauses
  (:class:`~sqs_processor.pause.SystemPause`) and the job is scheduled again on the
  :class:`~sqs_processor.pause.RetryTimer` for when the pause ends; the worker does not sleep,
  it moves on. A message whose "system" failures repeat while others are written is
  blamed on itself;
* **the message's own**: counted, then stored in the error sink when its receive count has
  reached ``errors.after_receives`` (and deleted), else left in SQS for redelivery.

The test kit calls :meth:`WorkerPool.process` directly, in its own thread, with no pool threads.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqs_processor.batching import PENDING
from sqs_processor.errors import describe_error, error_code, is_system_failure
from sqs_processor.inflight import Job
from sqs_processor.message import Record
from sqs_processor.pause import RetryTimer, SystemPause
from sqs_processor.process import Outcome, process_message
from sqs_processor.settlement import Settlement
from sqs_processor.tracing import STAGE, MessageTracing, location_attributes

if TYPE_CHECKING:
    from sqs_processor.pipeline import Pipeline

log = logging.getLogger("sqs_processor.runner")

SHUTDOWN_DURING_PAUSE = "shutdown during a system failure"


def error_document(job: Job, stage: str, error: BaseException) -> dict[str, Any]:
    """What the error sink stores for a message that kept failing: enough to replay it."""
    message = job.message
    return {
        "message_id": message.message_id,
        "stage": stage,
        "error": {"type": error_code(error), "message": describe_error(error)},
        "receive_count": message.receive_count,
        "failed_at": datetime.now(UTC).isoformat(),
        "body": message.body,
        "attributes": dict(message.attributes),
        "message_attributes": {k: dict(v) for k, v in message.message_attributes.items()},
    }


class MessageFailures:
    """What happens to a message that failed on its own account (a worker's or a batch's):
    counted, then stored in the error sink once its receive count has reached
    ``errors.after_receives`` (and deleted), else left in SQS for redelivery."""

    def __init__(self, pipeline: Pipeline, settlement: Settlement,
                 tracing: MessageTracing) -> None:
        self.error_sink = pipeline.error_sink
        self.after: int = (pipeline.config.errors["after_receives"]
                           if self.error_sink is not None else 0)
        self.settlement = settlement
        self.tracing = tracing

    def __call__(self, job: Job, stage: str, error: BaseException) -> None:
        self.settlement.counted_failure(stage, error)
        if self.after and job.message.receive_count >= self.after \
                and self._to_error_sink(job, stage, error):
            return
        self.settlement.failed(job, stage, error)

    def _to_error_sink(self, job: Job, stage: str, error: BaseException) -> bool:
        """Store the failed message in the error sink; False (and logged) if that failed."""
        assert self.error_sink is not None
        record = Record(job.message, error_document(job, stage, error))
        try:
            with self.tracing.span("write error sink",
                                   attributes={STAGE: "errors.sink"}) as span:
                stored = self.error_sink.write(record)
                if span.is_recording():
                    span.set_attributes(location_attributes(stored))
        except Exception as exc:
            self.settlement.error_sink_failed(job, exc)
            return False
        self.settlement.to_error_sink(job, stage, error, stored)
        return True


class WorkerPool:
    """``threads`` workers running :meth:`process` on submitted jobs.

    ``sink`` is what the workers write to: the pipeline's sink (wrapped to trace where each
    record went), or in batched mode the batch collector. ``abandon`` is set past the shutdown
    deadline: jobs still queued are then skipped (shutdown releases them).
    """

    def __init__(self, pipeline: Pipeline, settlement: Settlement, pause: SystemPause,
                 retries: RetryTimer, tracing: MessageTracing, message_failed: MessageFailures,
                 *, sink: Any, threads: int, abandon: threading.Event) -> None:
        self.transforms = pipeline.transforms
        self.sink = sink
        self.sink_stage = f"sink:{pipeline.config.sink.type}"
        self.message_failed = message_failed
        self.settlement = settlement
        self.pause = pause
        self.retries = retries
        self.tracing = tracing
        self._stage_span = tracing.stage if tracing.enabled else None
        self._abandon = abandon
        self._queue: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._loop, name=f"worker-{i}", daemon=True)
                         for i in range(threads)]

    # -- the threads -----------------------------------------------------------------------------

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def submit(self, job: Job) -> None:
        self._queue.put(job)

    def stop(self, deadline: float) -> None:
        """Let the workers finish what they hold and exit; wait until ``deadline`` at most."""
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def dead(self) -> list[str]:
        return [t.name for t in self._threads if t.ident is not None and not t.is_alive()]

    def _loop(self) -> None:
        from opentelemetry import context as otel_context

        while True:
            job = self._queue.get()
            if job is None:
                return
            if self._abandon.is_set():
                continue  # past the shutdown deadline: shutdown releases it
            token = otel_context.attach(job.context)
            try:
                self.process(job)
            except Exception:  # a bug in the engine itself; never let it kill the worker
                log.exception("unexpected error while processing message %s",
                              job.message.message_id,
                              extra={"event": "internal_error",
                                     "message_id": job.message.message_id})
                self.message_failed(job, "engine", RuntimeError("internal error"))
            finally:
                otel_context.detach(token)
            # Do not keep the finished message alive while waiting for the next one.
            job = None

    # -- one message -----------------------------------------------------------------------------

    def process(self, job: Job) -> Outcome:
        """Run ``job`` through the pipeline and settle what happened; returns the outcome."""
        job.picked_up = time.monotonic()
        outcome = process_message(job.message, self.transforms, self.sink, self.sink_stage,
                                  self._stage_span)
        if outcome.status == "dropped":
            self.settlement.dropped(job, outcome.stage.removeprefix("transform:"))
        elif outcome.status == "failed":
            assert outcome.error is not None
            self._failed(job, outcome.stage, outcome.error)
        elif outcome.result is not PENDING:  # PENDING: waits in a batch for its object
            assert outcome.record is not None and outcome.result is not None
            self.pause.write_succeeded()
            self.settlement.written(job, outcome.record, outcome.result)
        return outcome

    def _failed(self, job: Job, stage: str, error: BaseException) -> None:
        if is_system_failure(error) and not self.pause.blame(job):
            self.pause.note_system_failure(job)
            delay = self.pause.pause("write", f"{stage}: {describe_error(error)}")
            self.settlement.system_failure([job], stage, error, delay)
            self.retry_later(job, delay)
            return
        self.message_failed(job, stage, error)

    def retry_later(self, job: Job, delay: float) -> None:
        """Process ``job`` again once the pause is over (released if shutdown comes first)."""
        if self._abandon.is_set():
            self.settlement.released([job], SHUTDOWN_DURING_PAUSE)
            return
        self.retries.later(delay, lambda: self.submit(job),
                           lambda: self.settlement.released([job], SHUTDOWN_DURING_PAUSE))
