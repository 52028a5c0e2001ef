"""Loading the pipeline YAML: interpolation, the engine's sections, and build-time option checks.

Everything here is offline: ``load_config`` parses and checks, ``build_pipeline`` resolves the
components and runs their factories (which create boto3 clients but never call AWS).
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest
from helpers.support import pipeline_config, write_config

from sqs_processor.config import PipelineConfig, default_config_path, load_config
from sqs_processor.errors import ConfigError
from sqs_processor.loaders import build_plugin_manager
from sqs_processor.pipeline import Pipeline, build_pipeline

REGION = "us-east-1"
QUEUE = "https://sqs.us-west-1.amazonaws.com/123456789012/orders"
BUCKET = "archive-bucket"
SEED = {"SQS_QUEUE_URL": QUEUE, "S3_BUCKET_NAME": BUCKET}

MINIMAL = f"""\
aws: {{region: {REGION}}}
source: {{type: sqs, queue_url: "{QUEUE}"}}
transforms: [json_parse, enrich]
sink: {{type: s3, bucket: {BUCKET}}}
ack: {{type: sqs_delete}}
"""


@pytest.fixture(autouse=True)
def _offline_aws(monkeypatch: pytest.MonkeyPatch) -> None:
    """Static test credentials, so creating boto3 clients never asks the instance metadata
    service; building a pipeline must not need the network."""
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_SQS", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def load_text(tmp_path: Path, text: str, environ: dict[str, str] | None = None,
              name: str = "pipeline.yaml") -> PipelineConfig:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return load_config(path, environ={} if environ is None else environ)


def text_error(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, text, environ)
    return info.value


def build(config: PipelineConfig) -> Pipeline:
    return build_pipeline(config, build_plugin_manager(config.plugin_settings))


def yaml_config(tmp_path: Path, **sections: Any) -> PipelineConfig:
    """A pipeline file from ``support.pipeline_config`` with a region, loaded without env."""
    sections["aws"] = {"region": REGION, **sections.get("aws", {})}
    path = write_config(tmp_path, pipeline_config(QUEUE, BUCKET, **sections))
    return load_config(path, environ={})


def build_error(config: PipelineConfig) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        build(config)
    return info.value


def seed_env(**overrides: str | None) -> dict[str, str]:
    env = {**SEED, **overrides}
    return {k: v for k, v in env.items() if v is not None}


def build_default(**overrides: str | None) -> Pipeline:
    """Build the built-in default pipeline with the seed's variables (plus ``overrides``)."""
    return build(load_config(None, environ=seed_env(**overrides)))


