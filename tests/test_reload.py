"""Live reload while messages flow: a ConfigMap-style symlink swap, a bad config, SIGHUP.

The processor runs as a real subprocess. A feeder sends messages the whole time; a prober reads
/readyz the whole time. Every sent message must be stored exactly once and readiness must never
drop.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from helpers.otlp import parse_prometheus
from helpers.processes import ChildProcess as Process
from helpers.support import cli_env, pipeline_config, queue_counts, stored_objects, wait_for

STAMP = '''
from sqs_processor import TransformSpec, hookimpl


def stamp(record):
    record.document["stamp"] = "{value}"
    return record


@hookimpl
def sqs_processor_transforms():
    return [TransformSpec("stamp", lambda options, context: stamp, "Stamps documents.")]
'''


class ConfigMapDir:
    """A folder laid out as the kubelet mounts a ConfigMap: files are symlinks through ..data,
    and an update swaps ..data to a new timestamped folder in one rename."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir()
        self.version = 0

    def publish(self, files: dict[str, str]) -> None:
        self.version += 1
        target = self.root / f"..2026_11_28_{self.version:04d}"
        target.mkdir()
        for name, text in files.items():
            (target / name).write_text(text, encoding="utf-8")
        link = self.root / "..data_tmp"
        link.symlink_to(target.name)
        os.replace(link, self.root / "..data")
        for name in files:
            visible = self.root / name
            if not visible.is_symlink():
                visible.symlink_to(Path("..data") / name)


