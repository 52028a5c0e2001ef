"""A broken plugin is reported once, clearly, and a plugin's error stays that plugin's error.

* Failing to import, failing its own option checks, or raising at startup: one error naming
  the plugin and its file (and line), at ``validate`` time when possible.
* Raising while processing a message: only that message fails; it is not deleted, so SQS
  redelivers it; the failure is counted against the plugin's stage.
* Transforms change the document, never the envelope the acknowledgement needs.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
from helpers.support import (
    CLI,
    cli_env,
    pipeline_config,
    queue_counts,
    stored_objects,
    wait_for,
    write_config,
)

from sqs_processor import ConfigError, Record, SinkSpec, SourceSpec, TransformSpec, hookimpl
from sqs_processor.config import load_config
from sqs_processor.loaders import build_plugin_manager
from sqs_processor.pipeline import build_pipeline
from sqs_processor.runner import Runner
from sqs_processor.testing import ListSink, ListSource, StartError, make_message, run_pipeline

FAKE_QUEUE = "https://sqs.us-east-1.amazonaws.com/123456789012/isolation"


def dropin(folder: Path, name: str, code: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.py"
    path.write_text(textwrap.dedent(code).lstrip(), encoding="utf-8")
    return path


def line_of(path: Path, text: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if text in line)


def offline(tmp_path: Path, **sections: Any) -> Path:
    config = pipeline_config(FAKE_QUEUE, "isolation-bucket", aws={"region": "us-east-1"},
                             **sections)
    return write_config(tmp_path, config)


def validate(path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, "validate", "--config", str(path)], capture_output=True,
                          text=True, timeout=60, env=cli_env({}, **env))


STRICT_PLUGIN = '''
from sqs_processor import ConfigError, Option, TransformSpec, hookimpl


def build(options, context):
    if options["threshold"] % 2:
        raise ConfigError(f"{context.where}.threshold", "must be even",
                          value=options["threshold"])
    if options["threshold"] == 0:
        raise ZeroDivisionError("threshold of zero")
    return lambda record: record


@hookimpl
def sqs_processor_transforms():
    return TransformSpec(name="strict", factory=build, description="Checks its options.",
                         options=(Option("threshold", int, 2, "An even number.",
                                         minimum=0, maximum=10),))
'''


# --------------------------------------------------------------------------------------------
# At validate time
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("block", "expected"), [
    ({"threshold": 11}, "transforms[0].threshold: 11 is out of range; expected an integer from "
                        "0 to 10"),
    ({"treshold": 4}, "transforms[0].treshold: is not an option of this component; did you "
                      "mean 'threshold'?"),
    ({"threshold": 3}, "transforms[0].threshold: 3 must be even"),
])
def test_a_plugins_option_error_names_the_plugin_and_its_file(tmp_path, block, expected):
    path = dropin(tmp_path / "dropins", "strict", STRICT_PLUGIN)
    config = offline(tmp_path, plugins={"paths": ["dropins"]},
                     transforms=[{"type": "strict", **block}])
    result = validate(config)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"sqs-processor: config error: {expected} [transform 'strict' from file {path}]"]


def test_a_plugin_factory_that_raises_is_named_with_its_file_and_line(tmp_path):
    path = dropin(tmp_path / "dropins", "strict", STRICT_PLUGIN)
    config = offline(tmp_path, plugins={"paths": ["dropins"]},
                     transforms=[{"type": "strict", "threshold": 0}])
    result = validate(config)
    assert result.returncode == 2
    line = line_of(path, "raise ZeroDivisionError")
    assert result.stderr.splitlines() == [
        f"sqs-processor: config error: transforms[0]: transform 'strict' from file {path} could "
        f"not be built: ZeroDivisionError: threshold of zero (line {line})"]


def test_builtin_option_errors_stay_as_they_were():
    # The README quotes these lines; a built-in needs no "[from ...]" context.
    error = ConfigError("source.max_messages", "is out of range", value="11",
                        expected="an integer from 1 to 10", env=("MAX_MESSAGES_PER_POLL",))
    assert str(error) == ("source.max_messages: '11' is out of range; expected an integer from 1 "
                          "to 10 (from $MAX_MESSAGES_PER_POLL)")


def test_a_plugin_declaring_an_impossible_option_is_broken_and_named_when_used(tmp_path):
    path = dropin(tmp_path / "dropins", "sloppy", '''
        from sqs_processor import Option, TransformSpec, hookimpl


        @hookimpl
        def sqs_processor_transforms():
            return TransformSpec(name="sloppy", factory=lambda o, c: (lambda r: r),
                                 options=(Option("size", int, "large"),))
        ''')
    config = offline(tmp_path, plugins={"paths": ["dropins"]}, transforms=["sloppy"])
    result = validate(config)
    assert result.returncode == 2
    [line] = result.stderr.splitlines()[-1:]
    assert line.startswith("sqs-processor: config error: transforms[0].type: 'sloppy' is not a "
                           "known transform")
    assert (f"plugins that failed to load: file {path} (sqs_processor_transforms raised "
            "ValueError: transform 'sloppy': option 'size' has an invalid default: size: 'large' "
            f"has the wrong type; expected an integer (line {line_of(path, 'return')}))") in line


def test_a_module_plugin_that_fails_to_import_names_the_file_and_line(tmp_path, monkeypatch):
    name = f"iso_mod_{uuid.uuid4().hex[:8]}"
    site = tmp_path / "site"
    module_file = dropin(site, name, '''
        import json

        SETTINGS = json.loads("{not json")
        ''')
    monkeypatch.syspath_prepend(str(site))
    config = offline(tmp_path, plugins={"modules": [name]})
    with pytest.raises(ConfigError) as caught:
        build_plugin_manager(load_config(config, environ={}).plugin_settings)
    sys.modules.pop(name, None)
    assert caught.value.key == "plugins.modules[0]"
    assert str(caught.value).startswith(f"plugins.modules[0]: {name!r} failed to import: "
                                        "JSONDecodeError: Expecting property name")
    assert str(caught.value).endswith(f"({module_file}, line 3)")


# --------------------------------------------------------------------------------------------
# At startup
# --------------------------------------------------------------------------------------------

STARTUP_HOOK = '''
from sqs_processor import hookimpl


@hookimpl
def sqs_processor_startup(pipeline):
    raise ConnectionError("metrics backend unreachable")
'''

SINK_THAT_CANNOT_START = '''
from sqs_processor import Sink, SinkSpec, WriteResult, hookimpl


class Refusing(Sink):
    def start(self):
        raise PermissionError("no access to /archive")

    def write(self, record):
        return WriteResult("nowhere")


@hookimpl
def sqs_processor_sinks():
    return SinkSpec(name="refusing", factory=lambda o, c: Refusing())
'''


def test_a_startup_hook_that_raises_stops_the_run_with_one_error_naming_file_and_line(
    tmp_path, caplog
):
    path = dropin(tmp_path / "dropins", "noisy", STARTUP_HOOK)
    config = load_config(offline(tmp_path, plugins={"paths": ["dropins"]}), environ={})
    pipeline = build_pipeline(config, build_plugin_manager(config.plugin_settings))
    runner = Runner(pipeline)
    with caplog.at_level(logging.ERROR, logger="sqs_processor.runner"):
        assert runner.run() == 1
    assert runner.state == "stopped"
    assert pipeline.stats.snapshot()["received"] == 0
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == [
        f"could not start plugin file {path}: sqs_processor_startup raised: ConnectionError: "
        f"metrics backend unreachable (line {line_of(path, 'raise ConnectionError')})"]


def test_cli_run_exits_1_when_a_plugin_cannot_start(tmp_path):
    path = dropin(tmp_path / "dropins", "refusing", SINK_THAT_CANNOT_START)
    document = pipeline_config(FAKE_QUEUE, "unused", aws={"region": "us-east-1"},
                               plugins={"paths": ["dropins"]})
    document["sink"] = {"type": "refusing"}
    config = write_config(tmp_path, document)
    env = cli_env({}, AWS_ACCESS_KEY_ID="x", AWS_SECRET_ACCESS_KEY="x",
                  AWS_EC2_METADATA_DISABLED="true")
    result = subprocess.run([*CLI, "run", "--config", str(config)], capture_output=True,
                            text=True, timeout=60, env=env)
    assert result.returncode == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1, result.stderr
    assert errors[0].endswith(
        f"could not start the sink 'refusing' from file {path}: PermissionError: no access to "
        f"/archive (line {line_of(path, 'raise PermissionError')})")


def test_the_test_kit_raises_start_errors_the_same_way(tmp_path, sqs_plugins):
    path = dropin(tmp_path, "noisy", STARTUP_HOOK)
    sqs_plugins.load_file(path)
    with pytest.raises(StartError, match=r"could not start plugin file .*noisy.py: "
                                         r"sqs_processor_startup raised: ConnectionError"):
        sqs_plugins.run(["never processed"])


# --------------------------------------------------------------------------------------------
# While processing messages
# --------------------------------------------------------------------------------------------


class Misbehaving:
    """Transforms that break the rules in different ways, chosen by the message body."""

    @hookimpl
    def sqs_processor_transforms(self):
        def misbehave(record: Record) -> Record | None:
            body = record.message.body
            if body == "raise":
                raise ValueError("cannot handle this one")
            if body == "exit":
                sys.exit(3)
            if body == "swap-envelope":
                return Record(make_message("forged", message_id=record.message.message_id,
                                           receipt_handle="forged-handle"), record.document)
            if body == "edit-envelope":
                record.message.message_attributes["tenant"]["StringValue"] = "other"
            if body == "wrong-type":
                return {"not": "a record"}  # type: ignore[return-value]
            record.document["seen"] = True
            return record

        return TransformSpec("misbehave", lambda options, context: misbehave)


BODIES = ["fine-1", "raise", "exit", "swap-envelope", "edit-envelope", "wrong-type", "fine-2"]


def test_each_kind_of_transform_misbehaviour_fails_only_its_own_message():
    messages = [make_message(b, message_id=b, message_attributes={"tenant": "acme"})
                for b in BODIES]
    result = run_pipeline(messages, transforms=["misbehave", "json_parse"],
                          plugins=[Misbehaving()])

    assert [d["message_id"] for d in result.documents] == ["fine-1", "fine-2"]
    assert all(d["seen"] for d in result.documents)
    assert result.acker.acked_ids == ["fine-1", "fine-2"]  # failures are never acknowledged
    errors = {f.message.message_id: (f.stage, type(f.error).__name__, str(f.error))
              for f in result.failures}
    assert errors == {
        "raise": ("transform:misbehave", "ValueError", "cannot handle this one"),
        "exit": ("transform:misbehave", "SystemExit", "3"),
        "swap-envelope": ("transform:misbehave", "TypeError",
                          "replaced the message envelope; transforms may change "
                          "record.document, not record.message"),
        "edit-envelope": ("transform:misbehave", "TypeError",
                          "'mappingproxy' object does not support item assignment"),
        "wrong-type": ("transform:misbehave", "TypeError",
                       "returned dict, expected a Record or None"),
    }
    assert result.failures_by_stage == {"transform:misbehave": 5}
    assert all(str(f.provider).startswith("module Misbehaving-") for f in result.failures)
    # The envelope the acknowledgement uses is untouched.
    edited = next(o for o in result.outcomes if o.message.message_id == "edit-envelope")
    assert edited.message.message_attributes["tenant"]["StringValue"] == "acme"
    assert edited.message.receipt_handle == "receipt-edit-envelope"


def test_a_transforms_document_is_its_own_copy_and_the_envelope_stays_read_only():
    message = make_message('{"a": 1}', attributes={"Custom": "x"})
    sent_attributes = dict(message.attributes)

    class Vandal:
        @hookimpl
        def sqs_processor_transforms(self):
            def vandalise(record: Record) -> Record:
                record.document["attributes"]["SentTimestamp"] = "0"
                record.document["parsed_body"]["a"] = 2
                record.document["body"] = "changed"
                return record

            return TransformSpec("vandal", lambda options, context: vandalise)

    result = run_pipeline([message], transforms=["json_parse", "enrich", "vandal"],
                          plugins=[Vandal()])
    [document] = result.documents
    assert document["attributes"]["SentTimestamp"] == "0" and document["body"] == "changed"
    assert dict(message.attributes) == sent_attributes  # enrich copied; the envelope is intact
    assert message.body == '{"a": 1}'
    with pytest.raises(TypeError):
        message.attributes["SentTimestamp"] = "0"  # type: ignore[index]
    with pytest.raises(AttributeError):
        message.receipt_handle = "other"  # type: ignore[misc]


def test_a_sink_that_breaks_its_contract_fails_the_message_at_the_sink_stage():
    class Sloppy(ListSink):
        def write(self, record):
            return "stored somewhere"

    result = run_pipeline(["a"], sink=Sloppy())
    [failure] = result.failures
    assert failure.stage == "sink:testing.list"
    assert str(failure.error) == "write() returned str, expected a WriteResult"
    assert result.acker.acked == []


class MemoryComponents:
    """The kit's in-memory source and sink, for the real, threaded runner."""

    def __init__(self, bodies: list[str]) -> None:
        self.source = ListSource([make_message(b, message_id=f"m{i}")
                                  for i, b in enumerate(bodies)])
        self.sink = ListSink()
        self.failed_stages: list[str] = []
        self.lock = threading.Lock()

    @hookimpl
    def sqs_processor_sources(self):
        return SourceSpec("memory", lambda options, context: self.source)

    @hookimpl
    def sqs_processor_sinks(self):
        return SinkSpec("memory", lambda options, context: self.sink)

    @hookimpl
    def sqs_processor_message_failed(self, stage):
        with self.lock:
            self.failed_stages.append(stage)


