"""Take moto's SQS depth-dependent costs out of the benchmark (applied in the bench server only).

moto keeps a queue as one Python list and answers several calls by scanning all of it:

* ``Queue.messages`` builds a list of every visible message, and ``ReceiveMessage`` builds it
  again on every pass of its loop;
* for every message it returns, ``ReceiveMessage`` checks the retention period through
  ``get_queue_attributes``, which computes ``Queue.attributes`` three times, and each of those
  counts the visible, in-flight and delayed messages with three more full scans;
* ``SendMessage`` reads ``Queue.attributes`` once per message (the same three scans);
* ``DeleteMessage`` scans the list for the receipt handle and then rebuilds it.

With 20,000 messages queued that is milliseconds to seconds of server CPU per call, which would
turn a benchmark of the processor into a benchmark of moto. The replacements below keep what the
processor relies on (visibility timeouts, receipt handles old and new, ``ApproximateReceiveCount``,
``SentTimestamp``, delete by receipt handle, redrive to a DLQ) and change only how the state is
searched:

* ``Queue.messages`` is a lazy view: iterating it walks the list in order and yields messages
  that are visible and not delayed, so a receive stops after the first ``MaxNumberOfMessages``
  it can hand out. Received, undeleted messages sit at the head of the list (a receive takes
  the oldest visible ones and a delete removes them), so a receive costs O(in flight + batch),
  not O(depth). ``len()`` still counts every visible message, ``bool()`` stops at the first.
* The retention check reads the queue's ``MessageRetentionPeriod`` directly (O(1)).
* The three approximate counts are computed in one pass with one clock reading and cached for
  :data:`COUNT_CACHE_SECONDS`; SQS documents them as approximate, and the processor never reads
  them (only the harness does, to see that a queue is empty).
* ``DeleteMessage`` finds the message from the head of the list and removes it without
  rebuilding the list in Python, under the queue's lock (``sqs_processor.emulator``'s own fix,
  applied to this faster delete).
* ``ReceiveMessage`` holds the queue's lock while it picks messages (the lock is released while
  a long poll waits), so two concurrent receives never hand out the same message: a duplicate
  delivery would be legal SQS behaviour but would blur the harness's exactly-once check.

The lazy view yields the same messages in the same order as moto's list, so FIFO groups and
redrive to a dead-letter queue behave as before. Two per-request costs that do not depend on
depth are removed too (:func:`_per_request_overhead`).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator
from typing import Any

from sqs_processor.emulator import serialise_moto_deletes

COUNT_CACHE_SECONDS = 0.5

_APPLIED = False


class _VisibleMessages:
    """What ``Queue.messages`` returns: the visible, undelayed messages, found lazily."""

    __slots__ = ("_messages",)

    def __init__(self, messages: list[Any]) -> None:
        # Deletes replace the list object rather than mutating it, so iterating the list captured
        # here is safe while other threads delete; appended messages are seen by the iteration.
        self._messages = messages

    def __iter__(self) -> Iterator[Any]:
        now = time.time() * 1000
        for message in self._messages:
            if message.visible_at < now and not message.delayed_until > now:
                yield message

    def __bool__(self) -> bool:
        return next(iter(self), None) is not None

    def __len__(self) -> int:
        return sum(1 for _ in self)


def _counts(queue: Any) -> tuple[int, int, int]:
    """(visible, not visible, delayed), one pass, cached briefly."""
    now_wall = time.monotonic()
    cached = getattr(queue, "_bench_counts", None)
    if cached is not None and now_wall - cached[0] < COUNT_CACHE_SECONDS:
        return cached[1]
    now = time.time() * 1000
    visible = not_visible = delayed = 0
    for message in queue._messages:
        is_visible = message.visible_at < now
        is_delayed = message.delayed_until > now
        if is_delayed:
            delayed += 1
        if not is_visible:
            not_visible += 1
        elif not is_delayed:
            visible += 1
    result = (visible, not_visible, delayed)
    queue._bench_counts = (now_wall, result)
    return result


def apply() -> list[str]:
    """Patch moto's SQS models in this process. Returns one line per change, for the output."""
    global _APPLIED
    from moto.sqs import models
    from moto.sqs.exceptions import ReceiptHandleIsInvalid

    changes = [
        "ReceiveMessage: lazy scan from the queue head, O(in flight + batch) instead of O(depth)",
        "ReceiveMessage: retention check reads MessageRetentionPeriod directly (was 9 scans per "
        "received message)",
        "SendMessage/GetQueueAttributes: approximate counts in one pass, cached "
        f"{COUNT_CACHE_SECONDS:g}s",
        "DeleteMessage: under the queue lock, found from the head, no list rebuild",
        "ReceiveMessage: picks messages under the queue lock (no double delivery)",
    ]
    if _APPLIED:
        return changes
    queue_class = models.Queue
    backend_class = models.SQSBackend

    queue_class.messages = property(lambda self: _VisibleMessages(self._messages))
    queue_class.approximate_number_of_messages = property(lambda self: _counts(self)[0])
    queue_class.approximate_number_of_messages_not_visible = property(
        lambda self: _counts(self)[1])
    queue_class.approximate_number_of_messages_delayed = property(lambda self: _counts(self)[2])

    def delete_message(self: Any, receipt_handle: str) -> None:
        if receipt_handle in self.deleted_messages:
            return  # deleting twice is not an error in SQS
        messages = self._messages
        index = next((i for i, m in enumerate(messages)
                      if m.receipt_handle == receipt_handle
                      or receipt_handle in m._old_receipt_handles), None)
        if index is None:
            raise ReceiptHandleIsInvalid()
        message = messages[index]
        self.pending_messages.discard(message)
        self.deleted_messages.update(message.all_receipt_handles)
        # A new list (not del in place): lazy views iterating the old one stay consistent.
        self._messages = messages[:index] + messages[index + 1:]
        self._bench_counts = None

    queue_class.delete_message = delete_message
    serialise_moto_deletes()  # the queue's lock around it, as in sqs_processor.emulator

    def retention_ok(self: Any, queue_name: str, message: Any) -> bool:
        queue = self.get_queue(queue_name)
        retain_until = int(queue.message_retention_period) + message.sent_timestamp / 1000
        return retain_until > time.time()

    backend_class.is_message_valid_based_on_retention_period = retention_ok

    original_receive = backend_class.receive_message

    @functools.wraps(original_receive)
    def receive_message(self: Any, queue_name: str, *args: Any, **kwargs: Any) -> Any:
        queue = self.get_queue(queue_name)
        # The lock is a Condition over an RLock: moto's long-poll wait inside releases it.
        with queue._messages_lock:
            result = original_receive(self, queue_name, *args, **kwargs)
            if result:
                queue._bench_counts = None
            return result

    backend_class.receive_message = receive_message
    changes += _per_request_overhead()
    _APPLIED = True
    return changes


