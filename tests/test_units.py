"""The engine's units on their own: InFlight, SystemPause and Backoff, RetryTimer, AckPool,
VisibilityHeartbeat, Poller and WorkerPool, each driven directly with fakes for what it talks to.

The end-to-end suites prove the guarantees; these pin down each unit's own rules (the backoff
maths, the blame rule, exactly-once settlement, retries) so a change to one shows where it broke.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from helpers.support import wait_for, write_config
from opentelemetry import trace
from opentelemetry.context import Context

from sqs_processor import (
    Acker,
    AckerSpec,
    AckFailure,
    Message,
    Record,
    SourceSpec,
    SystemFailure,
    TransformSpec,
    hookimpl,
)
from sqs_processor.acks import ACK_ATTEMPTS
from sqs_processor.config import load_config
from sqs_processor.heartbeat import MAX_VISIBILITY_SECONDS, VisibilityHeartbeat
from sqs_processor.inflight import (
    MESSAGE_OVERHEAD,
    InFlight,
    Job,
    Reservation,
    message_cost,
    plain_cost,
)
from sqs_processor.loaders import build_plugin_manager
from sqs_processor.pause import SYSTEM_RETRIES_BEFORE_BLAME, Backoff, RetryTimer, SystemPause
from sqs_processor.pipeline import build_pipeline
from sqs_processor.runner import assemble
from sqs_processor.telemetry import Telemetry
from sqs_processor.testing import ListSink, ListSource


def job(n: int = 0, **fields: object) -> Job:
    message = Message(f"m-{n}", f"rh-{n}", f"body-{n}", datetime.now(UTC))
    return Job(message, trace.INVALID_SPAN, Context(), **fields)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# InFlight
# --------------------------------------------------------------------------------------------


def test_inflight_room_counts_reservations_and_jobs_and_settles_each_job_once():
    inflight = InFlight(10)
    stop = threading.Event()
    receive = inflight.reserve(10, stop)
    assert receive == Reservation(10)
    assert not inflight.try_reserve(1)  # all room is reserved
    jobs = [job(i) for i in range(4)]
    inflight.track(receive, jobs)  # the receive brought 4 of the 10 it reserved
    assert len(inflight) == 4
    rest = inflight.try_reserve(6)
    assert rest == Reservation(6) and not inflight.try_reserve(1)
    inflight.unreserve(rest)
    assert inflight.settle(jobs[0]) is True
    assert inflight.settle(jobs[0]) is False  # a second settlement of one job changes nothing
    assert inflight.settle_all(jobs) == jobs[1:]
    assert len(inflight) == 0 and inflight.wait_drained(0)


def test_inflight_reserve_waits_for_room_and_gives_up_when_stopped():
    inflight = InFlight(2)
    stop = threading.Event()
    first = job(1)
    inflight.track(Reservation(0), [first, job(2)])  # a source that returned unreserved messages
    got: list[Reservation | None] = []
    waiter = threading.Thread(target=lambda: got.append(inflight.reserve(1, stop, poll=0.05)))
    waiter.start()
    time.sleep(0.2)
    assert got == []  # still waiting: the set is full
    inflight.settle(first)
    waiter.join(10)
    assert got == [Reservation(1)]
    stop.set()
    assert inflight.reserve(1, stop) is None


def _sized(n: int, body: str) -> Job:
    message = Message(f"m-{n}", f"rh-{n}", body, datetime.now(UTC))
    return Job(message, trace.INVALID_SPAN, Context(), cost=message_cost(message))


def test_a_message_costs_what_its_characters_take_once_held_parsed_and_encoded():
    size = 100_000
    ascii_text, emoji_text = "a" * size, "😀" * (size // 4)  # both 100 kB of UTF-8
    quotes = '\\"' * (size // 2)  # every character escaped in the document
    cost = {name: message_cost(Message("m", "rh", body, datetime.now(UTC)))
            for name, body in (("ascii", ascii_text), ("emoji", emoji_text),
                               ("quotes", quotes), ("one emoji", ascii_text[:-1] + "😀"))}
    assert 4 * size <= cost["ascii"] < 4 * size + 4096  # held, parsed, body and parsed encoded
    assert cost["quotes"] > 1.4 * cost["ascii"]  # escapes double the encoded document
    assert cost["one emoji"] > 2.4 * cost["ascii"]  # one emoji: 4 bytes a character in memory
    assert cost["emoji"] < cost["one emoji"]


def test_inflight_bytes_bound_receives_and_a_huge_message_still_gets_through():
    mib = 1024 * 1024
    inflight = InFlight(100, max_bytes=8 * mib)
    stop = threading.Event()
    small = inflight.reserve(10, stop)
    assert small is not None and small.size == 10 * InFlight.FLOOR  # nothing seen yet
    big = [_sized(i, "x" * mib) for i in range(3)]  # about 4 MiB each
    inflight.track(small, big)
    assert inflight.held_bytes == sum(j.cost for j in big) > 8 * mib  # over: one receive's worth
    assert inflight.try_reserve(10) is None  # the next receive waits, though the count has room
    inflight.settle_all(big[:2])
    assert inflight.try_reserve(10) is None  # expected: ten like the recent ones, capped at 8 MiB
    inflight.settle(big[2])
    alone = inflight.try_reserve(10)  # with nothing held a receive always fits
    assert alone is not None and alone.size == 8 * mib
    inflight.unreserve(alone)
    assert inflight.held_bytes == 0 and inflight.wait_drained(0)


def test_inflight_sizes_one_receive_at_a_time_on_trust_and_the_others_by_the_largest():
    mib = 1024 * 1024
    inflight = InFlight(1000, max_bytes=64 * mib, largest_message=mib)
    assert inflight.largest_cost == plain_cost(mib) == 4 * mib + MESSAGE_OVERHEAD
    first = inflight.try_reserve(10)
    assert first is not None and first.size == 10 * InFlight.FLOOR
    assert inflight.try_reserve(10) is None  # no size known yet: the first receive goes alone
    small = [_sized(i, "x" * 1000) for i in range(10)]
    inflight.track(first, small)  # now sizes are known (small ones)
    trusted = inflight.try_reserve(10)  # alone again: sized like the recent messages
    assert trusted is not None and trusted.size == 10 * InFlight.FLOOR
    second = inflight.try_reserve(10)  # beside it: room for ten of the queue's largest
    assert second is not None and second.size == 10 * plain_cost(mib)
    assert trusted.trusted and not second.trusted
    assert inflight.try_reserve(10) is None  # a third would not fit in 64 MiB beside them
    inflight.track(trusted, [])
    # Only the receive sized like the largest is in progress: it can bring no more than it took,
    # so the next one is sized on trust beside it, and one beside those two would not be.
    again = inflight.try_reserve(10)
    assert again is not None and again.trusted and again.size == 10 * InFlight.FLOOR
    assert inflight.try_reserve(10) is None
    inflight.unreserve(again)
    inflight.unreserve(second)
    alone = inflight.try_reserve(10)  # nothing else in progress: trusted once more
    assert alone is not None and alone.size == 10 * InFlight.FLOOR
    inflight.unreserve(alone)
    inflight.settle_all(small)
    assert inflight.held_bytes == 0 and inflight.wait_drained(0)


def test_with_a_budget_below_a_full_receive_of_the_largest_receives_take_turns():
    mib = 1024 * 1024
    inflight = InFlight(1000, max_bytes=16 * mib, largest_message=mib)
    seen = inflight.try_reserve(1)
    assert seen is not None
    inflight.track(seen, [_sized(0, "x")])
    one = inflight.try_reserve(10)
    assert one is not None
    assert inflight.try_reserve(10) is None  # ten of the largest (40 MiB) never fit in 16 MiB
    stop = threading.Event()
    got: list[Reservation | None] = []
    waiter = threading.Thread(target=lambda: got.append(inflight.reserve(10, stop, poll=0.05)))
    waiter.start()
    time.sleep(0.2)
    assert got == []  # waits while the other receive is in progress
    inflight.track(one, [])
    waiter.join(10)
    assert len(got) == 1 and got[0] is not None and got[0].size == 10 * InFlight.FLOOR


def test_inflight_unwritten_leaves_jobs_that_only_wait_for_their_delete():
    inflight = InFlight(5)
    written, pending = job(1, written=True), job(2)
    inflight.track(Reservation(0), [written, pending])
    assert inflight.unwritten() == [pending]
    assert not inflight.wait_drained(0.05)


# --------------------------------------------------------------------------------------------
# SystemPause and Backoff
# --------------------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def upper(low: float, high: float) -> float:
    """A 'random' draw that always takes the top of the range."""
    return high


def test_backoff_doubles_from_one_second_up_to_its_maximum_drawing_from_the_upper_half():
    draws: list[tuple[float, float]] = []

    def record(low: float, high: float) -> float:
        draws.append((low, high))
        return low

    backoff = Backoff(10.0, uniform=record)
    delays = [backoff.next_delay() for _ in range(6)]
    assert draws == [(0.5, 1), (1, 2), (2, 4), (4, 8), (5, 10), (5, 10)]
    assert delays == [0.5, 1, 2, 4, 5, 5]
    backoff.reset()
    assert backoff.next_delay() == 0.5


def test_a_pause_is_shared_by_failures_within_it_and_grows_by_round():
    clock = Clock()
    pause = SystemPause(60.0, clock=clock, uniform=upper)
    assert pause.pause("write", "s3: AccessDenied") == 1.0
    clock.now += 0.4
    assert pause.pause("write", "s3: AccessDenied") == pytest.approx(0.6)  # same round
    assert pause.reason() == "s3: AccessDenied"
    clock.now += 0.6
    assert pause.remaining() == 0
    assert pause.pause("write", "s3: AccessDenied") == 2.0  # a new round backs off further
    assert pause.remaining() == 2.0


def test_only_a_success_of_the_kind_that_failed_ends_the_pause():
    pause = SystemPause(60.0, clock=Clock(), uniform=upper)
    pause.pause("write", "s3: NoSuchBucket")
    pause.recovered("ack")
    assert pause.reason() == "s3: NoSuchBucket"
    pause.write_succeeded()
    assert pause.reason() is None and pause.remaining() == 0
    assert pause.pause("write", "again") == 1.0  # the backoff started over


def test_pollers_wait_out_the_pause_and_stop_interrupts_the_wait():
    pause = SystemPause(60.0, uniform=upper)
    pause.pause("write", "down")
    stop = threading.Event()
    started = time.monotonic()
    waiter = threading.Thread(target=pause.wait, args=(stop,))
    waiter.start()
    time.sleep(0.1)
    assert waiter.is_alive()
    stop.set()
    waiter.join(5)
    assert not waiter.is_alive() and time.monotonic() - started < 5


def test_a_message_is_blamed_only_after_repeated_system_failures_while_others_are_written():
    pause = SystemPause(60.0, clock=Clock(), uniform=upper)
    suspect = job(1)
    for _ in range(SYSTEM_RETRIES_BEFORE_BLAME):
        assert not pause.blame(suspect)
        pause.note_system_failure(suspect)
    assert not pause.blame(suspect)  # three failures, but nothing else was written: an outage
    pause.write_succeeded()
    assert pause.blame(suspect)  # others get through; this one keeps failing: its own fault


# --------------------------------------------------------------------------------------------
# RetryTimer
# --------------------------------------------------------------------------------------------


def test_retry_timer_runs_each_retry_once_after_its_delay_and_cancels_the_rest():
    timer = RetryTimer()
    ran: list[str] = []
    cancelled: list[str] = []
    timer.later(0.05, lambda: ran.append("soon"), lambda: cancelled.append("soon"))
    timer.later(60.0, lambda: ran.append("late"), lambda: cancelled.append("late"))
    wait_for(lambda: ran == ["soon"], timeout=10, message="the short retry to run")
    assert timer.cancel_all() == 1
    assert cancelled == ["late"] and ran == ["soon"]
    timer.later(0.0, lambda: ran.append("after close"), lambda: cancelled.append("after close"))
    assert cancelled == ["late", "after close"]  # a closed timer cancels at once


def test_an_unthreaded_retry_timer_only_ever_cancels():
    timer = RetryTimer(threaded=False)
    events: list[str] = []
    timer.later(0.0, lambda: events.append("ran"), lambda: events.append("cancelled"))
    time.sleep(0.1)
    assert events == []
    timer.cancel_all()
    assert events == ["cancelled"]


# --------------------------------------------------------------------------------------------
# Units wired over a real pipeline (in-memory components)
# --------------------------------------------------------------------------------------------


class Scripted(Acker):
    """Fails each message's first ``fail`` acks with the given failure; records every call."""

    def __init__(self) -> None:
        self.plan: dict[str, list[AckFailure]] = {}
        self.calls: list[list[str]] = []
        self.raise_next: Exception | None = None

    def ack(self, messages: Sequence[Message]) -> list[AckFailure]:
        self.calls.append([m.message_id for m in messages])
        if self.raise_next is not None:
            error, self.raise_next = self.raise_next, None
            raise error
        failures = []
        for message in messages:
            planned = self.plan.get(message.message_id)
            if planned:
                failure = planned.pop(0)
                failures.append(AckFailure(message, failure.code, failure.detail,
                                           failure.retryable))
        return failures


