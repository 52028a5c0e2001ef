"""Loading and validating the pipeline YAML.

The file is read and its ``${VAR}`` references replaced by :mod:`sqs_processor.yaml_loading`;
the engine's own sections (``service``, ``aws``, ``plugins``, ``errors``, ``telemetry``) are
checked here against their option declarations, which hold every default. The ``plugins``
section says where plugins come from and which may load; the operator's environment can narrow
it further (:data:`ENV_ALLOW`, :data:`ENV_BLOCK`, :data:`ENV_AUTOLOAD`). Component
sections (``source``, ``transforms``, ``sink``, ``ack``) are checked against the options their
plugin declares when the pipeline is built (:mod:`sqs_processor.pipeline`). Nothing here touches
the network.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from sqs_processor.engine_options import (
    AWS_OPTIONS,
    ENV_ALLOW,
    ENV_AUTOLOAD,
    ENV_BLOCK,
    ERRORS_OPTIONS,
    PLUGIN_OPTIONS,
    SERVICE_OPTIONS,
)
from sqs_processor.errors import ConfigError, ConfigErrors, Problems, Unresolved
from sqs_processor.options import Option, suggest, validate_options
from sqs_processor.records import normalise_name
from sqs_processor.telemetry_settings import TELEMETRY_OPTIONS, resolve_settings
from sqs_processor.yaml_loading import interpolate, read_document

DEFAULT_CONFIG_NAME = "default.yaml"

TOP_LEVEL_KEYS = ("service", "aws", "plugins", "source", "transforms", "sink", "ack", "errors",
                  "telemetry")

# --------------------------------------------------------------------------------------------
# The validated configuration
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ComponentConfig:
    """One component block: its ``type`` (normalised) and the rest of its keys, unvalidated."""

    type: str
    options: Mapping[str, Any]
    where: str


@dataclass(frozen=True)
class NameList:
    """An allow or block list and where it was written (``plugins.block``, ``$VAR``)."""

    source: str
    names: tuple[str, ...]


@dataclass(frozen=True)
class PluginSettings:
    """Where plugins come from (the ``plugins`` section) and which of them may load.

    ``plugin_paths`` and ``plugins`` are the YAML's ``plugins.paths`` and ``plugins.modules``;
    ``load_entrypoints`` is ``plugins.autoload`` and the environment's switch together;
    ``autoload_off_by`` says which of them turned it off. ``allow`` and ``block`` hold every
    list that applies, from the YAML and the environment.
    """

    base_dir: Path
    plugin_paths: tuple[Path, ...] = ()
    plugins: tuple[str, ...] = ()
    load_entrypoints: bool = True
    allow: tuple[NameList, ...] = ()
    block: tuple[NameList, ...] = ()
    autoload_off_by: str = field(default="", compare=False)  # what switched autoload off


@dataclass(frozen=True)
class PipelineConfig:
    """The whole pipeline YAML, interpolated and with the engine's sections validated."""

    path: Path | None
    base_dir: Path
    service: Mapping[str, Any]
    aws: Mapping[str, Any]
    source: ComponentConfig
    transforms: tuple[ComponentConfig, ...]
    sink: ComponentConfig
    ack: ComponentConfig
    plugin_settings: PluginSettings
    env_sources: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    telemetry: Mapping[str, Any] = field(default_factory=dict)
    errors: Mapping[str, Any] = field(
        default_factory=lambda: validate_options(ERRORS_OPTIONS, None, "errors"))
    # Only with defer_errors: the problems found so far, for build_pipeline to report with its
    # own, and the keys whose ${VAR} could not be replaced (read as unset meanwhile).
    problems: tuple[ConfigError, ...] = field(default=(), compare=False)
    unresolved: frozenset[str] = field(default=frozenset(), compare=False)

    def explain(self, error: ConfigError) -> ConfigError:
        """Add the environment variables behind ``error.key`` to the error, if any."""
        return _explain(error, self.env_sources)


