"""``fwrnn``: the fast-weight RNN of Ba, Hinton, Mnih, Leibo & Ionescu, "Using Fast Weights to Attend to the Recent
Past" (NIPS 2016), behind the memory-core API.

Per step t, with the slow term z held fixed during the S inner steps (docs/sources.md, "Fast weights")::

    A_t  = λ A_{t-1} + η h_{t-1} h_{t-1}ᵀ          (writes the previous final hidden state, as Ba et al.)
    z    = W h_{t-1} + C x_t + b
    h⁽⁰⁾ = ReLU(z)
    h⁽ˢ⁾ = ReLU(LN(z + A_t h⁽ˢ⁻¹⁾))   for s = 1..S
    h_t  = h⁽ˢ⁾
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from fwm_rl.core import MemoryCore, State, StateSpec, check_positive, check_real, hebbian_update, reset_state

# Ba et al. initialise the recurrent slow weights W to this multiple of the identity (IRNN style).
RECURRENT_INIT_SCALE = 0.05


class FWRNNCore(MemoryCore):
    """Fast-weight RNN (Ba et al. 2016): ReLU RNN whose inner loop attends to past hidden states through A.

    State ``(h [B, H], A [B, H, H])``; output ``h [T, B, H]``.

    Convention: the fast weights are written with the *previous final* hidden state h_{t-1} before step t's inner
    loop, as in Ba et al.'s equations (the FW-LSTM authors' own FW-RNN code instead writes the current preliminary
    vector). After a reset h_{t-1} = 0, so a fresh episode starts with A = 0. Initialisation: W = 0.05·I, C and b
    U(±1/sqrt(H)) (Ba et al. App. A.1), the LayerNorm gain 1 and bias 0.

    :param input_size: features per step of ``x [T, B, input_size]``
    :param hidden_size: H
    :param fast_decay: λ in [0, 1]
    :param fast_lr: η >= 0
    :param inner_steps: S, number of inner-loop steps per time step
    """

    kind = "fwrnn"

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        fast_decay: float = 0.95,
        fast_lr: float = 0.5,
        inner_steps: int = 1,
    ) -> None:
        super().__init__()
        check_positive(self.kind, input_size=input_size, hidden_size=hidden_size, inner_steps=inner_steps)
        check_real(self.kind, "fast_decay", fast_decay, low=0.0, high=1.0)
        check_real(self.kind, "fast_lr", fast_lr, low=0.0)
        self.input_size, self.hidden_size, self.output_size = input_size, hidden_size, hidden_size
        self.fast_decay, self.fast_lr, self.inner_steps = float(fast_decay), float(fast_lr), inner_steps
        self.state_spec = (StateSpec("h", (hidden_size,)), StateSpec("A", (hidden_size, hidden_size)))
        self.input_proj = nn.Linear(input_size, hidden_size)  # C x + b
        self.recurrent_proj = nn.Linear(hidden_size, hidden_size, bias=False)  # W h
        self.norm = nn.LayerNorm(hidden_size)
        bound = 1.0 / math.sqrt(hidden_size)
        with torch.no_grad():
            nn.init.uniform_(self.input_proj.weight, -bound, bound)
            nn.init.uniform_(self.input_proj.bias, -bound, bound)
            self.recurrent_proj.weight.copy_(RECURRENT_INIT_SCALE * torch.eye(hidden_size))

    def _forward(self, x: Tensor, state: State, episode_starts: Tensor) -> tuple[Tensor, State]:
        x_proj = self.input_proj(x)  # [T, B, H]
        any_start = episode_starts.any(dim=1).tolist()
        outputs = []
        for t in range(x.shape[0]):
            if any_start[t]:
                state = reset_state(state, episode_starts[t])
            h, A = state
            A = hebbian_update(A, h, self.fast_decay, self.fast_lr)  # [B, H, H]
            z = x_proj[t] + self.recurrent_proj(h)  # [B, H]
            h = torch.relu(z)
            for _ in range(self.inner_steps):
                h = torch.relu(self.norm(z + torch.bmm(A, h.unsqueeze(2)).squeeze(2)))
            state = (h, A)
            outputs.append(h)
        return torch.stack(outputs), state

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, fast_decay={self.fast_decay:g}, fast_lr={self.fast_lr:g}, "
            f"inner_steps={self.inner_steps}"
        )
