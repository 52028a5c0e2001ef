"""Readiness from the calls a component makes anyway, without extra requests or permissions.

A :class:`LastCallCheck` remembers whether the last call of some kind failed. Wrap it in a
:class:`~sqs_processor.HealthCheckSpec` and ``/readyz`` fails while that kind of call is
failing, and passes again after the next success.
"""

from __future__ import annotations

import threading
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
        self._last_ok: datetime | None = None

    def succeeded(self) -> None:
        now = datetime.now(UTC)
        with self._lock:
            self._error = None
            self._last_ok = now

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
        return CheckResult(True, f"last {self.what} succeeded at {last_ok.isoformat()}")
