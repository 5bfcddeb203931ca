"""``lnlstm`` and ``fwlstm``: the layer-normalised LSTM and its fast-weight version (Keller, Nittur Sridhar & Wang 2018).

Both share one cell, the form of the FW-LSTM paper's figure (docs/sources.md, "FW-LSTM"); the LN-LSTM is that cell with the
fast weights A ≡ 0. Per step t (gate order i, f, o, g; one LayerNorm over all 4H pre-activations)::

    [î; f̂; ô; ĝ] = LN₁(W_x x_t + b + W_h h_{t-1})
    g   = ReLU(ĝ)
    A_t = λ A_{t-1} + η g gᵀ                                   (FW-LSTM only)
    c_t = LN₂(σ(f̂) ⊙ c_{t-1} + σ(î) ⊙ ReLU(ĝ + A_t g))          (LN-LSTM: ReLU(ĝ))
    h_t = σ(ô) ⊙ ReLU(c_t)

The input projection W_x x + b is computed for all steps at once; the rest is a per-step loop, because A_t depends on
g of the same step and g on h_{t-1}.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from fwm_rl.core import MemoryCore, State, StateSpec, check_positive, check_real, hebbian_update, reset_state


class LNLSTMCore(MemoryCore):
    """Layer-normalised LSTM with ReLU candidate and output squashing (the FW-LSTM cell without fast weights).

    State ``(h [B, H], c [B, H])``; output ``h [T, B, H]``. Weights and the gate bias start U(±1/sqrt(H)) as in
    ``nn.LSTM``; both LayerNorms start with gain 1 and bias 0.
    """

    kind = "lnlstm"

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        check_positive(self.kind, input_size=input_size, hidden_size=hidden_size)
        self.input_size, self.hidden_size, self.output_size = input_size, hidden_size, hidden_size
        self.state_spec: tuple[StateSpec, ...] = (StateSpec("h", (hidden_size,)), StateSpec("c", (hidden_size,)))
        self.input_proj = nn.Linear(input_size, 4 * hidden_size)  # W_x x + b, gate order i, f, o, g
        self.recurrent_proj = nn.Linear(hidden_size, 4 * hidden_size, bias=False)  # W_h h
        self.gate_norm = nn.LayerNorm(4 * hidden_size)
        self.cell_norm = nn.LayerNorm(hidden_size)
        bound = 1.0 / math.sqrt(hidden_size)
        for weight in (self.input_proj.weight, self.input_proj.bias, self.recurrent_proj.weight):
            nn.init.uniform_(weight, -bound, bound)

    def _candidate(self, g_pre: Tensor, fast: State) -> tuple[Tensor, State]:
        """The candidate pre-activation fed to ReLU, and the fast-weight state after this step (none here)."""
        return g_pre, fast

    def _forward(self, x: Tensor, state: State, episode_starts: Tensor) -> tuple[Tensor, State]:
        x_proj = self.input_proj(x)  # [T, B, 4H]
        any_start = episode_starts.any(dim=1).tolist()
        outputs = []
        for t in range(x.shape[0]):
            if any_start[t]:
                state = reset_state(state, episode_starts[t])
            h, c, *fast = state
            gates = self.gate_norm(x_proj[t] + self.recurrent_proj(h))  # [B, 4H]
            i, f, o, g_pre = gates.chunk(4, dim=-1)
            g_pre, fast = self._candidate(g_pre, tuple(fast))
            c = self.cell_norm(torch.sigmoid(f) * c + torch.sigmoid(i) * torch.relu(g_pre))
            h = torch.sigmoid(o) * torch.relu(c)
            state = (h, c, *fast)
            outputs.append(h)
        return torch.stack(outputs), state


class FWLSTMCore(LNLSTMCore):
    """Fast-weight LSTM: the LN-LSTM cell plus an H×H associative memory A of its candidate vectors g.

    State ``(h [B, H], c [B, H], A [B, H, H])``; output ``h [T, B, H]``. λ and η are fixed, so the FW-LSTM has exactly
    the LN-LSTM's parameters; with λ = η = 0 it is the LN-LSTM. The defaults λ = 0.95, η = 0.5 are Ba et al.'s FW-RNN
    values (the FW-LSTM paper's own are not known; its co-author's code uses 1 and 1).

    :param input_size: features per step of ``x [T, B, input_size]``
    :param hidden_size: H
    :param fast_decay: λ in [0, 1]
    :param fast_lr: η >= 0
    """

    kind = "fwlstm"

    def __init__(self, input_size: int, hidden_size: int, fast_decay: float = 0.95, fast_lr: float = 0.5) -> None:
        super().__init__(input_size, hidden_size)
        check_real(self.kind, "fast_decay", fast_decay, low=0.0, high=1.0)
        check_real(self.kind, "fast_lr", fast_lr, low=0.0)
        self.fast_decay, self.fast_lr = float(fast_decay), float(fast_lr)
        self.state_spec = (*self.state_spec, StateSpec("A", (hidden_size, hidden_size)))

    def _candidate(self, g_pre: Tensor, fast: State) -> tuple[Tensor, State]:
        g = torch.relu(g_pre)  # [B, H]
        A = hebbian_update(fast[0], g, self.fast_decay, self.fast_lr)  # [B, H, H]
        return g_pre + torch.bmm(A, g.unsqueeze(2)).squeeze(2), (A,)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, fast_decay={self.fast_decay:g}, fast_lr={self.fast_lr:g}"
