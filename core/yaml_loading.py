"""Reading the pipeline YAML, and replacing ``${VAR}`` references from the environment.

The file is parsed with PyYAML's safe loader, stricter in one way: a key written twice in one
mapping is an error, not a silent overwrite (keys merged in with ``<<:`` may be overridden).
``${VAR}``, ``${VAR:-default}`` and ``${VAR-default}`` are replaced in every string;
``$${`` writes a literal ``${``. Errors name the file, the line and the key.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from sqs_processor.errors import ConfigError

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

