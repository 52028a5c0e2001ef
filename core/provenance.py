"""Where a plugin came from, and how its errors read: the provenance every message names.

Every registered plugin has a :class:`Provider` (built-in, entry point, file or module), so an
error, a ``sqs-processor plugins`` listing or a failed stage can say which plugin, which file
and which line. :class:`BrokenPlugin` and :class:`SkippedPlugin` record the plugins that did not
load, and why.
"""

from __future__ import annotations

import inspect
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from sqs_processor.errors import describe_error


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
