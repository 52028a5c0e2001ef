"""Live reload: run a pipeline, and replace it when its config or plugin files change.

The :class:`Supervisor` owns the running :class:`~sqs_processor.runner.Runner`. A reload is
asked for by SIGHUP or noticed by polling the config file and the plugin folders (a Kubernetes
ConfigMap update swaps a symlink in the mounted folder, which changes the resolved path and the
file's inode, so polling ``stat`` sees it without inotify).

A reload builds and validates the new pipeline first; if anything is wrong (a config error, a
plugin that fails to import or to start) it is rejected, logged with the reason, and the old
pipeline keeps running untouched. If it is good, the new runner starts polling **before** the old
one is stopped; the old one then shuts down gracefully: it stops polling, finishes (or releases)
its in-flight messages and flushes its deletes. The two overlap like two replicas on one queue,
which the idempotent writes make safe, so no message is lost or written twice and readiness
stays true throughout.

What cannot change without a restart: the health server's address and the telemetry settings
(a reload that changes them says so in the log).
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from sqs_processor.errors import ConfigError, describe_error
from sqs_processor.pipeline import Pipeline
from sqs_processor.runner import Runner
from sqs_processor.telemetry import Telemetry

log = logging.getLogger("sqs_processor.reload")

WATCH_INTERVAL_SECONDS = 1.0
START_TIMEOUT_SECONDS = 60.0


def watched_paths(pipeline: Pipeline) -> list[Path]:
    """The files a reload depends on: the config file and the plugin folders it names."""
    paths: list[Path] = []
    if pipeline.config.path is not None:
        paths.append(Path(pipeline.config.path))
    paths.extend(Path(p) for p in pipeline.config.plugin_settings.plugin_paths)
    return paths


def fingerprint(paths: Iterable[Path]) -> str:
    """A digest of where each path resolves to and of its ``stat`` (folders: their .py files).

    A ConfigMap update swaps the folder a symlink points to, so the resolved path and the inode
    change; an edit in place changes the size or the nanosecond mtime. Nothing is read.
    """
    digest = hashlib.sha256()
    for path in paths:
        files = [path]
        if path.is_dir():
            files = sorted(path.glob("*.py"))
            digest.update(f"dir {os.path.realpath(path)}\n".encode())
        for file in files:
            try:
                info = file.stat()
                state = f"{info.st_ino} {info.st_size} {info.st_mtime_ns}"
            except OSError as exc:  # a file that vanished mid-swap: changed, look again later
                state = f"unreadable {exc.errno}"
            digest.update(f"file {file} -> {os.path.realpath(file)} {state}\n".encode())
    return digest.hexdigest()


class _Running:
    """A runner on its own thread, with its exit code once it returns."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner
        self.exit_code: int | None = None
        self.thread = threading.Thread(target=self._run, name="pipeline", daemon=True)

    def _run(self) -> None:
        try:
            self.exit_code = self.runner.run()
        except BaseException:
            log.exception("the pipeline stopped with an unexpected error",
                          extra={"event": "internal_error"})
            self.exit_code = 1

    def start(self, stopping: threading.Event) -> int | None:
        """Start, and wait until the runner is running (None) or has given up (its code)."""
        self.thread.start()
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not self.runner.wait_started(0.1):
            if not self.thread.is_alive():
                return self.exit_code if self.exit_code is not None else 1
            if stopping.is_set() or time.monotonic() > deadline:
                self.runner.stop()
                self.thread.join()
                return self.exit_code if self.exit_code is not None else 1
        return None

    def stop(self, *, draining: bool = False) -> int:
        """Stop the runner: the process is shutting down, or (``draining``) a reload replaced
        it, which its log then says."""
        if draining:
            self.runner.drain()
        else:
            self.runner.stop()
        self.thread.join()
        return self.exit_code if self.exit_code is not None else 0


