"""Typed configuration from loose input (plan files, `--option KEY=VALUE`): unknown keys and wrong types are errors."""
from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, TypeVar

from .errors import ConfigError

C = TypeVar("C")
_TRUE, _FALSE = {"true", "yes", "1", "on"}, {"false", "no", "0", "off"}


def _coerce(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if origin is typing.Literal:
        if isinstance(value, str) and value not in args:  # the command line's "4" for Literal[4, 8]
            value = next((a for a in args if str(a).lower() == value.strip().lower()), value)
        if value not in args:
            raise ConfigError(f"{where} must be one of {', '.join(map(str, args))}, got {value!r}")
        return value
    if origin in (tuple, list):
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        inner = args[0] if args else str
        items = [_coerce(v.strip() if isinstance(v, str) else v, inner, where) for v in items if v != ""]
        return tuple(items) if origin is tuple else items
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
        raise ConfigError(f"{where} must be true or false, got {value!r}")
    if hint in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        try:
            number = hint(value)
        except (TypeError, ValueError, OverflowError):  # int(float("inf")) overflows
            raise ConfigError(f"{where} must be {'an integer' if hint is int else 'a number'}, got {value!r}") from None
        if hint is int and isinstance(value, float) and value != number:
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        return number
    if hint is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{where} must be text, got {value!r}")
        return str(value)
    if dataclasses.is_dataclass(hint):
        return build(hint, value, where)
    return value


def build(cls: type[C], data: dict[str, Any] | None, where: str) -> C:
    """Instantiate dataclass `cls` from a mapping, checking every key and coercing every value to its declared type."""
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping of options, got {data!r}")
    bad = [key for key in data if not isinstance(key, str)]
    if bad:
        raise ConfigError(f"{where}: option names must be text, got {bad[0]!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise ConfigError(f"{where}: unknown option(s) {', '.join(unknown)}; allowed: {', '.join(sorted(fields))}")
    values = {key: _coerce(value, hints[key], f"{where}.{key}") for key, value in data.items()}
    try:
        return cls(**values)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def to_dict(config: Any) -> dict[str, Any]:
    def plain(value):
        if isinstance(value, tuple):
            return [plain(v) for v in value]
        return value

    return {f.name: plain(getattr(config, f.name)) for f in dataclasses.fields(config)}


def parse_options(pairs: list[str] | None) -> dict[str, str]:
    options: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"option {pair!r} must look like KEY=VALUE")
        options[key.strip()] = value.strip()
    return options


def _field_notes(cls: type) -> dict[str, str]:
    """The comment beside each field of `cls`'s own source, or the comment lines just above it."""
    import inspect
    import io
    import tokenize

    try:
        source = inspect.getsource(cls)
        comments = {t.start[0]: t.string.lstrip("# ").strip()
                    for t in tokenize.generate_tokens(io.StringIO(source).readline) if t.type == tokenize.COMMENT}
    except (OSError, TypeError, tokenize.TokenError):
        return {}
    lines = source.splitlines()
    notes = {}
    for number, line in enumerate(lines, 1):
        name = line.strip().partition(":")[0]
        if not name.isidentifier() or line.strip().startswith(("def ", "class ", "#", "@")):
            continue
        above, block = number - 1, []
        while above in comments and lines[above - 1].strip().startswith("#"):
            block.insert(0, comments[above])
            above -= 1
        notes[name] = comments.get(number) or " ".join(block)
    return notes


def describe_options(cls: type) -> list[tuple[str, str, str, str]]:
    """(name, type, default, note) per option of a config dataclass, the note being the comment written beside the
    field or just above it (in whichever class of its hierarchy declares it): the source stays the one place an
    option is explained."""
    notes: dict[str, str] = {}
    for klass in reversed(cls.__mro__[:-1]):  # a subclass's own comment wins
        notes.update({k: v for k, v in _field_notes(klass).items() if v or k not in notes})
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        shown = ('""' if default == "" else "none" if default in (None, ())
                 else str(default).lower() if isinstance(default, bool) else str(default))
        out.append((f.name, _type_name(hints[f.name]), shown, notes.get(f.name, "")))
    return out


def _type_name(hint: Any) -> str:
    """A type as a person writes it on the command line: a|b|c for a choice, "X or none" for an optional."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Literal:
        return "|".join(map(str, args))
    if origin in (typing.Union, types.UnionType):
        named = [_type_name(a) for a in args if a is not type(None)]
        return " or ".join(named) + (" or none" if type(None) in args else "")
    if origin in (tuple, list):
        return f"list of {_type_name(args[0]) if args else 'text'}"
    names = {str: "text", int: "integer", float: "number", bool: "true|false"}
    return names.get(hint, getattr(hint, "__name__", str(hint)))
