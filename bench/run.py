"""The benchmark harness behind ``make bench``: SQS -> S3 drains, compared in one run.

    python -m bench [--n 20000] [--baseline-n 1000] [--latency-ms 20] [--quick] [--profile]
                    [--contenders NAMES] [--steady-seconds 20] [--tuned K=V,...] [--out FILE]

One emulator process (:mod:`bench.server`) serves every run. For each injected latency and each
contender: the emulator is reset, a queue and a bucket are created and preloaded with the same
messages (:mod:`bench.workload`, sent with no latency), the latency is switched on, and the
contender starts in a process of its own. It reports its own wall time, CPU and peak RSS from
its first receive to its last delete (:mod:`bench.measure`); the harness then stops it and has
the emulator check the result: every message stored exactly once, intact, and the queue empty.
End-to-end latency is the emulator's time of each PUT minus the message's ``SentTimestamp``.

The steady run feeds 100 messages a second for a while, with the contender already running, and
reports the same latency percentiles: the figure a user with a live queue cares about.

Adding a contender (a batched mode, say) is one more :class:`Contender` in :data:`CONTENDERS`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from bench import workload

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
REGION = "us-east-1"
PREFIX = "sqs-messages/"


# --------------------------------------------------------------------------------------------
# Contenders
# --------------------------------------------------------------------------------------------

# Tuned for small messages: room for all eight receives at once (each receive that starts while
# another is in progress needs room for ten plain messages of the queue's 1 MiB: 40 MiB).
TUNED_SERVICE = {"workers": 32, "pollers": 8, "max_in_flight": 400, "ack_threads": 4,
                 "max_in_flight_mib": 384}
BATCH_SINK = {"batch": {"max_records": 200, "max_age_seconds": 1, "compression": "gzip"}}
# Batched mode does little per message in the workers (encode a line); the limit is how fast
# messages are received and deleted, so it gets more pollers and ack threads and room for
# several open batches.
BATCH_SERVICE = {"workers": 16, "pollers": 8, "max_in_flight": 1000, "ack_threads": 8,
                 "max_in_flight_mib": 384}
TUNED_SOURCE = {"poll_interval_seconds": 1}


@dataclass(frozen=True)
class Contender:
    """One way of draining the queue.

    ``kind`` is ``reference`` (a loop in :mod:`bench.contenders`) or ``processor`` (the real
    ``sqs-processor run`` CLI with a generated pipeline YAML, overridden by ``service``,
    ``source``, ``sink`` and ``transforms``). ``subset`` contenders drain ``--baseline-n``
    messages instead of ``--n`` (rates are per message, so they still compare).
    """

    name: str
    kind: str
    description: str
    reference: str = ""
    service: dict[str, Any] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)
    sink: dict[str, Any] = field(default_factory=dict)
    transforms: tuple[Any, ...] = ("json_parse", "enrich")
    subset: bool = False

    def text(self) -> str:
        """The description, with the tuned settings of this run filled in."""
        return self.description.format(lanes=TUNED_SERVICE["max_in_flight"] // 10,
                                       source=TUNED_SOURCE, **TUNED_SERVICE)

    def pipeline(self, endpoint: str, queue_url: str, bucket: str) -> dict[str, Any]:
        return {
            "service": {"health_host": "127.0.0.1", "health_port": 0, **self.service},
            "aws": {"region": REGION, "endpoint_url": endpoint},
            "plugins": {"modules": ["bench.probe"]},
            "source": {"type": "sqs", "queue_url": queue_url, **self.source},
            "transforms": list(self.transforms),
            "sink": {"type": "s3", "bucket": bucket, "prefix": PREFIX, **self.sink},
            "ack": {"type": "sqs_delete"},
        }


CONTENDERS: tuple[Contender, ...] = (
    Contender("baseline", "reference", "the spec's design: one thread, receive 10, then PUT and "
              "delete each message in turn, no pause", reference="baseline", subset=True),
    Contender("ceiling", "reference", "bare boto3: {lanes} receive loops, {workers} PUT threads, "
              "one DeleteMessageBatch per batch", reference="ceiling"),
    Contender("ceiling-obstore", "reference", "bare loop as the ceiling, each PUT through obstore "
              "(the processor's default S3 client)", reference="ceiling-obstore"),
    Contender("sqs-processor-default", "processor",
              "sqs-processor, shipped defaults (obstore for S3, 16 workers, 2 pollers, 500 "
              "messages / 64 MiB in flight)"),
    Contender("sqs-processor-tuned", "processor",
              "sqs-processor, {workers} workers, {pollers} pollers, {max_in_flight} messages / "
              "{max_in_flight_mib} MiB in flight, "
              "source {source}", service=TUNED_SERVICE, source=TUNED_SOURCE),
    Contender("sqs-processor-batched", "processor",
              "sqs-processor, batched mode: 200 messages per gzip NDJSON object, 16 workers, "
              "8 pollers, 8 ack threads, 1000 messages / 384 MiB in flight", service=BATCH_SERVICE,
              source=TUNED_SOURCE, sink=BATCH_SINK),
)
BY_NAME = {c.name: c for c in CONTENDERS}
PROCESSOR_TUNED = "sqs-processor-tuned"
PROCESSOR_DEFAULT = "sqs-processor-default"


# --------------------------------------------------------------------------------------------
# The emulator process
# --------------------------------------------------------------------------------------------


class Server:
    """The :mod:`bench.server` process and its control endpoints."""

    def __init__(self, threads: int = 128, http_server: str = "auto",
                 fast_put: bool = True) -> None:
        command = [sys.executable, "-m", "bench.server", "--port", "0", "--threads",
                   str(threads), "--http-server", http_server]
        if not fast_put:
            command.append("--no-fast-put")
        self.process = subprocess.Popen(
            command,
            cwd=ROOT, env=_child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True)
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if "listening on " not in line:
            self.process.kill()
            rest = self.process.stdout.read()
            raise SystemExit(f"bench server did not start: {line}{rest}")
        self.url = line.rsplit(" ", 1)[-1].strip()
        # Keep reading its output so it never blocks on a full pipe.
        threading.Thread(target=self.process.stdout.read, daemon=True).start()
        self.facts = self.call("ping", method="GET")

    def call(self, name: str, payload: dict[str, Any] | None = None,
             method: str = "POST") -> dict[str, Any]:
        data = json.dumps(payload or {}).encode() if method == "POST" else None
        request = urllib.request.Request(f"{self.url}/_bench/{name}", data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=600) as response:
            return json.loads(response.read())

    def latency(self, ms: float) -> None:
        self.call("latency", {"ms": ms})

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()


def _child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_", "SQS_PROCESSOR_", "BENCH_PROBE_"))}
    env.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                "AWS_REGION": REGION, "AWS_DEFAULT_REGION": REGION,
                "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT),
                                                            os.environ.get("PYTHONPATH")]))})
    env.update(extra)
    return env


def _clients(endpoint: str) -> tuple[Any, Any]:
    import boto3
    from botocore.config import Config

    session = boto3.session.Session(aws_access_key_id="bench", aws_secret_access_key="bench",
                                    region_name=REGION)
    config = Config(max_pool_connections=32, retries={"mode": "standard", "max_attempts": 5})
    return (session.client("sqs", endpoint_url=endpoint, config=config),
            session.client("s3", endpoint_url=endpoint, config=config))


# --------------------------------------------------------------------------------------------
# One run
# --------------------------------------------------------------------------------------------


@dataclass
class Child:
    """A contender process, with its exit status and resource usage once reaped."""

    process: subprocess.Popen[bytes]
    out: Path
    log: Path
    rusage: Any = None
    exit_code: int | None = None
    stop_note: str = ""

    def reap(self, block: bool = False) -> bool:
        if self.exit_code is not None:
            return True
        pid, status, rusage = os.wait4(self.process.pid, 0 if block else os.WNOHANG)
        if pid == 0:
            return False
        self.rusage = rusage
        self.exit_code = os.waitstatus_to_exitcode(status)
        self.process.returncode = self.exit_code
        return True

    def wait(self, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.reap():
                return True
            time.sleep(0.05)
        return self.reap()

    def stop(self) -> None:
        """SIGTERM (graceful); a second SIGTERM (sqs-processor exits at once); then SIGKILL."""
        if self.reap():
            return
        self.process.send_signal(signal.SIGTERM)
        if self.wait(1):
            self.stop_note = "stopped on SIGTERM"
            return
        self.process.send_signal(signal.SIGTERM)
        if self.wait(3):
            self.stop_note = "stopped on a second SIGTERM (a long poll was in progress)"
            return
        self.process.kill()
        self.reap(block=True)
        self.stop_note = "killed"


def _start_child(contender: Contender, workdir: Path, endpoint: str, queue_url: str,
                 bucket: str, expect: int) -> Child:
    out = workdir / f"{contender.name}.json"
    log = workdir / f"{contender.name}.log"
    for stale in (out, out.with_name(out.name + ".started")):
        stale.unlink(missing_ok=True)
    if contender.kind == "reference":
        command = [sys.executable, "-m", "bench.contenders", contender.reference,
                   "--endpoint", endpoint, "--region", REGION, "--queue-url", queue_url,
                   "--bucket", bucket, "--prefix", PREFIX, "--expect", str(expect),
                   "--out", str(out), "--workers", str(TUNED_SERVICE["workers"]),
                   "--lanes", str(TUNED_SERVICE["max_in_flight"] // 10)]
        env = _child_env()
    else:
        config = workdir / f"{contender.name}.yaml"
        config.write_text(yaml.safe_dump(contender.pipeline(endpoint, queue_url, bucket),
                                         sort_keys=False), encoding="utf-8")
        command = [sys.executable, "-m", "sqs_processor.cli", "run", "--config", str(config)]
        env = _child_env(BENCH_PROBE_OUT=str(out), BENCH_PROBE_EXPECT=str(expect))
    with open(log, "wb") as log_file:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                                   stdout=log_file, stderr=subprocess.STDOUT)
    return Child(process=process, out=out, log=log)


def _wait_for(path: Path, child: Child, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return True
        if child.reap():
            return path.exists()
        time.sleep(0.05)
    return False


@dataclass
class Scenario:
    mode: str  # "drain", "big" (a drain of 1 MiB messages) or "steady"
    latency_ms: float
    messages: int
    rate: float = 0.0
    seconds: float = 0.0


def run_contender(server: Server, contender: Contender, scenario: Scenario, workdir: Path,
                  timeout: float, profiler: Profiler | None = None) -> dict[str, Any]:
    """Run one contender on a fresh queue and bucket; return its figures and the check."""
    server.latency(0)
    server.call("reset")
    sqs, s3 = _clients(server.url)
    tag = uuid.uuid4().hex[:10]
    queue_name, bucket = f"bench-{tag}", f"bench-{tag}"
    queue_url = sqs.create_queue(QueueName=queue_name,
                                 Attributes={"VisibilityTimeout": "60"})["QueueUrl"]
    s3.create_bucket(Bucket=bucket)
    if scenario.mode in ("drain", "big"):
        workload.preload(sqs, queue_url, scenario.messages, big=scenario.mode == "big")
    server.latency(scenario.latency_ms)
    before = server.call("stats", method="GET")
    child = _start_child(contender, workdir, server.url, queue_url, bucket, scenario.messages)
    result: dict[str, Any] = {"contender": contender.name, "mode": scenario.mode,
                              "latency_ms": scenario.latency_ms, "messages": scenario.messages}
    feeder = None
    try:
        started = _wait_for(child.out.with_name(child.out.name + ".started"), child, 120)
        if started and profiler is not None:
            profiler.attach(child.process.pid)
        if started and scenario.mode == "steady":
            feeder = workload.SteadyFeeder(sqs, queue_url, scenario.rate, scenario.seconds)
            threading.Thread(target=feeder.run, daemon=True).start()
        finished = started and _wait_for(child.out, child, timeout)
    finally:
        if profiler is not None:
            profiler.detach()
        after = server.call("stats", method="GET")
        child.stop()
    server.latency(0)
    check = server.call("verify", {"queue": queue_name, "bucket": bucket, "prefix": PREFIX,
                                   "region": REGION})
    latencies = check.pop("latencies_ms")
    result["check"] = check
    result["exit"] = {"code": child.exit_code, "how": child.stop_note}
    if feeder is not None:
        result["feeder"] = {"sent": feeder.sent, "late": feeder.late,
                            "errors": feeder.errors[:3]}
    if not finished or not check["ok"]:
        kept = keep_log(child.log, f"{contender.name}-{scenario.mode}-{scenario.latency_ms:g}ms")
        result["log"] = str(kept)
    if not finished:
        result["error"] = (f"did not finish {scenario.messages} messages within {timeout:.0f}s"
                           if started else "did not start") + f"; log: {result['log']}"
        return result
    figures = json.loads(child.out.read_text(encoding="utf-8"))
    n = figures["processed"]
    result.update({
        "msgs_per_s": n / figures["work_seconds"],
        "work_seconds": figures["work_seconds"],
        "cpu_ms_per_msg": figures["work_cpu_seconds"] * 1000 / n,
        "startup_cpu_s": figures["startup_cpu_seconds"],
        "total_cpu_s": (child.rusage.ru_utime + child.rusage.ru_stime) if child.rusage else None,
        # Measured by the contender itself: wait4's ru_maxrss would include this harness's own
        # peak, which Linux carries into a vforked child across exec.
        "peak_rss_mib": figures["peak_rss_kib"] / 1024,
        "latency_s": _percentiles(latencies),
        "server": _server_delta(before, after, n),
    })
    return result


def keep_log(log: Path, name: str) -> Path:
    """Copy a failed contender's log out of the temporary folder, next to the results."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    kept = RESULTS / f"{datetime.now(UTC):%Y-%m-%dT%H%M%SZ}-{name}.log"
    kept.write_bytes(log.read_bytes() if log.exists() else b"")
    return kept


