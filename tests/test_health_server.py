"""The health server cannot be exhausted, and clients that hang up do not break the log.

Issue 14, findings 5 and 6: the old server kept one thread and one descriptor per connection
forever (a listen backlog of 5), so about 1,000 idle connections in a process limited to 1,024
descriptors made it spin and stop answering ``/readyz``, and starved the S3 client of
descriptors; a client hanging up before reading its answer printed a multi-line traceback into
the JSON log. Here ``sqs-processor run`` is a real child limited to 1,024 descriptors, as in the
issue, and the connections are held open from the test process. Latencies are printed, not
asserted (the machine is shared); each probe has a generous timeout.
"""

from __future__ import annotations

import contextlib
import errno
import http.client
import json
import os
import resource
import select
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.invariants import send_bodies
from helpers.processes import ProcessorProcess
from helpers.support import cli_env, pipeline_config, stored_objects, wait_for, write_config

from sqs_processor import probe_server
from sqs_processor.probe_server import ProbeServer

CHILD_FILE_LIMIT = 1024
IDLE_CONNECTIONS = 1000
HOLD_SECONDS = 20


def _child_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (CHILD_FILE_LIMIT, CHILD_FILE_LIMIT))


def _raise_own_limit(needed: int) -> int:
    """Raise this process's soft descriptor limit toward ``needed``; returns what it got."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def get(port: int, path: str, timeout: float = 10.0, host: str = "127.0.0.1") -> tuple[int, Any]:
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read()
        return response.status, body
    finally:
        connection.close()


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@pytest.fixture
def processor(tmp_path: Path, aws_env: dict[str, str], queue_url: str,
              bucket: str) -> Iterator[ProcessorProcess]:
    config = write_config(tmp_path, pipeline_config(queue_url, bucket))
    process = ProcessorProcess(config, cli_env(aws_env), preexec_fn=_child_limit)
    try:
        process.wait_event("started", timeout=60)
        yield process
    finally:
        process.stop()


def _hold_connections(port: int, count: int) -> list[socket.socket]:
    """Open ``count`` connections, each sending one byte of a request and nothing more.

    The byte matters: a handshake that completes while the server's backlog is full is left to
    SYN cookies, and the server only learns of such a connection when data arrives (TCP
    retransmits it until it does), so every held connection really reaches the server.
    """
    held = []
    for _ in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        code = sock.connect_ex(("127.0.0.1", port))
        assert code in (0, errno.EINPROGRESS, errno.EAGAIN), os.strerror(code)
        held.append(sock)
    pending = {sock.fileno(): sock for sock in held}
    poller = select.poll()
    for fd in pending:
        poller.register(fd, select.POLLOUT)
    deadline = time.monotonic() + 120
    while pending and time.monotonic() < deadline:
        for fd, _ in poller.poll(500):
            sock = pending.pop(fd)
            poller.unregister(fd)
            error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            assert error == 0, f"a connection failed: {os.strerror(error)}"
            with contextlib.suppress(OSError):  # already closed by the server: fine
                sock.send(b"G")
    assert not pending, f"{len(pending)} of {count} connections never got through"
    return held


@pytest.mark.timeout(240)
@pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="counts descriptors via /proc")
def test_a_thousand_idle_connections_neither_stop_probes_nor_starve_aws(
        processor, sqs, s3, queue_url, bucket):
    got = _raise_own_limit(IDLE_CONNECTIONS + 200)
    count = min(IDLE_CONNECTIONS, got - 200)
    if count < IDLE_CONNECTIONS:
        print(f"this process may open only {got} descriptors: holding {count} connections")
    port, pid = processor.port, processor.proc.pid
    baseline = open_fds(pid)
    held = _hold_connections(port, count)
    try:
        # The kernel hands the held connections to the server over the next seconds (its
        # backlog overflows, so they arrive as their handshakes are retried): keep probing
        # while they do, as the kubelet would.
        latencies, most_fds, sent = [], 0, {}
        until = time.monotonic() + HOLD_SECONDS
        while time.monotonic() < until:
            for path in ("/healthz", "/readyz"):
                started = time.monotonic()
                status, _ = get(port, path)
                latencies.append(time.monotonic() - started)
                assert status == 200, path
            most_fds = max(most_fds, open_fds(pid))
            if not sent and time.monotonic() > until - HOLD_SECONDS / 2:
                sent = send_bodies(sqs, queue_url, ['{"during": "the flood"}'])
            time.sleep(0.5)
        # The processor still has descriptors for AWS: the message went all the way through.
        wait_for(lambda: len(stored_objects(s3, bucket)) == len(sent), timeout=60,
                 message="a message stored while the connections are held")
        assert most_fds <= baseline + probe_server.MAX_CONNECTIONS + 16, (baseline, most_fds)
        print(f"{count} idle connections held for {HOLD_SECONDS}s: {len(latencies)} probes, "
              f"latency max {max(latencies):.3f}s, median "
              f"{sorted(latencies)[len(latencies) // 2]:.3f}s; descriptors {baseline} before, "
              f"at most {most_fds} during")
    finally:
        for sock in held:
            sock.close()
    assert get(port, "/healthz")[0] == 200
    processor.terminate()
    assert processor.finish(60) == 0


def _hang_up(port: int, path: str) -> None:
    """Send a request and reset the connection before reading the answer."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


