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

from sqs_processor.errors import ConfigError
from sqs_processor.options import Option, suggest, validate_options
from sqs_processor.records import normalise_name
from sqs_processor.telemetry_settings import TELEMETRY_OPTIONS
from sqs_processor.yaml_loading import interpolate, read_document

DEFAULT_CONFIG_NAME = "default.yaml"

SERVICE_OPTIONS = (
    Option("health_host", str, "0.0.0.0", "Address the health server listens on."),
    Option("health_port", int, 8080, "Port of the health server (0 picks a free port).",
           minimum=0, maximum=65535),
    Option("workers", int, 10, "Threads that run transforms and sink writes concurrently.",
           minimum=1, maximum=256),
    Option("pollers", int, 1, "Threads that receive from the source concurrently.",
           minimum=1, maximum=32),
    Option("max_in_flight", int, 20,
           "Messages received but not yet acknowledged, at most (bounds memory and work at risk).",
           minimum=1, maximum=10000),
    Option("shutdown_grace_seconds", float, 25.0,
           "After SIGTERM, how long in-flight work may take before the rest is released.",
           minimum=0, maximum=3600),
    Option("ack_threads", int, 2,
           "Threads that delete finished messages (each sends one batch of up to 10 at a time).",
           minimum=1, maximum=16),
    Option("heartbeat", bool, True,
           "Extend the visibility of in-flight messages before it expires (12-hour cap)."),
    Option("reload_on_change", bool, True,
           "Reload the pipeline when the config file or a plugin file changes (SIGHUP always "
           "reloads)."),
    Option("stall_seconds", float, 10.0,
           "An AWS call outstanding longer than this (a receive: beyond its long poll) makes "
           "/readyz answer 503 naming it, until it completes.", minimum=1, maximum=3600),
    Option("system_backoff_max_seconds", float, 60.0,
           "Longest pause of polling after a system failure (S3 or SQS down, AccessDenied); "
           "the pause starts at 1 s and doubles.", minimum=1, maximum=3600),
)

ERRORS_OPTIONS = (
    Option("after_receives", int, 0,
           "Hand a message that failed on its own account (a transform raised, the document "
           "cannot be encoded) to the error sink once its receive count reaches this; 0: never, "
           "leave it to the queue's redrive policy.", minimum=0, maximum=1000),
    Option("sink", str, "none",
           "The error sink: none, or a sink name; the main sink's type reuses its options "
           "(bucket) with the errors prefix."),
    Option("prefix", str, "errors/", "Key prefix of error objects (sinks with a prefix)."),
    Option("options", dict, None, "Options for the error sink, over the inherited ones."),
)

AWS_OPTIONS = (
    Option("region", str, None, "AWS region; unset means boto3's own chain (AWS_REGION, profile)."),
    Option("endpoint_url", str, None,
           "Endpoint for every AWS service; unset means boto3's chain (AWS_ENDPOINT_URL_*)."),
    Option("max_attempts", int, 5, "Attempts per AWS call, botocore standard retry mode.",
           minimum=1, maximum=20),
    Option("connect_timeout", float, 10.0, "Seconds to open a connection to AWS.",
           minimum=0.1, maximum=300),
    Option("read_timeout", float, 60.0,
           "Seconds to wait for an AWS response; must exceed the source's long poll.",
           minimum=1, maximum=900),
)

PLUGIN_OPTIONS = (
    Option("paths", list, [],
           "Folders of drop-in plugin files: every `*.py` not starting with `_` is loaded. "
           "Relative paths start at the config file's folder.", items=str),
    Option("modules", list, [],
           "Importable plugins, written `package.module` or `package.module:attribute`.",
           items=str),
    Option("autoload", bool, True,
           "Load the plugins of installed distributions (the `sqs_processor` entry-point "
           "group). `$SQS_PROCESSOR_PLUGINS_AUTOLOAD=false` switches it off too."),
    Option("allow", list, [],
           "When not empty, only plugins with one of these names are loaded; built-ins are "
           "always allowed. `$SQS_PROCESSOR_PLUGINS_ALLOW` (comma-separated) must match too.",
           items=str),
    Option("block", list, [],
           "Plugins never loaded, not even imported: entry-point, distribution, file, module "
           "or built-in names. `$SQS_PROCESSOR_PLUGINS_BLOCK` (comma-separated) adds to it.",
           items=str),
)

ENV_ALLOW = "SQS_PROCESSOR_PLUGINS_ALLOW"
ENV_BLOCK = "SQS_PROCESSOR_PLUGINS_BLOCK"
ENV_AUTOLOAD = "SQS_PROCESSOR_PLUGINS_AUTOLOAD"

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

    def explain(self, error: ConfigError) -> ConfigError:
        """Add the environment variables behind ``error.key`` to the error, if any."""
        return _explain(error, self.env_sources)


