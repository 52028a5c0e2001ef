"""Batched writes: many records per stored object, each message deleted only after its object.

A sink opts in by being a :class:`~sqs_processor.BatchedSink` (its contract is stated there).
In batched mode the workers write to a :class:`BatchWriter` instead of the sink: it encodes the
record in the worker (so a record that cannot be encoded fails alone), adds it to the open batch
of its key and answers :data:`PENDING`: the message stays in flight, kept hidden by the
heartbeat. The :class:`Batcher` flushes a batch when it reaches ``max_records`` or
``max_bytes``, or when its first record has waited ``max_age`` seconds, from its own flush
threads; :meth:`BatchWriter.flush` writes it and settles every message of it:

* written: each message is settled as written (the object is counted once) and deleted next;
* a system failure: the batch is held and written again once the system pause is over
  (released at shutdown);
* any other failure: each message fails on its own account (error sink or redelivery).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from opentelemetry import trace
from opentelemetry.trace import Link

from sqs_processor.components import BatchedSink, BatchPolicy, WriteResult
from sqs_processor.errors import describe_error, is_system_failure
from sqs_processor.inflight import InFlight, Job
from sqs_processor.message import Record
from sqs_processor.pause import RetryTimer, SystemPause
from sqs_processor.settlement import Settlement, count_of
from sqs_processor.tracing import BATCH_COUNT, STAGE, MessageTracing, location_attributes

log = logging.getLogger("sqs_processor.batching")

PENDING = WriteResult(location="(batch)", created=True)
"""What :meth:`BatchWriter.write` returns: the record waits in a batch, nothing is stored yet."""

FLUSH_THREADS = 2
MAX_SPAN_LINKS = 128


@dataclass
class Batch:
    """Records waiting for one object: their jobs and their encoded lines."""

    key: str
    opened: float
    jobs: list[Job] = field(default_factory=list)
    lines: list[bytes] = field(default_factory=list)
    size: int = 0

    def add(self, job: Job, line: bytes) -> None:
        self.jobs.append(job)
        self.lines.append(line)
        self.size += len(line)


class Batcher:
    """Collects encoded records per key and hands full or old batches to ``flush`` on its
    threads."""

    def __init__(self, policy: BatchPolicy, flush: Callable[[Batch], None],
                 threads: int = FLUSH_THREADS) -> None:
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

    def add(self, key: str, job: Job, line: bytes) -> None:
        """Add one encoded record to the open batch of ``key``."""
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
        """Queue a batch again (after a system failure, once the pause is over)."""
        with self._lock:
            self._ready.append(batch)
            self._lock.notify_all()

    def flush_all(self) -> None:
        """Flush every open batch now (shutdown)."""
        with self._lock:
            self._ready.extend(self._open.values())
            self._open.clear()
            self._lock.notify_all()

    def flush_here(self) -> None:
        """Write every batch, open or ready, in the calling thread (the test kit)."""
        self.flush_all()
        while True:
            with self._lock:
                if not self._ready:
                    return
                batch = self._ready.pop(0)
            self._flush(batch)

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

    def dead(self) -> list[str]:
        return [t.name for t in self._threads if t.ident is not None and not t.is_alive()]

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
            except Exception as exc:  # flush handles errors; this is a bug guard
                log.exception("unexpected error flushing a batch of %d: %s", len(batch.jobs),
                              describe_error(exc), extra={"event": "internal_error"})


class BatchWriter:
    """Stands in for a :class:`~sqs_processor.BatchedSink` in the workers, and writes its
    batches. ``message_failed(job, stage, error)`` decides a message failure's fate."""

    def __init__(self, sink: BatchedSink, stage: str, inflight: InFlight,
                 settlement: Settlement, pause: SystemPause, retries: RetryTimer,
                 tracing: MessageTracing,
                 message_failed: Callable[[Job, str, BaseException], None], *,
                 abandon: threading.Event, threads: int = FLUSH_THREADS) -> None:
        self.sink = sink
        self.stage = stage
        self.inflight = inflight
        self.settlement = settlement
        self.pause = pause
        self.retries = retries
        self.tracing = tracing
        self.message_failed = message_failed
        self._abandon = abandon
        self.batcher = Batcher(sink.batch_policy, self.flush, threads)

    def write(self, record: Record) -> WriteResult:
        """Encode ``record`` into its batch (raising for one that cannot be encoded)."""
        job = self.inflight.job_of(record.message)
        if job is None:  # released meanwhile (shutdown deadline): nothing to do
            raise RuntimeError("message no longer in flight")
        key = self.sink.batch_key(record)
        line = self.sink.encode(record)
        job.record = record
        self.batcher.add(key, job, line)
        return PENDING

    def flush(self, batch: Batch) -> None:
        """Write one batch (a flush thread) and settle its messages."""
        jobs = batch.jobs
        links = [Link(job.span.get_span_context()) for job in jobs[:MAX_SPAN_LINKS]]
        span = self.tracing.tracer.start_span(
            f"write {self.stage.partition(':')[2]} batch", links=links,
            attributes={STAGE: self.stage, BATCH_COUNT: len(jobs)})
        try:
            with trace.use_span(span, end_on_exit=True):
                written = self.sink.write_batch(batch.key, batch.lines,
                                                [job.message for job in jobs])
                if span.is_recording():
                    span.set_attributes(location_attributes(written))
        except Exception as exc:
            if is_system_failure(exc):
                self._hold(batch, exc)
            else:
                for job in jobs:
                    self.message_failed(job, self.stage, exc)
            return
        self.pause.write_succeeded()
        metrics = self.settlement.metrics
        (metrics.objects_written if written.created else metrics.objects_existing).add(1)
        log.info("stored %s at %s", count_of(len(jobs)), written.location,
                 extra={"event": "stored_batch", "count": len(jobs),
                        "location": written.location})
        for job in jobs:
            record, job.record = job.record, None
            assert record is not None
            self.settlement.written(job, record, written, batched=True)

    def _hold(self, batch: Batch, exc: BaseException) -> None:
        """A system failure: keep the batch and write it again once the pause is over."""
        delay = self.pause.pause("write", f"{self.stage}: {describe_error(exc)}")
        self.settlement.system_failure(batch.jobs, self.stage, exc, delay)

        def release() -> None:
            self.settlement.released(batch.jobs, "shutdown during a system failure")

        if self._abandon.is_set():
            release()
        else:
            self.retries.later(delay, lambda: self.batcher.retry(batch), release)