def default_error(**overrides: str | None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        build_default(**overrides)
    return info.value


# --------------------------------------------------------------------------------------------
# ${VAR} interpolation
# --------------------------------------------------------------------------------------------


def test_a_variable_is_replaced_by_its_value_and_remembered_as_the_source(tmp_path):
    config = load_text(tmp_path, MINIMAL.replace(BUCKET, "'${BUCKET}'"), {"BUCKET": "from-env"})
    assert config.sink.options["bucket"] == "from-env"
    assert config.env_sources["sink.bucket"] == ("BUCKET",)


@pytest.mark.parametrize(
    ("environ", "expected"),
    [({}, "fallback/"), ({"PREFIX": ""}, "fallback/"), ({"PREFIX": "given/"}, "given/")],
    ids=["unset", "empty", "set"],
)
def test_a_default_applies_when_the_variable_is_unset_or_empty(tmp_path, environ, expected):
    text = MINIMAL.replace(f"bucket: {BUCKET}",
                           f"bucket: {BUCKET}, prefix: '${{PREFIX:-fallback/}}'")
    config = load_text(tmp_path, text, environ)
    assert config.sink.options["prefix"] == expected


def test_an_empty_default_gives_an_empty_string(tmp_path):
    text = MINIMAL.replace(f"bucket: {BUCKET}", f"bucket: {BUCKET}, prefix: '${{PREFIX:-}}'")
    assert load_text(tmp_path, text).sink.options["prefix"] == ""


def test_several_variables_in_one_value_are_all_replaced_and_recorded(tmp_path):
    text = MINIMAL.replace(f"bucket: {BUCKET}", f"bucket: {BUCKET}, prefix: '${{A}}/${{B:-b}}/'")
    config = load_text(tmp_path, text, {"A": "a"})
    assert config.sink.options["prefix"] == "a/b/"
    assert config.env_sources["sink.prefix"] == ("A", "B")


def test_a_set_but_empty_variable_without_default_gives_an_empty_string(tmp_path):
    config = load_text(tmp_path, MINIMAL.replace(BUCKET, "'${BUCKET}'"), {"BUCKET": ""})
    assert config.sink.options["bucket"] == ""


def test_an_unset_variable_without_default_is_an_error_naming_it_and_the_key(tmp_path):
    error = text_error(tmp_path, MINIMAL.replace(BUCKET, "'${BUCKET_NAME}'"))
    assert error.key == "sink.bucket"
    assert "BUCKET_NAME" in str(error)
    assert "not set" in str(error)


def test_a_double_dollar_writes_a_literal_dollar_brace_without_looking_up_the_variable(tmp_path):
    text = MINIMAL.replace(f"bucket: {BUCKET}",
                           f"bucket: {BUCKET}, content_type: '$${{NOT_SET}} ${{SET}}'")
    config = load_text(tmp_path, text, {"SET": "yes"})
    assert config.sink.options["content_type"] == "${NOT_SET} yes"


def test_a_value_taken_from_the_environment_is_not_interpolated_again(tmp_path):
    config = load_text(tmp_path, MINIMAL.replace(BUCKET, "'${BUCKET}'"), {"BUCKET": "${OTHER}"})
    assert config.sink.options["bucket"] == "${OTHER}"


@pytest.mark.parametrize("reference", ["${1BAD}", "${}", "${A B}", "${A.B}", "${:-x}"])
def test_an_invalid_variable_reference_is_an_error(tmp_path, reference):
    error = text_error(tmp_path, MINIMAL.replace(BUCKET, f"'{reference}'"))
    assert error.key == "sink.bucket"
    assert f"invalid variable reference {reference}" in str(error)


def test_variables_in_list_items_and_nested_values_are_replaced(tmp_path):
    text = MINIMAL.replace("transforms: [json_parse, enrich]",
                           "transforms: ['${STEP:-json_parse}', {type: enrich, drop: ['${DROP}']}]")
    config = load_text(tmp_path, text, {"DROP": "receipt_handle"})
    assert [t.type for t in config.transforms] == ["json_parse", "enrich"]
    assert config.transforms[1].options["drop"] == ["receipt_handle"]
    assert config.env_sources["transforms[1].drop[0]"] == ("DROP",)


def test_values_that_are_not_text_are_left_as_they_are(tmp_path):
    text = MINIMAL.replace(f"queue_url: \"{QUEUE}\"", f"queue_url: \"{QUEUE}\", max_messages: 5")
    assert load_text(tmp_path, text).source.options["max_messages"] == 5


def test_an_unterminated_variable_reference_is_an_error(tmp_path):
    text = MINIMAL.replace(f"bucket: {BUCKET}",
                           f"bucket: {BUCKET}, prefix: '${{S3_PREFIX:-sqs-messages/'")
    with pytest.raises(ConfigError, match="variable reference"):
        load_text(tmp_path, text)


# --------------------------------------------------------------------------------------------
# Errors name the environment variable behind a bad value
# --------------------------------------------------------------------------------------------


def test_a_bad_value_from_the_environment_names_its_variable():
    error = default_error(MAX_MESSAGES_PER_POLL="11")
    assert error.key == "source.max_messages"
    assert error.env == ("MAX_MESSAGES_PER_POLL",)
    assert str(error) == ("source.max_messages: '11' is out of range; expected an integer from "
                          "1 to 10 (from $MAX_MESSAGES_PER_POLL)")


def test_a_bad_engine_setting_from_the_environment_names_its_variable():
    with pytest.raises(ConfigError) as info:
        load_config(None, environ=seed_env(HEALTH_PORT="http"))
    assert info.value.key == "service.health_port"
    assert "'http' has the wrong type" in str(info.value)
    assert str(info.value).endswith("(from $HEALTH_PORT)")


def test_a_bad_value_written_in_the_file_names_no_variable(tmp_path):
    error = build_error(yaml_config(tmp_path, source={"max_messages": 11}))
    assert error.key == "source.max_messages"
    assert error.env == ()
    assert "(from" not in str(error)


# --------------------------------------------------------------------------------------------
# Reading the file
# --------------------------------------------------------------------------------------------


def test_a_missing_file_is_an_error_naming_it(tmp_path):
    with pytest.raises(ConfigError, match="does not exist") as info:
        load_config(tmp_path / "nope.yaml", environ={})
    assert "nope.yaml" in str(info.value)


def test_a_directory_instead_of_a_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot be read"):
        load_config(tmp_path, environ={})


def test_a_file_that_is_not_utf8_is_an_error(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(MINIMAL.encode() + b"# caf\xe9\n")
    with pytest.raises(ConfigError, match="cannot be read"):
        load_config(path, environ={})


def test_a_key_written_twice_is_rejected_with_its_line(tmp_path):
    error = text_error(tmp_path, MINIMAL + "sink: {type: s3, bucket: other}\n")
    assert "line 6" in str(error)
    assert "'sink' appears twice" in str(error)


def test_a_nested_key_written_twice_is_rejected_with_its_line(tmp_path):
    text = MINIMAL.replace(f"bucket: {BUCKET}", f"bucket: {BUCKET},\n       bucket: other")
    error = text_error(tmp_path, text)
    assert "line 5" in str(error)
    assert "'bucket' appears twice" in str(error)


def test_overriding_a_merged_key_is_not_a_duplicate(tmp_path):
    text = MINIMAL + "service:\n  <<: {workers: 3, pollers: 2}\n  workers: 4\n"
    config = load_text(tmp_path, text)
    assert (config.service["workers"], config.service["pollers"]) == (4, 2)


def test_a_sequence_used_as_a_key_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError):
        load_text(tmp_path, MINIMAL + "? [a, b]\n: 1\n")


@pytest.mark.parametrize(
    ("text", "where"),
    [("source:\n\t- x\n", "line 2, column 1"),
     ("aws: {region: us-east-1\nsource: x\n", "line 2, column 7")],
)
def test_a_yaml_syntax_error_reports_line_and_column(tmp_path, text, where):
    error = text_error(tmp_path, text)
    assert "is not valid YAML" in str(error)
    assert where in str(error)


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "---\n"])
def test_an_empty_file_is_an_error(tmp_path, text):
    assert "is empty" in str(text_error(tmp_path, text))


