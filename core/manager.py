"""Finding plugins and asking them for components: one plugin manager per pipeline.

Plugins come from three places, registered in this order and all through the same path:

1. the built-in list :data:`BUILTIN_PLUGINS` (the SQS source, the S3 sink, ...);
2. the ``sqs_processor`` entry-point group of installed distributions, loaded one at a time
   (unless ``plugins.autoload`` or ``$SQS_PROCESSOR_PLUGINS_AUTOLOAD`` switches it off);
3. the YAML: every ``*.py`` file in the ``plugins.paths`` folders, and ``plugins.modules``
   entries written ``package.module`` or ``package.module:attribute``.

Before anything is imported, each candidate is checked against the allow and block lists (YAML
and environment): a blocked plugin is never imported, only listed as skipped. Built-ins are
always allowed but can be blocked by name; being part of the engine's own package, a blocked
built-in is not registered (another built-in may still import its module).

A plugin that fails to load from an entry point is a warning, since the pipeline may not need it;
if the YAML then names a component nobody provides, the error lists the broken and the skipped
plugins. A file or module the YAML itself names must load, or the config is rejected.
``check_pending()`` runs after registration, so a misspelled hook name fails loudly instead of
never being called.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import logging
import re
import sys
import traceback
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType
from typing import Any

import pluggy

from sqs_processor import hookspecs
from sqs_processor.config import NameList, PluginSettings
from sqs_processor.errors import ConfigError, describe_error
from sqs_processor.options import suggest
from sqs_processor.records import (
    AckerSpec,
    HealthCheckSpec,
    SinkSpec,
    SourceSpec,
    TransformSpec,
    normalise_name,
)

log = logging.getLogger(__name__)

ENTRYPOINT_GROUP = "sqs_processor"

BUILTIN_PLUGINS = (
    "sqs_processor.plugins.sqs_source",
    "sqs_processor.plugins.json_parse",
    "sqs_processor.plugins.enrich",
    "sqs_processor.plugins.s3_sink",
    "sqs_processor.plugins.sqs_delete",
)
"""The built-in plugins, registered exactly as a third-party plugin would be."""

SPEC_TYPES = {"source": SourceSpec, "transform": TransformSpec, "sink": SinkSpec, "ack": AckerSpec}
KIND_LABELS = {"source": "source", "transform": "transform", "sink": "sink", "ack": "acker"}


@dataclass(frozen=True)
class Provider:
    """Where a plugin came from, for messages and ``sqs-processor plugins``.

    ``origin`` is "built-in", "entry point", "file" or "module"; ``detail`` the module, file or
    entry point with its distribution and version. ``name`` is the short name allow and block
    lists and listings use; ``path`` the plugin's source file when known, so errors can point
    at a line. Two providers are equal when origin and detail are.
    """

    origin: str
    detail: str
    name: str = field(default="", compare=False)
    path: str | None = field(default=None, compare=False)

    def __str__(self) -> str:
        return f"{self.origin} {self.detail}"


@dataclass(frozen=True)
class BrokenPlugin:
    """A plugin that could not be loaded or whose registration hook raised."""

    provider: Provider
    error: str

    def __str__(self) -> str:
        return f"{self.provider} ({self.error})"


@dataclass(frozen=True)
class SkippedPlugin:
    """A plugin that was not imported: ``status`` is "blocked" (allow/block lists) or "off"
    (entry points while autoload is off); ``reason`` says which setting decided it."""

    provider: Provider
    status: str
    reason: str

    def __str__(self) -> str:
        return f"{self.provider} ({self.reason})"


@dataclass(frozen=True)
class Component:
    """A registered component and the plugin that registered it."""

    kind: str
    spec: Any
    provider: Provider

    @property
    def name(self) -> str:
        return self.spec.name


def _flatten(text: str) -> str:
    return " ".join(text.split())


class PluginManager:
    """A thin facade over pluggy's manager: typed accessors and clear errors.

    Build one with :func:`build_plugin_manager`; never share one between pipelines.
    """

    def __init__(self, pm: pluggy.PluginManager) -> None:
        self.pm = pm
        self._providers: dict[str, Provider] = {}
        self.broken: list[BrokenPlugin] = []
        self.skipped: list[SkippedPlugin] = []
        self.unmatched: list[str] = []  # allow/block entries that matched no plugin
        self._components: dict[str, dict[str, Component]] | None = None

    # -- registration ------------------------------------------------------------------------

    def register(self, plugin: object, name: str, provider: Provider) -> None:
        """Register ``plugin`` under ``name``; a plugin object registered twice is skipped."""
        if self.pm.is_registered(plugin):
            log.debug("plugin %s is already registered; skipping %s", name, provider)
            return
        if self.pm.get_plugin(name) is not None:
            raise ConfigError("plugins", f"{provider} cannot be registered: the name {name!r} "
                                         "is already taken")
        try:
            self.pm.register(plugin, name=name)
        except pluggy.PluginValidationError as exc:
            raise ConfigError("plugins", f"{provider} is not a valid plugin: "
                                         f"{_flatten(str(exc))}") from None
        wrappers = [impl.function.__name__ for impl in self._impls_of(plugin)
                    if impl.wrapper or impl.hookwrapper]
        if wrappers:
            self.pm.unregister(plugin)
            raise ConfigError("plugins", f"{provider} marks {', '.join(wrappers)} as a hook "
                                         "wrapper; sqs_processor hooks take plain "
                                         "implementations only")
        self._providers[name] = provider
        self._components = None

    def unregister(self, plugin: object) -> None:
        """Remove a registered plugin (given as the object or its registration name)."""
        name = plugin if isinstance(plugin, str) else self.pm.get_name(plugin)
        if name is None or self.pm.get_plugin(name) is None:
            raise ValueError(f"{plugin!r} is not registered")
        self.pm.unregister(name=name)
        self._providers.pop(name, None)
        self._components = None

    def _impls_of(self, plugin: object) -> list[Any]:
        return [impl for caller in self.pm.get_hookcallers(plugin) or ()
                for impl in caller.get_hookimpls() if impl.plugin is plugin]

    def provider_of(self, plugin_name: str) -> Provider:
        return self._providers.get(plugin_name, Provider("plugin", plugin_name))

    def check_pending(self) -> None:
        """Fail on hook implementations that match no hook (usually a misspelled name)."""
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            provider = self.provider_of(self.pm.get_name(exc.plugin) or "")
            raise ConfigError("plugins", f"{provider} implements a hook that does not exist: "
                                         f"{_flatten(str(exc))}; hooks are listed in "
                                         "sqs_processor.hookspecs") from None

    # -- components --------------------------------------------------------------------------

    def components(self, kind: str) -> dict[str, Component]:
        """All components of ``kind`` ("source", "transform", "sink", "ack"), sorted by name."""
        if self._components is None:
            self._components = {k: self._collect(k) for k in hookspecs.REGISTRATION_HOOKS}
        return self._components[kind]

    def all_components(self) -> list[Component]:
        return [c for kind in hookspecs.REGISTRATION_HOOKS for c in self.components(kind).values()]

    def _collect(self, kind: str) -> dict[str, Component]:
        hook = getattr(self.pm.hook, hookspecs.REGISTRATION_HOOKS[kind])
        expected = SPEC_TYPES[kind]
        found: dict[str, Component] = {}
        for impl in hook.get_hookimpls():  # registration order
            provider = self.provider_of(impl.plugin_name)
            try:
                specs = _as_list(impl.function())
            except Exception as exc:
                self._mark_broken(provider,
                                  f"{hook.name} raised {describe_plugin_error(exc, provider)}")
                continue
            for spec in specs:
                if not isinstance(spec, expected):
                    raise ConfigError("plugins", f"{provider}: {hook.name} returned "
                                                 f"{type(spec).__name__}, expected "
                                                 f"{expected.__name__}")
                if spec.name in found:
                    first = found[spec.name].provider
                    raise ConfigError("plugins", f"{KIND_LABELS[kind]} {spec.name!r} is "
                                                 f"registered twice: by {first} and by {provider}")
                found[spec.name] = Component(kind, spec, provider)
        return dict(sorted(found.items()))

    def _mark_broken(self, provider: Provider, error: str) -> None:
        log.warning("plugin %s is broken and was skipped: %s", provider, error)
        self.broken.append(BrokenPlugin(provider, error))

    def get(self, kind: str, name: str, where: str) -> Component:
        """The component the YAML names at ``where``, or a ConfigError that helps fix it."""
        available = self.components(kind)
        try:
            key = normalise_name(name)
        except ValueError:
            key = name
        if key in available:
            return available[key]
        label = KIND_LABELS[kind]
        hint = suggest(key, available)
        known = ", ".join(available) or "none"
        message = f"is not a known {label}{hint} (known {label}s: {known})"
        if self.broken:
            message += "; plugins that failed to load: " + "; ".join(map(str, self.broken))
        if self.skipped:
            message += "; plugins not loaded: " + "; ".join(map(str, self.skipped))
        raise ConfigError(f"{where}.type", message, value=name)

    def health_checks(self, pipeline: Any) -> list[tuple[HealthCheckSpec, Provider]]:
        """Every plugin's readiness checks for the built ``pipeline``."""
        checks: list[tuple[HealthCheckSpec, Provider]] = []
        for impl in self.pm.hook.sqs_processor_health_checks.get_hookimpls():
            provider = self.provider_of(impl.plugin_name)
            try:
                result = call_impl(impl.function, impl.argnames, {"pipeline": pipeline})
            except Exception as exc:
                self._mark_broken(provider, "sqs_processor_health_checks raised "
                                            f"{describe_plugin_error(exc, provider)}")
                continue
            for spec in _as_list(result):
                if not isinstance(spec, HealthCheckSpec):
                    raise ConfigError("plugins", f"{provider}: sqs_processor_health_checks "
                                                 f"returned {type(spec).__name__}, expected "
                                                 "HealthCheckSpec")
                checks.append((spec, provider))
        return checks

    # -- observers ---------------------------------------------------------------------------

    def observers(self, hook_name: str) -> list[tuple[Any, tuple[str, ...], str]]:
        """(function, argument names, plugin name) for every implementation of a lifecycle hook."""
        hook = getattr(self.pm.hook, hook_name)
        return [(impl.function, tuple(impl.argnames), impl.plugin_name)
                for impl in hook.get_hookimpls()]


