"""Pausing the whole pipeline when the system, not a message, is failing (DESIGN decision 7).

When S3 or SQS fails for everyone (an outage, AccessDenied, a missing bucket), failing the
messages would only walk good messages towards the DLQ. Instead the engine keeps them in flight,
stops receiving, and tries again after a pause that backs off exponentially with jitter. The
first success of the kind of call that failed (a write, or a delete) ends the pause.

:class:`SystemPause` holds that state and its rules, and nothing else: it does not poll, write
or retry by itself. Its clock and its random source are injectable, so the backoff maths and the
rule that blames one message are tested without waiting.
"""

from __future__ import annotations

import heapq
import logging
import random
import threading
import time
from collections.abc import Callable

from sqs_processor.inflight import Job

log = logging.getLogger("sqs_processor.pause")

BACKOFF_START_SECONDS = 1.0
SYSTEM_RETRIES_BEFORE_BLAME = 3  # system failures of one message while others succeed

Clock = Callable[[], float]
Uniform = Callable[[float, float], float]


class Backoff:
    """Exponential backoff with jitter: 1 s, 2 s, 4 s ... up to ``maximum``; each delay is drawn
    from the upper half of the current step, so replicas that failed together spread out."""

    def __init__(self, maximum: float, start: float = BACKOFF_START_SECONDS,
                 uniform: Uniform = random.uniform) -> None:
        self.maximum = maximum
        self.start = start
        self.step = 0.0
        self._uniform = uniform

    def next_delay(self) -> float:
        """Double the step (the first is ``start``) and draw the delay from its upper half."""
        self.step = min(self.maximum, self.step * 2 or self.start)
        return self._uniform(self.step / 2, self.step)

    def reset(self) -> None:
        self.step = 0.0


class SystemPause:
    """Whether polling is paused after a system failure, why, and until when.

    ``kind`` names the sort of call that failed ("write" or "ack"); only a success of the same
    kind resumes, so a working delete does not hide a bucket that is still refusing writes.
    """

    def __init__(self, max_backoff: float, *, clock: Clock = time.monotonic,
                 uniform: Uniform = random.uniform) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._backoff = Backoff(max_backoff, uniform=uniform)
        self._until = 0.0
        self._reason: str | None = None
        self._kind = ""
        self._writes = 0  # successful writes, to tell a failing system from a failing message

    # -- the pause -------------------------------------------------------------------------------

    def pause(self, kind: str, reason: str) -> float:
        """Record a system failure; returns the seconds until the next attempt.

        Failures while a pause is running share its end; the first failure after it ended starts
        a new round with a longer backoff.
        """
        now = self._clock()
        with self._lock:
            if now >= self._until:
                self._until = now + self._backoff.next_delay()
            first = self._reason is None
            self._reason = reason
            self._kind = kind
            delay = self._until - now
        if first:
            log.error("system failure, pausing polling: %s; messages stay in the queue and "
                      "in-flight ones are retried (not failed)", reason,
                      extra={"event": "paused", "stage": kind})
        return delay

    def recovered(self, kind: str) -> None:
        """A call of ``kind`` succeeded: end the pause if that kind caused it."""
        if self._reason is None:  # the common case, without the lock
            return
        with self._lock:
            if self._reason is None or self._kind != kind:
                return
            reason, self._reason = self._reason, None
            self._backoff.reset()
            self._until = 0.0
        log.info("recovered from the system failure (%s); polling resumes", reason,
                 extra={"event": "resumed"})

    def reason(self) -> str | None:
        """Why polling is paused, or None."""
        with self._lock:
            return self._reason

    def remaining(self) -> float:
        """Seconds until polling may try again (0 when not waiting)."""
        with self._lock:
            return max(0.0, self._until - self._clock())

    def wait(self, stop: threading.Event, step: float = 1.0) -> None:
        """Block a poller while the pause runs (returns at once when ``stop`` is set)."""
        while not stop.is_set():
            remaining = self.remaining()
            if remaining <= 0:
                return
            stop.wait(min(remaining, step))

    # -- which failures are the system's -----------------------------------------------------------

    def write_succeeded(self) -> None:
        """Count a successful write (and end a pause caused by writes)."""
        with self._lock:
            self._writes += 1
        self.recovered("write")

    def note_system_failure(self, job: Job) -> None:
        """Count one more system failure of ``job``'s message."""
        if job.system_retries == 0:
            with self._lock:
                job.writes_seen = self._writes
        job.system_retries += 1

    def blame(self, job: Job) -> bool:
        """Whether ``job``'s "system" failures are really its own: they repeated
        :data:`SYSTEM_RETRIES_BEFORE_BLAME` times while other messages were written."""
        with self._lock:
            writes = self._writes
        return job.system_retries >= SYSTEM_RETRIES_BEFORE_BLAME and writes > job.writes_seen


class RetryTimer:
    """Runs each scheduled retry once its delay has passed, on one thread of its own.

    Work held back by a system failure waits here, not in a sleeping worker, so workers keep
    serving other messages and shutdown does not wait out a pause: :meth:`cancel_all` hands
    every pending retry to its ``cancel`` callback at once. With ``threaded`` False nothing
    runs by itself (the test kit's single thread), and pending retries end in ``cancel_all``.
    """

    def __init__(self, *, threaded: bool = True, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._threaded = threaded
        self._cond = threading.Condition()
        self._pending: list[tuple[float, int, Callable[[], None], Callable[[], None]]] = []
        self._order = 0
        self._closed = False
        self._thread: threading.Thread | None = None

    def later(self, delay: float, run: Callable[[], None], cancel: Callable[[], None]) -> None:
        """Call ``run()`` in ``delay`` seconds, or ``cancel()`` if :meth:`cancel_all` comes
        first (or the timer is already closed)."""
        with self._cond:
            if self._closed:
                closed = True
            else:
                closed = False
                self._order += 1
                heapq.heappush(self._pending, (self._clock() + delay, self._order, run, cancel))
                if self._threaded and self._thread is None:
                    self._thread = threading.Thread(target=self._loop, name="retries",
                                                    daemon=True)
                    self._thread.start()
                self._cond.notify()
        if closed:
            cancel()

    def cancel_all(self) -> int:
        """Close the timer and cancel every pending retry; returns how many there were."""
        with self._cond:
            self._closed = True
            pending, self._pending = self._pending, []
            self._cond.notify()
        for _, _, _, cancel in sorted(pending):
            cancel()
        return len(pending)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._closed and (not self._pending
                                            or self._pending[0][0] > self._clock()):
                    wait = self._pending[0][0] - self._clock() if self._pending else None
                    self._cond.wait(wait)
                if self._closed:
                    return
                _, _, run, _ = heapq.heappop(self._pending)
            try:
                run()
            except Exception:  # a bug guard: the timer must keep serving the others
                log.exception("unexpected error in a scheduled retry",
                              extra={"event": "internal_error"})
