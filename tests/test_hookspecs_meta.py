"""Meta-tests on the hook specifications: documented, with examples that run, and honoured.

In the style of datasette's ``test_plugin_hooks_are_documented``: the hookspecs module is the
plugin author's reference, so every hook must say when it is called and what it receives, and
its ``Example::`` block must be a working plugin, checked here by executing it and registering
it into a fresh plugin manager.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import re
import textwrap
import threading
import types
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from helpers.support import ROOT, pipeline_config, wait_for, write_config

from sqs_processor import (
    AckerSpec,
    CheckResult,
    ConfigError,
    HealthCheckSpec,
    Message,
    Record,
    SinkSpec,
    SourceSpec,
    TransformSpec,
    WriteResult,
    hookimpl,
    hookspecs,
)
from sqs_processor.config import load_config
from sqs_processor.loaders import BUILTIN_PLUGINS, build_plugin_manager
from sqs_processor.manager import SPEC_TYPES
from sqs_processor.pipeline import build_pipeline
from sqs_processor.provenance import Provider
from sqs_processor.runner import Runner
from sqs_processor.testing import ListSink, ListSource, RecordingAcker, run_pipeline

README = ROOT / "README.md"
EXAMPLES_DIR = ROOT / "configs" / "examples"
SPEC_MARK = f"{hookspecs.hookspec.project_name}_spec"
IMPL_MARK = f"{hookspecs.hookspec.project_name}_impl"
HEALTH_HOOK = hookspecs.HEALTH_HOOK
OBSERVER_HOOKS = hookspecs.OBSERVER_HOOKS
KIND_OF_HOOK = {hook: kind for kind, hook in hookspecs.REGISTRATION_HOOKS.items()}
FAKE_QUEUE = "https://sqs.us-east-1.amazonaws.com/123456789012/meta-queue"

HOOKSPECS: dict[str, Any] = {
    name: function
    for name, function in inspect.getmembers(hookspecs, inspect.isfunction)
    if hasattr(function, SPEC_MARK)
}

def _prose(doc: str) -> str:
    """The docstring without its example block."""
    return doc.split("Example::", 1)[0]


def _example(doc: str) -> str:
    """The code of the ``Example::`` block, dedented."""
    lines = doc.splitlines()
    starts = [i for i, line in enumerate(lines) if line.strip() == "Example::"]
    assert len(starts) == 1, "expected exactly one 'Example::' line"
    marker_indent = len(lines[starts[0]]) - len(lines[starts[0]].lstrip())
    block: list[str] = []
    for line in lines[starts[0] + 1:]:
        if line.strip() and len(line) - len(line.lstrip()) <= marker_indent:
            break
        block.append(line)
    return textwrap.dedent("\n".join(block)).strip("\n") + "\n"


def _run_example(hook: str) -> types.ModuleType:
    """Execute the hook's example in a fresh module namespace and return that module."""
    code = _example(inspect.getdoc(HOOKSPECS[hook]) or "")
    module = types.ModuleType(f"hookspec_example_{hook}")
    exec(compile(code, f"<{hook} example>", "exec"), module.__dict__)
    return module


def _sample_value(option: Any) -> Any:
    """A valid value for a required option, by its declared type."""
    if option.choices:
        return option.choices[0]
    samples = {str: "sample", int: 1, float: 1.0, bool: True, list: ["sample"], dict: {}}
    return samples[option.type]


def _offline_pipeline(tmp_path: Path, manager: Any, **sections: Any) -> Any:
    """A pipeline built (not started) from a config that needs no network.

    ``sections`` replace whole sections of the default test config.
    """
    config = pipeline_config(FAKE_QUEUE, "meta-bucket", aws={"region": "us-east-1"})
    # The acker defaults to the source's queue, which a non-SQS source does not have.
    config["ack"] = {"type": "sqs_delete", "queue_url": FAKE_QUEUE}
    config.update(sections)
    return build_pipeline(load_config(write_config(tmp_path, config)), manager)


def _sample_message() -> Message:
    return Message("meta-1", "rh-1", '{"x": 1}', datetime.now(UTC),
                   attributes={"SentTimestamp": "1700000000000", "ApproximateReceiveCount": "1"})


# --------------------------------------------------------------------------------------------
# The docstrings
# --------------------------------------------------------------------------------------------


def test_hookspecs_module_declares_the_known_hooks():
    assert len(HOOKSPECS) == 11
    assert set(hookspecs.REGISTRATION_HOOKS.values()) <= set(HOOKSPECS)


