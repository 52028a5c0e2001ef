"""``sqs-processor`` as a child process, for scenarios that signal, kill or replicate it.

The child logs JSON lines on stderr (``--log-format json``); they are collected as they arrive,
so a test can wait for an event (``health_listening``, ``received``, ``stopped``) and read the
totals at the end. :class:`ChildProcess` runs any ``sqs-processor`` command line;
:class:`ProcessorProcess` is ``sqs-processor run --config FILE --log-format json``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from helpers.support import CLI


class ChildProcess:
    """One ``sqs-processor ARGS...`` child, its stderr collected line by line."""

    def __init__(self, args: list[str], env: dict[str, str], name: str = "processor",
                 preexec_fn: Callable[[], None] | None = None) -> None:
        self.name = name
        self.proc = subprocess.Popen([*CLI, *args], env=env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True, preexec_fn=preexec_fn)
        self.lines: list[str] = []  # every stderr line, as written
        self.records: list[dict[str, Any]] = []  # the lines that are JSON log records
        self.other_lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._changed:
                self.lines.append(line)
                try:
                    self.records.append(json.loads(line))
                except ValueError:
                    self.other_lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def events(self, event: str) -> list[dict[str, Any]]:
        with self._changed:
            return [r for r in self.records if r.get("event") == event]

    def wait_event(self, event: str, timeout: float = 20.0, **fields: Any) -> dict[str, Any]:
        """The first log record of ``event`` with ``fields``; fails the test after timeout."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for record in self.records:
                    if record.get("event") == event and all(
                            record.get(k) == v for k, v in fields.items()):
                        return record
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    break
                self._changed.wait(min(remaining, 0.2))
        pytest.fail(f"{self.name}: no {event!r} log event within {timeout}s; "
                    f"log tail:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        with self._changed:
            text = [json.dumps(r) for r in self.records[-lines:]] + self.other_lines[-lines:]
        return "\n".join(text)

    @property
    def port(self) -> int:
        return int(self.wait_event("health_listening")["port"])

    def rss_bytes(self, field: str = "VmRSS") -> int:
        """Resident memory of the child (Linux /proc); ``VmHWM`` is its peak so far."""
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        for line in status.splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
        raise AssertionError(f"no {field} line")

    def terminate(self) -> None:
        self.proc.send_signal(signal.SIGTERM)

    def sigkill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def finish(self, timeout: float = 30.0) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(5)
        return code

    def stop(self) -> None:
        """Make sure the child is gone (test teardown)."""
        if self.proc.poll() is None:
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        self._reader.join(5)


class ProcessorProcess(ChildProcess):
    """``sqs-processor --log-level LEVEL run --config FILE --log-format json``; DEBUG by
    default, so the per-message events (stored, acked, received) are there to assert on."""

    def __init__(self, config: Path, env: dict[str, str], name: str = "processor",
                 log_level: str = "debug",
                 preexec_fn: Callable[[], None] | None = None) -> None:
        super().__init__(["--log-level", log_level, "run", "--config", str(config),
                          "--log-format", "json"], env, name, preexec_fn)