def _explain(error: ConfigError, env_sources: Mapping[str, tuple[str, ...]]) -> ConfigError:
    if isinstance(error, ConfigErrors):
        return ConfigErrors(_explain(e, env_sources) for e in error.errors)
    env = env_sources.get(error.key)
    return error.with_env(env) if env and not error.env else error


def default_config_path() -> Path:
    """The built-in default pipeline, shipped inside the installed package."""
    return Path(str(resources.files("sqs_processor.configs").joinpath(DEFAULT_CONFIG_NAME)))


def _component(raw: Any, where: str) -> ComponentConfig:
    if isinstance(raw, str):  # shorthand: "- json_parse"
        raw = {"type": raw}
    if not isinstance(raw, dict):
        raise ConfigError(where, "must be a mapping with a 'type' key", value=raw,
                          expected="e.g. {type: s3, bucket: my-bucket}")
    kind = raw.get("type")
    if kind is None:
        raise ConfigError(f"{where}.type", "is required", expected="the name of a component")
    if not isinstance(kind, str):
        raise ConfigError(f"{where}.type", "has the wrong type", value=kind,
                          expected="the name of a component")
    try:
        name = normalise_name(kind)
    except ValueError:
        raise ConfigError(f"{where}.type", "is not a valid component name", value=kind,
                          expected="letters, digits, '_', '-' or '.'") from None
    options = {k: v for k, v in raw.items() if k != "type"}
    for key in options:
        if not isinstance(key, str):
            raise ConfigError(f"{where}", f"has a non-text key {key!r}", expected="option names")
    return ComponentConfig(type=name, options=options, where=where)


_MODULE_REF = re.compile(r"\A[A-Za-z_][\w.]*(:[A-Za-z_][\w.]*)?\Z")


def _env_names(environ: Mapping[str, str], name: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in environ.get(name, "").split(",") if part.strip())


def _plugin_paths(values: Mapping[str, Any], base_dir: Path) -> tuple[Path, ...]:
    paths = []
    for i, item in enumerate(values["paths"]):
        item = item.strip()
        if not item:
            raise ConfigError(f"plugins.paths[{i}]", "is empty", expected="a folder")
        path = Path(item).expanduser()
        paths.append(path if path.is_absolute() else (base_dir / path))
        if not paths[-1].is_dir():
            raise ConfigError(f"plugins.paths[{i}]", "is not a directory", value=item,
                              expected="a folder of plugin .py files (relative paths start "
                                       "at the config file's folder)")
    return tuple(paths)


def _name_lists(values: Mapping[str, Any], key: str, env_name: str,
                environ: Mapping[str, str]) -> tuple[NameList, ...]:
    """The ``plugins.allow`` or ``plugins.block`` list and its environment variable's."""
    lists: list[NameList] = []
    names = []
    for i, name in enumerate(values[key]):
        if not name.strip():
            raise ConfigError(f"plugins.{key}[{i}]", "is empty", expected="a plugin name")
        names.append(name.strip())
    if names:
        lists.append(NameList(f"plugins.{key}", tuple(names)))
    from_env = _env_names(environ, env_name)
    if from_env:
        lists.append(NameList(f"${env_name}", from_env))
    return tuple(lists)


def _plugin_settings(document: Mapping[str, Any], base_dir: Path,
                     environ: Mapping[str, str]) -> PluginSettings:
    """The ``plugins`` section and the environment's plugin controls."""
    section = document.get("plugins")
    if section is not None and not isinstance(section, dict):
        raise ConfigError("plugins", "has the wrong type", value=section,
                          expected="a mapping with paths, modules, autoload, allow, block")
    values = validate_options(PLUGIN_OPTIONS, section, "plugins")
    modules = [ref.strip() for ref in values["modules"]]
    for i, ref in enumerate(modules):
        if not _MODULE_REF.match(ref):
            raise ConfigError(f"plugins.modules[{i}]", "is not a module reference", value=ref,
                              expected="'package.module' or 'package.module:attribute'")
    autoload = values["autoload"]
    off_by = "" if autoload else "plugins.autoload"
    raw_switch = environ.get(ENV_AUTOLOAD, "").strip()
    if raw_switch and not Option("autoload", bool).convert(raw_switch, f"${ENV_AUTOLOAD}"):
        autoload, off_by = False, off_by or f"${ENV_AUTOLOAD}"
    return PluginSettings(base_dir=base_dir, plugin_paths=_plugin_paths(values, base_dir),
                          plugins=tuple(modules), load_entrypoints=autoload,
                          allow=_name_lists(values, "allow", ENV_ALLOW, environ),
                          block=_name_lists(values, "block", ENV_BLOCK, environ),
                          autoload_off_by=off_by)


