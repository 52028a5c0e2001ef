"""Batched writes: many records per stored object, each message deleted only after its object.

A sink opts in by having a ``batch`` attribute (a :class:`BatchPolicy`) and three methods:

* ``batch_key(record) -> str``: records with the same key go into the same object (for the S3
  sink, the hour partition);
* ``encode(record) -> bytes``: one record's bytes in the object (for the S3 sink, one JSON line).
  It runs in the worker, so a record that cannot be encoded fails on its own;
* ``write_batch(key, lines, messages) -> WriteResult``: store one object and return only once
  the storage has accepted it.

The :class:`Batcher` holds encoded records per key and flushes a batch when it reaches
``max_records`` or ``max_bytes``, or when its first record has waited ``max_age`` seconds, from
its own flush threads. The runner deletes the batch's messages only after ``write_batch``
returned; until then they count as in flight, and the visibility heartbeat keeps them hidden.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqs_processor.errors import describe_error

log = logging.getLogger("sqs_processor.batching")


@dataclass(frozen=True)
class BatchPolicy:
    """When a batch is flushed: whichever limit is reached first."""

    max_records: int = 500
    max_bytes: int = 8 * 1024 * 1024
    max_age: float = 10.0


@dataclass
class Batch:
    """Records waiting for one object: the jobs (runner-owned) and their encoded lines."""

    key: str
    opened: float
    jobs: list[Any] = field(default_factory=list)
    lines: list[bytes] = field(default_factory=list)
    size: int = 0

    def add(self, job: Any, line: bytes) -> None:
        self.jobs.append(job)
        self.lines.append(line)
        self.size += len(line)


class Batcher:
    """Collects records per key and hands full or old batches to ``flush`` on its threads.

    ``flush(batch)`` is the runner's: it writes the batch and acknowledges or fails its jobs.
    """

    def __init__(self, sink: Any, policy: BatchPolicy, flush: Callable[[Batch], None],
                 threads: int = 2) -> None:
        self.sink = sink
        self.policy = policy
        self._flush = flush
        self._lock = threading.Condition()
        self._open: dict[str, Batch] = {}
        self._ready: list[Batch] = []
        self._closing = False
        self._threads = [threading.Thread(target=self._loop, name=f"flusher-{i}", daemon=True)
                         for i in range(threads)]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def add(self, job: Any, record: Any) -> None:
        """Encode ``record`` (raising for a record that cannot be) and add it to its batch."""
        key = self.sink.batch_key(record)
        line = self.sink.encode(record)
        policy = self.policy
        with self._lock:
            batch = self._open.get(key)
            if batch is not None and batch.size + len(line) > policy.max_bytes and batch.jobs:
                self._ready.append(self._open.pop(key))
                batch = None
            if batch is None:
                batch = self._open[key] = Batch(key, time.monotonic())
            batch.add(job, line)
            if len(batch.jobs) >= policy.max_records or batch.size >= policy.max_bytes:
                self._ready.append(self._open.pop(key))
            self._lock.notify_all()

    def retry(self, batch: Batch) -> None:
        """Queue a batch again (after a system failure, once the runner's pause is over)."""
        with self._lock:
            self._ready.append(batch)
            self._lock.notify_all()

    def flush_all(self) -> None:
        """Flush every open batch now (shutdown)."""
        with self._lock:
            self._ready.extend(self._open.values())
            self._open.clear()
            self._lock.notify_all()

    def pending(self) -> int:
        with self._lock:
            return sum(len(b.jobs) for b in (*self._open.values(), *self._ready))

    def close(self, timeout: float) -> None:
        """Flush what is left and stop the threads (waits at most ``timeout`` seconds)."""
        self.flush_all()
        with self._lock:
            self._closing = True
            self._lock.notify_all()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            if thread.ident is not None:
                thread.join(max(0.0, deadline - time.monotonic()))

    def _next(self) -> Batch | None:
        with self._lock:
            while True:
                if self._ready:
                    return self._ready.pop(0)
                now = time.monotonic()
                aged = [k for k, b in self._open.items() if now - b.opened >= self.policy.max_age]
                if aged:
                    return self._open.pop(aged[0])
                if self._closing:
                    return None
                oldest = min((b.opened for b in self._open.values()), default=None)
                wait = 1.0 if oldest is None else max(0.01, oldest + self.policy.max_age - now)
                self._lock.wait(min(wait, 1.0))

    def _loop(self) -> None:
        while True:
            batch = self._next()
            if batch is None:
                return
            try:
                self._flush(batch)
            except Exception as exc:  # the runner's flush handles errors; this is a bug guard
                log.exception("unexpected error flushing a batch of %d: %s", len(batch.jobs),
                              describe_error(exc), extra={"event": "internal_error"})
