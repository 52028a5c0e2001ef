"""The runner's own guarantees, with in-memory components (no AWS needed for these)."""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from helpers.support import wait_for, write_config

from sqs_processor import (
    Acker,
    AckerSpec,
    AckFailure,
    Message,
    Option,
    Record,
    Sink,
    SinkSpec,
    Source,
    SourceSpec,
    TransformSpec,
    WriteResult,
    hookimpl,
)
from sqs_processor.config import load_config
from sqs_processor.loaders import build_plugin_manager
from sqs_processor.pipeline import build_pipeline
from sqs_processor.runner import Runner


class MemorySource(Source):
    def __init__(self, bodies: Sequence[str], batch: int) -> None:
        self.max_batch = batch
        self._bodies = list(bodies)
        self._ids = itertools.count()
        self._lock = threading.Lock()
        self.released: list[str] = []

    def receive(self) -> list[Message]:
        with self._lock:
            batch, self._bodies = self._bodies[: self.max_batch], self._bodies[self.max_batch :]
        now = datetime.now(UTC)
        return [Message(f"m-{next(self._ids)}", f"rh-{body}", body, now) for body in batch]

    def idle_delay(self, received: int) -> float:
        return 0.0 if received else 0.05

    def release(self, messages: Sequence[Message]) -> None:
        self.released.extend(m.message_id for m in messages)


class MemorySink(Sink):
    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.objects: dict[str, dict[str, Any]] = {}
        self.lock = threading.Lock()

    def write(self, record: Record) -> WriteResult:
        time.sleep(self.delay)
        with self.lock:
            created = record.message.message_id not in self.objects
            self.objects.setdefault(record.message.message_id, dict(record.document))
        return WriteResult(f"memory:{record.message.message_id}", created)


class RecordingAcker(Acker):
    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.fail_once: dict[str, AckFailure] = {}
        self.offered: Counter[str] = Counter()  # body -> how many calls it was in

    def ack(self, messages: Sequence[Message]) -> list[AckFailure]:
        self.offered.update(m.body for m in messages)
        failures = []
        for message in messages:
            planned = self.fail_once.pop(message.body, None)
            if planned is not None:
                failures.append(AckFailure(message, planned.code, planned.detail,
                                           planned.retryable))
        failed = {id(f.message) for f in failures}
        self.batches.append([m.message_id for m in messages if id(m) not in failed])
        return failures


class MemoryPlugin:
    """Registers the memory components; the test reaches the built objects through it."""

    def __init__(self) -> None:
        self.source: MemorySource | None = None
        self.sink: MemorySink | None = None
        self.acker = RecordingAcker()
        self.outstanding = 0
        self.max_outstanding = 0
        self.lock = threading.Lock()

    @hookimpl
    def sqs_processor_sources(self):
        def build(options, context):
            self.source = MemorySource(options["bodies"], options["batch"])
            return self.source

        return SourceSpec("memory", build, "test source",
                          (Option("bodies", list), Option("batch", int, 10)))

    @hookimpl
    def sqs_processor_sinks(self):
        def build(options, context):
            self.sink = MemorySink(options["delay"])
            return self.sink

        return SinkSpec("memory", build, "test sink", (Option("delay", float, 0.0),))

    @hookimpl
    def sqs_processor_ackers(self):
        return AckerSpec("recording", lambda options, context: self.acker, "test acker")

    @hookimpl
    def sqs_processor_transforms(self):
        def fail_some(record):
            if record.message.body.startswith("bad"):
                raise ValueError("bad message")
            if record.message.body.startswith("drop"):
                return None
            if record.message.body.startswith("swap"):
                return Record.from_message(Message("other", "rh", "x", datetime.now(UTC)))
            return record

        return TransformSpec("picky", lambda options, context: fail_some, "test transform")

    @hookimpl
    def sqs_processor_batch_received(self, messages):
        with self.lock:
            self.outstanding += len(messages)
            self.max_outstanding = max(self.max_outstanding, self.outstanding)

    @hookimpl
    def sqs_processor_batch_acked(self, messages):
        with self.lock:
            self.outstanding -= len(messages)

    @hookimpl
    def sqs_processor_message_failed(self, message):
        with self.lock:
            self.outstanding -= 1


