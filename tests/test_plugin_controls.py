"""Operator controls over plugins: allow and block lists, and switching entry points off.

The lists come from the YAML (``plugins.allow``, ``plugins.block``) and the environment
(``SQS_PROCESSOR_PLUGINS_ALLOW``, ``SQS_PROCESSOR_PLUGINS_BLOCK``), and are applied before
anything is imported. Every candidate plugin here records its own import in a marker file, so
"never imported" is observed, not assumed. Entry points come from a distribution folder written
by the test (``*.dist-info`` with ``entry_points.txt``) and put on ``sys.path``.
"""

from __future__ import annotations

import sys
import textwrap
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from helpers.support import CLI, cli_env, pipeline_config, write_config

from sqs_processor import ConfigError
from sqs_processor.config import load_config, load_plugin_settings
from sqs_processor.loaders import build_plugin_manager
from sqs_processor.pipeline import build_pipeline

FAKE_QUEUE = "https://sqs.us-east-1.amazonaws.com/123456789012/controls"
ENV_NAMES = ("SQS_PROCESSOR_PLUGINS_ALLOW", "SQS_PROCESSOR_PLUGINS_BLOCK",
             "SQS_PROCESSOR_PLUGINS_AUTOLOAD")


def plugin_source(component: str, marker: Path) -> str:
    """A plugin registering transform ``component`` that appends its name to ``marker`` when
    imported."""
    return textwrap.dedent(f'''
        from pathlib import Path

        from sqs_processor import TransformSpec, hookimpl

        with Path({str(marker)!r}).open("a") as imported:
            imported.write("{component}\\n")


        @hookimpl
        def sqs_processor_transforms():
            return TransformSpec(name="{component}", factory=lambda o, c: (lambda r: r),
                                 description="{component} (records its import)")
        ''')


@dataclass
class World:
    """A config folder with one drop-in, one importable module and one installed distribution,
    each recording its import in ``marker``."""

    root: Path
    marker: Path
    module: str
    dist: str
    entry_point: str

    def imported(self) -> list[str]:
        return self.marker.read_text().split() if self.marker.exists() else []

    def config(self, plugins: dict, **sections: object) -> Path:
        document = pipeline_config(FAKE_QUEUE, "controls-bucket", aws={"region": "us-east-1"},
                                   plugins={"paths": ["dropins"], "modules": [self.module],
                                            **plugins}, **sections)
        return write_config(self.root, document)


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
    marker = tmp_path / "imported.txt"
    tag = uuid.uuid4().hex[:8]
    (tmp_path / "dropins").mkdir()
    (tmp_path / "dropins" / "file_plugin.py").write_text(plugin_source("from_file", marker))

    site = tmp_path / "site"
    site.mkdir()
    module = f"ctl_module_{tag}"
    (site / f"{module}.py").write_text(plugin_source("from_module", marker))
    ep_module = f"ctl_ep_{tag}"
    (site / f"{ep_module}.py").write_text(plugin_source("from_entry_point", marker))
    dist = f"ctl-dist-{tag}"
    info = site / f"{dist.replace('-', '_')}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[sqs_processor]\nctl_ep = {ep_module}\n")
    monkeypatch.syspath_prepend(str(site))
    yield World(tmp_path, marker, module, dist, "ctl_ep")
    for name in (module, ep_module):
        sys.modules.pop(name, None)


def manager_for(path: Path, environ: dict[str, str] | None = None):
    return build_plugin_manager(load_plugin_settings(path, environ=environ or {}))


def test_without_lists_every_kind_of_plugin_is_imported_and_registered(world):
    manager = manager_for(world.config({}))
    assert sorted(world.imported()) == ["from_entry_point", "from_file", "from_module"]
    transforms = manager.components("transform")
    assert {"from_file", "from_module", "from_entry_point"} <= set(transforms)
    assert str(transforms["from_entry_point"].provider) == (
        f"entry point 'ctl_ep' (ctl_ep_{world.module.rpartition('_')[2]}) from {world.dist} 1.0")
    assert not manager.skipped and not manager.unmatched