@pytest.mark.parametrize(("text", "kind"), [("- a\n- b\n", "list"), ("just text\n", "str"),
                                             ("42\n", "int")])
def test_a_file_whose_top_level_is_not_a_mapping_is_an_error(tmp_path, text, kind):
    error = text_error(tmp_path, text)
    assert f"must hold a mapping at the top level, not {kind}" in str(error)


# --------------------------------------------------------------------------------------------
# Top-level sections and components
# --------------------------------------------------------------------------------------------


def test_an_unknown_section_is_rejected_with_a_suggestion(tmp_path):
    error = text_error(tmp_path, MINIMAL + "sorce: {type: sqs}\n")
    assert error.key == "sorce"
    assert str(error) == "sorce: is not a section of the pipeline config; did you mean 'source'?"


def test_an_unknown_section_without_a_close_match_lists_the_sections(tmp_path):
    error = text_error(tmp_path, MINIMAL + "zzzzz: 1\n")
    assert str(error).endswith(
        "known sections: service, aws, plugins, source, transforms, sink, ack, errors, telemetry")


@pytest.mark.parametrize("section", ["source", "sink", "ack"])
def test_a_missing_component_section_is_required(tmp_path, section):
    lines = [line for line in MINIMAL.splitlines() if not line.startswith(f"{section}:")]
    error = text_error(tmp_path, "\n".join(lines) + "\n")
    assert error.key == section
    assert "is required" in str(error)


def test_a_component_section_left_empty_is_required(tmp_path):
    error = text_error(tmp_path, MINIMAL.replace("ack: {type: sqs_delete}", "ack:"))
    assert error.key == "ack"


def test_transforms_accept_the_name_shorthand_and_full_blocks(tmp_path):
    text = MINIMAL.replace("transforms: [json_parse, enrich]",
                           "transforms:\n  - json_parse\n"
                           "  - {type: enrich, drop: [receipt_handle]}")
    config = load_text(tmp_path, text)
    assert [(t.type, t.where) for t in config.transforms] == [
        ("json_parse", "transforms[0]"), ("enrich", "transforms[1]")]
    assert config.transforms[0].options == {}
    assert config.transforms[1].options == {"drop": ["receipt_handle"]}


def test_component_names_are_normalised(tmp_path):
    text = MINIMAL.replace("[json_parse, enrich]", "[JSON-Parse]").replace("sqs_delete",
                                                                          "SQS-Delete")
    config = load_text(tmp_path, text)
    assert config.transforms[0].type == "json_parse"
    assert config.ack.type == "sqs_delete"
    assert build(config).describe_line() == "sqs -> json_parse -> s3 -> sqs_delete"


@pytest.mark.parametrize("transforms", ["", "[]"])
def test_a_pipeline_may_have_no_transforms(tmp_path, transforms):
    config = load_text(tmp_path, MINIMAL.replace("[json_parse, enrich]", transforms))
    assert config.transforms == ()


@pytest.mark.parametrize("value", ["json_parse", "{type: json_parse}", "5"])
def test_transforms_that_are_not_a_list_are_rejected(tmp_path, value):
    error = text_error(tmp_path, MINIMAL.replace("[json_parse, enrich]", value))
    assert error.key == "transforms"
    assert "expected a list of transform steps" in str(error)


@pytest.mark.parametrize(
    ("old", "new", "key"),
    [(f"sink: {{type: s3, bucket: {BUCKET}}}", f"sink: {{bucket: {BUCKET}}}", "sink.type"),
     ("[json_parse, enrich]", "[json_parse, {target: x}]", "transforms[1].type"),
     ("source: {type: sqs,", "source: {", "source.type")],
)
def test_a_component_without_a_type_is_rejected(tmp_path, old, new, key):
    error = text_error(tmp_path, MINIMAL.replace(old, new))
    assert error.key == key
    assert "is required" in str(error)