def make_runner(tmp_path: Path, bodies: list[str], *, service: dict | None = None,
                batch: int = 10, sink_delay: float = 0.0) -> tuple[Runner, MemoryPlugin]:
    config = {
        "service": {"health_port": 0, **(service or {})},
        "aws": {"region": "us-east-1"},
        "source": {"type": "memory", "bodies": bodies, "batch": batch},
        "transforms": ["picky"],
        "sink": {"type": "memory", "delay": sink_delay},
        "ack": {"type": "recording"},
    }
    loaded = load_config(write_config(tmp_path, config))
    plugin = MemoryPlugin()
    manager = build_plugin_manager(loaded.plugin_settings, extra_plugins=[("memory", plugin)])
    return Runner(build_pipeline(loaded, manager)), plugin


def run_until(runner: Runner, predicate, timeout: float = 20.0) -> None:
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    try:
        wait_for(predicate, timeout=timeout)
    finally:
        runner.stop()
        thread.join(20)
    assert not thread.is_alive()


def test_messages_in_flight_never_exceed_max_in_flight(tmp_path: Path):
    bodies = [f"ok-{i}" for i in range(200)]
    runner, plugin = make_runner(tmp_path, bodies, sink_delay=0.01, batch=5,
                                 service={"max_in_flight": 15, "workers": 8, "pollers": 3})
    run_until(runner, lambda: runner.pipeline.stats.snapshot()["processed"] == 200)
    assert len(plugin.sink.objects) == 200
    assert 5 <= plugin.max_outstanding <= 15


def test_deletes_go_out_in_batches_of_up_to_ten(tmp_path: Path):
    bodies = [f"ok-{i}" for i in range(100)]
    runner, plugin = make_runner(tmp_path, bodies, service={"max_in_flight": 100, "workers": 10})
    run_until(runner, lambda: runner.pipeline.stats.snapshot()["processed"] == 100)
    sizes = [len(batch) for batch in plugin.acker.batches]
    assert sum(sizes) == 100
    assert max(sizes) <= 10
    # Finished messages are batched, not deleted one call each.
    assert len(sizes) <= 30


def test_a_failing_transform_affects_only_its_message(tmp_path: Path):
    bodies = ["ok-1", "bad-1", "ok-2", "drop-1", "bad-2", "swap-1", "ok-3"]
    runner, plugin = make_runner(tmp_path, bodies)
    stats = runner.pipeline.stats
    run_until(runner, lambda: stats.snapshot()["processed"] == 4
              and stats.snapshot()["failed"] == 3)
    assert sorted(d["body"] for d in plugin.sink.objects.values()) == ["ok-1", "ok-2", "ok-3"]
    acked = [m for batch in plugin.acker.batches for m in batch]
    assert len(acked) == 4  # three written, one dropped; failed ones are never acknowledged
    assert stats.snapshot()["dropped"] == 1


def test_retryable_ack_failures_are_retried_and_others_given_up(tmp_path: Path):
    runner, plugin = make_runner(tmp_path, ["ok-a", "ok-b", "ok-c"])
    dummy = Message("x", "x", "x", datetime.now(UTC))
    plugin.acker.fail_once["ok-a"] = AckFailure(dummy, "InternalError", "try again", True)
    plugin.acker.fail_once["ok-b"] = AckFailure(dummy, "ReceiptHandleIsInvalid", "", False)
    stats = runner.pipeline.stats
    run_until(runner, lambda: stats.snapshot()["processed"] == 2
              and stats.snapshot()["ack_failed"] == 1)
    acked = [m for batch in plugin.acker.batches for m in batch]
    assert len(acked) == 2 and len(set(acked)) == 2
    # The retryable failure was offered once more; the other failure was given up at once.
    assert plugin.acker.offered == {"ok-a": 2, "ok-b": 1, "ok-c": 1}


