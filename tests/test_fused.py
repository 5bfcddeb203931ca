"""The fused C++ FWM recurrence equals the PyTorch reference (outputs and every gradient), and the dispatcher falls
back to the reference, warning once, where the kernel is unavailable."""
from __future__ import annotations

import os
import subprocess
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

import fwm_rl.fused.function as fused_function
from fwm_rl import recurrence
from fwm_rl.fused import load_extension
from fwm_rl.recurrence import RecurrenceInputs, fwm_recurrence

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
    reads, final = fwm_recurrence(RecurrenceInputs(*inputs, starts), write_scale, implementation=implementation)
    g = torch.Generator().manual_seed(seed)
    w_reads = torch.randn(reads.shape, generator=g, dtype=torch.float64).to(reads.dtype)
    w_final = torch.randn(final.shape, generator=g, dtype=torch.float64).to(final.dtype)
    ((reads * w_reads).sum() + (final * w_final).sum()).backward()
    return [reads.detach(), final.detach(), *(x.grad for x in inputs)]


def assert_all_close(actual: list[Tensor], expected: list[Tensor], rel: float) -> None:
    """Every pair agrees to ``rel`` times the larger of 1e-3 and the expected tensor's largest magnitude (a gradient
    of None, an input never read, counts as zeros)."""
    for name, a, e in zip(("reads", "final F", *GRAD_NAMES), actual, expected):
        a = torch.zeros_like(e) if a is None else a
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
        reads, final = fwm_recurrence(RecurrenceInputs(*tensors, starts), 0.8, implementation="fused")
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
    _, final = fwm_recurrence(RecurrenceInputs(*tensors, starts), 1.0, implementation="fused")
    norms = final.flatten(1).norm(dim=1)
    assert torch.isclose(norms, torch.ones_like(norms)).any(), norms
    tensors, starts = make_inputs(9, 3, 16, 3, f0_scale=0.0)
    _, final = fwm_recurrence(RecurrenceInputs(*tensors, starts), 1 / 16, implementation="fused")
    assert (final.flatten(1).norm(dim=1) < 0.999).any()


# Float32 error bound, relative to each output's largest magnitude. Float32 rounding differs between CPUs (the
# summation order and the use of FMA follow the vector width that torch and the kernel dispatch to) much as it
# differs between random inputs, so the bound is the worst error over many inputs and every code path, with margin.
# `benchmarks/bench_fused.py --float32-error --seeds 100` (T 16, B 2, N_r 3, d ∈ {6, 16, 32}, each seed's inputs as
# in this test) under ATEN_CPU_CAPABILITY=default, avx2 and avx512 measured at most FLOAT32_WORST_REFERENCE for the
# PyTorch reference and FLOAT32_WORST_FUSED for the kernel (both on the key and value gradients; the reads stay
# below 4e-4). For comparison, √T·d·ε₃₂ = 1.5e-5 at d = 32: the LayerNorms (which divide by the reads' spread) and
# the T-step chain of F amplify rounding by 10-100×, so the model √T·d·ε alone would be too tight.
FLOAT32_WORST_REFERENCE = 5.7e-4
FLOAT32_WORST_FUSED = 5.2e-4
FLOAT32_REL_BOUND = 2.5 * max(FLOAT32_WORST_REFERENCE, FLOAT32_WORST_FUSED)


@needs_kernel
@pytest.mark.parametrize("d", [16, 32, 6])
def test_float32_fused_and_reference_stay_within_the_measured_float32_error_bound(d):
    tensors, starts = make_inputs(T=16, B=2, d=d, n_reads=3, seed=d)
    exact = run_with_grads("reference", tensors, starts, 1 / d)
    as_float32 = [t.float() for t in tensors]
    assert_all_close(run_with_grads("reference", as_float32, starts, 1 / d), exact, rel=FLOAT32_REL_BOUND)
    assert_all_close(run_with_grads("fused", as_float32, starts, 1 / d), exact, rel=FLOAT32_REL_BOUND)


