"""The example pipelines in configs/examples: each through the test kit, and once end to end.

The kit runs the YAML file as shipped (its drop-in plugins, its transforms and options) with the
source, sink and acker in memory. The end-to-end runs use the same file against SQS and S3 over
HTTP (moto server), with only the queue, bucket and poll timings changed for the test.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from helpers.support import ROOT, queue_counts, stored_objects, wait_for

from sqs_processor import ConfigError, Record
from sqs_processor.config import parse_config
from sqs_processor.loaders import build_plugin_manager, load_plugin_file
from sqs_processor.pipeline import build_pipeline
from sqs_processor.testing import StartError, make_message, run_pipeline

EXAMPLES = ROOT / "configs" / "examples"
CARD = "4111111111111111"
ORDER = {"order": 7, "card": {"number": CARD, "expiry": "12/29"},
         "customer": {"name": "Zoë", "email": "zoe@example.com",
                      "phones": ["+1 555 0100", "+44 20 7946 0000"]}}


def example(name: str) -> dict[str, Any]:
    return yaml.safe_load((EXAMPLES / name).read_text(encoding="utf-8"))


def for_emulator(name: str, queue_url: str, bucket: str, **sink: Any) -> dict[str, Any]:
    """The example's YAML pointed at the test queue and bucket, with short poll timings."""
    config = example(name)
    config["plugins"]["paths"] = [str(EXAMPLES / "plugins")]
    config["service"] = {**config.get("service", {}), "health_port": 0,
                         "health_host": "127.0.0.1", "shutdown_grace_seconds": 10}
    config["source"].update(queue_url=queue_url, wait_time_seconds=1, poll_interval_seconds=1)
    config["sink"].update(sink or {"bucket": bucket})
    return config


