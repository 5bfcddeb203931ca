"""The fast-weight recurrence of the FWM, behind one function.

Everything of the FWM that does not depend on F (the slow LSTM, the write and read projections, their
nonlinearities) is computed for all steps at once by the core; only this loop is sequential. A fused kernel may
replace the PyTorch reference here; the reference stays as its specification. On CPU the dispatcher uses the fused
C++ kernel of :mod:`fwm_rl.fused` (built by ``python -m fwm_rl.build_ext``); on other devices, or where the kernel
cannot be built or is disabled with ``FWM_RL_NO_FUSED=1``, it runs the reference.

The inputs travel as one :class:`RecurrenceInputs` (the C++ kernel has the same struct). Per step t and batch row
b (F is d×d×d, F₀ given, LN is a LayerNorm over d with no affine parameters):
    F  ← 0 where episode_starts[t, b]                (a select: a NaN or Inf in F is cleared too)
    K  = k_s ⊗ k_r                                   (d×d)
    v̂  = Σ_ij K_ij F_ij:                             (old value under the key)
    F  ← F + λ β K ⊗ (v − v̂)                         (delta rule)
    F  ← F / max(1, ‖F‖_F)                           (norm clamp over the whole tensor)
    n  = n⁽⁰⁾;  for i in 1..N_r:  n ← LN(Σ_ab n_a e⁽ⁱ⁾_b F_ab:)   (write before read)
"""
from __future__ import annotations

import functools
import warnings
from typing import NamedTuple

import torch
import torch.nn.functional as nnf
from torch import Tensor

from fwm_rl.fused import fwm_recurrence_fused, load_extension, unsupported_reason

LAYER_NORM_EPS = 1e-5
IMPLEMENTATIONS = ("auto", "reference", "fused")


class RecurrenceInputs(NamedTuple):
    """Everything the FWM recurrence reads, per step and per batch row (the C++ kernel's ``RecurrenceInputs``)."""

    keys_s: Tensor
    """source keys k_s ``[T, B, d]``"""
    keys_r: Tensor
    """relation keys k_r ``[T, B, d]``"""
    values: Tensor
    """values v ``[T, B, d]``"""
    beta: Tensor
    """write strengths β ``[T, B]``"""
    read_queries: Tensor
    """first read vectors n⁽⁰⁾ ``[T, B, d]``"""
    read_edges: Tensor
    """read edges e⁽¹⁾..e⁽ᴺʳ⁾ ``[T, B, N_r, d]``"""
    fast_weights: Tensor
    """F before step 0 ``[B, d, d, d]``"""
    episode_starts: Tensor
    """``[T, B]`` bool; F is set to zero before the step where it is set"""

    def check_shapes(self) -> None:
        """``ValueError`` naming the first field whose shape disagrees with ``values [T, B, d]``."""
        if self.values.dim() != 3:
            raise ValueError(f"values must be [T, B, d], got shape {tuple(self.values.shape)}")
        T, B, d = self.values.shape
        expected = {"keys_s": (T, B, d), "keys_r": (T, B, d), "beta": (T, B), "read_queries": (T, B, d),
                    "fast_weights": (B, d, d, d), "episode_starts": (T, B)}
        for name, shape in expected.items():
            if tuple(getattr(self, name).shape) != shape:
                raise ValueError(f"{name} must have shape {shape} for values of shape {(T, B, d)}, "
                                 f"got {tuple(getattr(self, name).shape)}")
        edges = self.read_edges
        if edges.dim() != 4 or tuple(edges.shape[:2]) != (T, B) or edges.shape[3] != d:
            raise ValueError(f"read_edges must have shape {(T, B, 'N_r', d)}, got {tuple(edges.shape)}")


def fwm_recurrence_reference(inputs: RecurrenceInputs, write_scale: float) -> tuple[Tensor, Tensor]:
    """PyTorch reference of the FWM recurrence (the specification of the fused kernel).

    :param inputs: the per-step inputs and F₀ (shapes in :class:`RecurrenceInputs`)
    :param write_scale: λ
    :return: reads n⁽ᴺʳ⁾ ``[T, B, d]`` and F after the last step ``[B, d, d, d]``
    """
    keys_s, keys_r, values, beta, read_queries, read_edges, F, episode_starts = inputs
    T, B, d = values.shape
    reads = []
    for t in range(T):
        F = torch.where(episode_starts[t].view(B, 1, 1, 1), F.new_zeros(()), F)
        key = keys_s[t].unsqueeze(2) * keys_r[t].unsqueeze(1)  # (B, d, d)
        v_old = torch.einsum("bij,bijk->bk", key, F)  # (B, d)
        update = (write_scale * beta[t]).view(B, 1) * (values[t] - v_old)  # (B, d)
        F = F + key.unsqueeze(3) * update.view(B, 1, 1, d)
        F = F / F.flatten(1).norm(dim=1).clamp(min=1.0).view(B, 1, 1, 1)
        n = read_queries[t]
        for i in range(read_edges.shape[2]):
            n = torch.einsum("bi,bj,bijk->bk", n, read_edges[t, :, i], F)  # (B, d)
            n = nnf.layer_norm(n, (d,), eps=LAYER_NORM_EPS)
        reads.append(n)
    return torch.stack(reads), F


@functools.cache
def _warn_fallback(reason: str) -> None:
    """Warn, once per process and reason, that "auto" runs the slow reference on CPU."""
    warnings.warn(f"fwm_rl: fused FWM recurrence unavailable ({reason}); using the PyTorch reference", stacklevel=3)


def fwm_recurrence(inputs: RecurrenceInputs, write_scale: float, implementation: str = "auto"
                   ) -> tuple[Tensor, Tensor]:
    """The FWM recurrence (same arguments and results as :func:`fwm_recurrence_reference`).

    :param implementation: "reference" (the PyTorch loop), "fused" (the C++ kernel: CPU, float32/float64, d ≤
        ``MAX_DIM`` of the kernel; ``ValueError`` for other inputs, ``RuntimeError`` if the kernel is unavailable) or
        "auto" (fused where it can run, else the reference, with a one-time warning where only the kernel's absence
        prevents it)
    """
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"unknown FWM recurrence implementation {implementation!r}; expected one of {IMPLEMENTATIONS}")
    inputs = RecurrenceInputs(*inputs)
    inputs.check_shapes()
    if implementation != "reference":
        status = load_extension()
        unsupported = unsupported_reason(inputs, status.module)
        if status.module is not None and unsupported is None:
            return fwm_recurrence_fused(inputs, write_scale, LAYER_NORM_EPS)
        if implementation == "fused" and unsupported is not None:
            raise ValueError(f"implementation='fused' cannot take these inputs: {unsupported}")
        if implementation == "fused":
            raise RuntimeError(f"implementation='fused' is unavailable: {status.reason}")
        if unsupported is None:
            _warn_fallback(status.reason)
    return fwm_recurrence_reference(inputs, write_scale)