def _percentiles(latencies_ms: Sequence[float]) -> dict[str, float] | None:
    if not latencies_ms:
        return None
    ordered = sorted(latencies_ms)

    def pick(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1000

    return {"p50": pick(0.50), "p90": pick(0.90), "p99": pick(0.99), "max": ordered[-1] / 1000,
            "mean": statistics.fmean(ordered) / 1000}


def _server_delta(before: dict[str, Any], after: dict[str, Any], n: int) -> dict[str, Any]:
    """The emulator's work for one run. The steady feeder's sends are the producer's, not the
    contender's: they are left out of the per-message figures (but not out of utilisation)."""
    actions = {}
    requests = 0
    feeder_cpu = 0.0
    for name, now in after["actions"].items():
        then = before["actions"].get(name, {"count": 0, "cpu_seconds": 0.0})
        count = now["count"] - then["count"]
        if not count:
            continue
        cpu = now["cpu_seconds"] - then["cpu_seconds"]
        actions[name] = {"count": count, "cpu_ms_per_request": cpu * 1000 / count}
        if name in FEEDER_ACTIONS:
            feeder_cpu += cpu
        else:
            requests += count
    cpu = after["cpu_seconds"] - before["cpu_seconds"]
    wall = after["time"] - before["time"]
    return {"requests_per_msg": requests / n, "cpu_ms_per_msg": (cpu - feeder_cpu) * 1000 / n,
            "cpu_utilisation": cpu / wall if wall > 0 else None, "actions": actions,
            "fast_puts": after["fast_puts"] - before["fast_puts"]}


FEEDER_ACTIONS = ("sqs:SendMessage", "sqs:SendMessageBatch")


# --------------------------------------------------------------------------------------------
# Profiling (item 7)
# --------------------------------------------------------------------------------------------


class Profiler:
    """py-spy sampling a contender from its first receive to its last delete."""

    def __init__(self, output: Path, rate: int = 100, gil_only: bool = True) -> None:
        self.output = output
        self.rate = rate
        self.gil_only = gil_only
        self.process: subprocess.Popen[bytes] | None = None

    def attach(self, pid: int) -> None:
        py_spy = Path(sys.executable).with_name("py-spy")
        # --gil: only the thread holding the GIL is sampled, i.e. Python running on a CPU;
        # --idle: every thread, whatever it is doing (to see where threads wait).
        command = [str(py_spy) if py_spy.exists() else "py-spy", "record", "--pid", str(pid),
                   "--format", "raw", "--rate", str(self.rate),
                   "--gil" if self.gil_only else "--idle", "--output", str(self.output)]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)

    def detach(self) -> None:
        if self.process is None:
            return
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.process = None


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    from importlib.metadata import version

    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    packages = {}
    for name in ("boto3", "botocore", "obstore", "moto", "waitress", "sqs-processor"):
        try:
            packages[name] = version(name)
        except Exception:
            packages[name] = None
    return {"nproc": os.cpu_count(), "cpu_model": model or platform.processor(),
            "python": platform.python_version(), "platform": platform.platform(),
            "packages": packages}


