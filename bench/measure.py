"""How a contender process measures itself: wall time, its own CPU and its peak memory.

Every contender runs in a process of its own and reports the same figures through a
:class:`Measurement`: :meth:`~Measurement.start` once its AWS clients exist and it is about to
receive for the first time, :meth:`~Measurement.finish` when the last expected message has been
deleted. The window between the two is what the benchmark compares; the CPU spent before it
(imports, building the pipeline) is reported separately.
"""

from __future__ import annotations

import json
import os
import resource
import threading
import time
from pathlib import Path
from typing import Any


def cpu_seconds() -> float:
    """User + system CPU time of this whole process (every thread) so far."""
    times = os.times()
    return times.user + times.system


def peak_rss_kib() -> int:
    """Peak resident set size of this program, in KiB.

    ``VmHWM`` (Linux) is the high-water mark of this program's own address space. ``ru_maxrss``
    is not used where VmHWM exists: Linux carries it across ``execve``, so a child started with
    vfork (as ``subprocess`` does) reports its parent's peak if that was higher.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


class Measurement:
    """Writes ``<out>.started`` at :meth:`start` and the figures to ``<out>`` at :meth:`finish`."""

    def __init__(self, out: str | os.PathLike[str], expect: int) -> None:
        self.out = Path(out)
        self.expect = expect
        self.count = 0
        self._lock = threading.Lock()
        self._start_wall: float | None = None
        self._start_cpu = 0.0
        self._done = False

    def start(self) -> None:
        self._start_cpu = cpu_seconds()
        self._start_wall = time.time()
        _write(self.out.with_name(self.out.name + ".started"),
               {"time": self._start_wall, "cpu_seconds": self._start_cpu})

    def add(self, count: int) -> bool:
        """Count ``count`` finished messages; True (once) when the expected number is reached."""
        with self._lock:
            self.count += count
            if self._done or self.count < self.expect:
                return False
            self._done = True
        self.finish()
        return True

    def finish(self, **extra: Any) -> None:
        end_wall = time.time()
        end_cpu = cpu_seconds()
        if self._start_wall is None:
            raise RuntimeError("finish() before start()")
        _write(self.out, {
            "processed": self.count,
            "started_at": self._start_wall,
            "finished_at": end_wall,
            "work_seconds": end_wall - self._start_wall,
            "work_cpu_seconds": end_cpu - self._start_cpu,
            "startup_cpu_seconds": self._start_cpu,
            "cpu_seconds_at_finish": end_cpu,
            "peak_rss_kib": peak_rss_kib(),
            **extra,
        })


def _write(path: Path, data: dict[str, Any]) -> None:
    # Written whole, then renamed: the harness polls for the file and must never read half of it.
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(data), encoding="utf-8")
    partial.replace(path)
