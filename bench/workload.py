"""The messages the benchmark sends: mixed sizes around 1 KiB, some not JSON, some attributes.

Bodies are generated from a seed, so every contender drains the same workload:

* 70 % JSON objects (an order with items and a free-text note),
* 10 % JSON of other shapes (arrays, nested documents),
* 20 % plain text, which the processor stores without ``parsed_body``.

Sizes are spread from about 200 bytes to 2 KiB, averaging about 1 KiB. One message in four has a
String attribute and one in ten also a Binary one, so attribute handling is part of the work.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

WORDS = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india",
         "juliett", "kilo", "lima", "mike", "november", "oscar", "papa", "quebec", "romeo",
         "sierra", "tango", "uniform", "victor", "whiskey", "xray", "yankee", "zulu", "héllo",
         "wörld", "✓", "📦")


def _text(rng: random.Random, size: int) -> str:
    parts: list[str] = []
    length = 0
    while length < size:
        word = rng.choice(WORDS)
        parts.append(word)
        length += len(word) + 1
    return " ".join(parts)[:size]


def body_for(index: int, seed: int = 1) -> str:
    """The body of message ``index`` of the workload: deterministic, ~1 KiB on average."""
    rng = random.Random(seed * 1_000_003 + index)
    size = rng.randint(200, 1850)
    kind = rng.random()
    if kind < 0.2:
        return f"plain text message {index}: " + _text(rng, size)
    if kind < 0.3:
        if rng.random() < 0.5:
            return json.dumps([{"n": i, "word": rng.choice(WORDS)} for i in range(size // 24)],
                              ensure_ascii=False)
        return json.dumps({"event": {"id": index, "meta": {"tags": [rng.choice(WORDS)
                                                                    for _ in range(5)]},
                                     "payload": {"text": _text(rng, size - 90)}}},
                          ensure_ascii=False)
    items = [{"sku": f"SKU-{rng.randint(1000, 9999)}", "qty": rng.randint(1, 5),
              "price": round(rng.uniform(1, 200), 2)} for _ in range(rng.randint(1, 5))]
    document = {"order_id": index, "status": rng.choice(("created", "paid", "shipped")),
                "customer": {"id": rng.randint(1, 10**6), "name": _text(rng, 16)},
                "items": items, "note": ""}
    overhead = len(json.dumps(document, ensure_ascii=False))
    document["note"] = _text(rng, max(0, size - overhead))
    return json.dumps(document, ensure_ascii=False)


def attributes_for(index: int, seed: int = 1) -> dict[str, Any]:
    rng = random.Random(seed * 7_000_003 + index)
    attributes: dict[str, Any] = {}
    if rng.random() < 0.25:
        attributes["source"] = {"DataType": "String", "StringValue": rng.choice(WORDS)}
        if rng.random() < 0.4:
            attributes["checksum"] = {"DataType": "Binary",
                                      "BinaryValue": rng.randbytes(8)}
    return attributes


def entry_for(index: int, seed: int = 1) -> dict[str, Any]:
    """One SendMessageBatch entry (without its batch-local Id)."""
    entry: dict[str, Any] = {"MessageBody": body_for(index, seed)}
    attributes = attributes_for(index, seed)
    if attributes:
        entry["MessageAttributes"] = attributes
    return entry


MIB = 1024 * 1024


def _fill(unit: str, head: str = "", tail: str = "") -> str:
    """``head + unit * n + tail``, as long as it stays within SQS's 1 MiB of UTF-8."""
    room = MIB - len((head + tail).encode("utf-8"))
    return head + unit * (room // len(unit.encode("utf-8"))) + tail


BIG_BODIES = (
    _fill("abcdefgh", '{"text": "', '"}'),  # plain JSON: 1 byte a character
    _fill('😀 say "hi" \\ back\n'),  # emoji text: 4 bytes a character held, escapes
    _fill('\\"\\\\', '"', '"'),  # a JSON string of escapes: doubles when encoded
)
"""Maximum-size bodies of the three kinds whose memory cost differs most (the 1 MiB drain)."""


def big_entry_for(index: int) -> dict[str, Any]:
    """Message ``index`` of the 1 MiB drain: the three kinds in turn, each made unique."""
    kind = index % len(BIG_BODIES)
    body, tag = BIG_BODIES[kind], f"{index:08d}"
    if kind == 0:  # inside the JSON text
        return {"MessageBody": body[:-len(tag) - 2] + tag + body[-2:]}
    if kind == 1:
        return {"MessageBody": tag + body[len(tag):]}
    return {"MessageBody": '"' + tag + body[1 + len(tag):]}  # replaces two whole escapes


def preload(sqs: Any, queue_url: str, count: int, *, start: int = 0, seed: int = 1,
            threads: int = 8, big: bool = False) -> int:
    """Send messages ``start`` .. ``start + count - 1`` in batches of ten (one by one for the
    1 MiB bodies: a batch may carry 1 MiB in all); returns the count."""
    if big:
        def send_big(index: int) -> int:
            sqs.send_message(QueueUrl=queue_url, **big_entry_for(index))
            return 1

        with ThreadPoolExecutor(threads) as pool:
            return sum(pool.map(send_big, range(start, start + count)))

    def send(first: int) -> int:
        entries = [{"Id": str(i), **entry_for(first + i, seed)}
                   for i in range(min(10, start + count - first))]
        response = sqs.send_message_batch(QueueUrl=queue_url, Entries=entries)
        failed = response.get("Failed") or []
        if failed:
            raise RuntimeError(f"preload: {len(failed)} messages were not sent: {failed[:1]}")
        return len(entries)

    with ThreadPoolExecutor(threads) as pool:
        return sum(pool.map(send, range(start, start + count, 10)))


class SteadyFeeder:
    """Sends ``rate`` messages a second, one SendMessage each, on a fixed schedule.

    Sends are spread evenly (message i is due at ``i / rate`` seconds) and handed to a small
    thread pool, so the injected latency does not slow the schedule down.
    """

    def __init__(self, sqs: Any, queue_url: str, rate: float, seconds: float, *,
                 seed: int = 2, threads: int = 16) -> None:
        self.sqs = sqs
        self.queue_url = queue_url
        self.rate = rate
        self.total = int(rate * seconds)
        self.seed = seed
        self.threads = threads
        self.sent = 0
        self.late = 0  # sends that started more than 50 ms behind schedule
        self.errors: list[str] = []
        self._lock = threading.Lock()

    def _send(self, index: int) -> None:
        try:
            self.sqs.send_message(QueueUrl=self.queue_url, **entry_for(index, self.seed))
            with self._lock:
                self.sent += 1
        except Exception as exc:  # reported, never hidden
            with self._lock:
                self.errors.append(f"{type(exc).__name__}: {exc}")

    def run(self, clock: Callable[[], float] = time.monotonic) -> None:
        with ThreadPoolExecutor(self.threads) as pool:
            start = clock()
            for index in range(self.total):
                due = start + index / self.rate
                delay = due - clock()
                if delay > 0:
                    time.sleep(delay)
                elif delay < -0.05:
                    self.late += 1
                pool.submit(self._send, index)