def _as_list(result: Any) -> list[Any]:
    if result is None:
        return []
    if isinstance(result, Iterable) and not isinstance(result, str | bytes | Mapping):
        return list(result)
    return [result]


def call_impl(function: Any, argnames: Iterable[str], kwargs: Mapping[str, Any]) -> Any:
    """Call a hook implementation with the subset of ``kwargs`` it asks for, as pluggy does."""
    return function(*[kwargs[name] for name in argnames])


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def load_plugin_file(path: Path) -> ModuleType:
    """Import a drop-in plugin file on its own, as the engine does for ``plugins.paths``.

    The module gets a name unique to its folder, so two folders may hold files of the same name.
    """
    path = Path(path).resolve()
    digest = hashlib.sha1(str(path.parent).encode(), usedforsecurity=False).hexdigest()[:8]
    module_name = f"sqs_processor_dropin_{digest}.{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses and pickling look the module up here
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(module_name, None)
        raise
    return module


def _load_reference(ref: str) -> object:
    module_name, _, attr = ref.partition(":")
    obj: object = importlib.import_module(module_name)
    for part in filter(None, attr.split(".")):
        obj = getattr(obj, part)
    return obj


def source_file(plugin: object) -> str | None:
    """The source file a plugin object (module, class, instance) was defined in, if any."""
    target = plugin if inspect.ismodule(plugin) or inspect.isclass(plugin) else type(plugin)
    try:
        return inspect.getsourcefile(target)  # type: ignore[arg-type]
    except TypeError:
        return getattr(plugin, "__file__", None)