@pytest.mark.parametrize(("value", "problem"), [
    ("{type: 5}", "has the wrong type"),
    ("{type: '3d'}", "is not a valid component name"),
    ("[sqs_delete]", "must be a mapping with a 'type' key"),
])
def test_a_component_with_a_malformed_type_is_rejected(tmp_path, value, problem):
    error = text_error(tmp_path, MINIMAL.replace("{type: sqs_delete}", value))
    assert error.key.startswith("ack")
    assert problem in str(error)


def test_a_component_type_nobody_provides_is_rejected_with_a_suggestion(tmp_path):
    error = build_error(yaml_config(tmp_path, transforms=["json_pars"]))
    assert error.key == "transforms[0].type"
    assert "'json_pars' is not a known transform; did you mean 'json_parse'?" in str(error)
    assert "known transforms: enrich, json_parse" in str(error)


def test_an_unknown_sink_type_is_rejected_with_a_suggestion_and_the_known_sinks(tmp_path):
    error = build_error(yaml_config(tmp_path, sink={"type": "s4"}))
    assert error.key == "sink.type"
    assert str(error) == ("sink.type: 's4' is not a known sink; did you mean 's3'? "
                          "(known sinks: s3)")


@pytest.mark.parametrize(("section", "value", "label"),
                         [("source", "sqs2", "source"), ("ack", "sqs_delet", "acker")])
def test_unknown_source_and_ack_types_are_rejected_with_a_suggestion(tmp_path, section, value,
                                                                     label):
    error = build_error(yaml_config(tmp_path, **{section: {"type": value}}))
    assert error.key == f"{section}.type"
    assert f"{value!r} is not a known {label}; did you mean" in str(error)


@pytest.mark.parametrize(
    ("sections", "key", "hint"),
    [({"sink": {"bukcet": "b"}}, "sink.bukcet", "did you mean 'bucket'?"),
     ({"transforms": [{"type": "enrich", "dorp": ["x"]}]}, "transforms[0].dorp",
      "did you mean 'drop'?"),
     ({"ack": {"type": "sqs_delete", "queueurl": QUEUE}}, "ack.queueurl",
      "did you mean 'queue_url'?")],
)
def test_an_unknown_option_of_a_component_is_rejected_with_a_suggestion(tmp_path, sections, key,
                                                                        hint):
    error = build_error(yaml_config(tmp_path, **sections))
    assert error.key == key
    assert "is not an option of this component" in str(error)
    assert hint in str(error)


def test_a_missing_required_component_option_is_rejected(tmp_path):
    config = yaml_config(tmp_path, sink={"type": "s3", "bucket": None})
    error = build_error(config)
    assert error.key == "sink.bucket"
    assert "is required" in str(error)


# --------------------------------------------------------------------------------------------
# plugins.paths and plugins.modules
# --------------------------------------------------------------------------------------------


def test_a_plugin_path_that_is_not_a_directory_is_rejected(tmp_path):
    (tmp_path / "a-file.py").write_text("", encoding="utf-8")
    for entry in ("missing", "a-file.py"):
        error = text_error(tmp_path, MINIMAL + f"plugins: {{paths: [{entry}]}}\n")
        assert error.key == "plugins.paths[0]"
        assert f"'{entry}' is not a directory" in str(error)


def test_relative_plugin_paths_start_at_the_config_files_folder(tmp_path, monkeypatch):
    conf = tmp_path / "conf"
    (conf / "plugins").mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = load_text(conf, MINIMAL + "plugins: {paths: [plugins, ./plugins/]}\n")
    expected = (conf / "plugins").resolve()
    assert [p.resolve() for p in config.plugin_settings.plugin_paths] == [expected, expected]
    assert config.base_dir == conf.resolve()


def test_a_relative_plugin_path_is_not_looked_up_in_the_working_directory(tmp_path, monkeypatch):
    (tmp_path / "cwd" / "plugins").mkdir(parents=True)
    (tmp_path / "conf").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    with pytest.raises(ConfigError, match="is not a directory"):
        load_text(tmp_path / "conf", MINIMAL + "plugins: {paths: [plugins]}\n")


def test_plugin_paths_must_be_a_list_of_strings(tmp_path):
    assert text_error(tmp_path, MINIMAL + "plugins: {paths: plugins}\n").key == "plugins.paths"
    assert text_error(tmp_path, MINIMAL + "plugins: {paths: ['']}\n").key == "plugins.paths[0]"


def test_the_plugins_section_is_a_mapping_not_the_older_list_of_modules(tmp_path):
    error = text_error(tmp_path, MINIMAL + "plugins: [pkg.mod]\n")
    assert error.key == "plugins" and "has the wrong type" in str(error)


