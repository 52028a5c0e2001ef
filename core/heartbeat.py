"""The visibility heartbeat: in-flight messages stay hidden while they are worked on.

Six times per visibility timeout (every 10 s at most) the heartbeat looks at the jobs in flight
and extends, with the source's ``extend`` (``ChangeMessageVisibilityBatch`` for SQS), every one
with less than :data:`HEARTBEAT_MARGIN` of the timeout left, by one timeout. No message is kept
hidden past SQS's 12-hour cap. A retryable failure is tried again on the next tick while there
is time; otherwise the message is logged once and left to become visible (it may be delivered
twice; its write stays single). The heartbeat knows nothing of outcomes: settled jobs simply
leave :class:`~sqs_processor.inflight.InFlight`.
"""

from __future__ import annotations

import logging
import threading
import time

from sqs_processor.components import Source
from sqs_processor.inflight import InFlight, Job
from sqs_processor.metrics import Metrics

log = logging.getLogger("sqs_processor.runner")

MAX_VISIBILITY_SECONDS = 43200  # SQS: a message can stay hidden at most 12 hours in all
HEARTBEAT_MARGIN = 0.6  # extend when less than this share of the visibility timeout is left


def heartbeat_tick(visibility: float) -> float:
    """How often the heartbeat looks at in-flight messages: six times per visibility timeout
    (10 s at most), so an extension has 0.6 - 1/6 of the timeout to complete."""
    return min(max(visibility / 6, 0.1), 10.0)


def tick_margin(visibility: float) -> float:
    """Time a retryable extension failure may wait for the next heartbeat tick."""
    return heartbeat_tick(visibility) + 1.0


class VisibilityHeartbeat:
    """Extends the visibility of ``inflight``'s jobs through ``source``, on its own thread."""

    def __init__(self, source: Source, inflight: InFlight, metrics: Metrics,
                 visibility: float) -> None:
        self.source = source
        self.inflight = inflight
        self.metrics = metrics
        self.visibility = visibility
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join(timeout)

    def alive(self) -> bool:
        return self._thread.ident is None or self._thread.is_alive()

    def _loop(self) -> None:
        tick = heartbeat_tick(self.visibility)
        while not self._stop.wait(tick):
            try:
                self.beat(time.monotonic())
            except Exception:  # never let the heartbeat die; liveness would report it
                log.exception("unexpected error in the visibility heartbeat",
                              extra={"event": "internal_error"})

    def beat(self, now: float) -> None:
        """One look at the jobs in flight, as of monotonic time ``now``."""
        visibility = self.visibility
        due = [job for job in self.inflight.snapshot()
               if not job.extend_failed and job.visible_until - now < visibility * HEARTBEAT_MARGIN]
        groups: dict[int, list[Job]] = {}
        for job in due:
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
            self._extend(group, seconds, now)

    def _extend(self, group: list[Job], seconds: int, now: float) -> None:
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
                    self.visibility):
                continue  # try again on the next tick, there is still time
            job.extend_failed = True
            log.warning("could not extend the visibility of message %s: %s %s; it may be "
                        "delivered again while in flight (the write stays single)",
                        job.message.message_id, failure.code, failure.detail,
                        extra={"event": "extend_failed", "message_id": job.message.message_id,
                               "error": failure.code})
