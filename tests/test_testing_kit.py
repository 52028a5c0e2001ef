"""The test kit (``sqs_processor.testing``) keeps the engine's rules, in one call, without AWS.

What a plugin author relies on: drop means acknowledged, failure means not acknowledged, the
sink sees what the transforms produced, stored documents are what JSON holds, YAML options are
validated exactly as in production, and plugins registered for one test are gone in the next.
"""

from __future__ import annotations

import base64
import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from helpers.support import ROOT

from sqs_processor import ConfigError, Option, Record, TransformSpec, hookimpl
from sqs_processor.testing import (
    ListSink,
    ListSource,
    PluginSandbox,
    RecordingAcker,
    make_message,
    run_pipeline,
)

SHOUT = '''
from sqs_processor import Option, TransformSpec, hookimpl


def build(options, context):
    field = options["field"]

    def shout(record):
        record.document[field] = record.message.body.upper()
        return record

    return shout


@hookimpl
def sqs_processor_transforms():
    return TransformSpec(name="shout", factory=build, description="Upper-cases the body.",
                         options=(Option("field", str, "shouted", "Where to put it."),))
'''


class Stamp:
    """A plugin instance: registers ``stamp``, which drops bodies starting with 'skip'."""

    @hookimpl
    def sqs_processor_transforms(self):
        def build(options, context):
            def stamp(record: Record) -> Record | None:
                if record.message.body.startswith("skip"):
                    return None
                record.document["stamp"] = options["value"]
                record.metadata["stamped"] = True
                return record

            return stamp

        return TransformSpec("stamp", build, "Stamps documents.",
                             (Option("value", int, 1, "The stamp.", minimum=0, maximum=9),))


def test_make_message_builds_an_envelope_in_the_sqs_sources_shape():
    sent = datetime(2025, 11, 28, 14, 30, 0, 123000, tzinfo=UTC)
    message = make_message({"order": 7}, message_id="id-1", sent_at=sent, receive_count=3,
                           message_attributes={"tenant": "acme", "size": 12, "raw": b"\x00\xff",
                                               "kept": {"DataType": "String.custom",
                                                        "StringValue": "x"}})
    assert message.body == '{"order":7}'
    assert message.receipt_handle == "receipt-id-1"
    assert message.sent_at == sent
    assert message.receive_count == 3
    assert message.attributes["SentTimestamp"] == "1764340200123"
    assert dict(message.message_attributes["tenant"]) == {"DataType": "String",
                                                         "StringValue": "acme"}
    assert dict(message.message_attributes["size"]) == {"DataType": "Number",
                                                       "StringValue": "12"}
    assert base64.b64decode(message.message_attributes["raw"]["BinaryValue"]) == b"\x00\xff"
    assert message.message_attributes["kept"]["DataType"] == "String.custom"
    with pytest.raises(TypeError, match="not bool"):
        make_message("x", message_attributes={"flag": True})
    with pytest.raises(ValueError, match="timezone-aware"):
        make_message("x", sent_at=datetime(2025, 1, 1))


def test_drops_are_acknowledged_and_written_messages_reach_the_sink_in_order():
    result = run_pipeline(["one", "skip me", '{"n": 2}'], transforms=["json_parse", "stamp"],
                          plugins=[Stamp()])
    assert [d["body"] for d in result.documents] == ["one", '{"n": 2}']
    assert result.documents[1] == {"message_id": "message-3", "body": '{"n": 2}',
                                   "parsed_body": {"n": 2}, "stamp": 1}
    assert [m.message_id for m in result.dropped] == ["message-2"]
    assert result.acker.acked_ids == ["message-1", "message-2", "message-3"]
    assert result.outcome("message-2").stage == "transform:stamp"
    assert result.written[0].metadata == {"stamped": True}  # metadata reaches the sink
    assert result.failures == [] and result.failed == []


def test_yaml_options_are_validated_as_in_production():
    with pytest.raises(ConfigError) as caught:
        run_pipeline(["x"], transforms=[{"type": "stamp", "valeu": 3}], plugins=[Stamp()])
    assert str(caught.value).startswith(
        "transforms[0].valeu: is not an option of this component; did you mean 'value'?")
    with pytest.raises(ConfigError, match=r"transforms\[0\].value: 12 is out of range"):
        run_pipeline(["x"], transforms=[{"type": "stamp", "value": 12}], plugins=[Stamp()])
    with pytest.raises(ConfigError, match=r"transforms\[0\].type: 'stmap' is not a known "
                                          r"transform; did you mean 'stamp'\?"):
        run_pipeline(["x"], transforms=["stmap"], plugins=[Stamp()])


