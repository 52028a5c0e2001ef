"""Reading the pipeline YAML, and replacing ``${VAR}`` references from the environment.

The file is parsed with PyYAML's safe loader (libyaml's parser when PyYAML has it), stricter in
one way: a key written twice in one mapping is an error, not a silent overwrite (keys merged in
with ``<<:`` may be overridden). ``${VAR}``, ``${VAR:-default}`` and ``${VAR-default}`` are
replaced in every string; ``$${`` writes a literal ``${``. Errors name the file, the line and
the key.

A config is input an operator may get wrong and an attacker may write (a ConfigMap edit reaches
a running pod through live reload), so reading it is bounded before anything expensive runs:

* only a regular file is read (a pipe, a device or a directory is refused without blocking),
  and at most :data:`MAX_CONFIG_BYTES`;
* nesting deeper than :data:`MAX_DEPTH` is refused while the file is composed;
* at most :data:`MAX_NODES` values may be written, and at most :data:`MAX_EXPANDED_VALUES` may
  result once every alias (``*name``, ``<<: *name``) is counted as the whole value it stands
  for, so an alias bomb is refused before it is expanded; an alias inside its own anchor is
  refused too.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from yaml.composer import Composer

from sqs_processor.errors import ConfigError, cut, shorten

MAX_CONFIG_BYTES = 1024 * 1024
"""Largest config file read (1 MiB); a pipeline is a few KiB."""
MAX_DEPTH = 64
"""Deepest nesting of mappings and lists accepted."""
MAX_NODES = 20_000
"""Most values (scalars, lists, mappings) a config may write."""
MAX_EXPANDED_VALUES = 100_000
"""Most values a config may stand for once every alias is expanded."""

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



if getattr(yaml, "__with_libyaml__", False):
    from yaml._yaml import CParser  # scanning and parsing in C: several times faster

    _PARSER: tuple[type, ...] = (CParser,)
else:  # pragma: no cover - PyYAML built without libyaml
    from yaml.parser import Parser
    from yaml.reader import Reader
    from yaml.scanner import Scanner

    _PARSER = (Reader, Scanner, Parser)


class _StrictLoader(Composer, *_PARSER, yaml.constructor.SafeConstructor,  # type: ignore[misc]
                    yaml.resolver.Resolver):
    """A safe loader that rejects a key written twice in one mapping and composes the document
    in Python, over the parser's events, to bound its depth and its number of values."""

    def __init__(self, stream: str) -> None:
        if len(_PARSER) == 1:
            _PARSER[0].__init__(self, stream)
        else:  # pragma: no cover - no libyaml
            _PARSER[0].__init__(self, stream)
            _PARSER[1].__init__(self)
            _PARSER[2].__init__(self)
        Composer.__init__(self)
        yaml.constructor.SafeConstructor.__init__(self)
        yaml.resolver.Resolver.__init__(self)
        self._depth = 0
        self._nodes = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._nodes += 1
        if self._nodes > MAX_NODES:
            raise ConfigError("", f"line {self.peek_event().start_mark.line + 1}: more than "
                                  f"{MAX_NODES:,} values; a pipeline config holds a few hundred")
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise ConfigError("", f"line {self.peek_event().start_mark.line + 1}: nested "
                                      f"deeper than {MAX_DEPTH} levels")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


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
            raise ConfigError("", f"line {line}: key {shorten(key)} appears twice in the same "
                                  "mapping")
        seen.add(key)
    loader.flatten_mapping(node)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)



_LIMIT = f"the limit is 1 MiB ({MAX_CONFIG_BYTES:,} bytes)"


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a named pipe"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a special file"


def read_text(path: Path) -> str:
    """The text of a config file: a regular file of at most :data:`MAX_CONFIG_BYTES`, UTF-8.

    Opened without blocking (a named pipe with no writer would otherwise hang), checked on the
    open descriptor (no swap between check and read), and never read past the limit.
    """
    name = shorten(str(path), 300)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise ConfigError("config", f"file {name} does not exist") from None
    except OSError as exc:
        raise ConfigError("config", f"file {name} cannot be read: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError("config", f"file {name} cannot be read: it is "
                                        f"{_kind(info.st_mode)}, and a config must be a regular "
                                        "file")
        if info.st_size > MAX_CONFIG_BYTES:
            raise ConfigError("config", f"file {name} is {info.st_size:,} bytes; {_LIMIT}")
        os.set_blocking(fd, True)
        chunks, size = [], 0
        while size <= MAX_CONFIG_BYTES:
            chunk = os.read(fd, MAX_CONFIG_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        data = b"".join(chunks)
    except OSError as exc:
        raise ConfigError("config", f"file {name} cannot be read: {exc.strerror}") from None
    finally:
        os.close(fd)
    if len(data) > MAX_CONFIG_BYTES:  # it grew after the check
        raise ConfigError("config", f"file {name} is over {MAX_CONFIG_BYTES:,} bytes; {_LIMIT}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError("config", f"file {name} cannot be read as UTF-8 text (invalid "
                                    f"byte at offset {exc.start})") from None


def _check_expansion(root: yaml.Node) -> None:
    """Refuse a document whose aliases would expand past :data:`MAX_EXPANDED_VALUES`, or that
    contains itself. Each node is sized once (shared nodes are looked up), so this is linear in
    the nodes written, however large the expansion would be."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node: yaml.Node) -> int:
        known = sizes.get(id(node))
        if known is not None:
            return known
        if id(node) in open_nodes:
            raise ConfigError("", f"line {node.start_mark.line + 1}: an alias refers to a value "
                                  "that contains it")
        total = 1
        if isinstance(node, yaml.SequenceNode | yaml.MappingNode):
            open_nodes.add(id(node))
            children = node.value if isinstance(node, yaml.SequenceNode) else \
                [part for pair in node.value for part in pair]
            for child in children:
                total += size(child)
                if total > MAX_EXPANDED_VALUES:
                    raise ConfigError("", f"line {node.start_mark.line + 1}: expands to more "
                                          f"than {MAX_EXPANDED_VALUES:,} values through YAML "
                                          "aliases; write the values out, or share fewer")
            open_nodes.discard(id(node))
        sizes[id(node)] = total
        return total

    size(root)


def _parse(text: str) -> Any:
    loader = _StrictLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expansion(node)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def read_document(path: Path) -> dict[str, Any]:
    """Parse a YAML file into a mapping, with errors that name the file and line."""
    text = read_text(path)
    name = shorten(str(path), 300)
    try:
        document = _parse(text)
    except ConfigError as exc:
        raise ConfigError("config", f"file {name}, {exc.problem}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}:" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError("config",
                          f"file {name} is not valid YAML:{where} {cut(problem, 200)}") \
            from None
    if document is None:
        raise ConfigError("config", f"file {name} is empty")
    if not isinstance(document, dict):
        raise ConfigError("config", f"file {name} must hold a mapping at the top level, "
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

