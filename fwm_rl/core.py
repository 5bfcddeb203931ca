"""The memory-core contract shared by every sequence model in fwm_rl.

A core maps a sequence ``x [T, B, input_size]`` and a state (a tuple of tensors, batch on dim 0 of each) to outputs
``y [T, B, output_size]`` and the state after the last step. ``episode_starts[t, b]`` resets row ``b`` to the initial
state *before* step ``t`` is consumed (the Stable-Baselines3 convention). Every core's initial state is all zeros, and
a reset is a select, never a multiply (``torch.where(episode_starts[t], 0, state)``), so a non-finite state cannot
survive it: NaN·0 is NaN, a selected zero is zero.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch
from torch import Tensor, nn

State = tuple[Tensor, ...]


class StateSpec(NamedTuple):
    """One state tensor: its name and its shape per batch row (the batch dim excluded)."""

    name: str
    shape: tuple[int, ...]


def detach_state(state: State) -> State:
    """Cut the autograd graph behind ``state`` (truncated BPTT)."""
    return tuple(s.detach() for s in state)


def reset_state(state: State, starts: Tensor) -> State:
    """Zero the rows of ``state`` where ``starts [B]`` (bool) is set, by selection, so NaN and Inf rows are cleared too.

    The gradient into a reset row is exactly zero (not NaN·0).
    """
    return tuple(torch.where(starts.view(-1, *([1] * (s.dim() - 1))), s.new_zeros(()), s) for s in state)


def reset_segments(episode_starts: Tensor) -> list[tuple[int, int]]:
    """Split ``range(T)`` into maximal stretches ``[t0, t1)`` in which no row resets after ``t0``.

    ``episode_starts [T, B]``. Resets can only happen at the first step of a stretch, so a stretch can be run by one
    call of a fused sequence kernel (``nn.LSTM``) after resetting the state rows that start there.
    """
    any_start = episode_starts.any(dim=1).tolist()
    bounds = [t for t in range(1, len(any_start)) if any_start[t]]
    edges = [0, *bounds, len(any_start)]
    return list(zip(edges[:-1], edges[1:]))


class MemoryCore(nn.Module):
    """Base class: validates inputs, owns the state layout, leaves the recurrence to ``_forward``.

    Subclasses set ``input_size``, ``hidden_size``, ``output_size`` and ``state_spec`` in ``__init__`` and implement
    ``_forward(x [T, B, D], state, episode_starts [T, B] bool) -> (y [T, B, output_size], state)``.
    """

    kind: str = "core"
    input_size: int
    hidden_size: int
    output_size: int
    state_spec: tuple[StateSpec, ...]

    def initial_state(
        self, batch_size: int, device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None
    ) -> State:
        """Zeros for every state tensor, each ``[batch_size, *spec.shape]``."""
        if batch_size < 0:
            raise ValueError(f"batch_size must be >= 0, got {batch_size}")
        ref = next(self.parameters(), None)
        device = device if device is not None else (ref.device if ref is not None else None)
        dtype = dtype if dtype is not None else (ref.dtype if ref is not None else torch.get_default_dtype())
        return tuple(torch.zeros(batch_size, *spec.shape, device=device, dtype=dtype) for spec in self.state_spec)

    def forward(
        self, x: Tensor, state: Optional[State] = None, episode_starts: Optional[Tensor] = None
    ) -> tuple[Tensor, State]:
        """Run the core over ``x [T, B, input_size]`` from ``state`` (zeros if None); see the module docstring."""
        x, state, episode_starts = self._check_inputs(x, state, episode_starts)
        return self._forward(x, state, episode_starts)

    def _forward(self, x: Tensor, state: State, episode_starts: Tensor) -> tuple[Tensor, State]:
        raise NotImplementedError

    def _check_inputs(
        self, x: Tensor, state: Optional[State], episode_starts: Optional[Tensor]
    ) -> tuple[Tensor, State, Tensor]:
        name = type(self).__name__
        if not isinstance(x, Tensor) or x.dim() != 3:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"{name}: x must be a tensor of shape [T, B, {self.input_size}], got {shape}")
        T, B, D = x.shape
        if T == 0:
            raise ValueError(f"{name}: x must hold at least one step (T >= 1), got shape {tuple(x.shape)}")
        if D != self.input_size:
            raise ValueError(f"{name}: x has {D} features, expected input_size={self.input_size} (x is [T, B, D])")
        if state is None:
            state = self.initial_state(B, device=x.device, dtype=x.dtype)
        else:
            state = tuple(state)
            expected = [(B, *spec.shape) for spec in self.state_spec]
            got = [tuple(s.shape) for s in state]
            if len(state) != len(self.state_spec) or got != expected:
                names = ", ".join(spec.name for spec in self.state_spec)
                raise ValueError(f"{name}: state must be ({names}) with shapes {expected}, got {got}")
        if episode_starts is None:
            episode_starts = torch.zeros(T, B, dtype=torch.bool, device=x.device)
        else:
            if not isinstance(episode_starts, Tensor):
                episode_starts = torch.as_tensor(episode_starts, device=x.device)
            if tuple(episode_starts.shape) != (T, B):
                raise ValueError(
                    f"{name}: episode_starts must have shape [T, B] = [{T}, {B}], got {tuple(episode_starts.shape)}"
                )
            episode_starts = episode_starts.to(device=x.device, dtype=torch.bool)
        return x, state, episode_starts

    def extra_repr(self) -> str:
        return f"input_size={self.input_size}, hidden_size={self.hidden_size}, output_size={self.output_size}"


def check_positive(kind: str, **sizes: int) -> None:
    """Raise ``ValueError`` unless every named size is a positive int."""
    for key, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{kind}: {key} must be a positive integer, got {value!r}")


def run_rnn(rnn: nn.RNNBase, x: Tensor, state: State, episode_starts: Tensor) -> tuple[Tensor, State]:
    """Run a one-layer, time-major ``nn.LSTM`` (state ``(h, c)``) or ``nn.GRU`` (state ``(h,)``) over ``x [T, B, D]``
    with resets, one fused call per reset-free stretch.

    Every state tensor is ``[B, H]`` (batch first, as in every core state). Returns ``y [T, B, H]`` and the state.
    """
    outputs: list[Tensor] = []
    for t0, t1 in reset_segments(episode_starts):
        state = reset_state(state, episode_starts[t0])
        hx = tuple(s.unsqueeze(0) for s in state)  # each [1, B, H]
        y, hx_n = rnn(x[t0:t1], hx if isinstance(rnn, nn.LSTM) else hx[0])  # y [t1-t0, B, H]
        state = tuple(s.squeeze(0) for s in (hx_n if isinstance(rnn, nn.LSTM) else (hx_n,)))
        outputs.append(y)
    return torch.cat(outputs, dim=0), state


def check_real(kind: str, name: str, value: float, low: float = -math.inf, high: float = math.inf) -> None:
    """Raise ``ValueError`` unless ``value`` is a finite real number in ``[low, high]``."""
    is_real = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not (is_real and math.isfinite(value) and low <= value <= high):
        raise ValueError(f"{kind}: {name} must be a finite number in [{low}, {high}], got {value!r}")


def hebbian_update(fast_weights: Tensor, u: Tensor, decay: float, lr: float) -> Tensor:
    """The decaying outer-product write ``A ← decay·A + lr·u uᵀ`` of FW-RNN and FW-LSTM.

    ``fast_weights [B, H, H]``, ``u [B, H]``; returns the new ``[B, H, H]``.
    """
    return torch.baddbmm(fast_weights, u.unsqueeze(2), u.unsqueeze(1), beta=decay, alpha=lr)