class EveryHook:
    """A plugin implementing all eleven hooks: in-memory components, a transform that fails one
    message, a readiness check, and every observer."""

    def __init__(self, bodies: list[str]) -> None:
        self.source = ListSource(bodies)
        self.sink = ListSink()
        self.acker = RecordingAcker()

    @hookimpl
    def sqs_processor_sources(self):
        return SourceSpec("meta.list", lambda options, context: self.source)

    @hookimpl
    def sqs_processor_transforms(self):
        def refuse_bad(record):
            if record.message.body == "bad":
                raise ValueError("bad message")
            return record

        return TransformSpec("meta.refuse_bad", lambda options, context: refuse_bad)

    @hookimpl
    def sqs_processor_sinks(self):
        return SinkSpec("meta.list", lambda options, context: self.sink)

    @hookimpl
    def sqs_processor_ackers(self):
        return AckerSpec("meta.recording", lambda options, context: self.acker)

    @hookimpl
    def sqs_processor_health_checks(self, pipeline):
        return HealthCheckSpec("meta", lambda: True)

    @hookimpl
    def sqs_processor_startup(self, pipeline):
        pass

    @hookimpl
    def sqs_processor_batch_received(self, messages):
        pass

    @hookimpl
    def sqs_processor_message_written(self, record):
        pass

    @hookimpl
    def sqs_processor_message_failed(self, stage):
        pass

    @hookimpl
    def sqs_processor_batch_acked(self, messages):
        pass

    @hookimpl
    def sqs_processor_shutdown(self, pipeline):
        pass


EVERY_HOOK_CONFIG = {
    "aws": {"region": "us-east-1"},
    "source": {"type": "meta.list"},
    "transforms": ["meta.refuse_bad"],
    "sink": {"type": "meta.list"},
    "ack": {"type": "meta.recording"},
}


def _monitored_calls(manager: Any) -> list[str]:
    """Record every hook call pluggy makes for ``manager`` (pluggy's own hook monitoring)."""
    calls: list[str] = []
    manager.pm.add_hookcall_monitoring(lambda name, impls, kwargs: calls.append(name),
                                       lambda outcome, name, impls, kwargs: None)
    return calls


def test_the_runner_calls_every_hook_through_pluggy(tmp_path):
    """A hookspec nothing calls would be a hook plugins implement in vain; pluggy's monitoring
    sees each call because every hook goes through pluggy's hook callers."""
    plugin = EveryHook(["good", "bad"])
    config = load_config(write_config(tmp_path, {**EVERY_HOOK_CONFIG,
                                                 "service": {"health_port": 0}}))
    manager = build_plugin_manager(config.plugin_settings, extra_plugins=[("every", plugin)])
    calls = _monitored_calls(manager)
    pipeline = build_pipeline(config, manager)
    runner = Runner(pipeline)
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: pipeline.stats.snapshot()["processed"] == 1
                 and pipeline.stats.snapshot()["failed"] == 1, message="one stored, one failed")
    finally:
        runner.stop()
        thread.join(30)
    assert set(HOOKSPECS) == set(calls)
    assert calls.count("sqs_processor_shutdown") == 1 and calls.count("sqs_processor_startup") == 1


def test_the_test_kit_calls_every_hook_through_pluggy(monkeypatch):
    import sqs_processor.testing as kit

    calls: list[str] = []
    original = kit.build_plugin_manager

    def monitored(*args: Any, **kwargs: Any) -> Any:
        manager = original(*args, **kwargs)
        manager.pm.add_hookcall_monitoring(lambda name, impls, kw: calls.append(name),
                                           lambda outcome, name, impls, kw: None)
        return manager

    monkeypatch.setattr(kit, "build_plugin_manager", monitored)
    result = run_pipeline(["good", "bad"], config=dict(EVERY_HOOK_CONFIG),
                          plugins=[("every", EveryHook([]))])
    assert [f.stage for f in result.failures] == ["transform:meta.refuse_bad"]
    assert len(result.acked) == 1
    # The kit swaps in its own source, sink and acker, but still asks every plugin for
    # theirs, and calls every lifecycle hook as the runner does.
    assert set(HOOKSPECS) == set(calls)


@pytest.mark.parametrize("hook", sorted(HOOKSPECS))
def test_hookspec_docstring_says_when_it_is_called_and_has_one_example(hook):
    doc = inspect.getdoc(HOOKSPECS[hook])
    assert doc, f"{hook} has no docstring"
    prose = _prose(doc)
    assert re.search(r"\bcalled\b", prose, re.IGNORECASE), f"{hook} does not say when it is called"
    assert doc.count("Example::") == 1, f"{hook} needs exactly one Example:: block"
    assert _example(doc).strip(), f"{hook}'s Example:: block is empty"


