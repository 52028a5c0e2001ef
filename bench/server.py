"""The benchmark's SQS + S3 emulator: moto's WSGI app, a fixed latency per request, a recorder.

    python -m bench.server [--host 127.0.0.1] [--port 0] [--latency-ms 20] [--threads 128]

It prints ``bench server listening on http://HOST:PORT`` once it accepts requests, and runs
until SIGTERM or SIGINT. It is moto's own application (the one ``ThreadedMotoServer`` serves)
with three additions, all in this process only:

* **Latency.** Every AWS request sleeps ``latency_ms`` before moto handles it, standing in for
  the round trip to in-region AWS. A sleep costs the server no CPU and holds no lock, so
  concurrent requests overlap as they would against AWS.
* **moto's depth-dependent costs removed** (:mod:`bench.moto_patches`), so a deep queue costs
  the same per call as a shallow one.
* **A recorder** the harness reads over ``/_bench/...``: per AWS action, the count and the
  server CPU it took (excluding the sleep); the time of each successful S3 PUT per key; each
  sent message's id, ``SentTimestamp`` and body. ``/_bench/verify`` checks a run against that
  record without a request per object.

The HTTP server is waitress (the ``bench`` extra) rather than werkzeug's development server,
which closes the connection after every response: AWS clients keep connections alive, and a new
TCP connection per call would add client CPU that the processor would not spend against AWS
(and exhaust loopback ports over a long run). Without waitress it falls back to werkzeug's
server, as ``ThreadedMotoServer`` runs it, and says so in ``/_bench/ping``.

Control endpoints (JSON in and out):

=========================  ================================================================
``GET  /_bench/ping``      server facts: latency, HTTP server, patches applied
``POST /_bench/latency``   ``{"ms": 20}``: the latency from now on
``POST /_bench/reset``     forget everything: moto's state and the record
``GET  /_bench/stats``     per-action counts and server CPU, the server process's CPU times
``POST /_bench/verify``    ``{"queue", "bucket", "prefix", "region"}``: the correctness check
                           and the end-to-end latency of every message (PUT time minus
                           ``SentTimestamp``)
=========================  ================================================================
"""

from __future__ import annotations

import argparse
import functools
import gzip
import io
import json
import logging
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs

from bench import moto_patches

DEFAULT_THREADS = 128


class Recorder:
    """What the harness needs to know about the requests the server handled."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.latency_seconds = 0.0
        self.reset()

    def reset(self) -> None:
        with self.lock:
            # action -> [count, server CPU seconds, handler wall seconds]
            self.actions: dict[str, list[float]] = {}
            # bucket -> key -> time.time() of the first successful PUT
            self.puts: dict[str, dict[str, float]] = {}
            # queue name -> message id -> (SentTimestamp in ms, body)
            self.sent: dict[str, dict[str, tuple[int, str]]] = {}
            self.fast_puts = 0  # PutObject calls stored by fast_put_object

    def request(self, action: str, cpu: float, wall: float) -> None:
        with self.lock:
            entry = self.actions.get(action)
            if entry is None:
                entry = self.actions[action] = [0, 0.0, 0.0]
            entry[0] += 1
            entry[1] += cpu
            entry[2] += wall

    def put(self, bucket: str, key: str, when: float, fast: bool) -> None:
        with self.lock:
            self.puts.setdefault(bucket, {}).setdefault(key, when)
            self.fast_puts += fast

    def message_sent(self, queue_name: str, message_id: str, sent_ms: int, body: str) -> None:
        with self.lock:
            self.sent.setdefault(queue_name, {})[message_id] = (sent_ms, body)


RECORDER = Recorder()


def _record_sends() -> None:
    """Remember every sent message (id, SentTimestamp, body): the harness's ground truth."""
    from moto.sqs import models

    original = models.SQSBackend.send_message

    @functools.wraps(original)
    def send_message(self: Any, queue_name: str, message_body: str, *args: Any,
                     **kwargs: Any) -> Any:
        message = original(self, queue_name, message_body, *args, **kwargs)
        RECORDER.message_sent(queue_name, message.id, int(message.sent_timestamp), message_body)
        return message

    models.SQSBackend.send_message = send_message


