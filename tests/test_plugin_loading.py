"""Where plugins come from and what happens when they misbehave.

Drop-in folders (``plugins.paths``), module references (``plugins.modules``), entry points of
installed distributions, and the errors for each kind of broken plugin; then the lifecycle
observers and readiness checks that plugins add to a running pipeline (moto server over HTTP).
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import textwrap
import types
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers.support import (
    CLI,
    cli_env,
    pipeline_config,
    queue_counts,
    stored_objects,
    wait_for,
    write_config,
)

from sqs_processor import ConfigError, SinkSpec, TransformSpec, hookimpl
from sqs_processor import health as health_module
from sqs_processor.config import PluginSettings, load_config, load_plugin_settings
from sqs_processor.health import HealthServer
from sqs_processor.loaders import build_plugin_manager
from sqs_processor.pipeline import build_pipeline
from sqs_processor.provenance import Provider

FAKE_QUEUE = "https://sqs.us-east-1.amazonaws.com/123456789012/plugin-tests"
SCRIPT = Path(sys.executable).with_name("sqs-processor")
COMMAND = [str(SCRIPT)] if SCRIPT.exists() else CLI
"""The installed ``sqs-processor`` console script (falls back to ``python -m``)."""

TAG_PLUGIN = '''
from sqs_processor import Option, TransformSpec, hookimpl


def build(options, context):
    value = options["value"]

    def add_tag(record):
        record.document["my_tag"] = value
        return record

    return add_tag


@hookimpl
def sqs_processor_transforms():
    return TransformSpec(
        name="my_tag",
        factory=build,
        description="Sets my_tag on every document.",
        options=(Option("value", str, description="The tag."),),
    )
'''


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def plugin_module(name: str, **hooks: Any) -> types.ModuleType:
    """An in-memory plugin: a module whose attributes are the given functions, marked."""
    module = types.ModuleType(name)
    for hook, function in hooks.items():
        setattr(module, hook, hookimpl(function))
    return module


def transform_spec(name: str) -> TransformSpec:
    return TransformSpec(name=name, factory=lambda options, context: (lambda record: record),
                         description=f"{name} for tests")


def offline_config(**sections: Any) -> dict[str, Any]:
    """A pipeline config that ``validate`` can build without the network."""
    return pipeline_config(FAKE_QUEUE, "plugin-tests-bucket", aws={"region": "us-east-1"},
                           **sections)


def run_cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*COMMAND, *args], capture_output=True, text=True, timeout=60,
                          env=cli_env({}, **env))


def stderr_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]


# --------------------------------------------------------------------------------------------
# Drop-in folders
# --------------------------------------------------------------------------------------------


def test_dropin_transform_from_plugins_paths_runs_end_to_end(
    sqs, s3, queue_url, bucket, run_pipeline, tmp_path
):
    dropins = tmp_path / "dropins"
    write(dropins / "my_tag.py", TAG_PLUGIN)
    # None of these may be imported: each would fail the config if it were.
    write(dropins / "_private_helpers.py", "raise RuntimeError('underscore files are skipped')")
    write(dropins / "__init__.py", "raise RuntimeError('underscore files are skipped')")
    write(dropins / ".hidden.py", "raise RuntimeError('dot files are skipped')")
    write(dropins / "nested" / "deeper.py", "raise RuntimeError('folders are not recursed')")
    write(dropins / "notes.txt", "not python")

    body = '{"order": 42}'
    message_id = sqs.send_message(QueueUrl=queue_url, MessageBody=body)["MessageId"]
    config = pipeline_config(queue_url, bucket, plugins={"paths": [str(dropins)]},
                             transforms=["json_parse", "enrich",
                                         {"type": "my_tag", "value": "blue"}])
    running = run_pipeline(config)
    wait_for(lambda: running.stats["processed"] == 1, message="1 message processed")
    wait_for(lambda: queue_counts(sqs, queue_url) == (0, 0), message="queue empty")
    assert running.stop() == 0

    used = running.pipeline.used["transforms[2]"]
    assert used.name == "my_tag"
    assert used.provider == Provider("file", str(dropins / "my_tag.py"))

    [document] = stored_objects(s3, bucket).values()
    assert document["message_id"] == message_id
    assert document["my_tag"] == "blue"
    assert document["parsed_body"] == {"order": 42}
    assert "received_at" in document  # enrich ran before the drop-in
    assert running.stats["failed"] == 0


BROKEN_DROPINS = {
    "raises": ('''
        from sqs_processor import hookimpl

        LIMIT = 3
        raise RuntimeError("cannot reach the licence server")
        ''', "RuntimeError", 4, "cannot reach the licence server"),
    "syntax": ('''
        from sqs_processor import hookimpl

        def sqs_processor_transforms(:
            return None
        ''', "SyntaxError", 3, None),
}


@pytest.mark.parametrize("case", BROKEN_DROPINS)
def test_dropin_that_fails_to_import_names_file_error_type_and_line(case, tmp_path):
    source, error_type, line, text = BROKEN_DROPINS[case]
    dropins = tmp_path / "dropins"
    write(dropins / "fine.py", TAG_PLUGIN)
    path = write(dropins / "broken_plugin.py", source)
    settings = PluginSettings(base_dir=tmp_path, plugin_paths=(dropins,))

    with pytest.raises(ConfigError) as caught:
        build_plugin_manager(settings)

    error = caught.value
    assert error.key == "plugins.paths[0]"
    assert str(path) in error.problem
    assert f"{error_type}:" in error.problem
    assert f"(line {line})" in error.problem
    if text:
        assert text in error.problem
    assert "\n" not in str(error)


@pytest.mark.parametrize("case", BROKEN_DROPINS)
def test_cli_validate_reports_a_broken_dropin_in_one_line_with_exit_2(case, tmp_path):
    source, error_type, line, _ = BROKEN_DROPINS[case]
    path = write(tmp_path / "plugins" / "broken_plugin.py", source)
    config = write_config(tmp_path, offline_config(plugins={"paths": ["plugins"]}))

    result = run_cli("validate", "--config", str(config))

    assert result.returncode == 2, result.stderr
    lines = stderr_lines(result)
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert lines[0].startswith("sqs-processor: config error: plugins.paths[0]: ")
    assert str(path) in lines[0]  # relative plugins.paths resolve against the config's folder
    assert f"{error_type}:" in lines[0]
    assert f"(line {line})" in lines[0]
    assert result.stdout == ""


# --------------------------------------------------------------------------------------------
# Module references
# --------------------------------------------------------------------------------------------


@pytest.fixture
def package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Path]]:
    """A fresh importable package (unique name), removed from sys.modules afterwards."""
    name = f"refplug_{uuid.uuid4().hex[:10]}"
    folder = write(tmp_path / "site" / name / "__init__.py", "").parent
    monkeypatch.syspath_prepend(str(folder.parent))
    yield name, folder
    for module in [m for m in sys.modules if m == name or m.startswith(f"{name}.")]:
        del sys.modules[module]


def test_plugins_module_and_attribute_references_are_registered(package, tmp_path):
    name, folder = package
    write(folder / "as_module.py", '''
        from sqs_processor import TransformSpec, hookimpl

        @hookimpl
        def sqs_processor_transforms():
            return TransformSpec(name="from_module", factory=lambda o, c: (lambda r: r))
        ''')
    write(folder / "as_attribute.py", '''
        from sqs_processor import TransformSpec, hookimpl

        class Plugin:
            @hookimpl
            def sqs_processor_transforms(self):
                return [TransformSpec(name="from_attribute", factory=lambda o, c: (lambda r: r))]

        holder = type("Holder", (), {"plugin": Plugin()})
        ''')
    module_ref = f"{name}.as_module"
    attribute_ref = f"{name}.as_attribute:holder.plugin"
    config = write_config(tmp_path, {"plugins": {"modules": [module_ref, attribute_ref]}})

    manager = build_plugin_manager(load_plugin_settings(config))

    transforms = manager.components("transform")
    assert transforms["from_module"].provider == Provider("module", module_ref)
    assert transforms["from_attribute"].provider == Provider("module", attribute_ref)
    assert manager.pm.get_plugin(f"module:{module_ref}") is sys.modules[module_ref]
    assert {"json_parse", "enrich"} <= set(transforms)  # the built-ins are still there


@pytest.mark.parametrize(("ref", "error_type"), [
    ("{pkg}.does_not_exist", "ModuleNotFoundError"),
    ("{pkg}.fails:plugin", "ZeroDivisionError"),
    ("{pkg}.empty:missing_attribute", "AttributeError"),
])
def test_plugins_reference_that_does_not_import_is_a_config_error(
    package, tmp_path, ref, error_type
):
    name, folder = package
    write(folder / "fails.py", "plugin = 1 / 0\n")
    write(folder / "empty.py", "")
    ref = ref.format(pkg=name)
    config = write_config(tmp_path, {"plugins": {"modules": ["json", ref]}})

    with pytest.raises(ConfigError) as caught:
        build_plugin_manager(load_plugin_settings(config))

    assert caught.value.key == "plugins.modules[1]"
    assert repr(ref) in caught.value.problem
    assert f"{error_type}:" in caught.value.problem


# --------------------------------------------------------------------------------------------
# Entry points of installed distributions
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Distribution:
    name: str
    version: str
    entry_point: str
    module: str
    source: str


GOOD_DIST = Distribution("myplug-dist", "1.2.3", "myplug", "myplug_mod", '''
    from sqs_processor import Option, TransformSpec, hookimpl


    def build(options, context):
        label = options["label"]

        def stamp(record):
            record.document["stamped_by"] = label
            return record

        return stamp


    @hookimpl
    def sqs_processor_transforms():
        return TransformSpec(name="ep_stamp", factory=build,
                             description="Stamps documents (from an entry point).",
                             options=(Option("label", str, "ep", "The stamp."),))
    ''')

BROKEN_DIST = Distribution("brokenplug-dist", "0.1.0", "brokenplug", "brokenplug_mod", '''
    raise ImportError("brokenplug needs libmissing, which is not installed")

    from sqs_processor import TransformSpec, hookimpl


    @hookimpl
    def sqs_processor_transforms():
        return TransformSpec(name="broken_stamp", factory=lambda o, c: (lambda r: r))
    ''')


def _project(dist: Distribution, folder: Path) -> Path:
    write(folder / f"{dist.module}.py", dist.source)
    write(folder / "pyproject.toml", f'''
        [build-system]
        requires = ["setuptools>=61"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "{dist.name}"
        version = "{dist.version}"
        description = "A test plugin for sqs-processor."

        [project.entry-points.sqs_processor]
        {dist.entry_point} = "{dist.module}"

        [tool.setuptools]
        py-modules = ["{dist.module}"]
        ''')
    return folder


def _pip_install(dist: Distribution, workdir: Path, site: Path) -> None:
    # Built from source with the venv's setuptools (the dev extra asks for one that builds
    # wheels by itself), offline.
    target = _project(dist, workdir / dist.name)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
         "--no-index", "--disable-pip-version-check", "--target", str(site), str(target)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, f"pip install of {target} failed:\n{result.stdout}\n" \
                                   f"{result.stderr}"
    assert (site / f"{dist.module}.py").exists()


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two --target site folders: one with a working plugin, one with a broken one."""
    workdir = tmp_path_factory.mktemp("entrypoints")
    found = {}
    for key, dist in (("good", GOOD_DIST), ("broken", BROKEN_DIST)):
        found[key] = workdir / f"site-{key}"
        _pip_install(dist, workdir, found[key])
    return found


