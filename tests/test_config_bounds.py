"""Bounded config input: hostile pipeline files are refused at once, in one line, with exit 2.

Each case reproduces a finding of issue 14 (an alias bomb that expanded to gigabytes, nesting
that raised a 3,000-line RecursionError, /dev/zero read until MemoryError, a named pipe that
blocked forever, a 10 MB file parsed for half a minute, a 10 MB value echoed in a 10 MB error).
``validate`` runs as a real subprocess; its resident memory is read from ``wait4`` and must stay
far below what the unbounded reader reached. Time is not asserted (the machine is shared); each
child has a generous limit that only a hang would reach. A running pipeline that is handed such
a file through live reload rejects it and keeps running.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from helpers.invariants import create_queue, send_bodies
from helpers.processes import ProcessorProcess
from helpers.support import CLI, cli_env, pipeline_config, stored_objects, unique, wait_for

from sqs_processor.config import load_config
from sqs_processor.errors import ConfigError
from sqs_processor.yaml_loading import MAX_CONFIG_BYTES, MAX_DEPTH

PREFIX = "sqs-processor: config error: "
BASE = """\
aws: {region: us-east-1}
source: {type: sqs, queue_url: "https://sqs.us-east-1.amazonaws.com/123456789012/q"}
sink: {type: s3, bucket: example-bucket}
ack: {type: sqs_delete}
"""
MIB = 1024 * 1024


def alias_bomb(section: str, levels: int = 8, merge: bool = False) -> str:
    """A ``section`` holding ``levels`` of nine-fold aliases: 9**levels values once expanded."""
    lines = ["a0: &a0 {k: v}" if merge else "a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, levels + 1):
        refs = ", ".join([f"*a{i - 1}"] * 9)
        lines.append(f"a{i}: &a{i} {{<<: [{refs}], k{i}: v}}" if merge else f"a{i}: &a{i} [{refs}]")
    body = "".join(f"    {line}\n" for line in lines)
    if section == "source":
        return ("source:\n  type: sqs\n"
                "  queue_url: https://sqs.us-east-1.amazonaws.com/123456789012/q\n"
                f"  bomb:\n{body}")
    return f"{section}:\n  resource_attributes:\n{body}"


def with_base(section: str) -> str:
    """``section`` plus the rest of a valid pipeline (without a second ``section``)."""
    kept = [line for line in BASE.splitlines(keepends=True)
            if not line.startswith(section.split(":", 1)[0] + ":")]
    return section + "".join(kept)


def validate(config: Path, timeout: float = 60.0) -> tuple[int, str, int]:
    """``sqs-processor validate --config FILE``: exit code, stderr, peak RSS in bytes."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    process = subprocess.Popen([*CLI, "validate", "--config", str(config)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            process.kill()
            process.wait()
            pytest.fail(f"validate did not answer within {timeout}s for {config.name}")
        time.sleep(0.05)
    assert process.stderr is not None
    stderr = process.stderr.read().decode("utf-8", "replace")
    process.stderr.close()
    process.returncode = os.waitstatus_to_exitcode(status)
    return process.returncode, stderr, usage.ru_maxrss * 1024


def assert_refused(config: Path, *fragments: str) -> str:
    code, stderr, rss = validate(config)
    assert code == 2, stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, f"expected one line, got {len(lines)}: {stderr[:2000]}"
    assert lines[0].startswith(PREFIX), lines[0][:500]
    assert "Traceback" not in stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0][:500]
    assert len(lines[0]) < 600, f"the error is {len(lines[0])} characters long"
    assert rss < 200 * MIB, f"validate peaked at {rss // MIB} MiB"
    return lines[0]


@pytest.mark.parametrize("section", ["telemetry", "source"])
def test_an_alias_bomb_is_refused_before_it_is_expanded(tmp_path, section):
    config = tmp_path / "bomb.yaml"
    config.write_text(with_base(alias_bomb(section)))
    assert_refused(config, "expands to more than 100,000 values through YAML aliases")


def test_a_merge_key_bomb_is_refused_before_it_is_expanded(tmp_path):
    config = tmp_path / "merge.yaml"
    config.write_text(with_base(alias_bomb("telemetry", merge=True)))
    assert_refused(config, "expands to more than 100,000 values through YAML aliases")


def test_modest_aliases_are_still_expanded(tmp_path):
    config = tmp_path / "aliases.yaml"
    config.write_text(with_base(alias_bomb("source", levels=3)))  # 729 values: fine
    loaded = load_config(config, environ={})  # component options are checked at build time
    assert len(loaded.source.options["bomb"]["a3"]) == 9
    assert loaded.source.options["bomb"]["a3"][8][8][8] == ["x"] * 9


def test_an_alias_inside_its_own_anchor_is_refused(tmp_path):
    config = tmp_path / "recursive.yaml"
    config.write_text("telemetry:\n  resource_attributes: &loop {again: *loop}\n" + BASE)
    assert_refused(config, "line 2: an alias refers to a value that contains it")


