"""The pytest side of the test kit: the ``sqs_plugins`` fixture.

Installed distributions register this module through the ``pytest11`` entry point, so the fixture
is there in any project that has sqs-processor installed. With ``PYTEST_DISABLE_PLUGIN_AUTOLOAD``
set, enable it in a ``conftest.py``::

    pytest_plugins = ["sqs_processor.pytest_plugin"]

Only this module imports pytest; :mod:`sqs_processor.testing` works without it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from sqs_processor.testing import PluginSandbox


@pytest.fixture
def sqs_plugins() -> Iterator[PluginSandbox]:
    """Plugins registered for this test only: ``register(plugin)``, ``load_file(path)``,
    ``manager`` (a fresh plugin manager with them) and ``run(messages, ...)``; all removed
    when the test ends."""
    from sqs_processor.testing import PluginSandbox  # imported when used, not at pytest start

    with PluginSandbox() as sandbox:
        yield sandbox