def _provider_of(dist: Distribution) -> str:
    return (f"entry point '{dist.entry_point}' ({dist.module}) from {dist.name} "
            f"{dist.version}")


def test_entry_point_plugin_is_listed_with_its_distribution_and_validates(sites, tmp_path):
    listed = run_cli("plugins", PYTHONPATH=str(sites["good"]))
    assert listed.returncode == 0, listed.stderr
    [row] = [line for line in listed.stdout.splitlines() if " ep_stamp " in line]
    assert row.split()[0] == "transform"
    assert _provider_of(GOOD_DIST) in row
    assert "Stamps documents (from an entry point)." in row
    assert row.split()[2] == "ok"
    assert " broken " not in listed.stdout

    config = write_config(tmp_path, offline_config(
        transforms=["json_parse", {"type": "ep_stamp", "label": "x"}]))
    validated = run_cli("validate", "--config", str(config), PYTHONPATH=str(sites["good"]))
    assert validated.returncode == 0, validated.stderr
    assert f"transforms[1]: ep_stamp ({_provider_of(GOOD_DIST)})" in validated.stdout
    assert "config is valid" in validated.stdout


def test_autoload_false_makes_entry_point_plugins_unavailable(sites, tmp_path):
    config = write_config(tmp_path, offline_config(
        plugins={"autoload": False}, transforms=["json_parse", {"type": "ep_stamp"}]))

    validated = run_cli("validate", "--config", str(config), PYTHONPATH=str(sites["good"]))
    assert validated.returncode == 2
    [line] = stderr_lines(validated)
    assert "transforms[1].type: 'ep_stamp' is not a known transform" in line
    assert "Traceback" not in validated.stderr

    listed = run_cli("plugins", "--config", str(config), PYTHONPATH=str(sites["good"]))
    assert listed.returncode == 0, listed.stderr
    assert "ep_stamp" not in listed.stdout
    assert "json_parse" in listed.stdout


