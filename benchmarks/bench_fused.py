"""Fused FWM recurrence vs the PyTorch reference vs a per-step loop in the official code's style, on CPU.

The loss is taken on the reads where the configuration's task has a target (:func:`target_mask`), so the
"..., reads at targets" rows (the read mask of ``fwm_rl.recurrence``) do the same work the task needs with the
reads elsewhere skipped; their GFLOP/s still counts the nominal work of every read.

For each configuration: forward+backward wall time (median and min over repeats, the implementations timed in
alternation; the speed-up is against the first implementation listed), tokens/s (B·T per second),
achieved GFLOP/s of 6·(2 + N_r)·d³ FLOPs per token (forward: one contraction for the old value, one rank-1
update and N_r reads, d³ multiply-adds each; the backward counted as twice the forward), that rate as a share of
this machine's sgemm rate (float32 ``torch.mm`` of 2048² matrices, best of rounds interleaved with the timed runs,
so both see the same load), and the activation memory: the peak resident memory during one forward+backward minus
the resident memory before it, in a fresh process (Linux ``/proc/self/status`` VmHWM, reset through
``/proc/self/clear_refs``).

``--float32-error`` instead measures how far float32 runs of the reference and of the kernel are from float64, over
many seeds (the measurement behind the float32 bound of ``tests/test_fused.py``); run it under each
``ATEN_CPU_CAPABILITY``.

    .venv/bin/python benchmarks/bench_fused.py                      # both configurations, all implementations
    .venv/bin/python benchmarks/bench_fused.py --configs meta_rl --implementations fused --repeats 9
    .venv/bin/python benchmarks/bench_fused.py --configs catbabi --implementations fused "fused, reads at targets"
    .venv/bin/python benchmarks/bench_fused.py --implementations fused --threads 1 --cpu-time   # before/after under load
    .venv/bin/python benchmarks/bench_fused.py --implementations chunked fused --threads 2   # the two fast forms
    ATEN_CPU_CAPABILITY=avx2 .venv/bin/python benchmarks/bench_fused.py --float32-error --seeds 100
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as nnf
from torch import Tensor

from fwm_rl import chunked
from fwm_rl.fused import load_extension
from fwm_rl.recurrence import LAYER_NORM_EPS, RecurrenceInputs, fwm_recurrence


@dataclass(frozen=True)
class Config:
    """One benchmark shape: batch, steps, d = d_s = d_r = d_t, reads, write scale λ, and whether F₀ is carried in."""

    name: str
    batch: int
    steps: int
    dim: int
    n_reads: int
    write_scale: float
    carried: bool = False
    """False: every row starts an episode at step 0 with F₀ = 0 (the issue's configurations); True: F₀ is a
    unit-norm state carried in and no row starts at step 0 (a PPO minibatch from a rollout's saved state, a later
    training window), so an implementation cannot skip F₀."""


CONFIGS = {
    "meta_rl": Config("meta_rl", batch=600, steps=30, dim=16, n_reads=3, write_scale=1 / 16),
    "catbabi": Config("catbabi", batch=32, steps=200, dim=32, n_reads=3, write_scale=1 / 32),
    "meta_rl_carried": Config("meta_rl_carried", batch=600, steps=30, dim=16, n_reads=3, write_scale=1 / 16,
                              carried=True),
    "catbabi_carried": Config("catbabi_carried", batch=32, steps=200, dim=32, n_reads=3, write_scale=1 / 32,
                              carried=True),
}


def official_style_loop(inputs: RecurrenceInputs, write_scale: float) -> tuple[Tensor, Tensor]:
    """A per-step loop shaped like the official FWM cells: einsum retrieval and update of F [B, d, d, d], the norm
    clamp as relu(‖F‖ − 1) + 1, einsum reads with a functional LayerNorm; same arguments as the reference."""
    keys_s, keys_r, values, beta, read_queries, read_edges, F, episode_starts = inputs
    T, B, d = values.shape
    reads = []
    for t in range(T):
        F = F * (1.0 - episode_starts[t].to(F.dtype))[:, None, None, None]
        v_old = torch.einsum("bs,br,bsrt->bt", keys_s[t], keys_r[t], F)
        new_v = write_scale * beta[t, :, None] * (values[t] - v_old)
        F = F + torch.einsum("bs,br,bt->bsrt", keys_s[t], keys_r[t], new_v)
        F_norm = F.reshape(B, -1).norm(dim=-1)
        F = F / (nnf.relu(F_norm - 1) + 1)[:, None, None, None]
        n = read_queries[t]
        for i in range(read_edges.shape[2]):
            n = nnf.layer_norm(torch.einsum("bs,br,bsrt->bt", n, read_edges[t, :, i], F), (d,), eps=LAYER_NORM_EPS)
        reads.append(n)
    return torch.stack(reads), F


def chunked_with_bmm_products(inputs: RecurrenceInputs, write_scale: float) -> tuple[Tensor, Tensor]:
    """The chunked form with the PyTorch twins of its rank-1 products (outer products and bmm; the form before the
    C++ ``contract`` / ``rank1_sum``), for before/after comparisons."""
    kernels = chunked.contract, chunked.rank1_sum
    chunked.contract, chunked.rank1_sum = chunked.contract_reference, chunked.rank1_sum_reference
    try:
        return fwm_recurrence(inputs, write_scale, implementation="chunked")
    finally:
        chunked.contract, chunked.rank1_sum = kernels


# Each takes (inputs, write scale, the read mask of the configuration); "... at targets" reads only where it is True.
IMPLEMENTATIONS: dict[str, Callable[..., tuple[Tensor, Tensor]]] = {
    "chunked": lambda inputs, scale, mask: fwm_recurrence(inputs, scale, implementation="chunked"),
    "chunked, reads at targets": lambda inputs, scale, mask: fwm_recurrence(inputs, scale, implementation="chunked",
                                                                            read_mask=mask),
    "chunked, bmm products": lambda inputs, scale, mask: chunked_with_bmm_products(inputs, scale),
    "fused": lambda inputs, scale, mask: fwm_recurrence(inputs, scale, implementation="fused"),
    "fused, reads at targets": lambda inputs, scale, mask: fwm_recurrence(inputs, scale, implementation="fused",
                                                                          read_mask=mask),
    "reference": lambda inputs, scale, mask: fwm_recurrence(inputs, scale, implementation="reference"),
    "reference, reads at targets": lambda inputs, scale, mask: fwm_recurrence(
        inputs, scale, implementation="reference", read_mask=mask),
    "official-style loop": lambda inputs, scale, mask: official_style_loop(inputs, scale),
}


def target_mask(config: Config) -> Tensor:
    """``[T, B]`` bool: where the configuration's task takes a loss. catbAbI (QM mode): the answer positions of a
    training window of generated stories (about 4% of the tokens; 70% of the steps hold one in some row at B 32);
    meta-RL: every step (the policy acts on every read)."""
    if not config.name.startswith("catbabi"):
        return torch.ones(config.steps, config.batch, dtype=torch.bool)
    from fwm_rl.train.tasks.babi import CatBAbITask
    from fwm_rl.train.tasks.babi_gen import generate_splits

    splits = generate_splits(0, {"train": 200, "val": 1, "test": 1})
    task = CatBAbITask(splits, "qm", config.batch, config.steps, config.batch, seed=0)
    return task.train_batch(0).scored


def make_inputs(config: Config, seed: int = 0) -> tuple[list[Tensor], Tensor]:
    """Inputs as the FWM core makes them (tanh keys, values and edges, σ(·+1) write strengths); every row starts an
    episode at t = 0 with F₀ = 0, or, for a ``carried`` configuration, none does and F₀ has unit norm per row."""
    g = torch.Generator().manual_seed(seed)
    T, B, d, N = config.steps, config.batch, config.dim, config.n_reads

    def randn(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=g)

    tensors = [
        torch.tanh(randn(T, B, d)), torch.tanh(randn(T, B, d)), torch.tanh(randn(T, B, d)),
        torch.sigmoid(randn(T, B) + 1), randn(T, B, d), torch.tanh(randn(T, B, N, d)), torch.zeros(B, d, d, d),
    ]
    starts = torch.zeros(T, B, dtype=torch.bool)
    if config.carried:
        F0 = randn(B, d, d, d)
        tensors[-1] = F0 / F0.flatten(1).norm(dim=1).view(B, 1, 1, 1)
    else:
        starts[0] = True
    return tensors, starts


def forward_backward(fn: Callable[..., tuple[Tensor, Tensor]], tensors: list[Tensor], starts: Tensor,
                     write_scale: float, mask: Tensor) -> None:
    """One forward+backward with gradients to every input, F₀ included, from a loss on the reads where ``mask``
    holds and on the final F."""
    inputs = [t.detach().requires_grad_() for t in tensors]
    reads, final = fn(RecurrenceInputs(*inputs, starts), write_scale, mask)
    ((reads * mask.unsqueeze(-1)).sum() + final.square().sum()).backward()


def _status_mib(key: str) -> Optional[float]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def activation_mib(config_name: str, name: str) -> Optional[float]:
    """Peak resident memory of one forward+backward above the resident memory before it, in MiB (None off Linux).

    Meant for a fresh process (:func:`bench` runs it in one), so that memory freed by earlier runs but kept by the
    allocator does not hide the peak.
    """
    config = CONFIGS[config_name]
    tensors, starts = make_inputs(config)
    load_extension()  # loading the library is not activation memory
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current VmRSS
    except OSError:
        return None
    before = _status_mib("VmRSS")
    mask = target_mask(config)
    forward_backward(IMPLEMENTATIONS[name], tensors, starts, config.write_scale, mask)
    peak = _status_mib("VmHWM")
    return None if before is None or peak is None else peak - before


class Sgemm:
    """Float32 ``torch.mm`` rate on n×n matrices, GFLOP/s: the best of all rounds, which :func:`bench` interleaves
    with its timed runs."""

    def __init__(self, n: int = 2048, clock: Callable[[], float] = time.perf_counter) -> None:
        self.a, self.b, self.n, self.clock = torch.randn(n, n), torch.randn(n, n), n, clock
        torch.mm(self.a, self.b)
        self.best = float("inf")

    def round(self) -> None:
        start = self.clock()
        torch.mm(self.a, self.b)
        self.best = min(self.best, self.clock() - start)

    @property
    def gflops(self) -> float:
        return 2 * self.n**3 / self.best / 1e9


def nominal_gflop(config: Config) -> float:
    """6·(2 + N_r)·d³ FLOPs per token (see the module docstring), in GFLOP."""
    return 6 * (2 + config.n_reads) * config.dim**3 * config.batch * config.steps / 1e9


def bench(config: Config, names: list[str], repeats: int, sgemm: Sgemm,
          clock: Callable[[], float] = time.perf_counter) -> list[dict]:
    """Time ``repeats`` forward+backward runs of each implementation after a warm-up run, in rounds that run each
    implementation once (so that the load of a shared machine hits them alike), each round followed by an sgemm
    round; measure each one's memory in a fresh process."""
    tensors, starts = make_inputs(config)
    mask = target_mask(config)
    memory = {}
    for name in names:
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            memory[name] = pool.apply(activation_mib, (config.name, name))
        forward_backward(IMPLEMENTATIONS[name], tensors, starts, config.write_scale, mask)
    times: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(repeats):
        for name in names:
            start = clock()
            forward_backward(IMPLEMENTATIONS[name], tensors, starts, config.write_scale, mask)
            times[name].append(clock() - start)
        sgemm.round()
    rows = []
    for name in names:
        median = statistics.median(times[name])
        rows.append({
            "config": config.name, "implementation": name, "median_ms": 1e3 * median,
            "min_ms": 1e3 * min(times[name]), "tokens_per_s": config.batch * config.steps / median,
            "gflops": nominal_gflop(config) / median, "best_gflops": nominal_gflop(config) / min(times[name]),
            "activation_mib": memory[name], "repeats": repeats,
            "speedup_vs_first": statistics.median(times[names[0]]) / median,
        })
    return rows


def float32_error(seeds: int) -> None:
    """Print the worst relative error (max |float32 − float64| over the largest |float64|, per output) of the
    float32 reference and kernel over ``seeds`` inputs per d, as in tests/test_fused.py."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from test_fused import GRAD_NAMES, make_inputs as test_inputs, run_with_grads

    print(f"capability {torch.backends.cpu.get_cpu_capability()}, T 16, B 2, N_r 3, {seeds} seeds per d")
    for d in (6, 16, 32):
        for name in ("reference", "fused", "chunked"):
            worst = dict.fromkeys(("reads", "final F", *GRAD_NAMES), 0.0)
            for seed in range(seeds):
                tensors, starts = test_inputs(T=16, B=2, d=d, n_reads=3, seed=seed)
                exact = run_with_grads("reference", tensors, starts, 1 / d)
                got = run_with_grads(name, [t.float() for t in tensors], starts, 1 / d)
                for key, a, e in zip(worst, got, exact):
                    err = (a.double() - e).abs().max().item() / max(e.abs().max().item(), 1e-3)
                    worst[key] = max(worst[key], err)
            top = max(worst, key=worst.get)
            print(f"d {d:2d} {name:9s} worst {worst[top]:.2e} ({top}); " +
                  ", ".join(f"{k} {v:.1e}" for k, v in worst.items()), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--implementations", nargs="+", default=list(IMPLEMENTATIONS), choices=list(IMPLEMENTATIONS))
    parser.add_argument("--repeats", type=int, default=7, help="timed forward+backward runs per cell (after a warm-up)")
    parser.add_argument("--threads", type=int, help="torch threads [default: torch's]")
    parser.add_argument("--cpu-time", action="store_true",
                        help="time with this process's CPU time instead of wall time (steadier on a loaded machine; "
                             "with --threads 1 it is the time the one thread computed, sgemm timed alike)")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    parser.add_argument("--float32-error", action="store_true", help="measure float32 error instead of speed")
    parser.add_argument("--seeds", type=int, default=100, help="inputs per d for --float32-error")
    args = parser.parse_args()
    if args.float32_error:
        float32_error(args.seeds)
        return

    if args.threads:
        torch.set_num_threads(args.threads)
    clock = time.process_time if args.cpu_time else time.perf_counter
    sgemm = Sgemm(clock=clock)
    cpu = platform.processor() or platform.machine()
    kernel = load_extension().module
    isa = kernel.instruction_set() if kernel is not None else "unavailable"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {cpu}, kernel {isa}, "
          f"load average {os.getloadavg()[0]:.1f}, {'CPU' if args.cpu_time else 'wall'} time")
    rows = []
    for config_name in args.configs:
        rows += bench(CONFIGS[config_name], args.implementations, args.repeats, sgemm, clock)
    print(f"sgemm (2048², best of {len(args.configs) * args.repeats} rounds interleaved with the runs) {sgemm.gflops:.0f} "
          f"GFLOP/s; load average at the end {os.getloadavg()[0]:.1f}")
    print("| config | implementation | fwd+bwd median (min) ms | speed-up vs first (medians) | tokens/s "
          "| GFLOP/s median (best) | % of sgemm median (best) | activation MiB |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        config = CONFIGS[row["config"]]
        row["sgemm_gflops"] = sgemm.gflops
        row["sgemm_fraction"] = row["gflops"] / sgemm.gflops
        memory = "n/a" if row["activation_mib"] is None else f"{row['activation_mib']:.0f}"
        print(f"| {config.name} (B {config.batch}, T {config.steps}, d {config.dim}, N_r {config.n_reads}) | "
              f"{row['implementation']} | {row['median_ms']:.1f} ({row['min_ms']:.1f}) | "
              f"{row['speedup_vs_first']:.2f}x | {row['tokens_per_s']:.3g} | "
              f"{row['gflops']:.1f} ({row['best_gflops']:.1f}) | {100 * row['sgemm_fraction']:.1f}% "
              f"({100 * row['best_gflops'] / sgemm.gflops:.1f}%) | {memory} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"sgemm_gflops": sgemm.gflops, "threads": torch.get_num_threads(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
