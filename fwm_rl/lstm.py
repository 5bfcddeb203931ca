"""``lstm``: a one-layer ``nn.LSTM`` behind the memory-core API (the baseline every other core is measured against)."""
from __future__ import annotations

from torch import Tensor, nn

from fwm_rl.core import MemoryCore, State, StateSpec, check_positive, run_rnn


class LSTMCore(MemoryCore):
    """One-layer LSTM; state ``(h [B, H], c [B, H])``; output ``h [T, B, H]``."""

    kind = "lstm"

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        check_positive(self.kind, input_size=input_size, hidden_size=hidden_size)
        self.input_size, self.hidden_size, self.output_size = input_size, hidden_size, hidden_size
        self.state_spec = (StateSpec("h", (hidden_size,)), StateSpec("c", (hidden_size,)))
        self.lstm = nn.LSTM(input_size, hidden_size)

    def _forward(self, x: Tensor, state: State, episode_starts: Tensor) -> tuple[Tensor, State]:
        return run_rnn(self.lstm, x, state, episode_starts)
