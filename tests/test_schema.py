"""The JSON Schema of the pipeline YAML: generated from the option declarations, current in
``configs/pipeline.schema.json``, and checked with a real validator (``jsonschema``) against
every shipped config, each of which carries the editor modeline that points at it."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from helpers.support import CLI, ROOT, cli_env

SCHEMA_FILE = ROOT / "configs" / "pipeline.schema.json"
SHIPPED = sorted([*ROOT.glob("configs/*.yaml"), *ROOT.glob("configs/examples/*.yaml"),
                  ROOT / "k8s" / "base" / "pipeline.yaml"])
MODELINE = "# yaml-language-server: $schema="


def cli_schema(*args: str) -> dict[str, Any]:
    result = subprocess.run([*CLI, "schema", *args], capture_output=True, text=True, timeout=60,
                            env=cli_env({}))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def errors(schema: dict[str, Any], document: Any) -> list[str]:
    validator = jsonschema.Draft7Validator(schema)
    return sorted(f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
                  for e in validator.iter_errors(document))


@pytest.fixture(scope="module")
def builtin() -> dict[str, Any]:
    schema = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    jsonschema.Draft7Validator.check_schema(schema)
    return schema


def _used_types(document: dict[str, Any]) -> set[str]:
    blocks = [document["source"], document["sink"], document["ack"],
              *(document.get("transforms") or [])]
    return {b if isinstance(b, str) else b["type"] for b in blocks}


def _cases(schema: dict[str, Any]) -> set[str]:
    return {case["if"]["properties"]["type"]["const"]
            for definition in schema["definitions"].values()
            for case in definition.get("allOf", [])}


def test_the_shipped_schema_is_the_generated_one_and_a_stale_copy_is_caught(tmp_path: Path):
    check = [sys.executable, "-m", "sqs_processor.schema"]
    current = subprocess.run([*check, "--check", str(SCHEMA_FILE)], capture_output=True,
                             text=True, timeout=60)
    assert current.returncode == 0, current.stderr  # else: run `make docs`
    stale = tmp_path / "pipeline.schema.json"
    stale.write_text(SCHEMA_FILE.read_text().replace('"maximum": 256', '"maximum": 255'))
    result = subprocess.run([*check, "--check", str(stale)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip() == f"{stale}: the schema is stale; run `make docs`"
    subprocess.run([*check, str(stale)], check=True, capture_output=True, timeout=60)
    assert stale.read_text() == SCHEMA_FILE.read_text()


def test_sqs_processor_schema_prints_a_valid_schema_with_every_builtin_option(builtin):
    printed = cli_schema()
    jsonschema.Draft7Validator.check_schema(printed)
    assert _cases(printed) >= {"sqs", "json_parse", "enrich", "s3", "sqs_delete"}
    sqs = next(case["then"] for case in printed["definitions"]["source"]["allOf"]
               if case["if"]["properties"]["type"]["const"] == "sqs")
    assert sqs["required"] == ["queue_url"]
    assert set(sqs["properties"]) == {"type", "queue_url", "max_messages", "wait_time_seconds",
                                      "poll_interval_seconds", "visibility_timeout"}
    workers = printed["properties"]["service"]["properties"]["workers"]
    assert workers["default"] == 16 and workers["anyOf"][0] == {
        "type": "integer", "minimum": 1, "maximum": 256}


@pytest.mark.parametrize("path", SHIPPED, ids=[str(p.relative_to(ROOT)) for p in SHIPPED])
def test_every_shipped_config_validates_against_its_schema_and_carries_the_modeline(
        path: Path, builtin):
    text = path.read_text(encoding="utf-8")
    first = text.splitlines()[0]
    assert first.startswith(MODELINE), f"{path} does not start with the schema modeline"
    assert (path.parent / first[len(MODELINE):]).resolve() == SCHEMA_FILE
    document = yaml.safe_load(text)
    assert errors(builtin, document) == []
    # With the config's own plugins (drop-ins), every component it uses is checked strictly.
    schema = cli_schema("--config", str(path))
    assert _used_types(document) <= _cases(schema), _used_types(document) - _cases(schema)
    assert errors(schema, document) == []


def _default() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "configs" / "default.yaml").read_text(encoding="utf-8"))


def _with(change: str, value: Any) -> dict[str, Any]:
    document = copy.deepcopy(_default())
    *parents, last = change.split(".")
    node = document
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
    node[last] = value
    return document


@pytest.mark.parametrize(("change", "value", "where"), [
    ("servise", {"workers": 2}, ""),  # a misspelled section
    ("service.workerz", 2, "service"),
    ("sink.buckett", "b", "sink"),
    ("source.max_mesages", 5, "source"),
    ("aws.regoin", "us-east-1", "aws"),
    ("service.workers", 0, "service.workers"),  # below the minimum
    ("service.heartbeat", "maybe", "service.heartbeat"),
    ("source.max_messages", "ten", "source.max_messages"),
    ("errors.after_receives", 2.5, "errors.after_receives"),
])
def test_a_typo_or_a_bad_value_fails_the_schema_as_it_fails_validate(
        change: str, value: Any, where: str, builtin, tmp_path: Path):
    document = _with(change, value)
    found = errors(builtin, document)
    assert found, f"{change}: {value!r} passed the schema"
    assert any(line.startswith(f"{where}:") for line in found), found
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    result = subprocess.run([*CLI, "validate", "--config", str(path)], capture_output=True,
                            text=True, timeout=60,
                            env=cli_env({}, SQS_QUEUE_URL="https://sqs.us-west-1.amazonaws.com/"
                                        "123456789012/q", S3_BUCKET_NAME="bucket-name"))
    assert result.returncode == 2, result.stdout  # the validator agrees: the same truth


def test_references_and_text_values_pass_as_validate_accepts_them(builtin):
    document = _with("service.workers", "${WORKERS:-4}")
    document["service"]["heartbeat"] = "off"
    document["source"]["max_messages"] = "7"
    assert errors(builtin, document) == []


def test_a_component_no_registered_plugin_provides_is_left_to_its_plugin(builtin):
    document = _with("transforms", ["json_parse", {"type": "mine", "anything": [1, 2]}])
    assert errors(builtin, document) == []
    document["transforms"][0] = {"type": "json_parse", "anything": 1}
    assert errors(builtin, document) == [
        "transforms.0: Additional properties are not allowed ('anything' was unexpected)"]