def _ratio(value: float | None, reference: float | None) -> float | None:
    if value is None or not reference:
        return None
    return value / reference


def add_ratios(runs: list[dict[str, Any]]) -> None:
    """Speed and CPU of every run relative to the baseline and the ceiling at its latency."""
    for run in runs:
        peers = {r["contender"]: r for r in runs
                 if r["latency_ms"] == run["latency_ms"] and r["mode"] == run["mode"]}
        for ref in ("baseline", "ceiling", "ceiling-obstore"):
            other = peers.get(ref, {})
            key = ref.replace("-", "_")
            run[f"speed_x_{key}"] = _ratio(run.get("msgs_per_s"), other.get("msgs_per_s"))
            run[f"cpu_x_{key}"] = _ratio(run.get("cpu_ms_per_msg"), other.get("cpu_ms_per_msg"))


def _fmt(value: Any, spec: str = ".1f") -> str:
    if value is None:
        return "-"
    return format(value, spec)


def table(runs: list[dict[str, Any]]) -> str:
    header = ("contender", "lat ms", "msgs", "msg/s", "CPU ms/msg", "RSS MiB", "p50 s", "p99 s",
              "x base", "x ceil", "x ceil-ob", "CPU x base", "CPU x ceil", "CPU x ceil-ob",
              "srv ms/msg", "req/msg", "check")
    rows = [header]
    for run in runs:
        latency = run.get("latency_s") or {}
        server = run.get("server") or {}
        check = run.get("check", {})
        rows.append((
            run["contender"], _fmt(run["latency_ms"], ".0f"), str(run["messages"]),
            _fmt(run.get("msgs_per_s"), ".0f"), _fmt(run.get("cpu_ms_per_msg"), ".2f"),
            _fmt(run.get("peak_rss_mib"), ".0f"), _fmt(latency.get("p50"), ".2f"),
            _fmt(latency.get("p99"), ".2f"), _fmt(run.get("speed_x_baseline"), ".1f"),
            _fmt(run.get("speed_x_ceiling"), ".2f"),
            _fmt(run.get("speed_x_ceiling_obstore"), ".2f"),
            _fmt(run.get("cpu_x_baseline"), ".2f"), _fmt(run.get("cpu_x_ceiling"), ".2f"),
            _fmt(run.get("cpu_x_ceiling_obstore"), ".2f"),
            _fmt(server.get("cpu_ms_per_msg"), ".2f"),
            _fmt(server.get("requests_per_msg"), ".2f"),
            "ok" if check.get("ok") and "error" not in run else "FAILED"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = []
    for index, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i])
                               for i, cell in enumerate(row)))
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def evaluate_targets(drains: list[dict[str, Any]], steady: list[dict[str, Any]],
                     big: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """Issue 12's targets: the shipped defaults against the baseline and both bare ceilings,
    peak RSS in every drain (the 1 MiB one included), p99 under a steady feed, batched mode."""
    targets: list[dict[str, Any]] = []
    latencies = sorted({r["latency_ms"] for r in drains})
    at = 20.0 if 20.0 in latencies else (latencies[-1] if latencies else None)

    def find(runs: list[dict[str, Any]], name: str) -> dict[str, Any]:
        return next((r for r in runs if r["contender"] == name and r["latency_ms"] == at), {})

    default = find(drains, PROCESSOR_DEFAULT)

    def add(text: str, value: float | None, limit: float, higher: bool) -> None:
        holds = None if value is None else (value >= limit if higher else value <= limit)
        targets.append({"what": text, "value": value, "limit": limit, "holds": holds})

    where = f" at {at:g} ms" if at is not None else ""
    add(f"defaults msg/s vs baseline{where} (>= 15x)", default.get("speed_x_baseline"), 15.0,
        True)
    add("defaults msg/s vs boto3 ceiling (>= 1.2x)", default.get("speed_x_ceiling"), 1.2, True)
    add("defaults CPU/msg vs baseline (<= 0.35x)", default.get("cpu_x_baseline"), 0.35, False)
    add("defaults CPU/msg vs boto3 ceiling (<= 0.5x)", default.get("cpu_x_ceiling"), 0.5, False)
    add("defaults CPU/msg vs obstore ceiling (<= 1.2x)", default.get("cpu_x_ceiling_obstore"),
        1.2, False)
    batched = find(drains, "sqs-processor-batched")
    if batched:
        add("batched msg/s vs baseline (>= 60x)", batched.get("speed_x_baseline"), 60.0, True)
    for runs, what in ((drains, f"{n} messages"), (big, "1 MiB messages")):
        peak = max((r.get("peak_rss_mib") or 0 for r in runs
                    if r["contender"].startswith("sqs-processor")), default=None)
        if runs:
            add(f"peak RSS MiB, any sqs-processor drain of {what} (< 150)", peak, 150, False)
    for run in steady:
        if run["contender"] == PROCESSOR_DEFAULT:
            p99 = (run.get("latency_s") or {}).get("p99")
            add(f"p99 s at {run['rate']:g} msg/s, defaults (< 1 s)", p99, 1.0, False)
    return targets


def print_report(report: dict[str, Any]) -> None:
    emulator = report["emulator"]
    print()
    print(f"sqs-processor benchmark, {report['date']}")
    m = report["machine"]
    print(f"machine: {m['nproc']} cores, {m['cpu_model']}, Python {m['python']}; "
          f"command: {report['command']}")
    print(f"emulator: moto {m['packages'].get('moto')} behind {emulator['http_server']} in its "
          "own process, latency injected per request by a server-side sleep (no CPU). "
          "moto's depth-dependent scans and per-request overheads were removed in that process:")
    for line in emulator["patches"]:
        print(f"  - {line}")
    if emulator["http_server"] == "werkzeug":
        print("  (werkzeug's server closes the connection after every response: every call pays "
              "for a new TCP connection; install the bench extra for waitress)")
    print(f"baseline drained {report['settings']['baseline_n']} messages, the others "
          f"{report['settings']['n']}: it makes ~2 sequential requests per message (about 25 "
          "msg/s at 20 ms), so a full drain would take most of the run; rates and CPU are per "
          "message, so they compare.")
    print()
    print("Drain of a preloaded queue (p50/p99: PUT time minus SentTimestamp; for a backlog this "
          "is mostly time spent waiting in the queue):")
    print(table(report["drains"]))
    if report["steady"]:
        print()
        steady = report["steady"][0]
        print(f"Steady feed: {steady['rate']:g} msg/s for {steady['seconds']:g} s at "
              f"{steady['latency_ms']:g} ms, the contender running before the first send "
              "(p50/p99 are the figures that matter here):")
        print(table(report["steady"]))
    print()
    if report["big"]:
        print()
        print(f"Drain of {report['big'][0]['messages']} messages of 1 MiB (plain JSON, emoji "
              "text, a JSON string of escapes, in turn) at "
              f"{report['big'][0]['latency_ms']:g} ms; peak RSS is the figure here:")
        print(table(report["big"]))
    print()
    print("Targets (issue 12):")
    for t in report["targets"]:
        state = {True: "holds", False: "DOES NOT HOLD", None: "not measured"}[t["holds"]]
        print(f"  {t['what']}: {_fmt(t['value'], '.2f')} -> {state}")
    profile = report.get("profile")
    if profile:
        print()
        print(f"Profile of {profile['contender']} ({profile['samples']} samples of threads "
              f"on CPU, {profile['cpu_ms_per_msg']:.2f} ms CPU/msg): {profile['raw']}")
        for row in profile["by_stage"]:
            print(f"  {row['share'] * 100:5.1f}%  {row['ms_per_msg']:.3f} ms/msg  {row['name']}")
        print("  by layer (innermost library on the stack):")
        for row in profile["by_layer"]:
            print(f"  {row['share'] * 100:5.1f}%  {row['ms_per_msg']:.3f} ms/msg  {row['name']}")
        print("  hottest functions (self time):")
        for row in profile["hot_functions"][:8]:
            print(f"  {row['share'] * 100:5.1f}%  {row['ms_per_msg']:.3f} ms/msg  {row['name']}")
        print(f"Where the runner's threads spend their time (every thread sampled): "
              f"{profile['threads_raw']}")
        for role, states in profile["threads"].items():
            parts = ", ".join(f"{row['share'] * 100:.0f}% {row['state']}" for row in states
                              if row["share"] >= 0.01)
            print(f"  {role}s: {parts}")
    failed = [r for r in report["drains"] + report["big"] + report["steady"]
              if "error" in r or not r.get("check", {}).get("ok")]
    print()
    if failed:
        for run in failed:
            print(f"FAILED: {run['contender']} at {run['latency_ms']:g} ms ({run['mode']}): "
                  f"{run.get('error', '')} check={run.get('check')}")
    else:
        print("Correctness: every run stored every message exactly once, intact, and left its "
              "queue empty.")
    print(f"JSON: {report['out']}")


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=20000, help="messages per drain (default 20000)")
    parser.add_argument("--baseline-n", type=int, default=1000,
                        help="messages the baseline drains (default 1000; it is slow)")
    parser.add_argument("--latency-ms", default="20",
                        help="comma-separated injected latencies (default 20; e.g. 10,20)")
    parser.add_argument("--contenders", default=",".join(c.name for c in CONTENDERS),
                        help="comma-separated, from: " + ", ".join(BY_NAME))
    parser.add_argument("--steady-rate", type=float, default=100.0)
    parser.add_argument("--steady-seconds", type=float, default=20.0,
                        help="length of the steady feed; 0 skips it")
    parser.add_argument("--steady-latency-ms", type=float, default=None,
                        help="default: the highest of --latency-ms")
    parser.add_argument("--steady-contenders",
                        default="ceiling,ceiling-obstore,sqs-processor-default,"
                                "sqs-processor-tuned,sqs-processor-batched")
    parser.add_argument("--big-n", type=int, default=150,
                        help="1 MiB messages in the big drain (default 150; 0 skips it)")
    parser.add_argument("--big-contenders",
                        default="ceiling,ceiling-obstore,sqs-processor-default")
    parser.add_argument("--quick", action="store_true",
                        help="a short run: n=2000, baseline-n=300, 20 ms only, 10 s steady feed")
    parser.add_argument("--profile", action="store_true",
                        help="also drain once under py-spy and summarise where the CPU goes")
    parser.add_argument("--profile-contender", default=PROCESSOR_TUNED)
    parser.add_argument("--tuned", default="",
                        help="override the tuned settings (the ceiling follows them), e.g. "
                             "workers=64,pollers=8,max_in_flight=400,poll_interval_seconds=1")
    parser.add_argument("--http-server", choices=("auto", "waitress", "werkzeug"),
                        default="auto", help="the emulator's HTTP server (auto: waitress if "
                        "installed)")
    parser.add_argument("--no-fast-put", dest="fast_put", action="store_false",
                        help="every PutObject through moto's full HTTP layer (slower emulator)")
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds a contender may take (default: from the message count)")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON report (default bench/results/<date>.json)")
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.baseline_n, args.latency_ms = 2000, 300, "20"
        args.steady_seconds = min(args.steady_seconds, 10.0)
        args.big_n = min(args.big_n, 30)
    for item in filter(None, (x.strip() for x in args.tuned.split(","))):
        key, _, value = item.partition("=")
        target = TUNED_SERVICE if key in TUNED_SERVICE else TUNED_SOURCE
        target[key] = float(value) if "." in value else int(value)
    args.latencies = [float(x) for x in args.latency_ms.split(",") if x.strip()]
    args.contender_list = _names(args.contenders, parser)
    args.steady_list = _names(args.steady_contenders, parser) if args.steady_seconds > 0 else []
    args.big_list = _names(args.big_contenders, parser) if args.big_n > 0 else []
    if args.steady_latency_ms is None:
        args.steady_latency_ms = max(args.latencies) if args.latencies else 20.0
    return args


