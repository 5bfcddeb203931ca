"""Recurrent state of an actor-critic: native core states, and their sb3-contrib "LSTM-shaped" packing.

Our algorithms carry each core's own state tuple (batch on dim 0, e.g. ``(h [B, H], c [B, H], F [B, d, d, d])``) in
an :class:`~sb3_contrib.common.recurrent.type_aliases.RNNStates` ``(pi, vf)``. sb3-contrib's ``RecurrentPPO`` instead
assumes an ``nn.LSTM`` state: two tensors ``[n_layers=1, B, W]``. :class:`PackedStateLayout` converts between the two
for any core, from its ``state_spec`` alone.
"""
from __future__ import annotations

import math
from typing import Union

import torch
from sb3_contrib.common.recurrent.type_aliases import RNNStates
from torch import Tensor

from fwm_rl import State, StateSpec

PackedState = tuple[Tensor, Tensor]
IndexLike = Union[Tensor, slice, list[int]]


class PackedStateLayout:
    """A core state flattened per row and split across two ``[1, B, W]`` tensors, as sb3-contrib stores LSTM states.

    Row ``b`` of ``cat(s0[0], s1[0], dim=1)`` is the concatenation of every state tensor's row ``b`` flattened, in
    ``state_spec`` order, zero-padded to ``2 W``. For the "lstm" core this is exactly ``(h, c)``. It exposes what
    sb3-contrib reads from ``policy.lstm_actor`` to size its buffers: ``num_layers`` (1), ``hidden_size`` (W) and
    ``input_size``.

    :param state_spec: the core's ``state_spec``
    :param input_size: the core's input size
    """

    num_layers = 1

    def __init__(self, state_spec: tuple[StateSpec, ...], input_size: int) -> None:
        self.shapes = [tuple(spec.shape) for spec in state_spec]
        self.sizes = [math.prod(shape) for shape in self.shapes]
        self.input_size = input_size
        # W >= 1 even for a stateless core, so that sb3-contrib's buffers and predict() have something to hold.
        self.hidden_size = max(1, math.ceil(sum(self.sizes) / 2))
        self.padding = 2 * self.hidden_size - sum(self.sizes)

    def pack(self, state: State, batch_size: int, device: torch.device) -> PackedState:
        """Native ``state`` (rows ``[batch_size, ...]``) -> ``(s0, s1)``, each ``[1, batch_size, W]``."""
        parts = [s.reshape(batch_size, -1) for s in state]
        dtype = parts[0].dtype if parts else torch.float32
        parts.append(torch.zeros(batch_size, self.padding, device=device, dtype=dtype))
        flat = torch.cat(parts, dim=1)  # [B, 2W]
        return flat[:, : self.hidden_size].unsqueeze(0), flat[:, self.hidden_size :].unsqueeze(0)

    def unpack(self, packed: PackedState) -> State:
        """``(s0, s1)``, each ``[1, B, W]`` -> the native state tuple, rows ``[B, ...]``."""
        if len(packed) != 2 or any(s.dim() != 3 or s.shape[0] != 1 or s.shape[2] != self.hidden_size for s in packed):
            got = [tuple(s.shape) for s in packed]
            raise ValueError(f"packed state must be two tensors [1, B, {self.hidden_size}], got {got}")
        flat = torch.cat([packed[0][0], packed[1][0]], dim=1)  # [B, 2W]
        batch_size = flat.shape[0]
        parts = flat.split([*self.sizes, self.padding], dim=1)[: len(self.sizes)]
        return tuple(p.reshape(batch_size, *shape) for p, shape in zip(parts, self.shapes))


def select_rows(states: RNNStates, index: IndexLike) -> RNNStates:
    """The rows ``index`` of every tensor of ``states`` (batch on dim 0)."""
    return RNNStates(tuple(s[index] for s in states.pi), tuple(s[index] for s in states.vf))