@pytest.mark.parametrize("implementation", ["reference", pytest.param("fused", marks=needs_kernel)])
def test_a_reset_clears_a_non_finite_F_exactly_like_a_fresh_start(implementation):
    tensors, starts = make_inputs(T=6, B=3, d=16, n_reads=3, seed=5)
    starts[0] = True  # every row starts an episode at t = 0 ...
    poisoned = [t.clone() for t in tensors]
    poisoned[6][0] = float("nan")  # ... but F₀ holds NaN in row 0 and ±Inf in row 1
    poisoned[6][1, ::2] = float("inf")
    poisoned[6][1, 1::2] = -float("inf")
    fresh = [t.clone() for t in tensors]
    fresh[6].zero_()
    result = run_with_grads(implementation, poisoned, starts, 1 / 16)
    expected = run_with_grads(implementation, fresh, starts, 1 / 16)
    for name, a, e in zip(("reads", "final F", *GRAD_NAMES), result, expected):
        assert torch.isfinite(a).all(), f"{name} is not finite"
        torch.testing.assert_close(a, e, rtol=0, atol=0, msg=f"{name} differs from a fresh start")
    assert torch.equal(result[-1], torch.zeros_like(result[-1]))  # F₀ is reset before it is read


@needs_kernel
@pytest.mark.parametrize("implementation", ["fused", "reference"])
def test_carrying_F_across_chunks_equals_one_run(implementation):
    tensors, starts = make_inputs(T=12, B=3, d=6, n_reads=2, f0_scale=0.4)
    whole = run_with_grads(implementation, tensors, starts, 0.5)

    inputs = [t.detach().clone().requires_grad_() for t in tensors]
    *per_step, F0 = inputs
    first, F_mid = fwm_recurrence(RecurrenceInputs(*(x[:5] for x in per_step), F0, starts[:5]), 0.5,
                                  implementation=implementation)
    second, F_end = fwm_recurrence(RecurrenceInputs(*(x[5:] for x in per_step), F_mid, starts[5:]), 0.5,
                                   implementation=implementation)
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
            lambda *xs: fwm_recurrence(RecurrenceInputs(*xs, starts), 0.9, implementation="fused"), inputs, eps=1e-6,
            atol=1e-6,
        )


# ----- Read-skipping: an opt-in read mask skips the reads (and their backward) where no output is wanted.
def make_read_mask(T: int, B: int, seed: int = 7, density: float = 0.3) -> Tensor:
    """A ``[T, B]`` mask with about ``density`` of the entries set, step 1 read by no row and step 0 by every row."""
    mask = torch.rand(T, B, generator=torch.Generator().manual_seed(seed)) < density
    mask[1], mask[0] = False, True
    return mask


def masked_loss_run(implementation: str, tensors: list[Tensor], starts: Tensor, write_scale: float, target: Tensor,
                    read_mask: Tensor | None, split: int | None = None) -> list[Tensor]:
    """[loss, reads at the targets, final F, grads of the 7 inputs] for a loss on the reads at ``target`` only
    (plus one on the final F), the sequence run whole or in two chunks at ``split`` with F carried."""
    inputs = [t.detach().clone().requires_grad_() for t in tensors]
    *per_step, F0 = inputs
    T = starts.shape[0]
    bounds = [(0, T)] if split is None else [(0, split), (split, T)]
    reads, F = [], F0
    for lo, hi in bounds:
        mask = None if read_mask is None else read_mask[lo:hi]
        chunk, F = fwm_recurrence(RecurrenceInputs(*(x[lo:hi] for x in per_step), F, starts[lo:hi]), write_scale,
                                  implementation=implementation, read_mask=mask)
        reads.append(chunk)
    reads = torch.cat(reads)
    g = torch.Generator().manual_seed(1)
    w_reads = torch.randn(reads.shape, generator=g, dtype=torch.float64).to(reads.dtype)
    w_final = torch.randn(F.shape, generator=g, dtype=torch.float64).to(F.dtype)
    loss = (reads * w_reads * target.unsqueeze(-1)).sum() + (F * w_final).sum()
    loss.backward()
    return [loss.detach(), reads.detach()[target], F.detach(), *(x.grad for x in inputs)]


