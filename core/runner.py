"""Running a built pipeline: the runner builds the engine's units and owns their order.

One message's way (DESIGN, "The engine: named units")::

    Poller ---reserve---> InFlight ---Job---> WorkerPool ---outcome---> Settlement ---> AckPool
    receive, backoff,     room and jobs,      transforms, sink;         stats, metrics,  batched
    liveness              one lock            a system failure goes     log, span,       deletes,
                                              to SystemPause and        observers        retries
                                              RetryTimer

    VisibilityHeartbeat reads InFlight and extends; BatchWriter stands in for a batched sink.

Each unit gets its collaborators in its constructor and owns its own state; :func:`assemble`
wires them (the test kit wires the same units, with no threads). The runner itself does no
per-message work. **The start and shutdown order below is the delivery guarantee**: a message
is deleted only after it was written, and whatever is unfinished when the grace period ends is
handed back, never dropped.

Start (:meth:`Runner.run`):

1. telemetry (botocore instrumentation, the AWS call timer, the gauges);
2. the pipeline's start steps: AWS clients, ``start()`` of the source, sink, acker and error
   sink, then every ``sqs_processor_startup`` hook; the first failure ends the run (exit 1);
3. the units are assembled; the source's visibility timeout is read (a batched sink whose
   ``max_age`` would outlive it without the heartbeat ends the run, exit 1);
4. threads start consumers first: ack threads, batch flushers, the heartbeat, workers, and
   last the pollers, so nothing is received before everything downstream can take it.

Shutdown (:meth:`Runner.stop`, on SIGTERM/SIGINT, then :meth:`_shutdown`):

1. pollers stop after the receive in progress; what a receive returns after the signal is
   released at once (visibility 0);
2. open batches are written now, not at their age;
3. in-flight messages have until ``service.shutdown_grace_seconds`` to finish (written and
   deleted); messages waiting out a system pause are released at once (as soon as the stop
   begins, before the pollers are joined);
4. the heartbeat stops;
5. what the sink has still not finished with is released, and queued work is abandoned;
6. workers and batch flushers stop;
7. the deletes of everything written are flushed (the ack threads get at least 5 s);
8. ``sqs_processor_shutdown`` hooks run, components close, the totals are logged.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqs_processor.acks import AckPool
from sqs_processor.batching import BatchWriter
from sqs_processor.components import BatchedSink
from sqs_processor.heartbeat import VisibilityHeartbeat
from sqs_processor.inflight import InFlight, Job
from sqs_processor.memory import map_large_blocks
from sqs_processor.metrics import Metrics
from sqs_processor.observers import Observers, OnError, log_observer_error
from sqs_processor.pause import RetryTimer, SystemPause
from sqs_processor.pipeline import Pipeline, close_pipeline
from sqs_processor.poller import Poller
from sqs_processor.settlement import OUTCOME_LABELS, Settlement
from sqs_processor.stalls import OutstandingCalls
from sqs_processor.telemetry import Telemetry
from sqs_processor.tracing import MessageTracing, TracedSink
from sqs_processor.workers import MessageFailures, WorkerPool

log = logging.getLogger("sqs_processor.runner")


@dataclass
class Units:
    """The engine's units for one pipeline, wired together."""

    inflight: InFlight
    pause: SystemPause
    retries: RetryTimer
    tracing: MessageTracing
    observers: Observers
    settlement: Settlement
    workers: WorkerPool
    acks: AckPool
    poller: Poller
    batches: BatchWriter | None


