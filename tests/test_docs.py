"""The README's examples, its generated configuration reference, the plugin authoring guide
and the shipped manifests work as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers.support import (
    CLI,
    ROOT,
    cli_env,
    pipeline_config,
    queue_counts,
    stored_objects,
    wait_for,
)

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
    config = pipeline_config(queue_url, bucket, plugins={"paths": [str(plugins)]},
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


# --------------------------------------------------------------------------------------------
# The generated configuration reference
# --------------------------------------------------------------------------------------------


def test_the_readme_configuration_reference_is_current():
    from sqs_processor.docs import config_reference, current_block

    assert current_block(README) == config_reference(), (
        "README.md's configuration reference is stale: run `make docs` (python -m "
        "sqs_processor.docs README.md) and commit the result")


def test_the_reference_documents_every_builtin_option_and_engine_section():
    from sqs_processor.docs import config_reference
    from sqs_processor.engine_options import AWS_OPTIONS, PLUGIN_OPTIONS, SERVICE_OPTIONS
    from sqs_processor.loaders import build_plugin_manager

    reference = config_reference()
    options = [*SERVICE_OPTIONS, *AWS_OPTIONS, *PLUGIN_OPTIONS]
    for component in build_plugin_manager().all_components():
        if component.provider.origin == "built-in":
            assert f"**`{component.name}` " in reference
            options += component.spec.options
    for option in options:
        assert f"| `{option.name}` | {option.type_label()} |" in reference, option.name


def test_docs_check_mode_fails_on_a_stale_file_and_make_docs_fixes_it(tmp_path: Path):
    stale = tmp_path / "README.md"
    stale.write_text(README.replace("| `max_in_flight` |", "| `max_inflight` |"))
    check = subprocess.run([*CLI[:1], "-m", "sqs_processor.docs", "--check", str(stale)],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 1
    assert "is stale; run `make docs`" in check.stderr
    fix = subprocess.run([*CLI[:1], "-m", "sqs_processor.docs", str(stale)],
                         capture_output=True, text=True, timeout=60)
    assert fix.returncode == 0, fix.stderr
    assert stale.read_text() == README


def test_the_readme_plugin_example_error_is_what_validate_prints(tmp_path: Path):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "copy_attribute.py").write_text(_blocks("python", "## Writing a plugin")[0])
    document = yaml.safe_load(_blocks("yaml", "## Writing a plugin")[0])
    document["transforms"][2].pop("field")
    document.update(aws={"region": "us-east-1"},
                    source={"type": "sqs", "queue_url": "https://sqs.us-east-1.amazonaws.com/"
                                                        "123456789012/q"},
                    sink={"type": "s3", "bucket": "b-1"}, ack={"type": "sqs_delete"})
    config = tmp_path / "pipeline.yaml"
    config.write_text(yaml.safe_dump(document))
    result = subprocess.run([*CLI, "validate", "--config", str(config)], capture_output=True,
                            text=True, timeout=60, env=cli_env({}))
    assert result.returncode == 2
    shown = re.search(r"a missing\s+`field` is `(.*?)`\)", README, flags=re.S).group(1)
    expected = " ".join(shown.split()).replace(".../plugins/", f"{plugins}/")
    assert result.stderr.strip() == f"sqs-processor: config error: {expected}"


# --------------------------------------------------------------------------------------------
# The plugin authoring guide (docs/plugins.md)
# --------------------------------------------------------------------------------------------

GUIDE = ROOT / "docs" / "plugins.md"


def _guide_files() -> dict[str, str]:
    """Every code block of the guide, by the file name in the comment above it."""
    text = GUIDE.read_text(encoding="utf-8")
    blocks = re.findall(r"(<!-- file: (\S+) -->\n)?```(\w*)\n(.*?)```", text, flags=re.S)
    files = {}
    for marker, name, language, code in blocks:
        assert marker, f"a ```{language} block in docs/plugins.md has no <!-- file: ... --> " \
                       f"comment, so no test runs it: {code[:60]!r}"
        files[name] = code
    return files


@pytest.fixture(scope="module")
def guide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The guide's files written out as a plugin author's project."""
    root = tmp_path_factory.mktemp("guide")
    for name, code in _guide_files().items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(code, encoding="utf-8")
    return root


def test_every_code_block_of_the_guide_is_a_named_file():
    assert set(_guide_files()) == {"plugins/tenant.py", "pipeline.yaml", "test_tenant.py",
                                   "configmap.yaml", "pyproject.toml", "try-it-locally.sh"}


def test_the_guides_example_test_file_passes_as_written(guide: Path):
    env = {k: v for k, v in cli_env({}).items() if not k.startswith("SQS_PROCESSOR_")}
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             "test_tenant.py"], cwd=guide, capture_output=True, text=True,
                            timeout=120, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 passed" in result.stdout


