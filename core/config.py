"""Loading and validating the pipeline YAML.

The file is parsed (duplicate keys are an error, not a silent overwrite), ``${VAR}`` and
``${VAR:-default}`` are replaced from the environment (``$${`` writes a literal ``${``), and the
engine's own sections (``service``, ``aws``, ``plugins``) are checked here. The ``plugins``
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

import yaml

from sqs_processor.errors import ConfigError
from sqs_processor.options import Option, suggest, validate_options
from sqs_processor.records import normalise_name
from sqs_processor.telemetry import TELEMETRY_OPTIONS

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
LEGACY_PLUGIN_KEYS = ("plugin_paths", "load_entrypoints")
"""Older spellings of ``plugins.paths`` and ``plugins.autoload``, still read."""

# "$${" is a literal "${"; "${...}" a reference; "${" with no closing brace is an error.
_VAR = re.compile(r"\$\$\{|\$\{([^}]*)\}|\$\{[^}]*$")
_VAR_NAME = re.compile(r"\A[A-Za-z_][A-Za-z0-9_]*\Z")
_REFERENCE_FORMS = "${NAME}, ${NAME:-default} or ${NAME-default}"


def _split_reference(expression: str) -> tuple[str, str, str]:
    """``NAME:-default`` -> (NAME, ":-", default); ``NAME-default`` -> (NAME, "-", default)."""
    match = re.match(r"^([^:-]*)(:-|-)?(.*)$", expression, flags=re.S)
    assert match is not None
    name, sep, default = match.group(1), match.group(2) or "", match.group(3)
    if not sep and default:  # e.g. "A:B": not a reference form; report the whole thing
        return expression, "", ""
    return name, sep, default


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
    paths_key: str = field(default="plugin_paths", compare=False)  # for error messages
    modules_key: str = field(default="plugins", compare=False)


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
        default_factory=lambda: {"after_receives": 0, "sink": "none", "prefix": "errors/",
                                 "options": None})

    def explain(self, error: ConfigError) -> ConfigError:
        """Add the environment variables behind ``error.key`` to the error, if any."""
        return _explain(error, self.env_sources)


def _explain(error: ConfigError, env_sources: Mapping[str, tuple[str, ...]]) -> ConfigError:
    env = env_sources.get(error.key)
    return error.with_env(env) if env and not error.env else error


# --------------------------------------------------------------------------------------------
# Reading and interpolation
# --------------------------------------------------------------------------------------------


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects a key written twice in one mapping."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    # Only keys written in this mapping count; keys merged in with "<<:" may be overridden.
    seen: set[Any] = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=deep)
        line = key_node.start_mark.line + 1
        try:
            duplicate = key in seen
        except TypeError:
            raise ConfigError("", f"line {line}: a mapping key must be a plain value, "
                                  f"not {type(key).__name__}") from None
        if duplicate:
            raise ConfigError("", f"line {line}: key {key!r} appears twice in the same mapping")
        seen.add(key)
    loader.flatten_mapping(node)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def default_config_path() -> Path:
    """The built-in default pipeline, shipped inside the installed package."""
    return Path(str(resources.files("sqs_processor.configs").joinpath(DEFAULT_CONFIG_NAME)))


def read_document(path: Path) -> dict[str, Any]:
    """Parse a YAML file into a mapping, with errors that name the file and line."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("config", f"file {str(path)!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("config", f"file {str(path)!r} cannot be read: {exc}") from None
    try:
        document = yaml.load(text, Loader=_StrictLoader)
    except ConfigError as exc:
        raise ConfigError("config", f"file {str(path)!r}, {exc.problem}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}:" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError("config",
                          f"file {str(path)!r} is not valid YAML:{where} {problem}") from None
    if document is None:
        raise ConfigError("config", f"file {str(path)!r} is empty")
    if not isinstance(document, dict):
        raise ConfigError("config", f"file {str(path)!r} must hold a mapping at the top level, "
                                    f"not {type(document).__name__}")
    return document


def interpolate(node: Any, where: str, environ: Mapping[str, str], env_sources: dict) -> Any:
    """Replace ``${VAR}`` and ``${VAR:-default}`` in every string under ``node``.

    ``env_sources`` collects, per dotted key, the variables that key was built from.
    """
    if isinstance(node, str):
        used: list[str] = []

        def replace(match: re.Match[str]) -> str:
            if match.group(0) == "$${":
                return "${"
            expression = match.group(1)
            if expression is None:
                raise ConfigError(where, "has a variable reference without its closing '}'",
                                  value=match.group(0), expected=_REFERENCE_FORMS)
            name, sep, default = _split_reference(expression)
            if not _VAR_NAME.match(name):
                raise ConfigError(where, f"has an invalid variable reference ${{{expression}}}",
                                  expected=_REFERENCE_FORMS)
            used.append(name)
            value = environ.get(name)
            if sep == ":-":  # unset or empty: the default
                return value if value else default
            if sep == "-":  # unset: the default; set, even to "": the value
                return default if value is None else value
            if value is None:
                raise ConfigError(where, f"needs environment variable {name}, which is not set")
            return value

        result = _VAR.sub(replace, node)
        if used:
            env_sources[where] = tuple(dict.fromkeys(used))
        return result
    if isinstance(node, dict):
        return {k: interpolate(v, f"{where}.{k}" if where else str(k), environ, env_sources)
                for k, v in node.items()}
    if isinstance(node, list):
        return [interpolate(v, f"{where}[{i}]", environ, env_sources) for i, v in enumerate(node)]
    return node


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


def _string_list(raw: Any, where: str) -> list[str]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ConfigError(where, "has the wrong type", value=raw, expected="a list of strings")
    for i, item in enumerate(raw):
        if not isinstance(item, str) or not item.strip():
            raise ConfigError(f"{where}[{i}]", "has the wrong type", value=item,
                              expected="a non-empty string")
    return [item.strip() for item in raw]


_MODULE_REF = re.compile(r"\A[A-Za-z_][\w.]*(:[A-Za-z_][\w.]*)?\Z")


def _env_names(environ: Mapping[str, str], name: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in environ.get(name, "").split(",") if part.strip())


def _plugin_settings(document: Mapping[str, Any], base_dir: Path,
                     environ: Mapping[str, str]) -> PluginSettings:
    """The ``plugins`` section (or its older spellings) and the environment's plugin controls."""
    section = document.get("plugins")
    if isinstance(section, dict):
        for legacy in LEGACY_PLUGIN_KEYS:
            if legacy in document:
                new = "plugins.paths" if legacy == "plugin_paths" else "plugins.autoload"
                raise ConfigError(legacy, f"is the older spelling of {new}; with a plugins: "
                                          f"mapping, write {new} instead")
        values = validate_options(PLUGIN_OPTIONS, section, "plugins")
        prefix = "plugins."
    elif section is None or isinstance(section, list):
        # Older layout: plugin_paths, plugins (a list of modules), load_entrypoints.
        values = {
            "paths": _string_list(document.get("plugin_paths"), "plugin_paths"),
            "modules": _string_list(section, "plugins"),
            "autoload": Option("load_entrypoints", bool, True).convert(
                document.get("load_entrypoints", True), "load_entrypoints"),
            "allow": [], "block": [],
        }
        prefix = ""
    else:
        raise ConfigError("plugins", "has the wrong type", value=section,
                          expected="a mapping with paths, modules, autoload, allow, block")
    paths_key = f"{prefix}paths" if prefix else "plugin_paths"
    modules_key = f"{prefix}modules" if prefix else "plugins"

    paths = []
    for i, item in enumerate(values["paths"]):
        item = item.strip()
        if not item:
            raise ConfigError(f"{paths_key}[{i}]", "is empty", expected="a folder")
        path = Path(item).expanduser()
        paths.append(path if path.is_absolute() else (base_dir / path))
        if not paths[-1].is_dir():
            raise ConfigError(f"{paths_key}[{i}]", "is not a directory", value=item,
                              expected="a folder of plugin .py files (relative paths start "
                                       "at the config file's folder)")
    modules = [ref.strip() for ref in values["modules"]]
    for i, ref in enumerate(modules):
        if not _MODULE_REF.match(ref):
            raise ConfigError(f"{modules_key}[{i}]", "is not a module reference", value=ref,
                              expected="'package.module' or 'package.module:attribute'")

    allow: list[NameList] = []
    block: list[NameList] = []
    for target, key, env_name in ((allow, "allow", ENV_ALLOW), (block, "block", ENV_BLOCK)):
        names = []
        for i, name in enumerate(values[key]):
            if not name.strip():
                raise ConfigError(f"plugins.{key}[{i}]", "is empty", expected="a plugin name")
            names.append(name.strip())
        if names:
            target.append(NameList(f"plugins.{key}", tuple(names)))
        from_env = _env_names(environ, env_name)
        if from_env:
            target.append(NameList(f"${env_name}", from_env))

    autoload = values["autoload"]
    off_by = "" if autoload else ("plugins.autoload" if prefix else "load_entrypoints")
    raw_switch = environ.get(ENV_AUTOLOAD, "").strip()
    if raw_switch and not Option("autoload", bool).convert(raw_switch, f"${ENV_AUTOLOAD}"):
        autoload, off_by = False, off_by or f"${ENV_AUTOLOAD}"
    return PluginSettings(base_dir=base_dir, plugin_paths=tuple(paths), plugins=tuple(modules),
                          load_entrypoints=autoload, allow=tuple(allow), block=tuple(block),
                          autoload_off_by=off_by, paths_key=paths_key, modules_key=modules_key)


def _check_top_level(document: Mapping[str, Any]) -> None:
    for key in document:
        if key not in TOP_LEVEL_KEYS and key not in LEGACY_PLUGIN_KEYS:
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
    subset = {k: document[k] for k in ("plugins", *LEGACY_PLUGIN_KEYS) if k in document}
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
        for section in ("service", "aws", "telemetry", "errors"):
            if document.get(section) is not None and not isinstance(document[section], dict):
                raise ConfigError(section, "must be a mapping", value=document[section])
        service = validate_options(SERVICE_OPTIONS, document.get("service"), "service")
        telemetry = validate_options(TELEMETRY_OPTIONS, document.get("telemetry"), "telemetry")
        errors = validate_options(ERRORS_OPTIONS, document.get("errors"), "errors")
        try:
            errors["sink"] = normalise_name(errors["sink"])
        except ValueError as exc:
            raise ConfigError("errors.sink", str(exc), value=errors["sink"],
                              expected="none, or the name of a sink") from None
        aws = validate_options(AWS_OPTIONS, document.get("aws"), "aws")
        _check_endpoint(aws["endpoint_url"], "aws.endpoint_url")
        if aws["region"] is not None and not re.fullmatch(r"[a-z]{2}(-[a-z]+)+-\d+", aws["region"]):
            raise ConfigError("aws.region", "is not an AWS region name", value=aws["region"],
                              expected="e.g. us-west-1")
        for section in ("source", "sink", "ack"):
            if document.get(section) is None:
                raise ConfigError(section, "is required",
                                  expected="a mapping with a 'type' key naming a component")
        source = _component(document["source"], "source")
        transforms_raw = document.get("transforms") or []
        if not isinstance(transforms_raw, list):
            raise ConfigError("transforms", "has the wrong type", value=transforms_raw,
                              expected="a list of transform steps")
        transforms = tuple(_component(item, f"transforms[{i}]")
                           for i, item in enumerate(transforms_raw))
        sink = _component(document["sink"], "sink")
        ack = _component(document["ack"], "ack")
        plugin_settings = _plugin_settings(document, base_dir, environ)
    except ConfigError as exc:
        raise _explain(exc, env_sources) from None

    return PipelineConfig(
        path=path,
        base_dir=base_dir,
        service=service,
        aws=aws,
        source=source,
        transforms=transforms,
        sink=sink,
        ack=ack,
        plugin_settings=plugin_settings,
        env_sources=env_sources,
        telemetry=telemetry,
        errors=errors,
    )
