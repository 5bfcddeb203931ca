"""The fast-weight recurrence of the FWM, behind one function.

Everything of the FWM that does not depend on F (the slow LSTM, the write and read projections, their
nonlinearities) is computed for all steps at once by the core; only this loop is sequential. Two faster forms may
replace the PyTorch reference here; the reference stays as their specification:

* "chunked" (:mod:`fwm_rl.chunked`): the recurrence in low-rank form over chunks of steps, as batched matrix
  products around a short scan (C++ on CPU where the extension is built, PyTorch elsewhere); any device.
* "fused": the C++ kernel of :mod:`fwm_rl.fused` (built by ``python -m fwm_rl.build_ext``), one pass over F per
  step; CPU only.

"auto" takes "chunked" off CPU, and on CPU for sequences of ``CHUNKED_MIN_STEPS`` steps or more that start from a
fresh F₀ (every row starts an episode at step 0, or F₀ is a zero that needs no gradient: a PPO minibatch of whole
episodes) or of ``CHUNKED_MIN_STEPS_CARRIED`` steps or more that carry F₀ in (windows of a long stream); it takes
"fused" for the rest (a rollout's single steps), where the kernel can run; otherwise the reference.
``FWM_RL_NO_FUSED=1`` disables the extension (the chunked form then runs its PyTorch twins).

The inputs travel as one :class:`RecurrenceInputs` (the C++ kernel has the same struct). Per step t and batch row
b (F is d×d×d, F₀ given, LN is a LayerNorm over d with no affine parameters):
    F  ← 0 where episode_starts[t, b]                (a select: a NaN or Inf in F is cleared too)
    K  = k_s ⊗ k_r                                   (d×d)
    v̂  = Σ_ij K_ij F_ij:                             (old value under the key)
    F  ← F + λ β K ⊗ (v − v̂)                         (delta rule)
    F  ← F / max(1, ‖F‖_F)                           (norm clamp over the whole tensor)
    n  = n⁽⁰⁾;  for i in 1..N_r:  n ← LN(Σ_ab n_a e⁽ⁱ⁾_b F_ab:)   (write before read)

The reads feed only the output, never F. An optional ``read_mask`` (``[T, B]`` or ``[T]`` bool, True where the
read is wanted) skips them, and their backward, where it is False: the reads there are zero and carry no gradient,
F and every other result are unchanged. A loss taken only where the mask is True is therefore the same, and so are
its gradients; without a mask every step reads.
"""
from __future__ import annotations

import functools
import warnings
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as nnf
from torch import Tensor

from fwm_rl.chunked import fwm_recurrence_chunked, reads_F0
from fwm_rl.fused import fwm_recurrence_fused, load_extension, unsupported_reason

LAYER_NORM_EPS = 1e-5
IMPLEMENTATIONS = ("auto", "reference", "fused", "chunked")
# "auto" takes the chunked form on CPU from this many steps on, from a fresh F₀ and with F₀ carried in (measured in
# docs/results/fused.md, "Rank-1 products in C++": carrying F₀ costs the chunked form its products with F₀)
CHUNKED_MIN_STEPS = 8
CHUNKED_MIN_STEPS_CARRIED = 64


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


def check_read_mask(read_mask: Optional[Tensor], values: Tensor) -> Optional[Tensor]:
    """``read_mask`` as a ``[T, B]`` bool tensor (a ``[T]`` one broadcast over the batch), or None for none;
    ``ValueError`` naming it for another shape, dtype or device than ``values [T, B, d]`` allows."""
    if read_mask is None:
        return None
    T, B, _ = values.shape
    if not isinstance(read_mask, Tensor) or read_mask.dtype != torch.bool:
        kind = read_mask.dtype if isinstance(read_mask, Tensor) else type(read_mask).__name__
        raise ValueError(f"read_mask must be a bool tensor of shape [T, B] or [T], got {kind}")
    if tuple(read_mask.shape) not in ((T, B), (T,)):
        raise ValueError(f"read_mask must have shape {(T, B)} or {(T,)} for values of shape {tuple(values.shape)}, "
                         f"got {tuple(read_mask.shape)}")
    if read_mask.device != values.device:
        raise ValueError(f"read_mask is on {read_mask.device}, values on {values.device}")
    return read_mask.view(T, 1).expand(T, B) if read_mask.dim() == 1 else read_mask


