"""A local SQS + S3 emulator (moto's server) on loopback, for ``make run`` and the tests.

    python -m sqs_processor.emulator [--host 127.0.0.1] [--port 4566] [--quiet]
    make emulator

The first line it prints is ``emulator listening on http://HOST:PORT``; then (unless
``--quiet``) the ``export`` lines that point boto3, the AWS CLI and local mode at it.

It speaks the real AWS HTTP protocols, so boto3 and the AWS CLI reach it unchanged with
``--endpoint-url http://127.0.0.1:4566`` (any credentials). It needs the ``local`` extra
(``moto[server]``).

Two fixes are applied to moto inside this process, both taking the queue's own lock, which is
what SQS guarantees and what the processor's guarantees are tested against: moto rebuilds a
queue's message list on delete without the lock that guards sends, so a delete racing a send or
another delete can lose an update (a deleted message comes back, or a sent one vanishes); and
two receives at once (two pollers) can both pick the same message before either marks it in
flight, so it is delivered twice within its visibility timeout.
"""

from __future__ import annotations

import argparse
import functools
import logging
import signal
import socket
import sys
import threading


def serialise_moto_deletes() -> None:
    """Make moto's ``Queue.delete_message`` (whatever it is now) take the queue's lock."""
    from moto.sqs import models

    original = models.Queue.delete_message
    if getattr(original, "_sqs_processor_locked", False):
        return

    @functools.wraps(original)
    def delete_message(self, receipt_handle):  # type: ignore[no-untyped-def]
        with self._messages_lock:
            return original(self, receipt_handle)

    delete_message._sqs_processor_locked = True  # type: ignore[attr-defined]
    models.Queue.delete_message = delete_message


def serialise_moto_receives() -> None:
    """Make moto's ``SQSBackend.receive_message`` pick messages under the queue's lock (its
    long-poll wait is a wait on that lock's condition, so waiting still lets others in)."""
    from moto.sqs import models

    original = models.SQSBackend.receive_message
    if getattr(original, "_sqs_processor_locked", False):
        return

    @functools.wraps(original)
    def receive_message(self, queue_name, *args, **kwargs):  # type: ignore[no-untyped-def]
        with self.get_queue(queue_name)._messages_lock:
            return original(self, queue_name, *args, **kwargs)

    receive_message._sqs_processor_locked = True  # type: ignore[attr-defined]
    models.SQSBackend.receive_message = receive_message


def _check_free(host: str, port: int) -> None:
    """Fail at once when the port is taken: moto's server thread would exit and leave
    ``start()`` waiting forever."""
    if port == 0:
        return
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server does
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise SystemExit(f"the emulator cannot listen on {host}:{port}: "
                             f"{exc.strerror or exc}; is one already running there? "
                             "(--port picks another)") from None


def start(host: str = "127.0.0.1", port: int = 4566):  # type: ignore[no-untyped-def]
    """Start the emulator in a thread of this process; returns the moto ThreadedMotoServer."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise SystemExit("the emulator needs moto's server: pip install 'sqs-processor[local]' "
                         f"({exc})") from None
    serialise_moto_deletes()
    serialise_moto_receives()
    _check_free(host, port)
    server = ThreadedMotoServer(ip_address=host, port=port, verbose=False)
    server.start()
    return server


def exports(url: str, region: str = "us-east-1") -> str:
    """The shell lines that point boto3, the AWS CLI and local mode at the emulator."""
    return "\n".join([
        "Point boto3 and the AWS CLI at it (the emulator accepts any credentials):",
        f"  export AWS_ENDPOINT_URL={url}",
        f"  export AWS_ACCESS_KEY_ID=local AWS_SECRET_ACCESS_KEY=local AWS_DEFAULT_REGION={region}",
        "and local mode (`make run`, `python -m sqs_processor.local`) at it, instead of its own:",
        f"  export LOCAL_ENDPOINT_URL={url}",
        "Stop: Ctrl-C",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sqs_processor.emulator",
                                     description="Local SQS + S3 emulator on loopback.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4566, help="0 picks a free port")
    parser.add_argument("--quiet", action="store_true",
                        help="print only the endpoint line, not the exports")
    args = parser.parse_args(argv)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = start(args.host, args.port)
    host, port = server.get_host_and_port()
    print(f"emulator listening on http://{host}:{port}", flush=True)
    if not args.quiet:
        print(exports(f"http://{host}:{port}"), flush=True)
    stopped = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopped.set())
    while not stopped.wait(1.0):
        pass
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