def test_a_plugin_calling_sys_exit_does_not_kill_the_runners_worker(tmp_path):
    bodies = ["exit", "fine-1", "raise", "fine-2", "exit", "fine-3"]
    components = MemoryComponents(bodies)
    document = pipeline_config(FAKE_QUEUE, "unused", aws={"region": "us-east-1"},
                               transforms=["misbehave"], service={"workers": 1})
    document.update(source={"type": "memory"}, sink={"type": "memory"},
                    ack={"type": "sqs_delete", "queue_url": FAKE_QUEUE})
    config = load_config(write_config(tmp_path, document), environ={})
    manager = build_plugin_manager(config.plugin_settings, extra_plugins=[
        ("memory", components), ("misbehave", Misbehaving())])
    pipeline = build_pipeline(config, manager)
    pipeline.acker.ack = lambda messages: []  # no SQS here: acknowledge nothing, fail nothing
    runner = Runner(pipeline)
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: pipeline.stats.snapshot()["processed"] == 3, timeout=10)
        assert runner.liveness() == (True, "polling")  # the single worker is still alive
    finally:
        runner.stop()
        thread.join(10)
    assert sorted(r.message.message_id for r in components.sink.records) == ["m1", "m3", "m5"]
    assert pipeline.stats.failures_by_stage() == {"transform:misbehave": 3}
    assert components.failed_stages == ["transform:misbehave"] * 3


