"""Helpers for the tests: waiting, reading the bucket, writing configs, running pipelines."""

from __future__ import annotations

import os
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from sqs_processor.config import load_config
from sqs_processor.loaders import build_plugin_manager
from sqs_processor.pipeline import build_pipeline
from sqs_processor.runner import Runner

REGION = "us-east-1"
ROOT = Path(__file__).resolve().parents[2]

S3_CLIENT = os.environ.get("SQS_PROCESSOR_TEST_S3_CLIENT", "obstore")
"""The s3 sink's client in every test pipeline: ``SQS_PROCESSOR_TEST_S3_CLIENT=boto3`` runs the
suite with ``client: boto3`` (the default, obstore, otherwise)."""
if S3_CLIENT not in ("obstore", "boto3"):
    raise RuntimeError(f"SQS_PROCESSOR_TEST_S3_CLIENT={S3_CLIENT!r}; expected obstore or boto3")


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def wait_for(predicate: Callable[[], Any], timeout: float = 20.0, interval: float = 0.1,
             message: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


def stored_objects(s3: Any, bucket: str) -> dict[str, dict[str, Any]]:
    """Every object in ``bucket``: key -> parsed JSON document."""
    result = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", ()):
            body = s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
            result[item["Key"]] = orjson.loads(body)
    return result


def _read_counts(sqs: Any, queue_url: str) -> tuple[int, int]:
    attributes = sqs.get_queue_attributes(
        QueueUrl=queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return (int(attributes["ApproximateNumberOfMessages"]),
            int(attributes["ApproximateNumberOfMessagesNotVisible"]))


def queue_counts(sqs: Any, queue_url: str) -> tuple[int, int]:
    """(visible, in flight) messages of a queue.

    The emulator computes the two counts at two instants, so a message whose visibility timeout
    ends between them is in neither and an occupied queue can read (0, 0). An empty answer is
    therefore confirmed by a second read a moment later (the message is then visible, or in
    flight again if it was received in between).
    """
    counts = _read_counts(sqs, queue_url)
    if counts == (0, 0):
        time.sleep(0.3)
        counts = _read_counts(sqs, queue_url)
    return counts


def pipeline_config(queue_url: str, bucket: str, **sections: Any) -> dict[str, Any]:
    """A pipeline YAML (as a dict) for the emulator; ``sections`` replace or extend it."""
    config: dict[str, Any] = {
        "service": {"health_port": 0, "health_host": "127.0.0.1", "shutdown_grace_seconds": 10},
        "source": {"type": "sqs", "queue_url": queue_url, "wait_time_seconds": 1,
                   "poll_interval_seconds": 1},
        "transforms": ["json_parse", "enrich"],
        "sink": {"type": "s3", "bucket": bucket, "prefix": "archive/", "client": S3_CLIENT},
        "ack": {"type": "sqs_delete"},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    if isinstance(config.get("sink"), dict) and config["sink"].get("type") != "s3":
        config["sink"].pop("client", None)  # another sink type has no such option
    return config


def write_config(directory: Path, config: dict[str, Any], name: str = "pipeline.yaml") -> Path:
    path = directory / name
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


class RunningPipeline:
    """A Runner on a background thread, for in-process end-to-end tests."""

    def __init__(self, config_path: Path) -> None:
        config = load_config(config_path)
        self.pipeline = build_pipeline(config, build_plugin_manager(config.plugin_settings))
        self.runner = Runner(self.pipeline)
        self.exit_code: int | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.exit_code = self.runner.run()
        except BaseException as exc:  # surfaced by stop()
            self.error = exc

    @property
    def stats(self) -> dict[str, int]:
        return self.pipeline.stats.snapshot()

    def start(self) -> RunningPipeline:
        if self.thread.ident is None:
            self.thread.start()
            assert self.runner.wait_started(10), "runner did not start"
        return self

    def __enter__(self) -> RunningPipeline:
        return self.start()

    def stop(self, timeout: float = 30.0) -> int | None:
        self.runner.stop()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "runner did not stop"
        if self.error is not None:
            raise self.error
        return self.exit_code

    def __exit__(self, *exc_info: object) -> None:
        if self.thread.is_alive():
            self.stop()


def cli_env(aws_env: dict[str, str], **extra: str) -> dict[str, str]:
    """Environment for a ``sqs-processor`` subprocess."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SQS_", "S3_", "POLL_",
                                                                       "MAX_MESSAGES"))}
    env.update(aws_env)
    env.update(extra)
    return env


CLI = [sys.executable, "-m", "sqs_processor.cli"]


def dropin_folder(directory: Path, **files: str) -> Path:
    """A plugin folder under ``directory`` holding ``name.py`` for each ``name=code``."""
    folder = directory / "plugins"
    folder.mkdir(exist_ok=True)
    for name, code in files.items():
        (folder / f"{name}.py").write_text(code, encoding="utf-8")
    return folder
