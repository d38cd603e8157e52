"""Reading YAML config files safely, with bounds, and one-line errors.

``yaml.safe_load`` never runs code, but it still lets a small file cost unbounded time and
memory: a 376-byte "billion laughs" file of nested aliases composes quickly (the aliases share
nodes) yet expands to hundreds of millions of elements the moment anything walks it (a config
fingerprint, ``repr``, ``json.dumps``); a 100k-deep ``[[[...]]]`` recurses through the composer;
a binary file gives a scanner error deep inside PyYAML. So every YAML value raymeta reads goes
through ``BoundedLoader``: the file is at most ``MAX_BYTES``, valid UTF-8 text, nested at most
``MAX_DEPTH`` levels, at most ``MAX_NODES`` nodes *after* alias expansion (an alias counts as
the whole subtree it names), no recursive aliases and no duplicate keys. Anything else is a
``ConfigError`` naming the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, Node

from raymeta.errors import ConfigError

MAX_BYTES = 1 << 20
MAX_DEPTH = 64
# A config is a mapping of flags (a sweep config lists tasks and strategies): far below this.
# The bound is also a time bound: PyYAML composes ~25k nodes/s on a slow core.
MAX_NODES = 20_000


class _Refused(yaml.YAMLError):
    """A bound was exceeded (turned into a ConfigError by the callers)."""


class BoundedLoader(yaml.SafeLoader):
    """``SafeLoader`` that bounds nesting depth and the alias-expanded node count."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._total = 0
        self._sizes: dict[int, int] = {}  # id(node) -> node count of its expanded subtree

    def _count(self, n: int) -> None:
        self._total += n
        if self._total > MAX_NODES:
            raise _Refused(
                f"holds more than {MAX_NODES} values (an alias counts as every value it repeats)"
            )

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        if self.check_event(yaml.AliasEvent):
            node = super().compose_node(parent, index)
            size = self._sizes.get(id(node))
            if size is None:
                raise _Refused("has a recursive alias (an anchor used inside itself)")
            self._count(size)
            return node
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise _Refused(f"is nested more than {MAX_DEPTH} levels deep")
        before = self._total
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        self._count(1)
        if node is not None:
            self._sizes[id(node)] = self._total - before
        return node

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                dup = key in seen
                seen.add(key)
            except TypeError:
                raise ConstructorError(
                    None, None, "found an unhashable mapping key", key_node.start_mark
                ) from None
            if dup:
                raise _Refused(f"repeats the key {key!r}")
        return super().construct_mapping(node, deep=deep)


def loads(text: str, where: str) -> Any:
    """Parse one YAML document from ``text`` with the bounds above; ``where`` names the source."""
    if len(text) > MAX_BYTES:
        raise ConfigError(f"{where} is larger than {MAX_BYTES >> 20} MiB")
    try:
        return yaml.load(text, Loader=BoundedLoader)  # noqa: S506 - BoundedLoader is a SafeLoader
    except _Refused as exc:
        raise ConfigError(f"{where} {exc}") from None
    except RecursionError:
        raise ConfigError(f"{where} is nested too deeply") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or getattr(exc, "context", None)
        where_line = f" (line {mark.line + 1})" if mark is not None else ""
        why = f": {' '.join(str(problem).split())}" if problem else ""
        raise ConfigError(f"{where} is not valid YAML{where_line}{why}") from None


def load_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """Read a config file: a mapping with string keys (``{}`` for an empty file)."""
    p = Path(path)
    try:
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist or is not a file")
        with p.open("rb") as f:
            raw = f.read(MAX_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {p}: {exc.strerror or exc}") from None
    if len(raw) > MAX_BYTES:
        raise ConfigError(f"config file {p} is larger than {MAX_BYTES >> 20} MiB")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"config file {p} is not UTF-8 text (a binary file?)") from None
    if "\x00" in text:
        raise ConfigError(f"config file {p} is not UTF-8 text (it holds NUL bytes)")
    data = loads(text, f"config file {p}")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping of option: value")
    for key in data:
        if not isinstance(key, str):
            raise ConfigError(f"config file {p}: option names must be strings, got {key!r}")
    return data
