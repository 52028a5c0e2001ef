"""Running a built pipeline: pollers, workers and the acker, in threads.

* **Pollers** (``service.pollers``) call ``source.receive()``. Before each receive a poller
  reserves as many in-flight slots as the receive can return, so at most
  ``service.max_in_flight`` messages are ever held. A receive error backs off exponentially
  (with jitter) and the source's readiness check reports it.
* **Workers** (``service.workers``) run each message through the transforms in YAML order and
  hand it to the sink. A message whose write succeeded, or that a transform dropped, goes to the
  acker; a message that failed anywhere is left alone, so SQS redelivers it after its
  visibility timeout.
* **The acker** thread batches finished messages (up to the acker's ``max_batch``, waiting at
  most :data:`ACK_LINGER_SECONDS` for a batch to fill) and retries failed entries that are
  retryable.

Shutdown (:meth:`Runner.stop`, called on SIGTERM/SIGINT): pollers stop after the receive in
progress, and release whatever it returns; workers finish in-flight messages until
``service.shutdown_grace_seconds`` have passed; what is still unfinished then is released
(visibility 0) for another consumer; pending deletes are flushed; components close.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections.abc import Sequence
from typing import Any

from sqs_processor.components import AckFailure
from sqs_processor.errors import describe_error, error_code
from sqs_processor.manager import call_impl
from sqs_processor.message import Message
from sqs_processor.pipeline import Pipeline, close_pipeline
from sqs_processor.process import process_message

log = logging.getLogger("sqs_processor.runner")

ACK_LINGER_SECONDS = 0.05
ACK_ATTEMPTS = 3
BACKOFF_START_SECONDS = 1.0
BACKOFF_MAX_SECONDS = 60.0
OBSERVER_HOOKS = (
    "sqs_processor_startup",
    "sqs_processor_batch_received",
    "sqs_processor_message_written",
    "sqs_processor_message_failed",
    "sqs_processor_batch_acked",
    "sqs_processor_shutdown",
)


class Runner:
    """Drives one pipeline until :meth:`stop` is called. Not reusable after it returns."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        service = pipeline.config.service
        self.max_in_flight: int = service["max_in_flight"]
        self.worker_count: int = service["workers"]
        self.poller_count: int = service["pollers"]
        self.grace_seconds: float = service["shutdown_grace_seconds"]
        aws = pipeline.config.aws
        attempts = aws["max_attempts"]
        # How long one receive may take before the poll loop counts as stuck (liveness).
        self.receive_allowance = (aws["read_timeout"] + aws["connect_timeout"]) * attempts + 30
        self.source = pipeline.source
        self.sink = pipeline.sink
        self.acker = pipeline.acker
        self.source_label = getattr(self.source, "queue_name", pipeline.config.source.type)
        self.sink_stage = f"sink:{pipeline.config.sink.type}"
        self.ack_label = pipeline.config.ack.type
        self.state = "created"

        self._stop = threading.Event()
        self._abandon = threading.Event()
        self._started = threading.Event()
        self._cond = threading.Condition()
        self._in_flight = 0
        self._unwritten: dict[int, Message] = {}  # id(message) -> message not yet written
        self._work: queue.SimpleQueue[Message | None] = queue.SimpleQueue()
        self._acks: queue.SimpleQueue[Message | None] = queue.SimpleQueue()
        self._poll_deadlines: dict[int, float | None] = {}
        self._pollers: list[threading.Thread] = []
        self._workers: list[threading.Thread] = []
        self._acker_thread: threading.Thread | None = None
        self._observers = {hook: pipeline.plugins.observers(hook) for hook in OBSERVER_HOOKS}

    # -- public ------------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the runner to shut down gracefully. Safe from any thread or a signal handler."""
        self._stop.set()
        # Pollers waiting for capacity notice within their wait interval; a signal handler must
        # not block on the lock here.

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def wait_started(self, timeout: float | None = None) -> bool:
        return self._started.wait(timeout)

    def run(self) -> int:
        """Start everything, block until stopped, shut down gracefully. Returns the exit code."""
        pipeline = self.pipeline
        self.state = "starting"
        for step in pipeline.start_steps():  # components, then sqs_processor_startup hooks
            try:
                step.run()
            except Exception as exc:
                log.error("could not start %s", step.describe_failure(exc),
                          extra={"event": "start_failed", "component": step.where})
                close_pipeline(pipeline)
                self.state = "stopped"
                return 1
        self._acker_thread = threading.Thread(target=self._ack_loop, name="acker", daemon=True)
        self._acker_thread.start()
        for i in range(self.worker_count):
            thread = threading.Thread(target=self._work_loop, name=f"worker-{i}", daemon=True)
            thread.start()
            self._workers.append(thread)
        for i in range(self.poller_count):
            self._poll_deadlines[i] = None
            thread = threading.Thread(target=self._poll_loop, args=(i,), name=f"poller-{i}",
                                      daemon=True)
            thread.start()
            self._pollers.append(thread)
        self.state = "running"
        self._started.set()
        log.info("pipeline running: %s (%d poller(s), %d worker(s), at most %d in flight)",
                 pipeline.describe_line(), self.poller_count, self.worker_count,
                 self.max_in_flight,
                 extra={"event": "started", "pollers": self.poller_count,
                        "workers": self.worker_count, "max_in_flight": self.max_in_flight})
        while not self._stop.wait(0.5):
            pass
        try:
            self._shutdown()
        finally:
            self.state = "stopped"
        return 0

    # -- health ------------------------------------------------------------------------------

    def liveness(self) -> tuple[bool, str]:
        """Whether the poll loop is alive: threads running and no receive stuck past its limit."""
        if self.state in ("created", "starting"):
            return True, self.state
        if self.state == "stopped":
            return False, "stopped"
        now = time.monotonic()
        for i, thread in enumerate(self._pollers):
            if not thread.is_alive() and not self._stop.is_set():
                return False, f"poller-{i} has died"
            deadline = self._poll_deadlines.get(i)
            if deadline is not None and now > deadline and not self._stop.is_set():
                late = now - deadline
                return False, f"poller-{i} has made no progress for {late:.0f}s past its limit"
        dead = [t.name for t in (*self._workers, self._acker_thread) if t and not t.is_alive()]
        if dead and not self._stop.is_set():
            return False, f"{', '.join(dead)} died"
        return True, "stopping" if self._stop.is_set() else "polling"

    # -- polling -----------------------------------------------------------------------------

    def _poll_loop(self, index: int) -> None:
        backoff = 0.0
        source = self.source
        reserve = int(getattr(source, "max_batch", 10))

        def room_or_stop() -> bool:
            return self._stop.is_set() or self._in_flight + reserve <= self.max_in_flight

        while not self._stop.is_set():
            self._poll_deadlines[index] = None  # waiting for capacity is not a stall
            with self._cond:
                while not room_or_stop():
                    self._cond.wait(0.5)
                if self._stop.is_set():
                    break
                self._in_flight += reserve
            self._poll_deadlines[index] = time.monotonic() + self.receive_allowance
            try:
                messages = source.receive()
            except Exception as exc:
                self._finish(reserve)
                backoff = min(BACKOFF_MAX_SECONDS, backoff * 2 or BACKOFF_START_SECONDS)
                delay = random.uniform(backoff / 2, backoff)
                log.error("receive from %s failed: %s; retrying in %.1fs", self.source_label,
                          describe_error(exc), delay,
                          extra={"event": "receive_failed", "error": error_code(exc)})
                self._sleep(index, delay)
                continue
            except BaseException:
                self._finish(reserve)  # the thread dies; liveness reports it
                raise
            backoff = 0.0
            self.pipeline.stats.polled()
            count = len(messages)
            if count > reserve:  # a source that returned more than it promised
                with self._cond:
                    self._in_flight += count - reserve
            elif count < reserve:
                self._finish(reserve - count)
            if count:
                self.pipeline.stats.add("received", count)
                self._accept(messages)
            else:
                log.debug("no messages from %s", self.source_label,
                          extra={"event": "received", "count": 0})
            self._sleep(index, source.idle_delay(count))

    def _accept(self, messages: list[Message]) -> None:
        if self._stop.is_set():
            # The receive returned after the signal: hand the messages straight back.
            self._release(messages, "received during shutdown")
            self._finish(len(messages))
            return
        with self._cond:
            for message in messages:
                self._unwritten[id(message)] = message
        log.info("received %s from %s", _count(len(messages)), self.source_label,
                 extra={"event": "received", "count": len(messages)})
        self._observe("sqs_processor_batch_received", pipeline=self.pipeline, messages=messages)
        for message in messages:
            self._work.put(message)

    def _sleep(self, index: int, delay: float) -> None:
        if delay > 0 and not self._stop.is_set():
            self._poll_deadlines[index] = time.monotonic() + delay + self.receive_allowance
            self._stop.wait(delay)

    # -- processing --------------------------------------------------------------------------

    def _work_loop(self) -> None:
        while True:
            message = self._work.get()
            if message is None:
                return
            if self._abandon.is_set():
                continue  # past the shutdown deadline: the main thread releases it
            try:
                self._process(message)
            except Exception:  # a bug in the engine itself; never let it kill the worker
                log.exception("unexpected error while processing message %s", message.message_id,
                              extra={"event": "internal_error", "message_id": message.message_id})
                self._failed(message, "engine", RuntimeError("internal error"))

    def _process(self, message: Message) -> None:
        outcome = process_message(message, self.pipeline.transforms, self.sink, self.sink_stage)
        if outcome.status == "dropped":
            self._dropped(message, outcome.stage.removeprefix("transform:"))
            return
        if outcome.status == "failed":
            assert outcome.error is not None
            self._failed(message, outcome.stage, outcome.error)
            return
        record, written = outcome.record, outcome.result
        assert written is not None
        stats = self.pipeline.stats
        if written.created:
            stats.add("written")
            log.info("stored message %s at %s", message.message_id, written.location,
                     extra={"event": "stored", "message_id": message.message_id,
                            "location": written.location})
        else:
            stats.add("existing")
            log.info("message %s was already stored at %s (redelivery)", message.message_id,
                     written.location, extra={"event": "already_stored",
                                              "message_id": message.message_id,
                                              "location": written.location})
        self._observe("sqs_processor_message_written", pipeline=self.pipeline, record=record,
                      result=written)
        self._to_ack(message)

    def _dropped(self, message: Message, step: str) -> None:
        self.pipeline.stats.add("dropped")
        log.info("message %s dropped by transform %s", message.message_id, step,
                 extra={"event": "dropped", "message_id": message.message_id, "step": step})
        self._to_ack(message)

    def _to_ack(self, message: Message) -> None:
        with self._cond:
            self._unwritten.pop(id(message), None)
        self._acks.put(message)

    def _failed(self, message: Message, stage: str, error: BaseException) -> None:
        self.pipeline.stats.add_failure(stage)
        with self._cond:
            self._unwritten.pop(id(message), None)
        log.warning("message %s failed at %s: %s; left in the queue for redelivery "
                    "(receive count %d)", message.message_id, stage, describe_error(error),
                    message.receive_count,
                    extra={"event": "failed", "message_id": message.message_id, "stage": stage,
                           "error": error_code(error)})
        self._observe("sqs_processor_message_failed", pipeline=self.pipeline, message=message,
                      stage=stage, error=error)
        self._finish(1)

    def _finish(self, count: int) -> None:
        with self._cond:
            self._in_flight -= count
            self._cond.notify_all()

    # -- acknowledging -----------------------------------------------------------------------

    def _ack_loop(self) -> None:
        limit = max(1, int(getattr(self.acker, "max_batch", 10)))
        closing = False
        while not closing:
            first = self._acks.get()
            if first is None:
                return
            batch = [first]
            deadline = time.monotonic() + ACK_LINGER_SECONDS
            while len(batch) < limit:
                remaining = deadline - time.monotonic()
                try:
                    item = self._acks.get(timeout=remaining) if remaining > 0 else \
                        self._acks.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    closing = True
                    break
                batch.append(item)
            try:
                self._ack(batch)
            except Exception:
                log.exception("unexpected error while acknowledging %d messages", len(batch),
                              extra={"event": "internal_error"})
                self._finish(len(batch))

    def _ack(self, messages: Sequence[Message]) -> None:
        pending = list(messages)
        for attempt in range(1, ACK_ATTEMPTS + 1):
            try:
                failures = self.acker.ack(pending)
            except Exception as exc:
                failures = [AckFailure(m, error_code(exc), describe_error(exc), retryable=True)
                            for m in pending]
            failed = {id(f.message) for f in failures}
            done = [m for m in pending if id(m) not in failed]
            if done:
                self._acked(done)
            retry: list[Message] = []
            for failure in failures:
                if failure.retryable and attempt < ACK_ATTEMPTS and not self._abandon.is_set():
                    retry.append(failure.message)
                else:
                    self._ack_gave_up(failure)
            if not retry:
                return
            pending = retry
            time.sleep(0.2 * attempt)

    def _acked(self, messages: list[Message]) -> None:
        self.pipeline.stats.add("processed", len(messages))
        ids = [m.message_id for m in messages]
        log.info("deleted %s with %s: %s", _count(len(messages)), self.ack_label, " ".join(ids),
                 extra={"event": "acked", "count": len(messages)})
        self._observe("sqs_processor_batch_acked", pipeline=self.pipeline, messages=messages)
        self._finish(len(messages))

    def _ack_gave_up(self, failure: AckFailure) -> None:
        self.pipeline.stats.add("ack_failed")
        log.warning("could not delete message %s: %s %s; it will be redelivered and "
                    "recognised as already stored", failure.message.message_id, failure.code,
                    failure.detail,
                    extra={"event": "ack_failed", "message_id": failure.message.message_id,
                           "error": failure.code})
        self._finish(1)

    # -- shutdown ----------------------------------------------------------------------------

    def _release(self, messages: Sequence[Message], why: str) -> None:
        if not messages:
            return
        self.pipeline.stats.add("released", len(messages))
        log.info("releasing %s (%s) for immediate redelivery", _count(len(messages)), why,
                 extra={"event": "released", "count": len(messages)})
        try:
            self.source.release(messages)
        except Exception as exc:
            log.warning("could not release messages: %s; they return after their visibility "
                        "timeout", describe_error(exc), extra={"event": "release_failed"})

    def _shutdown(self) -> None:
        self.state = "stopping"
        deadline = time.monotonic() + self.grace_seconds
        with self._cond:
            in_flight = self._in_flight
        log.info("stopping: finishing in-flight messages for up to %gs", self.grace_seconds,
                 extra={"event": "stopping", "in_flight": in_flight})
        for thread in self._pollers:
            thread.join(max(0.0, deadline - time.monotonic()))
        with self._cond:
            self._cond.wait_for(lambda: self._in_flight <= 0,
                                timeout=max(0.0, deadline - time.monotonic()))
            leftovers = list(self._unwritten.values())
            self._unwritten.clear()
        if leftovers:
            self._abandon.set()
            self._release(leftovers, "shutdown deadline reached")
        for _ in self._workers:
            self._work.put(None)
        self._acks.put(None)
        # The deletes of everything already written must still go out.
        if self._acker_thread is not None:
            self._acker_thread.join(max(5.0, deadline - time.monotonic()))
        for thread in self._workers:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._observe("sqs_processor_shutdown", pipeline=self.pipeline)
        close_pipeline(self.pipeline)
        stats = self.pipeline.stats.snapshot()
        log.info("stopped: %d processed, %d failed, %d released", stats["processed"],
                 stats["failed"], stats["released"], extra={"event": "stopped", **stats})

    # -- observers ---------------------------------------------------------------------------

    def _observe(self, hook: str, **kwargs: Any) -> None:
        for function, argnames, plugin_name in self._observers[hook]:
            try:
                call_impl(function, argnames, kwargs)
            except Exception as exc:
                log.warning("%s of plugin %s raised %s", hook, plugin_name, describe_error(exc),
                            extra={"event": "observer_failed", "plugin": plugin_name})


def _count(n: int) -> str:
    return f"{n} message" if n == 1 else f"{n} messages"
