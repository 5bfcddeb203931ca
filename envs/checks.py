"""Checks of user input shared by the envs: each raises one line naming what was wrong and what is allowed."""
from __future__ import annotations

import inspect
from typing import Any, Callable

import numpy as np


def check_choice(name: str, value: Any, allowed: tuple) -> None:
    """Raise ``ValueError`` naming the allowed values unless ``value`` is one of them."""
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; allowed: {', '.join(map(repr, allowed))}")


def check_int(name: str, value: Any, low: int, high: int | None = None) -> int:
    """Return ``value`` as an int, or raise ``ValueError`` unless it is an integer in [low, high]."""
    integer = not isinstance(value, bool) and isinstance(value, (int, np.integer))
    if not integer or value < low or (high is not None and value > high):
        allowed = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be an integer {allowed}, got {value!r}")
    return int(value)


def check_bool(name: str, value: Any) -> bool:
    """``value`` as a bool; ValueError unless it is one (numpy's included)."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be true or false, got {value!r}")
    return bool(value)


def check_fraction(name: str, value: Any) -> float:
    """Return ``value`` as a float, or raise ``ValueError`` unless it is a real number in [0, 1]."""
    real = not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating))
    if not real or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got {value!r}")
    return float(value)


def check_options(owner: str, options: dict[str, Any], accepting: Callable, extra: tuple[str, ...] = ()) -> None:
    """Raise ``ValueError`` listing the allowed keys if ``options`` holds a key that ``accepting`` (a function or
    class; its first positional parameter, the batch size, excluded) does not take, nor ``extra``. (Not
    ``TypeError``: ``gym.make`` appends its kwargs to a ``TypeError``'s message.)"""
    params = list(inspect.signature(accepting).parameters)[1:]
    allowed = tuple(extra) + tuple(params)
    unknown = [key for key in options if key not in allowed]
    if unknown:
        raise ValueError(f"unknown {owner} option{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
                        f"allowed: {', '.join(allowed)}")


def _describe(value: Any) -> str:
    """A one-line description of a rejected action."""
    if isinstance(value, np.ndarray):
        return f"an array of shape {value.shape} and dtype {value.dtype}"
    text = repr(value.item() if isinstance(value, np.generic) else value)
    return text if len(text) <= 60 and "\n" not in text else f"a {type(value).__name__}"


def check_action(action: Any, n_actions: int) -> int:
    """Return one action of Discrete(n_actions) as an int, or raise ``ValueError`` saying what was given.

    Accepted: an integer (Python, numpy or a 0-d integer array) or an integral real number in [0, n_actions)."""
    if isinstance(action, (int, np.integer)) and not isinstance(action, bool) and 0 <= action < n_actions:
        return int(action)
    value = np.asarray(action) if isinstance(action, (np.ndarray, np.generic, float)) else None
    if value is not None and value.shape == () and value.dtype.kind in "iuf" and _in_space(value, n_actions):
        return int(value)
    raise ValueError(f"action must be an integer in [0, {n_actions - 1}] (action space Discrete({n_actions})), "
                     f"got {_describe(action)}")


def _in_space(values: np.ndarray, n_actions: int) -> np.ndarray:
    """Where numeric ``values`` are integers in [0, n_actions) (NaN is not)."""
    return (values >= 0) & (values < n_actions) & (values == np.floor(values))


def check_actions(actions: Any, n_envs: int, n_actions: int) -> np.ndarray:
    """Return a fresh int64 [n_envs] copy of ``actions``, or raise ``ValueError`` unless it holds n_envs integers
    in [0, n_actions) (any shape of that size, e.g. [n_envs, 1]; integral floats pass)."""
    space = f"action space MultiDiscrete([{n_actions}] * {n_envs})"
    values = np.asarray(actions)
    if values.dtype.kind not in "biuf" or values.size != n_envs:
        raise ValueError(f"actions must be {n_envs} integers in [0, {n_actions - 1}] ({space}), got "
                         f"{_describe(values if values.dtype.kind != 'O' else actions)}")
    values = values.reshape(n_envs)
    if values.dtype.kind == "f":
        valid = _in_space(values, n_actions)
        if valid.all():
            return values.astype(np.int64)
    else:
        out = values.astype(np.int64)
        if out.min() >= 0 and out.max() < n_actions:
            return out
        valid = (out >= 0) & (out < n_actions)
    bad = int(np.flatnonzero(~valid)[0])
    raise ValueError(f"actions must be integers in [0, {n_actions - 1}] ({space}), got {values[bad].item()!r} for "
                     f"env {bad}")
