"""The memory cores against naive per-step references, gradcheck and the core contract, and resets that clear
non-finite state in every registered core."""
from __future__ import annotations

import math
from functools import partial

import pytest
import torch
from torch.func import functional_call

import fwm_rl
from fwm_rl import build_core
from naive_cores import naive_fwlstm, naive_fwm, naive_fwrnn, naive_gru, naive_lstm

D, H, d = 3, 5, 4  # input size, hidden size, FWM memory size (tiny: the whole file runs in seconds)
T, B = 7, 3


def float64_tol(steps: int) -> float:
    """Bound on the float64 difference between two evaluation orders of the same ``steps``-step computation.

    Each step's values are sums of at most d³ = 64 products of O(1) numbers (the FWM's F norm; the LSTM gates sum
    D + H = 8), each rounded to ε; the errors add over the steps and are amplified at most 100-fold through the
    gates, the LayerNorms and the fast-weight feedback. This gives 1e-11 for T = 7, where the largest difference
    measured under ATEN_CPU_CAPABILITY=default, avx2 and avx512 is 7e-15, so the bound does not depend on the CPU.
    """
    return 100 * steps * d ** 3 * torch.finfo(torch.float64).eps

# Each code base's FWM cell, written out from docs/sources.md ("FWM settings per code base") (not read from the package).
FWM_SPEC = {
    "catbabi": dict(memory_size=32, write_scale="1/d", tanh_query=False, tanh_edges=True, residual=False),
    "lm": dict(memory_size=32, write_scale=1.0, tanh_query=True, tanh_edges=True, residual=True),
    "rl": dict(memory_size=16, write_scale="1/d", tanh_query=False, tanh_edges=False, residual=True),
}


def spec_write_scale(preset: str, memory_size: int) -> float:
    scale = FWM_SPEC[preset]["write_scale"]
    return 1.0 / memory_size if scale == "1/d" else scale


