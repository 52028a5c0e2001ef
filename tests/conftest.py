"""Shared fixtures: one emulator (moto server) per test session, reached over real HTTP.

The emulator runs in its own process (``python -m sqs_processor.emulator --port 0``), so the
processor's threads and moto's never share a GIL or a lock. Every test gets its own queue and
bucket names; queues stay shallow because moto's receive slows down with queue depth.
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from helpers.processes import ProcessorProcess
from helpers.support import REGION, RunningPipeline, unique, write_config


@pytest.fixture(scope="session")
def emulator() -> Iterator[str]:
    """The endpoint URL of a moto server running in a separate process."""
    process = subprocess.Popen(
        [sys.executable, "-m", "sqs_processor.emulator", "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    match = re.search(r"http://[\d.]+:\d+", line)
    if not match:
        process.kill()
        raise RuntimeError(f"emulator did not start: {line!r}")
    # Keep draining its output so it never blocks on a full pipe.
    threading.Thread(target=process.stdout.read, daemon=True).start()
    yield match.group(0)
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()


@pytest.fixture
def aws_env(emulator: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Environment pointing boto3 (in this process and in children) at the emulator."""
    values = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
        "AWS_ENDPOINT_URL": emulator,
    }
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_SQS", "AWS_ENDPOINT_URL_S3",
                 "SQS_PROCESSOR_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values


@pytest.fixture
def sqs(aws_env: dict[str, str]) -> Any:
    return boto3.client("sqs", region_name=REGION, endpoint_url=aws_env["AWS_ENDPOINT_URL"])


@pytest.fixture
def s3(aws_env: dict[str, str]) -> Any:
    return boto3.client("s3", region_name=REGION, endpoint_url=aws_env["AWS_ENDPOINT_URL"])


@pytest.fixture
def queue_url(sqs: Any) -> str:
    return sqs.create_queue(QueueName=unique("q"), Attributes={"VisibilityTimeout": "30"})[
        "QueueUrl"]


@pytest.fixture
def bucket(s3: Any) -> str:
    name = unique("bucket")
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture
def run_pipeline(tmp_path: Path) -> Iterator[Callable[[dict[str, Any]], RunningPipeline]]:
    """Start a pipeline from a config dict; stopped at the end of the test if still running."""
    started: list[RunningPipeline] = []

    def start(config: dict[str, Any]) -> RunningPipeline:
        running = RunningPipeline(write_config(tmp_path, config, f"pipeline{len(started)}.yaml"))
        started.append(running)
        return running.start()

    yield start
    for running in started:
        running.__exit__(None, None, None)


@pytest.fixture
def child() -> Iterator[list[ProcessorProcess]]:
    """Processor children a test starts (it appends them); stopped when the test ends."""
    processes: list[ProcessorProcess] = []
    yield processes
    for process in processes:
        process.stop()