@pytest.mark.timeout(120)
def test_clients_that_hang_up_leave_the_json_log_intact(processor):
    port = processor.port
    threads = [threading.Thread(target=_hang_up, args=(port, path))
               for path in ("/metrics", "/readyz", "/health", "/healthz", "/nope") * 10]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert get(port, "/readyz")[0] == 200
    processor.terminate()
    assert processor.finish(60) == 0
    assert processor.other_lines == [], "".join(processor.other_lines[:20])
    assert not any("Traceback" in line for line in processor.lines)
    assert all(json.loads(line) for line in processor.lines)


# -- the server itself, in process -----------------------------------------------------------


@pytest.fixture
def server() -> Iterator[tuple[ProbeServer, threading.Event]]:
    release = threading.Event()

    def respond(path: str) -> tuple[int, bytes, str]:
        if path == "/slow":
            release.wait(30)
        if path == "/boom":
            raise RuntimeError("a broken route")
        return 200, f"answer for {path}".encode(), "text/plain"

    running = ProbeServer("127.0.0.1", 0, respond, inline=("/quick",))
    running.start()
    yield running, release
    release.set()
    running.stop()


def test_keep_alive_head_and_refusals(server):
    running, _ = server
    connection = http.client.HTTPConnection("127.0.0.1", running.port, timeout=10)
    for path in ("/a", "/quick", "/b"):  # one connection, kept alive
        connection.request("GET", path)
        response = connection.getresponse()
        assert (response.status, response.read()) == (200, f"answer for {path}".encode())
    connection.request("HEAD", "/a")
    response = connection.getresponse()
    assert response.status == 200 and response.read() == b""
    assert response.getheader("Content-Length") == str(len(b"answer for /a"))
    connection.request("POST", "/a", body=b"x")
    assert connection.getresponse().status == 405
    connection.close()
    assert get(running.port, "/boom")[0] == 500
    with socket.create_connection(("127.0.0.1", running.port), timeout=10) as sock:
        sock.sendall(b"GET /" + b"a" * 10_000)
        answer = sock.recv(100)
    assert answer.startswith(b"HTTP/1.1 431")


def test_a_slow_answer_does_not_hold_up_inline_ones(server):
    running, release = server
    slow = threading.Thread(target=get, args=(running.port, "/slow", 30))
    slow.start()
    try:
        assert get(running.port, "/quick")[0] == 200
    finally:
        release.set()
        slow.join(30)


def test_a_client_that_never_finishes_its_request_is_cut_off(server, monkeypatch):
    running, _ = server
    with socket.create_connection(("127.0.0.1", running.port), timeout=60) as sock:
        sock.sendall(b"GET /a HTTP/1.1\r\nHost:")  # and nothing more
        started = time.monotonic()
        assert sock.recv(100) == b""  # the server closed it
        waited = time.monotonic() - started
    assert waited >= probe_server.REQUEST_TIMEOUT_SECONDS - 1
    assert get(running.port, "/a")[0] == 200


def test_connections_beyond_the_limit_close_the_oldest_idle_ones(server):
    running, _ = server
    held = [socket.create_connection(("127.0.0.1", running.port), timeout=10)
            for _ in range(probe_server.MAX_CONNECTIONS * 2)]
    try:
        assert get(running.port, "/a")[0] == 200
        wait_for(lambda: running.open_connections <= probe_server.MAX_CONNECTIONS, timeout=10)
        first = held[0]
        first.settimeout(10)
        assert first.recv(10) == b""  # evicted: the oldest idle connection
    finally:
        for sock in held:
            sock.close()


def test_the_bind_address_may_be_ipv6():
    if not socket.has_ipv6:
        pytest.skip("no IPv6 in this kernel")
    try:
        running = ProbeServer("::1", 0, lambda path: (200, b"v6", "text/plain"))
    except OSError as exc:
        pytest.skip(f"cannot bind ::1 here: {exc.strerror}")
    running.start()
    try:
        assert get(running.port, "/", host="::1") == (200, b"v6")
    finally:
        running.stop()
    with contextlib.suppress(OSError):
        socket.create_connection(("::1", running.port), timeout=1).close()
        pytest.fail("the port is still open after stop()")