class Parts:
    def __init__(self, bodies: list[str]) -> None:
        self.source = ListSource(bodies)
        self.sink = ListSink()
        self.acker = Scripted()

    @hookimpl
    def sqs_processor_sources(self):
        return SourceSpec("unit.list", lambda o, c: self.source)

    @hookimpl
    def sqs_processor_sinks(self):
        from sqs_processor import SinkSpec

        return SinkSpec("unit.list", lambda o, c: self.sink)

    @hookimpl
    def sqs_processor_ackers(self):
        return AckerSpec("unit.scripted", lambda o, c: self.acker)

    @hookimpl
    def sqs_processor_transforms(self):
        def outage(record: Record) -> Record:
            if record.message.body.startswith("outage"):
                raise SystemFailure("storage unreachable")
            return record

        return TransformSpec("unit.outage", lambda o, c: outage)


def wired(tmp_path: Path, bodies: list[str], **service: object):
    parts = Parts(bodies)
    document = {"service": {"health_port": 0, **service}, "aws": {"region": "us-east-1"},
                "source": {"type": "unit.list"}, "transforms": ["unit.outage"],
                "sink": {"type": "unit.list"}, "ack": {"type": "unit.scripted"}}
    config = load_config(write_config(tmp_path, document))
    manager = build_plugin_manager(config.plugin_settings, extra_plugins=[("parts", parts)])
    pipeline = build_pipeline(config, manager)
    received: list[Job] = []
    units = assemble(pipeline, Telemetry(), threaded=False, stop=threading.Event(),
                     abandon=threading.Event(), hand_off=received.append)
    return parts, pipeline, units, received