def _explain(error: ConfigError, env_sources: Mapping[str, tuple[str, ...]]) -> ConfigError:
    env = env_sources.get(error.key)
    return error.with_env(env) if env and not error.env else error



def default_config_path() -> Path:
    """The built-in default pipeline, shipped inside the installed package."""
    return Path(str(resources.files("sqs_processor.configs").joinpath(DEFAULT_CONFIG_NAME)))



# --------------------------------------------------------------------------------------------
# Section checks
# --------------------------------------------------------------------------------------------


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


def _check_top_level(document: Mapping[str, Any]) -> None:
    for key in document:
        if key not in TOP_LEVEL_KEYS:
            hint = suggest(str(key), TOP_LEVEL_KEYS) or "; known sections: " + ", ".join(
                TOP_LEVEL_KEYS)
            raise ConfigError(str(key), f"is not a section of the pipeline config{hint}")


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
    path: Path | None = None, environ: Mapping[str, str] | None = None
) -> PipelineConfig:
    """Read, interpolate and check a pipeline file (the built-in default when ``path`` is None).

    Raises :class:`ConfigError` for the first problem found.
    """
    path, base_dir = _resolve(path)
    return parse_config(read_document(path), path=path, base_dir=base_dir, environ=environ)


def _engine_sections(document: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The ``service``, ``telemetry``, ``errors`` and ``aws`` sections, validated."""
    for section in ("service", "aws", "telemetry", "errors"):
        if document.get(section) is not None and not isinstance(document[section], dict):
            raise ConfigError(section, "must be a mapping", value=document[section])
    sections = {
        "service": validate_options(SERVICE_OPTIONS, document.get("service"), "service"),
        "telemetry": validate_options(TELEMETRY_OPTIONS, document.get("telemetry"), "telemetry"),
        "errors": validate_options(ERRORS_OPTIONS, document.get("errors"), "errors"),
        "aws": validate_options(AWS_OPTIONS, document.get("aws"), "aws"),
    }
    errors, aws = sections["errors"], sections["aws"]
    try:
        errors["sink"] = normalise_name(errors["sink"])
    except ValueError as exc:
        raise ConfigError("errors.sink", str(exc), value=errors["sink"],
                          expected="none, or the name of a sink") from None
    _check_endpoint(aws["endpoint_url"], "aws.endpoint_url")
    if aws["region"] is not None and not re.fullmatch(r"[a-z]{2}(-[a-z]+)+-\d+", aws["region"]):
        raise ConfigError("aws.region", "is not an AWS region name", value=aws["region"],
                          expected="e.g. us-west-1")
    return sections


def _component_sections(document: Mapping[str, Any]) -> dict[str, Any]:
    """The ``source``, ``transforms``, ``sink`` and ``ack`` blocks (options checked later,
    against what each component declares)."""
    for section in ("source", "sink", "ack"):
        if document.get(section) is None:
            raise ConfigError(section, "is required",
                              expected="a mapping with a 'type' key naming a component")
    transforms_raw = document.get("transforms") or []
    if not isinstance(transforms_raw, list):
        raise ConfigError("transforms", "has the wrong type", value=transforms_raw,
                          expected="a list of transform steps")
    return {
        "source": _component(document["source"], "source"),
        "transforms": tuple(_component(item, f"transforms[{i}]")
                            for i, item in enumerate(transforms_raw)),
        "sink": _component(document["sink"], "sink"),
        "ack": _component(document["ack"], "ack"),
    }


def parse_config(
    raw: Mapping[str, Any],
    *,
    path: Path | None = None,
    base_dir: Path,
    environ: Mapping[str, str] | None = None,
) -> PipelineConfig:
    """Interpolate and check a pipeline document already read from YAML (or built in code).

    ``base_dir`` is where relative paths start (the config file's folder). Raises
    :class:`ConfigError` for the first problem found.
    """
    environ = os.environ if environ is None else environ
    _check_top_level(raw)
    env_sources: dict[str, tuple[str, ...]] = {}
    document = interpolate(dict(raw), "", environ, env_sources)
    try:
        engine = _engine_sections(document)
        components = _component_sections(document)
        plugin_settings = _plugin_settings(document, base_dir, environ)
    except ConfigError as exc:
        raise _explain(exc, env_sources) from None
    return PipelineConfig(path=path, base_dir=base_dir, plugin_settings=plugin_settings,
                          env_sources=env_sources, **engine, **components)