def _service_and_action(environ: dict[str, Any]) -> tuple[str, str]:
    """("sqs", "ReceiveMessage"), ("s3", "PutObject"), ... from the request alone."""
    auth = environ.get("HTTP_AUTHORIZATION", "")
    service = ""
    marker = auth.find("Credential=")
    if marker >= 0:
        scope = auth[marker + len("Credential="):].split(",", 1)[0].split("/")
        if len(scope) >= 4:
            service = scope[3]
    target = environ.get("HTTP_X_AMZ_TARGET", "")
    if target:
        return service or target.split(".", 1)[0].lower(), target.rsplit(".", 1)[-1]
    method = environ.get("REQUEST_METHOD", "GET")
    if service == "s3":
        path = environ.get("PATH_INFO", "/").lstrip("/")
        query = environ.get("QUERY_STRING", "")
        has_key = "/" in path and path.split("/", 1)[1] != ""
        if has_key:
            name = {"PUT": "PutObject", "GET": "GetObject", "HEAD": "HeadObject",
                    "DELETE": "DeleteObject"}.get(method, method)
        elif method == "POST" and "delete" in query:
            name = "DeleteObjects"
        else:
            name = {"PUT": "CreateBucket", "GET": "ListObjects", "HEAD": "HeadBucket",
                    "DELETE": "DeleteBucket"}.get(method, method)
        return "s3", name
    return service or "other", method


class BenchMiddleware:
    """Adds the latency, records what happened, and answers ``/_bench/...``."""

    def __init__(self, app: Callable[..., Iterable[bytes]], patches: list[str],
                 http_server: str, fast_put: bool = True) -> None:
        self.app = app
        self.http_server = http_server
        self.fast_put = fast_put
        self.patches = [*patches, FAST_PUT_NOTE] if fast_put else patches

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        path = environ.get("PATH_INFO", "")
        if path.startswith("/_bench/"):
            return self._control(environ, start_response, path[len("/_bench/"):])
        if path.startswith("/moto-api"):
            return self.app(environ, start_response)
        service, action = _service_and_action(environ)
        delay = RECORDER.latency_seconds
        if delay > 0:
            time.sleep(delay)
        status_holder: list[str] = []

        def capture(status: str, headers: list[Any], exc_info: Any = None) -> Any:
            status_holder.append(status)
            return start_response(status, headers, exc_info)

        cpu_start = time.thread_time()
        wall_start = time.perf_counter()
        fast = None
        if self.fast_put and service == "s3" and action == "PutObject":
            fast = fast_put_object(environ, capture)
        body = b"".join(fast if fast is not None else self.app(environ, capture))
        RECORDER.request(f"{service}:{action}", time.thread_time() - cpu_start,
                         time.perf_counter() - wall_start)
        if (service == "s3" and action == "PutObject" and status_holder
                and status_holder[0].startswith("200")):
            bucket, _, key = environ.get("PATH_INFO", "/").lstrip("/").partition("/")
            RECORDER.put(bucket, key, time.time(), fast is not None)
        return [body]

    # -- control ---------------------------------------------------------------------------

    def _control(self, environ: dict[str, Any], start_response: Callable[..., Any],
                 name: str) -> list[bytes]:
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
            raw = environ["wsgi.input"].read(length) if length else b""
            payload = json.loads(raw) if raw else {}
            payload.update({k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()})
            handler = getattr(self, f"_do_{name}", None)
            if handler is None:
                status, result = "404 Not Found", {"error": f"no control endpoint {name!r}"}
            else:
                status, result = "200 OK", handler(payload)
        except Exception as exc:  # report it to the harness rather than hang it
            status, result = "500 Internal Server Error", {"error": f"{type(exc).__name__}: {exc}"}
        data = json.dumps(result).encode()
        start_response(status, [("Content-Type", "application/json"),
                                ("Content-Length", str(len(data)))])
        return [data]

    def _do_ping(self, payload: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "latency_ms": RECORDER.latency_seconds * 1000,
                "http_server": self.http_server, "patches": self.patches, "pid": os.getpid()}

    def _do_latency(self, payload: dict[str, Any]) -> dict[str, Any]:
        RECORDER.latency_seconds = max(0.0, float(payload["ms"]) / 1000)
        return {"latency_ms": RECORDER.latency_seconds * 1000}

    def _do_reset(self, payload: dict[str, Any]) -> dict[str, Any]:
        from moto.moto_api._internal.models import moto_api_backend

        moto_api_backend.reset()
        RECORDER.reset()
        return {"ok": True}

    def _do_stats(self, payload: dict[str, Any]) -> dict[str, Any]:
        times = os.times()
        with RECORDER.lock:
            actions = {name: {"count": int(v[0]), "cpu_seconds": v[1], "wall_seconds": v[2]}
                       for name, v in RECORDER.actions.items()}
            fast_puts = RECORDER.fast_puts
        return {"actions": actions, "cpu_seconds": times.user + times.system,
                "time": time.time(), "fast_puts": fast_puts}

    def _do_verify(self, payload: dict[str, Any]) -> dict[str, Any]:
        return verify(payload["queue"], payload["bucket"], payload.get("prefix", ""),
                      payload.get("region", "us-east-1"))


