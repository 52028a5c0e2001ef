"""Local mode: any pipeline against the embedded emulator, no AWS account needed.

    python -m sqs_processor.local                       # what `make run` does
    python -m sqs_processor.local run --config my.yaml  # your pipeline, your plugins
    python -m sqs_processor.local send [--attribute N=V] BODY  # send one more message
    python -m sqs_processor.local list [--show]         # list the archived objects

``run`` starts the emulator on 127.0.0.1:4566 (or uses one already listening there, or the one
``$LOCAL_ENDPOINT_URL`` names), points boto3 at it, creates the queue and the bucket(s) the
config names (``configs/local.yaml`` without ``--config``), sends a few sample messages (JSON
and not, with string and binary attributes) and runs the pipeline. ``$SQS_QUEUE_URL`` and
``$S3_BUCKET_NAME`` default to the emulator's ``sqs-processor-local`` queue and bucket, so the
shipped configs run unchanged. A config whose ``aws.endpoint_url`` is anything but the emulator
is refused: local mode never reaches AWS. Ctrl-C stops it gracefully.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from urllib.parse import urlparse

ENDPOINT_ENV = "LOCAL_ENDPOINT_URL"
DEFAULT_ENDPOINT = "http://127.0.0.1:4566"
ACCOUNT = "123456789012"  # the emulator's account
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


def endpoint() -> str:
    """The emulator's URL: ``$LOCAL_ENDPOINT_URL``, else 127.0.0.1:4566."""
    return (os.environ.get(ENDPOINT_ENV) or DEFAULT_ENDPOINT).rstrip("/")


def local_environment() -> None:
    """Point boto3 at the emulator, and give the shipped configs' variables local values.

    The emulator accepts any credentials; real ones are never needed. The per-service endpoint
    variables are removed so that none of them can send a call to AWS instead.
    """
    url = endpoint()
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "local")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "local")
    os.environ.setdefault("AWS_DEFAULT_REGION", REGION)
    os.environ["AWS_ENDPOINT_URL"] = url
    for name in ("AWS_ENDPOINT_URL_SQS", "AWS_ENDPOINT_URL_S3"):
        os.environ.pop(name, None)
    os.environ.setdefault("SQS_QUEUE_URL", f"{url}/{ACCOUNT}/{QUEUE}")
    os.environ.setdefault("S3_BUCKET_NAME", BUCKET)