def assemble(pipeline: Pipeline, telemetry: Telemetry, *, threaded: bool,
             stop: threading.Event, abandon: threading.Event,
             visibility: float | None = None, hand_off: Callable[[Job], None] | None = None,
             on_observer_error: OnError = log_observer_error) -> Units:
    """Build and wire the units. ``threaded`` False builds them with no threads of their own,
    for a caller that drives them in one thread (the test kit), and ``hand_off`` then receives
    each job the poller brings instead of the workers' queue."""
    service = pipeline.config.service
    source = pipeline.source
    name = source.queue_name or pipeline.config.source.type
    tracing = MessageTracing(telemetry.tracer, telemetry.tracing, name,
                             source.messaging_system or pipeline.config.source.type)
    inflight = InFlight(service["max_in_flight"], service["max_in_flight_mib"] * 1024 * 1024,
                        largest_message=max(1, int(source.max_message_bytes)))
    pause = SystemPause(service["system_backoff_max_seconds"])
    retries = RetryTimer(threaded=threaded)
    observers = Observers(pipeline.plugins, on_observer_error)
    finished: queue.SimpleQueue[Job | None] = queue.SimpleQueue()  # settled, to delete
    settlement = Settlement(pipeline, telemetry.metrics, inflight, observers, tracing,
                            to_ack=finished.put)
    acks = AckPool(pipeline.acker, settlement, pause, tracing, finished,
                   threads=service["ack_threads"] if threaded else 0, abandon=abandon,
                   label=pipeline.config.ack.type)
    failures = MessageFailures(pipeline, settlement, tracing)
    stage = f"sink:{pipeline.config.sink.type}"
    batches = None
    sink = pipeline.sink
    if isinstance(sink, BatchedSink):
        batches = BatchWriter(sink, stage, inflight, settlement, pause, retries, tracing,
                              failures, abandon=abandon)
        sink = batches
    elif telemetry.tracing:
        sink = TracedSink(sink)
    workers = WorkerPool(pipeline, settlement, pause, retries, tracing, failures, sink=sink,
                         threads=service["workers"] if threaded else 0, abandon=abandon)
    poller = Poller(pipeline, inflight, pause, hand_off or workers.submit, settlement, tracing,
                    telemetry.metrics, observers, threads=service["pollers"] if threaded else 0,
                    stop=stop, visibility=visibility)
    return Units(inflight, pause, retries, tracing, observers, settlement, workers, acks,
                 poller, batches)


def zero_series(metrics: Metrics, pipeline: Pipeline, queue: str) -> None:
    """Every counter at 0 from the start, for the queue, the outcomes and the pipeline's stages
    (:meth:`Metrics.zero`), so a rate over them is defined before traffic."""
    stages = [f"transform:{name}" for name, _ in pipeline.transforms]
    stages.append(f"sink:{pipeline.config.sink.type}")
    metrics.zero(queue, dict.fromkeys(stages), OUTCOME_LABELS.values())


