"""Finding plugins: one plugin manager per pipeline, filled from three places.

Plugins are registered in this order, all through the same path
(:meth:`~sqs_processor.manager.PluginManager.register`):

1. the built-in list :data:`BUILTIN_PLUGINS` (the SQS source, the S3 sink, ...);
2. the ``sqs_processor`` entry-point group of installed distributions, loaded one at a time
   (unless ``plugins.autoload`` or ``$SQS_PROCESSOR_PLUGINS_AUTOLOAD`` switches it off);
3. the YAML: every ``*.py`` file in the ``plugins.paths`` folders, and ``plugins.modules``
   entries written ``package.module`` or ``package.module:attribute``.

Before anything is imported, each candidate is checked against the allow and block lists
(:mod:`sqs_processor.policy`): a blocked plugin is never imported, only listed as skipped. A
blocked built-in is not registered (another built-in may still import its module).

A plugin that fails to load from an entry point is a warning, since the pipeline may not need
it; if the YAML then names a component nobody provides, the error lists the broken and the
skipped plugins. A file or module the YAML itself names must load, or the config is rejected.
``check_pending()`` runs after registration, so a misspelled hook name fails loudly instead of
never being called.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import logging
import sys
from collections.abc import Iterable
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from types import ModuleType

from sqs_processor.config import PluginSettings
from sqs_processor.errors import ConfigError, describe_error
from sqs_processor.manager import PluginManager
from sqs_processor.policy import PluginPolicy
from sqs_processor.provenance import Provider, SkippedPlugin, describe_plugin_error, source_file

log = logging.getLogger("sqs_processor.manager")

ENTRYPOINT_GROUP = "sqs_processor"

BUILTIN_PLUGINS = (
    "sqs_processor.plugins.sqs_source",
    "sqs_processor.plugins.json_parse",
    "sqs_processor.plugins.enrich",
    "sqs_processor.plugins.s3_sink",
    "sqs_processor.plugins.sqs_delete",
)
"""The built-in plugins, registered exactly as a third-party plugin would be."""

ExtraPlugin = tuple[str, object] | tuple[str, object, Provider]


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


def _distribution(ep: EntryPoint) -> tuple[str, str] | None:
    dist = ep.dist
    if dist is None:
        return None
    return str(dist.metadata["Name"]), str(dist.version)


class _Loading:
    """One build of a plugin manager: the manager, the policy and the skipped plugins."""

    def __init__(self, settings: PluginSettings | None) -> None:
        self.settings = settings
        self.manager = PluginManager.create()
        self.policy = PluginPolicy(settings)

    def allowed(self, provider: Provider, names: Iterable[str], builtin: bool = False) -> bool:
        reason = self.policy.verdict(names, builtin=builtin)
        if reason:
            self.skip(provider, "blocked", reason)
        return not reason

    def skip(self, provider: Provider, status: str, reason: str) -> None:
        log.debug("plugin %s was not loaded: %s", provider, reason,
                  extra={"event": "plugin_skipped", "plugin": str(provider)})
        self.manager.skipped.append(SkippedPlugin(provider, status, reason))

    def builtins(self) -> None:
        for module_name in BUILTIN_PLUGINS:
            short = module_name.rpartition(".")[2]
            provider = Provider("built-in", module_name, name=short)
            if not self.allowed(provider, (module_name, short), builtin=True):
                continue
            module = importlib.import_module(module_name)
            self.manager.register(module, f"builtin:{module_name}", Provider(
                "built-in", module_name, name=short, path=source_file(module)))

    def entry_points(self) -> None:
        settings = self.settings
        autoload = settings is None or settings.load_entrypoints
        for ep in sorted(entry_points(group=ENTRYPOINT_GROUP), key=lambda e: e.name):
            dist = _distribution(ep)
            origin = f"{ep.name!r} ({ep.value})"
            if dist is not None:
                origin += f" from {dist[0]} {dist[1]}"
            provider = Provider("entry point", origin, name=ep.name)
            if not autoload:
                off_by = settings.autoload_off_by if settings else ""
                self.skip(provider, "off", f"entry points are not loaded: autoload is off "
                                           f"({off_by})")
                continue
            if not self.allowed(provider, (ep.name, dist[0] if dist else "")):
                continue
            try:
                plugin = ep.load()
            except Exception as exc:
                self.manager.mark_broken(provider, describe_plugin_error(exc, provider))
                continue
            self.manager.register(plugin, f"entrypoint:{ep.name}", Provider(
                "entry point", origin, name=ep.name, path=source_file(plugin)))

    def files(self, settings: PluginSettings) -> None:
        for i, folder in enumerate(settings.plugin_paths):
            for path in sorted(folder.glob("*.py")):
                if path.name.startswith(("_", ".")):
                    continue
                provider = Provider("file", str(path), name=path.stem, path=str(path.resolve()))
                if not self.allowed(provider, (path.stem, path.name)):
                    continue
                try:
                    module = load_plugin_file(path)
                except Exception as exc:
                    raise ConfigError(f"plugins.paths[{i}]",
                                      f"plugin file {str(path)!r} failed to import: "
                                      f"{describe_error(exc, path.resolve())}") from None
                self.manager.register(module, f"file:{path}", provider)

    def modules(self, settings: PluginSettings) -> None:
        for i, ref in enumerate(settings.plugins):
            provider = Provider("module", ref, name=ref)
            if not self.allowed(provider, (ref, ref.partition(":")[0])):
                continue
            try:
                plugin = _load_reference(ref)
            except Exception as exc:
                raise ConfigError(f"plugins.modules[{i}]",
                                  f"{ref!r} failed to import: "
                                  f"{describe_plugin_error(exc, provider)}") from None
            self.manager.register(plugin, f"module:{ref}",
                                  Provider("module", ref, name=ref, path=source_file(plugin)))


def build_plugin_manager(
    settings: PluginSettings | None = None,
    *,
    extra_plugins: Iterable[ExtraPlugin] = (),
) -> PluginManager:
    """Create a fresh plugin manager with the built-ins, entry points and YAML-named plugins.

    ``settings`` None means: built-ins and every entry point, no allow or block lists.
    ``extra_plugins`` are (name, plugin) pairs, or (name, plugin, provider), registered last, for
    tests and embedding; the allow and block lists do not apply to them. Raises ConfigError when
    a plugin the YAML names cannot be loaded or is not valid.
    """
    loading = _Loading(settings)
    loading.builtins()
    loading.entry_points()
    if settings is not None:
        loading.files(settings)
        loading.modules(settings)
    manager = loading.manager
    for name, plugin, *provided in extra_plugins:
        provider = provided[0] if provided else Provider("module", name, name=name,
                                                         path=source_file(plugin))
        manager.register(plugin, name, provider)
    manager.unmatched = loading.policy.unmatched()
    for warning in manager.unmatched:
        log.warning("plugin list: %s", warning, extra={"event": "plugin_list_unmatched"})
    manager.check_pending()
    return manager
