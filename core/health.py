"""The health server: ``/health``, ``/healthz`` and ``/readyz`` on its own thread.

* ``GET /healthz`` (liveness) answers 200 while the poll loop is alive, 503 if a poller died or
  a receive is stuck past its limit. A restart helps only in that case, so nothing else counts.
* ``GET /readyz`` (readiness) runs every plugin's health check (by default: the last receive
  from SQS and the last write to S3 did not fail) and answers 503 naming the failing ones; also
  while polling is paused, and while an AWS call is outstanding past its limit (``stalled``:
  a hung endpoint, :mod:`sqs_processor.stalls`).
* ``GET /health`` is the original service's endpoint: ``{"status": "healthy", "last_poll": ...,
  "messages_processed": N}``, 200 when both of the above pass, 503 otherwise, with the details.
* ``GET /metrics`` answers every ``sqs_processor_*`` metric in Prometheus text format.

Checks are cached for :data:`CHECK_CACHE_SECONDS` so frequent probes do not multiply work. One
check that raises reports itself as failing and never breaks the endpoint. The server answers
during a 20 s long poll because it runs in its own thread, an event loop with bounded
connections and per-connection timeouts (:mod:`sqs_processor.probe_server`), so idle or
hostile clients cannot exhaust it or the process's descriptors.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from sqs_processor.errors import describe_error
from sqs_processor.probe_server import Answer, ProbeServer
from sqs_processor.records import CheckResult

if TYPE_CHECKING:
    from sqs_processor.pipeline import Pipeline
    from sqs_processor.telemetry import Telemetry

log = logging.getLogger(__name__)

CHECK_CACHE_SECONDS = 1.0


class RunnerStatus(Protocol):
    """What the health server reads: a :class:`~sqs_processor.runner.Runner`, or the
    :class:`~sqs_processor.reload.Supervisor` that follows the current one across reloads."""

    @property
    def pipeline(self) -> Pipeline:
        """The running pipeline (its checks and its stats)."""

    @property
    def telemetry(self) -> Telemetry:
        """Where ``/metrics`` is read from."""

    @property
    def state(self) -> str:
        """``created``, ``starting``, ``running``, ``stopping`` or ``stopped``."""

    def liveness(self) -> tuple[bool, str]:
        """Whether the poll loop is alive, and a short reason."""

    def pause_reason(self) -> str | None:
        """Why polling is paused after a system failure, or None."""

    def stalls(self) -> list[str]:
        """The AWS calls outstanding past their limit (a hung endpoint), one line each."""


class HealthState:
    """Computes the three answers from a runner and its pipeline's checks."""

    def __init__(self, runner: RunnerStatus) -> None:
        self.runner = runner
        self._lock = threading.Lock()
        self._cached: tuple[float, list[dict[str, Any]]] | None = None
        runner.telemetry.metrics.gauge("ready", lambda: 1.0 if self.ready()[0] else 0.0)

    def metrics_text(self) -> str:
        return self.runner.telemetry.prometheus_text()

    def checks(self) -> list[dict[str, Any]]:
        with self._lock:
            now = time.monotonic()
            if self._cached and now - self._cached[0] < CHECK_CACHE_SECONDS:
                return self._cached[1]
            results = []
            for spec, provider in self.runner.pipeline.health_checks:
                try:
                    outcome = spec.check()
                    if isinstance(outcome, bool):
                        outcome = CheckResult(outcome)
                    if not isinstance(outcome, CheckResult):
                        raise TypeError(f"returned {type(outcome).__name__}, expected CheckResult")
                except Exception as exc:
                    outcome = CheckResult(False, f"check raised {describe_error(exc)}")
                results.append({"name": spec.name, "ok": outcome.ok, "detail": outcome.detail,
                                "plugin": str(provider)})
            self._cached = (now, results)
            return results

    def live(self) -> tuple[bool, dict[str, Any]]:
        ok, detail = self.runner.liveness()
        return ok, {"status": "alive" if ok else "dead", "detail": detail}

    def ready(self) -> tuple[bool, dict[str, Any]]:
        state = self.runner.state
        checks = list(self.checks())
        paused = self.runner.pause_reason()
        if paused:
            checks.append({"name": "system", "ok": False, "plugin": "runner",
                           "detail": f"polling paused after a system failure: {paused}"})
        stalls = self.runner.stalls()
        if stalls:
            checks.append({"name": "stalled", "ok": False, "plugin": "runner",
                           "detail": "; ".join(stalls)})
        ok = state == "running" and all(c["ok"] for c in checks)
        return ok, {"status": "ready" if ok else "not ready", "state": state, "checks": checks}

    def health(self) -> tuple[bool, dict[str, Any]]:
        live, live_body = self.live()
        ready, ready_body = self.ready()
        stats = self.runner.pipeline.stats
        last_poll = stats.last_poll
        body = {
            "status": "healthy" if live and ready else "unhealthy",
            "last_poll": last_poll.isoformat() if last_poll else None,
            "messages_processed": stats.snapshot()["processed"],
            "live": live_body,
            "ready": ready_body,
        }
        return live and ready, body


JSON = "application/json"
PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"


class HealthServer:
    """Serves the health endpoints for ``runner`` on ``host:port`` (port 0: any free port), on
    the bounded event-loop server of :mod:`sqs_processor.probe_server`. ``/healthz`` is
    answered in the loop itself, so liveness never waits behind a plugin's check."""

    def __init__(self, runner: RunnerStatus, host: str, port: int) -> None:
        self.state = HealthState(runner)
        self._routes = {"/health": self.state.health, "/healthz": self.state.live,
                        "/readyz": self.state.ready}
        self._server = ProbeServer(host, port, self.respond, inline=("/healthz",))

    @property
    def port(self) -> int:
        return self._server.port

    def respond(self, path: str) -> Answer:
        if path == "/metrics":
            try:
                return 200, self.state.metrics_text().encode("utf-8"), PROMETHEUS
            except Exception as exc:
                return 500, orjson.dumps({"status": "error", "detail": describe_error(exc)}), JSON
        route = self._routes.get(path)
        if route is None:
            body = {"error": "not found", "endpoints": sorted([*self._routes, "/metrics"])}
            return 404, orjson.dumps(body), JSON
        try:
            ok, body = route()
        except Exception as exc:  # the endpoint itself must not break
            ok, body = False, {"status": "error", "detail": describe_error(exc)}
        return 200 if ok else 503, orjson.dumps(body), JSON

    def start(self) -> None:
        self._server.start()

    def stop(self) -> None:
        self._server.stop()