def _per_request_overhead() -> list[str]:
    """Costs moto's server pays on every request, whatever the queue depth."""
    import os

    from moto import backends
    from moto.moto_server import werkzeug_app
    from moto.sqs import models

    # Every request lists moto's package folder and stats each entry (~170 stat calls) while
    # holding the dispatcher's global lock, then tries hundreds of URL patterns. The answer
    # depends only on the host name.
    modules = tuple(backends.list_of_moto_modules())
    backends.list_of_moto_modules = lambda: modules
    dispatcher = werkzeug_app.DomainDispatcherApplication
    original_lookup = dispatcher.get_backend_for_host
    cache: dict[str | None, Any] = {}

    def get_backend_for_host(self: Any, host: str | None) -> Any:
        try:
            return cache[host]
        except KeyError:
            result = cache[host] = original_lookup(self, host)
            return result

    dispatcher.get_backend_for_host = get_backend_for_host

    # A receipt handle is 185 characters picked one random.choice() at a time (~0.7 ms per
    # received message). Clients treat it as opaque: same length, lowercase, unique.
    models.generate_receipt_handle = lambda: os.urandom(93).hex()[:185]
    return [
        "every request: moto's backend lookup per host name cached (it listed and stat'ed "
        "moto's package folder under a global lock)",
        "ReceiveMessage: receipt handles from os.urandom (was 185 random.choice calls)",
    ]
