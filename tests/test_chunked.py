"""The chunked FWM recurrence equals the reference (outputs and every gradient, float64), its C++ scan equals the
PyTorch scan, and inputs it cannot take exactly go to the reference."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

import fwm_rl.fused.function as fused_function
from fwm_rl import chunked
from fwm_rl.fused import load_extension
from fwm_rl.recurrence import RecurrenceInputs, fwm_recurrence
from test_fused import FLOAT32_REL_BOUND, assert_all_close, make_inputs, make_read_mask, masked_loss_run, \
    naive_recurrence, run_with_grads

needs_kernel = pytest.mark.skipif(
    load_extension().module is None, reason=f"fused kernel unavailable: {load_extension().reason}"
)
KERNELS = ["pytorch", pytest.param("c++", marks=needs_kernel)]


@pytest.fixture(params=KERNELS)
def kernel_kind(request, monkeypatch) -> str:
    """Runs the test with the C++ kernels (scan, rank-1 products) and again with their PyTorch twins (the path off
    CPU)."""
    if request.param == "pytorch":
        monkeypatch.setattr(chunked, "scan", chunked.scan_reference)
        monkeypatch.setattr(chunked, "contract", chunked.contract_reference)
        monkeypatch.setattr(chunked, "rank1_sum", chunked.rank1_sum_reference)
    return request.param


@pytest.fixture
def chunk_steps(monkeypatch, request) -> int:
    monkeypatch.setattr(chunked, "CHUNK_STEPS", request.param)
    return request.param


def test_chunked_equals_naive_per_row_oracle_float64(kernel_kind):
    tensors, starts = make_inputs(T=7, B=3, d=5, n_reads=3, f0_scale=0.5)
    reads, final = fwm_recurrence(RecurrenceInputs(*tensors, starts), 0.8, implementation="chunked")
    naive_reads, naive_final = naive_recurrence(tensors, starts, 0.8)
    torch.testing.assert_close(reads, naive_reads, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(final, naive_final, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("chunk_steps", [1, 3, 8, 64], indirect=True)
@pytest.mark.parametrize(
    "T, B, d, n_reads, write_scale, f0_scale",
    [
        (9, 3, 16, 3, 1 / 16, 0.0),  # meta-RL shape family, F₀ = 0
        (20, 2, 32, 3, 1 / 32, 0.02),  # catbAbI shape family
        (11, 4, 5, 1, 1.0, 0.5),  # λ = 1: the norm clamp engages
        (13, 3, 8, 2, 0.3, 0.3),
    ],
)
def test_chunked_matches_reference_float64_with_resets_and_chunks(kernel_kind, chunk_steps, T, B, d, n_reads,
                                                                  write_scale, f0_scale, monkeypatch):
    tensors, starts = make_inputs(T, B, d, n_reads, f0_scale=f0_scale)
    chunk_lengths = []
    one_chunk = chunked._chunk
    monkeypatch.setattr(chunked, "_chunk", lambda *args: chunk_lengths.append(args[2].shape[1]) or one_chunk(*args))
    assert_all_close(run_with_grads("chunked", tensors, starts, write_scale),
                     run_with_grads("reference", tensors, starts, write_scale), rel=1e-10)
    assert chunk_lengths == [min(chunk_steps, T - t0) for t0 in range(0, T, chunk_steps)]


def test_every_row_starting_at_step_0_skips_F0_and_still_matches(kernel_kind):
    tensors, starts = make_inputs(T=10, B=3, d=6, n_reads=2, f0_scale=0.5)
    starts[0] = True
    result = run_with_grads("chunked", tensors, starts, 0.5)
    expected = run_with_grads("reference", tensors, starts, 0.5)
    assert result[-1] is None and torch.equal(expected[-1], torch.zeros_like(expected[-1]))  # F₀ is never read
    assert_all_close(result[:-1], expected[:-1], rel=1e-10)


@settings(max_examples=20, deadline=None)
@given(
    T=st.integers(1, 12), B=st.integers(1, 4), d=st.sampled_from([2, 3, 4, 7, 16]), n_reads=st.integers(1, 4),
    write_scale=st.sampled_from([0.05, 0.3, 1.0, 3.0]), f0_scale=st.sampled_from([0.0, 0.2, 0.6]),
    seed=st.integers(0, 99), steps=st.sampled_from([1, 2, 5, 32]),
)
def test_chunked_matches_reference_on_random_shapes(T, B, d, n_reads, write_scale, f0_scale, seed, steps):
    tensors, starts = make_inputs(T, B, d, n_reads, seed=seed, f0_scale=f0_scale)
    saved = chunked.CHUNK_STEPS
    chunked.CHUNK_STEPS = steps
    try:
        result = run_with_grads("chunked", tensors, starts, write_scale)
    finally:
        chunked.CHUNK_STEPS = saved
    assert_all_close(result, run_with_grads("reference", tensors, starts, write_scale), rel=1e-9)


@pytest.mark.parametrize("d", [16, 32, 6])
def test_float32_chunked_stays_within_the_measured_float32_error_bound(d):
    tensors, starts = make_inputs(T=16, B=2, d=d, n_reads=3, seed=d)
    exact = run_with_grads("reference", tensors, starts, 1 / d)
    assert_all_close(run_with_grads("chunked", [t.float() for t in tensors], starts, 1 / d), exact,
                     rel=FLOAT32_REL_BOUND)


@pytest.mark.parametrize("chunk_steps", [4], indirect=True)
@pytest.mark.parametrize("split", [None, 5])
def test_skipping_reads_leaves_a_loss_at_the_targets_and_its_gradients_unchanged(kernel_kind, chunk_steps, split):
    T, B, d, n_reads = 12, 4, 6, 3
    tensors, starts = make_inputs(T, B, d, n_reads, f0_scale=0.4)
    target = make_read_mask(T, B)
    every_read = masked_loss_run("chunked", tensors, starts, 0.7, target, None, split)
    skipped = masked_loss_run("chunked", tensors, starts, 0.7, target, target, split)
    for a, e in zip(skipped, every_read):
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12)
    reference = masked_loss_run("reference", tensors, starts, 0.7, target, target, split)
    for a, e in zip(skipped, reference):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("chunk_steps", [4], indirect=True)
def test_a_chunk_that_no_row_reads_gives_zero_reads_and_the_reference_F(chunk_steps):
    tensors, starts = make_inputs(T=9, B=2, d=4, n_reads=2, f0_scale=0.4)
    mask = torch.zeros(9, 2, dtype=torch.bool)
    mask[8] = True  # chunks [0, 4) and [4, 8) read nothing
    inputs = RecurrenceInputs(*tensors, starts)
    reads, final = fwm_recurrence(inputs, 0.5, implementation="chunked", read_mask=mask)
    expected_reads, expected_final = fwm_recurrence(inputs, 0.5, implementation="reference", read_mask=mask)
    assert torch.equal(reads[:8], torch.zeros_like(reads[:8]))
    torch.testing.assert_close(reads, expected_reads, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(final, expected_final, rtol=1e-10, atol=1e-10)


def test_non_finite_inputs_go_to_the_reference_so_a_reset_still_clears_them():
    tensors, starts = make_inputs(T=6, B=3, d=16, n_reads=3, seed=5)
    starts[0] = False
    starts[3] = True  # every row resets mid-sequence, after F₀ ...
    poisoned = [t.clone() for t in tensors]
    poisoned[6][0] = float("nan")  # ... which holds NaN in row 0
    poisoned[2][1, 2] = float("inf")  # and a value of row 2 at step 1 is infinite
    result = run_with_grads("chunked", poisoned, starts, 1 / 16)
    expected = run_with_grads("reference", poisoned, starts, 1 / 16)
    for a, e in zip(result, expected):
        torch.testing.assert_close(a, e, rtol=0, atol=0, equal_nan=True)
    assert torch.isfinite(result[0][3:]).all()  # the reads after the reset are clean


def scan_inputs(B: int = 3, C: int = 7, d: int = 5, seed: int = 0, dtype: torch.dtype = torch.float64
                ) -> list[Tensor]:
    """Scan inputs as a chunk makes them (a key Gram matrix from tanh keys, F₀'s old values and norm), with resets."""
    g = torch.Generator().manual_seed(seed)
    ks, kr = (torch.tanh(torch.randn(B, C, d, generator=g, dtype=dtype)) for _ in range(2))
    key_gram = torch.bmm(ks, ks.transpose(1, 2)) * torch.bmm(kr, kr.transpose(1, 2))
    old_F0 = 0.3 * torch.randn(B, C, d, generator=g, dtype=dtype)
    norm0 = torch.rand(B, generator=g, dtype=dtype) * 2
    write = torch.rand(B, C, generator=g, dtype=dtype)
    values = torch.tanh(torch.randn(B, C, d, generator=g, dtype=dtype))
    starts = torch.rand(B, C, generator=g) < 0.2
    return [key_gram, old_F0, norm0, write, values, starts]


@needs_kernel
@pytest.mark.parametrize("seed", range(4))
def test_cpp_scan_equals_the_pytorch_scan_with_every_gradient(seed):
    inputs = scan_inputs(seed=seed)
    results = []
    for scan in (chunked.Scan.apply, chunked.scan_reference):
        floats = [x.clone().requires_grad_() for x in inputs[:5]]
        outputs = scan(*floats, inputs[5])
        g = torch.Generator().manual_seed(seed + 10)
        loss = sum((out * torch.randn(out.shape, generator=g, dtype=out.dtype)).sum() for out in outputs)
        loss.backward()
        results.append([*outputs, *(x.grad for x in floats)])
    for a, e in zip(*results):
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12)