def test_broken_entry_point_warns_in_plugins_and_is_named_when_its_component_is_needed(
    sites, tmp_path
):
    pythonpath = f"{sites['good']}:{sites['broken']}"
    broken = f"{_provider_of(BROKEN_DIST)} (ImportError: brokenplug needs libmissing"

    listed = run_cli("plugins", PYTHONPATH=pythonpath)
    assert listed.returncode == 0, listed.stderr
    [row] = [line for line in listed.stdout.splitlines() if "brokenplug-dist" in line]
    assert row.split()[:3] == ["plugin", "brokenplug", "broken"]
    assert re.search(re.escape(_provider_of(BROKEN_DIST)) +
                     r"\s+ImportError: brokenplug needs libmissing", row), row
    assert "brokenplug_mod.py, line 1)" in row  # where it was raised
    assert " ep_stamp " in listed.stdout  # the working plugin is unaffected
    assert any("WARNING" in line and "entry point 'brokenplug'" in line
               for line in stderr_lines(listed)), listed.stderr

    fine = write_config(tmp_path, offline_config(transforms=[{"type": "ep_stamp"}]), "fine.yaml")
    assert run_cli("validate", "--config", str(fine), PYTHONPATH=pythonpath).returncode == 0

    needs = write_config(tmp_path, offline_config(transforms=[{"type": "broken_stamp"}]))
    validated = run_cli("validate", "--config", str(needs), PYTHONPATH=pythonpath)
    assert validated.returncode == 2
    assert "Traceback" not in validated.stderr
    error = stderr_lines(validated)[-1]
    assert error.startswith("sqs-processor: config error: transforms[0].type: 'broken_stamp'")
    assert f"plugins that failed to load: {broken}" in error


