"""Typed, validated loading of YAML config files into frozen dataclasses.

One mechanism for every Phoenix config: a schema is a frozen dataclass whose fields carry
type hints (``str``, ``int``, ``float``, ``bool``, ``timedelta``, ``Path``, ``Literal[...]``,
``tuple[str, ...]``, ``X | None`` and nested dataclasses). Loading checks every key and value and
raises :class:`~phoenixcp.errors.ConfigError` with a one-line message that names the key, the bad
value and what is allowed. Every leaf key can be overridden by an environment variable named
``PHOENIX_`` + the dotted key in upper case with dots as underscores (``grpc.listen`` →
``PHOENIX_GRPC_LISTEN``); see :func:`env_name`.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin, get_type_hints

import yaml

from phoenixcp.core.durations import DURATION_HELP, parse_duration
from phoenixcp.errors import ConfigError

__all__ = ["ENV_PREFIX", "FieldInvalid", "env_name", "env_names", "load_mapping", "read_yaml"]

ENV_PREFIX = "PHOENIX_"

T = TypeVar("T")

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


class FieldInvalid(ValueError):
    """Raised by a schema's ``__post_init__`` when ``field`` is unusable; ``message`` says why.

    The loader turns it into a ConfigError that names the full dotted key.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def env_name(key: str) -> str:
    """The environment variable that overrides the dotted config ``key``."""
    return ENV_PREFIX + key.upper().replace(".", "_").replace("-", "_")


def env_names(schema: type[Any], prefix: str = "") -> dict[str, str]:
    """Every leaf key of ``schema`` mapped to the environment variable that overrides it."""
    names: dict[str, str] = {}
    for f, hint in _fields(schema):
        key = f"{prefix}{f.name}"
        inner = _strip_optional(hint)
        if dataclasses.is_dataclass(inner):
            names.update(env_names(typing.cast(type[Any], inner), key + "."))
        else:
            names[key] = env_name(key)
    return names


def read_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping from ``path``; a missing file or bad YAML is a one-line ConfigError."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"config file {path} is not valid YAML{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {path} must hold a mapping of keys to values, not {type(data).__name__}"
        )
    return data


def load_mapping(
    schema: type[T], data: Mapping[str, Any], *, environ: Mapping[str, str] | None = None
) -> T:
    """Build ``schema`` from ``data`` with environment overrides applied; raise ConfigError."""
    merged = _apply_env(schema, dict(data), environ or {})
    return _build(schema, merged, "")


def _apply_env(schema: type[Any], data: dict[str, Any], environ: Mapping[str, str]) -> Any:
    for key, var in env_names(schema).items():
        if var not in environ:
            continue
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        node[leaf] = _EnvValue(environ[var], var)
    return data


class _EnvValue(str):
    """A string that came from an environment variable; errors name the variable."""

    source: str

    def __new__(cls, value: str, source: str) -> _EnvValue:
        obj = super().__new__(cls, value)
        obj.source = source
        return obj


def _fields(schema: type[Any]) -> list[tuple[dataclasses.Field[Any], Any]]:
    hints = get_type_hints(schema)
    return [(f, hints[f.name]) for f in dataclasses.fields(schema) if f.init]


def _strip_optional(hint: Any) -> Any:
    if get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return hint


def _build(schema: type[T], data: Any, prefix: str) -> T:
    where = prefix.rstrip(".") or "the top level"
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"{where}: expected a mapping of keys to values, got {data!r}", key=prefix.rstrip(".")
        )
    fields = _fields(schema)
    known = {f.name for f, _ in fields}
    for key in data:
        if key not in known:
            allowed = ", ".join(sorted(known))
            raise ConfigError(
                f"unknown key {prefix}{key!s}; allowed keys at {where}: {allowed}",
                key=f"{prefix}{key}",
            )
    kwargs: dict[str, Any] = {}
    for f, hint in fields:
        if f.name in data:
            kwargs[f.name] = _convert(hint, data[f.name], f"{prefix}{f.name}")
        elif dataclasses.is_dataclass(_strip_optional(hint)) and f.default is dataclasses.MISSING:
            if f.default_factory is dataclasses.MISSING:
                kwargs[f.name] = _build(_strip_optional(hint), {}, f"{prefix}{f.name}.")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"missing required key {prefix}{f.name}", key=f"{prefix}{f.name}")
    try:
        return schema(**kwargs)
    except FieldInvalid as exc:
        raise ConfigError(f"{prefix}{exc.field}: {exc}", key=f"{prefix}{exc.field}") from None
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}", key=prefix.rstrip(".")) from None


def _convert(hint: Any, value: Any, key: str) -> Any:
    source = f" (from ${value.source})" if isinstance(value, _EnvValue) else ""

    def bad(what: str) -> ConfigError:
        return ConfigError(f"{key}: {value!r}{source} is not {what}", key=key)

    origin = get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(hint) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("", "null", "none")):
            if type(None) in get_args(hint):
                return None
        return _convert(args[0] if len(args) == 1 else hint, value, key)
    if origin is Literal:
        choices = get_args(hint)
        if value not in choices:
            raise bad("allowed; use one of: " + ", ".join(str(c) for c in choices))
        return value
    if dataclasses.is_dataclass(hint):
        return _build(typing.cast(type[Any], hint), value, key + ".")
    if origin is tuple:
        (item,) = get_args(hint)[:1]
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list | tuple):
            raise bad("a list")
        return tuple(
            _convert(item, v.strip() if isinstance(v, str) else v, f"{key}[{i}]")
            for i, v in enumerate(items)
        )
    if hint is dict or origin is dict:
        if not isinstance(value, dict):
            raise bad("a mapping")
        return dict(value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
        raise bad("a boolean; use true or false")
    if hint is int:
        if isinstance(value, bool):
            raise bad("a whole number")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise bad("a whole number") from None
    if hint is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise bad("a number") from None
    if hint is timedelta:
        if isinstance(value, int | float) and not isinstance(value, bool):
            raise bad(DURATION_HELP + "; a bare number has no unit")
        try:
            return parse_duration(str(value))
        except ValueError:
            raise bad(DURATION_HELP) from None
    if hint is Path:
        if not isinstance(value, str) or not value:
            raise bad("a file or directory path")
        return Path(value).expanduser()
    if hint is str:
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise bad("a string")
        return str(value)
    raise TypeError(f"config schema type {hint!r} at {key} is not supported by the loader")