@needs_kernel
def test_cpp_scan_gradcheck_float64():
    inputs = scan_inputs(B=2, C=5, d=3, seed=3)
    floats = [x.clone().requires_grad_() for x in inputs[:5]]
    assert torch.autograd.gradcheck(lambda *xs: chunked.Scan.apply(*xs, inputs[5]), floats, eps=1e-6, atol=1e-6)


# Vector widths in lanes: float32 8 (AVX2), 16 (AVX-512), 4 (SSE2); float64 half that. The d below give the kernels
# rows of 1, 2, 4 and 8 vectors on each, and the plain loops for the rest.
RANK_ONE_DIMS = [1, 2, 3, 4, 5, 8, 16, 32]


def rank_one_inputs(B: int, C: int, d: int, dtype: torch.dtype, seed: int = 0) -> list[Tensor]:
    """F [B, d, d, d] and x, y, w [B, C, d]."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, d, d, d, generator=g, dtype=dtype),
            *(torch.randn(B, C, d, generator=g, dtype=dtype) for _ in range(3))]


@needs_kernel
@pytest.mark.parametrize("dtype, rel", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("C", [1, 5, 30])
@pytest.mark.parametrize("d", RANK_ONE_DIMS)
def test_cpp_rank_one_products_equal_their_pytorch_twins_with_every_gradient(d, C, dtype, rel):
    """contract and rank1_sum (the products with F₀ and the chunk's end F) against the outer products and bmm."""
    inputs = rank_one_inputs(3, C, d, dtype, seed=d + C)
    g = torch.Generator().manual_seed(1)
    for kernel, twin, args, names in ((chunked.Contract.apply, chunked.contract_reference, inputs[:3], "Fxy"),
                                      (chunked.RankOneSum.apply, chunked.rank1_sum_reference, inputs[1:], "xyw")):
        results = []
        for fn in (kernel, twin):
            leaves = [x.clone().requires_grad_() for x in args]
            out = fn(*leaves)
            weights = torch.randn(out.shape, generator=g.manual_seed(2), dtype=dtype)
            (out * weights).sum().backward()
            results.append([out, *(x.grad for x in leaves)])
        for name, a, e in zip(["result", *(f"grad {n}" for n in names)], *results):
            scale = e.abs().max().item()
            assert (a - e).abs().max().item() <= rel * scale, f"{kernel.__self__.__name__}: {name}"


@needs_kernel
def test_cpp_rank_one_products_gradcheck_float64():
    F, x, y, w = (t.requires_grad_() for t in rank_one_inputs(2, 3, 4, torch.float64, seed=5))
    assert torch.autograd.gradcheck(chunked.Contract.apply, (F, x, y), eps=1e-6, atol=1e-6)
    assert torch.autograd.gradcheck(chunked.RankOneSum.apply, (x, y, w), eps=1e-6, atol=1e-6)


@needs_kernel
def test_cpp_rank_one_products_compute_only_the_gradients_asked_for():
    F, x, y, _ = rank_one_inputs(2, 3, 8, torch.float64)
    x.requires_grad_()
    chunked.Contract.apply(F, x, y).sum().backward()
    assert x.grad is not None and F.grad is None and y.grad is None


def test_a_zero_F0_that_needs_no_gradient_is_skipped_and_the_results_match(kernel_kind, monkeypatch):
    tensors, starts = make_inputs(T=9, B=3, d=5, n_reads=2)
    tensors[6] = torch.zeros_like(tensors[6])  # a fresh state, as initial_state() gives
    contracted = []
    monkeypatch.setattr(chunked, "contract", lambda F, q: contracted.append(q.shape) or F.new_zeros(()))
    inputs = RecurrenceInputs(*tensors, starts)
    reads, final = fwm_recurrence(inputs, 0.5, implementation="chunked")
    expected_reads, expected_final = fwm_recurrence(inputs, 0.5, implementation="reference")
    assert contracted == []  # F₀ never entered a product
    torch.testing.assert_close(reads, expected_reads, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(final, expected_final, rtol=1e-10, atol=1e-10)


def test_chunked_rejects_inputs_of_two_dtypes_naming_them():
    tensors, starts = make_inputs(T=9, B=2, d=4, n_reads=1)
    tensors[6] = tensors[6].float()
    with pytest.raises(ValueError, match=r"one dtype, got \['torch.float32', 'torch.float64'\]"):
        fwm_recurrence(RecurrenceInputs(*tensors, starts), 0.5, implementation="chunked")


def test_an_empty_sequence_reads_nothing_and_returns_F0():
    tensors, starts = make_inputs(T=0, B=2, d=4, n_reads=1, f0_scale=0.5)
    reads, final = fwm_recurrence(RecurrenceInputs(*tensors, starts), 0.5, implementation="chunked")
    assert reads.shape == (0, 2, 4) and torch.equal(final, tensors[6])


def test_auto_takes_the_chunked_form_from_its_thresholds_on_and_the_fused_kernel_below(monkeypatch):
    """From CHUNKED_MIN_STEPS steps on where F₀ enters no product (every row starts at step 0, or a zero F₀ without
    grad), from CHUNKED_MIN_STEPS_CARRIED where a row carries a non-zero F₀ in; the fused kernel below."""
    from fwm_rl import recurrence

    taken = []
    monkeypatch.setattr(recurrence, "fwm_recurrence_chunked",
                        lambda *args: taken.append("chunked") or chunked.fwm_recurrence_chunked(*args))
    monkeypatch.setattr(recurrence, "fwm_recurrence_fused",
                        lambda *args: taken.append("fused") or fused_function.fwm_recurrence_fused(*args))
    short = "fused" if load_extension().module is not None else "reference"
    fresh, carried = recurrence.CHUNKED_MIN_STEPS, recurrence.CHUNKED_MIN_STEPS_CARRIED
    cases = [(fresh - 1, "all start", short), (fresh, "all start", "chunked"), (fresh, "zero F0", "chunked"),
             (fresh, "carried", short), (carried - 1, "carried", short), (carried, "carried", "chunked")]
    for T, state, expected in cases:
        tensors, starts = make_inputs(T=T, B=2, d=4, n_reads=1, f0_scale=0.5)
        starts[0] = state == "all start"
        if state == "zero F0":
            tensors[6] = torch.zeros_like(tensors[6])
        taken.clear()
        fwm_recurrence(RecurrenceInputs(*tensors, starts), 0.5)
        assert taken == ([] if expected == "reference" else [expected]), (T, state)