@pytest.mark.parametrize("implementation", ["reference", pytest.param("fused", marks=needs_kernel)])
@pytest.mark.parametrize("split", [None, 5])
def test_skipping_reads_leaves_a_loss_at_the_targets_and_its_gradients_unchanged_float64(implementation, split):
    T, B, d, n_reads = 12, 4, 6, 3
    tensors, starts = make_inputs(T, B, d, n_reads, f0_scale=0.4, seed=2)
    target = make_read_mask(T, B)
    every = run_with_grads("reference", tensors, starts, 0.5)  # the unmasked run reads at every step
    with short_segments():
        skipped = masked_loss_run(implementation, tensors, starts, 0.5, target, target, split)
        full = masked_loss_run(implementation, tensors, starts, 0.5, target, None, split)
    # The forward is the same arithmetic where the reads are made: equal to the last bit.
    assert torch.equal(skipped[1], full[1]) and torch.equal(skipped[2], full[2])
    torch.testing.assert_close(skipped[0], full[0], rtol=1e-12, atol=0)
    assert_all_close(skipped[1:], full[1:], rel=1e-12)
    torch.testing.assert_close(full[1], every[0][target], rtol=1e-10, atol=1e-10)
    # Where the reads were skipped, their inputs get no gradient.
    assert torch.equal(skipped[3 + 4][~target], torch.zeros_like(skipped[3 + 4][~target]))  # read_queries
    assert torch.equal(skipped[3 + 5][~target], torch.zeros_like(skipped[3 + 5][~target]))  # read_edges


@needs_kernel
@pytest.mark.parametrize(
    "T, B, d, n_reads", [(9, 3, 16, 3), (8, 2, 32, 3), (7, 3, 5, 1), (10, 4, 7, 4), (6, 2, 32, 9)]
)
def test_fused_with_a_read_mask_matches_the_reference_float64(T, B, d, n_reads):
    tensors, starts = make_inputs(T, B, d, n_reads, f0_scale=0.3, seed=T)
    mask = make_read_mask(T, B, seed=d)
    results = {}
    for implementation in ("fused", "reference"):
        inputs = [t.detach().clone().requires_grad_() for t in tensors]
        with short_segments():
            reads, final = fwm_recurrence(RecurrenceInputs(*inputs, starts), 0.3, implementation=implementation,
                                          read_mask=mask)
        g = torch.Generator().manual_seed(1)
        ((reads * torch.randn(reads.shape, generator=g, dtype=torch.float64)).sum()
         + (final * torch.randn(final.shape, generator=g, dtype=torch.float64)).sum()).backward()
        results[implementation] = [reads.detach(), final.detach(), *(x.grad for x in inputs)]
    assert torch.equal(results["fused"][0][~mask], torch.zeros_like(results["fused"][0][~mask]))
    assert_all_close(results["fused"], results["reference"], rel=1e-10)


@pytest.mark.parametrize("implementation", ["reference", pytest.param("fused", marks=needs_kernel)])
def test_a_per_step_read_mask_equals_its_broadcast_over_the_batch(implementation):
    tensors, starts = make_inputs(T=7, B=3, d=4, n_reads=2)
    steps = torch.tensor([True, False, False, True, False, True, False])
    inputs = RecurrenceInputs(*tensors, starts)
    per_step = fwm_recurrence(inputs, 0.5, implementation=implementation, read_mask=steps)
    broadcast = fwm_recurrence(inputs, 0.5, implementation=implementation,
                               read_mask=steps.view(7, 1).expand(7, 3).contiguous())
    assert all(torch.equal(a, b) for a, b in zip(per_step, broadcast))


def test_bad_read_masks_raise_value_errors_naming_the_mask():
    tensors, starts = make_inputs(T=3, B=2, d=4, n_reads=2)
    inputs = RecurrenceInputs(*tensors, starts)
    for bad, message in [(torch.ones(3, 2), "bool tensor"), (torch.ones(2, 3, dtype=torch.bool), r"shape \(3, 2\)"),
                         (torch.ones(3, 2, 1, dtype=torch.bool), "shape"), ([True] * 3, "bool tensor"),
                         (torch.ones(3, 2, dtype=torch.bool, device="meta"), "on meta")]:
        with pytest.raises(ValueError, match="read_mask") as error:
            fwm_recurrence(inputs, 0.25, read_mask=bad)
        assert error.match(message)