# name -> (kind, options, naive reference with its knobs bound)
CASES = {
    **{
        f"fwm-{preset}": ("fwm", dict(preset=preset, memory_size=d), partial(
            naive_fwm,
            write_scale=spec_write_scale(preset, d),
            tanh_query=spec["tanh_query"], tanh_edges=spec["tanh_edges"], residual=spec["residual"],
        ))
        for preset, spec in FWM_SPEC.items()
    },
    "fwlstm": ("fwlstm", dict(fast_decay=0.9, fast_lr=0.7), partial(naive_fwlstm, fast_decay=0.9, fast_lr=0.7)),
    "lnlstm": ("lnlstm", {}, partial(naive_fwlstm, fast_decay=None, fast_lr=None)),
    "fwrnn": ("fwrnn", dict(fast_decay=0.9, fast_lr=0.7, inner_steps=2),
              partial(naive_fwrnn, fast_decay=0.9, fast_lr=0.7, inner_steps=2)),
    "gru": ("gru", {}, naive_gru),
    "lstm": ("lstm", {}, naive_lstm),
}


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """Tiny tensors gain nothing from intra-op threads, and on a loaded machine their barriers cost many times the work."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_core(name: str, seed: int = 0, **extra) -> fwm_rl.MemoryCore:
    kind, options, _ = CASES[name]
    torch.manual_seed(seed)
    return build_core(kind, D, H, **{**options, **extra}).double()


def random_state(core: fwm_rl.MemoryCore, batch_size: int, seed: int = 1) -> tuple[torch.Tensor, ...]:
    """A non-zero state. FWM's F gets Frobenius norm 1.5 per row, so the norm clamp acts on the first write of every
    row that does not reset there (tiny cores rarely write hard enough to reach the clamp on their own)."""
    gen = torch.Generator().manual_seed(seed)
    state = []
    for spec in core.state_spec:
        s = torch.randn(batch_size, *spec.shape, generator=gen, dtype=torch.float64)
        if spec.name == "F":
            s = 1.5 * s / s.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        elif spec.name == "A":
            s = 0.1 * s
        state.append(s)
    return tuple(state)


def random_inputs(steps: int = T, batch_size: int = B, seed: int = 2, scale: float = 1.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return scale * torch.randn(steps, batch_size, D, generator=gen, dtype=torch.float64)


def staggered_starts(steps: int = T, batch_size: int = B) -> torch.Tensor:
    """Resets at different times for different rows: row 0 at t=2, row 1 at t=0 and t=4 and t=5, row 2 never."""
    starts = torch.zeros(steps, batch_size, dtype=torch.bool)
    starts[2, 0] = True
    starts[0, 1] = starts[4, 1] = starts[5, 1] = True
    return starts


# --- equality with the naive references -------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CASES))
def test_core_matches_naive_per_step_reference_with_staggered_resets(name):
    core = make_core(name)
    x, state, starts = random_inputs(), random_state(core, B), staggered_starts()
    y, final = core(x, state, starts)
    y_ref, final_ref = CASES[name][2](core, x, state, starts)
    tol = float64_tol(T)
    torch.testing.assert_close(y, y_ref, atol=tol, rtol=tol)
    assert len(final) == len(final_ref) == len(core.state_spec)
    for s, s_ref in zip(final, final_ref):
        torch.testing.assert_close(s, s_ref, atol=tol, rtol=tol)


@pytest.mark.parametrize("recurrence", ["auto", "reference"])
@pytest.mark.parametrize("preset", sorted(FWM_SPEC))
def test_fwm_matches_naive_reference_with_each_recurrence_implementation(preset, recurrence):
    core = make_core(f"fwm-{preset}", recurrence=recurrence, write_scale=0.8)
    x, state, starts = random_inputs(scale=3.0), random_state(core, B), staggered_starts()
    y, (_, _, F) = core(x, state, starts)
    spec = FWM_SPEC[preset]
    y_ref, (_, _, F_ref) = naive_fwm(core, x, state, starts, write_scale=0.8, tanh_query=spec["tanh_query"],
                                     tanh_edges=spec["tanh_edges"], residual=spec["residual"])
    tol = float64_tol(T)
    torch.testing.assert_close(y, y_ref, atol=tol, rtol=tol)
    torch.testing.assert_close(F, F_ref, atol=tol, rtol=tol)


# --- FWM presets, options and initialisation ------------------------------------------------------------------


@pytest.mark.parametrize("preset", sorted(FWM_SPEC))
def test_fwm_preset_reproduces_code_base_settings(preset):
    spec = FWM_SPEC[preset]
    core = build_core("fwm", D, H, preset=preset)
    assert core.memory_size == spec["memory_size"]
    assert core.n_reads == 3
    assert core.write_scale == pytest.approx(spec_write_scale(preset, spec["memory_size"]))
    assert (core.tanh_query, core.tanh_edges, core.residual) == (spec["tanh_query"], spec["tanh_edges"],
                                                                spec["residual"])
    assert core.state_spec[2].shape == (spec["memory_size"],) * 3


def test_fwm_explicit_options_override_preset():
    core = build_core("fwm", D, H, preset="catbabi", memory_size=8, write_scale=0.5, tanh_query=True,
                      tanh_edges=False, residual=True, n_reads=2)
    assert (core.memory_size, core.write_scale, core.n_reads) == (8, 0.5, 2)
    assert (core.tanh_query, core.tanh_edges, core.residual) == (True, False, True)
    assert build_core("fwm", D, H, preset="rl", memory_size=8).write_scale == pytest.approx(1 / 8)


def test_fwm_parameter_counts_match_the_official_models():
    def count(module: torch.nn.Module) -> int:
        return sum(p.numel() for p in module.parameters())

    # docs/sources.md ("FWM settings per code base"): the meta-RL agent has 10,933 parameters, 132 of them in its policy (32→3) and value (32→1) heads
    assert count(build_core("fwm", 17, 32, preset="rl")) == 10_933 - (32 * 3 + 3) - (32 + 1)
    # docs/sources.md ("FWM settings per code base"): the FWM adds 103,425 parameters to the top 400-unit layer of the AWD-LSTM language model
    lm = build_core("fwm", 1150, 400, preset="lm")
    assert count(lm) - count(lm.lstm) == 103_425


def test_fwm_catbabi_init_has_forget_bias_one_and_xavier_like_projections():
    hidden, memory = 64, 32
    core = build_core("fwm", D, hidden, preset="catbabi")
    bias = core.lstm.bias_ih_l0.detach() + core.lstm.bias_hh_l0.detach()
    assert torch.equal(bias[hidden:2 * hidden], torch.ones(hidden))
    assert torch.equal(bias[:hidden], torch.zeros(hidden)) and torch.equal(bias[2 * hidden:], torch.zeros(2 * hidden))
    bound = math.sqrt(6 / (hidden + memory))
    for weight in (core.write_proj.weight, core.read_proj.weight):
        assert weight.abs().max() <= bound and weight.abs().max() > 0.9 * bound
    lm = build_core("fwm", D, hidden, preset="lm")
    assert lm.lstm.bias_ih_l0.detach()[hidden:2 * hidden].abs().max() < 1.0  # PyTorch default U(±1/sqrt(H))


def test_fwm_fast_weight_norm_never_exceeds_one_step_by_step():
    core = make_core("fwm-lm", write_scale=1.0)
    x = random_inputs(steps=20, scale=5.0)
    state = core.initial_state(B)
    norms = []
    for t in range(x.shape[0]):
        _, state = core(x[t:t + 1], state)
        norms.append(state[2].flatten(1).norm(dim=1))
    norms = torch.stack(norms)
    assert norms.max() <= 1.0 + 1e-6
    assert norms.max() > 1.0 - 1e-6, "the clamp was never active; the test would not catch a missing clamp"


def test_fwm_write_with_zero_scale_keeps_fast_weights_zero():
    core = make_core("fwm-catbabi", write_scale=0.0)
    _, (_, _, F) = core(random_inputs())
    assert torch.count_nonzero(F) == 0


# --- gradients --------------------------------------------------------------------------------------------------


def assert_gradcheck(core: fwm_rl.MemoryCore) -> None:
    """float64 gradcheck of outputs and final state w.r.t. inputs, initial state and every parameter, with resets."""
    steps, rows = 4, 2
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(steps, rows, core.input_size, generator=gen, dtype=torch.float64, requires_grad=True)
    state = tuple(s.requires_grad_() for s in random_state(core, rows))
    starts = torch.tensor([[False, False], [False, True], [False, False], [True, False]])
    names = [n for n, _ in core.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_() for _, p in core.named_parameters())
    n_state = len(state)

    def run(x, *tensors):
        y, final = functional_call(core, dict(zip(names, tensors[n_state:])), (x, tensors[:n_state], starts))
        return (y, *final)

    assert torch.autograd.gradcheck(run, (x, *state, *params), eps=1e-6, atol=1e-5, rtol=1e-4)


def tiny_gradcheck_core(name: str, **extra) -> fwm_rl.MemoryCore:
    kind, options, _ = CASES[name]
    if kind == "fwm":  # a large write scale so that the norm clamp is active at some steps
        options = dict(options, memory_size=2, n_reads=2, write_scale=0.9)
    torch.manual_seed(0)
    return build_core(kind, 2, 3, **options, **extra).double()


@pytest.mark.parametrize("name", sorted(CASES))
def test_gradcheck_float64_inputs_state_and_parameters(name):
    extra = dict(recurrence="reference") if name.startswith("fwm") else {}
    assert_gradcheck(tiny_gradcheck_core(name, **extra))


def test_fwm_gradcheck_through_auto_recurrence():
    assert_gradcheck(tiny_gradcheck_core("fwm-lm", recurrence="auto"))


# --- state handling ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CASES))
def test_chunked_run_with_carried_state_equals_one_long_run(name):
    core = make_core(name)
    x, starts = random_inputs(steps=9), staggered_starts(steps=9)
    y, final = core(x, None, starts)
    y1, state = core(x[:4], None, starts[:4])
    y2, state = core(x[4:6], state, starts[4:6])
    y3, state = core(x[6:], fwm_rl.detach_state(state), starts[6:])
    tol = float64_tol(x.shape[0])
    torch.testing.assert_close(torch.cat([y1, y2, y3]), y, atol=tol, rtol=tol)
    for s, s_ref in zip(state, final):
        torch.testing.assert_close(s, s_ref, atol=tol, rtol=tol)


@pytest.mark.parametrize("name", sorted(CASES))
def test_reset_mid_sequence_equals_fresh_run_from_that_step(name):
    core = make_core(name)
    x, starts = random_inputs(), staggered_starts()
    y, _ = core(x, random_state(core, B), starts)
    for row, t0 in ((0, 2), (1, 5)):
        y_fresh, _ = core(x[t0:, row:row + 1])
        torch.testing.assert_close(y[t0:, row:row + 1], y_fresh, atol=float64_tol(T), rtol=float64_tol(T))


@pytest.mark.parametrize("kind, module", [("lstm", "lstm"), ("gru", "gru"), ("fwm", "lstm")])
def test_torch_rnn_runs_once_per_reset_free_stretch(kind, module):
    torch.manual_seed(0)
    core = build_core(kind, D, H).double()
    calls = []
    getattr(core, module).register_forward_hook(lambda _module, args, _output: calls.append(args[0].shape[0]))
    core(random_inputs(), None, staggered_starts())  # resets at t = 0, 2, 4, 5
    assert calls == [2, 2, 1, 2]


def test_fwlstm_with_zero_decay_and_rate_equals_lnlstm():
    torch.manual_seed(0)
    fw = build_core("fwlstm", D, H, fast_decay=0.0, fast_lr=0.0).double()
    ln = build_core("lnlstm", D, H).double()
    ln.load_state_dict(fw.state_dict())
    x, starts = random_inputs(), staggered_starts()
    y_fw, (h_fw, c_fw, A) = fw(x, None, starts)
    y_ln, (h_ln, c_ln) = ln(x, None, starts)
    torch.testing.assert_close(y_fw, y_ln, atol=0, rtol=0)
    torch.testing.assert_close((h_fw, c_fw), (h_ln, c_ln), atol=0, rtol=0)
    assert torch.count_nonzero(A) == 0


@pytest.mark.parametrize("name", sorted(CASES))
def test_contract_state_spec_initial_state_and_output_shape(name):
    core = make_core(name)
    state = core.initial_state(B)
    assert [tuple(s.shape) for s in state] == [(B, *spec.shape) for spec in core.state_spec]
    assert all(torch.count_nonzero(s) == 0 for s in state)
    assert core.output_size == H
    y, final = core(random_inputs(steps=2))
    assert y.shape == (2, B, H)
    assert [tuple(s.shape) for s in final] == [(B, *spec.shape) for spec in core.state_spec]


def test_state_names():
    names = {kind: [s.name for s in build_core(kind, D, H).state_spec] for kind in fwm_rl.CORE_CLASSES}
    assert names == {"fwm": ["h", "c", "F"], "fwlstm": ["h", "c", "A"], "lnlstm": ["h", "c"], "fwrnn": ["h", "A"],
                     "gru": ["h"], "lstm": ["h", "c"], "mlp": []}


# --- resets clear non-finite state ------------------------------------------------------------------------------

# Every registered kind with its default options; the FWM once per implementation of its F recurrence.
EVERY_CORE = {
    **{kind: (kind, {}) for kind in sorted(fwm_rl.CORE_CLASSES) if kind != "fwm"},
    **{f"fwm-{implementation}": ("fwm", dict(memory_size=d, recurrence=implementation))
       for implementation in ("auto", "reference")},
}


def test_every_registered_kind_is_in_the_reset_tests():
    assert {kind for kind, _ in EVERY_CORE.values()} == set(fwm_rl.CORE_CLASSES)


def every_core(name: str) -> fwm_rl.MemoryCore:
    kind, options = EVERY_CORE[name]
    torch.manual_seed(0)
    return build_core(kind, D, H, **options).double()


def poisoned_state(core: fwm_rl.MemoryCore) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    """A random state of 4 rows whose rows 0 and 1 are non-finite (row 0 NaN, row 1 ±Inf and NaN), and the same
    state with those rows zero (what a reset must turn them into)."""
    state = random_state(core, 4)
    poisoned, cleared = [], []
    for k, s in enumerate(state):
        bad = s.clone()
        bad[0] = math.nan
        bad[1] = (math.inf, -math.inf, math.nan)[k % 3]
        bad[1].view(-1)[0] = -math.inf
        good = s.clone()
        good[:2] = 0.0
        poisoned.append(bad.requires_grad_())
        cleared.append(good)
    return tuple(poisoned), tuple(cleared)


@pytest.mark.parametrize("name", sorted(EVERY_CORE))
def test_reset_of_a_non_finite_state_equals_a_fresh_start_and_leaves_other_rows_and_gradients_finite(name):
    core = every_core(name)
    state, cleared = poisoned_state(core)
    x = random_inputs(batch_size=4).requires_grad_()
    starts = torch.zeros(T, 4, dtype=torch.bool)
    starts[0, :2] = True  # the two poisoned rows reset before step 0
    starts[3, 2] = True  # a finite row resetting mid-sequence; row 3 never resets
    y, final = core(x, state, starts)
    # Same inputs reach every operation in both runs, so the results are identical, not merely close.
    y_ref, final_ref = core(x.detach(), cleared, starts)
    torch.testing.assert_close(y, y_ref, atol=0, rtol=0)
    for s, s_ref in zip(final, final_ref):
        torch.testing.assert_close(s, s_ref, atol=0, rtol=0)
    loss = y.sum() + sum(s.sum() for s in final)
    grads = torch.autograd.grad(loss, [x, *state, *core.parameters()])
    assert all(torch.isfinite(g).all() for g in grads), [bool(torch.isfinite(g).all()) for g in grads]
    assert all(torch.count_nonzero(g[:2]) == 0 for g in grads[1:1 + len(state)]), "a reset row passed gradient back"


@pytest.mark.parametrize("name", sorted(EVERY_CORE))
def test_nan_observation_poisons_its_row_only_until_the_next_reset(name):
    core = every_core(name)
    x = random_inputs()
    x[1, 0, 0] = math.nan
    starts = torch.zeros(T, B, dtype=torch.bool)
    starts[4, 0] = True
    with torch.no_grad():
        y, _ = core(x, None, starts)
        y_fresh, _ = core(x[4:, :1])
    assert torch.isnan(y[1, 0]).any(), "the NaN observation never reached the output; the test would prove nothing"
    torch.testing.assert_close(y[4:, :1], y_fresh, atol=float64_tol(T), rtol=float64_tol(T))
    assert torch.isfinite(y[:, 1:]).all(), "a NaN in one row leaked into another"


# --- bad input --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_call_arguments_raise_value_error_naming_expectation(name):
    core = make_core(name)
    x = random_inputs()
    with pytest.raises(ValueError, match=r"x must be a tensor of shape \[T, B, 3\]"):
        core(x[0])
    with pytest.raises(ValueError, match="expected input_size=3"):
        core(torch.zeros(T, B, D + 1, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"at least one step"):
        core(x[:0])
    with pytest.raises(ValueError, match=r"episode_starts must have shape \[T, B\] = \[7, 3\]"):
        core(x, None, torch.zeros(T - 1, B, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"episode_starts must have shape \[T, B\] = \[7, 3\]"):
        core(x, None, torch.zeros(T, B + 1, dtype=torch.bool))
    state = core.initial_state(B)
    with pytest.raises(ValueError, match="state must be"):
        core(x, state[:-1])
    with pytest.raises(ValueError, match="state must be"):
        core(x, (state[0][:, :-1], *state[1:]))
    with pytest.raises(ValueError, match="state must be"):
        core(x, core.initial_state(B + 1))


@pytest.mark.parametrize(
    "kind, options, message",
    [
        ("fwx", {}, r"unknown core kind 'fwx'; expected one of \[.*'fwm'"),
        ("fwm", dict(memory=4), r"unknown option\(s\) \['memory'\]; allowed: \[.*'memory_size'"),
        ("fwm", dict(preset="babi"), r"unknown preset 'babi'; expected one of \['catbabi', 'lm', 'rl'\]"),
        ("fwm", dict(recurrence="cuda"), r"unknown recurrence 'cuda'; expected one of \(.*'auto'.*'reference'"),
        ("fwm", dict(memory_size=0), "memory_size must be a positive integer, got 0"),
        ("fwm", dict(n_reads=-1), "n_reads must be a positive integer, got -1"),
        ("fwm", dict(write_scale=-0.1), r"write_scale must be a finite number in \[0.0, inf\], got -0.1"),
        ("fwm", dict(tanh_query="yes"), "tanh_query must be True, False or None"),
        ("fwlstm", dict(fast_decay=1.5), r"fast_decay must be a finite number in \[0.0, 1.0\], got 1.5"),
        ("fwlstm", dict(fast_lr=float("nan")), "fast_lr must be a finite number"),
        ("fwrnn", dict(fast_lr=-1.0), r"fast_lr must be a finite number in \[0.0, inf\]"),
        ("fwrnn", dict(inner_steps=0), "inner_steps must be a positive integer, got 0"),
        ("lnlstm", dict(fast_decay=0.5), r"unknown option\(s\) \['fast_decay'\]"),
        ("gru", dict(num_layers=2), r"core 'gru' got unknown option\(s\) \['num_layers'\]; allowed: \[\]"),
    ],
)
def test_bad_options_raise_value_error_naming_expectation(kind, options, message):
    with pytest.raises(ValueError, match=message):
        build_core(kind, D, H, **options)


@pytest.mark.parametrize("kind", sorted(fwm_rl.CORE_CLASSES))
@pytest.mark.parametrize("sizes, bad", [((0, H), "input_size"), ((D, 0), "hidden_size"), ((D, 2.5), "hidden_size")])
def test_non_positive_sizes_raise_value_error(kind, sizes, bad):
    with pytest.raises(ValueError, match=f"{bad} must be a positive integer"):
        build_core(kind, *sizes)
