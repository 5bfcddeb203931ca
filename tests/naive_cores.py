"""Naive per-step, per-row reference implementations of the memory cores, written from the papers' equations.

Each function loops over time steps and batch rows, works on vectors only, and uses no fwm_rl code: it reads the
core's parameter tensors by name and recomputes everything else. They are slow on purpose and only for tests.
Shapes follow the core API: ``x [T, B, D]``, ``episode_starts [T, B]``, ``state`` a tuple of ``[B, ...]`` tensors.
"""
from __future__ import annotations

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


def _params(core: torch.nn.Module) -> dict[str, Tensor]:
    return {name: value.detach() for name, value in core.named_parameters()}


def _rows(state: tuple[Tensor, ...]) -> list[list[Tensor]]:
    """Per-row copies of every state tensor: ``rows[b][k]`` is state k of row b."""
    B = state[0].shape[0]
    return [[s[b].detach().clone() for s in state] for b in range(B)]


def _stack_rows(rows: list[list[Tensor]]) -> tuple[Tensor, ...]:
    return tuple(torch.stack([row[k] for row in rows]) for k in range(len(rows[0])))


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
    p = _params(core)
    T, B, _ = x.shape
    d, n_reads = core.memory_size, core.n_reads
    rows = _rows(state)
    y = torch.zeros(T, B, core.hidden_size, dtype=x.dtype)
    for t in range(T):
        for b in range(B):
            h, c, F = rows[b]
            if episode_starts[t, b]:
                h, c, F = torch.zeros_like(h), torch.zeros_like(c), torch.zeros_like(F)
            h, c = lstm_step(p, x[t, b], h, c)
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
            y[t, b] = out + h if residual else out
            rows[b] = [h, c, F]
    return y, _stack_rows(rows)


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
    p = _params(core)
    T, B, _ = x.shape
    H = core.hidden_size
    rows = _rows(state)
    y = torch.zeros(T, B, H, dtype=x.dtype)
    for t in range(T):
        for b in range(B):
            row = rows[b]
            if episode_starts[t, b]:
                row = [torch.zeros_like(s) for s in row]
            h, c = row[0], row[1]
            pre = p["input_proj.weight"] @ x[t, b] + p["input_proj.bias"] + p["recurrent_proj.weight"] @ h
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
            y[t, b] = h
            rows[b] = [h, c] if fast_decay is None else [h, c, A]
    return y, _stack_rows(rows)


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
    p = _params(core)
    T, B, _ = x.shape
    rows = _rows(state)
    y = torch.zeros(T, B, core.hidden_size, dtype=x.dtype)
    for t in range(T):
        for b in range(B):
            h, A = rows[b]
            if episode_starts[t, b]:
                h, A = torch.zeros_like(h), torch.zeros_like(A)
            A = fast_decay * A + fast_lr * torch.outer(h, h)
            z = p["recurrent_proj.weight"] @ h + p["input_proj.weight"] @ x[t, b] + p["input_proj.bias"]
            h_inner = torch.clamp(z, min=0.0)
            for _ in range(inner_steps):
                h_inner = torch.clamp(layer_norm(z + A @ h_inner, p["norm.weight"], p["norm.bias"]), min=0.0)
            h = h_inner
            y[t, b] = h
            rows[b] = [h, A]
    return y, _stack_rows(rows)


def naive_lstm(
    core: torch.nn.Module, x: Tensor, state: tuple[Tensor, ...], episode_starts: Tensor
) -> tuple[Tensor, tuple[Tensor, ...]]:
    """The standard LSTM (Hochreiter & Schmidhuber 1997, with a forget gate), one row and one step at a time."""
    p = _params(core)
    T, B, _ = x.shape
    rows = _rows(state)
    y = torch.zeros(T, B, core.hidden_size, dtype=x.dtype)
    for t in range(T):
        for b in range(B):
            h, c = rows[b]
            if episode_starts[t, b]:
                h, c = torch.zeros_like(h), torch.zeros_like(c)
            h, c = lstm_step(p, x[t, b], h, c)
            y[t, b] = h
            rows[b] = [h, c]
    return y, _stack_rows(rows)


def naive_gru(
    core: torch.nn.Module, x: Tensor, state: tuple[Tensor, ...], episode_starts: Tensor
) -> tuple[Tensor, tuple[Tensor, ...]]:
    """The GRU of Cho et al. (2014) in PyTorch's variant (reset gate applied after the recurrent matmul; gate order
    r, z, n), one row and one step at a time."""
    p = _params(core)
    T, B, _ = x.shape
    H = core.hidden_size
    rows = _rows(state)
    y = torch.zeros(T, B, H, dtype=x.dtype)
    for t in range(T):
        for b in range(B):
            (h,) = rows[b]
            if episode_starts[t, b]:
                h = torch.zeros_like(h)
            from_x = p["gru.weight_ih_l0"] @ x[t, b] + p["gru.bias_ih_l0"]
            from_h = p["gru.weight_hh_l0"] @ h + p["gru.bias_hh_l0"]
            r = sigmoid(from_x[:H] + from_h[:H])
            z = sigmoid(from_x[H:2 * H] + from_h[H:2 * H])
            n = torch.tanh(from_x[2 * H:] + r * from_h[2 * H:])
            h = (1.0 - z) * n + z * h
            y[t, b] = h
            rows[b] = [h]
    return y, _stack_rows(rows)
