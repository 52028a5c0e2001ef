"""The health server: ``/health``, ``/healthz`` and ``/readyz`` on its own thread.

* ``GET /healthz`` (liveness) answers 200 while the poll loop is alive, 503 if a poller died or
  a receive is stuck past its limit. A restart helps only in that case, so nothing else counts.
* ``GET /readyz`` (readiness) runs every plugin's health check (by default: the last receive
  from SQS and the last write to S3 did not fail) and answers 503 naming the failing ones.
* ``GET /health`` is the original service's endpoint: ``{"status": "healthy", "last_poll": ...,
  "messages_processed": N}``, 200 when both of the above pass, 503 otherwise, with the details.
* ``GET /metrics`` answers every ``sqs_processor_*`` metric in Prometheus text format.

Checks are cached for :data:`CHECK_CACHE_SECONDS` so frequent probes do not multiply work. One
check that raises reports itself as failing and never breaks the endpoint. The server answers
during a 20 s long poll because it runs in its own threads.
"""

from __future__ import annotations

import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from sqs_processor.errors import describe_error
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


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        routes = {"/health": self.server.state.health, "/healthz": self.server.state.live,
                  "/readyz": self.server.state.ready}
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._send_metrics()
            return
        route = routes.get(path)
        if route is None:
            self._send(404, {"error": "not found", "endpoints": sorted([*routes, "/metrics"])})
            return
        try:
            ok, body = route()
        except Exception as exc:  # the endpoint itself must not break
            ok, body = False, {"status": "error", "detail": describe_error(exc)}
        self._send(200 if ok else 503, body)

    def do_HEAD(self) -> None:
        self.do_GET()

    def _send_metrics(self) -> None:
        try:
            payload = self.server.state.metrics_text().encode("utf-8")
        except Exception as exc:
            self._send(500, {"status": "error", "detail": describe_error(exc)})
            return
        self._send_bytes(200, payload, "text/plain; version=0.0.4; charset=utf-8")

    def _send(self, status: int, body: dict[str, Any]) -> None:
        self._send_bytes(status, orjson.dumps(body), "application/json")

    def _send_bytes(self, status: int, payload: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("health request: " + format, *args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], state: HealthState) -> None:
        self.state = state
        super().__init__(address, _Handler)


class HealthServer:
    """Serves the health endpoints for ``runner`` on ``host:port`` (port 0: any free port)."""

    def __init__(self, runner: RunnerStatus, host: str, port: int) -> None:
        self.state = HealthState(runner)
        self._server = _Server((host, port), self.state)
        self._thread = threading.Thread(target=self._server.serve_forever, name="health",
                                        kwargs={"poll_interval": 0.2}, daemon=True)

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