def _listening(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


@dataclass(frozen=True)
class Targets:
    """What a pipeline config needs on the emulator: the region, its queue and buckets."""

    config: Path
    region: str
    queue: str | None
    buckets: tuple[str, ...]
    health: str


def local_config() -> Path:
    return Path(str(resources.files("sqs_processor.configs").joinpath("local.yaml")))


def targets(path: Path | None) -> Targets:
    """Read the config (the local one when ``path`` is None) and what it names. ConfigError."""
    from sqs_processor.errors import ConfigError
    from sqs_processor.pipeline import load_pipeline

    path = local_config() if path is None else path
    # The whole pipeline is built (offline) first, so a bad option creates nothing.
    pipeline = load_pipeline(path)
    config = pipeline.config
    named = config.aws["endpoint_url"]
    if named is not None and named.rstrip("/") != endpoint():
        raise ConfigError("aws.endpoint_url", "is not the local emulator; local mode never "
                          "calls AWS", value=named,
                          expected=f"no endpoint_url, or {endpoint()} (set ${ENDPOINT_ENV} for "
                                   "another emulator)")
    region = pipeline.aws.region  # as the processor resolves it: the YAML, else boto3's chain
    queue_url = config.source.options.get("queue_url")
    queue = queue_url.rstrip("/").rsplit("/", 1)[-1] if isinstance(queue_url, str) else None
    blocks = [config.sink.options]
    if config.errors["sink"] != "none":
        inherited = config.sink.options if config.errors["sink"] == config.sink.type else {}
        blocks.append({**inherited, **(config.errors["options"] or {})})
    buckets = tuple(dict.fromkeys(b["bucket"] for b in blocks if isinstance(b.get("bucket"), str)))
    port = config.service["health_port"]
    health = f"http://127.0.0.1:{port}" if port else ""
    return Targets(path, region, queue, buckets, health)


def start_emulator() -> subprocess.Popen | None:
    """Start the emulator unless one already listens there; wait until it answers."""
    url = endpoint()
    parsed = urlparse(url)
    host, port = parsed.hostname or "127.0.0.1", parsed.port or 80
    if _listening(host, port):
        print(f"using the emulator already listening on {url}")
        return None
    if os.environ.get(ENDPOINT_ENV):
        raise SystemExit(f"nothing listens at ${ENDPOINT_ENV} ({url}); start it with "
                         "`make emulator`, or unset the variable")
    # A session of its own: Ctrl-C stops the processor first, which still needs the emulator
    # to flush its deletes; the emulator is stopped after that.
    process = subprocess.Popen([sys.executable, "-m", "sqs_processor.emulator", "--quiet",
                                "--host", host, "--port", str(port)], start_new_session=True)
    deadline = time.monotonic() + 30
    while not _listening(host, port):
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the emulator did not start on {url}")
        time.sleep(0.1)
    return process


def _clients(region: str = REGION):  # type: ignore[no-untyped-def]
    import boto3

    local_environment()
    session = boto3.session.Session(region_name=region)
    return (session.client("sqs", endpoint_url=endpoint()),
            session.client("s3", endpoint_url=endpoint()))


def prepare(found: Targets, samples: bool = True) -> str | None:
    """Create the queue and buckets the config names; send the samples. Returns the queue URL."""
    sqs, s3 = _clients(found.region)
    for bucket in found.buckets:
        extra = {} if found.region == "us-east-1" else {
            "CreateBucketConfiguration": {"LocationConstraint": found.region}}
        with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):
            s3.create_bucket(Bucket=bucket, **extra)
    made = [f"bucket s3://{b}" for b in found.buckets]
    queue_url = None
    if found.queue:
        attributes = {"VisibilityTimeout": "30"}
        if found.queue.endswith(".fifo"):
            attributes.update(FifoQueue="true", ContentBasedDeduplication="true")
        queue_url = sqs.create_queue(QueueName=found.queue, Attributes=attributes)["QueueUrl"]
        made.insert(0, f"queue {queue_url}")
        if samples:
            for body, message_attributes in SAMPLES:
                sqs.send_message(QueueUrl=queue_url, MessageBody=body,
                                 MessageAttributes=message_attributes, **_fifo(queue_url))
            made.append(f"sent {len(SAMPLES)} samples")
    print(f"on the emulator ({found.region}): " + "; ".join(made or ["nothing to create"]))
    return queue_url


def _fifo(queue_url: str) -> dict[str, str]:
    """A FIFO queue needs a message group (its deduplication is by content)."""
    return {"MessageGroupId": "local"} if queue_url.endswith(".fifo") else {}


def _tracing_hint() -> str:
    """How to see this run's traces: where they go now, or how to start a Jaeger for them."""
    otlp = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if otlp:
        return f"Traces: exporting over OTLP to {otlp} (OTEL_EXPORTER_OTLP_ENDPOINT)\n"
    if _listening("127.0.0.1", 4318):
        return ("Traces: something listens on 127.0.0.1:4318 (a Jaeger or collector?). Send it "
                "this run's traces with:\n"
                "  OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318 make run\n")
    return ("Traces: off (no OTEL_EXPORTER_OTLP_ENDPOINT). To see them in Jaeger, start one with "
            "OTLP on\n"
            "  docker run --rm -p 16686:16686 -p 4318:4318 jaegertracing/jaeger:2.15.0\n"
            "then run: OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318 make run   "
            "(UI: http://127.0.0.1:16686)\n")


def _hints(found: Targets, queue_url: str | None) -> str:
    url, region = endpoint(), found.region
    config = "" if found.config == local_config() else f" CONFIG={found.config}"
    lines = ["", "Send more messages (any AWS credentials work against the emulator):"]
    if queue_url:
        lines += [f"  make send{config} BODY='{{\"hello\": \"world\"}}'",
                  f"  aws --endpoint-url {url} --region {region} sqs send-message "
                  f"--queue-url {queue_url} --message-body 'hi'"]
    lines.append("List what was archived:")
    lines.append(f"  make list{config}")
    lines += [f"  aws --endpoint-url {url} --region {region} s3 ls s3://{b}/ --recursive"
              for b in found.buckets]
    if found.health:
        lines.append(f"Health: curl -s {found.health}/health    Metrics: curl -s "
                     f"{found.health}/metrics    Stop: Ctrl-C")
    else:  # health_port 0: the port is picked at start and logged
        lines.append("Health and metrics: on the port the health_listening line below names"
                     "    Stop: Ctrl-C")
    return "\n".join(lines) + "\n"