def test_a_receive_that_raises_backs_off_and_recovers(tmp_path: Path, caplog):
    # One poller, so the second call is the failed poller's own retry after its backoff.
    runner, _ = make_runner(tmp_path, [f"ok-{i}" for i in range(5)], service={"pollers": 1})
    source = runner.pipeline.source
    original = source.receive
    calls: list[float] = []

    def flaky():
        calls.append(time.monotonic())
        if len(calls) == 1:
            raise ConnectionError("queue unreachable")
        return original()

    source.receive = flaky
    run_until(runner, lambda: runner.pipeline.stats.snapshot()["processed"] == 5)
    assert len(calls) >= 2
    assert 0.5 <= calls[1] - calls[0] < 1.5  # the first backoff is 0.5-1 s, with jitter
    assert any("receive from memory failed" in r.getMessage() for r in caplog.records)


def test_more_pollers_than_the_budget_lets_receive_at_once_are_named_at_start(
    tmp_path: Path, caplog
):
    # 1 MiB messages (the source's default largest): each receive beside another needs 40 MiB.
    runner, _ = make_runner(tmp_path, ["ok-1"], service={"pollers": 4})
    with caplog.at_level("WARNING", logger="sqs_processor"):
        run_until(runner, lambda: runner.pipeline.stats.snapshot()["processed"] == 1)
    [warning] = [r for r in caplog.records if getattr(r, "event", "") == "pollers_limited"]
    assert warning.receives_at_once == 2
    assert "service.pollers is 4, but service.max_in_flight_mib (64)" in warning.getMessage()
    assert "Set max_in_flight_mib to 121 for all of them" in warning.getMessage()

    quiet, _ = make_runner(tmp_path, ["ok-2"], service={"pollers": 4, "max_in_flight_mib": 121})
    caplog.clear()
    with caplog.at_level("WARNING", logger="sqs_processor"):
        run_until(quiet, lambda: quiet.pipeline.stats.snapshot()["processed"] == 1)
    assert not [r for r in caplog.records if getattr(r, "event", "") == "pollers_limited"]


def test_stop_releases_what_is_unfinished_at_the_deadline(tmp_path: Path):
    # Writes take a minute; the grace is half a second. A runner that waited for the writes
    # instead of keeping to its grace would take over 60 s to stop.
    grace = 0.5
    runner, plugin = make_runner(tmp_path, [f"ok-{i}" for i in range(4)], sink_delay=60.0,
                                 service={"shutdown_grace_seconds": grace, "workers": 2})
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    wait_for(lambda: runner.pipeline.stats.snapshot()["received"] == 4)
    started = time.monotonic()
    runner.stop()
    thread.join(10)
    assert not thread.is_alive()
    assert time.monotonic() - started < 40  # grace, then at most ~5 s for the ack flush
    assert sorted(plugin.source.released) == ["m-0", "m-1", "m-2", "m-3"]
    assert runner.pipeline.stats.snapshot()["processed"] == 0


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_liveness_reports_a_dead_poller(tmp_path: Path):
    runner, _ = make_runner(tmp_path, [])
    source = runner.pipeline.source
    alive = threading.Event()

    class Crash(BaseException):
        """Not an Exception: nothing in the poll loop catches it, so the thread dies."""

    def receive():
        if alive.wait(10):
            raise Crash()
        return []

    source.receive = receive
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    assert runner.wait_started(5)
    assert runner.liveness() == (True, "polling")
    alive.set()
    wait_for(lambda: not runner.liveness()[0], timeout=5, message="liveness to fail")
    assert "poller-0 has died" in runner.liveness()[1]
    runner.stop()
    thread.join(10)
    assert not thread.is_alive()


def test_a_component_that_fails_to_start_stops_the_run_with_exit_code_1(tmp_path: Path, caplog):
    runner, _ = make_runner(tmp_path, ["ok-1"])

    def refuse():
        raise PermissionError("no access to the archive")

    runner.pipeline.sink.start = refuse
    assert runner.run() == 1
    assert runner.state == "stopped"
    assert runner.pipeline.stats.snapshot()["received"] == 0
    [line] = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    # The component, the plugin that provides it, the error, and where it was raised.
    assert line.startswith("could not start the sink 'memory' from module memory: "
                           "PermissionError: no access to the archive (")
    assert line.endswith(f"{__file__}, line {refuse.__code__.co_firstlineno + 1})")
