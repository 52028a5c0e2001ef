"""Typed option declarations for components, and their validation.

Every source, transform, sink and acker declares the options it accepts as a tuple of
:class:`Option`. The YAML block for the component is checked against them before anything is
built: unknown keys (with a "did you mean" suggestion), missing required values, wrong types and
out-of-range numbers are all :class:`~sqs_processor.errors.ConfigError`.

Values interpolated from the environment arrive as text, so numbers and booleans written as
strings are accepted and converted (``"10"`` for an integer option, ``"true"`` for a boolean).

The same declarations document themselves: :meth:`Option.type_label`,
:meth:`Option.default_label` and :meth:`Option.allowed_label` are what ``sqs-processor plugins
--describe`` prints and what the README's generated configuration reference is made of.
"""

from __future__ import annotations

import copy
import difflib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sqs_processor.errors import ConfigError, Problems


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()
"""Sentinel default for an option the user must set."""

_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
               list: "a list", dict: "a mapping"}
_TYPE_LABELS = {str: "string", int: "integer", float: "number", bool: "boolean", list: "list",
                dict: "mapping"}
_ITEM_LABELS = {str: "strings", int: "integers", float: "numbers", bool: "booleans"}
_OPTION_NAME = re.compile(r"\A[a-z][a-z0-9_]{0,63}\Z")
_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