def fwm_recurrence_reference(inputs: RecurrenceInputs, write_scale: float, read_mask: Optional[Tensor] = None
                             ) -> tuple[Tensor, Tensor]:
    """PyTorch reference of the FWM recurrence (the specification of the fused kernel).

    :param inputs: the per-step inputs and F₀ (shapes in :class:`RecurrenceInputs`)
    :param write_scale: λ
    :param read_mask: ``[T, B]`` bool (checked by :func:`check_read_mask`) or None: reads are made only where it
        is True (and at a step only if some row's is), zero elsewhere
    :return: reads n⁽ᴺʳ⁾ ``[T, B, d]`` and F after the last step ``[B, d, d, d]``
    """
    keys_s, keys_r, values, beta, read_queries, read_edges, F, episode_starts = inputs
    T, B, d = values.shape
    any_read = [True] * T if read_mask is None else read_mask.any(dim=1).tolist()
    reads = []
    for t in range(T):
        F = torch.where(episode_starts[t].view(B, 1, 1, 1), F.new_zeros(()), F)
        key = keys_s[t].unsqueeze(2) * keys_r[t].unsqueeze(1)  # (B, d, d)
        v_old = torch.einsum("bij,bijk->bk", key, F)  # (B, d)
        update = (write_scale * beta[t]).view(B, 1) * (values[t] - v_old)  # (B, d)
        F = F + key.unsqueeze(3) * update.view(B, 1, 1, d)
        F = F / F.flatten(1).norm(dim=1).clamp(min=1.0).view(B, 1, 1, 1)
        if not any_read[t]:
            reads.append(values.new_zeros(B, d))
            continue
        n = read_queries[t]
        for i in range(read_edges.shape[2]):
            n = torch.einsum("bi,bj,bijk->bk", n, read_edges[t, :, i], F)  # (B, d)
            n = nnf.layer_norm(n, (d,), eps=LAYER_NORM_EPS)
        reads.append(n if read_mask is None else torch.where(read_mask[t].view(B, 1), n, n.new_zeros(())))
    return torch.stack(reads), F


@functools.cache
def _warn_fallback(reason: str) -> None:
    """Warn, once per process and reason, that "auto" runs the slow reference on CPU."""
    warnings.warn(f"fwm_rl: fused FWM recurrence unavailable ({reason}); using the PyTorch reference", stacklevel=3)


def _chunked_pays(inputs: RecurrenceInputs) -> bool:
    """Whether "auto" takes the chunked form: off CPU, or from ``CHUNKED_MIN_STEPS`` steps on (from a fresh F₀) or
    ``CHUNKED_MIN_STEPS_CARRIED`` (with F₀ carried in)."""
    T = len(inputs.values)
    if inputs.values.device.type != "cpu":
        return True
    if T < CHUNKED_MIN_STEPS:
        return False
    return T >= CHUNKED_MIN_STEPS_CARRIED or not reads_F0(inputs.fast_weights, inputs.episode_starts[0])


def fwm_recurrence(inputs: RecurrenceInputs, write_scale: float, implementation: str = "auto",
                   read_mask: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """The FWM recurrence (same arguments and results as :func:`fwm_recurrence_reference`).

    :param read_mask: ``[T, B]`` or ``[T]`` bool, True where the reads are wanted; None (the default) reads at every
        step (see the module docstring)
    :param implementation: "reference" (the PyTorch loop), "chunked" (batched products, any device and float
        dtype; inputs that are not all finite run the reference, whose resets clear them), "fused" (the C++ kernel:
        CPU, float32/float64, d ≤ ``MAX_DIM`` of the kernel; ``ValueError`` for other inputs, ``RuntimeError`` if the
        kernel is unavailable) or "auto" (chunked off CPU and for long enough sequences, see the module docstring;
        else fused where it can run, else the reference, with a one-time warning where only the kernel's absence
        prevents it)
    """
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"unknown FWM recurrence implementation {implementation!r}; expected one of {IMPLEMENTATIONS}")
    inputs = RecurrenceInputs(*inputs)
    inputs.check_shapes()
    read_mask = check_read_mask(read_mask, inputs.values)
    dtypes = sorted({str(x.dtype) for x in inputs[:-1]})
    if implementation == "auto" and len(dtypes) == 1 and _chunked_pays(inputs):
        implementation = "chunked"
    if implementation == "chunked":
        if len(dtypes) > 1:
            raise ValueError(f"implementation='chunked' takes inputs of one dtype, got {dtypes}")
        if not all(bool(torch.isfinite(x).all()) for x in inputs[:-1]):
            return fwm_recurrence_reference(inputs, write_scale, read_mask)
        return fwm_recurrence_chunked(inputs, write_scale, LAYER_NORM_EPS, read_mask)
    if implementation != "reference":
        status = load_extension()
        unsupported = unsupported_reason(inputs, status.module)
        if status.module is not None and unsupported is None:
            return fwm_recurrence_fused(inputs, write_scale, LAYER_NORM_EPS, read_mask)
        if implementation == "fused" and unsupported is not None:
            raise ValueError(f"implementation='fused' cannot take these inputs: {unsupported}")
        if implementation == "fused":
            raise RuntimeError(f"implementation='fused' is unavailable: {status.reason}")
        if unsupported is None:
            _warn_fallback(status.reason)
    return fwm_recurrence_reference(inputs, write_scale, read_mask)