# --------------------------------------------------------------------------------------------
# Invalid plugins
# --------------------------------------------------------------------------------------------


def test_duplicate_component_names_from_two_plugins_name_both_providers():
    first = plugin_module("first", sqs_processor_transforms=lambda: transform_spec("dup"))
    second = plugin_module("second", sqs_processor_transforms=lambda: [transform_spec("dup")])
    manager = build_plugin_manager(extra_plugins=[("first_plugin", first),
                                                  ("second_plugin", second)])
    with pytest.raises(ConfigError) as caught:
        manager.components("transform")
    assert "transform 'dup' is registered twice" in str(caught.value)
    assert "by module first_plugin and by module second_plugin" in str(caught.value)


def test_dropin_reusing_a_builtin_name_names_the_builtin_and_the_file(tmp_path):
    path = write(tmp_path / "dropins" / "shadow.py", '''
        from sqs_processor import TransformSpec, hookimpl

        @hookimpl
        def sqs_processor_transforms():
            return TransformSpec(name="Enrich", factory=lambda o, c: (lambda r: r))
        ''')
    config = load_config(write_config(tmp_path, offline_config(plugins={"paths": ["dropins"]})))
    manager = build_plugin_manager(config.plugin_settings)
    with pytest.raises(ConfigError) as caught:
        build_pipeline(config, manager)
    message = str(caught.value)
    assert "'enrich' is registered twice" in message
    assert f"by built-in sqs_processor.plugins.enrich and by file {path}" in message