def test_a_failure_is_not_acknowledged_and_raise_errors_gives_the_original_exception():
    class Fragile:
        @hookimpl
        def sqs_processor_transforms(self):
            def fragile(record):
                return record if record.message.body != "bad" else 1 / 0

            return TransformSpec("fragile", lambda options, context: fragile)

    result = run_pipeline(["ok", "bad"], transforms=["fragile"], plugins=[Fragile()])
    assert [m.message_id for m in result.failed] == ["message-2"]
    assert result.acker.acked_ids == ["message-1"]
    assert str(result.failures[0]).startswith(
        "message message-2 failed at transform:fragile (module Fragile-")
    with pytest.raises(ZeroDivisionError):
        run_pipeline(["bad"], transforms=["fragile"], plugins=[Fragile()], raise_errors=True)


def test_the_list_sink_stores_what_json_holds_and_is_idempotent_per_message_id():
    sink = ListSink()
    message = make_message("x", message_id="same")
    first = sink.write(Record(message, {"when": datetime(2025, 1, 1, tzinfo=UTC), "n": 1}))
    second = sink.write(Record(message, {"n": 2}))
    assert (first.created, second.created) == (True, False)
    assert sink.documents == [{"when": "2025-01-01T00:00:00+00:00", "n": 1}]
    result = run_pipeline([make_message(body, message_id="dup") for body in ("a", "b")])
    assert [o.result.created for o in result.outcomes] == [True, False]  # a redelivery
    assert result.acker.acked_ids == ["dup", "dup"]


def test_a_document_json_cannot_hold_fails_at_the_sink_like_s3():
    class Setter:
        @hookimpl
        def sqs_processor_transforms(self):
            def put_a_set(record):
                record.document["tags"] = {"a", "b"}
                return record

            return TransformSpec("put_set", lambda options, context: put_a_set)

    result = run_pipeline(["x"], transforms=["put_set"], plugins=[Setter()])
    [failure] = result.failures
    assert failure.stage == "sink:testing.list"
    assert type(failure.error).__name__ == "MessageError"


def test_run_pipeline_takes_a_yaml_file_its_plugins_and_its_environment(tmp_path: Path):
    (tmp_path / "dropins").mkdir()
    (tmp_path / "dropins" / "shout.py").write_text(SHOUT)
    config = tmp_path / "pipeline.yaml"
    config.write_text(yaml.safe_dump({
        "plugins": {"paths": ["dropins"]},
        "source": {"type": "sqs", "queue_url": "${SQS_QUEUE_URL}"},  # replaced by the kit
        "transforms": ["json_parse", {"type": "shout", "field": "${SHOUT_FIELD:-loud}"}],
        "sink": {"type": "s3", "bucket": "${S3_BUCKET_NAME}"},
        "ack": {"type": "sqs_delete"},
    }))
    result = run_pipeline(["hey"], config=config, environ={"SHOUT_FIELD": "volume"})
    assert result.documents == [{"message_id": "message-1", "body": "hey", "volume": "HEY"}]
    assert result.written[0].message.body == "hey"
    # The same pipeline from a dict, with the transforms overridden.
    document = yaml.safe_load(config.read_text())
    document["plugins"]["paths"] = [str(tmp_path / "dropins")]
    result = run_pipeline(["hey"], config=document, transforms=["shout"], environ={})
    assert result.documents[0]["shouted"] == "HEY"


def test_lifecycle_hooks_are_called_and_their_errors_collected():
    class Observer:
        def __init__(self):
            self.events = []

        @hookimpl
        def sqs_processor_batch_received(self, messages):
            self.events.append(("received", len(messages)))

        @hookimpl
        def sqs_processor_message_written(self, record):
            self.events.append(("written", record.message.message_id))

        @hookimpl
        def sqs_processor_batch_acked(self, messages):
            self.events.append(("acked", [m.message_id for m in messages]))
            raise RuntimeError("observer bug")

        @hookimpl
        def sqs_processor_shutdown(self, pipeline):
            self.events.append(("shutdown", pipeline.stats.snapshot()["processed"]))

    observer = Observer()
    source = [f"m{i}" for i in range(12)]
    result = run_pipeline(source, plugins=[observer])
    assert observer.events[0] == ("received", 10)  # the kit's source returns batches of ten
    assert ("received", 2) in observer.events
    assert observer.events[-1] == ("shutdown", 12)
    acked = [e[1] for e in observer.events if e[0] == "acked"]
    assert [len(ids) for ids in acked] == [10, 2] and acked[0][:2] == ["message-1", "message-2"]
    assert len(result.observer_errors) == 2
    assert result.observer_errors[0].startswith("sqs_processor_batch_acked of plugin Observer-")
    assert result.observer_errors[0].endswith("raised RuntimeError: observer bug")