def _check_top_level(document: Mapping[str, Any], problems: Problems) -> None:
    for key in document:
        if key not in TOP_LEVEL_KEYS:
            hint = suggest(str(key), TOP_LEVEL_KEYS) or "; known sections: " + ", ".join(
                TOP_LEVEL_KEYS)
            problems.add(ConfigError(str(key), f"is not a section of the pipeline config{hint}"))


def _interpolate_each(node: Any, where: str, environ: Mapping[str, str], env_sources: dict,
                      problems: Problems, unresolved: set[str]) -> Any:
    """Replace ``${VAR}`` string by string, so that every missing variable is reported; a
    string that cannot be replaced is kept as written and its key added to ``unresolved``
    (later problems at that key are not reported: they would only repeat this one)."""
    if isinstance(node, str):
        try:
            return interpolate(node, where, environ, env_sources)
        except ConfigError as exc:
            problems.add(exc)
            unresolved.add(where)
            return Unresolved(node)
    if isinstance(node, dict):
        return {k: _interpolate_each(v, f"{where}.{k}" if where else str(k), environ,
                                     env_sources, problems, unresolved)
                for k, v in node.items()}
    if isinstance(node, list):
        return [_interpolate_each(v, f"{where}[{i}]", environ, env_sources, problems, unresolved)
                for i, v in enumerate(node)]
    return node


def _check_endpoint(value: str | None, key: str) -> None:
    if value is None:
        return
    parsed = urlparse(value)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ConfigError(key, "is not a URL", value=value, expected="http(s)://host[:port]")


def _resolve(path: Path | None) -> tuple[Path, Path]:
    path = default_config_path() if path is None else Path(path)
    # Not resolve(): a ConfigMap mounts the file as a symlink into a timestamped folder that an
    # update replaces; relative plugin paths must stay next to the name the operator gave.
    return path, Path(os.path.abspath(path)).parent


def load_plugin_settings(path: Path | None = None,
                         environ: Mapping[str, str] | None = None) -> PluginSettings:
    """Read only where plugins come from and which may load (for ``sqs-processor plugins``)."""
    path, base_dir = _resolve(path)
    document = read_document(path)
    environ = os.environ if environ is None else environ
    subset = {k: document[k] for k in ("plugins",) if k in document}
    env_sources: dict[str, tuple[str, ...]] = {}
    try:
        return _plugin_settings(interpolate(subset, "", environ, env_sources), base_dir, environ)
    except ConfigError as exc:
        raise _explain(exc, env_sources) from None


def load_config(
    path: Path | None = None, environ: Mapping[str, str] | None = None, *,
    defer_errors: bool = False,
) -> PipelineConfig:
    """Read, interpolate and check a pipeline file (the built-in default when ``path`` is None).

    Raises :class:`ConfigError` with every problem found (:class:`ConfigErrors` for several);
    see :func:`parse_config` for ``defer_errors``.
    """
    path, base_dir = _resolve(path)
    return parse_config(read_document(path), path=path, base_dir=base_dir, environ=environ,
                        defer_errors=defer_errors)


def _section(document: Mapping[str, Any], name: str, options: tuple[Option, ...],
             problems: Problems) -> dict[str, Any]:
    """One engine section, validated; its defaults (and the problems recorded) when bad."""
    raw = document.get(name)
    if raw is not None and not isinstance(raw, dict):
        problems.add(ConfigError(name, "must be a mapping", value=raw))
        raw = None
    try:
        return validate_options(options, raw, name)
    except ConfigError as exc:
        problems.add(exc)
        return validate_options(options, None, name)


