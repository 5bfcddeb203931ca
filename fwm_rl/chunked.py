"""The FWM recurrence in chunked, low-rank form: batched matrix products instead of d³ passes over F per step.

Within a chunk of C steps that starts from F₀, every F_t is F₀ scaled, plus a sum of the chunk's rank-1 writes,
each scaled by the clamps that followed it (K_j = k_s,j ⊗ k_r,j, u_j = λβ_j (v_j − v̂_j), c_k = max(1, ‖F̃_k‖)):

    F_t = a_t F₀ + Σ_{j ≤ t} r_tj K_j ⊗ u_j,     r_tj = Π_{k=j..t} 1/c_k,   a_t = Π_{k ≤ t} 1/c_k

(a_t = 0 and r_tj = 0 across an episode start: a reset ends F₀'s and the earlier writes' share). Everything F is
contracted with is rank-1 (K_t for the old value, n ⊗ e⁽ⁱ⁾ for a read), and ⟨K_j, x ⊗ y⟩ = (k_s,j·x)(k_r,j·y), so:

* v̂_t = a_{t−1} ⟨F₀, K_t⟩ + Σ_{j<t} r_{t−1,j} (K_j·K_t) u_j, and ‖F̃_t‖² = ‖F_{t−1}‖² + 2 u_t·v̂_t + ‖K_t‖²‖u_t‖²:
  the only sequential part, the scan, a loop over the chunk's steps on ``[C, C]`` and ``[C, d]`` arrays per row;
* read i of every step at once: a_t ⟨F₀, n ⊗ e⁽ⁱ⁾⟩ plus ``[C, C] @ [C, d]`` with the weights r_tj (k_s,j·n)(k_r,j·e⁽ⁱ⁾);
* F at the chunk's end: a_C F₀ + ``[d², C] @ [C, d]``, Σ_j r_Cj K_j ⊗ u_j.

So F₀ is read only at a chunk's start (skipped where every row starts an episode there, or where F₀ is a zero that
needs no gradient), F is written only at its end, and nothing d³-sized is made per step. The products with F₀ and F
are batched matrix products over the chunk's outer products, whose backward autograd gives. The scan is a C++ kernel
of :mod:`fwm_rl.fused` with a hand-written backward on CPU; elsewhere, or without the extension, its PyTorch twin
:func:`scan_reference`, its specification, runs, so the chunked form runs on any device and float dtype.

It is exact in exact arithmetic; with finite inputs it agrees with :func:`fwm_rl.recurrence.fwm_recurrence_reference`
to rounding (float64: 1e-12). A non-finite value would leak through the multiplies by zero that stand for a reset
here, so :func:`fwm_rl.recurrence.fwm_recurrence` runs the reference on inputs that are not all finite.
"""
from __future__ import annotations

from typing import Any, NamedTuple, Optional

import torch
import torch.nn.functional as nnf
from torch import Tensor
from torch.autograd.function import once_differentiable

from fwm_rl.fused import load_extension
from fwm_rl.fused.function import SUPPORTED_DTYPES

# Steps per chunk: the scan's per-step work and the [C, C] products grow with C; the F₀ products, and the F made at
# each chunk's end, come once per chunk. 64 was fastest of 32/64/128 at the catbAbI shape (docs/results/fused.md).
CHUNK_STEPS = 64


def outer(x: Tensor, y: Tensor) -> Tensor:
    """Flattened outer products: ``x, y [B, C, d]`` → ``x ⊗ y [B, C, d²]``."""
    B, C, d = x.shape
    return (x.unsqueeze(3) * y.unsqueeze(2)).reshape(B, C, d * d)


def contract(F: Tensor, queries: Tensor) -> Tensor:
    """⟨F, q⟩ over F's first two axes for C flattened rank-1 queries per row: ``F [B, d, d, d]``,
    ``queries [B, C, d²]`` → ``[B, C, d]`` (one batched matrix product)."""
    B, d = F.shape[:2]
    return torch.bmm(queries, F.reshape(B, d * d, d))