@needs_kernel
def test_auto_takes_the_fused_kernel_for_cpu_float_inputs_and_saves_nothing_without_grad():
    tensors, starts = make_inputs(T=4, B=2, d=4, n_reads=3)
    x = tensors[0].detach().requires_grad_()
    reads, _ = fwm_recurrence(RecurrenceInputs(x, *tensors[1:], starts), 0.25)
    assert type(reads.grad_fn).__name__ == "FusedRecurrenceBackward"
    inputs = RecurrenceInputs(*tensors, starts)
    with torch.no_grad():
        reads, final = fwm_recurrence(inputs, 0.25)
    expected = fwm_recurrence(inputs, 0.25, implementation="reference")
    torch.testing.assert_close((reads, final), expected, rtol=1e-10, atol=1e-10)


def test_inputs_the_kernel_cannot_take_go_to_the_reference_or_raise():
    tensors, starts = make_inputs(T=3, B=2, d=4, n_reads=2, dtype=torch.bfloat16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning: the dtype is unsupported by design
        reads, _ = fwm_recurrence(RecurrenceInputs(*tensors, starts), 0.25)
    assert reads.dtype == torch.bfloat16 and reads.grad_fn is None
    with pytest.raises(ValueError, match="float32 or float64"):
        fwm_recurrence(RecurrenceInputs(*tensors, starts), 0.25, implementation="fused")
    meta = [t.float().to("meta") for t in tensors]
    with pytest.raises(ValueError, match="CPU only"):
        fwm_recurrence(RecurrenceInputs(*meta, starts.to("meta")), 0.25, implementation="fused")


def test_bad_shapes_and_implementation_names_raise_value_errors():
    tensors, starts = make_inputs(T=3, B=2, d=4, n_reads=2)
    inputs = RecurrenceInputs(*tensors, starts)
    with pytest.raises(ValueError, match="beta"):
        fwm_recurrence(inputs._replace(beta=inputs.beta[:, :1]), 0.25)
    with pytest.raises(ValueError, match="read_edges"):
        fwm_recurrence(inputs._replace(read_edges=inputs.read_edges[..., :3]), 0.25)
    with pytest.raises(ValueError, match="unknown FWM recurrence implementation"):
        fwm_recurrence(inputs, 0.25, implementation="cuda")


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
        first = fwm_recurrence(RecurrenceInputs(*tensors, starts), 0.25)
        second = fwm_recurrence(RecurrenceInputs(*tensors, starts), 0.25)
    fallback = [w for w in caught if "fused FWM recurrence unavailable" in str(w.message)]
    assert len(fallback) == 1 and "\n" not in str(fallback[0].message)
    expected = fwm_recurrence(RecurrenceInputs(*tensors, starts), 0.25, implementation="reference")
    for result in (first, second):
        assert all(torch.equal(a, b) for a, b in zip(result, expected))
    with pytest.raises(RuntimeError, match="FWM_RL_NO_FUSED" if unavailable_kernel == "disabled" else "build"):
        fwm_recurrence(RecurrenceInputs(*tensors, starts), 0.25, implementation="fused")


@pytest.mark.parametrize("unavailable_kernel", ["no compiler"], indirect=True)
def test_a_build_started_by_the_first_call_says_so_once_on_stderr(unavailable_kernel, capsys):
    load_extension()
    load_extension()
    message = capsys.readouterr().err
    assert message.count("fwm_rl: compiling the fused FWM kernel into") == 1 and "make install" in message


def _assert_build_ext_exits_zero_without_a_compiler(cache: Path) -> None:
    """``python -m fwm_rl.build_ext`` with the extension cache in ``cache`` and no C++ compiler: it reports the
    failed build and exits 0 (the reference recurrence serves)."""
    env = {**os.environ, "FWM_RL_EXTENSIONS_DIR": str(cache), "CXX": str(cache / "no-such-compiler")}
    result = subprocess.run([sys.executable, "-m", "fwm_rl.build_ext"], env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert "could not build" in result.stdout


def test_build_ext_exits_zero_without_a_compiler(tmp_path):
    _assert_build_ext_exits_zero_without_a_compiler(tmp_path)


def test_a_build_left_half_done_by_a_killed_process_does_not_make_the_next_build_wait_forever(tmp_path, monkeypatch):
    from fwm_rl.fused.extension import build_directory

    monkeypatch.setenv("FWM_RL_EXTENSIONS_DIR", str(tmp_path))
    stale = build_directory()
    stale.mkdir(parents=True)
    (stale / "lock").touch()  # torch's build baton, as a build killed mid-compile leaves it
    _assert_build_ext_exits_zero_without_a_compiler(tmp_path)


def test_two_checkouts_of_the_same_source_build_into_their_own_directories(tmp_path, monkeypatch):
    """ninja rebuilds when a source path changes: a shared directory would be rebuilt by each checkout in turn."""
    import shutil

    from fwm_rl.fused import extension

    here = extension.build_directory()
    copy = tmp_path / "other-checkout"
    shutil.copytree(extension.SOURCES[0].parent, copy)
    monkeypatch.setattr(extension, "SOURCES", tuple(copy / source.name for source in extension.SOURCES))
    monkeypatch.setattr(extension, "HEADERS", tuple(copy / header.name for header in extension.HEADERS))
    assert extension.build_directory() != here
    assert extension.build_directory() == extension.build_directory()

# ----- Checked entry points: every malformed call to the kernel's exported functions raises, naming the argument.
IN_SUBPROCESS = "FWM_RL_MALFORMED_CALLS"
INPUT_LAYOUTS = {"keys_s": "TBd", "keys_r": "TBd", "values": "TBd", "beta": "TB", "read_queries": "TBd",
                 "read_edges": "TBNd", "fast_weights": "Bddd", "episode_starts": "TB"}


def _valid_call(dtype: torch.dtype = torch.float64, T: int = 3, B: int = 2, d: int = 4, n_reads: int = 2):
    """Valid inputs of the extension's forward and backward, and the tensors the forward saved."""
    tensors, starts = make_inputs(T, B, d, n_reads, dtype=dtype)
    inputs = RecurrenceInputs(*tensors, starts)
    ext = load_extension().module
    reads, final, saved = ext.forward(inputs, 0.5, 1e-5, 2, True)
    return ext, inputs, saved, torch.ones_like(reads), torch.ones_like(final)


def _valid_read_mask(inputs: RecurrenceInputs) -> Tensor:
    return torch.ones(inputs.beta.shape, dtype=torch.bool)


def _malformed(x: Tensor, layout: str, how: str) -> Tensor:
    """``x`` made wrong in one way: rank, d, T, B, contiguity or dtype."""
    if how == "rank":
        return x.unsqueeze(0)
    if how == "non-contiguous":
        return x.new_empty(*x.shape[:-1], 2 * x.shape[-1])[..., ::2].copy_(x)
    if how == "dtype":
        return x.float() if x.dtype == torch.float64 else x.double()
    dim = layout.find(how) if how != "d" else layout.rfind("d")
    return torch.cat([x, x.narrow(dim, 0, 1)], dim) if dim >= 0 else x.unsqueeze(0)


def _read_mask_cases(entry: str):
    for how in ("rank", "T", "B", "non-contiguous", "dtype"):
        yield pytest.param("read_mask", how, id=f"{entry}-read_mask-{how}")


def _forward_cases():
    for name, layout in INPUT_LAYOUTS.items():
        for how in ("rank", "d", "T", "B", "non-contiguous", "dtype"):
            if how == "d" and "d" not in layout or how in "TB" and how not in layout:
                continue
            yield pytest.param(name, how, id=f"forward-{name}-{how}")
    yield from _read_mask_cases("forward")


def _backward_cases():
    for name, layout in {"grad_reads": "TBd", "grad_final": "Bddd", "vhat": "TBd", "norm": "TB", "z": "TBNd",
                         "ckpt": "Bnx", **INPUT_LAYOUTS}.items():
        for how in ("rank", "T", "B", "non-contiguous", "dtype"):
            if how in "TB" and how not in layout:
                continue
            yield pytest.param(name, how, id=f"backward-{name}-{how}")
    yield from _read_mask_cases("backward")


@pytest.mark.skipif(os.environ.get(IN_SUBPROCESS) != "1", reason="run by the subprocess test below")
@pytest.mark.parametrize("name, how", list(_forward_cases()))
def test_malformed_forward_call_raises_naming_the_argument(name, how):
    ext, inputs, _, _, _ = _valid_call()
    if name == "read_mask":
        with pytest.raises(RuntimeError, match=name):
            ext.forward(inputs, 0.5, 1e-5, 2, True, _malformed(_valid_read_mask(inputs), "TB", how))
        return
    bad = inputs._replace(**{name: _malformed(getattr(inputs, name), INPUT_LAYOUTS[name], how)})
    with pytest.raises(RuntimeError, match=name):
        ext.forward(bad, 0.5, 1e-5, 2, True)


@pytest.mark.skipif(os.environ.get(IN_SUBPROCESS) != "1", reason="run by the subprocess test below")
@pytest.mark.parametrize("name, how", list(_backward_cases()))
def test_malformed_backward_call_raises_naming_the_argument(name, how):
    ext, inputs, saved, grad_reads, grad_final = _valid_call()
    if name == "read_mask":
        with pytest.raises(RuntimeError, match=name):
            ext.backward(grad_reads, grad_final, inputs, saved, 0.5, 1e-5, 2,
                         _malformed(_valid_read_mask(inputs), "TB", how))
        return
    args = {"grad_reads": grad_reads, "grad_final": grad_final, "inputs": inputs,
            "saved": dict(zip(("ckpt", "vhat", "norm", "z"), saved))}
    layout = {"grad_reads": "TBd", "grad_final": "Bddd", "vhat": "TBd", "norm": "TB", "z": "TBNd", "ckpt": "Bnx",
              **INPUT_LAYOUTS}[name]
    if name in args:
        args[name] = _malformed(args[name], layout, how)
    elif name in args["saved"]:
        args["saved"][name] = _malformed(args["saved"][name], layout, how)
    else:
        args["inputs"] = inputs._replace(**{name: _malformed(getattr(inputs, name), layout, how)})
    with pytest.raises(RuntimeError, match=name):
        ext.backward(args["grad_reads"], args["grad_final"], args["inputs"], list(args["saved"].values()), 0.5, 1e-5,
                     2)


SCAN_LAYOUTS = {"key_gram": "BCC", "old_F0": "BCd", "norm0": "B", "write": "BC", "values": "BCd", "starts": "BC"}
SCAN_SAVED_LAYOUTS = {"saved u": "BCd", "saved r": "BCC", "saved s": "BC", "saved vhat": "BCd", "saved q": "BC"}
SCAN_GRAD_LAYOUTS = {"grad_updates": "BCd", "grad_decays": "BCC", "grad_scales": "BC"}


def _valid_scan_call() -> tuple[dict[str, Tensor], list[Tensor], dict[str, Tensor]]:
    """Valid inputs of the extension's scan_forward, its results and the gradients scan_backward takes."""
    g = torch.Generator().manual_seed(0)
    B, C, d = 2, 3, 4
    inputs = {name: torch.randn(*({"B": B, "C": C, "d": d}[axis] for axis in layout), generator=g,
                                dtype=torch.float64) for name, layout in SCAN_LAYOUTS.items()}
    inputs["starts"] = inputs["starts"] > 0
    results = load_extension().module.scan_forward(**inputs)
    grads = {name: torch.ones_like(result) for name, result in zip(SCAN_GRAD_LAYOUTS, results)}
    return inputs, results, grads


def _scan_cases(entry: str, layouts: dict[str, str]):
    for name, layout in layouts.items():
        for how in ("rank", "B", "C", "d", "non-contiguous", "dtype"):
            if how in "BCd" and how not in layout:
                continue
            yield pytest.param(name, how, id=f"{entry}-{name}-{how}")


@pytest.mark.skipif(os.environ.get(IN_SUBPROCESS) != "1", reason="run by the subprocess test below")
@pytest.mark.parametrize("name, how", list(_scan_cases("scan_forward", SCAN_LAYOUTS)))
def test_malformed_scan_forward_call_raises_naming_the_argument(name, how):
    inputs, _, _ = _valid_scan_call()
    inputs[name] = _malformed(inputs[name], SCAN_LAYOUTS[name], how)
    with pytest.raises(RuntimeError, match=name):
        load_extension().module.scan_forward(**inputs)


@pytest.mark.skipif(os.environ.get(IN_SUBPROCESS) != "1", reason="run by the subprocess test below")
@pytest.mark.parametrize("name, how", list(_scan_cases(
    "scan_backward", {**SCAN_GRAD_LAYOUTS, **SCAN_LAYOUTS, **SCAN_SAVED_LAYOUTS})))
def test_malformed_scan_backward_call_raises_naming_the_argument(name, how):
    inputs, results, grads = _valid_scan_call()
    saved = dict(zip(SCAN_SAVED_LAYOUTS, results))
    for args, layouts in ((inputs, SCAN_LAYOUTS), (saved, SCAN_SAVED_LAYOUTS), (grads, SCAN_GRAD_LAYOUTS)):
        if name in args:
            args[name] = _malformed(args[name], layouts[name], how)
    with pytest.raises(RuntimeError, match=name):
        load_extension().module.scan_backward(**grads, **inputs, saved=list(saved.values()))


# The rank-1 products of the chunked form: their arguments, in order, and the layouts of all of them.
RANK_ONE_ENTRIES = {"contract": ("fast_weights", "x", "y"), "rank1_sum": ("x", "y", "w"),
                    "rank_one_grads": ("fast_weights", "x", "y", "grad")}
RANK_ONE_LAYOUTS = {"fast_weights": "Bddd", "x": "BCd", "y": "BCd", "w": "BCd", "grad": "BCd"}


def _rank_one_cases():
    for entry, names in RANK_ONE_ENTRIES.items():
        for name in names:
            for how in ("rank", "B", "C", "d", "non-contiguous", "dtype"):
                if how == "C" and "C" not in RANK_ONE_LAYOUTS[name]:
                    continue
                yield pytest.param(entry, name, how, id=f"{entry}-{name}-{how}")


@pytest.mark.skipif(os.environ.get(IN_SUBPROCESS) != "1", reason="run by the subprocess test below")
@pytest.mark.parametrize("entry, name, how", list(_rank_one_cases()))
def test_malformed_rank_one_call_raises_naming_the_argument(entry, name, how):
    g = torch.Generator().manual_seed(0)
    B, C, d = 2, 3, 4
    args = {arg: torch.randn(*({"B": B, "C": C, "d": d}[axis] for axis in RANK_ONE_LAYOUTS[arg]), generator=g,
                             dtype=torch.float64) for arg in RANK_ONE_ENTRIES[entry]}
    args[name] = _malformed(args[name], RANK_ONE_LAYOUTS[name], how)
    with pytest.raises(RuntimeError, match=rf"\b{name}\b"):
        getattr(load_extension().module, entry)(**args)


@pytest.mark.skipif(os.environ.get(IN_SUBPROCESS) != "1", reason="run by the subprocess test below")
def test_kernel_rejects_d_above_its_limit_a_bad_inputs_tuple_and_a_bad_interval():
    ext = load_extension().module
    d = ext.MAX_DIM + 1
    tensors, starts = make_inputs(T=1, B=1, d=d, n_reads=1, dtype=torch.float32, f0_scale=0.0)
    with pytest.raises(RuntimeError, match=rf"d \(values.shape\[2\]\) must be in \[1, {ext.MAX_DIM}\]"):
        ext.forward(RecurrenceInputs(*tensors, starts), 0.5, 1e-5, 1, False)
    _, inputs, saved, grad_reads, grad_final = _valid_call()
    with pytest.raises(RuntimeError, match="inputs must hold 8 tensors"):
        ext.forward(tuple(inputs)[:7], 0.5, 1e-5, 2, True)
    with pytest.raises(RuntimeError, match="fast_weights must be a tensor"):
        ext.forward(inputs._replace(fast_weights=None), 0.5, 1e-5, 2, True)
    with pytest.raises(RuntimeError, match="checkpoint interval"):
        ext.forward(inputs, 0.5, 1e-5, 0, True)
    with pytest.raises(RuntimeError, match="at least one read"):
        ext.forward(inputs._replace(read_edges=inputs.read_edges[:, :, :0]), 0.5, 1e-5, 2, True)
    with pytest.raises(RuntimeError, match="saved must hold 4 tensors"):
        ext.backward(grad_reads, grad_final, inputs, saved[:3], 0.5, 1e-5, 2)
    with pytest.raises(RuntimeError, match="ckpt must have shape"):  # checkpoints of another interval
        ext.backward(grad_reads, grad_final, inputs, saved, 0.5, 1e-5, 1)
    scan_inputs, results, grads = _valid_scan_call()
    with pytest.raises(RuntimeError, match="saved must hold the 5 results"):
        ext.scan_backward(**grads, **scan_inputs, saved=results[:4])
    pairs = torch.zeros(1, 2, d, dtype=torch.float32)
    with pytest.raises(RuntimeError, match=rf"d \(x.shape\[2\]\) must be in \[1, {ext.MAX_DIM}\]"):
        ext.rank1_sum(pairs, pairs, pairs)
    with pytest.raises(RuntimeError, match="x must be float32 or float64"):
        ext.contract(torch.zeros(1, 2, 2, 2, dtype=torch.int64), *(torch.zeros(1, 2, 2, dtype=torch.int64),) * 2)


@needs_kernel
@pytest.mark.skipif(os.environ.get(IN_SUBPROCESS) == "1", reason="this is the subprocess")
def test_malformed_kernel_calls_raise_in_a_subprocess():
    """The cases above run in a child pytest, so that a crash (an out-of-bounds read) fails here instead of killing
    the suite."""
    env = {**os.environ, IN_SUBPROCESS: "1"}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", __file__, "-q", "-p", "no:cacheprovider", "-k", "malformed or rejects"],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    n_scan_cases = len(list(_scan_cases("f", SCAN_LAYOUTS))) + len(list(_scan_cases(
        "b", {**SCAN_GRAD_LAYOUTS, **SCAN_LAYOUTS, **SCAN_SAVED_LAYOUTS})))
    n_cases = len(list(_forward_cases())) + len(list(_backward_cases())) + n_scan_cases + \
        len(list(_rank_one_cases())) + 1
    assert f"{n_cases} passed" in result.stdout, result.stdout[-2000:]


@needs_kernel
def test_kernel_exports_its_limit_and_runs_the_instruction_set_torch_dispatches_to():
    ext = load_extension().module
    assert sorted(name for name in dir(ext) if not name.startswith("_")) == [
        "INPUT_NAMES", "MAX_DIM", "backward", "contract", "forward", "instruction_set", "rank1_sum", "rank_one_grads",
        "scan_backward", "scan_forward"]
    assert tuple(ext.INPUT_NAMES) == RecurrenceInputs._fields
    capability = torch.backends.cpu.get_cpu_capability()
    assert ext.instruction_set() == (capability if capability in ("AVX2", "AVX512") else "DEFAULT")
    tensors, starts = make_inputs(T=1, B=1, d=ext.MAX_DIM + 1, n_reads=1, dtype=torch.float32, f0_scale=0.0)
    with pytest.raises(ValueError, match=f"d <= {ext.MAX_DIM}"):
        fwm_recurrence(RecurrenceInputs(*tensors, starts), 0.5, implementation="fused")