@dataclass(frozen=True)
class Option:
    """One option of a component: its name, type, default, allowed range and meaning.

    ``type`` is one of ``str``, ``int``, ``float``, ``bool``, ``list`` or ``dict``. ``default``
    is :data:`REQUIRED` for a mandatory option; a default of ``None`` makes the option optional
    and unset. ``minimum``/``maximum`` bound numbers (inclusive); ``choices`` lists the allowed
    values; ``items`` gives the type of a list's elements (``str``, ``int``, ``float`` or
    ``bool``), each checked and converted like a value of its own.

    A declaration that contradicts itself (a default of the wrong type or out of range, an
    unsupported type) raises ``ValueError`` when the component spec is created, so a plugin's
    mistake surfaces when it registers, naming the plugin, not when a user first sets the option.
    """

    name: str
    type: type
    default: Any = REQUIRED
    description: str = ""
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[Any, ...] | None = None
    items: type | None = None

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def check_declaration(self, owner: str) -> None:
        """Raise ValueError when this declaration is unusable; ``owner`` names the component."""
        where = f"{owner}: option {self.name!r}"
        if not isinstance(self.name, str) or not _OPTION_NAME.match(self.name):
            raise ValueError(f"{owner}: option name {self.name!r} must be lower-case letters, "
                             "digits and '_', starting with a letter")
        if self.type not in _TYPE_LABELS:
            raise ValueError(f"{where} has unsupported type {self.type!r}; use str, int, float, "
                             "bool, list or dict")
        if self.items is not None and (self.type is not list or self.items not in _ITEM_LABELS):
            raise ValueError(f"{where}: items= applies to list options and must be str, int, "
                             "float or bool")
        if self.required or self.default is None:
            return
        try:
            self.convert(self.default, self.name)
        except ConfigError as exc:
            raise ValueError(f"{where} has an invalid default: {exc}") from None

    # -- how the declaration reads to people ------------------------------------------------

    def type_label(self) -> str:
        """``string``, ``integer``, ``list of strings`` ..."""
        if self.type is list and self.items is not None:
            return f"list of {_ITEM_LABELS[self.items]}"
        return _TYPE_LABELS.get(self.type, getattr(self.type, "__name__", str(self.type)))

    def default_label(self) -> str:
        """The default as it would be written in YAML, ``(required)`` or ``(unset)``."""
        if self.required:
            return "(required)"
        if self.default is None:
            return "(unset)"
        return yaml_text(self.default)

    def allowed_label(self) -> str:
        """The accepted range or choices (``1-10``, ``sent, received``), or an empty string."""
        if self.choices is not None:
            return ", ".join(yaml_text(c) for c in self.choices)
        if self.minimum is not None and self.maximum is not None:
            return f"{_num(self.minimum)}-{_num(self.maximum)}"
        if self.minimum is not None:
            return f"at least {_num(self.minimum)}"
        if self.maximum is not None:
            return f"at most {_num(self.maximum)}"
        return ""

    def expected(self) -> str:
        """How the accepted values read in an error message."""
        if self.choices is not None:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        text = _TYPE_NAMES.get(self.type, self.type.__name__)
        if self.type is list and self.items is not None:
            text = f"a list of {_ITEM_LABELS[self.items]}"
        if self.minimum is not None and self.maximum is not None:
            return f"{text} from {_num(self.minimum)} to {_num(self.maximum)}"
        if self.minimum is not None:
            return f"{text} of at least {_num(self.minimum)}"
        if self.maximum is not None:
            return f"{text} of at most {_num(self.maximum)}"
        return text

    def convert(self, value: Any, key: str) -> Any:
        """Return ``value`` converted to this option's type, or raise ConfigError for ``key``."""
        if value is None:
            if self.default is None:
                return None
            raise ConfigError(key, "is required" if self.required else "may not be empty",
                              expected=self.expected())
        converted = self._coerce(value, key)
        if self.choices is not None and converted not in self.choices:
            raise ConfigError(key, "is not allowed", value=value, expected=self.expected())
        if isinstance(converted, int | float) and not isinstance(converted, bool):
            too_low = self.minimum is not None and converted < self.minimum
            too_high = self.maximum is not None and converted > self.maximum
            if too_low or too_high:
                raise ConfigError(key, "is out of range", value=value, expected=self.expected())
        if self.items is not None and isinstance(converted, list):
            element = Option(self.name, self.items)
            for i, item in enumerate(converted):
                if item is None:
                    raise ConfigError(f"{key}[{i}]", "is empty", expected=element.expected())
                converted[i] = element.convert(item, f"{key}[{i}]")
        return converted

    def _coerce(self, value: Any, key: str) -> Any:
        wrong = ConfigError(key, "has the wrong type", value=value, expected=self.expected())
        if self.type is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
                return value.strip().lower() in _TRUE
            raise wrong
        if self.type is int:
            if isinstance(value, bool):
                raise wrong
            if isinstance(value, int):
                return value
            if isinstance(value, str):
                try:
                    return int(value.strip(), 10)
                except ValueError:
                    raise wrong from None
            raise wrong
        if self.type is float:
            if isinstance(value, bool):
                raise wrong
            if isinstance(value, int | float):
                result = float(value)
            elif isinstance(value, str):
                try:
                    result = float(value.strip())
                except ValueError:
                    raise wrong from None
            else:
                raise wrong
            if result != result or result in (float("inf"), float("-inf")):
                raise wrong
            return result
        if self.type is list:
            if isinstance(value, list):
                return list(value)
            raise wrong
        if self.type is dict:
            if isinstance(value, Mapping):
                return dict(value)
            raise wrong
        if self.type is str:
            if isinstance(value, str):
                return value
            raise wrong
        raise TypeError(f"option {self.name}: unsupported type {self.type!r}")


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def yaml_text(value: Any) -> str:
    """A value as it would be written in the YAML (``true``, ``30``, ``[]``, ``""``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return _num(value)
    if isinstance(value, str):
        return value if value and value.strip() == value else f'"{value}"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(yaml_text(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}: {yaml_text(v)}" for k, v in value.items()) + "}"
    return str(value)


def check_field_name(name: Any, key: str) -> str:
    """Check a document field name given in the YAML; return it or raise ConfigError."""
    if not isinstance(name, str) or not name or len(name) > 256:
        raise ConfigError(key, "is not a field name", value=name,
                          expected="a non-empty string of at most 256 characters")
    return name


def closest(name: str, candidates: Iterable[str]) -> str | None:
    """The candidate ``name`` is most likely a misspelling of, if any is close."""
    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.5)
    return close[0] if close else None


def suggest(name: str, candidates: Iterable[str]) -> str:
    """A "did you mean" hint for a misspelled name, or an empty string."""
    close = closest(name, candidates)
    return f"; did you mean {close!r}?" if close else ""


def validate_options(
    options: Iterable[Option],
    raw: Mapping[str, Any] | None,
    where: str,
    *,
    reserved: Iterable[str] = (),
) -> dict[str, Any]:
    """Check a component's YAML block against its declared options.

    ``where`` is the dotted path of the block (``sink``, ``transforms[1]``), used in errors.
    ``reserved`` are keys the engine itself reads (``type``), which are skipped here. Returns
    every declared option with defaults filled in; raises every problem of the block at once
    (:class:`~sqs_processor.errors.ConfigErrors` when there are several).
    """
    declared = {option.name: option for option in options}
    raw = raw or {}
    skip = set(reserved)
    problems = Problems()
    meant: set[str] = set()  # options a misspelled key stands for: not "required" as well
    for name in raw:
        if name in skip or name in declared:
            continue
        known = sorted(declared)
        hint = suggest(str(name), known)
        meant.add(closest(str(name), known) or "")
        if not hint:
            hint = "; known options: " + ", ".join(known) if known else "; it takes no options"
        problems.add(ConfigError(f"{where}.{name}", f"is not an option of this component{hint}"))
    result: dict[str, Any] = {}
    for name, option in declared.items():
        key = f"{where}.{name}"
        if name in raw:
            with problems.collect():
                result[name] = option.convert(raw[name], key)
        elif option.required and name not in meant:
            problems.add(ConfigError(key, "is required", expected=option.expected()))
        else:  # a copy: a factory that changes a list or mapping default changes only its own
            result[name] = copy.deepcopy(option.default)
    problems.raise_found()  # every problem of the block at once
    return result
