"""Stalls: AWS calls outstanding for longer than they should be (a hung endpoint).

A hung SQS or S3 does not fail a call, it just never answers (until botocore's read timeout,
retried up to ``aws.max_attempts`` times: minutes). The last result of every call then still
looks fine, so readiness has to look at the calls in progress. :class:`OutstandingCalls` follows
every call of the pipeline's boto3 clients through botocore's events (``before-call`` to
``after-call`` or ``after-call-error``, retries included) and reports the ones outstanding past
their limit: ``service.stall_seconds``, plus the long poll's ``WaitTimeSeconds`` for a receive
(a healthy long poll takes that long by design). A receive that outlasts its long poll leaves
whatever waits in the queue unread; a write, delete or visibility change holds the messages it
carries, so any of them past its limit means messages wait on a hung endpoint.
``/readyz`` answers 503 naming the call and how long it has waited, and recovers by itself when
the call completes. Liveness is not touched: that stays with the pollers' own deadlines.

boto3 calls are synchronous, so each thread has at most one call in progress; keeping them per
thread bounds the record even if a call ever ended without its closing event.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from sqs_processor.objectstore import ObjectStoreWriter

_WAIT = "sqs_processor_wait_seconds"


class OutstandingCalls:
    """The AWS calls in progress, per thread; :meth:`stalled` names those past their limit."""

    def __init__(self, threshold: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.threshold = threshold
        self._clock = clock
        self._lock = threading.Lock()
        self._calls: dict[int, tuple[str, float, float]] = {}  # thread -> name, start, limit

    def begin(self, name: str, extra: float = 0.0) -> None:
        """The current thread started call ``name``, allowed ``extra`` seconds beyond the
        threshold (a long poll's wait)."""
        with self._lock:
            self._calls[threading.get_ident()] = (name, self._clock(), self.threshold + extra)

    def end(self) -> None:
        """The current thread's call completed (answered or failed)."""
        with self._lock:
            self._calls.pop(threading.get_ident(), None)

    def stalled(self) -> list[str]:
        """One line per call outstanding past its limit, the longest first."""
        now = self._clock()
        with self._lock:
            calls = list(self._calls.values())
        overdue = sorted(((now - started, name, limit) for name, started, limit in calls
                          if now - started > limit), key=lambda call: (-call[0], call[1]))
        return [f"{name} has been outstanding for {age:.0f}s (limit {limit:.0f}s)"
                for age, name, limit in overdue]

    def watch_client(self, service: str, client: Any) -> None:
        """Follow every call ``client`` makes (an :class:`~sqs_processor.aws.AwsClients` hook);
        the obstore writer reports its puts itself."""
        if isinstance(client, ObjectStoreWriter):
            client.follow_calls(self.begin, self.end)
            return
        label = str(client.meta.service_model.service_id or service)

        def parameters(params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
            wait = params.get("WaitTimeSeconds") if isinstance(params, dict) else None
            context[_WAIT] = float(wait) if isinstance(wait, int | float) else 0.0

        def before(model: Any, context: dict[str, Any], **_: Any) -> None:
            self.begin(f"{label}.{getattr(model, 'name', 'call')}", context.get(_WAIT, 0.0))

        def after(**_: Any) -> None:
            self.end()

        events = client.meta.events
        events.register("before-parameter-build", parameters)
        events.register("before-call", before)
        events.register("after-call", after)
        events.register("after-call-error", after)