class Supervisor:
    """Runs one pipeline at a time and swaps in a new one on reload.

    It implements :class:`~sqs_processor.health.RunnerStatus`, as a runner does: ``pipeline``,
    ``state``, ``liveness()``, ``pause_reason()``, ``stalls()`` and ``telemetry`` follow the current
    runner.
    """

    def __init__(
        self,
        pipeline: Pipeline,
        telemetry: Telemetry,
        load: Callable[[], Pipeline],
        *,
        watch: bool = True,
        watch_interval: float = WATCH_INTERVAL_SECONDS,
    ) -> None:
        self.telemetry = telemetry
        self._load = load
        self._current = _Running(Runner(pipeline, telemetry))
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._watch = watch and bool(watched_paths(pipeline))
        self._watch_interval = watch_interval
        self._fingerprint = fingerprint(watched_paths(pipeline)) if self._watch else ""
        self._pending: str | None = None

    # -- what the health server and signal handlers use ---------------------------------------

    @property
    def runner(self) -> Runner:
        return self._current.runner

    @property
    def pipeline(self) -> Pipeline:
        return self._current.runner.pipeline

    @property
    def state(self) -> str:
        return self._current.runner.state

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def liveness(self) -> tuple[bool, str]:
        return self._current.runner.liveness()

    def pause_reason(self) -> str | None:
        return self._current.runner.pause_reason()

    def stalls(self) -> list[str]:
        return self._current.runner.stalls()

    def stop(self) -> None:
        """Stop gracefully (safe from a signal handler)."""
        self._stop.set()
        self._current.runner.stop()

    def request_reload(self) -> None:
        """Reload at the next chance (safe from a signal handler)."""
        self._reload.set()

    # -- the loop ------------------------------------------------------------------------------

    def run(self) -> int:
        code = self._current.start(self._stop)
        if code is not None:
            return code
        next_check = time.monotonic() + self._watch_interval
        while not self._stop.wait(0.2):
            if not self._current.thread.is_alive():  # the runner ended on its own
                return self._current.exit_code or 0
            if self._reload.is_set():
                self._reload.clear()
                self.reload("SIGHUP")
            elif self._watch and time.monotonic() >= next_check:
                next_check = time.monotonic() + self._watch_interval
                self._check_files()
        return self._current.stop()

    def _check_files(self) -> None:
        current = fingerprint(watched_paths(self.pipeline))
        if current == self._fingerprint:
            self._pending = None
            return
        if current != self._pending:  # wait until it holds still for one interval
            self._pending = current
            return
        self._pending = None
        self.reload("the config or a plugin file changed")

    def reload(self, reason: str) -> bool:
        """Validate and swap in a new pipeline; on any problem keep the old one. Returns success."""
        old = self._current
        log.info("reloading the pipeline (%s)", reason, extra={"event": "reload_started"})
        watched = fingerprint(watched_paths(old.runner.pipeline)) if self._watch else ""
        try:
            pipeline = self._load()
        except ConfigError as exc:
            return self._rejected(f"config error: {exc}", watched)
        except Exception as exc:
            return self._rejected(describe_error(exc), watched)
        self._warn_fixed_settings(old.runner.pipeline, pipeline)
        pipeline.stats = old.runner.pipeline.stats  # /health counts across reloads
        new = _Running(Runner(pipeline, self.telemetry))
        code = new.start(self._stop)
        if code is not None:
            return self._rejected(f"the new pipeline could not start (exit code {code})",
                                  watched)
        self._current = new  # health, metrics and signals now follow the new runner
        old.stop(draining=True)  # finishes or releases its in-flight messages, flushes deletes
        if self._watch:
            self._fingerprint = fingerprint(watched_paths(pipeline))
        self.telemetry.metrics.reloads.add(1, {"outcome": "ok"})
        log.info("reloaded: now running %s", pipeline.describe_line(),
                 extra={"event": "reloaded", "outcome": "ok"})
        return True

    def _rejected(self, why: str, watched: str) -> bool:
        if self._watch:
            self._fingerprint = watched  # do not retry the same content; the next change will
        self.telemetry.metrics.reloads.add(1, {"outcome": "rejected"})
        log.error("reload rejected, still running the previous pipeline: %s", why,
                  extra={"event": "reload_rejected", "outcome": "rejected"})
        return False

    @staticmethod
    def _warn_fixed_settings(old: Pipeline, new: Pipeline) -> None:
        fixed: list[str] = []
        for key in ("health_host", "health_port"):
            if old.config.service[key] != new.config.service[key]:
                fixed.append(f"service.{key}")
        if dict(old.config.telemetry) != dict(new.config.telemetry):
            fixed.append("telemetry")
        if fixed:
            log.warning("%s changed; that takes effect at the next restart", ", ".join(fixed),
                        extra={"event": "reload_needs_restart"})

