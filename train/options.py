"""Config dataclasses <-> YAML files <-> command-line options, for every trainer.

A trainer's config is a dataclass whose field docstrings are its ``--help`` text. ``add_config_arguments`` gives one
``--field-name`` option per field (``KEY=VALUE ...`` for dict fields, ``--flag/--no-flag`` for bools); every value is
read as YAML (``True`` is a bool, ``1e-4`` a float, ``none`` is None) whether it comes from a file or the command line.
``make_config`` merges defaults, a config file and the options given, checking each value against its field's type.
Old option spellings stay as deprecated aliases that warn once (``Alias``).
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import textwrap
import sys
import typing
from pathlib import Path
from typing import Any, Literal, Optional, Sequence, Union

import yaml

from fwm_rl.train.errors import UserError

PROVENANCE_KEY = "provenance"  # what a run directory's config.yaml records beside the fields (version, commit)


@dataclasses.dataclass(frozen=True)
class Alias:
    """A deprecated spelling ``old`` (a field name or a ``--flag``) of the field ``new``, kept for one release."""

    old: str
    new: str

    def warning(self) -> str:
        return f"{_flag(self.old)} is deprecated and will be removed in the next release; use {_flag(self.new)}"


def _flag(name: str) -> str:
    return "--" + name.lstrip("-").replace("_", "-")


def field_docs(cls: type) -> dict[str, str]:
    """The docstring written under each field of a dataclass, read from its source (as tyro and CleanRL do)."""
    docs = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        body = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0].body
        for node, following in zip(body, body[1:]):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                    and isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant)
                    and isinstance(following.value.value, str)):
                docs[node.target.id] = " ".join(following.value.value.split())
    return docs


# Values ------------------------------------------------------------------------------------------------------------

def parse_value(text: str) -> Any:
    """A command-line value as YAML reads it, plus ``1e-4`` as a float and ``none`` as None."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return _number_or_none(value) if isinstance(value, str) else value


def _number_or_none(text: str) -> Any:
    """``"1e-4"`` -> 1e-4 (PyYAML reads exponents without a dot as strings), ``"none"`` -> None, else ``text``."""
    if text.lower() in ("none", "null"):
        return None
    try:
        return float(text)
    except ValueError:
        return text


def parse_pairs(items: Sequence[str], flag: str) -> dict[str, Any]:
    """``["memory_size=16", "tanh_query=True"]`` -> ``{"memory_size": 16, "tanh_query": True}`` (values as YAML)."""
    pairs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"{flag}: expected KEY=VALUE, got {item!r}")
        pairs[key] = parse_value(value)
    return pairs