def test_misspelled_hook_fails_check_pending_naming_the_plugin(tmp_path):
    path = write(tmp_path / "dropins" / "typo.py", '''
        from sqs_processor import hookimpl

        @hookimpl
        def sqs_processor_transfroms():
            return []
        ''')
    settings = PluginSettings(base_dir=tmp_path, plugin_paths=(path.parent,))
    with pytest.raises(ConfigError) as caught:
        build_plugin_manager(settings)
    message = str(caught.value)
    assert caught.value.key == "plugins"
    assert f"file {path} implements a hook that does not exist" in message
    assert "sqs_processor_transfroms" in message

    typo = plugin_module("typo", sqs_processor_startupp=lambda pipeline: None)
    with pytest.raises(ConfigError, match=r"module typo_plugin implements a hook that does not "
                                          r"exist: unknown hook 'sqs_processor_startupp'"):
        build_plugin_manager(extra_plugins=[("typo_plugin", typo)])


def test_hookimpl_with_an_argument_the_spec_lacks_is_rejected_naming_the_plugin(tmp_path):
    path = write(tmp_path / "dropins" / "extra_arg.py", '''
        from sqs_processor import hookimpl

        @hookimpl
        def sqs_processor_message_written(record, destination):
            pass
        ''')
    settings = PluginSettings(base_dir=tmp_path, plugin_paths=(path.parent,))
    with pytest.raises(ConfigError) as caught:
        build_plugin_manager(settings)
    message = str(caught.value)
    assert f"file {path} is not a valid plugin" in message
    assert "sqs_processor_message_written" in message
    assert "'destination'" in message


def test_cli_reports_a_hookimpl_with_an_unknown_argument_on_one_line(tmp_path):
    path = write(tmp_path / "dropins" / "extra_arg.py", '''
        from sqs_processor import hookimpl

        @hookimpl
        def sqs_processor_message_written(record, destination):
            pass
        ''')
    config = write_config(tmp_path, offline_config(plugins={"paths": ["dropins"]}))
    result = run_cli("validate", "--config", str(config))
    assert result.returncode == 2
    assert str(path) in result.stderr
    assert len(stderr_lines(result)) == 1, result.stderr


def test_registration_hook_returning_the_wrong_record_type_names_the_plugin():
    wrong = plugin_module("wrong", sqs_processor_transforms=lambda: SinkSpec(
        name="not_a_transform", factory=lambda options, context: None))
    manager = build_plugin_manager(extra_plugins=[("wrong_plugin", wrong)])
    with pytest.raises(ConfigError) as caught:
        manager.components("transform")
    assert caught.value.key == "plugins"
    assert ("module wrong_plugin: sqs_processor_transforms returned SinkSpec, expected "
            "TransformSpec") in str(caught.value)


