"""Config machinery: YAML files + dotted ``key=value`` overrides → validated frozen dataclasses.

Every error names the offending key (``sources.1.kind``) and, for a choice, the allowed
values; an unknown key suggests the closest known one. Values given on the command line are
parsed as YAML scalars (``seq_len=4096`` is an int, ``dedup.near=false`` a bool).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from ftscale.errors import ConfigError

def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin is list:
        return f"list of {_type_name(get_args(tp)[0])}"
    if origin is dict:
        return "mapping"
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, key: str) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(value, a, key)
            except ConfigError as e:
                errors.append((a, str(e)))
        # the alternative of the value's own shape (a list, a mapping) knows what is wrong inside it
        shaped = [msg for a, msg in errors if _same_shape(value, a)]
        if len(errors) == 1 or len(shaped) == 1:
            raise ConfigError((shaped or [errors[0][1]])[0])
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{key}: {value!r} is not allowed; choose one of {', '.join(map(str, allowed))}")
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_convert(v, get_args(tp)[0], f"{key}.{i}") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        kt, vt = get_args(tp)
        return {_convert(k, kt, key): _convert(v, vt, f"{key}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return build(tp, value, key)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, str):
                parsed = parse_count(value)
                if parsed is not None:
                    return parsed
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {tp!r} at {key}")  # a schema bug, not user error


def _same_shape(value: Any, tp: Any) -> bool:
    if isinstance(value, (list, tuple)):
        return get_origin(tp) is list
    if isinstance(value, dict):
        return get_origin(tp) is dict or dataclasses.is_dataclass(tp)
    return False


def parse_count(text: str) -> int | None:
    """'10M' → 10_000_000, '2k' → 2000, '1.5B' → 1_500_000_000; None when not a count
    (also 'inf', 'nan' and the like)."""
    text = text.strip().replace("_", "")
    scale = {"k": 10**3, "m": 10**6, "b": 10**9, "g": 10**9, "t": 10**12}
    try:
        if text and text[-1].lower() in scale:
            return int(float(text[:-1]) * scale[text[-1].lower()])
        return int(text)
    except (ValueError, OverflowError):  # int(float("inf")) overflows, int(float("nan")) is a ValueError
        return None


def build(cls: type, data: Any, key: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping, validating every field."""
    where = key or "config"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in data if k not in fields]
    if unknown:
        k = unknown[0]
        close = difflib.get_close_matches(str(k), fields, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(fields)}"
        raise ConfigError(f"{_join(key, k)}: unknown key{hint}")
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _convert(data[name], hints[name], _join(key, name))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{_join(key, name)}: required key is missing")
    obj = cls(**kwargs)
    check = getattr(obj, "check", None)
    if check is not None:
        check(key)
    return obj


def _join(prefix: str, name: Any) -> str:
    return f"{prefix}.{name}" if prefix else str(name)


def plain_name(name: Any) -> bool:
    """Whether ``name`` can name a file or directory inside another: one path component, not
    hidden, not ``.``/``..``, no separator or NUL (run names, source names)."""
    return (isinstance(name, str) and bool(name) and not name.startswith(".")
            and not any(c in name for c in "/\\\0"))


PLAIN_NAME_RULE = "a plain name: not empty, no '/' or '\\', not starting with '.'"


def require(obj: Any, key: str, name: str, ok: bool, rule: str) -> None:
    """The ConfigError for field ``name`` of ``obj`` (at ``key``) when ``ok`` is false."""
    if not ok:
        raise ConfigError(f"{_join(key, name)}: must be {rule}, got {getattr(obj, name)!r}")


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``a.b.0.c=value`` overrides (value parsed as YAML) to a nested dict/list."""
    import yaml

    for item in overrides:
        path, sep, raw = item.partition("=")
        if not sep or not path:
            raise ConfigError(f"override {item!r}: expected KEY=VALUE, for example seq_len=4096")
        value = yaml.safe_load(raw) if raw.strip() else ""
        node: Any = data
        parts = path.split(".")
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError(f"override {path}: {part!r} is not an index of the {len(node)}-item list")
                if last:
                    node[int(part)] = value
                else:
                    node = node[int(part)]
            else:
                if last:
                    node[part] = value
                else:
                    node = node.setdefault(part, {})
                    if not isinstance(node, (dict, list)):
                        raise ConfigError(f"override {path}: {part!r} is not a section")
    return data


def load_yaml(path: str | Path) -> dict:
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not UTF-8 text (byte {e.start}); save the config as UTF-8") from e
    except OSError as e:
        raise ConfigError(f"{p}: cannot be read: {e.strerror or e}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {' '.join(str(e).split())}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a mapping of keys")
    return data


def to_dict(obj: Any) -> Any:
    """Plain data (for manifests and fingerprints)."""
    return dataclasses.asdict(obj)


def load_config(cls: type, path: str | Path, overrides: list[str] | None = None) -> Any:
    """Load ``path`` (YAML), apply overrides, validate into ``cls``. Relative paths inside the
    file stay relative to the current directory (the launch directory), as in the README."""
    data = apply_overrides(load_yaml(path), list(overrides or []))
    return build(cls, data)