def coerce(name: str, value: Any, annotation: Any) -> Any:
    """Check ``value`` against a field's type (ints are accepted for floats, whole floats for ints); ValueError
    saying what is allowed."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is Any:
        return value
    if isinstance(value, str) and annotation is not str:
        value = _number_or_none(value)
    if origin is Union:
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return coerce(name, value, inner)
    if origin is Literal:
        if value not in args:
            raise ValueError(f"{name} must be one of {', '.join(map(str, args))}; got {value!r}")
        return value
    expected = origin or annotation
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise ValueError(f"{name} must be {expected.__name__}, got {value!r}")
    return dict(value) if expected is dict else list(value) if expected is list else value


def coerce_fields(config: Any) -> None:
    """``coerce`` every field of a dataclass instance in place (call from ``__post_init__``)."""
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        setattr(config, f.name, coerce(f.name, getattr(config, f.name), hints[f.name]))


# Files -------------------------------------------------------------------------------------------------------------

def read_yaml(path: Path) -> dict[str, Any]:
    """A YAML mapping from ``path``; UserError if it is missing, a folder, not text or not a mapping."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"config file {path} is a directory; give a .yaml file (or a shipped config name)")
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise UserError(f"config file not found: {path}") from None
    except UnicodeDecodeError as e:
        raise UserError(f"config file {path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    except yaml.YAMLError as e:
        raise UserError(f"config file {path} is not valid YAML: {' '.join(str(e).split())}") from None
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping of field: value")
    data.pop(PROVENANCE_KEY, None)  # a run directory's config.yaml may start a new run
    return data


def write_yaml(path: Path, data: dict[str, Any]) -> None:
    """``data`` as YAML at ``path``, written atomically, keys in the order given."""
    from fwm_rl.train.io import atomic_write

    atomic_write(path, lambda tmp: tmp.write_text(yaml.safe_dump(data, sort_keys=False)))


def find_config(name_or_path: str, shipped: dict[str, Path]) -> Path:
    """A shipped config name (``graphnav-fwm``) or a path to a YAML file."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if path.is_dir():
            raise UserError(f"--config {path} is a directory; give a .yaml file or one of: {', '.join(shipped)}")
        if not path.exists():
            raise UserError(f"config file not found: {path}")
        return path
    if name_or_path not in shipped:
        raise UserError(f"unknown config {name_or_path!r}; shipped configs: {', '.join(shipped) or 'none'} "
                        "(or give a .yaml path)")
    return shipped[name_or_path]


# Configs -----------------------------------------------------------------------------------------------------------

def renamed(values: dict[str, Any], aliases: Sequence[Alias], source: str) -> dict[str, Any]:
    """``values`` with deprecated keys renamed to their fields (warning once per key)."""
    out = dict(values)
    for alias in aliases:
        if alias.old in out:
            warn_deprecated(f"{source}: {alias.warning()}")
            if alias.new in out:
                raise UserError(f"{source}: both {alias.old} and {alias.new} given; keep {alias.new}")
            out[alias.new] = out.pop(alias.old)
    return out


def make_config(cls: type, values: dict[str, Any], source: str, base: Optional[Any] = None,
                merge_dicts: bool = True, aliases: Sequence[Alias] = ()) -> Any:
    """``base`` (or the defaults of ``cls``) updated with ``values``; dict fields are merged key by key unless
    ``merge_dicts`` is off (a config file's dict replaces the default). A bad key or value is a UserError that
    names ``source``."""
    values = renamed(values, aliases, source)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise UserError(f"{source}: unknown config key {', '.join(map(repr, unknown))}; known keys: "
                        f"{', '.join(sorted(known))}")
    merged = dataclasses.asdict(base if base is not None else cls())
    for key, value in values.items():
        if merge_dicts and isinstance(merged[key], dict) and isinstance(value, dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    try:
        return cls(**merged)
    except (TypeError, ValueError) as e:  # the dataclass's own checks of user-given values
        raise UserError(f"{source}: {e}") from None


def load_config(cls: type, path: Path, aliases: Sequence[Alias] = ()) -> Any:
    """The config of a YAML file (its dicts replace the defaults' dicts)."""
    return make_config(cls, read_yaml(path), source=str(path), merge_dicts=False, aliases=aliases)


def changed_fields(a: Any, b: Any) -> list[str]:
    """Names of the fields whose values differ between two configs of one class."""
    da, db = dataclasses.asdict(a), dataclasses.asdict(b)
    return [name for name in da if da[name] != db[name]]


# Command line ------------------------------------------------------------------------------------------------------

def warn_deprecated(text: str) -> None:
    """One warning line on stderr (the command line's deprecation notices)."""
    print(f"fwm-rl: warning: {text}", file=sys.stderr)


class _DeprecatedAlias(argparse.Action):
    """An old option spelling: stores into the new field and prints the deprecation warning."""

    def __init__(self, *args: Any, alias: Alias, **kwargs: Any) -> None:
        self.alias = alias
        super().__init__(*args, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        warn_deprecated(self.alias.warning())
        setattr(namespace, self.dest, True if self.nargs == 0 else values)


def add_config_arguments(parser: argparse.ArgumentParser, cls: type, title: str,
                         aliases: Sequence[Alias] = ()) -> None:
    """One ``--field-name`` option per field of ``cls``, its help the field's docstring and default; deprecated
    aliases are accepted (hidden from ``--help``) and warn."""
    group = parser.add_argument_group(title)
    docs, defaults = field_docs(cls), dataclasses.asdict(cls())
    hints = typing.get_type_hints(cls)
    old_names = {alias.new: [a.old for a in aliases if a.new == alias.new] for alias in aliases}
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        allowed = choices(f, hint)
        help_text = (f"{docs.get(f.name, '')}{f' Choices: {allowed}.' if allowed else ''} "
                     f"[default: {defaults[f.name]}]").replace("%", "%%")
        common: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS}
        if isinstance(defaults[f.name], dict):
            kind: dict[str, Any] = {"nargs": "+", "metavar": "KEY=VALUE"}
        elif hint is bool:
            kind = {"action": argparse.BooleanOptionalAction}
        else:
            kind = {"type": parse_value, "metavar": f.name.upper()}
        group.add_argument(_flag(f.name), help=help_text, **common, **kind)
        for old in old_names.get(f.name, ()):
            old_kind = {"nargs": 0} if hint is bool else kind
            group.add_argument(_flag(old), help=argparse.SUPPRESS, action=_DeprecatedAlias,
                               alias=Alias(old, f.name), **common, **old_kind)


def choices(f: dataclasses.Field, hint: Any) -> str:
    """The allowed values of a field, for --help: a Literal's values, or ``metadata["choices"]()`` (a callable, so
    that registries such as fwm_rl.CORE_CLASSES are read when the parser is built)."""
    if "choices" in f.metadata:
        return ", ".join(f.metadata["choices"]())
    literal = next((h for h in (hint, *typing.get_args(hint)) if typing.get_origin(h) is Literal), None)
    return ", ".join(map(str, typing.get_args(literal))) if literal is not None else ""


def values_from_args(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The config fields given on the command line, dict fields parsed from KEY=VALUE pairs."""
    values = {}
    for f in dataclasses.fields(cls):
        if hasattr(args, f.name):
            value = getattr(args, f.name)
            if isinstance(value, list) and isinstance(getattr(cls(), f.name), dict):
                value = parse_pairs(value, _flag(f.name))
            values[f.name] = value
    return values
