"""The README's examples and the shipped manifests work as written."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml
from support import CLI, ROOT, cli_env, pipeline_config, queue_counts, stored_objects, wait_for

README = (ROOT / "README.md").read_text(encoding="utf-8")


def _blocks(language: str, after: str) -> list[str]:
    section = README[README.index(after):]
    return re.findall(rf"```{language}\n(.*?)```", section, flags=re.S)


def test_readme_plugin_example_runs_end_to_end(sqs, s3, queue_url, bucket, run_pipeline,
                                               tmp_path: Path):
    plugin_code = _blocks("python", "## Writing a plugin")[0]
    yaml_snippet = yaml.safe_load(_blocks("yaml", "## Writing a plugin")[0])
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "copy_attribute.py").write_text(plugin_code)
    config = pipeline_config(queue_url, bucket, plugin_paths=[str(plugins)],
                             transforms=yaml_snippet["transforms"])
    message_id = sqs.send_message(
        QueueUrl=queue_url, MessageBody='{"a": 1}',
        MessageAttributes={"tenant": {"DataType": "String", "StringValue": "acme"}},
    )["MessageId"]
    with run_pipeline(config) as running:
        wait_for(lambda: running.stats["processed"] == 1, message="the message processed")
    (document,) = stored_objects(s3, bucket).values()
    assert document["message_id"] == message_id
    assert document["tenant"] == "acme"
    assert document["parsed_body"] == {"a": 1}
    assert queue_counts(sqs, queue_url) == (0, 0)


def test_readme_config_error_examples_match_the_real_output(aws_env, tmp_path: Path):
    shown = re.findall(r"^sqs-processor: config error: .*$", README, flags=re.M)
    assert len(shown) == 2
    env = cli_env(aws_env, SQS_QUEUE_URL="https://sqs.us-west-1.amazonaws.com/1/q",
                  S3_BUCKET_NAME="bucket", MAX_MESSAGES_PER_POLL="11")
    result = subprocess.run([*CLI, "validate"], env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip() == shown[0]

    path = tmp_path / "pipeline.yaml"
    path.write_text((ROOT / "configs" / "default.yaml").read_text().replace("type: s3", "type: s4"))
    env["MAX_MESSAGES_PER_POLL"] = "10"
    result = subprocess.run([*CLI, "validate", "--config", str(path)], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip() == shown[1]


def test_every_hook_is_in_the_readme_table():
    from sqs_processor import hookspecs

    names = [n for n in dir(hookspecs) if n.startswith("sqs_processor_")]
    assert names
    for name in names:
        assert f"`{name}(" in README, f"{name} is not documented in the README"
