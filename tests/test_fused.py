"""The fused C++ FWM recurrence equals the PyTorch reference (outputs and every gradient), and the dispatcher falls
back to the reference, warning once, where the kernel is unavailable."""
from __future__ import annotations

import os
import subprocess
import sys
import warnings
from contextlib import contextmanager
from typing import Iterator

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

import fwm_rl.fused.function as fused_function
from fwm_rl import recurrence
from fwm_rl.fused import load_extension
from fwm_rl.recurrence import fwm_recurrence

needs_kernel = pytest.mark.skipif(
    load_extension().module is None, reason=f"fused kernel unavailable: {load_extension().reason}"
)
GRAD_NAMES = ("keys_s", "keys_r", "values", "beta", "read_queries", "read_edges", "fast_weights")


def make_inputs(T: int, B: int, d: int, n_reads: int, dtype: torch.dtype = torch.float64, seed: int = 0,
                f0_scale: float = 0.3) -> tuple[list[Tensor], Tensor]:
    """Random inputs like the FWM core's; every row resets at its own random steps."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    tensors = [
        torch.tanh(randn(T, B, d)), torch.tanh(randn(T, B, d)), torch.tanh(randn(T, B, d)),
        torch.sigmoid(randn(T, B) + 1), randn(T, B, d), torch.tanh(randn(T, B, n_reads, d)),
        f0_scale * randn(B, d, d, d),
    ]
    starts = torch.rand(T, B, generator=g) < 0.25
    return [t.to(dtype) for t in tensors], starts


def run_with_grads(implementation: str, tensors: list[Tensor], starts: Tensor, write_scale: float,
                   seed: int = 1) -> list[Tensor]:
    """[reads, final F, grads of the 7 inputs] for a loss with random weights on the reads and on the final F."""
    inputs = [t.detach().clone().requires_grad_() for t in tensors]
    reads, final = fwm_recurrence(*inputs, starts, write_scale, implementation=implementation)
    g = torch.Generator().manual_seed(seed)
    w_reads = torch.randn(reads.shape, generator=g, dtype=torch.float64).to(reads.dtype)
    w_final = torch.randn(final.shape, generator=g, dtype=torch.float64).to(final.dtype)
    ((reads * w_reads).sum() + (final * w_final).sum()).backward()
    return [reads.detach(), final.detach(), *(x.grad for x in inputs)]


def assert_all_close(actual: list[Tensor], expected: list[Tensor], rel: float) -> None:
    """Every pair agrees to ``rel`` times the larger of 1e-3 and the expected tensor's largest magnitude."""
    for name, a, e in zip(("reads", "final F", *GRAD_NAMES), actual, expected):
        scale = max(e.abs().max().item(), 1e-3)
        err = (a.double() - e.double()).abs().max().item()
        assert err <= rel * scale, f"{name}: max error {err:.3g} vs scale {scale:.3g}"


@contextmanager
def short_segments() -> Iterator[None]:
    """Checkpoint every ⌈√T⌉ steps, so that short test sequences cover several recomputed segments."""
    saved = fused_function.SEGMENT_BYTES
    fused_function.SEGMENT_BYTES = 0
    try:
        yield
    finally:
        fused_function.SEGMENT_BYTES = saved


def naive_recurrence(tensors: list[Tensor], starts: Tensor, write_scale: float, eps: float = 1e-5
                     ) -> tuple[Tensor, Tensor]:
    """The recurrence written from the spec, one row and one step at a time on single d×d×d tensors."""
    keys_s, keys_r, values, beta, queries, edges, F0 = tensors
    T, B, d = values.shape
    reads, finals = [], []
    for b in range(B):
        F, row_reads = F0[b], []
        for t in range(T):
            if starts[t, b]:
                F = torch.zeros_like(F)
            K = torch.outer(keys_s[t, b], keys_r[t, b])
            v_old = (K[:, :, None] * F).sum((0, 1))
            F = F + write_scale * beta[t, b] * K[:, :, None] * (values[t, b] - v_old)[None, None, :]
            F = F / torch.clamp(torch.sqrt((F * F).sum()), min=1.0)
            n = queries[t, b]
            for i in range(edges.shape[2]):
                z = (n[:, None, None] * edges[t, b, i][None, :, None] * F).sum((0, 1))
                n = (z - z.mean()) / torch.sqrt(((z - z.mean()) ** 2).mean() + eps)
            row_reads.append(n)
        reads.append(torch.stack(row_reads))
        finals.append(F)
    return torch.stack(reads, dim=1), torch.stack(finals)


