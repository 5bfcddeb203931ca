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
needs no gradient), F is written only at its end, and nothing d³-sized is made per step. On CPU the scan and the
products with F₀ and F (``contract``, ``rank1_sum``) are C++ kernels of :mod:`fwm_rl.fused` with hand-written
backwards; the products never write the d²-long outer products. Elsewhere, or without the extension, their PyTorch
twins (:func:`scan_reference`, :func:`contract_reference`, :func:`rank1_sum_reference`: batched matrix products over
the outer products, and their specification) run, so the chunked form runs on any device and float dtype.

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


def contract_reference(F: Tensor, x: Tensor, y: Tensor) -> Tensor:
    """⟨F, x_c ⊗ y_c⟩ over F's first two axes for C pairs per row: ``F [B, d, d, d]``, ``x, y [B, C, d]`` →
    ``[B, C, d]``, as one batched matrix product with the outer products (the specification of ``contract``)."""
    B, d = F.shape[:2]
    return torch.bmm(outer(x, y), F.reshape(B, d * d, d))


def rank1_sum_reference(x: Tensor, y: Tensor, w: Tensor) -> Tensor:
    """Σ_c x_c ⊗ y_c ⊗ w_c: ``x, y, w [B, C, d]`` → ``[B, d, d, d]`` (the specification of ``rank1_sum``)."""
    B, C, d = x.shape
    return torch.bmm(outer(x, y).transpose(1, 2), w).view(B, d, d, d)


class Contract(torch.autograd.Function):
    """:func:`contract_reference` by the C++ kernel (``fwm_fused.contract``; backward ``rank1_sum`` and
    ``rank_one_grads``), which never writes the d²-long outer products."""

    @staticmethod
    def forward(ctx: Any, F: Tensor, x: Tensor, y: Tensor) -> Tensor:
        ctx.save_for_backward(F, x, y)
        return load_extension().module.contract(F, x, y)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Optional[Tensor], ...]:
        F, x, y = ctx.saved_tensors
        module, grad = load_extension().module, grad.contiguous()
        grad_F = module.rank1_sum(x, y, grad) if ctx.needs_input_grad[0] else None
        grad_x, grad_y = module.rank_one_grads(F, x, y, grad) if any(ctx.needs_input_grad[1:]) else (None, None)
        return grad_F, grad_x, grad_y


class RankOneSum(torch.autograd.Function):
    """:func:`rank1_sum_reference` by the C++ kernel (``fwm_fused.rank1_sum``; backward ``contract`` and
    ``rank_one_grads``)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, y: Tensor, w: Tensor) -> Tensor:
        ctx.save_for_backward(x, y, w)
        return load_extension().module.rank1_sum(x, y, w)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Optional[Tensor], ...]:
        x, y, w = ctx.saved_tensors
        module, grad = load_extension().module, grad.contiguous()
        grad_x, grad_y = module.rank_one_grads(grad, x, y, w) if any(ctx.needs_input_grad[:2]) else (None, None)
        grad_w = module.contract(grad, x, y) if ctx.needs_input_grad[2] else None
        return grad_x, grad_y, grad_w


def _kernel_runs(x: Tensor) -> bool:
    """Whether the C++ kernels take tensors like ``x`` (CPU, float32 or float64, extension built)."""
    return x.device.type == "cpu" and x.dtype in SUPPORTED_DTYPES and load_extension().module is not None


def contract(F: Tensor, x: Tensor, y: Tensor) -> Tensor:
    """:func:`contract_reference` (same arguments and result), by the C++ kernel on CPU where it is built."""
    if _kernel_runs(x):
        return Contract.apply(F.contiguous(), x.contiguous(), y.contiguous())
    return contract_reference(F, x, y)


def rank1_sum(x: Tensor, y: Tensor, w: Tensor) -> Tensor:
    """:func:`rank1_sum_reference` (same arguments and result), by the C++ kernel on CPU where it is built."""
    if _kernel_runs(x):
        return RankOneSum.apply(x.contiguous(), y.contiguous(), w.contiguous())
    return rank1_sum_reference(x, y, w)


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
    if _kernel_runs(values):
        return Scan.apply(*inputs)
    return scan_reference(*inputs)


def reads_F0(F0: Tensor, starts: Tensor) -> bool:
    """Whether a chunk that starts from ``F0 [B, d, d, d]`` must contract it: some row carries it in (``starts [B]``,
    the episode starts of its first step, is False there) and it is not a zero that needs no gradient (a fresh
    ``initial_state``)."""
    return bool((~starts).any()) and (F0.requires_grad or bool(F0.any()))


def _chunk(ks: Tensor, kr: Tensor, values: Tensor, write: Tensor, queries: Tensor, edges: Tensor, F0: Tensor,
           starts: Tensor, read_steps: Optional[Tensor], eps: float) -> tuple[Tensor, Tensor]:
    """One chunk, batch-major: ``ks, kr, values, queries [B, C, d]``, ``write = λβ [B, C]``,
    ``edges [B, C, N_r, d]``, ``F0 [B, d, d, d]``, ``starts [B, C]`` bool, ``read_steps``: indices of the steps
    to read (None: all). Returns the reads at ``read_steps`` ``[B, C', d]`` and F after the chunk."""
    B, C, d = values.shape
    key_gram = torch.bmm(ks, ks.transpose(1, 2)) * torch.bmm(kr, kr.transpose(1, 2))  # (B, C, C): K_t · K_j
    use_F0 = reads_F0(F0, starts[:, 0])
    if use_F0:
        old_F0, norm0 = contract(F0, ks, kr), F0.flatten(1).square().sum(1)  # ⟨F₀, K_t⟩, ‖F₀‖²
    else:
        old_F0, norm0 = values.new_zeros(B, C, d), values.new_zeros(B)
    U, R, scales = scan(key_gram, old_F0, norm0, write, values, starts)  # (B, C, d), (B, C, C), (B, C)
    F_end = rank1_sum(ks, kr, R[:, -1].unsqueeze(2) * U)  # Σ_j r_Cj K_j ⊗ u_j
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
            read = read + scales.unsqueeze(2) * contract(F0, n, e)
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