class Prober:
    """Reads /readyz every 50 ms on a thread and keeps every status it saw."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.statuses: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz",
                                            timeout=2) as response:
                    self.statuses.append(response.status)
            except urllib.error.HTTPError as error:
                self.statuses.append(error.code)
            except OSError:
                self.statuses.append(-1)

    def __enter__(self) -> Prober:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(5)


class Feeder:
    """Sends numbered messages at a steady pace on a thread; ``sent`` maps id -> body."""

    def __init__(self, sqs: Any, queue_url: str, count: int, per_second: float) -> None:
        self.sqs, self.queue_url, self.count = sqs, queue_url, count
        self.pause = 1.0 / per_second
        self.sent: dict[str, str] = {}
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        for i in range(self.count):
            body = json.dumps({"n": i})
            self.sent[self.sqs.send_message(QueueUrl=self.queue_url,
                                            MessageBody=body)["MessageId"]] = body
            time.sleep(self.pause)

    def start(self) -> Feeder:
        self._thread.start()
        return self

    def join(self) -> None:
        self._thread.join(60)
        assert not self._thread.is_alive()


def _config(queue_url: str, bucket: str, version: str, **extra: Any) -> str:
    config = pipeline_config(queue_url, bucket, plugins={"paths": ["."]},
                             transforms=["json_parse", "stamp",
                                         {"type": "enrich", "add": {"version": version}}],
                             **extra)
    return yaml.safe_dump(config, sort_keys=False)


def _check_exactly_once(s3: Any, bucket: str, sent: dict[str, str]) -> dict[str, dict]:
    documents = {doc["message_id"]: doc for doc in stored_objects(s3, bucket).values()}
    assert len(stored_objects(s3, bucket)) == len(sent)
    assert set(documents) == set(sent)
    assert all(documents[m]["body"] == body for m, body in sent.items())
    return documents


def test_configmap_swaps_reload_without_loss_duplicates_or_unreadiness(
        tmp_path, aws_env, sqs, s3, queue_url, bucket):
    mount = ConfigMapDir(tmp_path / "config")
    mount.publish({"pipeline.yaml": _config(queue_url, bucket, "v1"),
                   "stamp.py": STAMP.format(value="A")})
    process = Process(["run", "--config", str(mount.root / "pipeline.yaml"), "--log-format",
                       "json"], cli_env(aws_env))
    try:
        port = process.wait_event("health_listening")["port"]
        process.wait_event("started")
        with Prober(port) as prober:
            feeder = Feeder(sqs, queue_url, count=150, per_second=40).start()
            time.sleep(1.5)
            # 1. A good change of the pipeline YAML and of a plugin file, in one swap.
            mount.publish({"pipeline.yaml": _config(queue_url, bucket, "v2"),
                           "stamp.py": STAMP.format(value="B")})
            assert process.wait_event("reloaded", timeout=20)["outcome"] == "ok"
            # 2. A bad change: rejected, the v2 pipeline keeps running.
            mount.publish({"pipeline.yaml": _config(queue_url, bucket, "v3").replace(
                "max_in_flight", "max_in_flihgt") + "service: {max_in_flihgt: 5}\n",
                "stamp.py": STAMP.format(value="B")})
            rejected = process.wait_event("reload_rejected", timeout=20)
            assert "config error" in rejected["message"]
            # 3. A plugin file that does not import: rejected too.
            mount.publish({"pipeline.yaml": _config(queue_url, bucket, "v4"),
                           "stamp.py": "this is not python\n"})
            wait_for(lambda: len(process.events("reload_rejected")) == 2, timeout=20,
                     message="the second rejection")
            assert "stamp" in process.events("reload_rejected")[1]["message"]
            feeder.join()
            wait_for(lambda: len(stored_objects(s3, bucket)) >= len(feeder.sent), timeout=60,
                     message="every message stored")
            wait_for(lambda: queue_counts(sqs, queue_url) == (0, 0), timeout=30)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                metrics = parse_prometheus(r.read().decode())
        process.proc.send_signal(signal.SIGTERM)
        assert process.finish() == 0
    finally:
        process.stop()

    documents = _check_exactly_once(s3, bucket, feeder.sent)
    versions = {doc["version"] for doc in documents.values()}
    stamps = {doc["stamp"] for doc in documents.values()}
    assert versions == {"v1", "v2"} and stamps == {"A", "B"}
    # Each document is consistent: one pipeline or the other, never a mix.
    assert {(d["version"], d["stamp"]) for d in documents.values()} == {("v1", "A"), ("v2", "B")}
    assert prober.statuses and set(prober.statuses) == {200}, set(prober.statuses)
    assert metrics['sqs_processor_config_reloads_total{outcome="ok"}'] == 1
    assert metrics['sqs_processor_config_reloads_total{outcome="rejected"}'] == 2


def test_sighup_reloads_when_watching_is_off(tmp_path, aws_env, sqs, s3, queue_url, bucket):
    folder = tmp_path / "conf"
    folder.mkdir()
    path = folder / "pipeline.yaml"
    watch_off = {"service": {"health_port": 0, "health_host": "127.0.0.1",
                             "shutdown_grace_seconds": 10, "reload_on_change": False}}
    path.write_text(_config(queue_url, bucket, "v1", **watch_off), encoding="utf-8")
    (folder / "stamp.py").write_text(STAMP.format(value="A"), encoding="utf-8")
    process = Process(["run", "--config", str(path), "--log-format", "json"], cli_env(aws_env))
    try:
        process.wait_event("started")
        first = sqs.send_message(QueueUrl=queue_url, MessageBody='{"first": 1}')["MessageId"]
        wait_for(lambda: len(stored_objects(s3, bucket)) == 1)
        path.write_text(_config(queue_url, bucket, "v2-longer", **watch_off), encoding="utf-8")
        time.sleep(2.5)  # watching is off: nothing happens on its own
        assert not any('"reload_started"' in line for line in process.lines)
        process.proc.send_signal(signal.SIGHUP)
        assert process.wait_event("reloaded", timeout=20)["outcome"] == "ok"
        # The previous pipeline drains in words that cannot be read as the process stopping.
        draining = process.wait_event("draining", timeout=20)["message"]
        assert draining.startswith("draining the previous pipeline: finishing its in-flight")
        assert process.wait_event("drained", timeout=30)["message"].startswith(
            "previous pipeline drained: ")
        assert process.wait_event("reload_started")["message"].startswith("reloading ")
        assert not process.events("stopping") and not process.events("stopped")
        assert not any("stopping: finishing in-flight" in line for line in process.lines)
        second = sqs.send_message(QueueUrl=queue_url, MessageBody='{"second": 2}')["MessageId"]
        wait_for(lambda: len(stored_objects(s3, bucket)) == 2)
        process.proc.send_signal(signal.SIGTERM)
        assert process.finish() == 0
        assert len(process.events("stopping")) == 1  # the real shutdown keeps its words
    finally:
        process.stop()
    documents = {d["message_id"]: d for d in stored_objects(s3, bucket).values()}
    assert documents[first]["version"] == "v1"
    assert documents[second]["version"] == "v2-longer"