def describe_plugin_error(exc: BaseException, provider: Provider) -> str:
    """One line for an exception raised by plugin code, ending with where it was raised.

    A file plugin's line is given as ``(line N)`` (the file is in the provider already); for other
    plugins the file is named too. The line is the innermost one in the plugin's own file when
    that is known; otherwise, for an import, the innermost module-level line (the statement of
    the plugin that failed, not the library code it called).
    """
    path = Path(provider.path) if provider.path else None
    text = describe_error(exc, path if provider.origin == "file" else None)
    if provider.origin == "file" or isinstance(exc, SyntaxError):
        return text
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if not f.filename.startswith("<")]
    own = [f for f in frames if path is not None and Path(f.filename) == path]
    if path is None:
        own = [f for f in frames if f.name == "<module>"]
    frame = (own or frames or [None])[-1]
    if frame is None or provider.origin == "built-in":
        return text
    return f"{text} ({frame.filename}, line {frame.lineno})"


# --------------------------------------------------------------------------------------------
# Allow and block lists
# --------------------------------------------------------------------------------------------


def _normal(name: str) -> str:
    """Names compare case-insensitively, with runs of '-', '_' and '.' alike (as PEP 503 does
    for distributions), so ``My_Plugin`` blocks the distribution ``my-plugin``."""
    return re.sub(r"[-_.]+", "-", name.strip().lower())


class _Policy:
    """Decides, from names alone and before any import, whether a plugin may load."""

    def __init__(self, settings: PluginSettings | None) -> None:
        self.allow: tuple[NameList, ...] = settings.allow if settings else ()
        self.block: tuple[NameList, ...] = settings.block if settings else ()
        self._used: set[tuple[str, str]] = set()

    def verdict(self, names: Iterable[str], builtin: bool = False) -> str | None:
        """None when the plugin may load, else why not."""
        normal = {_normal(n) for n in names if n}
        reason = None
        for listed in self.block:
            for entry in listed.names:
                if _normal(entry) in normal:
                    self._used.add((listed.source, entry))
                    reason = reason or f"blocked by {listed.source} entry {entry!r}"
        for listed in self.allow:
            hits = [entry for entry in listed.names if _normal(entry) in normal]
            self._used.update((listed.source, entry) for entry in hits)
            if not hits and not builtin:
                reason = reason or f"not in {listed.source}"
        return reason

    def unmatched(self) -> list[str]:
        return [f"{listed.source} entry {entry!r} matches no plugin"
                for listed in (*self.block, *self.allow) for entry in listed.names
                if (listed.source, entry) not in self._used]