PICKY = '''
from sqs_processor import TransformSpec, hookimpl


def picky(record):
    if record.message.body == "secret-9f3e":
        raise ValueError("cannot handle this message")
    return record


@hookimpl
def sqs_processor_transforms():
    return TransformSpec(name="picky", factory=lambda o, c: picky)
'''


def test_a_transform_error_leaves_only_that_message_in_the_queue_and_counts_it_per_stage(
    sqs, s3, queue_url, bucket, run_pipeline, tmp_path, caplog
):
    dropin(tmp_path / "dropins", "picky", PICKY)
    sent = {body: sqs.send_message(QueueUrl=queue_url, MessageBody=body)["MessageId"]
            for body in ("good-1", "secret-9f3e", "good-2")}
    config = pipeline_config(queue_url, bucket, plugins={"paths": [str(tmp_path / "dropins")]},
                             transforms=["json_parse", "picky", "enrich"])
    with caplog.at_level(logging.WARNING, logger="sqs_processor.runner"):
        running = run_pipeline(config)
        wait_for(lambda: running.stats["processed"] == 2 and running.stats["failed"] == 1,
                 message="two stored, one failed")
        # The poison message is received, not deleted: in flight until its visibility timeout.
        wait_for(lambda: queue_counts(sqs, queue_url) == (0, 1), message="poison in flight")
        assert running.stop() == 0

    stored = {doc["message_id"] for doc in stored_objects(s3, bucket).values()}
    assert stored == {sent["good-1"], sent["good-2"]}
    assert running.pipeline.stats.failures_by_stage() == {"transform:picky": 1}
    [warning] = [r for r in caplog.records if getattr(r, "event", None) == "failed"]
    assert warning.stage == "transform:picky" and warning.message_id == sent["secret-9f3e"]
    assert "secret-9f3e" not in warning.getMessage()  # the body is never logged
    assert str(running.pipeline.provider_of_stage("transform:picky")).endswith("picky.py")
