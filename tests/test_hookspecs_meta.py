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
import types
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from support import ROOT, pipeline_config, write_config

from sqs_processor import CheckResult, Message, Record, WriteResult, hookimpl, hookspecs
from sqs_processor.config import load_config
from sqs_processor.manager import (
    BUILTIN_PLUGINS,
    SPEC_TYPES,
    Provider,
    build_plugin_manager,
    call_impl,
)
from sqs_processor.pipeline import build_pipeline
from sqs_processor.runner import OBSERVER_HOOKS

README = ROOT / "README.md"
EXAMPLES_DIR = ROOT / "configs" / "examples"
SPEC_MARK = f"{hookspecs.hookspec.project_name}_spec"
IMPL_MARK = f"{hookspecs.hookspec.project_name}_impl"
HEALTH_HOOK = "sqs_processor_health_checks"
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


def test_every_hookspec_is_called_by_the_engine():
    """A hookspec nothing calls would be a hook plugins implement in vain."""
    called = set(hookspecs.REGISTRATION_HOOKS.values()) | set(OBSERVER_HOOKS) | {HEALTH_HOOK}
    assert set(HOOKSPECS) == called


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
    section = {"source": "source", "transform": "transforms", "sink": "sink", "ack": "ack"}[kind]
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
    observers = [(f, args) for f, args, plugin in manager.observers(hook)
                 if plugin == f"example:{hook}"]
    assert len(observers) == 1
    function, argnames = observers[0]
    assert set(argnames) <= set(inspect.signature(HOOKSPECS[hook]).parameters)
    call_impl(function, argnames, kwargs)  # must not raise


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


def test_a_default_value_on_a_hookimpl_argument_is_never_passed():
    """Why the checks below exist: the engine, like pluggy, passes only non-default arguments."""
    seen = []

    def sqs_processor_batch_received(messages, pipeline=None):
        seen.append(pipeline)

    plugin = types.ModuleType("defaulted_plugin")
    plugin.sqs_processor_batch_received = hookimpl(sqs_processor_batch_received)
    manager = build_plugin_manager(extra_plugins=[("defaulted", plugin)])
    [(function, argnames, _)] = [o for o in manager.observers("sqs_processor_batch_received")
                                 if o[2] == "defaulted"]
    assert argnames == ("messages",)
    call_impl(function, argnames, {"pipeline": object(), "messages": []})
    assert seen == [None]
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