@needs_kernel
def test_fused_equals_naive_per_row_oracle_float64():
    tensors, starts = make_inputs(T=6, B=3, d=5, n_reads=3, f0_scale=0.5)
    with short_segments():
        reads, final = fwm_recurrence(*tensors, starts, 0.8, implementation="fused")
    naive_reads, naive_final = naive_recurrence(tensors, starts, 0.8)
    torch.testing.assert_close(reads, naive_reads, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(final, naive_final, rtol=1e-10, atol=1e-10)


@needs_kernel
@pytest.mark.parametrize(
    "T, B, d, n_reads, write_scale, f0_scale",
    [
        (9, 3, 16, 3, 1 / 16, 0.0),  # meta-RL shape family, F₀ = 0, the norm clamp mostly idle
        (8, 2, 32, 3, 1 / 32, 0.02),  # catbAbI shape family (specialised d = 32 kernel)
        (11, 4, 5, 1, 1.0, 0.5),  # λ = 1 (LM preset): the clamp engages
        (7, 3, 8, 2, 0.3, 0.3),
    ],
)
def test_fused_matches_reference_float64_with_resets_and_checkpoints(T, B, d, n_reads, write_scale, f0_scale):
    tensors, starts = make_inputs(T, B, d, n_reads, f0_scale=f0_scale)
    with short_segments():
        fused = run_with_grads("fused", tensors, starts, write_scale)
    assert_all_close(fused, run_with_grads("reference", tensors, starts, write_scale), rel=1e-10)


@needs_kernel
def test_norm_clamp_cases_both_occur_in_the_clamped_test_case():
    tensors, starts = make_inputs(11, 4, 5, 1, f0_scale=0.5)
    _, final = fwm_recurrence(*tensors, starts, 1.0, implementation="fused")
    norms = final.flatten(1).norm(dim=1)
    assert torch.isclose(norms, torch.ones_like(norms)).any(), norms
    tensors, starts = make_inputs(9, 3, 16, 3, f0_scale=0.0)
    _, final = fwm_recurrence(*tensors, starts, 1 / 16, implementation="fused")
    assert (final.flatten(1).norm(dim=1) < 0.999).any()


@needs_kernel
@pytest.mark.parametrize("d", [16, 32, 6])
def test_fused_float32_is_as_accurate_as_the_float32_reference(d):
    tensors, starts = make_inputs(T=16, B=2, d=d, n_reads=3, seed=d)
    exact = run_with_grads("reference", tensors, starts, 1 / d)
    as_float32 = [t.float() for t in tensors]
    assert_all_close(run_with_grads("reference", as_float32, starts, 1 / d), exact, rel=1e-4)
    assert_all_close(run_with_grads("fused", as_float32, starts, 1 / d), exact, rel=1e-4)


@needs_kernel
@pytest.mark.parametrize("implementation", ["fused", "reference"])
def test_carrying_F_across_chunks_equals_one_run(implementation):
    tensors, starts = make_inputs(T=12, B=3, d=6, n_reads=2, f0_scale=0.4)
    whole = run_with_grads(implementation, tensors, starts, 0.5)

    inputs = [t.detach().clone().requires_grad_() for t in tensors]
    *per_step, F0 = inputs
    first, F_mid = fwm_recurrence(*(x[:5] for x in per_step), F0, starts[:5], 0.5, implementation=implementation)
    second, F_end = fwm_recurrence(*(x[5:] for x in per_step), F_mid, starts[5:], 0.5, implementation=implementation)
    reads = torch.cat([first, second])
    g = torch.Generator().manual_seed(1)
    w_reads = torch.randn(reads.shape, generator=g, dtype=torch.float64)
    w_final = torch.randn(F_end.shape, generator=g, dtype=torch.float64)
    ((reads * w_reads).sum() + (F_end * w_final).sum()).backward()
    assert_all_close([reads.detach(), F_end.detach(), *(x.grad for x in inputs)], whole, rel=1e-10)


@needs_kernel
@settings(max_examples=25, deadline=None)
@given(
    T=st.integers(1, 10), B=st.integers(1, 4), d=st.sampled_from([2, 3, 4, 7, 16]), n_reads=st.integers(1, 4),
    write_scale=st.sampled_from([0.05, 0.3, 1.0]), f0_scale=st.sampled_from([0.0, 0.2, 0.6]), seed=st.integers(0, 99),
)
def test_fused_matches_reference_on_random_shapes(T, B, d, n_reads, write_scale, f0_scale, seed):
    tensors, starts = make_inputs(T, B, d, n_reads, seed=seed, f0_scale=f0_scale)
    with short_segments():
        fused = run_with_grads("fused", tensors, starts, write_scale)
    assert_all_close(fused, run_with_grads("reference", tensors, starts, write_scale), rel=1e-9)


@needs_kernel
def test_fused_gradcheck_float64():
    tensors, starts = make_inputs(T=5, B=2, d=3, n_reads=2, f0_scale=0.6, seed=3)
    inputs = [t.detach().clone().requires_grad_() for t in tensors]
    with short_segments():
        assert torch.autograd.gradcheck(
            lambda *xs: fwm_recurrence(*xs, starts, 0.9, implementation="fused"), inputs, eps=1e-6, atol=1e-6
        )


@needs_kernel
def test_auto_takes_the_fused_kernel_for_cpu_float_inputs_and_saves_nothing_without_grad():
    tensors, starts = make_inputs(T=4, B=2, d=4, n_reads=3)
    x = tensors[0].detach().requires_grad_()
    reads, _ = fwm_recurrence(x, *tensors[1:], starts, 0.25)
    assert type(reads.grad_fn).__name__ == "FusedRecurrenceBackward"
    with torch.no_grad():
        reads, final = fwm_recurrence(*tensors, starts, 0.25)
    expected = fwm_recurrence(*tensors, starts, 0.25, implementation="reference")
    torch.testing.assert_close((reads, final), expected, rtol=1e-10, atol=1e-10)


def test_inputs_the_kernel_cannot_take_go_to_the_reference_or_raise():
    tensors, starts = make_inputs(T=3, B=2, d=4, n_reads=2, dtype=torch.bfloat16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning: the dtype is unsupported by design
        reads, _ = fwm_recurrence(*tensors, starts, 0.25)
    assert reads.dtype == torch.bfloat16 and reads.grad_fn is None
    with pytest.raises(ValueError, match="float32 or float64"):
        fwm_recurrence(*tensors, starts, 0.25, implementation="fused")
    meta = [t.float().to("meta") for t in tensors]
    with pytest.raises(ValueError, match="CPU only"):
        fwm_recurrence(*meta, starts.to("meta"), 0.25, implementation="fused")


def test_bad_shapes_and_implementation_names_raise_value_errors():
    tensors, starts = make_inputs(T=3, B=2, d=4, n_reads=2)
    with pytest.raises(ValueError, match="beta"):
        fwm_recurrence(*tensors[:3], tensors[3][:, :1], *tensors[4:], starts, 0.25)
    with pytest.raises(ValueError, match="read_edges"):
        fwm_recurrence(*tensors[:5], tensors[5][..., :3], tensors[6], starts, 0.25)
    with pytest.raises(ValueError, match="unknown FWM recurrence implementation"):
        fwm_recurrence(*tensors, starts, 0.25, implementation="cuda")


@pytest.fixture
def unavailable_kernel(monkeypatch, tmp_path, request):
    """The kernel made unavailable, by FWM_RL_NO_FUSED or by a compiler that does not exist."""
    if request.param == "disabled":
        monkeypatch.setenv("FWM_RL_NO_FUSED", "1")
    else:
        monkeypatch.setenv("FWM_RL_EXTENSIONS_DIR", str(tmp_path))
        monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    load_extension.cache_clear()
    recurrence._warn_fallback.cache_clear()
    yield request.param
    load_extension.cache_clear()
    recurrence._warn_fallback.cache_clear()


@pytest.mark.parametrize("unavailable_kernel", ["disabled", "no compiler"], indirect=True)
def test_fallback_gives_the_reference_and_warns_once(unavailable_kernel):
    tensors, starts = make_inputs(T=5, B=2, d=4, n_reads=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = fwm_recurrence(*tensors, starts, 0.25)
        second = fwm_recurrence(*tensors, starts, 0.25)
    fallback = [w for w in caught if "fused FWM recurrence unavailable" in str(w.message)]
    assert len(fallback) == 1 and "\n" not in str(fallback[0].message)
    expected = fwm_recurrence(*tensors, starts, 0.25, implementation="reference")
    for result in (first, second):
        assert all(torch.equal(a, b) for a, b in zip(result, expected))
    with pytest.raises(RuntimeError, match="FWM_RL_NO_FUSED" if unavailable_kernel == "disabled" else "build"):
        fwm_recurrence(*tensors, starts, 0.25, implementation="fused")


def test_build_ext_exits_zero_without_a_compiler(tmp_path):
    env = {**os.environ, "FWM_RL_EXTENSIONS_DIR": str(tmp_path), "CXX": str(tmp_path / "no-such-compiler")}
    result = subprocess.run([sys.executable, "-m", "fwm_rl.build_ext"], env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert "could not build" in result.stdout
