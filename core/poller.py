"""The pollers: receiving from the source, with room reserved first, backoff, and liveness.

Each poller thread repeats: wait while the system pause runs; reserve room in
:class:`~sqs_processor.inflight.InFlight` for a whole receive (``source.max_batch``); receive;
turn the messages into jobs (each with its ``process`` span) and hand them to the workers; wait
``source.idle_delay(count)`` (0 after a receive that returned messages). A receive that raises
gives its room back and backs off exponentially, with jitter. A receive that returns after
shutdown began hands its messages straight back.

Liveness: while a receive is outstanding (or the poller sleeps between receives) it has a
deadline; a poller past it, or dead, makes ``/healthz`` fail. Waiting for room or for a pause to
end is not a stall.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from opentelemetry import trace
from opentelemetry.trace import Span

from sqs_processor.components import Source
from sqs_processor.errors import describe_error, error_code
from sqs_processor.inflight import InFlight, Job, Reservation, message_cost
from sqs_processor.message import Message
from sqs_processor.metrics import Metrics
from sqs_processor.observers import Observers
from sqs_processor.pause import Backoff, SystemPause
from sqs_processor.settlement import Settlement, count_of
from sqs_processor.tracing import BATCH_COUNT, MessageTracing

if TYPE_CHECKING:
    from sqs_processor.pipeline import Pipeline

log = logging.getLogger("sqs_processor.runner")

RECEIVE_BACKOFF_MAX_SECONDS = 60.0


class Poller:
    """``threads`` poller threads receiving from the pipeline's source; each job received goes
    to ``hand_off`` (the worker pool's queue; the test kit's list)."""

    def __init__(self, pipeline: Pipeline, inflight: InFlight, pause: SystemPause,
                 hand_off: Callable[[Job], None], settlement: Settlement,
                 tracing: MessageTracing,
                 metrics: Metrics, observers: Observers, *, threads: int,
                 stop: threading.Event, visibility: float | None) -> None:
        self.pipeline = pipeline
        self.source: Source = pipeline.source
        self.reserve = int(self.source.max_batch)
        self.inflight = inflight
        self.pause = pause
        self.hand_off = hand_off
        self.settlement = settlement
        self.tracing = tracing
        self.metrics = metrics
        self.observers = observers
        self.visibility = visibility
        aws = pipeline.config.aws
        # How long one receive may take before the poll loop counts as stuck (liveness).
        self.receive_allowance = (aws["read_timeout"] + aws["connect_timeout"]) \
            * aws["max_attempts"] + 30
        self._stop = stop
        queue_labels = {"queue": tracing.queue}
        self._labels = queue_labels
        self._poll_labels = {outcome: {**queue_labels, "outcome": outcome}
                             for outcome in ("messages", "empty", "error")}
        self._deadlines: list[float | None] = [None] * threads
        self._threads = [threading.Thread(target=self._loop, args=(i,), name=f"poller-{i}",
                                          daemon=True) for i in range(threads)]

    def start(self) -> None:
        self._warn_if_room_is_short()
        for thread in self._threads:
            thread.start()

    def _warn_if_room_is_short(self) -> None:
        """Say so at start when the memory budget cannot let every poller receive at once."""
        at_once = self.inflight.receives_at_once(self.reserve)
        pollers = len(self._threads)
        if at_once is None or at_once >= pollers:
            return
        mib = 1024 * 1024
        needed = -(-self.inflight.bytes_for(pollers, self.reserve) // mib)
        log.warning("service.pollers is %d, but service.max_in_flight_mib (%d) leaves room for "
                    "%d receive(s) at once: a receive beside another reserves room for %d "
                    "messages of %d bytes (the source's largest), so the other pollers wait. "
                    "Set max_in_flight_mib to %d for all of them, or fewer pollers",
                    pollers, (self.inflight.max_bytes or 0) // mib, at_once, self.reserve,
                    self.source.max_message_bytes, needed,
                    extra={"event": "pollers_limited", "receives_at_once": at_once})

    def join(self, deadline: float) -> None:
        """Wait for the pollers to stop (after their receive in progress) until ``deadline``."""
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def problem(self, now: float) -> str | None:
        """Why the poll loop is not alive (a dead poller, or one past its deadline), or None."""
        for i, thread in enumerate(self._threads):
            if not thread.is_alive():
                return f"poller-{i} has died"
            deadline = self._deadlines[i]
            if deadline is not None and now > deadline:
                return f"poller-{i} has made no progress for {now - deadline:.0f}s past its limit"
        return None

    # -- the loop --------------------------------------------------------------------------------

    def _loop(self, index: int) -> None:
        backoff = Backoff(RECEIVE_BACKOFF_MAX_SECONDS)
        while not self._stop.is_set():
            self._deadlines[index] = None  # waiting for room or a pause is not a stall
            self.pause.wait(self._stop)
            reservation = self.inflight.reserve(self.reserve, self._stop)
            if reservation is None:
                break
            self._deadlines[index] = time.monotonic() + self.receive_allowance
            try:
                count = self.poll_once(reservation)
            except Exception as exc:
                delay = backoff.next_delay()
                log.error("receive from %s failed: %s; retrying in %.1fs", self.tracing.queue,
                          describe_error(exc), delay,
                          extra={"event": "receive_failed", "error": error_code(exc)})
                self._sleep(index, delay)
                continue
            backoff.reset()
            self._sleep(index, self.source.idle_delay(count))

    def poll_once(self, reservation: Reservation) -> int:
        """One receive into room already reserved; returns how many messages it brought.

        Raises what the source raised, after giving the room back (a ``BaseException`` that
        is not an ``Exception`` ends the thread, and liveness reports it).
        """
        started = time.monotonic()
        span = self.tracing.receive_span()
        try:
            with trace.use_span(span, end_on_exit=True):
                messages = self.source.receive()
                span.set_attribute(BATCH_COUNT, len(messages))
        except Exception:
            self.inflight.unreserve(reservation)
            self.metrics.polls.add(1, self._poll_labels["error"])
            raise
        except BaseException:
            self.inflight.unreserve(reservation)
            raise
        self.pipeline.stats.polled()
        self.pipeline.stats.add("polls")
        self.settlement.summary.tick()
        if not messages:
            self.inflight.track(reservation, ())
            self.metrics.polls.add(1, self._poll_labels["empty"])
            log.debug("no messages from %s", self.tracing.queue,
                      extra={"event": "received", "count": 0})
            return 0
        self.metrics.polls.add(1, self._poll_labels["messages"])
        self.pipeline.stats.add("received", len(messages))
        self._accept(messages, span, started, reservation)
        return len(messages)

    def _accept(self, messages: list[Message], receive: Span, started: float,
                reservation: Reservation) -> None:
        jobs = []
        for message in messages:
            span, context = self.tracing.open(message, receive)
            job = Job(message, span, context, received=started, cost=message_cost(message))
            if self.visibility is not None:
                job.visible_until = started + self.visibility
            jobs.append(job)
        self.metrics.received.add(len(messages), self._labels)
        redelivered = sum(1 for message in messages if message.receive_count > 1)
        if redelivered:
            self.metrics.redelivered.add(redelivered, self._labels)
        self.inflight.track(reservation, jobs)
        if self._stop.is_set():
            # The receive returned after the signal: hand the messages straight back.
            self.settlement.released(jobs, "received during shutdown")
            return
        log.debug("received %s from %s", count_of(len(messages)), self.tracing.queue,
                  extra={"event": "received", "count": len(messages)})
        self.observers.notify("sqs_processor_batch_received", pipeline=self.pipeline,
                              messages=messages)
        for job in jobs:
            self.hand_off(job)

    def _sleep(self, index: int, delay: float) -> None:
        if delay > 0 and not self._stop.is_set():
            self._deadlines[index] = time.monotonic() + delay + self.receive_allowance
            self._stop.wait(delay)
