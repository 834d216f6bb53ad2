"""Configuration: frozen dataclasses that round-trip to YAML and hash.

Every stage defines its own frozen dataclass deriving from :class:`Config`
in its own module. The hash of a config (with the hashes of its inputs) keys
the stage's cache, and the config is written beside every output.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

C = TypeVar("C", bound="Config")

SEED = 0
"""The project's one default seed. Stages take it from their config."""


def _plain(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if dataclasses.is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    return value


def choices(hint: Any) -> tuple[Any, ...]:
    """The values a ``typing.Literal`` annotation admits, in their declared order.

    >>> choices(Literal["a", "b"])
    ('a', 'b')
    """
    return typing.get_args(hint) if typing.get_origin(hint) is Literal else ()


def _value_problem(hint: Any, value: Any) -> str:
    """Why ``value`` does not fit the annotation ``hint`` ("" when it does, or when the hint is not checked).

    Checked: ``Literal`` choices, ``str``, ``bool``, ``int`` (not a bool), ``float`` (an int passes; not
    a bool) and unions of these with ``None``. Containers and paths are left to the class's own checks.
    """
    origin = typing.get_origin(hint)
    if origin is Literal:
        allowed = typing.get_args(hint)
        ok = any(value == c and type(value) is type(c) for c in allowed)
        return "" if ok else f"must be one of {list(allowed)}, got {value!r}"
    if origin in (typing.Union, types.UnionType):
        members = typing.get_args(hint)
        if value is None and type(None) in members:
            return ""
        found = [_value_problem(m, value) for m in members if m is not type(None)]
        return "" if "" in found else found[0]
    checks = {
        str: (lambda v: isinstance(v, str), "must be text"),
        bool: (lambda v: isinstance(v, bool), "must be true or false"),
        int: (lambda v: isinstance(v, int) and not isinstance(v, bool), "must be a whole number"),
        float: (lambda v: isinstance(v, int | float) and not isinstance(v, bool), "must be a number"),
    }
    if hint in checks:
        fits, words = checks[hint]
        return "" if fits(value) else f"{words}, got {value!r}"
    return ""


def field_problems(config: Any) -> list[str]:
    """Every field of a config dataclass whose value does not fit its annotation, as ``"<field> <problem>"``.

    Parameters
    ----------
    config : dataclass instance
        Its annotations are resolved with :func:`typing.get_type_hints`.

    Returns
    -------
    list of str
        One line per bad field, in declaration order (empty when all fit); e.g.
        ``"link must be one of ['auto', 'copy'], got 'move'"``.
    """
    hints = typing.get_type_hints(type(config))
    out = []
    for field in dataclasses.fields(config):
        problem = _value_problem(hints[field.name], getattr(config, field.name))
        if problem:
            out.append(f"{field.name} {problem}")
    return out


def problems_message(problems: list[str], what: str) -> str:
    """One error message for every problem: the problem itself when there is one, else a numbered list."""
    if len(problems) == 1:
        return problems[0]
    lines = "".join(f"\n  {k}. {p}" for k, p in enumerate(problems, 1))
    return f"{what} has {len(problems)} problems:{lines}"


@dataclasses.dataclass(frozen=True)
class Config:
    """Base class: plain-value fields only (str, int, float, bool, None, tuples, Paths)."""

    def to_dict(self) -> dict[str, Any]:
        return _plain(self)

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any]) -> C:
        hints = typing.get_type_hints(cls)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown field(s) {sorted(unknown)}; known: {sorted(names)}")
        kwargs = {}
        for key, value in data.items():
            hint = hints[key]
            if isinstance(value, list):
                value = tuple(tuple(v) if isinstance(v, list) else v for v in value)
            elif hint is Path or hint == (Path | None):
                value = None if value is None else Path(value)
            kwargs[key] = value
        return cls(**kwargs)

    def replace(self: C, **changes: Any) -> C:
        return dataclasses.replace(self, **changes)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=True)

    @classmethod
    def from_yaml(cls: type[C], text_or_path: str | Path) -> C:
        text = Path(text_or_path).read_text() if isinstance(text_or_path, Path) else text_or_path
        return cls.from_dict(yaml.safe_load(text) or {})

    def hash(self) -> str:
        """Short, stable hash of the configuration (16 hex digits of SHA-256)."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]