def test_poll_once_tracks_what_the_receive_brought_and_hands_each_job_on(tmp_path):
    _, pipeline, units, received = wired(tmp_path, ["a", "b", "c"])
    reservation = units.inflight.try_reserve(units.poller.reserve)
    assert reservation is not None
    assert units.poller.poll_once(reservation) == 3
    assert [j.message.body for j in received] == ["a", "b", "c"]
    assert len(units.inflight) == 3 and units.inflight.try_reserve(units.inflight.max_messages - 3)
    assert pipeline.stats.snapshot()["received"] == 3


def test_a_retryable_ack_failure_is_offered_again_and_a_sender_fault_is_given_up(tmp_path):
    parts, pipeline, units, received = wired(tmp_path, ["a", "b", "c"])
    units.poller.poll_once(units.inflight.try_reserve(10))
    ids = [j.message.message_id for j in received]
    parts.acker.plan[ids[0]] = [AckFailure(received[0].message, "InternalError", "", True)]
    parts.acker.plan[ids[1]] = [AckFailure(received[1].message, "ReceiptHandleIsInvalid", "")]
    for j in received:
        units.workers.process(j)
    gave_up = units.acks.send_queued()
    assert parts.acker.calls == [ids, [ids[0]]]
    assert [f.code for f in gave_up] == ["ReceiptHandleIsInvalid"]
    stats = pipeline.stats.snapshot()
    assert stats["processed"] == 2 and stats["ack_failed"] == 1
    assert len(units.inflight) == 0  # every job settled, once