@pytest.mark.parametrize(("blocked", "by"), [
    ("file_plugin", "file name"),
    ("file_plugin.py", "file name with .py"),
    ("ctl_ep", "entry-point name"),
    ("{dist}", "distribution name"),
    ("{dist_upper}", "distribution name in another spelling"),
    ("{module}", "module name"),
])
def test_a_blocked_plugin_is_never_imported(world, blocked, by):
    entry = blocked.format(dist=world.dist, module=world.module,
                           dist_upper=world.dist.upper().replace("-", "_"))
    manager = manager_for(world.config({"block": [entry]}))

    skipped_name = {"file_plugin": "from_file", "file_plugin.py": "from_file",
                    "ctl_ep": "from_entry_point", "{dist}": "from_entry_point",
                    "{dist_upper}": "from_entry_point", "{module}": "from_module"}[blocked]
    assert skipped_name not in world.imported(), f"blocked by {by} but imported"
    assert len(world.imported()) == 2  # the other two still load
    assert skipped_name not in manager.components("transform")
    [skipped] = manager.skipped
    assert skipped.status == "blocked"
    assert skipped.reason == f"blocked by plugins.block entry {entry!r}"


def test_the_environment_blocklist_adds_to_the_yaml_and_is_named_in_the_reason(world):
    path = world.config({"block": ["file_plugin"]})
    manager = manager_for(path, {"SQS_PROCESSOR_PLUGINS_BLOCK": f" {world.module} , ctl_ep,"})
    assert world.imported() == []
    reasons = {s.provider.name: s.reason for s in manager.skipped}
    assert reasons == {
        "file_plugin": "blocked by plugins.block entry 'file_plugin'",
        world.module: f"blocked by $SQS_PROCESSOR_PLUGINS_BLOCK entry {world.module!r}",
        "ctl_ep": "blocked by $SQS_PROCESSOR_PLUGINS_BLOCK entry 'ctl_ep'",
    }


def test_an_allowlist_imports_only_the_plugins_it_names_and_keeps_the_builtins(world):
    manager = manager_for(world.config({"allow": ["file_plugin"]}))
    assert world.imported() == ["from_file"]
    transforms = manager.components("transform")
    assert {"from_file", "json_parse", "enrich"} <= set(transforms)
    assert {s.provider.name: s.reason for s in manager.skipped} == {
        world.module: "not in plugins.allow", "ctl_ep": "not in plugins.allow"}


def test_yaml_and_environment_allowlists_must_both_allow_a_plugin(world):
    path = world.config({"allow": ["file_plugin", "ctl_ep"]})
    manager = manager_for(path, {"SQS_PROCESSOR_PLUGINS_ALLOW": f"ctl_ep,{world.module}"})
    assert world.imported() == ["from_entry_point"]
    reasons = {s.provider.name: s.reason for s in manager.skipped}
    assert reasons["file_plugin"] == "not in $SQS_PROCESSOR_PLUGINS_ALLOW"
    assert reasons[world.module] == "not in plugins.allow"


def test_block_wins_over_allow(world):
    manager = manager_for(world.config({"allow": ["file_plugin"], "block": ["file_plugin"]}))
    assert world.imported() == []
    assert any(s.reason == "blocked by plugins.block entry 'file_plugin'"
               for s in manager.skipped)


@pytest.mark.parametrize("how", ["yaml", "env"])
def test_autoload_off_leaves_entry_points_unimported_but_listed(world, how):
    path = world.config({"autoload": False} if how == "yaml" else {})
    environ = {"SQS_PROCESSOR_PLUGINS_AUTOLOAD": "0"} if how == "env" else {}
    manager = manager_for(path, environ)
    assert "from_entry_point" not in world.imported()
    assert "from_file" in world.imported()
    [skipped] = [s for s in manager.skipped if s.provider.name == "ctl_ep"]
    assert skipped.status == "off"
    switch = {"yaml": "plugins.autoload", "env": "$SQS_PROCESSOR_PLUGINS_AUTOLOAD"}[how]
    assert skipped.reason == f"entry points are not loaded: autoload is off ({switch})"


def test_the_environment_cannot_switch_autoload_back_on(world):
    path = world.config({"autoload": False})
    manager = manager_for(path, {"SQS_PROCESSOR_PLUGINS_AUTOLOAD": "true"})
    assert "from_entry_point" not in world.imported()
    assert any(s.status == "off" for s in manager.skipped)


def test_a_pipeline_using_a_blocked_plugin_fails_naming_the_block(world):
    path = world.config({"block": ["ctl_ep"]}, transforms=["json_parse", "from_entry_point"])
    config = load_config(path, environ={})
    with pytest.raises(ConfigError) as caught:
        build_pipeline(config, build_plugin_manager(config.plugin_settings))
    message = str(caught.value)
    assert message.startswith("transforms[1].type: 'from_entry_point' is not a known transform")
    assert (f"plugins not loaded: entry point 'ctl_ep' (ctl_ep_{world.module.rpartition('_')[2]})"
            f" from {world.dist} 1.0 (blocked by plugins.block entry 'ctl_ep')") in message