def test_registration_hook_that_raises_marks_the_plugin_broken_and_keeps_the_others(caplog):
    def explode():
        raise RuntimeError("no licence")

    raiser = plugin_module("raiser", sqs_processor_transforms=explode,
                           sqs_processor_sinks=lambda: SinkSpec(
                               name="raiser_sink", factory=lambda options, context: None))
    healthy = plugin_module("healthy", sqs_processor_transforms=lambda: transform_spec("good"))
    manager = build_plugin_manager(extra_plugins=[("raiser", raiser), ("healthy", healthy)])

    with caplog.at_level(logging.WARNING, logger="sqs_processor.manager"):
        transforms = manager.components("transform")

    assert {"good", "json_parse", "enrich"} <= set(transforms)
    assert "raiser_sink" in manager.components("sink")  # its other hook still counts
    [broken] = manager.broken
    assert broken.provider == Provider("module", "raiser")
    assert "sqs_processor_transforms raised RuntimeError: no licence" in broken.error
    assert any("module raiser" in r.getMessage() and r.levelno == logging.WARNING
               for r in caplog.records)

    with pytest.raises(ConfigError) as caught:
        manager.get("transform", "raiser_step", "transforms[0]")
    line = explode.__code__.co_firstlineno + 1
    assert "plugins that failed to load: module raiser (sqs_processor_transforms raised " \
           f"RuntimeError: no licence ({__file__}, line {line}))" in str(caught.value)


def test_each_build_plugin_manager_call_is_independent(tmp_path):
    extra = plugin_module("extra", sqs_processor_transforms=lambda: transform_spec("leaky"))
    path = write(tmp_path / "dropins" / "dropin.py", TAG_PLUGIN)

    first = build_plugin_manager(PluginSettings(base_dir=tmp_path, plugin_paths=(path.parent,)),
                                 extra_plugins=[("extra", extra)])
    second = build_plugin_manager()
    third = build_plugin_manager(extra_plugins=[("extra", extra)])  # same object: no clash

    assert {"leaky", "my_tag"} <= set(first.components("transform"))
    assert "leaky" not in second.components("transform")
    assert "my_tag" not in second.components("transform")
    assert second.pm.get_plugin("extra") is None
    assert second.pm is not first.pm
    assert first.pm.get_plugin("extra") is third.pm.get_plugin("extra") is extra
    assert "leaky" in third.components("transform")
    assert "my_tag" not in third.components("transform")


# --------------------------------------------------------------------------------------------
# Lifecycle observers in a real run
# --------------------------------------------------------------------------------------------

RECORDER = '''
import threading

from sqs_processor import hookimpl

EVENTS = []
LOCK = threading.Lock()


def note(*event):
    with LOCK:
        EVENTS.append(event)


@hookimpl
def sqs_processor_startup(pipeline):
    note("startup", pipeline, threading.current_thread().name)


@hookimpl
def sqs_processor_batch_received(messages, pipeline):
    note("received", pipeline, tuple(m.message_id for m in messages))


@hookimpl
def sqs_processor_message_written(record, result):
    note("written", record.message.message_id, result.location, result.created,
         record.document.get("parsed_body"))


@hookimpl
def sqs_processor_batch_acked(messages):
    note("acked", tuple(m.message_id for m in messages))


@hookimpl
def sqs_processor_shutdown(pipeline):
    note("shutdown", pipeline, pipeline.stats.snapshot()["processed"])
'''

# No sqs_processor_startup here: a startup hook that raises stops the run (see
# test_failure_isolation.py); the other lifecycle hooks are observers.
RAISER = '''
from sqs_processor import hookimpl


@hookimpl
def sqs_processor_batch_received(messages):
    raise RuntimeError("observer bug on receive")


@hookimpl
def sqs_processor_message_written(record, result):
    raise RuntimeError("observer bug on write")


@hookimpl
def sqs_processor_batch_acked(messages):
    raise RuntimeError("observer bug on ack")


@hookimpl
def sqs_processor_shutdown(pipeline):
    raise RuntimeError("observer bug at shutdown")
'''


def _dropin(running: Any, path: Path) -> types.ModuleType:
    module = running.pipeline.plugins.pm.get_plugin(f"file:{path}")
    assert module is not None, f"{path} was not registered"
    return module


def _send_all(sqs: Any, queue_url: str, bodies: list[str]) -> list[str]:
    return [sqs.send_message(QueueUrl=queue_url, MessageBody=b)["MessageId"] for b in bodies]