def _engine_sections(document: Mapping[str, Any], problems: Problems) -> dict[str, dict]:
    """The ``service``, ``telemetry``, ``errors`` and ``aws`` sections, validated."""
    sections = {name: _section(document, name, options, problems) for name, options in (
        ("service", SERVICE_OPTIONS), ("telemetry", TELEMETRY_OPTIONS),
        ("errors", ERRORS_OPTIONS), ("aws", AWS_OPTIONS))}
    errors, aws = sections["errors"], sections["aws"]
    try:
        errors["sink"] = normalise_name(errors["sink"])
    except ValueError as exc:
        problems.add(ConfigError("errors.sink", str(exc), value=errors["sink"],
                                 expected="none, or the name of a sink"))
        errors["sink"] = "none"
    with problems.collect():
        _check_endpoint(aws["endpoint_url"], "aws.endpoint_url")
    if aws["region"] is not None and not re.fullmatch(r"[a-z]{2}(-[a-z]+)+-\d+", aws["region"]):
        problems.add(ConfigError("aws.region", "is not an AWS region name", value=aws["region"],
                                 expected="e.g. us-west-1"))
    return sections


def _component_sections(document: Mapping[str, Any], problems: Problems
                        ) -> dict[str, Any] | None:
    """The ``source``, ``transforms``, ``sink`` and ``ack`` blocks (options checked later,
    against what each component declares); None when one of them cannot be read."""
    blocks: dict[str, Any] = {}
    for section in ("source", "sink", "ack"):
        if document.get(section) is None:
            problems.add(ConfigError(section, "is required",
                                     expected="a mapping with a 'type' key naming a component"))
            continue
        with problems.collect():
            blocks[section] = _component(document[section], section)
    transforms_raw = document.get("transforms") or []
    if not isinstance(transforms_raw, list):
        problems.add(ConfigError("transforms", "has the wrong type", value=transforms_raw,
                                 expected="a list of transform steps"))
        transforms_raw = []
    transforms = []
    for i, item in enumerate(transforms_raw):
        with problems.collect():
            transforms.append(_component(item, f"transforms[{i}]"))
    if len(transforms) < len(transforms_raw) or len(blocks) < 3:
        return None
    return {**blocks, "transforms": tuple(transforms)}


def parse_config(
    raw: Mapping[str, Any],
    *,
    path: Path | None = None,
    base_dir: Path,
    environ: Mapping[str, str] | None = None,
    defer_errors: bool = False,
) -> PipelineConfig:
    """Interpolate and check a pipeline document already read from YAML (or built in code).

    ``base_dir`` is where relative paths start (the config file's folder). Every problem is
    collected, missing environment variables included, and raised together as a
    :class:`ConfigError` (:class:`ConfigErrors` for several). With ``defer_errors``, a config
    whose components and plugin settings could still be read is returned with its ``problems``
    instead, so that :func:`~sqs_processor.pipeline.build_pipeline` adds its own and reports
    them all in one run.
    """
    environ = os.environ if environ is None else environ
    found = Problems()
    _check_top_level(raw, found)
    env_sources: dict[str, tuple[str, ...]] = {}
    unresolved: set[str] = set()
    document = _interpolate_each(dict(raw), "", environ, env_sources, found, unresolved)
    later = Problems(skip=unresolved)  # an unreadable value was reported once already
    engine = _engine_sections(document, later)
    with later.collect():  # the OTEL_* variables too, reported with the rest
        resolve_settings(engine["telemetry"], environ)
    components = _component_sections(document, later)
    plugin_settings = None
    with later.collect():
        plugin_settings = _plugin_settings(document, base_dir, environ)
    for error in later.found:
        found.add(_explain(error, env_sources))
    if found and (not defer_errors or components is None or plugin_settings is None):
        found.raise_found()
    assert components is not None and plugin_settings is not None
    return PipelineConfig(path=path, base_dir=base_dir, plugin_settings=plugin_settings,
                          env_sources=env_sources, problems=tuple(found.found),
                          unresolved=frozenset(unresolved), **engine, **components)