def _names(text: str, parser: argparse.ArgumentParser) -> list[Contender]:
    names = [x.strip() for x in text.split(",") if x.strip()]
    unknown = [x for x in names if x not in BY_NAME]
    if unknown:
        parser.error(f"unknown contender(s) {', '.join(unknown)}; known: {', '.join(BY_NAME)}")
    return [BY_NAME[x] for x in names]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = datetime.now(UTC)
    out = args.out or RESULTS / f"{started:%Y-%m-%dT%H%M%SZ}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    command = "python -m bench " + " ".join(argv if argv is not None else sys.argv[1:])
    server = Server(http_server=args.http_server, fast_put=args.fast_put)
    drains: list[dict[str, Any]] = []
    steady: list[dict[str, Any]] = []
    big: list[dict[str, Any]] = []
    profile = None
    try:
        with tempfile.TemporaryDirectory(prefix="sqs-bench-") as tmp:
            workdir = Path(tmp)
            for latency in args.latencies:
                for contender in args.contender_list:
                    n = args.baseline_n if contender.subset else args.n
                    timeout = args.timeout or max(120.0, n / 4)
                    _progress(f"drain: {contender.name}, {n} messages, {latency:g} ms")
                    run = run_contender(server, contender, Scenario("drain", latency, n),
                                        workdir, timeout)
                    drains.append(run)
                    _progress_result(run)
            big_latency = max(args.latencies) if args.latencies else 20.0
            for contender in args.big_list:
                _progress(f"1 MiB drain: {contender.name}, {args.big_n} messages, "
                          f"{big_latency:g} ms")
                run = run_contender(server, contender, Scenario("big", big_latency, args.big_n),
                                    workdir, args.timeout or max(180.0, args.big_n * 2.0))
                big.append(run)
                _progress_result(run)
            for contender in args.steady_list:
                scenario = Scenario("steady", args.steady_latency_ms,
                                    int(args.steady_rate * args.steady_seconds),
                                    rate=args.steady_rate, seconds=args.steady_seconds)
                _progress(f"steady: {contender.name}, {scenario.rate:g} msg/s for "
                          f"{scenario.seconds:g} s, {scenario.latency_ms:g} ms")
                run = run_contender(server, contender, scenario, workdir,
                                    args.timeout or args.steady_seconds + 150)
                run.update({"rate": scenario.rate, "seconds": scenario.seconds})
                steady.append(run)
                _progress_result(run)
            if args.profile:
                profile = run_profile(server, BY_NAME[args.profile_contender], args, workdir,
                                      out)
    finally:
        server.stop()
    add_ratios(drains)
    add_ratios(big)
    add_ratios(steady)
    report = {
        "date": started.isoformat(timespec="seconds"),
        "command": command,
        "machine": machine(),
        "settings": {"n": args.n, "baseline_n": args.baseline_n, "latencies_ms": args.latencies,
                     "steady_rate": args.steady_rate, "steady_seconds": args.steady_seconds,
                     "big_n": args.big_n,
                     "tuned_service": TUNED_SERVICE, "tuned_source": TUNED_SOURCE,
                     "contenders": {c.name: c.text() for c in CONTENDERS}},
        "emulator": {k: server.facts.get(k) for k in ("http_server", "patches")},
        "drains": drains,
        "big": big,
        "steady": steady,
        "targets": evaluate_targets(drains, steady, big, args.n),
        "profile": profile,
        "out": str(out),
    }
    out.write_text(json.dumps(report, indent=1), encoding="utf-8")
    print_report(report)
    failed = any("error" in r or not r.get("check", {}).get("ok")
                 for r in drains + big + steady)
    return 1 if failed else 0