def test_lifecycle_observers_see_each_stage_of_a_real_run(
    sqs, s3, queue_url, bucket, run_pipeline, tmp_path
):
    recorder = write(tmp_path / "dropins" / "recorder.py", RECORDER)
    sent = _send_all(sqs, queue_url, ['{"n": 1}', '{"n": 2}', "plain text"])
    running = run_pipeline(pipeline_config(queue_url, bucket,
                                           plugins={"paths": [str(recorder.parent)]}))
    wait_for(lambda: running.stats["processed"] == 3, message="3 messages processed")
    wait_for(lambda: queue_counts(sqs, queue_url) == (0, 0), message="queue empty")
    assert running.stop() == 0

    events = list(_dropin(running, recorder).EVENTS)
    kinds = [e[0] for e in events]
    assert kinds[0] == "startup" and kinds.count("startup") == 1
    assert kinds[-1] == "shutdown" and kinds.count("shutdown") == 1
    assert events[0][1] is running.pipeline
    assert events[0][2] == running.thread.name  # the thread that called Runner.run()
    assert events[-1][1] is running.pipeline and events[-1][2] == 3

    received = [mid for e in events if e[0] == "received" for mid in e[2]]
    assert all(e[1] is running.pipeline for e in events if e[0] == "received")
    acked = [mid for e in events if e[0] == "acked" for mid in e[1]]
    written = {e[1]: e for e in events if e[0] == "written"}
    assert sorted(received) == sorted(sent)
    assert sorted(acked) == sorted(sent)
    assert set(written) == set(sent)

    keys = set(stored_objects(s3, bucket))
    for message_id, (_, _, location, created, _) in written.items():
        assert created is True
        assert location.startswith(f"s3://{bucket}/archive/")
        assert location.endswith(f"/{message_id}.json")
        assert location.removeprefix(f"s3://{bucket}/") in keys
    assert written[sent[0]][4] == {"n": 1}  # observers see the transformed record
    assert written[sent[2]][4] is None

    def position(kind: str, message_id: str) -> int:
        return next(i for i, e in enumerate(events) if e[0] == kind and
                    (message_id == e[1] if kind == "written" else message_id in e[-1]))

    for message_id in sent:
        assert position("received", message_id) < position("written", message_id) \
            < position("acked", message_id)


def test_observer_that_raises_does_not_stop_archiving_or_deleting(
    sqs, s3, queue_url, bucket, run_pipeline, tmp_path, caplog
):
    dropins = tmp_path / "dropins"
    raiser = write(dropins / "a_raiser.py", RAISER)
    recorder = write(dropins / "b_recorder.py", RECORDER)
    sent = _send_all(sqs, queue_url, ['{"n": 1}', '{"n": 2}'])

    with caplog.at_level(logging.WARNING, logger="sqs_processor.runner"):
        running = run_pipeline(pipeline_config(queue_url, bucket,
                                               plugins={"paths": [str(dropins)]}))
        wait_for(lambda: running.stats["processed"] == 2, message="2 messages processed")
        wait_for(lambda: queue_counts(sqs, queue_url) == (0, 0), message="queue empty")
        assert running.stop() == 0

    stats = running.stats
    assert stats["written"] == 2 and stats["failed"] == 0 and stats["processed"] == 2
    assert {doc["message_id"] for doc in stored_objects(s3, bucket).values()} == set(sent)

    # The other observer was still called for every stage.
    kinds = [e[0] for e in _dropin(running, recorder).EVENTS]
    assert kinds.count("written") == 2 and kinds[0] == "startup" and kinds[-1] == "shutdown"

    failed = {r.getMessage() for r in caplog.records
              if getattr(r, "event", None) == "observer_failed"}
    for hook, text in [("sqs_processor_batch_received", "on receive"),
                       ("sqs_processor_message_written", "on write"),
                       ("sqs_processor_batch_acked", "on ack"),
                       ("sqs_processor_shutdown", "at shutdown")]:
        expected = f"{hook} of plugin file:{raiser} raised RuntimeError: observer bug {text}"
        assert expected in failed, failed


def test_wrapper_hookimpl_is_rejected_naming_the_file(tmp_path):
    path = write(tmp_path / "dropins" / "wrapper.py", '''
        from sqs_processor import hookimpl

        @hookimpl(wrapper=True)
        def sqs_processor_startup(pipeline):
            yield
        ''')
    settings = PluginSettings(base_dir=tmp_path, plugin_paths=(path.parent,))
    with pytest.raises(ConfigError) as caught:
        build_plugin_manager(settings)
    assert str(path) in str(caught.value)
    assert "sqs_processor_startup as a hook wrapper" in str(caught.value)


