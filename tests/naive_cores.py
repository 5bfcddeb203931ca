"""Naive per-step, per-row reference implementations of the memory cores, written from the papers' equations.

Each function loops over time steps and batch rows, works on vectors only, and uses no fwm_rl code: it reads the
core's parameter tensors by name and recomputes everything else. They are slow on purpose and only for tests.
Shapes follow the core API: ``x [T, B, D]``, ``episode_starts [T, B]``, ``state`` a tuple of ``[B, ...]`` tensors.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

LN_EPS = 1e-5


def sigmoid(v: Tensor) -> Tensor:
    return 1.0 / (1.0 + torch.exp(-v))


def layer_norm(v: Tensor, gain: Tensor | None = None, bias: Tensor | None = None) -> Tensor:
    """LayerNorm of one vector (biased variance, eps inside the square root)."""
    mean = v.sum() / v.numel()
    var = ((v - mean) ** 2).sum() / v.numel()
    out = (v - mean) / torch.sqrt(var + LN_EPS)
    if gain is not None:
        out = out * gain + bias
    return out


def lstm_step(p: dict[str, Tensor], x: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """One step of a standard LSTM (PyTorch's gate order i, f, g, o; two bias vectors)."""
    pre = p["lstm.weight_ih_l0"] @ x + p["lstm.bias_ih_l0"] + p["lstm.weight_hh_l0"] @ h + p["lstm.bias_hh_l0"]
    H = h.numel()
    i, f, g, o = (pre[k * H:(k + 1) * H] for k in range(4))
    c = sigmoid(f) * c + sigmoid(i) * torch.tanh(g)
    h = sigmoid(o) * torch.tanh(c)
    return h, c


Row = list[Tensor]  # one batch row's state tensors, in state_spec order


def per_row_per_step(
    core: torch.nn.Module,
    x: Tensor,
    state: tuple[Tensor, ...],
    episode_starts: Tensor,
    step: Callable[[dict[str, Tensor], Tensor, Row], tuple[Tensor, Row]],
) -> tuple[Tensor, tuple[Tensor, ...]]:
    """Run ``step(params, x_tb [D], row) -> (y_tb [H], row)`` for every step t and batch row b in turn, replacing the
    row by fresh zeros where ``episode_starts[t, b]``; returns ``y [T, B, H]`` and the final state."""
    params = {name: value.detach() for name, value in core.named_parameters()}
    T, B, _ = x.shape
    rows = [[s[b].detach().clone() for s in state] for b in range(B)]
    y = torch.zeros(T, B, core.output_size, dtype=x.dtype)
    for t in range(T):
        for b in range(B):
            row = [torch.zeros_like(s) for s in rows[b]] if episode_starts[t, b] else rows[b]
            y[t, b], rows[b] = step(params, x[t, b], row)
    return y, tuple(torch.stack([row[k] for row in rows]) for k in range(len(state)))


def naive_fwm(
    core: torch.nn.Module,
    x: Tensor,
    state: tuple[Tensor, ...],
    episode_starts: Tensor,
    *,
    write_scale: float,
    tanh_query: bool,
    tanh_edges: bool,
    residual: bool,
) -> tuple[Tensor, tuple[Tensor, ...]]:
    """FWM (Schlag et al. 2021), one row and one step at a time; the four knobs are passed explicitly."""
    d, n_reads = core.memory_size, core.n_reads

    def step(p: dict[str, Tensor], x_t: Tensor, row: Row) -> tuple[Tensor, Row]:
        h, c, F = row
        h, c = lstm_step(p, x_t, h, c)
        w = p["write_proj.weight"] @ h + p["write_proj.bias"]
        k_s, k_r, v = torch.tanh(w[:d]), torch.tanh(w[d:2 * d]), torch.tanh(w[2 * d:3 * d])
        beta = sigmoid(w[3 * d] + 1.0)
        key = k_s[:, None] * k_r[None, :]  # d×d
        v_old = torch.stack([(key * F[:, :, k]).sum() for k in range(d)])
        F = F + write_scale * beta * key[:, :, None] * (v - v_old)[None, None, :]
        norm = torch.sqrt((F ** 2).sum())
        if norm > 1.0:
            F = F / norm
        r = p["read_proj.weight"] @ h + p["read_proj.bias"]
        n = torch.tanh(r[:d]) if tanh_query else r[:d]
        for i in range(1, n_reads + 1):
            e = r[i * d:(i + 1) * d]
            e = torch.tanh(e) if tanh_edges else e
            n = layer_norm((n[:, None, None] * e[None, :, None] * F).sum(dim=(0, 1)))
        out = p["out_proj.weight"] @ n + p["out_proj.bias"]
        return (out + h if residual else out), [h, c, F]

    return per_row_per_step(core, x, state, episode_starts, step)


def naive_fwlstm(
    core: torch.nn.Module,
    x: Tensor,
    state: tuple[Tensor, ...],
    episode_starts: Tensor,
    *,
    fast_decay: float | None,
    fast_lr: float | None,
) -> tuple[Tensor, tuple[Tensor, ...]]:
    """FW-LSTM (Keller et al. 2018, figure form); with ``fast_decay=None`` the LN-LSTM (no A in the state)."""
    H = core.hidden_size

    def step(p: dict[str, Tensor], x_t: Tensor, row: Row) -> tuple[Tensor, Row]:
        h, c = row[0], row[1]
        pre = p["input_proj.weight"] @ x_t + p["input_proj.bias"] + p["recurrent_proj.weight"] @ h
        pre = layer_norm(pre, p["gate_norm.weight"], p["gate_norm.bias"])
        i, f, o, g_hat = (pre[k * H:(k + 1) * H] for k in range(4))
        candidate = g_hat
        if fast_decay is not None:
            g = torch.clamp(g_hat, min=0.0)
            A = fast_decay * row[2] + fast_lr * g[:, None] * g[None, :]
            candidate = g_hat + A @ g
        c = sigmoid(f) * c + sigmoid(i) * torch.clamp(candidate, min=0.0)
        c = layer_norm(c, p["cell_norm.weight"], p["cell_norm.bias"])
        h = sigmoid(o) * torch.clamp(c, min=0.0)
        return h, ([h, c] if fast_decay is None else [h, c, A])

    return per_row_per_step(core, x, state, episode_starts, step)


def naive_fwrnn(
    core: torch.nn.Module,
    x: Tensor,
    state: tuple[Tensor, ...],
    episode_starts: Tensor,
    *,
    fast_decay: float,
    fast_lr: float,
    inner_steps: int,
) -> tuple[Tensor, tuple[Tensor, ...]]:
    """FW-RNN (Ba et al. 2016, eqs. 1-3), writing the previous final hidden state before the inner loop."""

    def step(p: dict[str, Tensor], x_t: Tensor, row: Row) -> tuple[Tensor, Row]:
        h, A = row
        A = fast_decay * A + fast_lr * torch.outer(h, h)
        z = p["recurrent_proj.weight"] @ h + p["input_proj.weight"] @ x_t + p["input_proj.bias"]
        h = torch.clamp(z, min=0.0)
        for _ in range(inner_steps):
            h = torch.clamp(layer_norm(z + A @ h, p["norm.weight"], p["norm.bias"]), min=0.0)
        return h, [h, A]

    return per_row_per_step(core, x, state, episode_starts, step)


def naive_lstm(
    core: torch.nn.Module, x: Tensor, state: tuple[Tensor, ...], episode_starts: Tensor
) -> tuple[Tensor, tuple[Tensor, ...]]:
    """The standard LSTM (Hochreiter & Schmidhuber 1997, with a forget gate), one row and one step at a time."""

    def step(p: dict[str, Tensor], x_t: Tensor, row: Row) -> tuple[Tensor, Row]:
        h, c = lstm_step(p, x_t, *row)
        return h, [h, c]

    return per_row_per_step(core, x, state, episode_starts, step)


def naive_gru(
    core: torch.nn.Module, x: Tensor, state: tuple[Tensor, ...], episode_starts: Tensor
) -> tuple[Tensor, tuple[Tensor, ...]]:
    """The GRU of Cho et al. (2014) in PyTorch's variant (the reset gate scales the recurrent term after its matmul
    and bias; gate order r, z, n), one row and one step at a time."""
    H = core.hidden_size

    def step(p: dict[str, Tensor], x_t: Tensor, row: Row) -> tuple[Tensor, Row]:
        (h,) = row
        from_x = p["gru.weight_ih_l0"] @ x_t + p["gru.bias_ih_l0"]
        from_h = p["gru.weight_hh_l0"] @ h + p["gru.bias_hh_l0"]
        r = sigmoid(from_x[:H] + from_h[:H])
        z = sigmoid(from_x[H:2 * H] + from_h[H:2 * H])
        n = torch.tanh(from_x[2 * H:] + r * from_h[2 * H:])
        h = (1.0 - z) * n + z * h
        return h, [h]

    return per_row_per_step(core, x, state, episode_starts, step)