def test_a_retryable_failure_that_keeps_failing_is_given_up_after_the_last_attempt(tmp_path):
    parts, _, units, received = wired(tmp_path, ["a"])
    units.poller.poll_once(units.inflight.try_reserve(10))
    [only] = received
    parts.acker.plan[only.message.message_id] = [
        AckFailure(only.message, "InternalError", "", True) for _ in range(ACK_ATTEMPTS)]
    units.workers.process(only)
    [gave_up] = units.acks.send_queued()
    assert gave_up.code == "InternalError"
    assert len(parts.acker.calls) == ACK_ATTEMPTS


def test_an_acker_that_raises_counts_as_a_retryable_failure_of_every_message(tmp_path):
    parts, pipeline, units, received = wired(tmp_path, ["a", "b"])
    units.poller.poll_once(units.inflight.try_reserve(10))
    parts.acker.raise_next = ConnectionError("queue unreachable")
    for j in received:
        units.workers.process(j)
    assert units.acks.send_queued() == []
    assert len(parts.acker.calls) == 2  # the whole batch, once more
    assert pipeline.stats.snapshot()["processed"] == 2


def test_a_system_failure_holds_the_message_for_a_retry_instead_of_failing_it(tmp_path):
    parts, pipeline, units, received = wired(tmp_path, ["outage-1", "fine"])
    units.poller.poll_once(units.inflight.try_reserve(10))
    held, fine = received
    assert units.workers.process(held).status == "failed"
    assert pipeline.stats.snapshot()["failed"] == 0  # not the message's fault: not counted
    assert units.pause.reason() == "transform:unit.outage: SystemFailure: storage unreachable"
    assert units.workers.process(fine).status == "written"
    assert units.pause.reason() is None  # a write got through: the system is back
    assert [j.message.body for j in units.inflight.unwritten()] == ["outage-1"]
    assert units.retries.cancel_all() == 1  # it waits for its retry; shutdown releases it
    assert [m.body for m in parts.source.released] == ["outage-1"]
    assert len(units.inflight.unwritten()) == 0


