"""``mlp``: a memoryless baseline behind the memory-core API (no state; each step sees only its own input)."""
from __future__ import annotations

from torch import Tensor, nn

from fwm_rl.core import MemoryCore, State, check_positive


class MLPCore(MemoryCore):
    """``y_t = tanh(W x_t + b)``; the state is the empty tuple, so nothing is remembered across steps."""

    kind = "mlp"

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        check_positive(self.kind, input_size=input_size, hidden_size=hidden_size)
        self.input_size, self.hidden_size, self.output_size = input_size, hidden_size, hidden_size
        self.state_spec = ()
        self.layer = nn.Linear(input_size, hidden_size)

    def _forward(self, x: Tensor, state: State, episode_starts: Tensor) -> tuple[Tensor, State]:
        return self.layer(x).tanh(), state
