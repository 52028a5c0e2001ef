"""The image, built with podman and run the way the pod spec runs it, against the emulator.

``make image-test`` runs this file (and fails where podman is missing); in ``make test`` it is
skipped with the reason where podman is not installed. The container gets exactly what the
rendered Deployment gives the pod: the pipeline file of k8s/base mounted read-only at
/etc/sqs-processor, the settings ConfigMap as its environment, the pod's args and UID, a
read-only root filesystem with a tmpfs at /tmp, every capability dropped and no new
privileges. It runs in its own network namespace (slirp4netns), as a pod does, with the health
port published on the host's loopback; it reaches the emulator, which runs on the host as in
every other test, through slirp4netns's address for the host's loopback. So the image holds
only what production runs (no emulator), and the test uses the same emulator fixture as the
rest of the suite.
"""

from __future__ import annotations

import json
import os
import re
import socket
import urllib.error
import urllib.request
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from helpers import image
from helpers.k8s import K8S, render
from helpers.support import queue_counts, stored_objects, wait_for

REQUIRED = os.environ.get("SQS_PROCESSOR_IMAGE_TEST") == "required"
TAG = "localhost/sqs-processor:image-test"
HOST_LOOPBACK = "10.0.2.2"  # slirp4netns's address for the host's 127.0.0.1

if image.podman() is None:
    if REQUIRED:
        pytest.fail("podman is not installed; make image-test needs it (Debian package podman)",
                    pytrace=False)
    pytest.skip("podman not installed: the image is built and run by make image-test",
                allow_module_level=True)


@pytest.fixture(scope="module")
def built() -> str:
    base = image.build(TAG)
    megabytes = image.size(TAG) / 1e6
    print(f"\nimage {TAG}: {megabytes:.1f} MB on base {base}")
    return TAG


def _pod(objects: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    spec = deployment["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    return spec, container


def _configmap(objects: list[dict[str, Any]], prefix: str) -> dict[str, str]:
    (found,) = [o for o in objects if o["kind"] == "ConfigMap"
                and re.fullmatch(rf"{prefix}-[a-z0-9]{{10}}", o["metadata"]["name"])]
    return found["data"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _status(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def _container_args(name: str, tmp_path: Path, emulator: str, queue_url: str, bucket: str,
                    port: int) -> tuple[list[str], dict[str, Any], dict[str, Any]]:
    objects = render(K8S)
    spec, container = _pod(objects)
    ctx = {**spec["securityContext"], **container["securityContext"]}
    assert ctx["readOnlyRootFilesystem"] and ctx["capabilities"]["drop"] == ["ALL"]
    assert ctx["allowPrivilegeEscalation"] is False
    config = tmp_path / "etc-sqs-processor"
    config.mkdir()
    for key, text in _configmap(objects, "sqs-processor-pipeline").items():
        (config / key).write_text(text)
    emulator_port = emulator.rsplit(":", 1)[1]
    endpoint = f"http://{HOST_LOOPBACK}:{emulator_port}"
    env = dict(_configmap(objects, "sqs-processor-settings"))
    env.update({e["name"]: e["value"] for e in container.get("env", [])})
    env.update(SQS_QUEUE_URL=queue_url.replace(emulator, endpoint), S3_BUCKET_NAME=bucket,
               AWS_REGION="us-east-1", POLL_INTERVAL_SECONDS="1", AWS_ENDPOINT_URL=endpoint,
               AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")
    (health,) = container["ports"]
    args = ["run", "--detach", "--name", name,
            "--network", "slirp4netns:allow_host_loopback=true",
            "--publish", f"127.0.0.1:{port}:{health['containerPort']}",
            "--read-only", "--tmpfs", "/tmp", "--cap-drop", "ALL",
            "--security-opt", "no-new-privileges",
            "--user", f"{ctx['runAsUser']}:{ctx['runAsGroup']}",
            "--volume", f"{config}:/etc/sqs-processor:ro", *image.ulimit_flags()]
    for key, value in sorted(env.items()):
        args += ["--env", f"{key}={value}"]
    return args, spec, container


# The first run builds the stand-in base and the image (minutes on a loaded machine).
@pytest.mark.timeout(1800)
def test_the_image_runs_as_the_pod_stores_messages_and_stops_cleanly(
        built, tmp_path, emulator, aws_env, sqs, s3, queue_url, bucket):
    name = f"sqs-processor-test-{uuid.uuid4().hex[:8]}"
    port = _free_port()
    args, spec, container = _container_args(name, tmp_path, emulator, queue_url, bucket, port)
    sent = {sqs.send_message(QueueUrl=queue_url, MessageBody=json.dumps({"n": n}))["MessageId"]
            for n in range(25)}
    image.run(image.command(*args, built, *container["args"]), 120)
    try:
        wait_for(lambda: _status(port, "/readyz") == 200, timeout=90, interval=0.5,
                 message="/readyz to answer 200")
        objects = wait_for(lambda: (found := stored_objects(s3, bucket)) and
                           len(found) == len(sent) and found, timeout=120, interval=0.5,
                           message=f"{len(sent)} objects in the bucket")
        for key, document in objects.items():
            # <prefix>YYYY/MM/DD/HH/<message-id>.json, the hour of the message's SentTimestamp
            sent_at = datetime.fromtimestamp(int(document["attributes"]["SentTimestamp"]) / 1000,
                                             UTC)
            assert key == f"sqs-messages/{sent_at:%Y/%m/%d/%H}/{document['message_id']}.json"
        assert {d["message_id"] for d in objects.values()} == sent
        wait_for(lambda: queue_counts(sqs, queue_url) == (0, 0), timeout=60,
                 message="every message deleted")
        # What the process runs as, inside the container.
        status = image.run(image.command("exec", name, "cat", "/proc/1/status"), 60).stdout
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        assert fields["Uid"].split()[:2] == [str(spec["securityContext"]["runAsUser"])] * 2
        assert int(fields["CapEff"], 16) == 0 and int(fields["CapBnd"], 16) == 0
        assert fields["NoNewPrivs"].strip() == "1"
        touch = image.run(image.command("exec", name, "python", "-c",
                                        "open('/etc/x', 'w')"), 60, check=False)
        assert touch.returncode != 0 and "Read-only file system" in touch.stderr
        # The image's HEALTHCHECK (for docker and podman users) passes.
        assert image.run(image.command("healthcheck", "run", name), 60,
                         check=False).returncode == 0
        # SIGTERM: a clean drain and exit 0 within the pod's grace period.
        grace = spec["terminationGracePeriodSeconds"]
        image.run(image.command("kill", "--signal", "TERM", name), 60)
        code = image.run(["timeout", str(grace), *image.command("wait", name)], grace + 30)
        assert code.stdout.strip() == "0"
        logs = image.run(image.command("logs", name), 60).stderr
        stopped = [json.loads(line) for line in logs.splitlines()
                   if line.startswith("{") and '"event":"stopped"' in line]
        assert stopped and stopped[-1]["written"] == len(sent)
    finally:
        image.run(image.command("rm", "--force", name), 120, check=False)
