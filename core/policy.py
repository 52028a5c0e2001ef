"""Allow and block lists: which plugins may load, decided from their names before any import.

The lists come from the YAML (``plugins.allow``, ``plugins.block``) and the environment
(``$SQS_PROCESSOR_PLUGINS_ALLOW``, ``$SQS_PROCESSOR_PLUGINS_BLOCK``); every list that applies
must agree. Built-ins are always allowed but can be blocked by name.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from sqs_processor.config import NameList, PluginSettings


def _normal(name: str) -> str:
    """Names compare case-insensitively, with runs of '-', '_' and '.' alike (as PEP 503 does
    for distributions), so ``My_Plugin`` blocks the distribution ``my-plugin``."""
    return re.sub(r"[-_.]+", "-", name.strip().lower())


class PluginPolicy:
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
