"""The messages the engine holds between their receive and their settlement, under one lock.

A message is *in flight* from the moment a poller reserves room for it until its delete returned
(or it failed, was released, or its delete gave up). :class:`InFlight` owns that set and the room
for it, counted two ways: messages (``max_messages``) and bytes (``max_bytes``), where a
message's bytes are what it really costs in memory (:func:`message_cost`: the body as Python
holds it, its parsed value, and the encoded document with its escapes):

* a poller :meth:`~InFlight.reserve`\\ s room for a whole receive before it calls the source:
  ``max_batch`` messages, and the bytes such a receive is expected to cost (the costliest of the
  recent messages, times ``max_batch``; never more than ``max_bytes``, and always allowed when
  nothing is held, so a huge message cannot block the pipeline). It then
  :meth:`~InFlight.track`\\ s the jobs the receive returned, at their measured cost, which gives
  back the room they did not use;
* only one receive at a time is sized on trust. While one is in progress, any other reserves as
  if it would bring ``max_batch`` messages of the source's largest size in plain text
  (:func:`plain_cost` of ``largest_message``), and the first receive of all goes alone, before
  any message size is known. A receive that starts while only receives of that second kind are
  in progress is sized on trust again: they cannot bring more plain text than they took.
  So with several pollers, a burst of the largest plain messages exceeds ``max_bytes`` by one
  receive's surprise at most, as with one poller; bodies that cost more than plain text
  (escapes, emoji) add what they cost beyond it in the other receives;
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

import sys
import threading
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from opentelemetry.context import Context
from opentelemetry.trace import Span

from sqs_processor.message import Message, Record

MESSAGE_OVERHEAD = 2048
"""Bytes a message costs beyond its body: the Message and Job objects, attributes, the span."""

_ESCAPED = ('"', "\\", "\n", "\r", "\t")  # one byte more each in the encoded document


def message_cost(message: Message) -> int:
    """What ``message`` costs in memory while it is processed, in bytes (an estimate).

    The body as Python holds it (1, 2 or 4 bytes a character: one emoji makes the whole text 4),
    its parsed value (about as much again, when it is JSON), and the encoded document, which
    carries the body and its parsed value, each as UTF-8 with every quote, backslash and line
    break escaped. SQS's own characters are all text, so no other escapes occur in a body.
    """
    body = message.body
    held = sys.getsizeof(body)
    utf8 = len(body) if body.isascii() else len(body.encode("utf-8", "surrogatepass"))
    escapes = sum(body.count(character) for character in _ESCAPED)
    attributes = sum(len(str(value.get("StringValue") or value.get("BinaryValue") or ""))
                     for value in message.message_attributes.values())
    return 2 * held + 2 * (utf8 + escapes) + 3 * attributes + MESSAGE_OVERHEAD


def plain_cost(size: int) -> int:
    """What a message of ``size`` bytes of plain ASCII text costs (:func:`message_cost` of such a
    body: one byte a character, nothing to escape)."""
    return 4 * size + MESSAGE_OVERHEAD


@dataclass(frozen=True)
class Reservation:
    """Room taken for one receive: ``count`` messages and ``size`` bytes; ``trusted`` when the
    size was predicted from recent messages rather than the source's largest."""

    count: int
    size: int = 0
    trusted: bool = False


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
    cost: int = 0  # bytes of room it holds (message_cost, set when it is received)


