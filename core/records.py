"""The small typed records that registration hooks return.

A plugin does not hand the engine bare functions: it returns a :class:`SourceSpec`,
:class:`TransformSpec`, :class:`SinkSpec`, :class:`AckerSpec` or :class:`HealthCheckSpec`, each
with a normalised ``name`` (what the YAML's ``type:`` refers to), a ``factory`` that builds the
component from its validated options, a one-line ``description`` and the ``options`` it takes.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from sqs_processor.options import Option

if TYPE_CHECKING:
    from sqs_processor.aws import AwsClients
    from sqs_processor.components import Acker, Sink, Source, Transform
    from sqs_processor.config import PipelineConfig

_NAME = re.compile(r"\A[a-z][a-z0-9_.]{0,63}\Z")


def normalise_name(name: str) -> str:
    """Lower-case a component name and check it is a plain identifier-like word."""
    if not isinstance(name, str):
        raise TypeError(f"component name must be a string, not {type(name).__name__}")
    normal = name.strip().lower().replace("-", "_")
    if not _NAME.match(normal):
        raise ValueError(
            f"component name {name!r} must start with a letter and use only a-z, 0-9, '_', '-', '.'"
        )
    return normal


@dataclass(frozen=True)
class BuildContext:
    """What a component factory gets besides its own options.

    ``config`` is the whole validated pipeline (read it, never change it), ``aws`` hands out
    boto3 clients created once per pipeline with the configured region, endpoint, retries and
    connection pool, ``where`` is the component's place in the YAML (``sink``,
    ``transforms[0]``) for error messages, and ``base_dir`` is the folder of the config file,
    against which relative paths in options are resolved.
    """

    config: PipelineConfig
    aws: AwsClients
    where: str
    base_dir: Path


@dataclass(frozen=True)
class _ComponentSpec:
    kind: ClassVar[str] = "component"

    name: str
    factory: Callable[[Mapping[str, Any], BuildContext], Any]
    description: str = ""
    options: tuple[Option, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", normalise_name(self.name))
        if not callable(self.factory):
            raise TypeError(f"{self.kind} {self.name!r}: factory must be callable")
        object.__setattr__(self, "options", tuple(self.options))
        owner = f"{self.kind} {self.name!r}"
        seen: set[str] = set()
        for option in self.options:
            if not isinstance(option, Option):
                raise TypeError(f"{owner}: options must be Option declarations, "
                                f"not {type(option).__name__}")
            option.check_declaration(owner)
            if option.name in seen or option.name == "type":
                raise ValueError(f"{owner}: option {option.name!r} is declared twice"
                                 if option.name in seen else
                                 f"{owner}: 'type' is reserved for the component's name")
            seen.add(option.name)
        first_line = (self.description or "").strip().splitlines()
        object.__setattr__(self, "description", first_line[0] if first_line else "")


@dataclass(frozen=True)
class SourceSpec(_ComponentSpec):
    """Registers a source: ``factory(options, context) -> Source``."""

    kind: ClassVar[str] = "source"
    factory: Callable[[Mapping[str, Any], BuildContext], Source]


@dataclass(frozen=True)
class TransformSpec(_ComponentSpec):
    """Registers a transform: ``factory(options, context) -> Transform``."""

    kind: ClassVar[str] = "transform"
    factory: Callable[[Mapping[str, Any], BuildContext], Transform]


@dataclass(frozen=True)
class SinkSpec(_ComponentSpec):
    """Registers a sink: ``factory(options, context) -> Sink``."""

    kind: ClassVar[str] = "sink"
    factory: Callable[[Mapping[str, Any], BuildContext], Sink]


@dataclass(frozen=True)
class AckerSpec(_ComponentSpec):
    """Registers an acker: ``factory(options, context) -> Acker``."""

    kind: ClassVar[str] = "acker"
    factory: Callable[[Mapping[str, Any], BuildContext], Acker]


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one health check: ``ok`` and a short human-readable ``detail``."""

    ok: bool
    detail: str = ""


@dataclass(frozen=True)
class HealthCheckSpec:
    """A readiness check: ``check()`` returns a CheckResult (or a bool) and must be quick.

    It is called from the health server's thread, at most once per probe cache interval; an
    exception counts as a failed check with the exception as its detail.
    """

    name: str
    check: Callable[[], CheckResult | bool]
    description: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", normalise_name(self.name))
        if not callable(self.check):
            raise TypeError(f"health check {self.name!r}: check must be callable")
