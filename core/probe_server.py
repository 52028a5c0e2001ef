"""A small HTTP/1.1 server for probes and scrapes that idle or hostile clients cannot exhaust.

One thread runs an event loop (``selectors``) over non-blocking sockets, so an idle connection
costs a descriptor and a few hundred bytes, never a thread. The limits:

* at most :data:`MAX_CONNECTIONS` connections are open; a new one beyond that closes the oldest
  connection that is waiting for its request, so a fresh probe is always taken in;
* a request must arrive complete within :data:`REQUEST_TIMEOUT_SECONDS` of the connection (or of
  the previous answer on a kept-alive connection), else the connection is closed;
* a request head is at most :data:`MAX_REQUEST_BYTES`; bodies are not read (the connection is
  closed after the answer); only ``GET`` and ``HEAD`` are served;
* the listen backlog is :data:`BACKLOG`; when the process runs out of descriptors, accepting
  pauses briefly instead of spinning.

A client that hangs up, resets or stops reading is simply closed (logged at debug level, one
line). Answers are computed by ``respond(path)``: paths in ``inline`` in the loop itself (they
must be quick and never block: liveness), every other path on a small pool of threads, so a
slow health check of a plugin never holds up liveness or the loop.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import queue
import selectors
import socket
import threading
import time
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus

log = logging.getLogger("sqs_processor.health")

MAX_CONNECTIONS = 64
REQUEST_TIMEOUT_SECONDS = 5.0
MAX_REQUEST_BYTES = 8192
BACKLOG = 128
ACCEPT_BATCH = 16
RESPONDERS = 2

Answer = tuple[int, bytes, str]  # status, body, content type
Respond = Callable[[str], Answer]


class _Connection:
    __slots__ = ("answer_pending", "buffer", "deadline", "keep_alive", "method", "opened",
                 "outgoing", "sock", "watching")

    def __init__(self, sock: socket.socket, now: float) -> None:
        self.sock = sock
        self.buffer = bytearray()
        self.outgoing = bytearray()
        self.opened = now
        self.deadline = now + REQUEST_TIMEOUT_SECONDS
        self.keep_alive = True
        self.method = "GET"
        self.answer_pending = False
        self.watching = 0  # the selector events registered for it (0: not registered)

    @property
    def idle(self) -> bool:
        """Waiting for (the rest of) a request: the kind of connection that may be evicted."""
        return not self.answer_pending and not self.outgoing


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def plain(status: int) -> Answer:
    """A short text answer for ``status`` (errors of the server itself)."""
    return status, HTTPStatus(status).phrase.encode() + b"\n", "text/plain; charset=utf-8"


def parse_head(head: str) -> tuple[int, str, str, bool]:
    """``(refusal status or 0, method, target, keep-alive)`` for a request head."""
    lines = head.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        return 400, "GET", "", False
    method, target, version = parts
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip().lower()
    keep_alive = headers.get("connection") != "close" if version == "HTTP/1.1" else \
        headers.get("connection") == "keep-alive"
    if headers.get("content-length", "0") != "0" or "transfer-encoding" in headers:
        keep_alive = False  # bodies are not read; the connection ends after the answer
    if method not in ("GET", "HEAD"):
        return 405, method, target, False
    return 0, method, target, keep_alive


def response_bytes(answer: Answer, *, keep_alive: bool, head_only: bool) -> bytes:
    status, body, content_type = answer
    head = (f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
            f"Cache-Control: no-store\r\n"
            f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n")
    return head.encode("latin-1") + (b"" if head_only else body)


class ProbeServer:
    """Serves ``respond`` on ``host:port`` (port 0: any free port) from one event-loop thread."""

    def __init__(self, host: str, port: int, respond: Respond, *,
                 inline: Collection[str] = ()) -> None:
        self.respond = respond
        self.inline = frozenset(inline)
        self._listener = socket.create_server((host, port), family=_family(host),
                                              backlog=BACKLOG)
        self._listener.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ, None)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._connections: dict[int, _Connection] = {}
        self._answers: queue.SimpleQueue[tuple[_Connection, Answer]] = queue.SimpleQueue()
        self._pool = ThreadPoolExecutor(RESPONDERS, thread_name_prefix="health-responder")
        self._stopping = False
        self._accept_paused_until = 0.0
        self._thread = threading.Thread(target=self._loop, name="health", daemon=True)

    @property
    def port(self) -> int:
        return int(self._listener.getsockname()[1])

    @property
    def open_connections(self) -> int:
        return len(self._connections)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping = True
        self._wake()
        if self._thread.ident is not None:
            self._thread.join(5)
        for connection in list(self._connections.values()):
            self._close(connection)
        for sock in (self._listener, self._wake_r, self._wake_w):
            sock.close()
        self._selector.close()
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- the loop ----------------------------------------------------------------------------

    def _wake(self) -> None:
        # A full pipe means a wake-up is pending anyway; a closed one, that we are stopping.
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    def _loop(self) -> None:
        while not self._stopping:
            try:
                self._turn()
            except Exception as exc:  # the loop must not die; one line, then carry on
                log.warning("health server: unexpected %s: %s", type(exc).__name__, exc,
                            extra={"event": "health_server_error"})
                time.sleep(0.05)

    def _turn(self) -> None:
        # Connections already open are served before new ones are taken in, and only
        # ACCEPT_BATCH at a time, so a probe that was accepted is read before a flood of newer
        # connections could push it out.
        accept = False
        for key, events in self._selector.select(timeout=0.5):
            if key.data is None:
                accept = True
            elif key.data == "wake":
                self._drain_wake()
            else:
                self._service(key.data, events)
        self._deliver_answers()
        if accept and time.monotonic() >= self._accept_paused_until:
            self._accept()
        self._expire(time.monotonic())

    def _accept(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                sock, _ = self._listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # Out of descriptors: make room and wait a moment instead of spinning.
                    self._evict_one()
                    self._accept_paused_until = time.monotonic() + 0.05
                    log.debug("health server: accept failed: %s", exc.strerror)
                    return
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO):
                    continue
                raise
            if len(self._connections) >= MAX_CONNECTIONS:
                self._evict_one()
            sock.setblocking(False)
            connection = _Connection(sock, time.monotonic())
            self._connections[sock.fileno()] = connection
            self._watch(connection, selectors.EVENT_READ)

    def _evict_one(self) -> None:
        """Close the oldest connection that has sent nothing (its request may be on its way:
        peek, and read it instead); failing that the oldest idle one, or the oldest."""
        by_age = sorted(self._connections.values(), key=lambda c: c.opened)
        for connection in by_age:
            if not connection.idle or connection.buffer:
                continue
            try:
                waiting = connection.sock.recv(1, socket.MSG_PEEK)
            except BlockingIOError:
                waiting = None
            except OSError:
                waiting = b""  # broken: as good as idle
            if not waiting:
                self._close(connection)
                return
        idle = [c for c in by_age if c.idle] or by_age
        if idle:
            self._close(idle[0])

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass

    def _expire(self, now: float) -> None:
        """Close connections whose request, or whose reading of the answer, is overdue."""
        for connection in [c for c in self._connections.values()
                           if not c.answer_pending and c.deadline < now]:
            self._close(connection)

    def _watch(self, connection: _Connection, events: int) -> None:
        """Register ``connection`` for ``events`` (0: not at all, while its answer is made)."""
        if events == connection.watching:
            return
        if not events:
            self._selector.unregister(connection.sock)
        elif connection.watching:
            self._selector.modify(connection.sock, events, connection)
        else:
            self._selector.register(connection.sock, events, connection)
        connection.watching = events

    def _close(self, connection: _Connection) -> None:
        sock = connection.sock
        if self._connections.get(sock.fileno()) is connection:
            del self._connections[sock.fileno()]
        if connection.watching:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(sock)
            connection.watching = 0
        sock.close()

    # -- one connection ----------------------------------------------------------------------

    def _service(self, connection: _Connection, events: int) -> None:
        try:
            if events & selectors.EVENT_READ and not connection.answer_pending:
                self._read(connection)
            if events & selectors.EVENT_WRITE and connection.outgoing:
                self._write(connection)
        except OSError as exc:  # the client hung up, reset, or went away mid-answer
            log.debug("health server: client went away: %s", exc.strerror or exc)
            self._close(connection)

    def _read(self, connection: _Connection) -> None:
        data = connection.sock.recv(4096)
        if not data:
            self._close(connection)
            return
        connection.buffer += data
        self._next_request(connection)

    def _next_request(self, connection: _Connection) -> None:
        end = connection.buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(connection.buffer) > MAX_REQUEST_BYTES:
                self._send(connection, plain(431), keep_alive=False)
            return
        head = bytes(connection.buffer[:end]).decode("latin-1")
        del connection.buffer[:end + 4]
        refused, method, target, keep_alive = parse_head(head)
        connection.method = method
        connection.keep_alive = keep_alive
        if refused:
            self._send(connection, plain(refused), keep_alive=False)
            return
        path = target.split("?", 1)[0]
        connection.answer_pending = True
        if path in self.inline:
            self._finish(connection, self._answer(path))
        else:
            self._watch(connection, 0)  # nothing to read until the answer is sent
            future = self._pool.submit(self._answer, path)
            future.add_done_callback(
                lambda f: None if f.cancelled() else self._answered(connection, f.result()))

    def _answer(self, path: str) -> Answer:
        try:
            return self.respond(path)
        except Exception as exc:
            log.warning("health server: answering %s failed: %s: %s", path, type(exc).__name__,
                        exc, extra={"event": "health_server_error"})
            return plain(500)

    def _answered(self, connection: _Connection, answer: Answer) -> None:
        self._answers.put((connection, answer))  # from a responder thread: the loop sends it
        self._wake()

    def _deliver_answers(self) -> None:
        while True:
            try:
                connection, answer = self._answers.get_nowait()
            except queue.Empty:
                return
            if self._connections.get(connection.sock.fileno()) is connection:
                self._finish(connection, answer)

    def _finish(self, connection: _Connection, answer: Answer) -> None:
        connection.answer_pending = False
        self._send(connection, answer, keep_alive=connection.keep_alive)

    def _send(self, connection: _Connection, answer: Answer, *, keep_alive: bool) -> None:
        connection.keep_alive = keep_alive
        connection.outgoing += response_bytes(answer, keep_alive=keep_alive,
                                              head_only=connection.method == "HEAD")
        connection.deadline = time.monotonic() + REQUEST_TIMEOUT_SECONDS  # to read the answer
        try:
            self._write(connection)
        except OSError as exc:
            log.debug("health server: client went away: %s", exc.strerror or exc)
            self._close(connection)

    def _write(self, connection: _Connection) -> None:
        sent = connection.sock.send(connection.outgoing)
        del connection.outgoing[:sent]
        if connection.outgoing:
            self._watch(connection, selectors.EVENT_WRITE)
            return
        if not connection.keep_alive:
            self._close(connection)
            return
        connection.deadline = time.monotonic() + REQUEST_TIMEOUT_SECONDS
        self._watch(connection, selectors.EVENT_READ)
        if connection.buffer:
            self._next_request(connection)