@pytest.mark.parametrize("key", ["plugin_paths", "load_entrypoints"])
def test_the_older_top_level_plugin_keys_are_not_sections(tmp_path, key):
    error = text_error(tmp_path, MINIMAL + f"{key}: []\n")
    assert error.key == key and "is not a section of the pipeline config" in str(error)


@pytest.mark.parametrize("ref", ["./my_plugin.py", "my plugin", "pkg.mod:", "1pkg", "pkg/mod",
                                 "pkg:a:b"])
def test_a_plugins_entry_that_is_not_a_module_reference_is_rejected(tmp_path, ref):
    error = text_error(tmp_path, MINIMAL + f"plugins: {{modules: ['{ref}']}}\n")
    assert error.key == "plugins.modules[0]"
    assert f"{ref!r} is not a module reference" in str(error)


def test_module_references_are_accepted_with_or_without_an_attribute(tmp_path):
    config = load_text(tmp_path,
                       MINIMAL + "plugins: {modules: [pkg.mod, ' pkg.mod:plugin.attr ']}\n")
    assert config.plugin_settings.plugins == ("pkg.mod", "pkg.mod:plugin.attr")


@pytest.mark.parametrize(("value", "expected"), [("false", False), ("'no'", False),
                                                 ("true", True)])
def test_autoload_accepts_booleans_and_boolean_words(tmp_path, value, expected):
    config = load_text(tmp_path, MINIMAL + f"plugins: {{autoload: {value}}}\n")
    assert config.plugin_settings.load_entrypoints is expected


def test_autoload_rejects_other_values(tmp_path):
    error = text_error(tmp_path, MINIMAL + "plugins: {autoload: maybe}\n")
    assert error.key == "plugins.autoload"


# --------------------------------------------------------------------------------------------
# service and aws
# --------------------------------------------------------------------------------------------


def _with_section(section: str, body: str) -> str:
    """MINIMAL with ``section`` set to the YAML ``body`` (replacing its own ``aws`` line)."""
    aws_line = f"aws: {{region: {REGION}}}\n"
    assert MINIMAL.startswith(aws_line)
    text = MINIMAL.removeprefix(aws_line) if section == "aws" else MINIMAL
    return text + f"{section}: {body}\n"


@pytest.mark.parametrize("region", ["mars", "US-WEST-1", "us-west", "us_west_1", "us-west-1a", ""])
def test_an_invalid_aws_region_is_rejected(tmp_path, region):
    error = text_error(tmp_path, _with_section("aws", f"{{region: '{region}'}}"))
    assert error.key == "aws.region"
    assert f"{region!r} is not an AWS region name" in str(error)


@pytest.mark.parametrize("region", ["us-west-1", "eu-central-1", "us-gov-west-1",
                                    "ap-southeast-2"])
def test_valid_aws_regions_are_accepted(tmp_path, region):
    config = load_text(tmp_path, _with_section("aws", f"{{region: {region}}}"))
    assert config.aws["region"] == region


@pytest.mark.parametrize("url", ["localhost:4566", "ftp://example.com", "http://", "127.0.0.1",
                                 "//example.com"])
def test_an_aws_endpoint_that_is_not_a_url_is_rejected(tmp_path, url):
    body = f"{{region: {REGION}, endpoint_url: '{url}'}}"
    error = text_error(tmp_path, _with_section("aws", body))
    assert error.key == "aws.endpoint_url"
    assert f"{url!r} is not a URL" in str(error)


@pytest.mark.parametrize("url", ["http://127.0.0.1:4566", "https://s3.example.com"])
def test_http_and_https_endpoints_are_accepted(tmp_path, url):
    body = f"{{region: {REGION}, endpoint_url: '{url}'}}"
    config = load_text(tmp_path, _with_section("aws", body))
    assert config.aws["endpoint_url"] == url


def test_an_unknown_aws_option_is_rejected_with_a_suggestion(tmp_path):
    error = text_error(tmp_path, _with_section("aws", "{regoin: us-east-1}"))
    assert error.key == "aws.regoin"
    assert "did you mean 'region'?" in str(error)


@pytest.mark.parametrize(
    ("body", "key"),
    [("{health_port: 70000}", "service.health_port"),
     ("{health_port: -1}", "service.health_port"),
     ("{workers: 0}", "service.workers"),
     ("{workers: 257}", "service.workers"),
     ("{pollers: 0}", "service.pollers"),
     ("{max_in_flight: 0}", "service.max_in_flight"),
     ("{shutdown_grace_seconds: -1}", "service.shutdown_grace_seconds")],
)
def test_service_settings_out_of_range_are_rejected(tmp_path, body, key):
    error = text_error(tmp_path, _with_section("service", body))
    assert error.key == key
    assert "is out of range" in str(error)


