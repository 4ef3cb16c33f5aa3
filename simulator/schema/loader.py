"""YAML -> plain values that remember their line numbers, safely.

Hostile documents are refused with one located line each: alias expansion beyond
``MAX_NODES`` ("billion laughs"), nesting beyond ``MAX_DEPTH``, tags other than plain
mappings, sequences and scalars, merge keys, and duplicate keys.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from simulator.files import MAX_CONFIG_BYTES, FileReadError, read_regular
from simulator.schema.errors import ConfigError, ConfigIssue

MAX_NODES = 200_000
MAX_DEPTH = 64
_PLAIN_TAGS = ("tag:yaml.org,2002:map", "tag:yaml.org,2002:seq")


class LocMap(dict[Any, Any]):
    """A YAML mapping that remembers the line of itself and of each key."""

    line: int
    lines: dict[Any, int]

    @classmethod
    def at(cls, line: int, items: dict[Any, tuple[Any, int]] | None = None) -> LocMap:
        """A mapping written at ``line``, from key -> (value, line of the key)."""
        out = cls({k: v for k, (v, _) in (items or {}).items()})
        out.line, out.lines = line, {k: kl for k, (_, kl) in (items or {}).items()}
        return out

    def only(self, keys: tuple[str, ...]) -> LocMap:
        """The entries whose key is in ``keys``, lines kept."""
        return LocMap.at(self.line, {k: (v, self.lines[k]) for k, v in self.items()
                                     if k in keys})

    def merged_over(self, base: LocMap) -> LocMap:
        """This mapping deep-merged over ``base``; keys keep the line where their value was
        written, the result the line of this mapping."""
        out = LocMap.at(self.line)
        for src in (base, self):
            for key, value in src.items():
                if isinstance(value, LocMap) and isinstance(out.get(key), LocMap):
                    value = value.merged_over(out[key])
                out[key] = value
                out.lines[key] = src.lines[key]
        return out


class LocList(list[Any]):
    """A YAML sequence that remembers the line of itself and of each item."""

    line: int
    lines: list[int]


class _FatalError(Exception):
    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


def _line(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1


class _Composer:
    """Turns a node tree into LocMap/LocList/scalars, counting nodes after alias expansion."""

    def __init__(self, constructor: yaml.SafeLoader, source: str) -> None:
        self.constructor = constructor
        self.source = source
        self.nodes = 0
        self.issues: list[ConfigIssue] = []

    def convert(self, node: yaml.Node, depth: int) -> Any:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise _FatalError(_line(node), f"document too large: more than {MAX_NODES} nodes "
                                           "after alias expansion")
        if depth > MAX_DEPTH:
            raise _FatalError(_line(node), f"nesting deeper than {MAX_DEPTH} levels")
        if isinstance(node, yaml.MappingNode | yaml.SequenceNode) \
                and node.tag not in _PLAIN_TAGS:
            raise _FatalError(_line(node), f"unsupported YAML tag {node.tag!r}")
        if isinstance(node, yaml.MappingNode):
            return self.mapping(node, depth)
        if isinstance(node, yaml.SequenceNode):
            seq = LocList()
            seq.line, seq.lines = _line(node), []
            for item in node.value:
                seq.append(self.convert(item, depth + 1))
                seq.lines.append(_line(item))
            return seq
        return self.constructor.construct_object(node, deep=True)

    def mapping(self, node: yaml.MappingNode, depth: int) -> LocMap:
        out = LocMap.at(_line(node))
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise _FatalError(_line(key_node), "YAML merge keys (<<) are not supported")
            key = self.convert(key_node, depth + 1)
            if not isinstance(key, str | int | float | bool) and key is not None:
                self.issues.append(ConfigIssue(_line(key_node), "",
                                               "mapping keys must be scalars", self.source))
                continue
            if key in out:
                self.issues.append(ConfigIssue(
                    _line(key_node), str(key), f"duplicate key (first at line {out.lines[key]})",
                    self.source))
                continue
            out[key] = self.convert(value_node, depth + 1)
            out.lines[key] = _line(key_node)
        return out


def _check_shape(text: str) -> None:
    """Reject deep nesting and too many nodes before composing (see ``_scan``): with libyaml's
    parser where PyYAML has it, ten times faster than the pure-Python one; with the latter
    where libyaml refuses the text (it stops at its own nesting limit, say), so that the
    limits are reported as such."""
    fast = getattr(yaml, "CSafeLoader", None)
    if fast is not None:
        try:
            _scan(text, fast)
            return
        except yaml.YAMLError:
            pass
    try:
        _scan(text, yaml.SafeLoader)
    except yaml.YAMLError:
        return  # a syntax error: the composer reports it, with its line


def _scan(text: str, loader: Any) -> None:
    """Reject deep nesting and too many nodes from the event stream, as it is parsed: a huge
    document stops at its ``MAX_NODES``-th node (aliases are counted as they expand, later,
    by the composer)."""
    depth = nodes = 0
    for event in yaml.parse(text, Loader=loader):
        if isinstance(event, yaml.MappingStartEvent | yaml.SequenceStartEvent
                      | yaml.ScalarEvent):
            nodes += 1
            if nodes > MAX_NODES:
                raise _FatalError(_event_line(event),
                                  f"document too large: more than {MAX_NODES} nodes")
            if not isinstance(event, yaml.ScalarEvent):
                depth += 1
                if depth > MAX_DEPTH:
                    raise _FatalError(_event_line(event),
                                      f"nesting deeper than {MAX_DEPTH} levels")
        elif isinstance(event, yaml.MappingEndEvent | yaml.SequenceEndEvent):
            depth -= 1


def _event_line(event: yaml.Event) -> int:
    mark = event.start_mark
    return int(mark.line) + 1 if mark is not None else 1


def _decode(data: bytes | str, source: str) -> str:
    if isinstance(data, str):
        return data
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        bad = f"not valid UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start})"
        raise ConfigError([ConfigIssue(line, "", bad, source)]) from None


def parse_yaml(data: bytes | str, source: str) -> Any:
    """Parse one YAML document into plain values that remember their line numbers."""
    text = _decode(data, source)
    try:
        _check_shape(text)
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            if node is None:
                raise ConfigError([ConfigIssue(1, "", "empty document: expected a mapping with "
                                               "a 'runs' list", source)])
            composer = _Composer(loader, source)
            value = composer.convert(node, 0)
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = int(mark.line) + 1 if mark is not None else 1
        problem = exc.problem or exc.context or "invalid YAML"
        issue = ConfigIssue(line, "", f"YAML syntax error: {problem}", source)
        raise ConfigError([issue]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([ConfigIssue(1, "", f"YAML error: {exc}", source)]) from None
    except _FatalError as exc:
        raise ConfigError([ConfigIssue(exc.line, "", exc.message, source)]) from None
    except RecursionError:
        raise ConfigError([ConfigIssue(1, "", "nesting too deep", source)]) from None
    if composer.issues:
        raise ConfigError(composer.issues)
    return value


def read_yaml_file(path: str | Path) -> Any:
    """Read and parse a YAML file (a regular file of at most ``MAX_CONFIG_BYTES``); a file that
    cannot be read is one ConfigError line."""
    p = Path(path)
    try:
        data = read_regular(p, MAX_CONFIG_BYTES)
    except FileReadError as exc:
        raise ConfigError([ConfigIssue(0, "", f"cannot read: {exc.reason}", str(p))]) from None
    return parse_yaml(data, str(p))