def test_deep_nesting_is_a_one_line_error_not_a_recursion_traceback(tmp_path):
    config = tmp_path / "deep.yaml"
    config.write_text("telemetry:\n  resource_attributes:\n    x: " + "[" * 500 + "]" * 500
                      + "\n" + BASE)
    assert_refused(config, f"nested deeper than {MAX_DEPTH} levels")


def test_nesting_within_the_limit_is_accepted(tmp_path):
    config = tmp_path / "nested.yaml"
    depth = MAX_DEPTH - 4
    config.write_text(with_base("source:\n  type: sqs\n  queue_url: https://sqs.us-east-1."
                                "amazonaws.com/123456789012/q\n  x: " + "[" * depth + "1"
                                + "]" * depth + "\n"))
    value = load_config(config, environ={}).source.options["x"]
    for _ in range(depth - 1):
        value = value[0]
    assert value == [1]


def test_a_device_is_refused_without_reading_it(tmp_path):
    assert_refused(Path("/dev/zero"), "'/dev/zero' cannot be read: it is a device",
                   "a config must be a regular file")


def test_a_named_pipe_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "pipeline.yaml"
    os.mkfifo(fifo)  # nobody writes to it: opening it for reading would block
    assert_refused(fifo, "cannot be read: it is a named pipe")


def test_a_directory_is_refused(tmp_path):
    assert_refused(tmp_path, "cannot be read: it is a directory")


def test_a_file_over_the_size_limit_is_refused_naming_the_limit(tmp_path):
    config = tmp_path / "huge.yaml"
    config.write_text(BASE + "transforms:\n" + "  - {type: enrich, add: {k: v}}\n" * 400_000)
    size = config.stat().st_size
    assert size > 10 * MIB
    assert_refused(config, f"is {size:,} bytes; the limit is 1 MiB ({MAX_CONFIG_BYTES:,} bytes)")


def test_a_ten_megabyte_scalar_is_refused_in_one_short_line(tmp_path):
    config = tmp_path / "scalar.yaml"
    config.write_text(BASE + "note: " + "a" * (10 * MIB) + "\n")
    assert_refused(config, "the limit is 1 MiB")


def test_a_long_value_is_echoed_as_its_start_and_its_length(tmp_path):
    config = tmp_path / "long-value.yaml"
    long_name = "h" * (900 * 1024)  # under the size limit, so the value itself is checked
    config.write_text(BASE.replace("bucket: example-bucket", f"bucket: {long_name}"))
    line = assert_refused(config, "sink.bucket: 'hhhh", f"({len(long_name):,} characters)",
                          "is not a valid S3 bucket name")
    assert line.count("h") < 200


def test_a_long_unknown_section_name_is_cut_too(tmp_path):
    config = tmp_path / "long-key.yaml"
    config.write_text(BASE + "? " + "k" * (500 * 1024) + "\n: 1\n")  # an explicit long key
    assert_refused(config, "is not a section of the pipeline config", "characters)")


def test_too_many_values_are_refused_while_parsing(tmp_path):
    config = tmp_path / "many.yaml"
    config.write_text(BASE + "transforms:\n"
                      + "".join(f"  - {{type: enrich, add: {{k{i}: v}}}}\n" for i in range(25_000)))
    assert config.stat().st_size < MAX_CONFIG_BYTES
    assert_refused(config, "more than 20,000 values")


def test_every_loader_path_applies_the_bounds(tmp_path):
    """``run`` and reload read through load_config, the test kit through read_document."""
    from sqs_processor.config import load_plugin_settings
    from sqs_processor.yaml_loading import read_document

    config = tmp_path / "bomb.yaml"
    config.write_text(with_base(alias_bomb("telemetry")))
    for load in (load_config, load_plugin_settings, read_document):
        with pytest.raises(ConfigError, match="expands to more than 100,000 values"):
            load(config)


@pytest.mark.timeout(120)
def test_a_reload_to_a_hostile_config_is_rejected_and_the_pipeline_keeps_running(
        tmp_path, sqs, s3, bucket, aws_env):
    queue_url, _ = create_queue(sqs, unique("bounds"), visibility_timeout=30)
    config = tmp_path / "pipeline.yaml"
    good = pipeline_config(queue_url, bucket)
    config.write_text(yaml.safe_dump(good, sort_keys=False))
    process = ProcessorProcess(config, cli_env(aws_env))
    try:
        process.wait_event("started", timeout=60)
        rss_before = process.rss_bytes()
        config.write_text(yaml.safe_dump(good, sort_keys=False) + alias_bomb("telemetry"))
        rejected = process.wait_event("reload_rejected", timeout=60)
        assert "expands to more than 100,000 values" in rejected["message"]
        assert process.rss_bytes() < rss_before + 50 * MIB
        sent = send_bodies(sqs, queue_url, ['{"after": "the rejected reload"}'])
        wait_for(lambda: len(stored_objects(s3, bucket)) == len(sent), timeout=60,
                 message="a message stored by the old pipeline after the rejected reload")
        process.terminate()
        assert process.finish(30) == 0
    finally:
        process.stop()
