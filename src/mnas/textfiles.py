"""Text files read as input (search configs, space files, architecture files): the one rule.

A file is UTF-8 text; YAML is read with the safe loader and JSON as plain data; a mapping that
names a key twice is refused (YAML and JSON parsers otherwise keep the last value silently, so
`epochs: 1` followed by `epochs: 50` would train 50 epochs without a word). Every problem is one
`UserError` line naming the file.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from mnas.errors import UserError

__all__ = ["load_json", "load_yaml", "read_text"]


def read_text(path: str | Path, what: str = "file") -> str:
    """The file's text; not UTF-8, unreadable or an over-long name is one line."""
    path = Path(path)
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{what} {path} is not UTF-8 text (byte {exc.start}: {exc.reason}); save it as UTF-8") from None
    except OSError as exc:
        raise UserError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that refuses a mapping naming a key twice (merge keys `<<` aside)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                twice = key in seen
                seen.add(key)
            except TypeError:  # an unhashable key: the safe constructor refuses it itself
                continue
            if twice:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice in one mapping; keep one", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


# YAML 1.1 (PyYAML) reads 1e-3 and -1e308 as text; YAML 1.2 and JSON read them as numbers, and so does mnas.
_UniqueKeyLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))


#: How deep mnas's text files may nest lists and mappings (a config needs 4, an architecture 3): the
#: parsers recurse once per level, so a file nested 100,000 deep would end in a RecursionError.
MAX_DEPTH = 32
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_FEW = "mnas's files need a few"  # the hint of a file nested too deep, unless the caller knows better


def _too_deep(what: str, limit: int, hint: str) -> UserError:
    return UserError(f"{what} nests lists and mappings more than {limit} levels deep ({hint}); check the file or the text")


def check_json_depth(text: str, what: str, limit: int = MAX_DEPTH, hint: str = _FEW) -> None:
    """Refuse JSON nested deeper than `limit` arrays/objects before it is parsed (brackets inside
    strings do not count); what is not JSON is left to the parser to report."""
    depth = 0
    for ch in _NOT_BRACKET.sub("", _JSON_STRING.sub("", text)):
        depth += 1 if ch in "[{" else -1
        if depth > limit:
            raise _too_deep(what, limit, hint)


def _check_yaml_depth(text: str, source: str) -> None:
    """The same bound for YAML, from the parser's events (a loop, not a recursion); a syntax error
    is left to the loader, which says where it is."""
    depth = 0
    try:
        for event in yaml.parse(text, Loader=_UniqueKeyLoader):
            if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                depth += 1
                if depth > MAX_DEPTH:
                    raise _too_deep(source, MAX_DEPTH, _FEW)
            elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                depth -= 1
    except yaml.YAMLError:
        return


def load_yaml(text: str, source: str) -> Any:
    """YAML (JSON included) as plain data, duplicate keys refused, nesting bounded; problems name
    `source`."""
    _check_yaml_depth(text, source)
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass: data only
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "not valid YAML"
        raise UserError(f"{source}: YAML syntax error{where}: {problem}") from None


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"key {key!r} appears twice in one object; keep one")
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows; give a finite number")


def load_json(text: str, source: str, *, hint: str = _FEW) -> Any:
    """JSON as plain data, duplicate keys refused, nesting bounded; problems name `source`. `hint`:
    how deep such a file needs to go, said when one nests too deep."""
    check_json_depth(text, source, hint=hint)
    try:
        return json.loads(text, object_pairs_hook=_unique_pairs, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise UserError(f"malformed {source}: {exc}") from None
    except ValueError as exc:
        raise UserError(f"{source}: {exc}") from None