def test_the_pieces_work_on_their_own():
    source = ListSource(["a", "b", "c"], max_batch=2)
    assert [m.message_id for m in source.receive()] == ["message-1", "message-2"]
    assert [m.body for m in source.receive()] == ["c"]
    assert source.receive() == []
    acker = RecordingAcker(fail={"message-1"})
    messages = [make_message("a", message_id="message-1"), make_message("b")]
    [failure] = acker.ack(messages)
    assert failure.message is messages[0] and failure.retryable is False
    assert acker.acked == [messages[1]]
    with pytest.raises(ValueError, match="from 1 to 10"):
        ListSource(max_batch=11)


def test_the_sandbox_registers_plugins_for_one_test(sqs_plugins, tmp_path: Path):
    path = tmp_path / "shout.py"
    path.write_text(SHOUT)
    module = sqs_plugins.load_file(path)
    stamp = sqs_plugins.register(Stamp())
    manager = sqs_plugins.manager
    transforms = manager.components("transform")
    assert str(transforms["shout"].provider) == f"file {path.resolve()}"
    assert {"stamp", "json_parse", "enrich"} <= set(transforms)
    result = sqs_plugins.run(["hi"], transforms=["shout", {"type": "stamp", "value": 7}])
    assert result.documents[0] == {"message_id": "message-1", "body": "hi", "shouted": "HI",
                                   "stamp": 7}
    sqs_plugins.unregister(stamp)
    assert "stamp" not in sqs_plugins.manager.components("transform")
    with pytest.raises(ValueError, match="already registered"):
        sqs_plugins.register(module)


def test_leaving_a_sandbox_removes_its_plugins_and_drop_in_modules(tmp_path: Path):
    path = tmp_path / "shout.py"
    path.write_text(SHOUT)
    with PluginSandbox() as sandbox:  # what the sqs_plugins fixture does around each test
        module = sandbox.load_file(path)
        sandbox.register(Stamp())
        assert module.__name__ in sys.modules
        assert {"shout", "stamp"} <= set(sandbox.manager.components("transform"))
    assert sandbox.plugins == []
    assert module.__name__ not in sys.modules
    assert not {"shout", "stamp"} & set(sandbox.manager.components("transform"))


def test_importing_the_kit_does_not_import_pytest():
    code = ("import sys, sqs_processor.testing; "
            "assert 'pytest' not in sys.modules, 'pytest was imported'; print('ok')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_the_fixture_is_available_through_the_pytest11_entry_point(tmp_path: Path):
    """A plugin author's project: no conftest, the fixture comes with the installed package."""
    (tmp_path / "test_author.py").write_text(textwrap.dedent('''
        def test_fixture_is_there(sqs_plugins):
            assert sqs_plugins.run(["x"]).documents == [{"message_id": "message-1", "body": "x"}]
        '''))
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             str(tmp_path)], capture_output=True, text=True, timeout=120,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout


def test_the_kit_module_is_documented_for_plugin_authors():
    guide = (ROOT / "docs" / "plugins.md").read_text(encoding="utf-8")
    for name in ("run_pipeline", "make_message", "ListSink", "sqs_plugins",
                 "pytest_plugins = [\"sqs_processor.pytest_plugin\"]"):
        assert name in guide, f"{name} is not in docs/plugins.md"


def test_a_plugin_manager_can_unregister_a_plugin_by_object_or_name(sqs_plugins):
    stamp = sqs_plugins.register(Stamp(), name="stamp_plugin")
    manager = sqs_plugins.manager
    assert "stamp" in manager.components("transform")
    manager.unregister(manager.pm.get_plugin("stamp_plugin"))
    assert "stamp" not in manager.components("transform")  # the component cache is dropped
    with pytest.raises(ValueError, match="is not registered"):
        manager.unregister("stamp_plugin")
    other = sqs_plugins.manager  # a fresh manager still has it: the sandbox owns registrations
    other.unregister("stamp_plugin")
    assert "stamp" not in other.components("transform")
    assert stamp in sqs_plugins.plugins