def test_service_settings_at_their_bounds_are_accepted(tmp_path):
    config = load_text(tmp_path, _with_section(
        "service", "{health_port: 65535, workers: 256, pollers: 32, max_in_flight: 10000}"))
    assert config.service["health_port"] == 65535
    assert config.service["workers"] == 256
    assert load_text(tmp_path, _with_section(
        "service", "{health_port: 0, workers: 1}")).service["workers"] == 1


@pytest.mark.parametrize("section", ["service", "aws"])
def test_an_engine_section_that_is_not_a_mapping_is_rejected(tmp_path, section):
    error = text_error(tmp_path, _with_section(section, "5"))
    assert error.key == section
    assert "must be a mapping" in str(error)


def test_an_empty_list_as_the_service_section_is_rejected(tmp_path):
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_text(tmp_path, _with_section("service", "[]"))


def test_aws_read_timeout_must_exceed_the_long_poll(tmp_path):
    error = build_error(yaml_config(tmp_path, aws={"read_timeout": 20},
                                    source={"wait_time_seconds": 20}))
    assert error.key == "aws.read_timeout"
    assert "is not longer than the long poll" in str(error)
    assert "source.wait_time_seconds (20)" in str(error)
    pipeline = build(yaml_config(tmp_path, aws={"read_timeout": 21},
                                 source={"wait_time_seconds": 20}))
    assert pipeline.source.wait_time_seconds == 20


def test_max_in_flight_smaller_than_one_receive_is_rejected(tmp_path):
    error = build_error(yaml_config(tmp_path, service={"max_in_flight": 9},
                                    source={"max_messages": 10}))
    assert error.key == "service.max_in_flight"
    assert "at least the source's batch size (10)" in str(error)


def test_max_in_flight_equal_to_one_receive_is_accepted(tmp_path):
    pipeline = build(yaml_config(tmp_path, service={"max_in_flight": 5},
                                 source={"max_messages": 5}))
    assert pipeline.config.service["max_in_flight"] == pipeline.source.max_batch == 5


# --------------------------------------------------------------------------------------------
# The built-in default config and the seed's variables
# --------------------------------------------------------------------------------------------


def test_the_default_config_uses_the_specs_defaults():
    config = load_config(None, environ=SEED)
    assert config.path == default_config_path()
    assert config.aws["region"] == "us-west-1"
    assert config.service["health_port"] == 8080
    pipeline = build(config)
    assert pipeline.describe_line() == "sqs -> json_parse -> enrich -> s3 -> sqs_delete"
    assert pipeline.aws.region == "us-west-1"
    assert pipeline.source.queue_url == QUEUE
    assert pipeline.source.max_batch == 10
    assert pipeline.source.poll_interval == 30.0
    assert pipeline.source.wait_time_seconds == 20
    assert pipeline.sink.objects.bucket == BUCKET
    assert pipeline.sink.prefix == "sqs-messages/"
    assert pipeline.acker.queue_url == QUEUE


def test_the_default_config_reads_every_variable_of_the_seed():
    pipeline = build_default(AWS_REGION="eu-west-1", POLL_INTERVAL_SECONDS="5",
                             MAX_MESSAGES_PER_POLL="3", S3_PREFIX="archive/x/", HEALTH_PORT="9000")
    assert pipeline.aws.region == "eu-west-1"
    assert pipeline.source.poll_interval == 5.0
    assert pipeline.source.max_batch == 3
    assert pipeline.sink.prefix == "archive/x/"
    assert pipeline.config.service["health_port"] == 9000


@pytest.mark.parametrize(("missing", "key"), [("SQS_QUEUE_URL", "source.queue_url"),
                                              ("S3_BUCKET_NAME", "sink.bucket")])
def test_the_default_config_requires_the_queue_url_and_the_bucket(missing, key):
    with pytest.raises(ConfigError) as info:
        load_config(None, environ=seed_env(**{missing: None}))
    assert info.value.key == key
    assert f"needs environment variable {missing}" in str(info.value)


@pytest.mark.parametrize("value", ["0", "301", "0.5"])
def test_poll_interval_outside_1_to_300_is_rejected(value):
    error = default_error(POLL_INTERVAL_SECONDS=value)
    assert error.key == "source.poll_interval_seconds"
    assert repr(value) in str(error)
    assert str(error).endswith("(from $POLL_INTERVAL_SECONDS)")


@pytest.mark.parametrize(("poll", "batch"), [("1", "10"), ("300", "1")])
def test_poll_interval_and_max_messages_at_their_bounds_are_accepted(poll, batch):
    pipeline = build_default(POLL_INTERVAL_SECONDS=poll, MAX_MESSAGES_PER_POLL=batch)
    assert pipeline.source.poll_interval == float(poll)
    assert pipeline.source.max_batch == int(batch)


@pytest.mark.parametrize("value", ["0", "11", "1.5"])
def test_max_messages_per_poll_outside_1_to_10_is_rejected(value):
    error = default_error(MAX_MESSAGES_PER_POLL=value)
    assert error.key == "source.max_messages"
    assert repr(value) in str(error)
    assert "an integer from 1 to 10" in str(error)
    assert str(error).endswith("(from $MAX_MESSAGES_PER_POLL)")