@pytest.mark.parametrize("hook", sorted(HOOKSPECS))
def test_hookspec_docstring_names_every_argument(hook):
    function = HOOKSPECS[hook]
    prose = _prose(inspect.getdoc(function) or "")
    params = list(inspect.signature(function).parameters)
    if not params:
        assert "no arguments" in prose.lower(), f"{hook} should say it takes no arguments"
        return
    missing = [p for p in params if f"``{p}``" not in prose]
    assert not missing, f"{hook}'s docstring does not describe argument(s) {missing}"


# --------------------------------------------------------------------------------------------
# The examples
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("hook", sorted(HOOKSPECS))
def test_hookspec_example_executes_and_registers_cleanly(hook):
    module = _run_example(hook)
    impls = {name: obj for name, obj in vars(module).items() if hasattr(obj, IMPL_MARK)}
    assert hook in impls, f"the {hook} example does not implement {hook}"
    for name, function in impls.items():
        assert not [p for p in inspect.signature(function).parameters.values()
                    if p.default is not p.empty], f"{name} in the {hook} example has defaults"
    # build_plugin_manager() runs check_pending(): a misspelled or unknown hook would raise.
    manager = build_plugin_manager(extra_plugins=[(f"example:{hook}", module)])
    assert manager.pm.get_plugin(f"example:{hook}") is module
    assert not manager.broken


@pytest.mark.parametrize("hook", list(hookspecs.REGISTRATION_HOOKS.values()))
def test_registration_hook_example_provides_a_component_that_builds_and_works(hook, tmp_path):
    kind = KIND_OF_HOOK[hook]
    module = _run_example(hook)
    specs = getattr(module, hook)()
    specs = specs if isinstance(specs, list | tuple) else [specs]
    assert specs and all(isinstance(s, SPEC_TYPES[kind]) for s in specs)

    manager = build_plugin_manager(extra_plugins=[(f"example:{hook}", module)])
    available = manager.components(kind)
    for spec in specs:
        assert spec.name in available
        assert available[spec.name].provider == Provider("module", f"example:{hook}")
        assert available[spec.name].spec.description, "examples should describe themselves"

    spec = specs[0]
    block = {"type": spec.name,
             **{o.name: _sample_value(o) for o in spec.options if o.required}}
    section = {"source": "source", "transform": "transforms", "sink": "sink",
               "acker": "ack"}[kind]
    pipeline = _offline_pipeline(tmp_path, manager,
                                 **{section: [block] if kind == "transform" else block})
    where = f"{section}[0]" if kind == "transform" else section
    assert pipeline.used[where].name == spec.name

    message = _sample_message()
    if kind == "source":
        received = pipeline.source.receive()
        assert received and all(isinstance(m, Message) for m in received)
    elif kind == "transform":
        _, step = pipeline.transforms[0]
        assert isinstance(step(Record.from_message(message)), Record | type(None))
    elif kind == "sink":
        record = Record.from_message(message)
        assert isinstance(pipeline.sink.write(record), WriteResult)
        assert pipeline.sink.write(record).created is False, "example sink is not idempotent"
    else:
        assert pipeline.acker.ack([message]) == []


def test_health_checks_example_adds_a_readiness_check(tmp_path):
    module = _run_example(HEALTH_HOOK)
    manager = build_plugin_manager(extra_plugins=[("example:health", module)])
    pipeline = _offline_pipeline(tmp_path, manager)
    by_name = {spec.name: (spec, provider) for spec, provider in pipeline.health_checks}
    assert {"sqs_receive", "s3_write"} <= set(by_name)
    example = [name for name in by_name if name not in ("sqs_receive", "s3_write")]
    assert len(example) == 1
    spec, provider = by_name[example[0]]
    assert provider == Provider("module", "example:health")
    outcome = spec.check()
    assert isinstance(outcome, CheckResult | bool)


