"""The plugin manager of one pipeline: a thin facade over pluggy's, with typed accessors.

* Registration hooks hand in named specs; :meth:`PluginManager.components` collects them per
  kind (``source``, ``transform``, ``sink``, ``acker``), sorted by name, and a name registered
  twice is an error naming both plugins. :meth:`PluginManager.get` resolves what the YAML names.
* Every hook is called one plugin at a time through that plugin's own pluggy hook caller
  (:meth:`PluginManager.callers`): one plugin's exception never hides another's result, the
  provenance of every result is known, and pluggy's hook monitoring and tracing see each call.

Vocabulary: a *spec* is the record a registration hook returns (``SinkSpec``), its *kind* is one
of the four above, a :class:`Registration` is a spec with the plugin that registered it, and a
*component* is what a spec's factory builds (a ``Sink``). :mod:`sqs_processor.loaders` fills a
manager from the built-ins, entry points and the YAML.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pluggy

from sqs_processor import hookspecs
from sqs_processor.errors import ConfigError
from sqs_processor.options import suggest
from sqs_processor.provenance import BrokenPlugin, Provider, SkippedPlugin, describe_plugin_error
from sqs_processor.records import (
    AckerSpec,
    HealthCheckSpec,
    SinkSpec,
    SourceSpec,
    TransformSpec,
    normalise_name,
)

if TYPE_CHECKING:
    from sqs_processor.pipeline import Pipeline

log = logging.getLogger(__name__)

SPEC_TYPES: dict[str, type] = {spec.kind: spec for spec in (SourceSpec, TransformSpec, SinkSpec,
                                                            AckerSpec)}
"""Kind -> the spec class its registration hook returns."""


@dataclass(frozen=True)
class Registration:
    """A registered spec and the plugin that registered it."""

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

    Build one with :func:`~sqs_processor.loaders.build_plugin_manager`; never share one between
    pipelines.
    """

    @classmethod
    def create(cls) -> PluginManager:
        """An empty manager that knows every hook of :mod:`sqs_processor.hookspecs`."""
        pm = pluggy.PluginManager(hookspecs.hookspec.project_name)
        pm.add_hookspecs(hookspecs)
        return cls(pm)

    def __init__(self, pm: pluggy.PluginManager) -> None:
        self.pm = pm
        self._providers: dict[str, Provider] = {}
        self.broken: list[BrokenPlugin] = []
        self.skipped: list[SkippedPlugin] = []
        self.unmatched: list[str] = []  # allow/block entries that matched no plugin
        self._components: dict[str, dict[str, Registration]] | None = None

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
        impls = self._impls_of(plugin)
        wrappers = [impl.function.__name__ for impl in impls if impl.wrapper or impl.hookwrapper]
        if wrappers:
            self.pm.unregister(plugin)
            raise ConfigError("plugins", f"{provider} marks {', '.join(wrappers)} as a hook "
                                         "wrapper; sqs_processor hooks take plain "
                                         "implementations only")
        defaulted = [f"{impl.function.__name__}({', '.join(impl.kwargnames)})" for impl in impls
                     if impl.kwargnames]
        if defaulted:
            # pluggy before 1.6 never passes an argument that has a default, later versions do:
            # the same plugin would behave differently depending on what is installed.
            self.pm.unregister(plugin)
            raise ConfigError("plugins", f"{provider} gives hook arguments default values: "
                                         f"{'; '.join(defaulted)}; remove the defaults (every "
                                         "argument a hook lists is always passed)")
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

    def components(self, kind: str) -> dict[str, Registration]:
        """All components of ``kind`` ("source", "transform", "sink", "acker"), sorted by name."""
        if self._components is None:
            self._components = {k: self._collect(k) for k in hookspecs.REGISTRATION_HOOKS}
        return self._components[kind]

    def all_components(self) -> list[Registration]:
        return [c for kind in hookspecs.REGISTRATION_HOOKS for c in self.components(kind).values()]

    def _collect(self, kind: str) -> dict[str, Registration]:
        hook = hookspecs.REGISTRATION_HOOKS[kind]
        expected = SPEC_TYPES[kind]
        found: dict[str, Registration] = {}
        for plugin_name, caller in self.callers(hook):  # registration order
            provider = self.provider_of(plugin_name)
            try:
                specs = self._call(caller)
            except Exception as exc:
                self.mark_broken(provider,
                                 f"{hook} raised {describe_plugin_error(exc, provider)}")
                continue
            for spec in specs:
                if not isinstance(spec, expected):
                    raise ConfigError("plugins", f"{provider}: {hook} returned "
                                                 f"{type(spec).__name__}, expected "
                                                 f"{expected.__name__}")
                if spec.name in found:
                    first = found[spec.name].provider
                    raise ConfigError("plugins", f"{kind} {spec.name!r} is "
                                                 f"registered twice: by {first} and by {provider}")
                found[spec.name] = Registration(kind, spec, provider)
        return dict(sorted(found.items()))

    def mark_broken(self, provider: Provider, error: str) -> None:
        log.warning("plugin %s is broken and was skipped: %s", provider, error)
        self.broken.append(BrokenPlugin(provider, error))

    def get(self, kind: str, name: str, where: str) -> Registration:
        """The component the YAML names at ``where``, or a ConfigError that helps fix it."""
        available = self.components(kind)
        try:
            key = normalise_name(name)
        except ValueError:
            key = name
        if key in available:
            return available[key]
        label = kind
        hint = suggest(key, available)
        known = ", ".join(available) or "none"
        message = f"is not a known {label}{hint} (known {label}s: {known})"
        if self.broken:
            message += "; plugins that failed to load: " + "; ".join(map(str, self.broken))
        if self.skipped:
            message += "; plugins not loaded: " + "; ".join(map(str, self.skipped))
        raise ConfigError(f"{where}.type", message, value=name)

    def health_checks(self, pipeline: Pipeline) -> list[tuple[HealthCheckSpec, Provider]]:
        """Every plugin's readiness checks for the built ``pipeline``."""
        checks: list[tuple[HealthCheckSpec, Provider]] = []
        for plugin_name, caller in self.callers(hookspecs.HEALTH_HOOK):
            provider = self.provider_of(plugin_name)
            try:
                specs = self._call(caller, pipeline=pipeline)
            except Exception as exc:
                self.mark_broken(provider, f"{hookspecs.HEALTH_HOOK} raised "
                                           f"{describe_plugin_error(exc, provider)}")
                continue
            for spec in specs:
                if not isinstance(spec, HealthCheckSpec):
                    raise ConfigError("plugins", f"{provider}: sqs_processor_health_checks "
                                                 f"returned {type(spec).__name__}, expected "
                                                 "HealthCheckSpec")
                checks.append((spec, provider))
        return checks

    # -- calling hooks -------------------------------------------------------------------------

    def callers(self, hook_name: str) -> list[tuple[str, pluggy.HookCaller]]:
        """(plugin name, a hook caller for that plugin alone) for every implementation of
        ``hook_name``, in registration order. Calling one runs that plugin's implementation
        through pluggy (monitoring and tracing included) and returns its results as a list
        (empty when it returned None); its exception propagates to the caller alone."""
        hook: pluggy.HookCaller = getattr(self.pm.hook, hook_name)
        impls = hook.get_hookimpls()
        plugins = [impl.plugin for impl in impls]
        subset = self.pm.subset_hook_caller
        return [(impl.plugin_name,
                 subset(hook_name, [other for other in plugins if other is not impl.plugin]))
                for impl in impls]

    def _call(self, caller: pluggy.HookCaller, **kwargs: Any) -> list[Any]:
        results = caller(**kwargs)
        return [item for result in results for item in _as_list(result)]


def _as_list(result: Any) -> list[Any]:
    if result is None:
        return []
    if isinstance(result, Iterable) and not isinstance(result, str | bytes | Mapping):
        return list(result)
    return [result]
