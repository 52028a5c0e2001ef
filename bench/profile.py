"""Where sqs-processor's CPU goes per message, from a py-spy profile (``bench --profile``).

py-spy samples the contender process from outside, from its first receive to its last delete,
with ``--gil``: only the thread holding the GIL is recorded, so a sample is Python code running
on a CPU (threads blocked on a socket, a lock or a queue hold no GIL and are not counted). Each
sample is then attributed twice:

* to a **stage** of the pipeline: the innermost frame that names one (the S3 write, the receive,
  the delete batch, the transforms, logging, the runner's own bookkeeping);
* to a **layer**: the innermost frame that belongs to a library or part we can name (botocore's
  signing, serialisation, parsing and machinery; HTTP; logging; the engine; the plugins).
  Standard-library helpers (uuid, hmac, urllib.parse, ...) count for whoever called them.

A share of samples times the measured CPU per message gives milliseconds per message. CPU spent
outside the GIL (system calls, C code that releases it) is not sampled, so the shares describe
the Python part; the README says how large that part is.

A second profile samples every thread (no ``--gil``) to show where the runner's threads wait:
pollers waiting for in-flight room, idle workers, the acker, time spent waiting for AWS.

    python -m bench.profile RAW_FILE CPU_MS_PER_MSG   # summarise an existing py-spy raw file
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

# (name, markers): a frame matches when its "function (file:line)" text contains a marker.
STAGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("logging (every logger, incl. one INFO line per stored message)",
     ("logging/__init__.py", "core/logs.py", "sqs_processor/logs.py", "core/errors.py")),
    ("S3 PutObject: sink write, incl. orjson encode", ("S3Sink.write", "write_batch")),
    ("SQS ReceiveMessage: source, incl. building Messages", ("SqsSource.receive",)),
    ("SQS DeleteMessageBatch: acker", ("SqsDelete.ack",)),
    ("transforms: json_parse, enrich", ("JsonParse.__call__", "Enrich.__call__")),
    ("observer hooks (the bench probe)", ("Observers.notify", "bench/probe.py")),
    ("engine: hand-offs, locks, records, stats",
     tuple(f"{root}/{unit}.py" for root in ("core", "sqs_processor")
           for unit in ("runner", "poller", "workers", "acks", "settlement", "inflight",
                        "pause", "heartbeat", "batching", "tracing", "message", "pipeline",
                        "process", "observers"))),
)

LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("logging", ("logging/__init__.py", "core/logs.py", "sqs_processor/logs.py",
                 "core/errors.py")),
    ("HTTP: urllib3, http.client, sockets",
     ("urllib3/", "http/client.py", "socket.py", "email/", "selectors.py", "ssl.py")),
    ("botocore: SigV4 signing", ("botocore/auth.py", "botocore/signers.py")),
    ("botocore: request serialisation and validation",
     ("botocore/serialize.py", "botocore/validate.py")),
    ("botocore: response parsing", ("botocore/parsers.py",)),
    ("botocore: checksums", ("botocore/httpchecksum.py",)),
    ("botocore: events, handlers, endpoint, retries, request objects", ("botocore/",)),
    ("boto3", ("boto3/",)),
    ("built-in plugins (incl. orjson calls)", ("plugins/",)),
    ("engine: runner, message, pipeline", ("core/", "sqs_processor/")),
    ("bench probe", ("bench/",)),
)


def read_raw(path: Path) -> Iterator[tuple[list[str], int]]:
    """(frames from the thread's root to the leaf, sample count) for each line of a raw file."""
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count = line.rstrip().rpartition(" ")
        if stack and count.isdigit():
            yield stack.split(";"), int(count)


def classify(frames: list[str], rules: Iterable[tuple[str, tuple[str, ...]]],
             default: str) -> str:
    rules = tuple(rules)
    for frame in reversed(frames):
        for name, markers in rules:
            if any(marker in frame for marker in markers):
                return name
    return default


def _leaf(frames: list[str]) -> str:
    return frames[-1] if frames else "?"


def summarise(raw: Path, cpu_ms_per_msg: float, top: int = 15) -> dict[str, Any]:
    stages: Counter[str] = Counter()
    layers: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    total = 0
    if Path(raw).exists():
        for frames, count in read_raw(Path(raw)):
            total += count
            stages[classify(frames, STAGES, "other (thread start-up, GC, ...)")] += count
            layers[classify(frames, LAYERS, "other (standard library, interpreter)")] += count
            leaves[_leaf(frames)] += count

    def rows(counter: Counter[str], limit: int | None = None) -> list[dict[str, Any]]:
        return [{"name": name, "samples": n, "share": n / total,
                 "ms_per_msg": n / total * cpu_ms_per_msg}
                for name, n in counter.most_common(limit)] if total else []

    return {"samples": total, "cpu_ms_per_msg": cpu_ms_per_msg, "by_stage": rows(stages),
            "by_layer": rows(layers), "hot_functions": rows(leaves, top)}


# Thread roles, from the outermost runner frame, and what a sampled thread was doing, from its
# innermost frame. Used on a profile of every thread (no --gil) to see where threads wait.
ROLES = (("poller", "Poller._loop"), ("worker", "WorkerPool._loop"), ("acker", "AckPool._loop"))
STATES = (
    ("waiting for in-flight room (max_in_flight reached)",
     lambda role, leaf, frames: role == "poller" and leaf.startswith("Condition.wait")
     and any("InFlight.reserve" in f for f in frames[-3:])),
    ("idle: waiting for a message", lambda role, leaf, frames: leaf.startswith(
        "WorkerPool._loop")),
    ("idle: waiting for finished messages / batch linger",
     lambda role, leaf, frames: leaf.startswith("AckPool._loop") or (
         role == "acker" and leaf.startswith("Condition.wait")
         and any("Queue.get" in f for f in frames[-3:]))),
    ("waiting for AWS (the injected latency, the emulator)",
     lambda role, leaf, frames: any(leaf.startswith(x) for x in (
         "SocketIO.readinto", "poll_wait_for_socket", "wait_for_read", "_PollLikeSelector.select",
         "AWSConnection._handle_expect_response", "HTTPConnection.send"))),
    ("waiting for the logging lock", lambda role, leaf, frames: leaf.startswith(
        "Handler.acquire")),
    ("sleeping (poll interval, retry back-off)", lambda role, leaf, frames: leaf.startswith(
        ("Event.wait", "Condition.wait", "sleep"))),
)


def thread_states(raw: Path) -> dict[str, Any]:
    """Share of each runner thread role's samples per state, from a profile of every thread."""
    table: dict[str, Counter[str]] = {}
    for frames, count in read_raw(Path(raw)):
        role = next((name for name, marker in ROLES if any(marker in f for f in frames)), None)
        if role is None:
            continue
        leaf = _leaf(frames)
        state = next((name for name, test in STATES if test(role, leaf, frames)),
                     "running Python (or waiting for the GIL)")
        table.setdefault(role, Counter())[state] += count
    result = {}
    for role, counter in table.items():
        total = sum(counter.values())
        result[role] = [{"state": state, "share": n / total} for state, n in
                        counter.most_common()]
    return result


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print(__doc__.rsplit("\n\n", 1)[-1].strip(), file=sys.stderr)
        return 2
    summary = summarise(Path(args[0]), float(args[1]))
    print(f"{summary['samples']} samples, {summary['cpu_ms_per_msg']:.2f} ms CPU per message")
    for title in ("by_stage", "by_layer", "hot_functions"):
        print(title.replace("_", " ") + ":")
        for row in summary[title]:
            print(f"  {row['share'] * 100:5.1f}%  {row['ms_per_msg']:.3f} ms/msg  {row['name']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
