"""The shape of the code, checked: size bounds, the closed public API, no probing of components.

These are the rules the engine's layout was cut to (README, Architecture); each fails when a
change breaks one, naming the file.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from helpers.support import ROOT

import sqs_processor

ENGINE = sorted((ROOT / "core").glob("*.py"))
BUILTINS = sorted((ROOT / "plugins").glob("*.py"))
EXAMPLES = sorted((ROOT / "configs" / "examples" / "plugins").glob("*.py"))
LIMITS = {"module": 450, "class": 250, "function": 60}
# The units that drive components: they read declared capabilities, never probe for extras.
UNITS = ("runner", "poller", "workers", "acks", "settlement", "inflight", "pause", "heartbeat",
         "batching", "pipeline", "health", "observers")


def _name(path: Path) -> str:
    return str(path.relative_to(ROOT))


@pytest.mark.parametrize("path", ENGINE + BUILTINS, ids=_name)
def test_no_module_class_or_function_is_over_its_size_bound(path):
    text = path.read_text(encoding="utf-8")
    too_big = []
    if len(text.splitlines()) > LIMITS["module"]:
        too_big.append(f"module: {len(text.splitlines())} lines")
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            kind = "class" if isinstance(node, ast.ClassDef) else "function"
            size = node.end_lineno - node.lineno + 1  # type: ignore[operator]
            if size > LIMITS[kind]:
                too_big.append(f"{kind} {node.name}: {size} lines")
    assert not too_big, f"{_name(path)} is over the bounds {LIMITS}: {too_big}"


def _engine_imports(path: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module)
        elif isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
    return {m for m in modules if m == "sqs_processor" or m.startswith("sqs_processor.")}


@pytest.mark.parametrize("path", BUILTINS + EXAMPLES, ids=_name)
def test_plugins_import_only_the_public_api(path):
    """A built-in is written as a third-party plugin would be: from ``sqs_processor`` alone (a
    plugin may build on another plugin, as the router example builds on the s3 sink)."""
    internal = {m for m in _engine_imports(path)
                if m != "sqs_processor" and not m.startswith("sqs_processor.plugins")}
    assert not internal, f"{_name(path)} imports engine internals: {sorted(internal)}"


def test_everything_the_public_api_lists_is_importable_from_it():
    missing = [name for name in sqs_processor.__all__ if not hasattr(sqs_processor, name)]
    assert not missing
    for name in ("SystemFailure", "BatchedSink", "BatchPolicy", "REQUIRED", "IDENTITY_FIELDS",
                 "check_field_name", "error_code", "set_attributes", "LastCallCheck"):
        assert name in sqs_processor.__all__, name


@pytest.mark.parametrize("unit", UNITS)
def test_the_engine_never_probes_a_component_with_getattr(unit):
    tree = ast.parse((ROOT / "core" / f"{unit}.py").read_text(encoding="utf-8"))
    probes = [node.lineno for node in ast.walk(tree)
              if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
              and node.func.id in ("getattr", "hasattr")]
    assert not probes, f"core/{unit}.py calls getattr/hasattr at lines {probes}"


def test_loading_a_config_does_not_import_the_opentelemetry_sdk():
    import subprocess
    import sys

    code = ("import sys; import sqs_processor.config; "
            "print(sorted(m for m in sys.modules if m.startswith('opentelemetry.sdk')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, check=True)
    assert result.stdout.strip() == "[]", result.stdout
