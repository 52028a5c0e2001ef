"""`sqs-processor` as a real subprocess: config errors, `validate`, `plugins` and config lookup.

A config error must end the process with code 2 and one line on stderr, with no traceback and
before anything is contacted: every child here gets AWS_ENDPOINT_URL pointing at a listening
socket (a tripwire) that counts the connections it receives.
"""

from __future__ import annotations

import os
import select
import socket
import subprocess
import threading
from collections.abc import Iterator

import pytest
from helpers.support import CLI, ROOT, cli_env

QUEUE = "https://sqs.us-west-1.amazonaws.com/123456789012/example"
BUCKET = "example-bucket"
PREFIX = "sqs-processor: config error: "
SHIPPED_CONFIGS = sorted([*ROOT.glob("configs/*.yaml"), *ROOT.glob("configs/examples/*.yaml")])

GOOD_YAML = f"""\
aws: {{region: us-east-1}}
source: {{type: sqs, queue_url: "{QUEUE}"}}
transforms: [json_parse]
sink: {{type: s3, bucket: {BUCKET}, prefix: from-file/}}
ack: {{type: sqs_delete}}
"""


class Tripwire:
    """A listening socket that accepts, counts and closes every connection it gets."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            readable, _, _ = select.select([self.sock], [], [], 0.05)
            if readable:
                conn, _ = self.sock.accept()
                self.connections += 1
                conn.close()
            elif self._stop.is_set():  # stop only once the backlog is drained
                return

    def close(self) -> int:
        self._stop.set()
        self._thread.join(10)
        self.sock.close()
        return self.connections


@pytest.fixture
def tripwire() -> Iterator[Tripwire]:
    wire = Tripwire()
    yield wire
    wire.close()


def child_env(tripwire: Tripwire, **extra: str | None) -> dict[str, str]:
    """A clean environment: static test credentials, no AWS profile or metadata service, the
    seed's two required variables, and every AWS endpoint at the tripwire."""
    env = {k: v for k, v in cli_env({}).items()
           if not k.startswith("AWS_") and k not in ("HEALTH_PORT", "LOCAL_ENDPOINT_URL")}
    env.update(
        AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
        AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        AWS_EC2_METADATA_DISABLED="true", AWS_ENDPOINT_URL=tripwire.url,
        SQS_QUEUE_URL=QUEUE, S3_BUCKET_NAME=BUCKET,
    )
    for name, value in extra.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def start(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen([*CLI, *args], env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen[str]) -> subprocess.CompletedProcess[str]:
    try:
        stdout, stderr = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, stderr = process.communicate()
        pytest.fail(f"{process.args} did not exit; stderr: {stderr[-2000:]}")
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return finish(start(args, env))


def assert_config_error(result: subprocess.CompletedProcess[str], *fragments: str) -> str:
    """Exit code 2, exactly one stderr line starting with the prefix and holding ``fragments``."""
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(PREFIX), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert result.stdout == ""
    return lines[0]


# --------------------------------------------------------------------------------------------
# Config errors: validate and run both exit 2 with one line, and run connects to nothing
# --------------------------------------------------------------------------------------------

BAD_YAML = {
    "unknown-sink-type": GOOD_YAML.replace("type: s3", "type: s4"),
    "yaml-syntax": GOOD_YAML.replace("[json_parse]", "[json_parse"),
    "unhashable-key": GOOD_YAML + "? [a, b]\n: 1\n",
}


@pytest.mark.parametrize(
    ("env", "yaml_name", "fragments"),
    [
        pytest.param({"MAX_MESSAGES_PER_POLL": "11"}, None,
                     ("source.max_messages: '11' is out of range", "from 1 to 10",
                      "(from $MAX_MESSAGES_PER_POLL)"), id="max-messages-env"),
        pytest.param({"S3_BUCKET_NAME": "s3://example-bucket"}, None,
                     ("sink.bucket: 's3://example-bucket'", "(from $S3_BUCKET_NAME)"),
                     id="bucket-url-env"),
        pytest.param({}, "unknown-sink-type",
                     ("sink.type: 's4' is not a known sink", "did you mean 's3'?"),
                     id="unknown-sink-type"),
        pytest.param({}, "yaml-syntax", ("is not valid YAML: line 4, column 5",),
                     id="yaml-syntax"),
        pytest.param({}, "unhashable-key", ("config",), id="unhashable-key"),
    ],
)
def test_a_config_error_makes_validate_and_run_exit_2_with_one_line_and_no_connection(
    tmp_path, tripwire, env, yaml_name, fragments
):
    args = []
    if yaml_name is not None:
        path = tmp_path / f"{yaml_name}.yaml"
        path.write_text(BAD_YAML[yaml_name], encoding="utf-8")
        args = ["--config", str(path)]
    child = child_env(tripwire, **env)
    processes = [start([command, *args], child) for command in ("validate", "run")]
    validate, run = (finish(p) for p in processes)
    line = assert_config_error(validate, *fragments)
    assert assert_config_error(run, *fragments) == line
    assert tripwire.close() == 0, "a config error must stop the process before it connects"


def test_run_with_a_config_error_contacts_no_credential_service(tmp_path, tripwire):
    env = child_env(tripwire, AWS_ACCESS_KEY_ID=None, AWS_SECRET_ACCESS_KEY=None,
                    AWS_EC2_METADATA_DISABLED=None, S3_BUCKET_NAME="s3://example-bucket",
                    AWS_EC2_METADATA_SERVICE_ENDPOINT=tripwire.url,
                    AWS_METADATA_SERVICE_TIMEOUT="1", AWS_METADATA_SERVICE_NUM_ATTEMPTS="1")
    assert_config_error(cli(["run"], env), "sink.bucket")
    assert tripwire.close() == 0


def config_errors(result: subprocess.CompletedProcess[str]) -> list[str]:
    """Exit code 2, no traceback, nothing on stdout; the problems, one per stderr line."""
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert all(line.startswith(PREFIX) for line in lines), lines
    return [line.removeprefix(PREFIX) for line in lines]


def test_validate_reports_every_missing_variable_in_one_run(tripwire):
    env = child_env(tripwire, SQS_QUEUE_URL=None, S3_BUCKET_NAME=None)
    for command in ("validate", "run"):
        assert config_errors(cli([command], env)) == [
            "source.queue_url: needs environment variable SQS_QUEUE_URL, which is not set",
            "sink.bucket: needs environment variable S3_BUCKET_NAME, which is not set"]
    assert tripwire.close() == 0


MANY_PROBLEMS = f"""\
servise: {{workers: 2}}
service: {{workers: 0, heartbeat: maybe}}
aws: {{region: nowhere, endpoint_url: "${{NO_SUCH_ENDPOINT}}"}}
source: {{type: sqs, queue_url: "{QUEUE}", max_messages: 11}}
transforms: [json_parse, {{type: enrich, ad: {{x: 1}}}}, nosuch]
sink: {{type: s3, bukcet: {BUCKET}, prefix: "${{NO_SUCH_PREFIX}}"}}
ack: {{type: sqs_delete}}
"""


def test_validate_reports_every_problem_of_a_config_at_once_one_line_each(tmp_path, tripwire):
    path = tmp_path / "many.yaml"
    path.write_text(MANY_PROBLEMS, encoding="utf-8")
    env = child_env(tripwire, OTEL_EXPORTER_OTLP_PROTOCOL="carrier-pigeon")
    problems = config_errors(cli(["validate", "--config", str(path)], env))
    assert sorted(problems) == sorted([
        "servise: is not a section of the pipeline config; did you mean 'service'?",
        "aws.endpoint_url: needs environment variable NO_SUCH_ENDPOINT, which is not set",
        "sink.prefix: needs environment variable NO_SUCH_PREFIX, which is not set",
        "service.workers: 0 is out of range; expected an integer from 1 to 256",
        "service.heartbeat: 'maybe' has the wrong type; expected true or false",
        "aws.region: 'nowhere' is not an AWS region name; expected e.g. us-west-1",
        "source.max_messages: 11 is out of range; expected an integer from 1 to 10",
        "transforms[1].ad: is not an option of this component; did you mean 'add'?",
        "transforms[2].type: 'nosuch' is not a known transform; did you mean 'enrich'? "
        "(known transforms: enrich, json_parse)",
        # The misspelled key stands for the required bucket: one line, not a second "required".
        "sink.bukcet: is not an option of this component; did you mean 'bucket'?",
        "telemetry.protocol: 'carrier-pigeon' is not a supported OTLP protocol; expected "
        "http/protobuf or grpc (from $OTEL_EXPORTER_OTLP_PROTOCOL)",
    ])
    # Fixed one by one, each problem goes away on its own: the rest are still reported.
    fixed = MANY_PROBLEMS.replace("servise: {workers: 2}\n", "").replace("max_messages: 11",
                                                                       "max_messages: 10")
    path.write_text(fixed, encoding="utf-8")
    again = config_errors(cli(["validate", "--config", str(path)], env))
    assert len(again) == len(problems) - 2
    assert set(again) < set(problems)
    assert tripwire.close() == 0


def test_a_missing_config_file_exits_2_naming_it(tmp_path, tripwire):
    missing = tmp_path / "nowhere.yaml"
    result = cli(["validate", "--config", str(missing)], child_env(tripwire))
    assert_config_error(result, f"file {str(missing)!r} does not exist")


# --------------------------------------------------------------------------------------------
# Successful commands
# --------------------------------------------------------------------------------------------


def test_validate_with_a_good_config_prints_the_resolved_pipeline(tripwire):
    result = cli(["validate"], child_env(tripwire))
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stdout.splitlines()
    assert "pipeline: sqs -> json_parse -> enrich -> s3 -> sqs_delete" in lines
    assert lines[-1] == "config is valid"
    assert any(line.startswith("config: ") and line.endswith("default.yaml") for line in lines)
    assert "aws: region us-west-1, endpoint boto3 default chain" in lines
    assert tripwire.close() == 0


def test_the_config_env_var_is_used_when_no_config_option_is_given(tmp_path, tripwire):
    path = tmp_path / "from-env.yaml"
    path.write_text(GOOD_YAML, encoding="utf-8")
    result = cli(["validate"], child_env(tripwire, SQS_PROCESSOR_CONFIG=str(path)))
    assert result.returncode == 0, result.stderr
    assert f"config: {path}" in result.stdout.splitlines()
    assert "pipeline: sqs -> json_parse -> s3 -> sqs_delete" in result.stdout.splitlines()


def test_the_config_option_wins_over_the_config_env_var(tmp_path, tripwire):
    path = tmp_path / "given.yaml"
    path.write_text(GOOD_YAML, encoding="utf-8")
    env = child_env(tripwire, SQS_PROCESSOR_CONFIG=str(tmp_path / "missing.yaml"))
    result = cli(["validate", "--config", str(path)], env)
    assert result.returncode == 0, result.stderr
    assert f"config: {path}" in result.stdout.splitlines()


@pytest.mark.parametrize("config", SHIPPED_CONFIGS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_shipped_config_validates(config, tripwire):
    result = cli(["validate", "--config", str(config)], child_env(tripwire))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "config is valid"
    assert tripwire.close() == 0


def test_the_shipped_configs_include_the_default_and_local_pipelines():
    names = {p.name for p in SHIPPED_CONFIGS}
    assert {"default.yaml", "local.yaml"} <= names


def test_plugins_lists_the_five_built_ins_with_their_kinds(tripwire):
    result = cli(["plugins"], child_env(tripwire))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["KIND", "NAME", "STATUS", "PROVIDER", "DESCRIPTION"]
    rows = {tuple(line.split()[:4]) for line in lines[1:]}
    assert {
        ("source", "sqs", "ok", "built-in"),
        ("transform", "json_parse", "ok", "built-in"),
        ("transform", "enrich", "ok", "built-in"),
        ("sink", "s3", "ok", "built-in"),
        ("acker", "sqs_delete", "ok", "built-in"),
    } <= rows
    assert all(line.split()[2] == "ok" for line in lines[1:]), result.stdout


def test_plugins_with_a_broken_config_exits_2(tmp_path, tripwire):
    path = tmp_path / "bad.yaml"
    path.write_text(GOOD_YAML + "plugins: {paths: [no-such-folder]}\n", encoding="utf-8")
    result = cli(["plugins", "--config", str(path)], child_env(tripwire))
    assert_config_error(result, "plugins.paths[0]: 'no-such-folder' is not a directory")



def test_plugins_describe_prints_a_components_options(tripwire):
    result = cli(["plugins", "--describe", "SQS"], child_env(tripwire))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:3] == ["source sqs", "  provider: built-in sqs_processor.plugins.sqs_source",
                         "  Long-polls an SQS queue, with all system and message attributes."]
    header = lines[4].split()
    assert header == ["OPTION", "TYPE", "DEFAULT", "ALLOWED", "DESCRIPTION"]
    rows = {line.split()[0]: line for line in lines[5:]}
    assert set(rows) == {"queue_url", "max_messages", "wait_time_seconds",
                         "poll_interval_seconds", "visibility_timeout"}
    assert rows["max_messages"].split()[1:4] == ["integer", "10", "1-10"]
    assert rows["queue_url"].split()[1:3] == ["string", "(required)"]
    assert tripwire.close() == 0


def test_plugins_describe_an_unknown_name_suggests_the_closest(tripwire):
    result = cli(["plugins", "--describe", "json_pars"], child_env(tripwire))
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "sqs-processor: no component is named 'json_pars'; did you mean 'json_parse'?; "
        f"components: {BUILTIN_COMPONENTS}"]


BUILTIN_COMPONENTS = ("enrich (transform), json_parse (transform), s3 (sink), sqs (source), "
                      "sqs_delete (acker)")


def test_plugins_describe_a_name_like_nothing_lists_what_exists_without_a_guess(tripwire):
    result = cli(["plugins", "--describe", "nosuch"], child_env(tripwire))
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"sqs-processor: no component is named 'nosuch'; components: {BUILTIN_COMPONENTS}"]


def test_plugins_describe_says_when_the_plugin_was_blocked(tripwire):
    env = child_env(tripwire, SQS_PROCESSOR_PLUGINS_BLOCK="s3_sink")
    result = cli(["plugins", "--describe", "s3"], env)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "sqs-processor: no component is named 's3'; components: enrich (transform), "
        "json_parse (transform), sqs (source), sqs_delete (acker); plugins not loaded: built-in "
        "sqs_processor.plugins.s3_sink (blocked by $SQS_PROCESSOR_PLUGINS_BLOCK entry 's3_sink')"]