class InFlight:
    """Room for at most ``max_messages`` messages costing at most ``max_bytes`` (None: no byte
    bound), and the jobs holding it; thread-safe. ``largest_message`` is the source's largest
    message in bytes (what a concurrent receive is assumed to bring)."""

    RECENT = 64  # messages whose costs predict the next receive's
    FLOOR = 16 * 1024  # the least a receive is expected to cost per message

    def __init__(self, max_messages: int, max_bytes: int | None = None,
                 largest_message: int = 1024 * 1024) -> None:
        if max_messages < 1:
            raise ValueError("max_messages must be at least 1")
        if largest_message < 1:
            raise ValueError("largest_message must be at least 1")
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.largest_cost = plain_cost(largest_message)
        self._receiving = 0  # receives in progress: reservations of at least one message
        self._trusting = 0  # of those, sized on trust (at most one)
        self._cond = threading.Condition()
        self._reserved = 0  # room taken by receives in progress
        self._reserved_bytes = 0
        self._bytes = 0  # cost of the jobs held
        self._recent: deque[int] = deque(maxlen=self.RECENT)
        self._typical = self.FLOOR  # the costliest recent message (at least FLOOR)
        self._jobs: dict[int, Job] = {}  # id(message) -> job
        self._waiting = 0  # threads waiting in reserve() or wait_drained()

    # -- room ----------------------------------------------------------------------------------

    def _expected(self, count: int) -> int:
        """Bytes a receive of ``count`` messages is expected to cost (lock held): like the
        recent messages unless another receive sized that way is in progress, else like the
        largest. Receives sized like the largest bring no more than they took, so one receive on
        trust beside them is as safe as one alone."""
        if self.max_bytes is None:
            return 0
        each = max(self._typical, self.largest_cost) if self._trusting else self._typical
        return min(count * each, self.max_bytes)

    def _fits(self, count: int, size: int) -> bool:
        if self._reserved + len(self._jobs) + count > self.max_messages:
            return False
        if self.max_bytes is None:
            return True
        if self._receiving and not self._recent:
            return False  # the first receive of all goes alone: no size is known yet
        used = self._bytes + self._reserved_bytes
        return used == 0 or used + size <= self.max_bytes

    def reserve(self, count: int, stop: threading.Event,
                poll: float = 0.5) -> Reservation | None:
        """Wait until a receive of ``count`` more messages fits, then take that room. None if
        ``stop`` was set first (nothing is taken). ``stop`` is looked at every ``poll`` s."""
        with self._cond:
            self._waiting += 1
            try:
                while not self._fits(count, self._expected(count)):
                    if stop.is_set():
                        return None
                    self._cond.wait(poll)
                if stop.is_set():
                    return None
                return self._take(count)
            finally:
                self._waiting -= 1

    def try_reserve(self, count: int) -> Reservation | None:
        """Take room for a receive of ``count`` more messages if it is free now; never waits."""
        with self._cond:
            if not self._fits(count, self._expected(count)):
                return None
            return self._take(count)

    def _take(self, count: int) -> Reservation:
        trusted = bool(count) and not self._trusting and self.max_bytes is not None
        reservation = Reservation(count, self._expected(count), trusted)
        self._reserved += reservation.count
        self._reserved_bytes += reservation.size
        self._receiving += 1 if reservation.count else 0
        self._trusting += 1 if reservation.trusted else 0
        return reservation

    def _give_back(self, reservation: Reservation) -> None:
        self._reserved -= reservation.count
        self._reserved_bytes -= reservation.size
        self._receiving -= 1 if reservation.count else 0
        self._trusting -= 1 if reservation.trusted else 0

    def unreserve(self, reservation: Reservation) -> None:
        """Give back room taken by :meth:`reserve` that no message will use (a failed receive)."""
        with self._cond:
            self._give_back(reservation)
            self._wake()

    def track(self, reservation: Reservation, jobs: Sequence[Job]) -> None:
        """Hold ``jobs`` (at their ``cost``) in the room reserved by their receive; what they
        do not use is given back.

        A source that returned more than it reserved, or messages that cost more than expected,
        still have every job tracked (the room may then be exceeded until they settle; the
        next receive waits for it).
        """
        with self._cond:
            self._give_back(reservation)
            for job in jobs:
                self._jobs[id(job.message)] = job
                self._bytes += job.cost
                self._recent.append(job.cost)
            if jobs:
                self._typical = max(max(self._recent), self.FLOOR)
            self._wake()

    def receives_at_once(self, count: int) -> int | None:
        """How many receives of ``count`` messages fit in progress together while nothing is
        held: one sized on trust, the others like the largest (None: no byte bound)."""
        if self.max_bytes is None:
            return None
        first = min(count * self.FLOOR, self.max_bytes)
        return 1 + (self.max_bytes - first) // (count * self.largest_cost)

    def bytes_for(self, receives: int, count: int) -> int:
        """The ``max_bytes`` that lets ``receives`` receives of ``count`` be in progress at once."""
        return count * self.FLOOR + (receives - 1) * count * self.largest_cost

    @property
    def held_bytes(self) -> int:
        """Bytes held by the jobs in flight (their estimated cost)."""
        return self._bytes

    # -- jobs ----------------------------------------------------------------------------------

    def settle(self, job: Job) -> bool:
        """Stop holding ``job``; True if this call removed it, False if it was already gone."""
        with self._cond:
            removed = self._jobs.pop(id(job.message), None) is not None
            if removed:
                self._bytes -= job.cost
                self._wake()
            return removed

    def settle_all(self, jobs: Iterable[Job]) -> list[Job]:
        """:meth:`settle` each of ``jobs``; returns those this call removed."""
        with self._cond:
            removed = [job for job in jobs if self._jobs.pop(id(job.message), None) is not None]
            if removed:
                self._bytes -= sum(job.cost for job in removed)
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
