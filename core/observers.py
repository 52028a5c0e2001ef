"""Calling the lifecycle hooks: every plugin's implementation on its own, errors kept apart.

pluggy stops a hook call at the first implementation that raises, which would let one broken
observer hide the others. :class:`Observers` calls each plugin through its own pluggy hook caller
(:meth:`~sqs_processor.manager.PluginManager.callers`), so pluggy's hook monitoring and tracing
still see every call, and an exception (``sys.exit()`` included) is reported with the plugin's
name and affects nothing else.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sqs_processor import hookspecs
from sqs_processor.errors import describe_error

if TYPE_CHECKING:
    from sqs_processor.manager import PluginManager

log = logging.getLogger("sqs_processor.observers")

OnError = Callable[[str, str, BaseException], None]


def log_observer_error(hook: str, plugin: str, error: BaseException) -> None:
    """The runner's way: one warning naming the hook, the plugin and the error."""
    log.warning("%s of plugin %s raised %s", hook, plugin, describe_error(error),
                extra={"event": "observer_failed", "plugin": plugin})


class Observers:
    """The observer hooks of one pipeline (``sqs_processor_batch_received`` ... ``_shutdown``).

    ``on_error(hook, plugin, error)`` is told of each exception; by default it is logged.
    """

    def __init__(self, plugins: PluginManager, on_error: OnError = log_observer_error) -> None:
        self._on_error = on_error
        self._callers = {hook: plugins.callers(hook) for hook in hookspecs.OBSERVER_HOOKS}

    def implemented(self, hook: str) -> bool:
        return bool(self._callers[hook])

    def notify(self, hook: str, **kwargs: Any) -> None:
        """Call every implementation of ``hook`` with ``kwargs``; results are ignored."""
        for plugin, caller in self._callers[hook]:
            try:
                caller(**kwargs)
            except (Exception, SystemExit) as exc:  # sys.exit() in a plugin must not kill us
                self._on_error(hook, plugin, exc)
