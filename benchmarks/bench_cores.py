"""Forward+backward throughput and peak memory of the memory cores (a benchmark, not a test).

Every case runs in a fresh subprocess: build the core and the inputs, record the resident set size (RSS), run one
untimed warm-up iteration and ``--repeats`` timed ones (forward over ``x [T, B, D]`` from a zero state, ``y.sum()``
backward), and report the median time per iteration as tokens/s (tokens = B·T) and the peak memory as the process's
peak RSS (``ru_maxrss``) minus its RSS after set-up, i.e. what forward+backward added on top of parameters and inputs.

Besides the cores it times ``fwm-naive``: the FWM written the way the official code runs it (one step at a time for
the LSTM and the fast weights, einsum write and reads, autograd through every step); its outputs are first checked
against the ``fwm`` core's with the same parameters.

    python benchmarks/bench_cores.py --config all --repeats 3
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Optional

import torch
import torch.nn.functional as nnf
from torch import Tensor, nn

from fwm_rl import build_core
from fwm_rl.fwm import BETA_OFFSET, FWMCore

# The two configurations of the FWM paper: catbAbI (emb 256, LSTM 256, d 32) and meta-RL (input 17, LSTM 32, d 16).
CONFIGS = {
    "catbabi": dict(batch=32, steps=200, input_size=256, hidden=256, memory=32, preset="catbabi"),
    "metarl": dict(batch=600, steps=30, input_size=17, hidden=32, memory=16, preset="rl"),
}
CASES = ("lstm", "fwm-naive", "fwm-reference", "fwm-auto", "fwm-fused", "fwm-chunked", "lnlstm", "fwlstm", "fwrnn")


class OfficialStyleFWM(nn.Module):
    """The FWM run step by step as in the official code, sharing the parameters of an ``FWMCore``.

    ``forward(x [T, B, D]) -> y [T, B, H]`` from a zero state, without resets.
    """

    def __init__(self, core: FWMCore) -> None:
        super().__init__()
        self.core = core

    def forward(self, x: Tensor) -> Tensor:
        core = self.core
        T, B, _ = x.shape
        d = core.memory_size
        h = x.new_zeros(1, B, core.hidden_size)
        c = x.new_zeros(1, B, core.hidden_size)
        F = x.new_zeros(B, d, d, d)
        outputs = []
        for t in range(T):
            _, (h, c) = core.lstm(x[t:t + 1], (h, c))
            h_t = h[0]  # [B, H]
            k_s, k_r, v, beta = core.write_proj(h_t).split([d, d, d, 1], dim=-1)
            k_s, k_r, v, beta = k_s.tanh(), k_r.tanh(), v.tanh(), torch.sigmoid(beta + BETA_OFFSET)
            v_old = torch.einsum("bs,br,bsrt->bt", k_s, k_r, F)
            F = F + core.write_scale * torch.einsum("bs,br,bt->bsrt", k_s, k_r, beta * (v - v_old))
            F = F / (torch.relu(F.reshape(B, -1).norm(dim=1) - 1.0) + 1.0).view(B, 1, 1, 1)
            read = core.read_proj(h_t)
            n = read[:, :d].tanh() if core.tanh_query else read[:, :d]
            for i in range(1, core.n_reads + 1):
                e = read[:, i * d:(i + 1) * d]
                e = e.tanh() if core.tanh_edges else e
                n = nnf.layer_norm(torch.einsum("bs,br,bsrt->bt", n, e, F), (d,))
            y = core.out_proj(n)
            outputs.append(y + h_t if core.residual else y)
        return torch.stack(outputs)


def current_rss_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def run_case(config_name: str, case: str, repeats: int) -> dict:
    """Time one case in this process (meant to be a fresh one); returns seconds per iteration and peak memory."""
    cfg = CONFIGS[config_name]
    torch.manual_seed(0)
    x = torch.randn(cfg["steps"], cfg["batch"], cfg["input_size"])
    check = None
    if case in ("lstm", "lnlstm", "fwlstm", "fwrnn"):
        core = build_core(case, cfg["input_size"], cfg["hidden"])
        model = lambda: core(x)[0]  # noqa: E731
    else:
        recurrence = "reference" if case == "fwm-naive" else case.removeprefix("fwm-")
        core = build_core("fwm", cfg["input_size"], cfg["hidden"], preset=cfg["preset"], memory_size=cfg["memory"],
                          recurrence=recurrence)
        model = lambda: core(x)[0]  # noqa: E731
        if case == "fwm-naive":
            naive = OfficialStyleFWM(core)
            with torch.no_grad():
                check = (naive(x) - core(x)[0]).abs().max().item()
            if check > 1e-4:
                raise AssertionError(f"official-style loop differs from the fwm core by {check:.2e}")
            model = lambda: naive(x)  # noqa: E731
    baseline = current_rss_kib()
    times, cpu_times = [], []
    for i in range(repeats + 1):
        core.zero_grad(set_to_none=True)
        start, cpu_start = time.perf_counter(), time.process_time()
        model().sum().backward()
        if i > 0:
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu_start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return dict(seconds=statistics.median(times), cpu_seconds=statistics.median(cpu_times),
                peak_mib=(peak - baseline) / 1024, check=check)


def measure(config_name: str, case: str, repeats: int, threads: Optional[int]) -> dict:
    """Run :func:`run_case` in a fresh Python process, so that its peak RSS belongs to this case alone."""
    cmd = [sys.executable, __file__, "--worker", config_name, case, "--repeats", str(repeats)]
    if threads is not None:
        cmd += ["--threads", str(threads)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{config_name}/{case} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", choices=[*CONFIGS, "all"], default="all")
    parser.add_argument("--repeats", type=int, default=3, help="timed iterations per case (median reported)")
    parser.add_argument("--cores", default=",".join(CASES), help=f"comma-separated subset of {','.join(CASES)}")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--worker", nargs=2, metavar=("CONFIG", "CASE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.worker:
        print(json.dumps(run_case(*args.worker, args.repeats)))
        return
    cases = [c for c in args.cores.split(",") if c]
    unknown = sorted(set(cases) - set(CASES))
    if unknown:
        parser.error(f"unknown case(s) {unknown}; expected a subset of {list(CASES)}")
    configs = list(CONFIGS) if args.config == "all" else [args.config]

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs; "
          f"median of {args.repeats} timed forward+backward iterations after 1 warm-up; peak memory = peak RSS of a "
          f"fresh process minus its RSS after set-up\n")
    print("CPU s is the process's CPU time (all its threads), steadier than wall time on a shared machine.\n")
    print("| config | core | s / iter | CPU s / iter | tokens / s | slower than nn.LSTM "
          "| faster than fwm-naive (wall, CPU) | peak memory (MiB) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for config_name in configs:
        cfg = CONFIGS[config_name]
        tokens = cfg["batch"] * cfg["steps"]
        lstm_rate = naive = None
        for case in cases:
            result = measure(config_name, case, args.repeats, args.threads)
            rate = tokens / result["seconds"]
            lstm_rate = rate if case == "lstm" else lstm_rate
            naive = result if case == "fwm-naive" else naive
            ratio = f"{lstm_rate / rate:.1f}×" if lstm_rate else "–"
            speedup = (f"{naive['seconds'] / result['seconds']:.1f}×, {naive['cpu_seconds'] / result['cpu_seconds']:.1f}×"
                       if naive and case.startswith("fwm") else "–")
            label = case if result["check"] is None else f"{case} (matches fwm, max diff {result['check']:.1e})"
            print(f"| {config_name} (B {cfg['batch']}, T {cfg['steps']}, H {cfg['hidden']}, d {cfg['memory']}) "
                  f"| {label} | {result['seconds']:.3f} | {result['cpu_seconds']:.3f} | {rate:,.0f} | {ratio} "
                  f"| {speedup} | {result['peak_mib']:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