def scan_reference(key_gram: Tensor, old_F0: Tensor, norm0: Tensor, write: Tensor, values: Tensor, starts: Tensor
                   ) -> tuple[Tensor, Tensor, Tensor]:
    """The sequential part of a chunk in PyTorch (the specification of the C++ scan, ``fwm_scan.h``).

    :param key_gram: ``[B, C, C]`` K_t·K_j
    :param old_F0: ``[B, C, d]`` ⟨F₀, K_t⟩
    :param norm0: ``[B]`` ‖F₀‖²
    :param write: ``[B, C]`` λβ_t
    :param values: ``[B, C, d]`` v_t
    :param starts: ``[B, C]`` bool episode starts
    :return: the writes u ``[B, C, d]``, their scales r_tj ``[B, C, C]`` (lower triangular, zero across an episode
        start) and F₀'s scale a_t ``[B, C]``
    """
    B, C, d = values.shape
    zero = values.new_zeros(())
    scale, norm_sq, decay = values.new_ones(B), norm0, values.new_zeros(B, 0)  # a_{t−1}, ‖F_{t−1}‖², r_{t−1, j<t}
    updates: list[Tensor] = []
    decays: list[Tensor] = []
    scales: list[Tensor] = []
    for t in range(C):
        reset = starts[:, t]
        scale, norm_sq = torch.where(reset, zero, scale), torch.where(reset, zero, norm_sq)
        decay = torch.where(reset.unsqueeze(1), zero, decay)
        v_old = torch.where(reset.unsqueeze(1), zero, scale.unsqueeze(1) * old_F0[:, t])
        if t > 0:
            v_old = v_old + torch.bmm((decay * key_gram[:, t, :t]).unsqueeze(1), torch.stack(updates, 1)).squeeze(1)
        u = write[:, t, None] * (values[:, t] - v_old)
        tilde_sq = norm_sq + 2 * (u * v_old).sum(1) + key_gram[:, t, t] * u.square().sum(1)  # ‖F̃_t‖²
        clamp = tilde_sq.clamp(min=1.0).sqrt()  # c_t = max(1, ‖F̃_t‖)
        norm_sq, scale = tilde_sq / clamp.square(), scale / clamp
        decay = torch.cat([decay, values.new_ones(B, 1)], 1) / clamp.unsqueeze(1)
        updates.append(u)
        decays.append(nnf.pad(decay, (0, C - t - 1)))
        scales.append(scale)
    return torch.stack(updates, 1), torch.stack(decays, 1), torch.stack(scales, 1)


class Scan(torch.autograd.Function):
    """:func:`scan_reference` by the C++ kernel (``fwm_fused.scan_forward`` / ``scan_backward``), on CPU."""

    @staticmethod
    def forward(ctx: Any, key_gram: Tensor, old_F0: Tensor, norm0: Tensor, write: Tensor, values: Tensor,
                starts: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        inputs = (key_gram, old_F0, norm0, write, values, starts)
        results = load_extension().module.scan_forward(*inputs)
        ctx.save_for_backward(*inputs, *results)
        return results[0], results[1], results[2]

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_updates: Optional[Tensor], grad_decays: Optional[Tensor],
                 grad_scales: Optional[Tensor]) -> tuple[Optional[Tensor], ...]:
        saved = ctx.saved_tensors
        inputs, results = saved[:6], list(saved[6:])
        grads = [torch.zeros_like(like) if grad is None else grad.contiguous()
                 for grad, like in zip((grad_updates, grad_decays, grad_scales), results)]
        return (*load_extension().module.scan_backward(*grads, *inputs, results), None)