# --------------------------------------------------------------------------------------------
# Readiness checks from plugins
# --------------------------------------------------------------------------------------------

CHECKS = '''
from sqs_processor import CheckResult, HealthCheckSpec, hookimpl

STATE = {"explode": True}


def flaky():
    if STATE["explode"]:
        raise RuntimeError("probe exploded")
    return CheckResult(True, "probe recovered")


def fine():
    return CheckResult(True, "custom dependency reachable")


@hookimpl
def sqs_processor_health_checks(pipeline):
    return [HealthCheckSpec(name="flaky", check=flaky),
            HealthCheckSpec(name="custom_ok", check=fine, description="Always fine.")]
'''


def _get(port: int, path: str) -> tuple[int, dict[str, Any]]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_plugin_health_check_that_raises_fails_readyz_but_other_checks_are_reported(
    queue_url, bucket, run_pipeline, tmp_path, monkeypatch
):
    monkeypatch.setattr(health_module, "CHECK_CACHE_SECONDS", 0.0)
    path = write(tmp_path / "dropins" / "checks.py", CHECKS)
    running = run_pipeline(pipeline_config(queue_url, bucket,
                                           plugins={"paths": [str(path.parent)]}))
    server = HealthServer(running.runner, "127.0.0.1", 0)
    server.start()
    try:
        status, body = _get(server.port, "/readyz")
        assert status == 503
        assert body["status"] == "not ready" and body["state"] == "running"
        checks = {c["name"]: c for c in body["checks"]}
        assert set(checks) == {"sqs_receive", "s3_write", "flaky", "custom_ok"}
        assert checks["flaky"]["ok"] is False
        assert checks["flaky"]["detail"] == "check raised RuntimeError: probe exploded"
        assert checks["flaky"]["plugin"] == f"file {path}"
        assert checks["custom_ok"] == {"name": "custom_ok", "ok": True,
                                       "detail": "custom dependency reachable",
                                       "plugin": f"file {path}"}
        assert checks["sqs_receive"]["ok"] and checks["s3_write"]["ok"]

        status, body = _get(server.port, "/health")
        assert status == 503 and body["status"] == "unhealthy"
        assert body["live"]["status"] == "alive"

        _dropin(running, path).STATE["explode"] = False
        status, body = _get(server.port, "/readyz")
        assert status == 200, body
        assert body["status"] == "ready"
        assert all(c["ok"] for c in body["checks"])
    finally:
        server.stop()
    assert running.stop() == 0


def test_health_checks_hook_that_raises_is_reported_without_a_traceback(tmp_path):
    path = write(tmp_path / "dropins" / "bad_checks.py", '''
        from sqs_processor import hookimpl

        @hookimpl
        def sqs_processor_health_checks(pipeline):
            raise RuntimeError("health hook bug")
        ''')
    config = write_config(tmp_path, offline_config(plugins={"paths": ["dropins"]}))
    result = run_cli("validate", "--config", str(config))
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode in (0, 2)
    output = result.stdout + result.stderr
    assert str(path) in output
    assert "RuntimeError: health hook bug" in output


def test_plugin_sections_of_the_yaml_resolve_against_the_config_folder(tmp_path):
    """What the drop-in and reference tests above rely on when they write relative paths."""
    config = offline_config(plugins={"paths": ["dropins"], "modules": ["json"],
                                     "autoload": False})
    (tmp_path / "dropins").mkdir()
    path = write_config(tmp_path, config)
    assert yaml.safe_load(path.read_text())["plugins"]["autoload"] is False
    settings = load_config(path).plugin_settings
    assert settings == PluginSettings(base_dir=tmp_path.resolve(),
                                      plugin_paths=(tmp_path.resolve() / "dropins",),
                                      plugins=("json",), load_entrypoints=False)
