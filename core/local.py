"""Local mode: the processor against the embedded emulator, no AWS account needed.

    python -m sqs_processor.local            # what `make run` does
    python -m sqs_processor.local send BODY  # send one more message
    python -m sqs_processor.local list       # list the archived objects

``run`` starts the emulator on 127.0.0.1:4566 (or uses one already listening there), creates
the queue and bucket of ``configs/local.yaml``, sends a few sample messages (JSON and not,
with string and binary attributes) and runs the pipeline with health on :8080. Each message is
logged with the S3 key it was stored at. Ctrl-C stops it gracefully.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path

HOST = "127.0.0.1"
PORT = 4566
ENDPOINT = f"http://{HOST}:{PORT}"
QUEUE = "sqs-processor-local"
BUCKET = "sqs-processor-local"
REGION = "us-east-1"

SAMPLES = [
    ('{"order_id": 1001, "status": "created", "amount": 42.5}',
     {"source": {"DataType": "String", "StringValue": "make-run"}}),
    ("plain text, not JSON: stored verbatim in body, without parsed_body", {}),
    ('{"greeting": "héllo wörld ✓", "emoji": "📦"}',
     {"checksum": {"DataType": "Binary", "BinaryValue": b"\x00\x01\xfe\xff"}}),
]


def _local_env() -> None:
    # The emulator accepts any credentials; real ones are never needed or sent anywhere else.
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "local")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "local")
    os.environ.setdefault("AWS_DEFAULT_REGION", REGION)


def _listening(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def _clients():  # type: ignore[no-untyped-def]
    import boto3

    _local_env()
    session = boto3.session.Session(region_name=REGION)
    return (session.client("sqs", endpoint_url=ENDPOINT),
            session.client("s3", endpoint_url=ENDPOINT))


def _queue_url(sqs) -> str:  # type: ignore[no-untyped-def]
    return sqs.get_queue_url(QueueName=QUEUE)["QueueUrl"]


def start_emulator() -> subprocess.Popen | None:
    """Start the emulator unless one already listens on the port; wait until it answers."""
    if _listening(HOST, PORT):
        print(f"using the emulator already listening on {ENDPOINT}")
        return None
    # A session of its own: Ctrl-C stops the processor first, which still needs the emulator
    # to flush its deletes; the emulator is stopped after that.
    process = subprocess.Popen([sys.executable, "-m", "sqs_processor.emulator",
                                "--host", HOST, "--port", str(PORT)], start_new_session=True)
    deadline = time.monotonic() + 30
    while not _listening(HOST, PORT):
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the emulator did not start on {ENDPOINT}")
        time.sleep(0.1)
    return process


def prepare() -> str:
    sqs, s3 = _clients()
    queue_url = sqs.create_queue(QueueName=QUEUE, Attributes={"VisibilityTimeout": "30"})[
        "QueueUrl"]
    with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):
        s3.create_bucket(Bucket=BUCKET)
    for body, attributes in SAMPLES:
        sqs.send_message(QueueUrl=queue_url, MessageBody=body, MessageAttributes=attributes)
    print(f"created queue {queue_url} and bucket s3://{BUCKET}; sent {len(SAMPLES)} samples")
    return queue_url


def _tracing_hint() -> str:
    """How to see this run's traces: where they go now, or how to start a Jaeger for them."""
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if endpoint:
        return f"Traces: exporting over OTLP to {endpoint} (OTEL_EXPORTER_OTLP_ENDPOINT)\n"
    if _listening("127.0.0.1", 4318):
        return ("Traces: something listens on 127.0.0.1:4318 (a Jaeger or collector?). Send it "
                "this run's traces with:\n"
                "  OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318 make run\n")
    return ("Traces: off (no OTEL_EXPORTER_OTLP_ENDPOINT). To see them in Jaeger, start one with "
            "OTLP on\n"
            "  docker run --rm -p 16686:16686 -p 4318:4318 jaegertracing/jaeger:2.15.0\n"
            "then run: OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318 make run   "
            "(UI: http://127.0.0.1:16686)\n")


def cmd_run(args: argparse.Namespace) -> int:
    from sqs_processor.cli import main as cli_main

    _local_env()
    emulator = start_emulator()
    try:
        queue_url = prepare()
        config = Path(str(resources.files("sqs_processor.configs").joinpath("local.yaml")))
        os.environ["SQS_QUEUE_URL"] = queue_url
        print(
            "\nSend more messages (any AWS credentials work against the emulator):\n"
            "  make send BODY='{\"hello\": \"world\"}'\n"
            f"  aws --endpoint-url {ENDPOINT} --region {REGION} sqs send-message "
            f"--queue-url {queue_url} --message-body 'hi'\n"
            "List what was archived:\n"
            "  make list\n"
            f"  aws --endpoint-url {ENDPOINT} --region {REGION} s3 ls s3://{BUCKET}/ --recursive\n"
            "Health: curl -s http://127.0.0.1:8080/health    "
            "Metrics: curl -s http://127.0.0.1:8080/metrics    Stop: Ctrl-C\n", flush=True)
        print(_tracing_hint(), flush=True)
        return cli_main(["run", "--config", str(config), *args.cli_args])
    finally:
        if emulator is not None:
            emulator.terminate()
            emulator.wait(10)


def cmd_send(args: argparse.Namespace) -> int:
    sqs, _ = _clients()
    response = sqs.send_message(QueueUrl=_queue_url(sqs), MessageBody=args.body)
    print(f"sent message {response['MessageId']}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    _, s3 = _clients()
    paginator = s3.get_paginator("list_objects_v2")
    count = 0
    for page in paginator.paginate(Bucket=BUCKET):
        for item in page.get("Contents", ()):
            print(f"s3://{BUCKET}/{item['Key']}  {item['Size']} bytes")
            if args.show:
                body = s3.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read()
                print("  " + body.decode("utf-8"))
            count += 1
    print(f"{count} objects")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sqs_processor.local")
    commands = parser.add_subparsers(dest="command")
    run = commands.add_parser("run", help="emulator + samples + processor (the default)")
    run.add_argument("cli_args", nargs=argparse.REMAINDER,
                     help="extra options for sqs-processor run, e.g. --log-format json")
    send = commands.add_parser("send", help="send one message to the local queue")
    send.add_argument("body")
    listing = commands.add_parser("list", help="list the archived objects")
    listing.add_argument("--show", action="store_true", help="print each document too")
    args = parser.parse_args(argv)
    if args.command is None:
        args = parser.parse_args(["run", *(argv or [])])
    try:
        return {"run": cmd_run, "send": cmd_send, "list": cmd_list}[args.command](args)
    except Exception as exc:
        from botocore.exceptions import BotoCoreError, ClientError

        if isinstance(exc, BotoCoreError | ClientError):
            print(f"cannot reach the local emulator at {ENDPOINT}: {exc} (is `make run` "
                  "running?)", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