@pytest.mark.parametrize("value", ["8080x", "70000", "-1"])
def test_a_bad_health_port_is_rejected(value):
    with pytest.raises(ConfigError) as info:
        load_config(None, environ=seed_env(HEALTH_PORT=value))
    assert info.value.key == "service.health_port"
    assert info.value.env == ("HEALTH_PORT",)


def test_a_bad_aws_region_variable_is_rejected():
    with pytest.raises(ConfigError) as info:
        load_config(None, environ=seed_env(AWS_REGION="Oregon"))
    assert info.value.key == "aws.region"
    assert str(info.value).endswith("(from $AWS_REGION)")


@pytest.mark.parametrize("url", ["sqs://queue", "https://sqs.us-west-1.amazonaws.com/"])
def test_a_queue_url_that_names_no_queue_is_rejected(url):
    error = default_error(SQS_QUEUE_URL=url)
    assert error.key == "source.queue_url"
    assert "is not an SQS queue URL" in str(error)
    assert error.env == ("SQS_QUEUE_URL",)


# --------------------------------------------------------------------------------------------
# S3 prefix and bucket
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prefix", "problem"),
    [("/sqs-messages/", "starts with '/'"),
     ("sqs-messages", "does not end with '/'"),
     ("a//b/", "has an empty folder"),
     ("a/../b/", "has a '.' or '..' folder"),
     ("./a/", "has a '.' or '..' folder"),
     ("a\x01b/", "contains control characters"),
     ("a\nb/", "contains control characters"),
     ("a\x7f/", "contains control characters"),
     ("a\udcffb/", "is not valid Unicode text"),
     ("é" * 438 + "a/", "is 878 bytes long")],
    ids=["leading-slash", "no-trailing-slash", "double-slash", "dotdot", "dot", "ctrl-01",
         "newline", "del", "surrogate", "too-long"],
)
def test_an_s3_prefix_that_would_build_invalid_keys_is_rejected(prefix, problem):
    error = default_error(S3_PREFIX=prefix)
    assert error.key == "sink.prefix"
    assert problem in str(error)
    assert str(error).endswith("(from $S3_PREFIX)")
    assert len(str(error).splitlines()) == 1


@pytest.mark.parametrize("prefix", ["a/b/", "a..b/" + "é" * 435 + "z/"])
def test_an_s3_prefix_of_folders_ending_in_a_slash_is_accepted(prefix):
    assert build_default(S3_PREFIX=prefix).sink.prefix == prefix


def test_an_empty_s3_prefix_written_in_the_file_is_accepted(tmp_path):
    assert build(yaml_config(tmp_path, sink={"prefix": ""})).sink.prefix == ""


def test_an_empty_s3_prefix_variable_gives_an_empty_prefix():
    config = load_config(None, environ=seed_env(S3_PREFIX=""))
    assert config.sink.options["prefix"] == ""


@pytest.mark.parametrize("prefix", ["a\x9b31mb/"], ids=["csi"])
def test_an_s3_prefix_with_c1_control_characters_is_rejected(prefix):
    assert "contains control characters" in str(default_error(S3_PREFIX=prefix))


@pytest.mark.parametrize(
    ("bucket", "problem"),
    [("s3://archive", "is a URL, not a bucket name"),
     ("ab", "is not a valid S3 bucket name"),
     ("-archive", "is not a valid S3 bucket name"),
     ("my bucket", "is not a valid S3 bucket name"),
     ("a..b", "is not a valid S3 bucket name"),
     ("", "is not a valid S3 bucket name"),
     ("b" * 256, "is not a valid S3 bucket name")],
    ids=["url", "short", "leading-dash", "space", "dotdot", "empty", "too-long"],
)
def test_a_bad_bucket_name_is_rejected(bucket, problem):
    error = default_error(S3_BUCKET_NAME=bucket)
    assert error.key == "sink.bucket"
    if len(bucket) > 100:  # a long value is echoed as its start and its length
        assert f"{bucket!r}"[:100] + f"... ({len(bucket)} characters) {problem}" in str(error)
    else:
        assert f"{bucket!r} {problem}" in str(error)
    assert str(error).endswith("(from $S3_BUCKET_NAME)")


@pytest.mark.parametrize("bucket", ["my.bucket-2024"])
def test_a_good_bucket_name_is_accepted(bucket):
    assert build_default(S3_BUCKET_NAME=bucket).sink.objects.bucket == bucket


def test_an_unknown_partition_time_is_rejected(tmp_path):
    error = build_error(yaml_config(tmp_path, sink={"partition_time": "now"}))
    assert error.key == "sink.partition_time"
    assert "one of 'sent', 'received'" in str(error)


