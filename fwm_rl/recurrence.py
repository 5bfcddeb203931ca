"""The fast-weight recurrence of the FWM, behind one function.

Everything of the FWM that does not depend on F (the slow LSTM, the write and read projections, their
nonlinearities) is computed for all steps at once by the core; only this loop is sequential. A fused kernel may
replace the PyTorch reference here; the reference stays as its specification.

Per step t and batch row b (F is d×d×d, F₀ given, LN is a LayerNorm over d with no affine parameters):
    F  ← 0 where episode_starts[t, b]
    K  = k_s ⊗ k_r                                   (d×d)
    v̂  = Σ_ij K_ij F_ij:                             (old value under the key)
    F  ← F + λ β K ⊗ (v − v̂)                         (delta rule)
    F  ← F / max(1, ‖F‖_F)                           (norm clamp over the whole tensor)
    n  = n⁽⁰⁾;  for i in 1..N_r:  n ← LN(Σ_ab n_a e⁽ⁱ⁾_b F_ab:)   (write before read)
"""
from __future__ import annotations

import torch
import torch.nn.functional as nnf
from torch import Tensor

LAYER_NORM_EPS = 1e-5
IMPLEMENTATIONS = ("auto", "reference")


def fwm_recurrence_reference(
    keys_s: Tensor,
    keys_r: Tensor,
    values: Tensor,
    beta: Tensor,
    read_queries: Tensor,
    read_edges: Tensor,
    fast_weights: Tensor,
    episode_starts: Tensor,
    write_scale: float,
) -> tuple[Tensor, Tensor]:
    """PyTorch reference of the FWM recurrence.

    :param keys_s: source keys k_s ``[T, B, d]``
    :param keys_r: relation keys k_r ``[T, B, d]``
    :param values: values v ``[T, B, d]``
    :param beta: write strengths β ``[T, B]``
    :param read_queries: first read vector n⁽⁰⁾ ``[T, B, d]``
    :param read_edges: read edges e⁽¹⁾..e⁽ᴺʳ⁾ ``[T, B, N_r, d]``
    :param fast_weights: F before step 0 ``[B, d, d, d]``
    :param episode_starts: ``[T, B]`` bool; F is zeroed before the step where it is set
    :param write_scale: λ
    :return: reads n⁽ᴺʳ⁾ ``[T, B, d]`` and F after the last step ``[B, d, d, d]``
    """
    T, B, d = values.shape
    F = fast_weights
    reads = []
    for t in range(T):
        F = F * (~episode_starts[t]).to(F.dtype).view(B, 1, 1, 1)
        key = keys_s[t].unsqueeze(2) * keys_r[t].unsqueeze(1)  # (B, d, d)
        v_old = torch.einsum("bij,bijk->bk", key, F)  # (B, d)
        update = (write_scale * beta[t]).view(B, 1, 1) * (values[t] - v_old)  # (B, d)
        F = F + key.unsqueeze(3) * update.view(B, 1, 1, d)
        F = F / F.flatten(1).norm(dim=1).clamp(min=1.0).view(B, 1, 1, 1)
        n = read_queries[t]
        for i in range(read_edges.shape[2]):
            n = torch.einsum("bi,bj,bijk->bk", n, read_edges[t, :, i], F)  # (B, d)
            n = nnf.layer_norm(n, (d,), eps=LAYER_NORM_EPS)
        reads.append(n)
    return torch.stack(reads), F


def fwm_recurrence(
    keys_s: Tensor,
    keys_r: Tensor,
    values: Tensor,
    beta: Tensor,
    read_queries: Tensor,
    read_edges: Tensor,
    fast_weights: Tensor,
    episode_starts: Tensor,
    write_scale: float,
    implementation: str = "auto",
) -> tuple[Tensor, Tensor]:
    """The FWM recurrence (same arguments and results as :func:`fwm_recurrence_reference`).

    :param implementation: "reference" (the PyTorch loop) or "auto" (the fastest available for the inputs' device)
    """
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"unknown FWM recurrence implementation {implementation!r}; expected one of {IMPLEMENTATIONS}")
    return fwm_recurrence_reference(
        keys_s, keys_r, values, beta, read_queries, read_edges, fast_weights, episode_starts, write_scale
    )
