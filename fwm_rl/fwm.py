"""``fwm``: Fast Weight Memory (Schlag, Munkhdalai & Schmidhuber, ICLR 2021) behind the memory-core API.

A one-layer "slow" LSTM reads the input; a fast-weight tensor F (d×d×d per row) is written with the delta rule and
read N_r times recursively. The LSTM never sees F, so the core runs it over the whole sequence first (one ``nn.LSTM``
call per reset-free stretch), computes the write and read vectors of every step at once, and leaves only the F
recurrence to :func:`fwm_rl.recurrence.fwm_recurrence`. Per step t (write before read, F₀ = 0)::

    h_t, c_t       = LSTM(x_t, h_{t-1}, c_{t-1})
    a_s, a_r, a_v, a_β = W_write h_t + b_write
    k_s, k_r, v    = tanh(a_s), tanh(a_r), tanh(a_v);   β = σ(a_β + 1)
    F ← F + λ β (k_s ⊗ k_r) ⊗ (v − v̂),   v̂ = Σ_ij (k_s ⊗ k_r)_ij F_ij:
    F ← F / max(1, ‖F‖_F)
    n⁽⁰⁾, e⁽¹⁾..e⁽ᴺʳ⁾ = W_read h_t + b_read   (tanh on n⁽⁰⁾ and/or e⁽ⁱ⁾ depending on the preset)
    n⁽ⁱ⁾ = LN(Σ_ab n⁽ⁱ⁻¹⁾_a e⁽ⁱ⁾_b F_ab:)   (LayerNorm over d without gain or bias)
    y_t = W_o n⁽ᴺʳ⁾ + b_o   (+ h_t with the residual)
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Optional

import torch
from torch import Tensor, nn

from fwm_rl.core import MemoryCore, State, StateSpec, check_positive, check_real, run_rnn
from fwm_rl.recurrence import IMPLEMENTATIONS, RecurrenceInputs, fwm_recurrence

# β = σ(a_β + BETA_OFFSET): the official code biases every write towards "on".
BETA_OFFSET = 1.0


@dataclass(frozen=True)
class FWMPreset:
    """The settings in which the three official FWM code bases differ (docs/sources.md, "FWM settings per code base")."""

    memory_size: int
    """d = d_s = d_r = d_t."""
    write_scale: Optional[float]
    """λ of the delta rule; None means 1/d."""
    tanh_query: bool
    """tanh on the first read vector n⁽⁰⁾."""
    tanh_edges: bool
    """tanh on the read edges e⁽ⁱ⁾."""
    residual: bool
    """y = h + o instead of y = o."""
    forget_bias: Optional[float]
    """Slow-LSTM bias init: None keeps PyTorch's default; a number zeroes the biases and sets the forget gate's."""


FWM_PRESETS: dict[str, FWMPreset] = {
    # catbAbI/models/lm_fwm.py with the paper scripts (residual off); its LSTMCell adds +1 to the forget gate.
    "catbabi": FWMPreset(memory_size=32, write_scale=None, tanh_query=False, tanh_edges=True, residual=False,
                         forget_bias=1.0),
    # language-modelling/fwm/myfastweights_v2.py (the FWM head on top of an AWD-LSTM layer).
    "lm": FWMPreset(memory_size=32, write_scale=1.0, tanh_query=True, tanh_edges=True, residual=True,
                    forget_bias=None),
    # metaRL/myfastweights.py (hidden 32, d 16 in the paper's meta-RL agent).
    "rl": FWMPreset(memory_size=16, write_scale=None, tanh_query=False, tanh_edges=False, residual=True,
                    forget_bias=None),
}


def _check_bool(kind: str, name: str, value: Optional[bool]) -> None:
    if value is not None and not isinstance(value, bool):
        raise ValueError(f"{kind}: {name} must be True, False or None (from the preset), got {value!r}")


class FWMCore(MemoryCore):
    """Fast Weight Memory: slow LSTM + delta-rule fast-weight tensor with N_r recursive reads.

    State ``(h [B, H], c [B, H], F [B, d, d, d])``; output ``y [T, B, H]`` (``output_size = hidden_size``).

    ``preset`` picks one official code base's cell ("catbabi", the paper model; "lm"; "rl"); every option left at
    None takes the preset's value, an explicit one overrides it:

    ============  ========  =====  =====
    option        catbabi   lm     rl
    ============  ========  =====  =====
    memory_size   32        32     16
    write_scale   1/d       1      1/d
    tanh_query    False     True   False
    tanh_edges    True      True   False
    residual      False     True   True
    ============  ========  =====  =====

    Initialisation follows the official code: W_write and W_read weights U(±sqrt(6/(H + d))), their biases and the
    output projection PyTorch's default. The catbAbI cell is a hand-written LSTM (gate order i, f, g, o, weights
    U(±1/sqrt(H)), one bias initialised to 0) whose forget gate computes σ(pre + 1). An ``nn.LSTM`` (same gate order,
    same weight init) whose biases start at 0 except the forget gate's at +1 is the same function class (its two bias
    vectors only ever act through their sum) with the same initial distribution, and that is what the "catbabi"
    preset builds. The "lm" and "rl" presets keep ``nn.LSTM``'s default initialisation, as their code bases do.

    :param input_size: features per step of ``x [T, B, input_size]``
    :param hidden_size: H, size of the slow LSTM and of the output
    :param memory_size: d; None takes the preset's
    :param n_reads: N_r, number of recursive reads
    :param preset: "catbabi", "lm" or "rl"
    :param write_scale: λ >= 0; None takes the preset's
    :param tanh_query: tanh on n⁽⁰⁾; None takes the preset's
    :param tanh_edges: tanh on e⁽ⁱ⁾; None takes the preset's
    :param residual: y = h + o if True, y = o if False; None takes the preset's
    :param recurrence: implementation of the F recurrence, one of ``fwm_rl.recurrence.IMPLEMENTATIONS`` ("auto"
        picks the fastest available by sequence length and device, "reference" is the PyTorch loop)
    """

    kind = "fwm"
    supports_read_mask = True  # forward takes read_mask (read-skipping for losses at a few positions)

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        memory_size: Optional[int] = None,
        n_reads: int = 3,
        preset: str = "catbabi",
        write_scale: Optional[float] = None,
        tanh_query: Optional[bool] = None,
        tanh_edges: Optional[bool] = None,
        residual: Optional[bool] = None,
        recurrence: str = "auto",
    ) -> None:
        super().__init__()
        if preset not in FWM_PRESETS:
            raise ValueError(f"{self.kind}: unknown preset {preset!r}; expected one of {sorted(FWM_PRESETS)}")
        if recurrence not in IMPLEMENTATIONS:
            raise ValueError(f"{self.kind}: unknown recurrence {recurrence!r}; expected one of {IMPLEMENTATIONS}")
        for name, value in (("tanh_query", tanh_query), ("tanh_edges", tanh_edges), ("residual", residual)):
            _check_bool(self.kind, name, value)
        overrides = dict(memory_size=memory_size, write_scale=write_scale, tanh_query=tanh_query,
                         tanh_edges=tanh_edges, residual=residual)
        config = replace(FWM_PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None})
        check_positive(self.kind, input_size=input_size, hidden_size=hidden_size, memory_size=config.memory_size,
                       n_reads=n_reads)
        d = config.memory_size
        scale = 1.0 / d if config.write_scale is None else config.write_scale
        check_real(self.kind, "write_scale", scale, low=0.0)

        self.input_size, self.hidden_size, self.output_size = input_size, hidden_size, hidden_size
        self.memory_size, self.n_reads, self.preset = d, n_reads, preset
        self.write_scale = float(scale)
        self.tanh_query, self.tanh_edges, self.residual = config.tanh_query, config.tanh_edges, config.residual
        self.recurrence = recurrence
        self.state_spec = (StateSpec("h", (hidden_size,)), StateSpec("c", (hidden_size,)), StateSpec("F", (d, d, d)))

        self.lstm = nn.LSTM(input_size, hidden_size)
        self.write_proj = nn.Linear(hidden_size, 3 * d + 1)  # [k_s; k_r; v; β]
        self.read_proj = nn.Linear(hidden_size, (n_reads + 1) * d)  # [n⁽⁰⁾; e⁽¹⁾..e⁽ᴺʳ⁾]
        self.out_proj = nn.Linear(d, hidden_size)
        self._init_weights(config.forget_bias)

    @torch.no_grad()
    def _init_weights(self, forget_bias: Optional[float]) -> None:
        bound = math.sqrt(6.0 / (self.hidden_size + self.memory_size))
        nn.init.uniform_(self.write_proj.weight, -bound, bound)
        nn.init.uniform_(self.read_proj.weight, -bound, bound)
        if forget_bias is not None:
            H = self.hidden_size
            self.lstm.bias_ih_l0.zero_()
            self.lstm.bias_hh_l0.zero_()
            self.lstm.bias_ih_l0[H:2 * H] = forget_bias  # nn.LSTM gate order: i, f, g, o

    def forward(self, x: Tensor, state: Optional[State] = None, episode_starts: Optional[Tensor] = None,
                read_mask: Optional[Tensor] = None) -> tuple[Tensor, State]:
        """As :meth:`MemoryCore.forward`; ``read_mask [T, B]`` or ``[T]`` (bool, optional) skips the reads of F where
        it is False: y there is the output of a zero read, and a loss taken only where it is True (with its
        gradients) is unchanged (see :mod:`fwm_rl.recurrence`)."""
        x, state, episode_starts = self._check_inputs(x, state, episode_starts)
        return self._forward(x, state, episode_starts, read_mask)

    def _forward(self, x: Tensor, state: State, episode_starts: Tensor, read_mask: Optional[Tensor] = None
                 ) -> tuple[Tensor, State]:
        h0, c0, F0 = state
        T, B, _ = x.shape
        d, n_reads = self.memory_size, self.n_reads
        h_seq, (h, c) = run_rnn(self.lstm, x, (h0, c0), episode_starts)  # h_seq [T, B, H]
        keys_s, keys_r, values, beta_pre = self.write_proj(h_seq).split([d, d, d, 1], dim=-1)
        beta = torch.sigmoid(beta_pre.squeeze(-1) + BETA_OFFSET)  # [T, B]
        queries, edges = self.read_proj(h_seq).split([d, n_reads * d], dim=-1)
        queries = queries.tanh() if self.tanh_query else queries  # [T, B, d]
        edges = edges.reshape(T, B, n_reads, d)
        edges = edges.tanh() if self.tanh_edges else edges  # [T, B, N_r, d]
        inputs = RecurrenceInputs(keys_s.tanh(), keys_r.tanh(), values.tanh(), beta, queries, edges, F0,
                                  episode_starts)
        reads, F = fwm_recurrence(inputs, self.write_scale, implementation=self.recurrence,
                                  read_mask=read_mask)  # [T, B, d], [B, d, d, d]
        y = self.out_proj(reads)  # [T, B, H]
        if self.residual:
            y = y + h_seq
        return y, (h, c, F)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, memory_size={self.memory_size}, n_reads={self.n_reads}, preset={self.preset!r}, "
            f"write_scale={self.write_scale:g}, tanh_query={self.tanh_query}, tanh_edges={self.tanh_edges}, "
            f"residual={self.residual}, recurrence={self.recurrence!r}"
        )
