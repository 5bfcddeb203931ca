"""Checks the algorithms run: hyperparameter ranges at construction, finite loss and gradients at every update."""
from __future__ import annotations

import math
from numbers import Real
from typing import Any, Callable, Optional, Union

import torch as th
from torch import Tensor


class NonFiniteError(RuntimeError):
    """A training update produced a non-finite value; it was raised before the optimizer step, so the parameters
    are those of the last good update.

    :param quantity: what went non-finite ("loss" or "grad_norm")
    :param update: SB3's update counter (``train/n_updates``) when it happened
    :param num_timesteps: env steps collected so far
    """

    def __init__(self, quantity: str, update: int, num_timesteps: int) -> None:
        self.quantity = quantity
        self.update = update
        self.num_timesteps = num_timesteps
        super().__init__(
            f"non-finite {quantity} at update {update} (after {num_timesteps} env steps); the parameters are those "
            "of the previous update: lower the learning rate or clip gradients (max_grad_norm)"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.quantity, self.update, self.num_timesteps)


def check_finite(quantity: str, value: Tensor, update: int, num_timesteps: int) -> None:
    """Raise :class:`NonFiniteError` unless the scalar tensor ``value`` is finite."""
    if not bool(th.isfinite(value)):
        raise NonFiniteError(quantity, update, num_timesteps)


def _is_real(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def check_in_range(
    owner: str, name: str, value: Any, low: float, high: float, low_open: bool = False, high_open: bool = False
) -> None:
    """``ValueError`` (one line, naming ``name`` and the allowed range) unless ``low <= value <= high``; an open end
    excludes its bound."""
    inside = _is_real(value) and not math.isnan(value)
    if inside:
        inside = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not inside:
        lower = f"({low}" if low_open else f"[{low}"
        upper = f"{high})" if high_open else f"{high}]"
        raise ValueError(f"{owner}: {name} must be a number in {lower}, {upper}, got {value!r}")


def check_positive_int(owner: str, name: str, value: Any, allow_none: bool = False) -> None:
    """``ValueError`` unless ``value`` is an int >= 1 (or None where allowed)."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        allowed = "an integer >= 1" + (" or None" if allow_none else "")
        raise ValueError(f"{owner}: {name} must be {allowed}, got {value!r}")


def check_rate(
    owner: str, name: str, value: Union[float, Callable[[float], float], None], allow_none: bool = False
) -> None:
    """``ValueError`` unless ``value`` is a finite number > 0 or a schedule (a callable of the progress remaining)."""
    if (value is None and allow_none) or callable(value):
        return
    if not (_is_real(value) and math.isfinite(value) and value > 0):
        allowed = "a finite number > 0 or a schedule" + (" (or None)" if allow_none else "")
        raise ValueError(f"{owner}: {name} must be {allowed}, got {value!r}")


def check_on_policy_hyperparameters(
    owner: str,
    *,
    learning_rate: Any,
    n_steps: Any,
    gamma: Any,
    gae_lambda: Any,
    ent_coef: Any,
    vf_coef: Any,
    max_grad_norm: Any,
    batch_size: Any = None,
    n_epochs: Any = 1,
    clip_range: Any = 0.2,
    clip_range_vf: Optional[Any] = None,
    target_kl: Optional[Any] = None,
) -> None:
    """Validate what every on-policy algorithm of ours takes; the first bad value raises a one-line ``ValueError``."""
    check_rate(owner, "learning_rate", learning_rate)
    check_positive_int(owner, "n_steps", n_steps)
    check_positive_int(owner, "batch_size", batch_size, allow_none=True)
    check_positive_int(owner, "n_epochs", n_epochs)
    check_in_range(owner, "gamma", gamma, 0.0, 1.0)
    check_in_range(owner, "gae_lambda", gae_lambda, 0.0, 1.0)
    check_in_range(owner, "ent_coef", ent_coef, 0.0, math.inf, high_open=True)
    check_in_range(owner, "vf_coef", vf_coef, 0.0, math.inf, high_open=True)
    check_in_range(owner, "max_grad_norm", max_grad_norm, 0.0, math.inf, low_open=True)
    check_rate(owner, "clip_range", clip_range)
    check_rate(owner, "clip_range_vf", clip_range_vf, allow_none=True)
    check_rate(owner, "target_kl", target_kl, allow_none=True)
