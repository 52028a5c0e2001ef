"""The two reference contenders, written for the benchmark: the spec's design and the bare ceiling.

    python -m bench.contenders baseline --endpoint URL --queue-url URL --bucket NAME \
        --prefix PREFIX --expect N --out FILE
    python -m bench.contenders ceiling ... --workers 32 --lanes 16
    python -m bench.contenders ceiling-obstore ... --workers 32 --lanes 16

**baseline**: the original service's loop, literally, without its 30 s pause: one thread
receives up to ten messages (long poll, all attributes), then for each message builds the
document, PUTs it and deletes that message, one call each. Standard-library ``json``, default
boto3 clients, as the seed service used them.

**ceiling**: the shortest concurrent boto3 loop doing the same work as sqs-processor: the same
document (orjson), the same key (hour of ``SentTimestamp``), the same conditional PUT, one
``DeleteMessageBatch`` per received batch. ``--lanes`` threads each receive ten messages, PUT
them through one shared pool of ``--workers`` threads, and delete the batch; so at most
``10 * lanes`` messages are in flight, like sqs-processor's ``max_in_flight``. No logging, no
plugins, no error handling beyond counting a 412 as stored: it shows what the calls themselves
allow.

Each stops after ``--expect`` messages and writes its figures (:mod:`bench.measure`) to
``--out``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from bench.measure import Measurement

RECEIVE = {"MaxNumberOfMessages": 10, "WaitTimeSeconds": 20,
           "MessageSystemAttributeNames": ["All"], "MessageAttributeNames": ["All"]}


def _message_attributes(raw: dict[str, Any]) -> dict[str, Any]:
    # boto3 hands binary values over as bytes; stored as base64 text, as the seed's format says.
    result = {}
    for name, value in raw.items():
        entry = {"DataType": value["DataType"]}
        if "StringValue" in value:
            entry["StringValue"] = value["StringValue"]
        if "BinaryValue" in value:
            entry["BinaryValue"] = base64.b64encode(value["BinaryValue"]).decode("ascii")
        result[name] = entry
    return result


# -- baseline: the spec's design ---------------------------------------------------------------

def run_baseline(sqs: Any, s3: Any, args: argparse.Namespace, measurement: Measurement) -> None:
    while measurement.count < args.expect:
        response = sqs.receive_message(QueueUrl=args.queue_url, **RECEIVE)
        for message in response.get("Messages", []):
            received_at = datetime.now(UTC)
            document: dict[str, Any] = {"message_id": message["MessageId"],
                                        "body": message["Body"]}
            with contextlib.suppress(ValueError):
                document["parsed_body"] = json.loads(message["Body"])
            document["attributes"] = message.get("Attributes", {})
            document["message_attributes"] = _message_attributes(
                message.get("MessageAttributes", {}))
            document["received_at"] = received_at.isoformat()
            document["receipt_handle"] = message["ReceiptHandle"]
            key = f"{args.prefix}{received_at:%Y/%m/%d/%H}/{message['MessageId']}.json"
            s3.put_object(Bucket=args.bucket, Key=key, Body=json.dumps(document),
                          ContentType="application/json")
            sqs.delete_message(QueueUrl=args.queue_url, ReceiptHandle=message["ReceiptHandle"])
            if measurement.add(1):
                return


# -- ceiling: the bare concurrent loop -----------------------------------------------------------

def boto3_put(s3: Any, args: argparse.Namespace) -> Any:
    from botocore.exceptions import ClientError

    def put(key: str, body: bytes) -> None:
        try:
            s3.put_object(Bucket=args.bucket, Key=key, Body=body,
                          ContentType="application/json", IfNoneMatch="*")
        except ClientError as exc:
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") != 412:
                raise

    return put


def obstore_put(session: Any, args: argparse.Namespace) -> Any:
    import obstore
    from obstore.auth.boto3 import Boto3CredentialProvider
    from obstore.exceptions import AlreadyExistsError
    from obstore.store import S3Store

    store = S3Store(args.bucket, endpoint=args.endpoint, region=args.region,
                    virtual_hosted_style_request=False,
                    client_options={"allow_http": args.endpoint.startswith("http://")},
                    retry_config={"max_retries": 4},
                    credential_provider=Boto3CredentialProvider(session))

    def put(key: str, body: bytes) -> None:
        with contextlib.suppress(AlreadyExistsError):  # stored by an earlier delivery
            obstore.put(store, key, body, mode="create", use_multipart=False,
                        attributes={"Content-Type": "application/json"})

    return put


def run_ceiling(sqs: Any, put: Any, args: argparse.Namespace,
                measurement: Measurement) -> None:
    import orjson

    done = threading.Event()
    errors: list[str] = []

    def store(message: dict[str, Any], received_at: str) -> None:
        body = message["Body"]
        document: dict[str, Any] = {"message_id": message["MessageId"], "body": body}
        with contextlib.suppress(orjson.JSONDecodeError):
            document["parsed_body"] = orjson.loads(body)
        document["attributes"] = message.get("Attributes", {})
        document["message_attributes"] = _message_attributes(message.get("MessageAttributes", {}))
        document["received_at"] = received_at
        document["receipt_handle"] = message["ReceiptHandle"]
        sent = datetime.fromtimestamp(int(message["Attributes"]["SentTimestamp"]) / 1000, UTC)
        key = f"{args.prefix}{sent:%Y/%m/%d/%H}/{message['MessageId']}.json"
        put(key, orjson.dumps(document))

    def lane() -> None:
        try:
            while not done.is_set():
                messages = sqs.receive_message(QueueUrl=args.queue_url, **RECEIVE).get(
                    "Messages", [])
                if not messages:
                    continue
                received_at = datetime.now(UTC).isoformat()
                list(pool.map(store, messages, [received_at] * len(messages)))
                sqs.delete_message_batch(QueueUrl=args.queue_url, Entries=[
                    {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
                    for i, m in enumerate(messages)])
                if measurement.add(len(messages)):
                    done.set()
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
            done.set()

    pool = ThreadPoolExecutor(args.workers)
    for i in range(args.lanes):
        threading.Thread(target=lane, name=f"lane-{i}", daemon=True).start()
    done.wait()
    if errors:
        raise SystemExit(f"ceiling failed: {errors[0]}")


CONTENDERS = {"baseline": run_baseline, "ceiling": run_ceiling,
              "ceiling-obstore": run_ceiling}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.contenders")
    parser.add_argument("name", choices=sorted(CONTENDERS))
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--region", default="us-east-1")
    parser.add_argument("--queue-url", required=True)
    parser.add_argument("--bucket", required=True)
    parser.add_argument("--prefix", default="")
    parser.add_argument("--expect", type=int, required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--workers", type=int, default=32, help="ceiling: PUT threads")
    parser.add_argument("--lanes", type=int, default=16,
                        help="ceiling: receive-put-delete loops (10 messages in flight each)")
    args = parser.parse_args(argv)

    import boto3
    from botocore.config import Config

    session = boto3.session.Session(region_name=args.region)
    if args.name == "baseline":
        config = None  # the seed's clients: boto3's defaults
    else:
        config = Config(max_pool_connections=args.workers + args.lanes + 2,
                        retries={"mode": "standard", "max_attempts": 5})
    sqs = session.client("sqs", endpoint_url=args.endpoint, config=config)
    s3 = session.client("s3", endpoint_url=args.endpoint, config=config)
    measurement = Measurement(args.out, args.expect)
    measurement.start()
    code = 0
    try:
        if args.name == "baseline":
            run_baseline(sqs, s3, args, measurement)
        else:
            put = obstore_put(session, args) if args.name == "ceiling-obstore" \
                else boto3_put(s3, args)
            run_ceiling(sqs, put, args, measurement)
    except SystemExit as exc:
        print(exc, file=sys.stderr)
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # lanes may be in a long poll; the figures are already written


if __name__ == "__main__":
    sys.exit(main())