def _distribution(ep: Any) -> tuple[str, str] | None:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return None
    return str(dist.metadata["Name"]), str(dist.version)


def build_plugin_manager(
    settings: PluginSettings | None = None,
    *,
    extra_plugins: Iterable[tuple[str, object] | tuple[str, object, Provider]] = (),
) -> PluginManager:
    """Create a fresh plugin manager with the built-ins, entry points and YAML-named plugins.

    ``settings`` None means: built-ins and every entry point, no allow or block lists.
    ``extra_plugins`` are (name, plugin) pairs, or (name, plugin, provider), registered last, for
    tests and embedding; the allow and block lists do not apply to them. Raises ConfigError when
    a plugin the YAML names cannot be loaded or is not valid.
    """
    pm = pluggy.PluginManager(hookspecs.hookspec.project_name)
    pm.add_hookspecs(hookspecs)
    manager = PluginManager(pm)
    policy = _Policy(settings)

    def skip(provider: Provider, status: str, reason: str) -> None:
        log.debug("plugin %s was not loaded: %s", provider, reason,
                  extra={"event": "plugin_skipped", "plugin": str(provider)})
        manager.skipped.append(SkippedPlugin(provider, status, reason))

    for module_name in BUILTIN_PLUGINS:
        short = module_name.rpartition(".")[2]
        provider = Provider("built-in", module_name, name=short)
        reason = policy.verdict((module_name, short), builtin=True)
        if reason:
            skip(provider, "blocked", reason)
            continue
        module = importlib.import_module(module_name)
        manager.register(module, f"builtin:{module_name}",
                         Provider("built-in", module_name, name=short, path=source_file(module)))

    autoload = settings is None or settings.load_entrypoints
    for ep in sorted(entry_points(group=ENTRYPOINT_GROUP), key=lambda e: e.name):
        dist = _distribution(ep)
        origin = f"{ep.name!r} ({ep.value})"
        if dist is not None:
            origin += f" from {dist[0]} {dist[1]}"
        provider = Provider("entry point", origin, name=ep.name)
        reason = policy.verdict((ep.name, dist[0] if dist else ""))
        if not autoload:
            off_by = settings.autoload_off_by if settings else ""
            skip(provider, "off", f"entry points are not loaded: autoload is off ({off_by})")
            continue
        if reason:
            skip(provider, "blocked", reason)
            continue
        try:
            plugin = ep.load()
        except Exception as exc:
            manager._mark_broken(provider, describe_plugin_error(exc, provider))
            continue
        manager.register(plugin, f"entrypoint:{ep.name}",
                         Provider("entry point", origin, name=ep.name, path=source_file(plugin)))

    if settings is not None:
        for i, folder in enumerate(settings.plugin_paths):
            for path in sorted(folder.glob("*.py")):
                if path.name.startswith(("_", ".")):
                    continue
                provider = Provider("file", str(path), name=path.stem, path=str(path.resolve()))
                reason = policy.verdict((path.stem, path.name))
                if reason:
                    skip(provider, "blocked", reason)
                    continue
                try:
                    module = load_plugin_file(path)
                except Exception as exc:
                    raise ConfigError(f"{settings.paths_key}[{i}]",
                                      f"plugin file {str(path)!r} failed to import: "
                                      f"{describe_error(exc, path.resolve())}") from None
                manager.register(module, f"file:{path}", provider)
        for i, ref in enumerate(settings.plugins):
            module_name = ref.partition(":")[0]
            provider = Provider("module", ref, name=ref)
            reason = policy.verdict((ref, module_name))
            if reason:
                skip(provider, "blocked", reason)
                continue
            try:
                plugin = _load_reference(ref)
            except Exception as exc:
                raise ConfigError(f"{settings.modules_key}[{i}]",
                                  f"{ref!r} failed to import: "
                                  f"{describe_plugin_error(exc, provider)}") from None
            manager.register(plugin, f"module:{ref}",
                             Provider("module", ref, name=ref, path=source_file(plugin)))

    for name, plugin, *provided in extra_plugins:
        provider = provided[0] if provided else Provider("module", name, name=name,
                                                         path=source_file(plugin))
        manager.register(plugin, name, provider)

    manager.unmatched = policy.unmatched()
    for warning in manager.unmatched:
        log.warning("plugin list: %s", warning, extra={"event": "plugin_list_unmatched"})
    manager.check_pending()
    return manager