# --------------------------------------------------------------------------------------------
# enrich and json_parse
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["message_id", "body", "received_at"])
def test_enrich_add_may_not_overwrite_a_built_in_field(tmp_path, field):
    config = yaml_config(tmp_path, transforms=["json_parse",
                                               {"type": "enrich", "add": {field: "x"}}])
    error = build_error(config)
    assert error.key == f"transforms[1].add.{field}"
    assert "would overwrite a field" in str(error)


def test_enrich_may_add_new_fields_and_drop_one_it_adds(tmp_path):
    config = yaml_config(tmp_path, transforms=[
        {"type": "enrich", "add": {"env": "prod", "team": {"name": "x"}},
         "drop": ["receipt_handle"]}])
    assert build(config).describe_line() == "sqs -> enrich -> s3 -> sqs_delete"


@pytest.mark.parametrize("field", ["body", "message_id"])
def test_enrich_may_not_drop_the_message_id_or_body(tmp_path, field):
    config = yaml_config(tmp_path, transforms=[{"type": "enrich", "drop": ["x", field]}])
    error = build_error(config)
    assert error.key == "transforms[0].drop[1]"
    assert f"{field!r} cannot be dropped" in str(error)


@pytest.mark.parametrize("drop", [[""], "receipt_handle"])
def test_enrich_drop_must_be_a_list_of_field_names(tmp_path, drop):
    error = build_error(yaml_config(tmp_path, transforms=[{"type": "enrich", "drop": drop}]))
    assert error.key.startswith("transforms[0].drop")


def test_json_parse_target_must_be_a_field_name(tmp_path):
    error = build_error(yaml_config(tmp_path, transforms=[{"type": "json_parse", "target": ""}]))
    assert error.key == "transforms[0].target"
    assert "is not a field name" in str(error)


# --------------------------------------------------------------------------------------------
# Errors stay on one line
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("extra", ['"sor\\nce": 1', 'plugins: {modules: ["${A\\nB}"]}'],
                         ids=["section-key", "variable-reference"])
def test_errors_about_names_with_newlines_stay_on_one_line(tmp_path, extra):
    error = text_error(tmp_path, MINIMAL + extra + "\n")
    assert len(str(error).splitlines()) == 1


def test_a_trailing_line_break_does_not_pass_the_region_check(tmp_path):
    text = MINIMAL.replace(f"region: {REGION}", 'region: "us-west-1\\n"')
    assert text_error(tmp_path, text).key == "aws.region"


# --------------------------------------------------------------------------------------------
# Every problem at once
# --------------------------------------------------------------------------------------------


def test_every_missing_variable_is_one_error_of_one_load():
    from sqs_processor.errors import ConfigErrors

    with pytest.raises(ConfigErrors) as caught:
        load_config(None, environ={})
    assert [e.key for e in caught.value.errors] == ["source.queue_url", "sink.bucket"]
    assert isinstance(caught.value, ConfigError)  # whoever catches one error catches them all
    assert str(caught.value) == (  # one line for a log (a rejected reload)
        "source.queue_url: needs environment variable SQS_QUEUE_URL, which is not set; "
        "sink.bucket: needs environment variable S3_BUCKET_NAME, which is not set")


def test_a_single_problem_is_still_a_plain_config_error(tmp_path: Path):
    from sqs_processor.errors import ConfigErrors

    config = pipeline_config("https://sqs.us-west-1.amazonaws.com/123456789012/q", "bucket-1")
    config["service"] = {"workers": 0}
    with pytest.raises(ConfigError) as caught:
        load_config(write_config(tmp_path, config))
    assert not isinstance(caught.value, ConfigErrors)
    assert caught.value.key == "service.workers"


def test_deferred_problems_are_reported_with_the_components_own(tmp_path: Path):
    from sqs_processor.errors import ConfigErrors
    from sqs_processor.pipeline import load_pipeline

    config = pipeline_config("https://sqs.us-west-1.amazonaws.com/123456789012/q", "${BUCKET}")
    config["service"] = {"pollers": 0}
    config["source"]["max_messages"] = 0
    config["aws"] = {"region": "us-west-1"}
    path = write_config(tmp_path, config)
    deferred = load_config(path, environ={}, defer_errors=True)
    assert [e.key for e in deferred.problems] == ["sink.bucket", "service.pollers"]
    assert deferred.unresolved == {"sink.bucket"}
    with pytest.raises(ConfigErrors) as caught:
        build_pipeline(deferred, build_plugin_manager(deferred.plugin_settings))
    # The sink's own checks of the unreadable bucket are not repeated; the source's are added.
    assert [e.key for e in caught.value.errors] == ["sink.bucket", "service.pollers",
                                                     "source.max_messages"]
    with pytest.raises(ConfigErrors) as again:
        load_pipeline(path, environ={})
    assert [str(e) for e in again.value.errors] == [str(e) for e in caught.value.errors]