def _message_id_of(key: str) -> str:
    return key.rsplit("/", 1)[-1].removesuffix(".json")


def _parsed_body(body: str) -> tuple[bool, Any]:
    try:
        return True, json.loads(body)
    except ValueError:
        return False, None


def verify(queue_name: str, bucket_name: str, prefix: str, region: str) -> dict[str, Any]:
    """Check one run: each message sent to the queue stored exactly once, intact; queue empty."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends
    from moto.sqs.models import sqs_backends

    with RECORDER.lock:
        sent = dict(RECORDER.sent.get(queue_name, {}))
        puts = dict(RECORDER.puts.get(bucket_name, {}))
    queue = sqs_backends[DEFAULT_ACCOUNT_ID][region].get_queue(queue_name)
    bucket = s3_backends[DEFAULT_ACCOUNT_ID]["aws"].get_bucket(bucket_name)
    keys_by_id: dict[str, list[str]] = {}
    unexpected: list[str] = []
    bad_content: list[str] = []
    for key, stored in bucket.keys.items():
        if not key.startswith(prefix):
            continue
        if key.endswith((".ndjson", ".ndjson.gz")):  # batched mode: one document per line
            raw = stored.value
            if key.endswith(".gz"):
                raw = gzip.decompress(raw)
            for line in raw.splitlines():
                try:
                    message_id = json.loads(line).get("message_id")
                except (ValueError, AttributeError):
                    bad_content.append(f"{key}: a line is not a JSON object")
                    continue
                if message_id not in sent:
                    unexpected.append(f"{key}: {message_id}")
                    continue
                keys_by_id.setdefault(message_id, []).append(key)
                problem = _check_document(line, message_id, sent[message_id][1])
                if problem:
                    bad_content.append(f"{key} ({message_id}): {problem}")
            continue
        message_id = _message_id_of(key)
        if message_id not in sent or not key.endswith(".json"):
            unexpected.append(key)
            continue
        keys_by_id.setdefault(message_id, []).append(key)
        problem = _check_document(stored.value, message_id, sent[message_id][1])
        if problem:
            bad_content.append(f"{key}: {problem}")
    missing = [i for i in sent if i not in keys_by_id]
    duplicated = [i for i, keys in keys_by_id.items() if len(keys) > 1]
    latencies = []
    for message_id, keys in keys_by_id.items():
        written = puts.get(keys[0])
        if written is not None:
            latencies.append(round(written * 1000 - sent[message_id][0], 1))
    remaining = len(queue._messages)
    ok = not (missing or duplicated or unexpected or bad_content or remaining)
    return {
        "ok": ok,
        "sent": len(sent),
        "stored": sum(len(k) for k in keys_by_id.values()),
        "missing": len(missing),
        "duplicated": len(duplicated),
        "unexpected": len(unexpected),
        "bad_content": len(bad_content),
        "queue_remaining": remaining,
        "examples": (missing[:3] + duplicated[:3] + unexpected[:3] + bad_content[:3]),
        "latencies_ms": latencies,
    }


def _check_document(raw: bytes, message_id: str, body: str) -> str:
    try:
        document = json.loads(raw)
    except ValueError:
        return "not JSON"
    if not isinstance(document, dict):
        return "not a JSON object"
    if document.get("message_id") != message_id:
        return "wrong message_id"
    if document.get("body") != body:
        return "body differs from the sent body"
    is_json, parsed = _parsed_body(body)
    if is_json and document.get("parsed_body") != parsed:
        return "parsed_body missing or wrong"
    if not is_json and "parsed_body" in document:
        return "parsed_body present for a non-JSON body"
    return ""


def build_app(http_server: str = "waitress", fast_put: bool = True) -> BenchMiddleware:
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

    patches = moto_patches.apply()
    _record_sends()
    return BenchMiddleware(DomainDispatcherApplication(create_backend_app), patches,
                           http_server, fast_put)


# --------------------------------------------------------------------------------------------
# PutObject without moto's HTTP layer
# --------------------------------------------------------------------------------------------

FAST_PUT_NOTE = ("PutObject: plain puts are stored through moto's own S3 model (same objects, "
                 "ETag and checksum) without its Flask/response layer; anything else, and every "
                 "412, goes through moto unchanged")

# The request headers a plain boto3 put_object or obstore put sends (obstore adds Accept); any
# other header (metadata, ACL, tagging, encryption, object lock, aws-chunked bodies, ...) sends
# the request through moto's full path.
_PLAIN_PUT_HEADERS = frozenset({
    "CONTENT_TYPE", "CONTENT_LENGTH", "HTTP_HOST", "HTTP_USER_AGENT", "HTTP_EXPECT",
    "HTTP_X_AMZ_DATE", "HTTP_X_AMZ_CONTENT_SHA256", "HTTP_AUTHORIZATION",
    "HTTP_AMZ_SDK_INVOCATION_ID", "HTTP_AMZ_SDK_REQUEST", "HTTP_IF_NONE_MATCH",
    "HTTP_CONTENT_MD5", "HTTP_ACCEPT", "HTTP_ACCEPT_ENCODING", "HTTP_CONNECTION",
    "HTTP_X_AMZ_USER_AGENT", "HTTP_X_AMZ_SDK_CHECKSUM_ALGORITHM", "HTTP_X_AMZ_CHECKSUM_CRC32",
    "HTTP_X_AMZ_CHECKSUM_CRC32C",
    "HTTP_X_AMZ_CHECKSUM_CRC64NVME", "HTTP_X_AMZ_CHECKSUM_SHA1", "HTTP_X_AMZ_CHECKSUM_SHA256",
})
_PLAIN_KEY_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                  "0123456789/._-")


def fast_put_object(environ: dict[str, Any],
                    start_response: Callable[..., Any]) -> list[bytes] | None:
    """Store a plain path-style PutObject via moto's S3 model; None means "let moto do it"."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    path = environ.get("PATH_INFO", "")
    host = environ.get("HTTP_HOST", "").rsplit(":", 1)[0]
    if (environ.get("QUERY_STRING") or not set(path) <= _PLAIN_KEY_CHARACTERS
            or host not in ("127.0.0.1", "localhost")):
        return None
    if any(name.startswith("HTTP_") and name not in _PLAIN_PUT_HEADERS for name in environ):
        return None
    if environ.get("HTTP_X_AMZ_CONTENT_SHA256", "").startswith("STREAMING"):
        return None
    if_none_match = environ.get("HTTP_IF_NONE_MATCH")
    if if_none_match not in (None, "*"):
        return None
    bucket_name, _, key_name = path.lstrip("/").partition("/")
    backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
    bucket = backend.buckets.get(bucket_name)
    if (not key_name or bucket is None or bucket.is_versioned or bucket.encryption
            or bucket.object_lock_enabled or bucket.notification_configuration):
        return None
    if if_none_match == "*" and bucket.keys.get(key_name) is not None:
        return None  # moto answers 412 PreconditionFailed itself
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(length) if length else b""
    algorithm = environ.get("HTTP_X_AMZ_SDK_CHECKSUM_ALGORITHM", "")
    checksum_header = f"x-amz-checksum-{algorithm.lower()}" if algorithm else ""
    checksum = environ.get("HTTP_" + checksum_header.upper().replace("-", "_")) if algorithm \
        else None
    if algorithm and not checksum:
        environ["wsgi.input"] = io.BytesIO(body)  # moto computes it from the body
        return None
    stored = backend.put_object(bucket_name, key_name, body, checksum_value=checksum)
    stored.set_metadata({"Content-Type": environ.get("CONTENT_TYPE") or "binary/octet-stream"})
    if algorithm:
        stored.checksum_algorithm = algorithm
    headers = [("ETag", stored.etag), ("Last-Modified", stored.last_modified_RFC1123),
               ("Content-Length", "0"), ("x-amz-request-id", uuid.uuid4().hex)]
    if checksum:
        headers.append((checksum_header, checksum))
    start_response("200 OK", headers)
    return [b""]


