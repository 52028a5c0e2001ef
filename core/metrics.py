"""The metric catalogue: every instrument the engine records, named ``sqs_processor_*``.

The README's Metrics table lists exactly these (a test compares them); ``/metrics`` renders them
in Prometheus text (:mod:`sqs_processor.prometheus`), and OTLP exports the same instruments.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider

from sqs_processor.histograms import TotalHistogram
from sqs_processor.telemetry_settings import package_version

SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
PROCESSED_OUTCOMES = ("written", "existing", "dropped")
POLL_OUTCOMES = ("messages", "empty", "error")
EXTENSION_OUTCOMES = ("ok", "failed")
RELOAD_OUTCOMES = ("ok", "rejected")

AGE_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0,
               86400.0, 345600.0, 1209600.0)


class TotalCounter:
    """A counter for the per-message path: :meth:`add` sums in memory under one lock, and the
    SDK reads the sums through an observable counter of the same name when it collects. What
    ``/metrics`` and OTLP show is the same cumulative sum a ``Counter`` gives, without an SDK
    measurement per message (about 5-9 µs each: attribute hashing, exemplar check, its own
    lock). Attributes are keyed by their items in order; the callers pass the same mappings.
    """

    def __init__(self, meter: Any, name: str, description: str) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._totals: dict[tuple[tuple[str, Any], ...], int] = {}
        meter.create_observable_counter(name, callbacks=[self._observe],
                                        description=description)

    def add(self, amount: int, attributes: Mapping[str, Any] | None = None) -> None:
        if amount < 0:
            raise ValueError("a counter only goes up")
        key = tuple(attributes.items()) if attributes else ()
        with self._lock:
            self._totals[key] = self._totals.get(key, 0) + amount

    def _observe(self, _options: Any) -> Iterable[Any]:
        from opentelemetry.metrics import Observation

        with self._lock:
            totals = list(self._totals.items())
        return [Observation(total, dict(key) or None) for key, total in totals]


class Metrics:
    """The instruments the runner records. Every name starts with ``sqs_processor_``.

    ``exemplars`` is the histograms' exemplar filter (see :class:`TotalHistogram`).
    """

    def __init__(self, provider: MeterProvider, exemplars: str = "always_off") -> None:
        meter = provider.get_meter("sqs_processor", package_version())
        self._counters(meter)
        self._histograms(exemplars)
        self._gauges: dict[str, Callable[[], float]] = {}
        self.in_flight = meter.create_observable_gauge(
            "sqs_processor_messages_in_flight", callbacks=[self._observe("in_flight")],
            description="Messages received and not yet finished.")
        self.ready = meter.create_observable_gauge(
            "sqs_processor_ready", callbacks=[self._observe("ready")],
            description="1 when /readyz would answer 200, else 0.")

    def _counters(self, meter: Any) -> None:
        counter = meter.create_counter
        self.received = counter("sqs_processor_messages_received",
                                description="Messages returned by the source.")
        self.redelivered = counter(
            "sqs_processor_messages_redelivered",
            description="Received messages whose receive count was above 1.")
        self.processed = TotalCounter(
            meter, "sqs_processor_messages_processed",
            description="Messages that went through the pipeline, by outcome "
                        "(written, existing, dropped).")
        self.failed = counter(
            "sqs_processor_messages_failed",
            description="Messages that failed, by stage and error type; left for redelivery.")
        self.deleted = counter("sqs_processor_messages_deleted",
                               description="Messages deleted from the source after processing.")
        self.ack_failed = counter(
            "sqs_processor_ack_failures",
            description="Deletes that failed for good, by error type (the message returns and "
                        "is recognised as already stored).")
        self.released = counter(
            "sqs_processor_messages_released",
            description="Messages handed back to the queue unprocessed (shutdown, system "
                        "failure).")
        self.system_failures = counter(
            "sqs_processor_system_failures",
            description="Failures blamed on the system (storage or AWS unreachable or refusing), "
                        "by stage and error type; polling pauses, the message is retried.")
        self.extensions = counter(
            "sqs_processor_visibility_extensions",
            description="Visibility heartbeat extensions of in-flight messages, by outcome.")
        self.error_sink = counter(
            "sqs_processor_messages_to_error_sink",
            description="Messages handed to the error sink (and deleted) after failing "
                        "errors.after_receives times, by stage.")
        self.reloads = counter(
            "sqs_processor_config_reloads",
            description="Live reloads of the pipeline config, by outcome (ok, rejected).")
        self.objects_written = TotalCounter(meter, "sqs_processor_objects_written",
                                            description="Objects the sink created.")
        self.objects_existing = TotalCounter(
            meter, "sqs_processor_objects_existing",
            description="Writes skipped because the object was already there (a redelivery).")
        self.polls = counter("sqs_processor_polls",
                             description="Receive calls, by outcome (messages, empty, error).")

    def _histograms(self, exemplars: str) -> None:
        def histogram(name: str, description: str, buckets: tuple[float, ...]) -> Any:
            return TotalHistogram(name, description, "s", buckets, exemplars)

        self.aws_duration = histogram(
            "sqs_processor_aws_call_duration_seconds",
            "Duration of AWS calls as the processor sees them (retries included), "
            "by service, operation and outcome.", SECONDS_BUCKETS)
        self.processing = histogram(
            "sqs_processor_message_processing_duration_seconds",
            "From a worker picking a message up to its write being done.", SECONDS_BUCKETS)
        self.age_at_write = histogram(
            "sqs_processor_message_age_at_write_seconds",
            "Time from the message's SentTimestamp to its write (end-to-end lag).", AGE_BUCKETS)

    def histograms(self) -> tuple[TotalHistogram, ...]:
        """The histograms, which the readers' collections do not hold: see
        :mod:`sqs_processor.histograms`."""
        return (self.aws_duration, self.processing, self.age_at_write)

    def zero(self, queue: str, stages: Iterable[str], processed: Iterable[Any]) -> None:
        """Export every counter from start-up, at 0 for each label set known in advance.

        ``rate()`` and ``increase()`` then work from the first scrape, and an alert on a
        failure counter reads 0, not "no data", on a healthy processor. Known in advance: the
        queue, the outcomes, and the pipeline's stages (``transform:<name>``, ``sink:<type>``).
        An ``error_type`` is not known before its first failure: those counters start with one
        series per stage without it. ``processed`` holds the label mappings the settlement
        records outcomes with. Adding 0 changes no value, so calling this again (a reload) is
        harmless.
        """
        labels = {"queue": queue}
        for counter in (self.received, self.deleted, self.redelivered, self.released):
            counter.add(0, labels)
        for outcome_labels in processed:
            self.processed.add(0, outcome_labels)
        for outcome in POLL_OUTCOMES:
            self.polls.add(0, {**labels, "outcome": outcome})
        for stage in stages:
            for counter in (self.failed, self.system_failures, self.error_sink):
                counter.add(0, {"stage": stage})
        for outcome in EXTENSION_OUTCOMES:
            self.extensions.add(0, {"outcome": outcome})
        for outcome in RELOAD_OUTCOMES:
            self.reloads.add(0, {"outcome": outcome})
        for counter in (self.ack_failed, self.objects_written, self.objects_existing):
            counter.add(0)

    def prometheus_names(self) -> set[str]:
        """The series names /metrics uses for these instruments (counters end in _total)."""
        from opentelemetry.metrics import Counter

        names = set()
        for instrument in vars(self).values():
            name = getattr(instrument, "name", None)
            if isinstance(name, str) and name.startswith("sqs_processor_"):
                counts = isinstance(instrument, Counter | TotalCounter)
                names.add(f"{name}_total" if counts else name)
        return names

    def gauge(self, name: str, read: Callable[[], float]) -> None:
        """Set the function that reads gauge ``name`` (``in_flight``, ``ready``)."""
        self._gauges[name] = read

    def _observe(self, name: str) -> Callable[[Any], Iterable[Any]]:
        from opentelemetry.metrics import Observation

        def callback(_options: Any) -> Iterable[Any]:
            read = self._gauges.get(name)
            if read is None:
                return []
            try:
                return [Observation(float(read()))]
            except Exception:
                return []

        return callback