@pytest.fixture(autouse=True)
def _no_prefix_override(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("S3_PREFIX", "ARCHIVE_DIR", "SQS_PROCESSOR_PLUGINS_BLOCK",
                 "SQS_PROCESSOR_PLUGINS_ALLOW", "SQS_PROCESSOR_PLUGINS_AUTOLOAD"):
        monkeypatch.delenv(name, raising=False)


# --------------------------------------------------------------------------------------------
# redact
# --------------------------------------------------------------------------------------------


def test_redact_masks_the_configured_paths_in_parsed_body_and_body():
    result = run_pipeline([ORDER, "plain text with 4111111111111111", '{"other": 1}'],
                          config=EXAMPLES / "redact.yaml", environ={})
    masked, plain, other = result.documents
    assert masked["parsed_body"] == {
        "order": 7, "card": {"number": "[REDACTED]1111", "expiry": "12/29"},
        "customer": {"name": "Zoë", "email": "***", "phones": ["***", "***"]}}
    assert orjson.loads(masked["body"]) == masked["parsed_body"]  # the stored text is masked too
    stored = orjson.dumps(masked).decode()
    for secret in (CARD, "zoe@example.com", "555 0100", "7946"):
        assert secret not in stored
    assert "receipt_handle" not in masked and "received_at" in masked  # enrich ran
    assert plain["body"] == "plain text with 4111111111111111"  # not JSON: nothing to address
    assert other["body"] == '{"other": 1}' and other["parsed_body"] == {"other": 1}
    assert result.acker.acked_ids == ["message-1", "message-2", "message-3"]


def test_redact_paths_reach_list_items_by_wildcard_and_index():
    steps = ["json_parse", {"type": "redact", "paths": ["items.*.iban", "items.0.name"]}]
    body = {"items": [{"iban": "DE89", "name": "a"}, {"iban": "FR76", "name": "b"}, 5]}
    result = run_pipeline([body], config=EXAMPLES / "redact.yaml", transforms=steps, environ={})
    assert result.documents[0]["parsed_body"] == {"items": [
        {"iban": "[REDACTED]", "name": "[REDACTED]"}, {"iban": "[REDACTED]", "name": "b"}, 5]}


@pytest.mark.parametrize(("steps", "key", "fragment"), [
    ([{"type": "redact", "paths": ["card.number"]}, "json_parse"], "transforms[0]",
     "comes before json_parse (transforms[1]), which would store the unmasked body again"),
    (["json_parse", {"type": "redact", "paths": ["card..number"]}], "transforms[1].paths[0]",
     "'card..number' is not a path into the body"),
    (["json_parse", {"type": "redact", "paths": []}], "transforms[1].paths", "is empty"),
    (["json_parse", {"type": "redact", "paths": ["a"], "keep_last": 9}],
     "transforms[1].keep_last", "expected an integer from 0 to 8"),
])
def test_redact_rejects_configurations_that_would_leak_or_do_nothing(steps, key, fragment):
    with pytest.raises(ConfigError) as caught:
        run_pipeline([], config=EXAMPLES / "redact.yaml", transforms=steps, environ={})
    assert caught.value.key == key
    assert fragment in str(caught.value)
    assert str(caught.value).endswith(f"[transform 'redact' from file "
                                      f"{EXAMPLES / 'plugins' / 'redact.py'}]")


def test_redact_pipeline_end_to_end(sqs, s3, queue_url, bucket, run_pipeline):
    message_id = sqs.send_message(QueueUrl=queue_url,
                                  MessageBody=orjson.dumps(ORDER).decode())["MessageId"]
    with run_pipeline(for_emulator("redact.yaml", queue_url, bucket)) as running:
        wait_for(lambda: running.stats["processed"] == 1, message="the message archived")
    [(key, document)] = stored_objects(s3, bucket).items()
    assert key.startswith("redacted/") and key.endswith(f"/{message_id}.json")
    assert document["parsed_body"]["card"]["number"] == "[REDACTED]1111"
    assert CARD not in orjson.dumps(document).decode()
    assert queue_counts(sqs, queue_url) == (0, 0)


# --------------------------------------------------------------------------------------------
# attribute_filter
# --------------------------------------------------------------------------------------------


def _typed(event: str | None, body: str = "{}"):
    attributes = {"event_type": event} if event is not None else {}
    return make_message(body, message_id=f"id-{event}", message_attributes=attributes)


def test_filter_drops_listed_attribute_values_and_keeps_the_rest():
    messages = [_typed("heartbeat"), _typed("order"), _typed(None), _typed("test")]
    result = run_pipeline(messages, config=EXAMPLES / "filter.yaml", environ={})
    assert [d["message_id"] for d in result.documents] == ["id-order", "id-None"]
    assert [m.message_id for m in result.dropped] == ["id-heartbeat", "id-test"]
    assert sorted(result.acker.acked_ids) == sorted(m.message_id for m in messages)
    assert result.outcome("id-test").stage == "transform:attribute_filter"


@pytest.mark.parametrize(("options", "kept"), [
    ({"action": "keep"}, ["id-heartbeat", "id-None"]),  # missing: keep is the default
    ({"action": "keep", "missing": "drop"}, ["id-heartbeat"]),
    ({"action": "drop", "missing": "drop"}, ["id-order"]),
    ({}, ["id-order", "id-None"]),
])
def test_filter_action_and_missing_options(options, kept):
    step = {"type": "attribute_filter", "attribute": "event_type", "values": ["heartbeat"],
            **options}
    messages = [_typed("heartbeat"), _typed("order"), _typed(None)]
    result = run_pipeline(messages, config=EXAMPLES / "filter.yaml", transforms=[step],
                          environ={})
    assert [d["message_id"] for d in result.documents] == kept


def test_filter_options_are_checked():
    step = {"type": "attribute_filter", "attribute": "event type", "values": ["x"]}
    with pytest.raises(ConfigError, match=r"transforms\[0\].attribute: 'event type' is not an "
                                          r"SQS attribute name"):
        run_pipeline([], config=EXAMPLES / "filter.yaml", transforms=[step], environ={})
    step = {"type": "attribute_filter", "attribute": "a", "values": ["x"], "action": "dorp"}
    with pytest.raises(ConfigError, match=r"transforms\[0\].action: 'dorp' is not allowed; "
                                          r"expected one of 'drop', 'keep'"):
        run_pipeline([], config=EXAMPLES / "filter.yaml", transforms=[step], environ={})


def test_filter_pipeline_end_to_end(sqs, s3, queue_url, bucket, run_pipeline):
    def send(event: str) -> str:
        return sqs.send_message(QueueUrl=queue_url, MessageBody=f'{{"e": "{event}"}}',
                                MessageAttributes={"event_type": {"DataType": "String",
                                                                  "StringValue": event}}
                                )["MessageId"]

    kept, dropped = send("order"), send("heartbeat")
    with run_pipeline(for_emulator("filter.yaml", queue_url, bucket)) as running:
        wait_for(lambda: running.stats["processed"] == 2, message="both messages finished")
        assert running.stats["dropped"] == 1
    stored = stored_objects(s3, bucket)
    assert [d["message_id"] for d in stored.values()] == [kept]
    assert dropped not in str(list(stored))
    assert queue_counts(sqs, queue_url) == (0, 0)  # the dropped message was deleted too


# --------------------------------------------------------------------------------------------
# route + routed_s3
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def router() -> Any:
    return load_plugin_file(EXAMPLES / "plugins" / "router.py")


@pytest.mark.parametrize(("value", "route"), [
    ("eu", "eu"), ("EU", "eu"), (" Us ", "us"), ("apac", "apac"),
    ("mars", "other"),  # not in allowed
    ("../../apac", "apac"),  # path characters are removed, not kept
    ("eu/../us", "other"),  # becomes "eu-us", which is not allowed
    (7, "other"), (True, "other"), (None, "other"), ({"a": 1}, "other"), ("", "other"),
    ("\u202eeu", "eu"),
])
def test_route_picks_a_sanitised_allowed_route(value, route):
    body = {"region": value} if value is not None else {}
    result = run_pipeline([body], config=EXAMPLES / "router.yaml", environ={})
    assert result.written[0].metadata["route"] == route
    assert "route" not in result.documents[0]  # metadata is not stored


@pytest.mark.parametrize(("value", "expected"), [
    ("Hello World", "hello-world"), ("a/../b", "a-b"), ("--x--", "x"), ("ÄÖÜ", ""),
    ("x" * 100, "x" * 64), ("..", ""), ("A_b-9", "a_b-9"), (12, "12"), (1.5, ""),
])
def test_sanitise_keeps_only_a_fixed_character_set_and_length(router, value, expected):
    assert router.sanitise(value) == expected
    assert re.fullmatch(r"[a-z0-9_-]*", router.sanitise(value))


def test_route_without_allowed_uses_any_sanitised_value_cut_to_max_length():
    steps = ["json_parse", {"type": "route", "field": "customer.tier", "max_length": 5}]
    bodies = [{"customer": {"tier": "Platinum Plus"}}, {"customer": "flat"}]
    result = run_pipeline(bodies, config=EXAMPLES / "router.yaml", transforms=steps, environ={})
    assert [r.metadata["route"] for r in result.written] == ["plati", "other"]


@pytest.mark.parametrize(("step", "key"), [
    ({"type": "route", "field": "region", "default": "Other"}, "transforms[1].default"),
    ({"type": "route", "field": "region", "allowed": ["eu", "u/s"]}, "transforms[1].allowed[1]"),
    ({"type": "route", "field": "region..x"}, "transforms[1].field"),
])
def test_route_rejects_routes_that_are_not_already_safe(step, key):
    with pytest.raises(ConfigError) as caught:
        run_pipeline([], config=EXAMPLES / "router.yaml", transforms=["json_parse", step],
                     environ={})
    assert caught.value.key == key


def test_routed_s3_sanitises_whatever_route_it_is_given(tmp_path):
    document = example("router.yaml")
    document["plugins"]["paths"] = [str(EXAMPLES / "plugins")]
    config = parse_config(document, base_dir=tmp_path, environ={
        "SQS_QUEUE_URL": "https://sqs.us-east-1.amazonaws.com/1/q", "S3_BUCKET_NAME": "b-1"})
    sink = build_pipeline(config, build_plugin_manager(config.plugin_settings)).sink
    message = make_message("{}", message_id="m-1")
    when = f"{message.sent_at:%Y/%m/%d/%H}"
    for route, segment in [("eu", "eu"), ("../../x", "x"), ("", "other"), (None, "other"),
                           ("A" * 200, "a" * 64)]:
        record = Record(message, {}, {"route": route} if route is not None else {})
        assert sink.key_for(record) == f"by-region/{segment}/{when}/m-1.json"


def test_routed_s3_keeps_the_s3_sinks_own_checks(tmp_path):
    document = example("router.yaml")
    document["plugins"]["paths"] = [str(EXAMPLES / "plugins")]
    document["sink"]["prefix"] = "no-trailing-slash"
    config = parse_config(document, base_dir=tmp_path, environ={
        "SQS_QUEUE_URL": "https://sqs.us-east-1.amazonaws.com/1/q", "S3_BUCKET_NAME": "b-1"})
    with pytest.raises(ConfigError, match=r"sink.prefix: 'no-trailing-slash' does not end with"):
        build_pipeline(config, build_plugin_manager(config.plugin_settings))


def test_router_pipeline_end_to_end(sqs, s3, queue_url, bucket, run_pipeline):
    sent = {region: sqs.send_message(QueueUrl=queue_url,
                                     MessageBody=orjson.dumps({"region": region}).decode()
                                     )["MessageId"]
            for region in ("EU", "us", "../../../etc/passwd", "mars")}
    with run_pipeline(for_emulator("router.yaml", queue_url, bucket)) as running:
        wait_for(lambda: running.stats["processed"] == 4, message="4 messages archived")
    keys = {doc["message_id"]: key for key, doc in stored_objects(s3, bucket).items()}
    for region, route in [("EU", "eu"), ("us", "us"), ("../../../etc/passwd", "other"),
                          ("mars", "other")]:
        assert re.fullmatch(rf"by-region/{route}/\d{{4}}/\d\d/\d\d/\d\d/{sent[region]}\.json",
                            keys[sent[region]])
    assert queue_counts(sqs, queue_url) == (0, 0)


# --------------------------------------------------------------------------------------------
# local_files (a custom sink)
# --------------------------------------------------------------------------------------------


def test_local_files_sink_writes_one_file_per_message_and_keeps_the_first_on_redelivery(
    tmp_path: Path,
):
    first = make_message('{"v": 1}', message_id="m-1")
    again = make_message('{"v": 2}', message_id="m-1", sent_at=first.sent_at)
    result = run_pipeline([first, again, make_message("text", message_id="m-2")],
                          config=EXAMPLES / "local-files.yaml", keep_sink=True,
                          environ={"ARCHIVE_DIR": str(tmp_path / "archive")})
    assert [o.result.created for o in result.outcomes] == [True, False, True]
    files = sorted((tmp_path / "archive").rglob("*.json"))
    assert [f.name for f in files] == ["m-1.json", "m-2.json"]
    assert files[0].parent.relative_to(tmp_path / "archive") == Path(
        f"{first.sent_at:%Y/%m/%d/%H}")
    assert orjson.loads(files[0].read_bytes())["parsed_body"] == {"v": 1}
    assert files[0].read_text().startswith('{\n  "message_id"')  # indent: true
    assert not list((tmp_path / "archive").rglob("*.tmp"))
    assert result.acker.acked_ids == ["m-1", "m-1", "m-2"]


def test_local_files_relative_directory_starts_at_the_config_folder(tmp_path: Path,
                                                                    monkeypatch):
    document = example("local-files.yaml")
    document["plugins"]["paths"] = [str(EXAMPLES / "plugins")]
    document["sink"]["directory"] = "archive"
    (tmp_path / "conf").mkdir()
    path = tmp_path / "conf" / "pipeline.yaml"
    path.write_text(yaml.safe_dump(document))
    monkeypatch.chdir(tmp_path)
    run_pipeline([make_message("x", message_id="m-8")], config=path, keep_sink=True,
                 environ={})
    assert [p.name for p in (tmp_path / "conf" / "archive").rglob("*.json")] == ["m-8.json"]
    assert not (tmp_path / "archive").exists()


def test_local_files_start_fails_naming_the_plugin_file_and_line(tmp_path: Path):
    (tmp_path / "a-file").write_text("not a folder")
    with pytest.raises(StartError) as caught:
        run_pipeline(["x"], config=EXAMPLES / "local-files.yaml", keep_sink=True,
                     environ={"ARCHIVE_DIR": str(tmp_path / "a-file" / "archive")})
    plugin = EXAMPLES / "plugins" / "local_files.py"
    line = next(i for i, text in enumerate(plugin.read_text().splitlines(), 1)
                if "self.directory.mkdir" in text)
    assert str(caught.value).startswith(f"could not start the sink 'local_files' from file "
                                        f"{plugin}: NotADirectoryError: ")
    assert str(caught.value).endswith(f"(line {line})")


def test_local_files_pipeline_end_to_end(sqs, queue_url, bucket, run_pipeline, aws_env,
                                         tmp_path: Path, monkeypatch):
    monkeypatch.setenv("LOCAL_ENDPOINT_URL", aws_env["AWS_ENDPOINT_URL"])
    message_id = sqs.send_message(QueueUrl=queue_url, MessageBody='{"dev": true}')["MessageId"]
    config = for_emulator("local-files.yaml", queue_url, bucket,
                          directory=str(tmp_path / "archive"))
    with run_pipeline(config) as running:
        wait_for(lambda: running.stats["processed"] == 1, message="the message archived")
        assert {spec.name for spec, _ in running.pipeline.health_checks} >= {"local_write"}
    [path] = (tmp_path / "archive").rglob("*.json")
    assert path.name == f"{message_id}.json"
    assert orjson.loads(path.read_bytes())["parsed_body"] == {"dev": True}
    assert queue_counts(sqs, queue_url) == (0, 0)