def _serve_waitress(app: BenchMiddleware, host: str, port: int, threads: int) -> Any:
    import waitress

    server = waitress.create_server(
        app, host=host, port=port, threads=threads, connection_limit=4 * threads,
        channel_timeout=300, asyncore_use_poll=True, ident="bench")
    return server, server.effective_port, server.run, server.close


def _serve_werkzeug(app: BenchMiddleware, host: str, port: int, threads: int) -> Any:
    # What ThreadedMotoServer runs: a thread per connection, one request per connection.
    from moto.moto_server.werkzeug_app import MotoRequestHandler
    from werkzeug.serving import make_server

    server = make_server(host, port, app, threaded=True, request_handler=MotoRequestHandler)
    return server, server.server_address[1], server.serve_forever, server.server_close


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.server", description=__doc__.split(
        "\n", 1)[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS,
                        help="waitress: requests handled at once (a sleeping one holds a thread)")
    parser.add_argument("--http-server", choices=("auto", "waitress", "werkzeug"),
                        default="auto", help="auto: waitress if installed (the bench extra), "
                        "else werkzeug's server, which closes every connection")
    parser.add_argument("--no-fast-put", dest="fast_put", action="store_false",
                        help="send every PutObject through moto's full HTTP layer")
    args = parser.parse_args(argv)
    kind = args.http_server
    if kind == "auto":
        try:
            import waitress  # noqa: F401
            kind = "waitress"
        except ImportError:
            kind = "werkzeug"
    logging.basicConfig(level=logging.ERROR)
    RECORDER.latency_seconds = args.latency_ms / 1000
    app = build_app(kind, args.fast_put)
    serve = _serve_waitress if kind == "waitress" else _serve_werkzeug
    _, port, run, close = serve(app, args.host, args.port, args.threads)
    print(f"bench server listening on http://{args.host}:{port}", flush=True)

    def stop(*_: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        run()
    except SystemExit:
        pass
    finally:
        close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
