"""The fused FWM recurrence as an autograd function over the C++ kernel (see ``fwm_fused.cpp``).

Same arguments and results as :func:`fwm_rl.recurrence.fwm_recurrence_reference`. The backward is hand-written: it
recomputes F from checkpoints saved every ``checkpoint_interval`` steps, so activation memory is the per-step
vectors plus ``B·T/k`` copies of F (k ≥ √T) instead of several copies of F per step.
"""
from __future__ import annotations

import math
from typing import Any, Optional

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from fwm_rl.fused.extension import load_extension

SUPPORTED_DTYPES = (torch.float32, torch.float64)
MAX_DIM = 128  # kMaxDim in fwm_fused.cpp
# A segment of F recomputed in the backward should stay near a core's cache: about 1 MiB, and at least √T steps.
SEGMENT_BYTES = 1 << 20


def unsupported_reason(tensors: tuple[Tensor, ...], n_reads: int) -> Optional[str]:
    """Why the fused kernel cannot take these inputs (a device, a dtype, no reads, d > MAX_DIM), or None if it can.

    :param tensors: the float inputs, keys_s ``[T, B, d]`` first
    """
    devices = sorted({str(t.device) for t in tensors})
    dtypes = sorted({str(t.dtype) for t in tensors})
    if devices != ["cpu"]:
        return f"inputs on {devices}; the fused kernel runs on CPU only"
    if len(dtypes) > 1 or tensors[0].dtype not in SUPPORTED_DTYPES:
        return f"inputs of dtype {dtypes}; the fused kernel takes one dtype, float32 or float64"
    if n_reads < 1:
        return f"N_r = {n_reads}; the fused kernel needs at least one read"
    if tensors[0].shape[-1] > MAX_DIM:
        return f"d = {tensors[0].shape[-1]}; the fused kernel takes d <= {MAX_DIM}"
    return None


def checkpoint_interval(steps: int, dim: int, itemsize: int) -> int:
    """Steps between saved copies of F: max(√T, steps whose F fit in SEGMENT_BYTES), within [1, T]."""
    if steps <= 0:
        return 1
    return min(steps, max(math.isqrt(steps - 1) + 1, SEGMENT_BYTES // (dim**3 * itemsize)))


class FusedRecurrence(torch.autograd.Function):
    """Autograd wrapper of the extension's forward and backward; inputs must be contiguous, starts bool."""

    @staticmethod
    def forward(ctx: Any, keys_s: Tensor, keys_r: Tensor, values: Tensor, beta: Tensor, read_queries: Tensor,
                read_edges: Tensor, fast_weights: Tensor, starts: Tensor, write_scale: float, eps: float
                ) -> tuple[Tensor, Tensor]:
        ext = load_extension().module
        T, _, d = values.shape
        every = checkpoint_interval(T, d, values.element_size())
        save = any(ctx.needs_input_grad)
        reads, final, ckpt, vhat, norm, z = ext.forward(
            keys_s, keys_r, values, beta, read_queries, read_edges, fast_weights, starts, write_scale, eps, every, save
        )
        if save:
            ctx.save_for_backward(keys_s, keys_r, values, beta, read_queries, read_edges, fast_weights, starts, ckpt,
                                  vhat, norm, z)
            ctx.constants = (write_scale, eps, every)
        return reads, final

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_reads: Optional[Tensor], grad_final: Optional[Tensor]) -> tuple[Optional[Tensor], ...]:
        keys_s, keys_r, values, beta, read_queries, read_edges, fast_weights, starts, ckpt, vhat, norm, z = (
            ctx.saved_tensors
        )
        write_scale, eps, every = ctx.constants
        grad_reads = torch.zeros_like(values) if grad_reads is None else grad_reads.contiguous()
        grad_final = torch.zeros_like(fast_weights) if grad_final is None else grad_final.contiguous()
        grads = load_extension().module.backward(
            grad_reads, grad_final, keys_s, keys_r, values, beta, read_queries, read_edges, fast_weights, starts,
            write_scale, eps, every, ckpt, vhat, norm, z,
        )
        return (*(g if need else None for g, need in zip(grads, ctx.needs_input_grad)), None, None, None)


def fwm_recurrence_fused(
    keys_s: Tensor,
    keys_r: Tensor,
    values: Tensor,
    beta: Tensor,
    read_queries: Tensor,
    read_edges: Tensor,
    fast_weights: Tensor,
    episode_starts: Tensor,
    write_scale: float,
    eps: float,
) -> tuple[Tensor, Tensor]:
    """Fused FWM recurrence; the caller checks :func:`unsupported_reason` and that the extension loaded.

    Shapes as in :func:`fwm_rl.recurrence.fwm_recurrence_reference`; ``eps`` is the LayerNorm epsilon.
    """
    inputs = (keys_s, keys_r, values, beta, read_queries, read_edges, fast_weights)
    return FusedRecurrence.apply(
        *(t.contiguous() for t in inputs), episode_starts.to(torch.bool).contiguous(), float(write_scale), float(eps)
    )