def _config_error(exc: Exception | str) -> int:
    from sqs_processor.errors import ConfigError, each_error

    for one in each_error(exc) if isinstance(exc, ConfigError) else (exc,):
        print(f"sqs-processor: config error: {one}", file=sys.stderr)
    return 2


def cmd_run(args: argparse.Namespace) -> int:
    from sqs_processor.cli import main as cli_main
    from sqs_processor.errors import ConfigError

    try:
        found = targets(args.config)
    except ConfigError as exc:  # before the emulator starts: nothing to clean up
        return _config_error(exc)
    emulator = start_emulator()
    try:
        queue_url = prepare(found, samples=not args.no_samples)
        print(_hints(found, queue_url), flush=True)
        print(_tracing_hint(), flush=True)
        return cli_main(["--log-level", args.log_level, "--log-format", args.log_format,
                         "run", "--config", str(found.config)])
    finally:
        if emulator is not None:
            emulator.terminate()
            emulator.wait(10)


def cmd_send(args: argparse.Namespace) -> int:
    found = targets(args.config)
    sqs, _ = _clients(found.region)
    if not found.queue:
        return _config_error("source: names no queue_url to send to")
    queue_url = sqs.get_queue_url(QueueName=found.queue)["QueueUrl"]
    attributes = {}
    for pair in args.attribute:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            return _config_error(f"--attribute: {pair!r} is not NAME=VALUE")
        attributes[name] = {"DataType": "String", "StringValue": value}
    response = sqs.send_message(QueueUrl=queue_url, MessageBody=args.body,
                                MessageAttributes=attributes, **_fifo(queue_url))
    print(f"sent message {response['MessageId']} to {queue_url}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    found = targets(args.config)
    _, s3 = _clients(found.region)
    count = 0
    for bucket in found.buckets:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for item in page.get("Contents", ()):
                print(f"s3://{bucket}/{item['Key']}  {item['Size']} bytes")
                if args.show:
                    body = s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
                    print("  " + body.decode("utf-8", "replace"))
                count += 1
    print(f"{count} objects")
    return 0


def _parser() -> argparse.ArgumentParser:
    from sqs_processor.logs import LEVELS

    parser = argparse.ArgumentParser(
        prog="python -m sqs_processor.local",
        description="Run a pipeline against the embedded SQS/S3 emulator (no AWS account).")
    commands = parser.add_subparsers(dest="command")
    with_config = argparse.ArgumentParser(add_help=False)
    with_config.add_argument("--config", type=Path, default=None, metavar="FILE",
                             help="pipeline YAML (default: the built-in local.yaml)")
    run = commands.add_parser("run", parents=[with_config],
                              help="emulator + queue and bucket + samples + processor "
                                   "(the default)")
    run.add_argument("--log-level", choices=LEVELS, default="info")
    run.add_argument("--log-format", choices=("text", "json"), default="text",
                     help="text for people, json for log pipelines")
    run.add_argument("--no-samples", action="store_true",
                     help="do not send the sample messages")
    send = commands.add_parser("send", parents=[with_config],
                               help="send one message to the pipeline's queue")
    send.add_argument("--attribute", action="append", default=[], metavar="NAME=VALUE",
                      help="a string message attribute (repeatable)")
    send.add_argument("body")
    listing = commands.add_parser("list", parents=[with_config],
                                  help="list the objects in the pipeline's bucket(s)")
    listing.add_argument("--show", action="store_true", help="print each document too")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help")):
        argv.insert(0, "run")  # `python -m sqs_processor.local --config FILE` runs too
    args = _parser().parse_args(argv)
    local_environment()
    from botocore.exceptions import BotoCoreError, ClientError

    from sqs_processor.errors import ConfigError

    try:
        return {"run": cmd_run, "send": cmd_send, "list": cmd_list}[args.command](args)
    except ConfigError as exc:
        return _config_error(exc)
    except ClientError as exc:
        print(f"the local emulator at {endpoint()} refused: {exc}", file=sys.stderr)
        return 1
    except BotoCoreError as exc:
        print(f"cannot reach the local emulator at {endpoint()}: {exc} (is `make run` or "
              "`make emulator` running?)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
