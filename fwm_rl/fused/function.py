"""The fused FWM recurrence as an autograd function over the C++ kernel (see ``fwm_fused.cpp``).

Same arguments and results as :func:`fwm_rl.recurrence.fwm_recurrence_reference`. The backward is hand-written: it
recomputes F from checkpoints saved every ``checkpoint_interval`` steps, so activation memory is the per-step
vectors plus ``B·T/k`` copies of F (k ≥ √T) instead of several copies of F per step.
"""
from __future__ import annotations

import math
from types import ModuleType
from typing import Any, NamedTuple, Optional

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from fwm_rl.fused.extension import load_extension

SUPPORTED_DTYPES = (torch.float32, torch.float64)
# A segment of F recomputed in the backward should stay near a core's cache: about 1 MiB, and at least √T steps.
SEGMENT_BYTES = 1 << 20


def unsupported_reason(inputs: NamedTuple, kernel: Optional[ModuleType]) -> Optional[str]:
    """Why the fused kernel cannot take these inputs (a device, a dtype, no reads, d > MAX_DIM), or None if it can.

    :param inputs: a ``RecurrenceInputs`` whose shapes have been checked
    :param kernel: the loaded extension (for its ``MAX_DIM``), or None
    """
    floats = inputs[:-1]
    devices = sorted({str(t.device) for t in inputs})
    dtypes = sorted({str(t.dtype) for t in floats})
    if devices != ["cpu"]:
        return f"inputs on {devices}; the fused kernel runs on CPU only"
    if len(dtypes) > 1 or floats[0].dtype not in SUPPORTED_DTYPES:
        return f"inputs of dtype {dtypes}; the fused kernel takes one dtype, float32 or float64"
    n_reads, d = inputs.read_edges.shape[2], inputs.values.shape[2]
    if n_reads < 1:
        return f"N_r = {n_reads}; the fused kernel needs at least one read"
    if kernel is not None and d > kernel.MAX_DIM:
        return f"d = {d}; the fused kernel takes d <= {kernel.MAX_DIM}"
    return None


def checkpoint_interval(steps: int, dim: int, itemsize: int) -> int:
    """Steps between saved copies of F: max(√T, steps whose F fit in SEGMENT_BYTES), within [1, T]."""
    if steps <= 0:
        return 1
    return min(steps, max(math.isqrt(steps - 1) + 1, SEGMENT_BYTES // (dim**3 * itemsize)))


class FusedRecurrence(torch.autograd.Function):
    """Autograd wrapper of the extension's forward and backward over the fields of a ``RecurrenceInputs``."""

    N_CONSTANTS = 4  # make_inputs, write_scale, eps, read_mask: the arguments before the tensors

    @staticmethod
    def forward(ctx: Any, make_inputs: Any, write_scale: float, eps: float, read_mask: Optional[Tensor],
                *tensors: Tensor) -> tuple[Tensor, Tensor]:
        inputs = make_inputs(tensors)
        T, _, d = inputs.values.shape
        every = checkpoint_interval(T, d, inputs.values.element_size())
        save = any(ctx.needs_input_grad)
        reads, final, saved = load_extension().module.forward(inputs, write_scale, eps, every, save, read_mask)
        if save:
            ctx.save_for_backward(*inputs, *saved)
            ctx.constants = (make_inputs, write_scale, eps, every, read_mask)
        return reads, final

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_reads: Optional[Tensor], grad_final: Optional[Tensor]) -> tuple[Optional[Tensor], ...]:
        make_inputs, write_scale, eps, every, read_mask = ctx.constants
        n_inputs = len(ctx.needs_input_grad) - FusedRecurrence.N_CONSTANTS
        inputs, saved = make_inputs(ctx.saved_tensors[:n_inputs]), list(ctx.saved_tensors[n_inputs:])
        grad_reads = torch.zeros_like(inputs.values) if grad_reads is None else grad_reads.contiguous()
        grad_final = torch.zeros_like(inputs.fast_weights) if grad_final is None else grad_final.contiguous()
        grads = load_extension().module.backward(grad_reads, grad_final, inputs, saved, write_scale, eps, every,
                                                 read_mask)
        needs = ctx.needs_input_grad[FusedRecurrence.N_CONSTANTS:]
        return (*[None] * FusedRecurrence.N_CONSTANTS, *(g if need else None for g, need in zip(grads, needs)), None)


def fwm_recurrence_fused(inputs: NamedTuple, write_scale: float, eps: float, read_mask: Optional[Tensor] = None
                         ) -> tuple[Tensor, Tensor]:
    """Fused FWM recurrence; the caller checks :func:`unsupported_reason` and that the extension loaded.

    :param inputs: a ``RecurrenceInputs`` (shapes as in :func:`fwm_rl.recurrence.fwm_recurrence_reference`)
    :param eps: the LayerNorm epsilon
    :param read_mask: ``[T, B]`` bool or None, as in :func:`fwm_rl.recurrence.fwm_recurrence_reference`
    """
    *floats, starts = (t.contiguous() for t in inputs)
    mask = None if read_mask is None else read_mask.to(torch.bool).contiguous()
    return FusedRecurrence.apply(type(inputs)._make, float(write_scale), float(eps), mask, *floats,
                                 starts.to(torch.bool).contiguous())
