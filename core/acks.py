"""The ack pool: deleting finished messages, in batches, from several threads.

Each ack thread takes the first finished job, waits up to :data:`ACK_LINGER_SECONDS` for more
(up to the acker's ``max_batch``), and sends the batch (:meth:`AckPool.send`):

* every entry that failed is looked at: a retryable failure is offered again, up to
  :data:`ACK_ATTEMPTS` attempts in all, with a short pause between attempts that shutdown cuts
  short; the others are given up (the message comes back and its write is recognised);
* a call that raises counts as a retryable failure of every message in it;
* when every entry failed for a system reason (AccessDenied), polling pauses as for a failed
  write, and the first successful delete resumes it.

A message keeps its in-flight place until its delete settled, never longer. The test kit calls
:meth:`AckPool.send_queued` itself, with no pool threads, so it meets the same rules.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Sequence

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

from sqs_processor.components import Acker, AckFailure
from sqs_processor.errors import SYSTEM_ERROR_CODES, describe_error, error_code
from sqs_processor.inflight import Job
from sqs_processor.pause import SystemPause
from sqs_processor.settlement import Settlement
from sqs_processor.tracing import STAGE, MessageTracing

log = logging.getLogger("sqs_processor.runner")

ACK_LINGER_SECONDS = 0.05
ACK_ATTEMPTS = 3
ACK_RETRY_PAUSE_SECONDS = 0.2  # times the attempt number


class AckPool:
    """``threads`` ack threads sending the acker's batches of the jobs in ``finished`` (where
    Settlement puts them). ``abandon`` (set past the shutdown deadline) stops retries and cuts
    their pauses short."""

    def __init__(self, acker: Acker, settlement: Settlement, pause: SystemPause,
                 tracing: MessageTracing, finished: queue.SimpleQueue[Job | None], *,
                 threads: int, abandon: threading.Event, label: str) -> None:
        self.acker = acker
        self.limit = max(1, int(acker.max_batch))
        self.settlement = settlement
        self.pause = pause
        self.tracing = tracing
        self.label = label
        self._abandon = abandon
        self._queue = finished  # what Settlement hands over
        self._threads = [threading.Thread(target=self._loop, name=f"acker-{i}", daemon=True)
                         for i in range(threads)]

    # -- the threads -----------------------------------------------------------------------------

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def send_queued(self) -> list[AckFailure]:
        """Send everything queued now, in this thread, ``max_batch`` at a time (the test kit's
        way; the pool's threads do this by themselves). Returns the failures given up."""
        batch: list[Job] = []
        gave_up: list[AckFailure] = []
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                batch.append(job)
            if len(batch) == self.limit:
                gave_up += self.send(batch)
                batch = []
        if batch:
            gave_up += self.send(batch)
        return gave_up

    def close(self, deadline: float) -> None:
        """Send what is queued, then stop the threads; wait until ``deadline`` (at least 5 s,
        so the deletes of everything already written still go out)."""
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join(max(5.0, deadline - time.monotonic()))

    def dead(self) -> list[str]:
        return [t.name for t in self._threads if t.ident is not None and not t.is_alive()]

    def _loop(self) -> None:
        closing = False
        while not closing:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            deadline = time.monotonic() + ACK_LINGER_SECONDS
            while len(batch) < self.limit:
                remaining = deadline - time.monotonic()
                try:
                    item = self._queue.get(timeout=remaining) if remaining > 0 else \
                        self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    closing = True
                    break
                batch.append(item)
            try:
                self.send(batch)
            except (Exception, SystemExit):
                log.exception("unexpected error while acknowledging %d messages", len(batch),
                              extra={"event": "internal_error"})
                # Their place is freed; SQS redelivers them and the sink recognises them.
                self.settlement.inflight.settle_all(batch)
            # Drop the references before waiting again: a finished message (its body can be
            # 1 MiB, held as up to 4 MiB) must not stay alive until the next batch arrives.
            first = item = batch = None  # type: ignore[assignment]

    # -- one batch -------------------------------------------------------------------------------

    def send(self, jobs: Sequence[Job]) -> list[AckFailure]:
        """Acknowledge ``jobs`` (at most ``max_batch``) with retries; returns the failures that
        were given up."""
        by_message = {id(job.message): job for job in jobs}
        pending = [job.message for job in jobs]
        gave_up: list[AckFailure] = []
        for attempt in range(1, ACK_ATTEMPTS + 1):
            failures = self._attempt(pending, by_message, attempt)
            failed = {id(f.message) for f in failures}
            done = [by_message[id(m)] for m in pending if id(m) not in failed]
            if done:
                self.pause.recovered("ack")
                self.settlement.acked(done)
            elif failures and all(f.code in SYSTEM_ERROR_CODES for f in failures):
                self.pause.pause("ack", f"{self.label}: {failures[0].code} {failures[0].detail}")
            retry = []
            for failure in failures:
                if failure.retryable and attempt < ACK_ATTEMPTS and not self._abandon.is_set():
                    retry.append(failure.message)
                else:
                    gave_up.append(failure)
                    self.settlement.ack_gave_up(by_message[id(failure.message)], failure)
            if not retry:
                break
            pending = retry
            self._abandon.wait(ACK_RETRY_PAUSE_SECONDS * attempt)
        return gave_up

    def _attempt(self, pending: list, by_message: dict, attempt: int) -> list[AckFailure]:
        """One call of the acker, with an ``ack`` span per message in that message's trace
        (none when tracing is off)."""
        failures = (self._traced_call(pending, by_message, attempt) if self.tracing.enabled
                    else self._call(pending))
        # Failures for messages not in this call are the acker's mistake; ignore them.
        return [f for f in failures if id(f.message) in by_message]

    def _traced_call(self, pending: list, by_message: dict, attempt: int) -> list[AckFailure]:
        spans = [self.tracing.tracer.start_span(
            f"ack {self.label}", context=by_message[id(m)].context,
            attributes={STAGE: "ack", "sqs_processor.attempt": attempt}) for m in pending]
        token = otel_context.attach(trace.set_span_in_context(spans[0]))
        try:
            failures = self._call(pending)
        finally:
            otel_context.detach(token)
        failed = {id(f.message): f for f in failures}
        for message, span in zip(pending, spans, strict=True):
            failure = failed.get(id(message))
            if failure is not None and span.is_recording():
                span.set_attribute("error.type", failure.code)
                span.set_status(Status(StatusCode.ERROR, failure.detail))
            span.end()
        return failures

    def _call(self, pending: list) -> list[AckFailure]:
        """The acker's answer; an exception fails every message of the call, retryably."""
        try:
            return list(self.acker.ack(pending))
        except (Exception, SystemExit) as exc:
            return [AckFailure(m, error_code(exc), describe_error(exc), retryable=True)
                    for m in pending]