def test_the_guides_pipeline_validates_and_describes_its_plugin(guide: Path):
    env = cli_env({}, SQS_QUEUE_URL="https://sqs.us-west-1.amazonaws.com/123456789012/orders",
                  S3_BUCKET_NAME="orders-archive", AWS_REGION="us-west-1")
    config = str(guide / "pipeline.yaml")
    validated = subprocess.run([*CLI, "validate", "--config", config], env=env,
                               capture_output=True, text=True, timeout=60)
    assert validated.returncode == 0, validated.stderr
    assert f"transforms[1]: tenant (file {guide / 'plugins' / 'tenant.py'})" in validated.stdout
    described = subprocess.run([*CLI, "plugins", "--config", config, "--describe", "tenant"],
                               env=env, capture_output=True, text=True, timeout=60)
    assert described.returncode == 0, described.stderr
    lines = described.stdout.splitlines()
    assert lines[0] == "transform tenant"
    assert [line.split()[:3] for line in lines if line.strip().startswith("missing")] == [
        ["missing", "string", "keep"]]


def test_the_guides_configmap_ships_the_same_plugin_and_validates(guide: Path, tmp_path: Path):
    [configmap] = yaml.safe_load_all((guide / "configmap.yaml").read_text())
    assert configmap["kind"] == "ConfigMap"
    data = configmap["data"]
    assert data["tenant.py"] == (guide / "plugins" / "tenant.py").read_text()
    mount = tmp_path / "etc-sqs-processor"  # what the volume's items put at the mount path
    mount.mkdir()
    for key in ("pipeline.yaml", "tenant.py"):
        (mount / key).write_text(data[key])
    env = cli_env({}, SQS_QUEUE_URL="https://sqs.us-west-1.amazonaws.com/123456789012/orders",
                  S3_BUCKET_NAME="orders-archive", AWS_REGION="us-west-1")
    result = subprocess.run([*CLI, "validate", "--config", str(mount / "pipeline.yaml")],
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "sqs -> json_parse -> tenant -> enrich -> s3 -> sqs_delete" in result.stdout


def test_the_guides_entry_point_declaration_registers_the_plugin(guide: Path, tmp_path: Path):
    import tomllib

    project = tomllib.loads((guide / "pyproject.toml").read_text())["project"]
    [(name, module)] = project["entry-points"]["sqs_processor"].items()
    site = tmp_path / "site"  # the distribution as pip would install it
    info = site / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\n"
                                   f"Version: {project['version']}\n")
    (info / "entry_points.txt").write_text(f"[sqs_processor]\n{name} = {module}\n")
    (site / f"{module}.py").write_text((guide / "plugins" / "tenant.py").read_text())
    result = subprocess.run([*CLI, "plugins"], capture_output=True, text=True, timeout=60,
                            env=cli_env({}, PYTHONPATH=str(site)))
    assert result.returncode == 0, result.stderr
    [row] = [line for line in result.stdout.splitlines() if line.split()[1:2] == ["tenant"]]
    provider = re.search(r"lists `tenant` with its provider, `(.*?)`\.",
                         GUIDE.read_text(), flags=re.S).group(1)
    assert " ".join(provider.split()) in row


def test_the_guides_try_it_locally_steps_work_as_written(guide: Path, emulator: str):
    """The three commands of "Try it locally", run from the guide's folder against the
    session's emulator (``LOCAL_ENDPOINT_URL``): the samples are dropped, the tenant's message
    is stored with its tenant."""
    import json
    import shlex
    import signal
    import threading
    import uuid

    script = (guide / "try-it-locally.sh").read_text().splitlines()
    commands = [shlex.split(line, comments=True) for line in script
                if line.startswith("python -m ")]
    assert [c[:4] for c in commands] == [["python", "-m", "sqs_processor.local", verb]
                                         for verb in ("run", "send", "list")]
    run, send, listing = ([sys.executable, *c[1:]] for c in commands)
    name = f"guide-{uuid.uuid4().hex[:10]}"
    env = {k: v for k, v in cli_env({}).items() if not k.startswith(("AWS_", "SQS_PROCESSOR"))}
    env.update(LOCAL_ENDPOINT_URL=emulator, SQS_QUEUE_URL=f"{emulator}/123456789012/{name}",
               S3_BUCKET_NAME=name, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")
    process = subprocess.Popen(run, cwd=guide, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stderr), daemon=True)
    reader.start()
    try:
        wait_for(lambda: sum("dropped by transform tenant" in line for line in lines) == 3
                 or process.poll() is not None, timeout=90, message="the samples dropped")
        assert process.poll() is None, "".join(lines[-30:])
        sent = subprocess.run(send, cwd=guide, env=env, capture_output=True, text=True,
                              timeout=60)
        assert sent.returncode == 0, sent.stderr

        def stored() -> list[dict]:
            shown = subprocess.run(listing, cwd=guide, env=env, capture_output=True, text=True,
                                   timeout=60)
            assert shown.returncode == 0, shown.stderr
            return [json.loads(line) for line in shown.stdout.splitlines()
                    if line.startswith("  {")]

        [document] = wait_for(stored, timeout=60, message="the tenant's message stored")
        assert document["tenant"] == "acme"
        assert document["parsed_body"] == {"order": 7}
        process.send_signal(signal.SIGINT)
        assert process.wait(60) == 0, "".join(lines[-30:])
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