def scan(key_gram: Tensor, old_F0: Tensor, norm0: Tensor, write: Tensor, values: Tensor, starts: Tensor
         ) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`scan_reference` (same arguments and results), by the C++ kernel on CPU where it is built."""
    inputs = [x.contiguous() for x in (key_gram, old_F0, norm0, write, values, starts)]
    if values.device.type == "cpu" and values.dtype in SUPPORTED_DTYPES and load_extension().module is not None:
        return Scan.apply(*inputs)
    return scan_reference(*inputs)


def _chunk(ks: Tensor, kr: Tensor, values: Tensor, write: Tensor, queries: Tensor, edges: Tensor, F0: Tensor,
           starts: Tensor, read_steps: Optional[Tensor], eps: float) -> tuple[Tensor, Tensor]:
    """One chunk, batch-major: ``ks, kr, values, queries [B, C, d]``, ``write = λβ [B, C]``,
    ``edges [B, C, N_r, d]``, ``F0 [B, d, d, d]``, ``starts [B, C]`` bool, ``read_steps``: indices of the steps
    to read (None: all). Returns the reads at ``read_steps`` ``[B, C', d]`` and F after the chunk."""
    B, C, d = values.shape
    key_gram = torch.bmm(ks, ks.transpose(1, 2)) * torch.bmm(kr, kr.transpose(1, 2))  # (B, C, C): K_t · K_j
    # F₀ counts where some row carries it into the chunk, unless it is a constant zero (a fresh state)
    use_F0 = bool((~starts[:, 0]).any()) and (F0.requires_grad or bool(F0.any()))
    keys = outer(ks, kr)  # (B, C, d²): K_t
    if use_F0:
        old_F0, norm0 = contract(F0, keys), F0.flatten(1).square().sum(1)  # ⟨F₀, K_t⟩, ‖F₀‖²
    else:
        old_F0, norm0 = values.new_zeros(B, C, d), values.new_zeros(B)
    U, R, scales = scan(key_gram, old_F0, norm0, write, values, starts)  # (B, C, d), (B, C, C), (B, C)
    F_end = torch.bmm(keys.transpose(1, 2), R[:, -1].unsqueeze(2) * U).view(B, d, d, d)  # Σ_j r_Cj K_j ⊗ u_j
    if use_F0:
        F_end = F_end + scales[:, -1].view(B, 1, 1, 1) * F0
    if read_steps is not None:
        R, scales, queries, edges = R[:, read_steps], scales[:, read_steps], queries[:, read_steps], edges[:, read_steps]
    n = queries
    for i in range(edges.shape[2]):
        e = edges[:, :, i]
        weights = R * torch.bmm(n, ks.transpose(1, 2)) * torch.bmm(e, kr.transpose(1, 2))  # (B, C', C)
        read = torch.bmm(weights, U)  # (B, C', d): Σ_j r_tj ⟨K_j, n ⊗ e⟩ u_j
        if use_F0:
            read = read + scales.unsqueeze(2) * contract(F0, outer(n, e))
        n = nnf.layer_norm(read, (d,), eps=eps)
    return n, F_end


def fwm_recurrence_chunked(inputs: NamedTuple, write_scale: float, eps: float, read_mask: Optional[Tensor] = None
                           ) -> tuple[Tensor, Tensor]:
    """The FWM recurrence in chunks of ``CHUNK_STEPS`` steps (arguments and results as
    :func:`fwm_rl.recurrence.fwm_recurrence_reference`; the caller checks the shapes and that the inputs are finite).

    :param inputs: a ``RecurrenceInputs`` (time-major ``[T, B, ...]``)
    :param eps: the LayerNorm epsilon
    :param read_mask: ``[T, B]`` bool or None: reads only at the steps where some row's is True, zero elsewhere
    """
    keys_s, keys_r, values, beta, read_queries, read_edges, F, episode_starts = inputs
    T, B, d = values.shape
    batch_major = [x.transpose(0, 1) for x in (keys_s, keys_r, values, read_queries, read_edges)]
    write = (write_scale * beta).transpose(0, 1)
    starts = episode_starts.transpose(0, 1)
    reads = []
    for t0 in range(0, T, CHUNK_STEPS):
        part = slice(t0, min(T, t0 + CHUNK_STEPS))
        read_steps = None if read_mask is None else read_mask[part].any(dim=1).nonzero().squeeze(1)
        ks, kr, v, n0, e = (x[:, part] for x in batch_major)
        chunk_reads, F = _chunk(ks, kr, v, write[:, part], n0, e, F, starts[:, part], read_steps, eps)
        if read_steps is not None:
            chunk_reads = chunk_reads.new_zeros(B, part.stop - t0, d).index_copy(1, read_steps, chunk_reads)
        reads.append(chunk_reads)
    reads = torch.cat(reads, 1).transpose(0, 1) if reads else values.new_zeros(0, B, d)
    if read_mask is not None:
        reads = torch.where(read_mask.unsqueeze(2), reads, reads.new_zeros(()))
    return reads, F