# --------------------------------------------------------------------------------------------
# VisibilityHeartbeat
# --------------------------------------------------------------------------------------------


class Extending(ListSource):
    def __init__(self, refuse: Sequence[str] = (), retryable: bool = False) -> None:
        super().__init__()
        self.refuse, self.retryable = set(refuse), retryable
        self.extended: list[tuple[list[str], int]] = []

    def extend(self, messages: Sequence[Message], seconds: int) -> list[AckFailure]:
        self.extended.append(([m.message_id for m in messages], seconds))
        return [AckFailure(m, "ReceiptHandleIsInvalid", "gone", self.retryable)
                for m in messages if m.message_id in self.refuse]


def heartbeat(source: Extending, jobs: list[Job], visibility: float = 30.0):
    inflight = InFlight(100)
    inflight.track(Reservation(0), jobs)
    return VisibilityHeartbeat(source, inflight, Telemetry().metrics, visibility)


def test_the_heartbeat_extends_only_messages_near_the_end_of_their_visibility():
    now = 1000.0
    near = job(1, received=now - 20, visible_until=now + 10)  # 10 s of 30 left: < 60 %
    fresh = job(2, received=now, visible_until=now + 29)
    source = Extending()
    heartbeat(source, [near, fresh]).beat(now)
    assert source.extended == [(["m-1"], 30)]
    assert near.visible_until == now + 30 and fresh.visible_until == now + 29


def test_the_heartbeat_never_keeps_a_message_past_the_twelve_hour_cap():
    now = 100_000.0
    capped = job(1, received=now - MAX_VISIBILITY_SECONDS + 10, visible_until=now + 5)
    at_cap = job(2, received=now - MAX_VISIBILITY_SECONDS, visible_until=now + 5)
    source = Extending()
    heartbeat(source, [capped, at_cap]).beat(now)
    assert source.extended == [(["m-1"], 9)]  # only what is left under the cap
    assert at_cap.extend_failed and not capped.extend_failed


def test_a_refused_extension_is_given_up_once_and_not_tried_again():
    now = time.monotonic()
    gone = job(1, received=now - 25, visible_until=now + 5)
    source = Extending(refuse=["m-1"])
    beat = heartbeat(source, [gone])
    beat.beat(now)
    beat.beat(now + 1)
    assert source.extended == [(["m-1"], 30)]
    assert gone.extend_failed


# --------------------------------------------------------------------------------------------
# TotalCounter
# --------------------------------------------------------------------------------------------