def test_a_blocked_builtin_makes_a_pipeline_that_uses_it_a_config_error(world):
    path = world.config({"block": ["s3_sink"]})
    config = load_config(path, environ={})
    with pytest.raises(ConfigError) as caught:
        build_pipeline(config, build_plugin_manager(config.plugin_settings))
    assert str(caught.value) == (
        "sink.type: 's3' is not a known sink (known sinks: none); plugins not loaded: built-in "
        "sqs_processor.plugins.s3_sink (blocked by plugins.block entry 's3_sink')")


def test_builtins_are_allowed_by_an_allowlist_that_does_not_name_them(world):
    path = world.config({"allow": ["ctl_ep"]}, transforms=["json_parse", "from_entry_point"])
    config = load_config(path, environ={})
    pipeline = build_pipeline(config, build_plugin_manager(config.plugin_settings))
    assert pipeline.describe_line() == "sqs -> json_parse -> from_entry_point -> s3 -> sqs_delete"


def test_list_entries_that_match_no_plugin_are_reported(world, caplog):
    path = world.config({"block": ["no_such_plugin"], "allow": ["file_plugin"]})
    manager = manager_for(path, {"SQS_PROCESSOR_PLUGINS_BLOCK": "s3-sink,typo_plugin"})
    assert manager.unmatched == [
        "plugins.block entry 'no_such_plugin' matches no plugin",
        "$SQS_PROCESSOR_PLUGINS_BLOCK entry 'typo_plugin' matches no plugin",
    ]
    assert any("'typo_plugin' matches no plugin" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(("plugins", "key", "fragment"), [
    ({"blok": ["x"]}, "plugins.blok", "did you mean 'block'?"),
    ({"block": "x"}, "plugins.block", "expected a list of strings"),
    ({"block": [3]}, "plugins.block[0]", "expected a string"),
    ({"allow": [""]}, "plugins.allow[0]", "is empty"),
    ({"autoload": "sometimes"}, "plugins.autoload", "expected true or false"),
    ({"modules": ["not a module"]}, "plugins.modules[0]", "is not a module reference"),
    ({"paths": ["missing"]}, "plugins.paths[0]", "is not a directory"),
])
def test_bad_plugins_settings_name_the_key(tmp_path, plugins, key, fragment):
    document = pipeline_config(FAKE_QUEUE, "b", aws={"region": "us-east-1"}, plugins=plugins)
    with pytest.raises(ConfigError) as caught:
        load_config(write_config(tmp_path, document), environ={})
    assert caught.value.key == key
    assert fragment in str(caught.value)


def test_a_bad_autoload_environment_value_names_the_variable(tmp_path):
    path = write_config(tmp_path, pipeline_config(FAKE_QUEUE, "b"))
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={"SQS_PROCESSOR_PLUGINS_AUTOLOAD": "maybe"})
    assert str(caught.value) == ("$SQS_PROCESSOR_PLUGINS_AUTOLOAD: 'maybe' has the wrong type; "
                                 "expected true or false")


def test_cli_plugins_lists_blocked_and_switched_off_plugins(world):
    import subprocess

    path = world.config({"block": ["file_plugin"]})
    env = cli_env({}, PYTHONPATH=str(world.root / "site"), SQS_PROCESSOR_PLUGINS_AUTOLOAD="no",
                  SQS_PROCESSOR_PLUGINS_BLOCK="json_parse,nothing_here")
    result = subprocess.run([*CLI, "plugins", "--config", str(path)], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    rows = {line.split()[1]: line.split()[:3] for line in result.stdout.splitlines()[1:]
            if not line.startswith("warning:")}
    assert rows["from_module"] == ["transform", "from_module", "ok"]
    assert rows["file_plugin"] == ["plugin", "file_plugin", "blocked"]
    assert rows["json_parse"] == ["plugin", "json_parse", "blocked"]
    assert rows["ctl_ep"] == ["plugin", "ctl_ep", "off"]
    assert "from_entry_point" not in rows and "from_file" not in rows
    assert "warning: $SQS_PROCESSOR_PLUGINS_BLOCK entry 'nothing_here' matches no plugin" \
        in result.stdout
    assert sorted(world.imported()) == ["from_module"]  # the subprocess imported only that
    assert yaml.safe_load(path.read_text())["plugins"]["block"] == ["file_plugin"]
