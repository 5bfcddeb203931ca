"""The recurrent state of a core actor-critic: the actor core's state and the critic core's, each the core's own tuple
(batch on dim 0, e.g. ``(h [B, H], c [B, H], F [B, d, d, d])`` for "fwm")."""
from __future__ import annotations

from typing import NamedTuple, Union

from torch import Tensor

from fwm_rl import State

IndexLike = Union[Tensor, slice, list[int]]


class ActorCriticStates(NamedTuple):
    """States of the actor core and of the critic core (``()`` when the critic has no core of its own)."""

    actor: State
    critic: State


def select_rows(states: ActorCriticStates, index: IndexLike) -> ActorCriticStates:
    """The rows ``index`` of every tensor of ``states``."""
    return ActorCriticStates(tuple(s[index] for s in states.actor), tuple(s[index] for s in states.critic))