def test_a_total_counter_exports_the_sums_an_sdk_counter_would():
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from sqs_processor.metrics import TotalCounter

    reader = InMemoryMetricReader()
    meter = MeterProvider(metric_readers=[reader]).get_meter("test")
    sdk, total = meter.create_counter("sdk"), TotalCounter(meter, "total", "summed in memory")
    written, dropped = {"outcome": "written"}, {"outcome": "dropped"}
    threads = [threading.Thread(target=lambda: [(c.add(1, written), c.add(2, dropped), c.add(1))
                                                for _ in range(500) for c in (sdk, total)])
               for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with pytest.raises(ValueError):
        total.add(-1)
    [resource] = reader.get_metrics_data().resource_metrics
    points = {metric.name: (type(metric.data).__name__, metric.data.is_monotonic,
                            sorted((dict(p.attributes or {}).get("outcome", ""), p.value)
                                   for p in metric.data.data_points))
              for scope in resource.scope_metrics for metric in scope.metrics}
    assert points["total"] == points["sdk"] == (
        "Sum", True, [("", 2000), ("dropped", 4000), ("written", 2000)])


# --------------------------------------------------------------------------------------------
# TotalHistogram
# --------------------------------------------------------------------------------------------


def _histogram_points(data: Any, name: str) -> list[Any]:
    return [point for resource in data.resource_metrics for scope in resource.scope_metrics
            for metric in scope.metrics if metric.name == name
            for point in metric.data.data_points]


def test_a_total_histogram_exports_the_points_an_sdk_histogram_would():
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope

    from sqs_processor.histograms import TotalHistogram, with_histograms

    bounds = (0.01, 0.1, 1.0)
    reader = InMemoryMetricReader()
    meter = MeterProvider(metric_readers=[reader]).get_meter("test")
    sdk = meter.create_histogram("sdk", explicit_bucket_boundaries_advisory=bounds)
    total = TotalHistogram("total", "summed in memory", "s", bounds, "always_off")
    ok, error = {"outcome": "ok"}, {"outcome": "error"}
    values = [0.0, 0.01, 0.0100001, 0.5, 1.0, 7.25]  # on and either side of the boundaries

    def record() -> None:
        for _ in range(200):
            for value in values:
                for histogram in (sdk, total):
                    histogram.record(value, ok)
                    histogram.record(value * 2, error)
                    histogram.record(value)

    threads = [threading.Thread(target=record) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for bad in (-0.001, float("nan")):
        with pytest.raises(ValueError, match="total"):
            total.record(bad)
    data = with_histograms(reader.get_metrics_data(), [total], Resource.create({}),
                           InstrumentationScope("test"))

    def summary(points: list[Any]) -> list[Any]:
        return sorted((dict(p.attributes or {}).get("outcome", ""), p.count, round(p.sum, 6),
                       tuple(p.bucket_counts), tuple(p.explicit_bounds), p.min, p.max,
                       p.exemplars) for p in points)

    expected = summary(_histogram_points(data, "sdk"))
    assert summary(_histogram_points(data, "total")) == expected
    assert [row[1] for row in expected] == [4800] * 3
    [scope] = [s for s in data.resource_metrics[0].scope_metrics if s.scope.name == "test"]
    assert {m.name for m in scope.metrics} == {"sdk", "total"}  # beside the SDK's, one scope


class _Keeper:
    """A metric exporter that keeps what it is given."""

    def __init__(self, temporality: Any) -> None:
        from opentelemetry.sdk.metrics import Histogram

        self._preferred_temporality = {Histogram: temporality}
        self._preferred_aggregation: dict[Any, Any] = {}
        self.exported: list[Any] = []

    def export(self, data: Any, timeout_millis: float = 0, **_: Any) -> Any:
        from opentelemetry.sdk.metrics.export import MetricExportResult

        self.exported.append(data)
        return MetricExportResult.SUCCESS


def _exporter(temporality: Any, *histograms: Any) -> tuple[Any, _Keeper]:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope

    from sqs_processor.histograms import HistogramExporter

    keeper = _Keeper(temporality)
    exporter = HistogramExporter(keeper, Resource.create({"service.name": "t"}),
                                 InstrumentationScope("sqs_processor"))
    exporter.histograms = histograms
    return exporter, keeper


def test_the_histogram_exporter_sends_deltas_with_the_interval_min_and_max_when_asked():
    from opentelemetry.sdk.metrics.export import AggregationTemporality, MetricsData

    from sqs_processor.histograms import TotalHistogram

    histogram = TotalHistogram("h", "d", "s", (1.0, 10.0), "always_off")
    exporter, keeper = _exporter(AggregationTemporality.DELTA, histogram)
    empty = MetricsData(resource_metrics=[])
    for value in (0.5, 20.0):
        histogram.record(value)
    exporter.export(empty)
    histogram.record(5.0)
    exporter.export(empty)
    exporter.export(empty)  # nothing recorded in between: no point
    histogram.record(2.0, {"outcome": "error"})
    exporter.export(empty)
    first, second, third, fourth = (_histogram_points(data, "h") for data in keeper.exported)
    assert [(p.count, p.sum, tuple(p.bucket_counts), p.min, p.max) for p in first] == [
        (2, 20.5, (1, 0, 1), 0.5, 20.0)]
    assert [(p.count, p.sum, tuple(p.bucket_counts), p.min, p.max) for p in second] == [
        (1, 5.0, (0, 1, 0), 5.0, 5.0)]
    assert third == []
    assert [(dict(p.attributes), p.count) for p in fourth] == [({"outcome": "error"}, 1)]
    assert second[0].start_time_unix_nano == first[0].time_unix_nano
    assert keeper.exported[2] is empty  # passed on as it came
    assert {data.resource_metrics[0].resource.attributes["service.name"]
            for data in keeper.exported if data is not empty} == {"t"}


def test_the_histogram_exporter_sends_cumulative_points_by_default():
    from opentelemetry.sdk.metrics.export import AggregationTemporality, MetricsData

    from sqs_processor.histograms import TotalHistogram

    histogram = TotalHistogram("h", "d", "s", (1.0,), "always_off")
    exporter, keeper = _exporter(AggregationTemporality.CUMULATIVE, histogram)
    histogram.record(0.5)
    exporter.export(MetricsData(resource_metrics=[]))
    histogram.record(3.0)
    exporter.export(MetricsData(resource_metrics=[]))
    [first], [second] = (_histogram_points(data, "h") for data in keeper.exported)
    assert (first.count, second.count, tuple(second.bucket_counts)) == (1, 2, (1, 1))
    assert (second.min, second.max, second.start_time_unix_nano) == (
        0.5, 3.0, first.start_time_unix_nano)


@pytest.mark.parametrize("exemplar_filter", ["trace_based", "always_on", "always_off"])
def test_histogram_exemplars_follow_the_filter_and_are_exported_once(exemplar_filter):
    from opentelemetry.sdk.metrics.export import AggregationTemporality, MetricsData
    from opentelemetry.sdk.trace import TracerProvider

    from sqs_processor.histograms import TotalHistogram

    histogram = TotalHistogram("h", "d", "s", (1.0, 10.0), exemplar_filter)
    exporter, keeper = _exporter(AggregationTemporality.CUMULATIVE, histogram)
    tracer = TracerProvider().get_tracer("test")
    histogram.record(0.5)  # no span
    with tracer.start_as_current_span("first") as first:
        histogram.record(5.0)
    with tracer.start_as_current_span("second") as second:
        histogram.record(6.0)  # the same bucket: the latest is kept
    exporter.export(MetricsData(resource_metrics=[]))
    exporter.export(MetricsData(resource_metrics=[]))
    [point], [again] = (_histogram_points(data, "h") for data in keeper.exported)
    traced = [(e.value, e.trace_id) for e in point.exemplars]
    assert again.exemplars == []
    assert first.get_span_context().trace_id != second.get_span_context().trace_id
    assert traced == {
        "trace_based": [(6.0, second.get_span_context().trace_id)],
        "always_on": [(0.5, None), (6.0, second.get_span_context().trace_id)],
        "always_off": [],
    }[exemplar_filter]


def test_an_unknown_exemplar_filter_is_refused_naming_the_variable():
    from sqs_processor.errors import ConfigError
    from sqs_processor.telemetry_settings import resolve_settings

    assert resolve_settings({}, {}).exemplar_filter == "trace_based"
    assert resolve_settings({}, {"OTEL_METRICS_EXEMPLAR_FILTER": "ALWAYS_OFF"}
                            ).exemplar_filter == "always_off"
    with pytest.raises(ConfigError, match="OTEL_METRICS_EXEMPLAR_FILTER"):
        resolve_settings({}, {"OTEL_METRICS_EXEMPLAR_FILTER": "sometimes"})