@pytest.mark.parametrize("hook", list(OBSERVER_HOOKS))
def test_lifecycle_hook_example_runs_against_a_built_pipeline(hook, tmp_path):
    module = _run_example(hook)
    manager = build_plugin_manager(extra_plugins=[(f"example:{hook}", module)])
    pipeline = _offline_pipeline(tmp_path, manager)
    message = _sample_message()
    kwargs = {
        "pipeline": pipeline,
        "messages": [message],
        "message": message,
        "record": Record.from_message(message),
        "result": WriteResult("memory:meta-1"),
        "stage": "transform:json_parse",
        "error": RuntimeError("example failure"),
    }
    callers = [caller for plugin, caller in manager.callers(hook) if plugin == f"example:{hook}"]
    assert len(callers) == 1
    [impl] = [i for i in callers[0].get_hookimpls() if i.plugin_name == f"example:{hook}"]
    assert set(impl.argnames) <= set(inspect.signature(HOOKSPECS[hook]).parameters)
    spec_args = inspect.signature(HOOKSPECS[hook]).parameters
    callers[0](**{name: kwargs[name] for name in spec_args})  # must not raise


# --------------------------------------------------------------------------------------------
# Hook implementations
# --------------------------------------------------------------------------------------------


def _hookimpls(module: types.ModuleType) -> dict[str, Any]:
    return {name: obj for name, obj in vars(module).items() if hasattr(obj, IMPL_MARK)}


def _defaulted(function: Any) -> list[str]:
    return [p.name for p in inspect.signature(function).parameters.values()
            if p.default is not inspect.Parameter.empty]


def _example_plugin_files() -> list[Path]:
    return sorted(EXAMPLES_DIR.rglob("*.py")) if EXAMPLES_DIR.is_dir() else []


def _load_example_file(path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(f"configs_example_{path.stem}", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_hook_argument_with_a_default_value_is_refused_at_registration():
    """Why the checks below exist: pluggy before 1.6 never passes an argument that has a
    default and later versions do, so such a plugin's behaviour would depend on the install."""
    def sqs_processor_batch_received(messages, pipeline=None):
        pass

    plugin = types.ModuleType("defaulted_plugin")
    plugin.sqs_processor_batch_received = hookimpl(sqs_processor_batch_received)
    with pytest.raises(ConfigError) as caught:
        build_plugin_manager(extra_plugins=[("defaulted", plugin)])
    assert str(caught.value) == (
        "plugins: module defaulted gives hook arguments default values: "
        "sqs_processor_batch_received(pipeline); remove the defaults (every argument a hook "
        "lists is always passed)")
    assert _defaulted(plugin.sqs_processor_batch_received) == ["pipeline"]


@pytest.mark.parametrize("module_name", BUILTIN_PLUGINS)
def test_builtin_hookimpls_have_no_default_arguments(module_name):
    impls = _hookimpls(importlib.import_module(module_name))
    assert impls, f"{module_name} implements no hook"
    offenders = {name: _defaulted(f) for name, f in impls.items() if _defaulted(f)}
    assert not offenders, f"{module_name}: pluggy does not pass defaults: {offenders}"


@pytest.mark.parametrize("path", _example_plugin_files(),
                         ids=lambda p: str(p.relative_to(EXAMPLES_DIR)))
def test_example_config_plugins_have_no_default_arguments(path):
    impls = _hookimpls(_load_example_file(path))
    offenders = {name: _defaulted(f) for name, f in impls.items() if _defaulted(f)}
    assert not offenders, f"{path}: pluggy does not pass defaults: {offenders}"
    unknown = set(impls) - set(HOOKSPECS)
    assert not unknown, f"{path} implements unknown hooks {unknown}"


@pytest.mark.parametrize("module_name", BUILTIN_PLUGINS)
def test_builtin_hookimpl_names_are_known_hookspecs(module_name):
    impls = _hookimpls(importlib.import_module(module_name))
    for name, function in impls.items():
        spec_name = (getattr(function, IMPL_MARK) or {}).get("specname") or name
        assert spec_name in HOOKSPECS, f"{module_name}.{name} implements no known hook"


def test_builtin_plugins_register_into_a_fresh_manager_without_pending_hooks():
    manager = build_plugin_manager()
    names = dict(manager.pm.list_name_plugin())
    for module_name in BUILTIN_PLUGINS:
        assert names[f"builtin:{module_name}"] is importlib.import_module(module_name)
    manager.check_pending()
    assert not manager.broken


# --------------------------------------------------------------------------------------------
# The README
# --------------------------------------------------------------------------------------------


@pytest.mark.skipif(not README.exists(), reason="README.md is not written yet")
@pytest.mark.parametrize("hook", sorted(HOOKSPECS))
def test_every_hookspec_is_documented_in_the_readme(hook):
    assert hook in README.read_text(encoding="utf-8"), f"{hook} is missing from README.md"
