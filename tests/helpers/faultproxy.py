"""A fault-injecting HTTP/1.1 proxy between the processor and the moto server.

The processor is pointed at the proxy (``aws: {endpoint_url: proxy.url}``); the tests' own
clients keep talking to moto directly, so a fault hits only the processor. Requests are
classified by service and operation:

* SQS speaks the JSON protocol: the operation is the ``X-Amz-Target`` header
  (``AmazonSQS.ReceiveMessage`` -> ``ReceiveMessage``), the parameters are the JSON body.
* S3 is path-style (an IP endpoint makes botocore use path-style addressing): the operation is
  derived from the method and the path (``PUT /bucket/key`` -> ``PutObject``).

Rules pick requests (service, operation, S3 key prefix, or any predicate) and act on them:

=====================  ========================================================================
``Delay(s)``           wait ``s`` seconds, then forward (a slow network or a slow server)
``DelayResponse(s)``   forward at once (the server acts), then hold the answer for ``s`` seconds
``Hold(event)``        hold the request until ``event`` is set (a frozen endpoint), then forward
``Error(...)``         answer with a canned S3 XML or SQS JSON error; nothing is forwarded (the
                       message may be a function of the request, to quote what it carried)
``DropBeforeForward``  reset the connection; the server never sees the request
``DropAfterForward``   forward and let the server commit, then reset the connection without an
                       answer ("committed, then the response was lost")
``FailEntries(...)``   for SQS ``...Batch`` calls: forward only some entries and report the
                       others as failed entries, the way SQS reports a partial batch failure
=====================  ========================================================================

Each rule can be limited to a number of firings (``times``), let the first ``skip`` matches
through, fire with a probability (from one seeded ``random.Random``, so a run is repeatable for
a given interleaving), and be switched off (``rule.enabled = False``) to end an outage. The first
rule that fires decides what happens to a request. Every request is recorded (service,
operation, key, SQS parameters, what was done) for assertions about what the processor sent.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import random
import socket
import struct
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
              "trailer", "trailers", "transfer-encoding", "upgrade", "expect", "content-length"}
SQS_JSON = "application/x-amz-json-1.0"
MAX_RECORDED_BODY = 64 * 1024


# ------------------------------------------------------------------------------------------
# Requests and actions
# ------------------------------------------------------------------------------------------


@dataclass
class Request:
    """One request as the proxy saw it."""

    number: int
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    service: str  # "sqs" or "s3"
    operation: str  # e.g. "ReceiveMessage", "PutObject"
    bucket: str | None = None
    key: str | None = None
    params: dict[str, Any] | None = None  # an SQS request's JSON parameters
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None  # when the answer was sent or the connection dropped
    outcome: str = "forwarded"  # what the proxy did: forwarded, or the action's name
    status: int | None = None  # the status the client received (None: connection dropped)


@dataclass(frozen=True)
class Delay:
    seconds: float


@dataclass(frozen=True)
class DelayResponse:
    seconds: float


@dataclass(frozen=True)
class Hold:
    """Hold each matching request until ``release`` is set (at most ``limit`` seconds)."""

    release: threading.Event
    limit: float = 120.0


@dataclass(frozen=True)
class Error:
    status: int
    code: str
    message: str | Callable[[Request], str] = "injected by the fault proxy"
    sender_fault: bool = False  # SQS only: a client error rather than a server error


SLOW_DOWN = Error(503, "SlowDown", "Please reduce your request rate.")
S3_INTERNAL_ERROR = Error(500, "InternalError", "We encountered an internal error.")
ACCESS_DENIED = Error(403, "AccessDenied", "Access Denied")
SQS_INTERNAL_ERROR = Error(500, "InternalFailure", "The request processing has failed.")


@dataclass(frozen=True)
class DropBeforeForward:
    pass


@dataclass(frozen=True)
class DropAfterForward:
    pass


@dataclass(frozen=True)
class FailEntries:
    """Report some entries of an SQS batch call as failed (the rest are forwarded)."""

    code: str = "InternalError"
    sender_fault: bool = False
    select: Callable[[dict[str, Any]], bool] | None = None  # None: every entry
    message: str | Callable[[dict[str, Any]], str] = "injected by the fault proxy"  # per entry


Action = Delay | DelayResponse | Hold | Error | DropBeforeForward | DropAfterForward | FailEntries


@dataclass
class Rule:
    """Which requests to act on, what to do, and how often."""

    action: Action
    service: str | None = None
    operation: str | None = None
    key_prefix: str | None = None  # S3: only keys starting with this
    where: Callable[[Request], bool] | None = None
    probability: float = 1.0
    times: int | None = None  # fire at most this many times
    skip: int = 0  # let this many matching requests through first
    enabled: bool = True
    matched: int = 0
    fired: int = 0

    def matches(self, request: Request) -> bool:
        if not self.enabled:
            return False
        if self.service is not None and request.service != self.service:
            return False
        if self.operation is not None and request.operation != self.operation:
            return False
        if self.key_prefix is not None and not (request.key or "").startswith(self.key_prefix):
            return False
        return self.where is None or bool(self.where(request))


# ------------------------------------------------------------------------------------------
# Classification
# ------------------------------------------------------------------------------------------


def _classify(request: Request) -> None:
    target = request.headers.get("x-amz-target", "")
    if target.startswith("AmazonSQS."):
        request.service = "sqs"
        request.operation = target.split(".", 1)[1]
        if len(request.body) <= MAX_RECORDED_BODY:
            try:
                request.params = json.loads(request.body or b"{}")
            except ValueError:
                request.params = None
        return
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("application/x-www-form-urlencoded") and b"Action=" in request.body:
        request.service = "sqs"  # the query protocol, should an older client use it
        form = parse_qs(request.body.decode("utf-8", "replace"))
        request.operation = form.get("Action", ["Unknown"])[0]
        return
    request.service = "s3"
    parts = request.path.lstrip("/").split("/", 1)
    request.bucket = unquote(parts[0]) or None
    request.key = unquote(parts[1]) if len(parts) > 1 and parts[1] else None
    method, query = request.method, request.query
    if request.key is not None:
        if method == "PUT":
            request.operation = "UploadPart" if "partNumber" in query else (
                "CopyObject" if "x-amz-copy-source" in request.headers else "PutObject")
        else:
            request.operation = {"GET": "GetObject", "HEAD": "HeadObject",
                                 "DELETE": "DeleteObject", "POST": "PostObject"}.get(method, method)
    elif request.bucket is None:
        request.operation = "ListBuckets"
    else:
        request.operation = {"PUT": "CreateBucket", "HEAD": "HeadBucket",
                             "DELETE": "DeleteBucket"}.get(method, "")
        if method == "GET":
            request.operation = "ListObjectsV2" if "list-type" in query else "ListObjects"
        elif method == "POST" and "delete" in query:
            request.operation = "DeleteObjects"


# ------------------------------------------------------------------------------------------
# The server
# ------------------------------------------------------------------------------------------


class FaultProxy:
    """Forwards to ``upstream`` (http://host:port); ``url`` is where clients connect."""

    def __init__(self, upstream: str, seed: int = 0) -> None:
        parsed = urlsplit(upstream)
        assert parsed.scheme == "http" and parsed.hostname and parsed.port, upstream
        self.upstream = (parsed.hostname, parsed.port)
        self.random = random.Random(seed)
        self.rules: list[Rule] = []
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._counter = 0
        self._server = _Server(("127.0.0.1", 0), self)
        self._thread = threading.Thread(target=self._server.serve_forever, name="fault-proxy",
                                        kwargs={"poll_interval": 0.1}, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- rules ---------------------------------------------------------------------------

    def add(self, action: Action, **options: Any) -> Rule:
        """Add a rule (see :class:`Rule` for the options); returns it, to switch it off later."""
        rule = Rule(action=action, **options)
        with self._lock:
            self.rules.append(rule)
        return rule

    def clear(self) -> None:
        with self._lock:
            for rule in self.rules:
                rule.enabled = False
            self.rules = []

    def _decide(self, request: Request) -> Rule | None:
        with self._lock:
            self._counter += 1
            request.number = self._counter
            self.requests.append(request)
            for rule in self.rules:
                if not rule.matches(request):
                    continue
                rule.matched += 1
                if rule.matched <= rule.skip:
                    continue
                if rule.times is not None and rule.fired >= rule.times:
                    continue
                if rule.probability < 1.0 and self.random.random() >= rule.probability:
                    continue
                rule.fired += 1
                return rule
        return None

    def _pick(self, items: Iterable[dict[str, Any]], action: FailEntries) -> list[bool]:
        with self._lock:
            return [action.select(item) if action.select else True for item in items]

    # -- what was seen -------------------------------------------------------------------

    def seen(self, operation: str | None = None, service: str | None = None,
             where: Callable[[Request], bool] | None = None) -> list[Request]:
        with self._lock:
            requests = list(self.requests)
        return [r for r in requests
                if (operation is None or r.operation == operation)
                and (service is None or r.service == service)
                and (where is None or where(r))]

    def count(self, operation: str | None = None, service: str | None = None,
              where: Callable[[Request], bool] | None = None) -> int:
        return len(self.seen(operation, service, where))

    def max_concurrent(self, operation: str) -> int:
        """The most requests of ``operation`` that were open at the same moment."""
        edges = []
        for request in self.seen(operation):
            edges.append((request.started, 1))
            edges.append((request.finished or time.monotonic(), -1))
        open_now = peak = 0
        for _, step in sorted(edges):
            open_now += step
            peak = max(peak, open_now)
        return peak


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], proxy: FaultProxy) -> None:
        self.proxy = proxy
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gave up (read timeout) or a connection reset on purpose is expected;
        # anything else is a bug in the proxy and is printed.
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    """One client connection: keep-alive, with its own upstream connection."""

    server: _Server
    protocol_version = "HTTP/1.1"
    timeout = 300
    _upstream: http.client.HTTPConnection | None = None

    def log_message(self, format: str, *args: Any) -> None:  # no access log
        pass

    def do_GET(self) -> None:
        self._handle()

    do_PUT = do_POST = do_HEAD = do_DELETE = do_GET

    def finish(self) -> None:
        with contextlib.suppress(OSError):  # the connection was reset on purpose
            super().finish()
        if self._upstream is not None:
            self._upstream.close()

    # -- reading -------------------------------------------------------------------------

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _handle(self) -> None:
        split = urlsplit(self.path)
        request = Request(
            number=0, method=self.command, path=split.path,
            query=parse_qs(split.query, keep_blank_values=True),
            headers={k.lower(): v for k, v in self.headers.items()},
            body=self._read_body(), service="", operation="")
        _classify(request)
        rule = self.server.proxy._decide(request)
        try:
            self._act(request, rule.action if rule else None)
        finally:
            if len(request.body) > MAX_RECORDED_BODY:
                request.body = b""  # the record outlives the request; large bodies do not

    def _act(self, request: Request, action: Action | None) -> None:
        if action is None:
            self._forward_and_answer(request)
        elif isinstance(action, Delay):
            request.outcome = "delayed"
            time.sleep(action.seconds)
            self._forward_and_answer(request)
        elif isinstance(action, Hold):
            request.outcome = "held"
            action.release.wait(action.limit)
            self._forward_and_answer(request)
        elif isinstance(action, DelayResponse):
            request.outcome = "response delayed"
            status, reason, headers, body = self._forward(request, request.body)
            time.sleep(action.seconds)
            self._answer(request, status, reason, headers, body)
        elif isinstance(action, Error):
            request.outcome = f"error {action.code}"
            self._answer_error(request, action)
        elif isinstance(action, DropBeforeForward):
            request.outcome = "dropped before forwarding"
            self._drop(request)
        elif isinstance(action, DropAfterForward):
            request.outcome = "dropped after forwarding"
            self._forward(request, request.body)
            self._drop(request)
        elif isinstance(action, FailEntries):
            request.outcome = "entries failed"
            self._fail_entries(request, action)
        else:  # pragma: no cover - a typo in a test
            raise TypeError(f"unknown action {action!r}")

    # -- upstream ------------------------------------------------------------------------

    def _forward(self, request: Request, body: bytes) -> tuple[int, str, list[tuple[str, str]],
                                                               bytes]:
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        headers["Content-Length"] = str(len(body))
        for attempt in (1, 2):
            if self._upstream is None:
                self._upstream = http.client.HTTPConnection(*self.server.proxy.upstream,
                                                            timeout=120)
            try:
                self._upstream.request(request.method, self.path, body=body, headers=headers)
                response = self._upstream.getresponse()
                data = response.read()
            except (ConnectionError, http.client.HTTPException, OSError):
                self._upstream.close()
                self._upstream = None
                if attempt == 2:
                    raise
                continue
            if response.will_close:
                self._upstream.close()
                self._upstream = None
            return response.status, response.reason, response.getheaders(), data
        raise AssertionError("unreachable")

    def _forward_and_answer(self, request: Request) -> None:
        self._answer(request, *self._forward(request, request.body))

    # -- answering -----------------------------------------------------------------------

    def _answer(self, request: Request, status: int, reason: str,
                headers: list[tuple[str, str]], body: bytes) -> None:
        request.status = status
        request.finished = time.monotonic()
        self.send_response_only(status, reason)
        length = None
        for name, value in headers:
            lower = name.lower()
            if lower == "content-length":
                length = value
            if lower in HOP_BY_HOP:
                continue
            self.send_header(name, value)
        if request.method == "HEAD":
            self.send_header("Content-Length", length or "0")
        else:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if request.method != "HEAD":
            self.wfile.write(body)
        self.wfile.flush()

    def _answer_error(self, request: Request, error: Error) -> None:
        request_id = uuid.uuid4().hex
        message = error.message(request) if callable(error.message) else error.message
        if request.service == "sqs":
            kind = "Sender" if error.sender_fault else "Receiver"
            body = json.dumps({"__type": f"com.amazonaws.sqs#{error.code}",
                               "message": message}).encode()
            headers = [("Content-Type", SQS_JSON), ("x-amzn-RequestId", request_id),
                       ("x-amzn-query-error", f"{error.code};{kind}")]
        else:
            resource = f"/{request.bucket or ''}/{request.key or ''}".rstrip("/")
            body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{error.code}</Code>'
                    f"<Message>{message}</Message><Resource>{resource}</Resource>"
                    f"<RequestId>{request_id}</RequestId></Error>").encode()
            headers = [("Content-Type", "application/xml"), ("x-amz-request-id", request_id)]
        self._answer(request, error.status, http.client.responses.get(error.status, ""),
                     headers, body)

    def _drop(self, request: Request) -> None:
        """Reset the client connection without an answer."""
        request.finished = time.monotonic()
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                       struct.pack("ii", 1, 0))
            self.connection.close()

    def _fail_entries(self, request: Request, action: FailEntries) -> None:
        params = request.params
        if request.service != "sqs" or not params or "Entries" not in params:
            raise AssertionError(f"FailEntries applies to SQS batch calls, not "
                                 f"{request.service}:{request.operation}")
        entries = params["Entries"]
        failing = self.server.proxy._pick(entries, action)
        kept = [e for e, fail in zip(entries, failing, strict=True) if not fail]
        failed = [{"Id": e["Id"], "Code": action.code, "SenderFault": action.sender_fault,
                   "Message": action.message(e) if callable(action.message) else action.message}
                  for e, fail in zip(entries, failing, strict=True) if fail]
        result: dict[str, Any] = {"Successful": [], "Failed": []}
        headers: list[tuple[str, str]] = [("Content-Type", SQS_JSON)]
        if kept:
            body = json.dumps({**params, "Entries": kept}).encode()
            status, reason, headers, data = self._forward(request, body)
            if status != 200:
                self._answer(request, status, reason, headers, data)
                return
            result = json.loads(data)
            result.setdefault("Successful", [])
            result.setdefault("Failed", [])
        result["Failed"].extend(failed)
        self._answer(request, 200, "OK", [(k, v) for k, v in headers
                                          if k.lower() != "content-length"],
                     json.dumps(result).encode())