def run_profile(server: Server, contender: Contender, args: argparse.Namespace, workdir: Path,
                out: Path) -> dict[str, Any]:
    """Two more drains under py-spy: Python on CPU (--gil), then every thread (--idle)."""
    from bench.profile import summarise, thread_states

    latency = max(args.latencies) if args.latencies else 20.0
    timeout = args.timeout or max(120.0, args.n / 4)
    cpu_raw = out.with_suffix(".pyspy-cpu.txt")
    threads_raw = out.with_suffix(".pyspy-threads.txt")
    _progress(f"profile (CPU): {contender.name}, {args.n} messages, {latency:g} ms, py-spy --gil")
    run = run_contender(server, contender, Scenario("drain", latency, args.n), workdir, timeout,
                        profiler=Profiler(cpu_raw, rate=250))
    _progress_result(run)
    summary = summarise(cpu_raw, run.get("cpu_ms_per_msg") or 0.0)
    _progress(f"profile (threads): {contender.name}, py-spy --idle")
    threads_run = run_contender(server, contender, Scenario("drain", latency, args.n), workdir,
                                timeout, profiler=Profiler(threads_raw, gil_only=False))
    _progress_result(threads_run)
    summary.update({"contender": contender.name, "latency_ms": latency, "raw": str(cpu_raw),
                    "threads_raw": str(threads_raw), "threads": thread_states(threads_raw),
                    "run": {k: run.get(k) for k in ("msgs_per_s", "cpu_ms_per_msg", "check")}})
    return summary


def _progress(text: str) -> None:
    print(f"[{datetime.now():%H:%M:%S}] {text} ...", file=sys.stderr, flush=True)


def _progress_result(run: dict[str, Any]) -> None:
    if "error" in run:
        print(f"    FAILED: {run['error']}", file=sys.stderr, flush=True)
        return
    state = "ok" if run["check"]["ok"] else f"CHECK FAILED {run['check']}"
    latency = run.get("latency_s") or {}
    print(f"    {run['msgs_per_s']:.0f} msg/s, {run['cpu_ms_per_msg']:.2f} ms CPU/msg, "
          f"{run['peak_rss_mib']:.0f} MiB, p99 {_fmt(latency.get('p99'), '.2f')} s, "
          f"server {run['server']['cpu_ms_per_msg']:.2f} ms/msg "
          f"({_fmt(run['server']['cpu_utilisation'], '.0%')} of a core); {state}",
          file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
