"""The messages the engine holds between their receive and their settlement, under one lock.

A message is *in flight* from the moment a poller reserves room for it until its delete returned
(or it failed, was released, or its delete gave up). :class:`InFlight` owns that set and the room
for it:

* a poller :meth:`~InFlight.reserve`\\ s room for a whole receive before it calls the source (so
  at most ``max_messages`` are ever held), then :meth:`~InFlight.track`\\ s the jobs the receive
  returned, which gives back the room it did not use;
* :class:`~sqs_processor.settlement.Settlement` removes each job exactly once
  (:meth:`~InFlight.settle`): a second removal of the same job is a no-op, so two paths racing to
  end one message (a shutdown deadline and a late write) cannot free its room twice;
* the visibility heartbeat reads a :meth:`~InFlight.snapshot`, shutdown waits for the set to
  drain (:meth:`~InFlight.wait_drained`) and then releases what was never written
  (:meth:`~InFlight.unwritten`).

Room and jobs are counted in one place, so the capacity and the ``messages_in_flight`` gauge
cannot disagree.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from opentelemetry.context import Context
from opentelemetry.trace import Span

from sqs_processor.message import Message, Record


@dataclass(eq=False)
class Job:
    """One message in flight, its ``process`` span, and what the engine knows of its progress.

    The engine owns it; plugins never see it.
    """

    message: Message
    span: Span
    context: Context
    received: float = 0.0  # monotonic time of the receive call that returned it
    visible_until: float = float("inf")  # monotonic; when its visibility runs out
    outcome: str = ""  # written, existing, dropped, error_sink (set when it is settled)
    written: bool = False  # done with the sink: only its delete is left
    picked_up: float = 0.0  # monotonic time a worker started on it
    extend_failed: bool = False  # the heartbeat gave up on it
    system_retries: int = 0  # system failures of this message so far
    writes_seen: int = 0  # the engine's successful writes at its first system failure
    record: Record | None = None  # batched mode: the record waiting in its batch


class InFlight:
    """Room for at most ``max_messages`` messages, and the jobs holding it; thread-safe."""

    def __init__(self, max_messages: int) -> None:
        if max_messages < 1:
            raise ValueError("max_messages must be at least 1")
        self.max_messages = max_messages
        self._cond = threading.Condition()
        self._reserved = 0  # room taken by receives in progress
        self._jobs: dict[int, Job] = {}  # id(message) -> job
        self._waiting = 0  # threads waiting in reserve() or wait_drained()

    # -- room ----------------------------------------------------------------------------------

    def reserve(self, count: int, stop: threading.Event, poll: float = 0.5) -> bool:
        """Wait until ``count`` more messages fit, then take that room. False if ``stop`` was
        set first (nothing is taken). ``stop`` is looked at every ``poll`` seconds."""
        with self._cond:
            self._waiting += 1
            try:
                while self._reserved + len(self._jobs) + count > self.max_messages:
                    if stop.is_set():
                        return False
                    self._cond.wait(poll)
                if stop.is_set():
                    return False
                self._reserved += count
                return True
            finally:
                self._waiting -= 1

    def try_reserve(self, count: int) -> bool:
        """Take room for ``count`` more messages if it is free now; never waits."""
        with self._cond:
            if self._reserved + len(self._jobs) + count > self.max_messages:
                return False
            self._reserved += count
            return True

    def unreserve(self, count: int) -> None:
        """Give back room taken by :meth:`reserve` that no message will use (a failed receive)."""
        with self._cond:
            self._reserved -= count
            self._wake()

    def track(self, reserved: int, jobs: Sequence[Job]) -> None:
        """Hold ``jobs`` in the room ``reserved`` by their receive; unused room is given back.

        A source that returned more than it reserved still has every job tracked (the set may
        then exceed ``max_messages`` until they settle).
        """
        with self._cond:
            self._reserved -= reserved
            for job in jobs:
                self._jobs[id(job.message)] = job
            if len(jobs) < reserved:
                self._wake()

    # -- jobs ----------------------------------------------------------------------------------

    def settle(self, job: Job) -> bool:
        """Stop holding ``job``; True if this call removed it, False if it was already gone."""
        with self._cond:
            removed = self._jobs.pop(id(job.message), None) is not None
            if removed:
                self._wake()
            return removed

    def settle_all(self, jobs: Iterable[Job]) -> list[Job]:
        """:meth:`settle` each of ``jobs``; returns those this call removed."""
        with self._cond:
            removed = [job for job in jobs if self._jobs.pop(id(job.message), None) is not None]
            if removed:
                self._wake()
            return removed

    def job_of(self, message: Message) -> Job | None:
        """The job of ``message`` while it is held, else None."""
        with self._cond:
            return self._jobs.get(id(message))

    def snapshot(self) -> list[Job]:
        """The jobs held right now (a copy)."""
        with self._cond:
            return list(self._jobs.values())

    def __len__(self) -> int:
        """Messages held (received and not yet settled); reservations are not messages."""
        return len(self._jobs)

    # -- shutdown ------------------------------------------------------------------------------

    def wait_drained(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds until nothing is held or reserved; True if drained."""
        with self._cond:
            self._waiting += 1
            try:
                return self._cond.wait_for(lambda: not self._jobs and self._reserved <= 0,
                                           timeout=max(0.0, timeout))
            finally:
                self._waiting -= 1

    def unwritten(self) -> list[Job]:
        """The jobs the sink has not finished with (shutdown: what is left to release). Written
        jobs are only waiting for their delete."""
        with self._cond:
            return [job for job in self._jobs.values() if not job.written]

    def _wake(self) -> None:
        # Called with the lock held. Waking only when someone waits keeps the per-message cost
        # to the dictionary operation.
        if self._waiting:
            self._cond.notify_all()