class Runner:
    """Drives one pipeline until :meth:`stop` is called. Not reusable after it returns.

    ``telemetry`` receives the traces and metrics; without one, metrics are still counted (for
    ``/metrics``) and spans are no-ops. It implements
    :class:`~sqs_processor.health.RunnerStatus` for the health server.
    """

    def __init__(self, pipeline: Pipeline, telemetry: Telemetry | None = None) -> None:
        self.pipeline = pipeline
        self._owns_telemetry = telemetry is None
        self.telemetry = telemetry or Telemetry()
        self.grace_seconds: float = pipeline.config.service["shutdown_grace_seconds"]
        self.state = "created"
        self.calls = OutstandingCalls(pipeline.config.service["stall_seconds"])
        self.units: Units | None = None
        self._heartbeat: VisibilityHeartbeat | None = None
        self._stop = threading.Event()
        self._abandon = threading.Event()
        self._started = threading.Event()
        self._draining = False

    # -- control -------------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the runner to shut down gracefully. Safe from any thread or a signal handler
        (takes no lock; the threads notice within their wait interval)."""
        self._stop.set()

    def drain(self) -> None:
        """Stop as :meth:`stop` does, for a reload: the same steps, logged as draining the
        previous pipeline (``draining``, ``drained``), not as the process shutting down."""
        self._draining = True
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def wait_started(self, timeout: float | None = None) -> bool:
        return self._started.wait(timeout)

    def run(self) -> int:
        """Start everything, block until stopped, shut down gracefully. Returns the exit code."""
        self.state = "starting"
        try:
            if not self._start():
                close_pipeline(self.pipeline)
                return 1
            while not self._stop.wait(0.5):
                pass
            self._shutdown()
            return 0
        finally:
            self.state = "stopped"
            if self._owns_telemetry:
                self.telemetry.shutdown()

    # -- health (RunnerStatus) ------------------------------------------------------------------

    def liveness(self) -> tuple[bool, str]:
        """Whether the poll loop is alive: threads running and no receive stuck past its limit."""
        if self.state in ("created", "starting"):
            return True, self.state
        if self.state == "stopped":
            return False, "stopped"
        if self._stop.is_set():
            return True, "stopping"
        units = self.units
        assert units is not None
        problem = units.poller.problem(time.monotonic())
        if problem:
            return False, problem
        dead = [*units.workers.dead(), *units.acks.dead(),
                *(units.batches.batcher.dead() if units.batches else ())]
        if self._heartbeat is not None and not self._heartbeat.alive():
            dead.append("heartbeat")
        if dead:
            return False, f"{', '.join(dead)} died"
        return True, "polling"

    def pause_reason(self) -> str | None:
        """Why polling is paused (a system failure not yet recovered from), or None."""
        return self.units.pause.reason() if self.units else None

    def stalls(self) -> list[str]:
        """AWS calls outstanding past ``service.stall_seconds`` (a hung endpoint)."""
        return self.calls.stalled()

    # -- start ---------------------------------------------------------------------------------

    def _start(self) -> bool:
        pipeline, telemetry = self.pipeline, self.telemetry
        map_large_blocks()  # before any message: freed bodies go back to the system
        telemetry.start()
        pipeline.aws.add_client_hook(telemetry.watch_client)
        pipeline.aws.add_client_hook(self.calls.watch_client)
        for step in pipeline.start_steps():  # clients, components, sqs_processor_startup hooks
            try:
                step.run()
            except Exception as exc:
                log.error("could not start %s", step.describe_failure(exc),
                          extra={"event": "start_failed", "component": step.where})
                return False
        service = pipeline.config.service
        visibility = pipeline.source.visibility_timeout()
        if visibility and not service["heartbeat"] and not self._batch_fits(visibility):
            return False
        units = self.units = assemble(pipeline, telemetry, threaded=True, stop=self._stop,
                                      abandon=self._abandon, visibility=visibility)
        telemetry.metrics.gauge("in_flight", lambda: len(units.inflight))
        zero_series(telemetry.metrics, pipeline, units.tracing.queue)
        units.acks.start()
        if units.batches is not None:
            units.batches.batcher.start()
        if service["heartbeat"] and visibility:
            self._heartbeat = VisibilityHeartbeat(pipeline.source, units.inflight,
                                                  telemetry.metrics, float(visibility))
            self._heartbeat.start()
        units.workers.start()
        units.poller.start()
        self.state = "running"
        self._started.set()
        log.info("pipeline running: %s (%d poller(s), %d worker(s), at most %d in flight)",
                 pipeline.describe_line(), service["pollers"], service["workers"],
                 service["max_in_flight"],
                 extra={"event": "started", "pollers": service["pollers"],
                        "workers": service["workers"], "max_in_flight": service["max_in_flight"]})
        return True

    def _batch_fits(self, visibility: float) -> bool:
        """Without the heartbeat, a batch must be written well within the visibility timeout."""
        sink = self.pipeline.sink
        if not isinstance(sink, BatchedSink) or sink.batch_policy.max_age < visibility * 0.5:
            return True
        log.error("could not start: the sink's batch max_age_seconds (%g) is not below half the "
                  "visibility timeout (%gs) and service.heartbeat is off, so waiting messages "
                  "would be redelivered; turn the heartbeat on or lower max_age_seconds",
                  sink.batch_policy.max_age, visibility,
                  extra={"event": "start_failed", "component": "sink"})
        return False

    # -- shutdown ------------------------------------------------------------------------------

    def _shutdown(self) -> None:
        units = self.units
        assert units is not None
        self.state = "stopping"
        deadline = time.monotonic() + self.grace_seconds
        if self._draining:
            log.info("draining the previous pipeline: finishing its in-flight messages for up "
                     "to %gs", self.grace_seconds,
                     extra={"event": "draining", "in_flight": len(units.inflight)})
        else:
            log.info("stopping: finishing in-flight messages for up to %gs", self.grace_seconds,
                     extra={"event": "stopping", "in_flight": len(units.inflight)})
        units.retries.cancel_all()  # 3 (first): held by a system pause: released now
        units.poller.join(deadline)  # 1
        if units.batches is not None:
            units.batches.batcher.flush_all()  # 2
        units.inflight.wait_drained(deadline - time.monotonic())  # 3
        if self._heartbeat is not None:
            self._heartbeat.stop()  # 4
        leftovers: list[Job] = units.inflight.unwritten()
        if leftovers:  # 5
            self._abandon.set()
            units.settlement.released(leftovers, "shutdown deadline reached")
        units.workers.stop(deadline)  # 6
        if units.batches is not None:
            units.batches.batcher.close(max(1.0, deadline - time.monotonic()))
        units.acks.close(deadline)  # 7
        units.observers.notify("sqs_processor_shutdown", pipeline=self.pipeline)  # 8
        close_pipeline(self.pipeline)
        units.settlement.summary.flush()  # the last interval's counts, before the totals
        stats = self.pipeline.stats.snapshot()
        what, event = ("previous pipeline drained", "drained") if self._draining else (
            "stopped", "stopped")
        log.info("%s: %d processed, %d failed, %d released", what, stats["processed"],
                 stats["failed"], stats["released"], extra={"event": event, **stats})
