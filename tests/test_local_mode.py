"""Local mode runs any pipeline: ``python -m sqs_processor.local run --config FILE``.

The child is pointed at the session's emulator with ``LOCAL_ENDPOINT_URL`` (so it starts none
of its own); it must create the queue and the bucket the config names, in the config's region,
send its samples through the config's own drop-in plugin and store them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import boto3
import pytest
import yaml
from helpers.support import ROOT, cli_env, dropin_folder, stored_objects, unique, wait_for

from sqs_processor.emulator import exports

STAMP = """\
from sqs_processor import Option, TransformSpec, hookimpl


def build(options, context):
    value = options["value"]

    def stamp(record):
        record.document["stamped_by"] = value
        return record

    return stamp


@hookimpl
def sqs_processor_transforms():
    return TransformSpec(name="stamp", factory=build, description="Adds a field.",
                         options=(Option("value", str, description="What to write."),))
"""

LOCAL = [sys.executable, "-m", "sqs_processor.local"]
REGION = "us-west-2"  # not the emulator's default: the queue and bucket must follow the config


def _local_env(emulator: str) -> dict[str, str]:
    env = cli_env({}, LOCAL_ENDPOINT_URL=emulator, AWS_ACCESS_KEY_ID="testing",
                  AWS_SECRET_ACCESS_KEY="testing")
    for name in ("AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE",
                 "SQS_PROCESSOR_CONFIG"):
        env.pop(name, None)
    return env


def _pipeline(tmp_path: Path, emulator: str, queue: str, bucket: str) -> Path:
    dropin_folder(tmp_path, stamp=STAMP)
    config = {
        "service": {"health_port": 0, "shutdown_grace_seconds": 5},
        "aws": {"region": REGION},
        "plugins": {"paths": ["plugins"]},
        "source": {"type": "sqs", "queue_url": f"{emulator}/123456789012/{queue}",
                   "wait_time_seconds": 1, "poll_interval_seconds": 1},
        "transforms": ["json_parse", {"type": "stamp", "value": "my-plugin"}],
        "sink": {"type": "s3", "bucket": bucket, "prefix": "mine/"},
        "ack": {"type": "sqs_delete"},
    }
    path = tmp_path / "my-pipeline.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def test_local_run_with_a_custom_config_creates_its_queue_and_bucket_and_stores_through_its_plugin(
        tmp_path, emulator):
    queue, bucket = unique("local-q"), unique("local-b")
    config = _pipeline(tmp_path, emulator, queue, bucket)
    process = subprocess.Popen([*LOCAL, "run", "--config", str(config), "--log-format", "json"],
                               env=_local_env(emulator), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    s3 = boto3.client("s3", endpoint_url=emulator, region_name=REGION,
                      aws_access_key_id="testing", aws_secret_access_key="testing")

    def stored():
        try:
            objects = stored_objects(s3, bucket)
        except s3.exceptions.NoSuchBucket:
            return None
        return objects if len(objects) == 3 else None

    def alive_and_stored():
        if process.poll() is not None:
            pytest.fail(f"local mode exited with {process.returncode}: "
                        f"{process.communicate()[1][-3000:]}")
        return stored()

    try:
        objects = wait_for(alive_and_stored, timeout=90, interval=0.5,
                           message="the three samples stored in the config's bucket")
        assert all(key.startswith("mine/") for key in objects), sorted(objects)
        assert {doc["stamped_by"] for doc in objects.values()} == {"my-plugin"}
        assert sum("parsed_body" in doc for doc in objects.values()) == 2  # one is plain text
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, stderr[-3000:]
    assert f"{emulator}/123456789012/{queue}" in stdout  # the send hint names its queue
    assert f"s3://{bucket}/" in stdout
    assert '"event": "stopped"' in stderr or '"event":"stopped"' in stderr, stderr[-3000:]
    location = s3.get_bucket_location(Bucket=bucket)["LocationConstraint"]
    assert location == REGION


def test_local_mode_refuses_a_config_that_points_elsewhere(tmp_path, emulator):
    queue, bucket = unique("local-q"), unique("local-b")
    config = _pipeline(tmp_path, emulator, queue, bucket)
    document = yaml.safe_load(config.read_text(encoding="utf-8"))
    document["aws"]["endpoint_url"] = "https://sqs.us-west-2.amazonaws.com"
    config.write_text(yaml.safe_dump(document), encoding="utf-8")
    result = subprocess.run([*LOCAL, "--config", str(config)], env=_local_env(emulator),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        "sqs-processor: config error: aws.endpoint_url: 'https://sqs.us-west-2.amazonaws.com' "
        "is not the local emulator; local mode never calls AWS; expected no endpoint_url, or "
        f"{emulator} (set $LOCAL_ENDPOINT_URL for another emulator)"]
    sqs = boto3.client("sqs", endpoint_url=emulator, region_name=REGION,
                       aws_access_key_id="testing", aws_secret_access_key="testing")
    assert not sqs.list_queues(QueueNamePrefix=queue).get("QueueUrls")  # nothing was created


def test_local_help_documents_config_and_log_options():
    result = subprocess.run([*LOCAL, "run", "--help"], capture_output=True, text=True,
                            timeout=60, env={**os.environ})
    assert result.returncode == 0
    for option in ("--config FILE", "--log-level", "--log-format", "--no-samples"):
        assert option in result.stdout


def test_the_standalone_emulator_prints_its_endpoint_and_the_exports(tmp_path):
    process = subprocess.Popen([sys.executable, "-m", "sqs_processor.emulator", "--port", "0"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert process.stdout is not None
        first = process.stdout.readline().strip()
        assert first.startswith("emulator listening on http://127.0.0.1:")
        url = first.rsplit(" ", 1)[1]
        lines = [process.stdout.readline().rstrip("\n") for _ in exports(url).splitlines()]
        assert "\n".join(lines) == exports(url)
        assert f"  export AWS_ENDPOINT_URL={url}" in lines
        # The exports work: the AWS SDK reaches the emulator with them alone.
        env = {k: v.strip() for line in lines if line.strip().startswith("export ")
               for k, v in (pair.split("=", 1) for pair in line.split()[1:])}
        sqs = boto3.client("sqs", endpoint_url=env["AWS_ENDPOINT_URL"],
                           region_name=env["AWS_DEFAULT_REGION"],
                           aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                           aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])
        assert "QueueUrl" in sqs.create_queue(QueueName=unique("exports"))
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            pytest.fail("the emulator did not stop on SIGTERM")


def test_the_emulator_exits_at_once_with_one_line_when_its_port_is_taken():
    import socket

    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "sqs_processor.emulator", "--port",
                                 str(port)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"the emulator cannot listen on 127.0.0.1:{port}: Address already in use; is one "
        "already running there? (--port picks another)"]


def _make_plan(*args: str) -> list[str]:
    """What ``make ARGS`` would run, with the install stamps out of date (``make -n``)."""
    import shutil

    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    # Under `make test` the suite runs inside make: its MAKEFLAGS and MAKELEVEL would make this
    # make print "Entering/Leaving directory" lines among the commands.
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    result = subprocess.run(["make", "--no-print-directory", "-n", "-W", "pyproject.toml",
                             *args], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_make_run_installs_only_the_local_extra_and_passes_the_config_through():
    plan = _make_plan("run", "CONFIG=my pipeline.yaml", "ARGS=--no-samples")
    installs = [line for line in plan if "pip install" in line]
    assert installs == [".venv/bin/python -m pip install --quiet -e '.[local]'"]
    assert plan[-1] == (".venv/bin/python -m sqs_processor.local run --config 'my pipeline.yaml'"
                        " --no-samples")
    assert _make_plan("run")[-1].split() == [".venv/bin/python", "-m", "sqs_processor.local",
                                             "run"]
    assert _make_plan("emulator")[-1] == ".venv/bin/python -m sqs_processor.emulator"
    assert any("-e '.[dev]'" in line for line in _make_plan("test"))


def test_a_fifo_queue_is_created_as_fifo_and_gets_the_samples(emulator, monkeypatch):
    from sqs_processor import local

    # Local mode sets these in its own process; registered here, they are restored afterwards.
    for name, value in {"LOCAL_ENDPOINT_URL": emulator, "AWS_ENDPOINT_URL": emulator,
                        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": REGION}.items():
        monkeypatch.setenv(name, value)
    for name in ("SQS_QUEUE_URL", "S3_BUCKET_NAME", "AWS_ENDPOINT_URL_SQS", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    name = f"{unique('local')}.fifo"
    found = local.Targets(Path("pipeline.yaml"), REGION, name, (), "")
    queue_url = local.prepare(found)
    sqs = boto3.client("sqs", endpoint_url=emulator, region_name=REGION)
    attributes = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["All"])[
        "Attributes"]
    assert attributes["FifoQueue"] == "true"
    assert attributes["ApproximateNumberOfMessages"] == str(len(local.SAMPLES))
