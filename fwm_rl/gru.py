"""``gru``: a one-layer ``nn.GRU`` behind the memory-core API (Cho et al. 2014; the recurrent baseline that POPGym
found strongest among its memory models).

Per step t (PyTorch's ``nn.GRU``, gate order r, z, n)::

    r_t = σ(W_ir x_t + b_ir + W_hr h_{t-1} + b_hr)
    z_t = σ(W_iz x_t + b_iz + W_hz h_{t-1} + b_hz)
    n_t = tanh(W_in x_t + b_in + r_t ⊙ (W_hn h_{t-1} + b_hn))
    h_t = (1 − z_t) ⊙ n_t + z_t ⊙ h_{t-1}
"""
from __future__ import annotations

from torch import Tensor, nn

from fwm_rl.core import MemoryCore, State, StateSpec, check_positive, run_rnn


class GRUCore(MemoryCore):
    """One-layer GRU; state ``(h [B, H],)``; output ``h [T, B, H]``. PyTorch's default init U(±1/sqrt(H))."""

    kind = "gru"

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        check_positive(self.kind, input_size=input_size, hidden_size=hidden_size)
        self.input_size, self.hidden_size, self.output_size = input_size, hidden_size, hidden_size
        self.state_spec = (StateSpec("h", (hidden_size,)),)
        self.gru = nn.GRU(input_size, hidden_size)

    def _forward(self, x: Tensor, state: State, episode_starts: Tensor) -> tuple[Tensor, State]:
        return run_rnn(self.gru, x, state, episode_starts)
