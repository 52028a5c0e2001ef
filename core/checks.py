"""Readiness from the calls a component makes anyway, without extra requests or permissions.

A :class:`LastCallCheck` remembers whether the last call of some kind failed. Wrap it in a
:class:`~sqs_processor.HealthCheckSpec` and ``/readyz`` fails while that kind of call is
failing, and passes again after the next success.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

from sqs_processor.errors import describe_error
from sqs_processor.records import CheckResult


class LastCallCheck:
    """Thread-safe record of the last call's outcome; calling it gives a CheckResult.

    ``what`` names the calls in the detail text, e.g. ``"receive from orders"``.
    """

    def __init__(self, what: str) -> None:
        self.what = what
        self._lock = threading.Lock()
        self._error: str | None = None
        self._last_ok: float | None = None  # time.time() of the last success

    def succeeded(self) -> None:
        # Called once per message by the sink: one attribute store (atomic), and the lock only
        # when a failure is to be cleared. Of a success and a failure that end together,
        # either may count as the last; the check says so either way.
        self._last_ok = time.time()
        if self._error is not None:
            with self._lock:
                self._error = None

    def failed(self, exc: BaseException) -> None:
        text = describe_error(exc)
        with self._lock:
            self._error = text

    def __call__(self) -> CheckResult:
        with self._lock:
            error, last_ok = self._error, self._last_ok
        if error:
            return CheckResult(False, f"last {self.what} failed: {error}")
        if last_ok is None:
            return CheckResult(True, f"no {self.what} has completed yet")
        when = datetime.fromtimestamp(last_ok, UTC).isoformat()
        return CheckResult(True, f"last {self.what} succeeded at {when}")
