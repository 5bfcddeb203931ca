"""Env-steps/s of ``learn()`` on GraphNav: sb3-contrib's RecurrentPPO against ours (issue 17's two targets).

Contestants (one process, run in turn on the same env, one torch thread by default):

* ``sb3c-lstm``:      ``sb3_contrib.RecurrentPPO("MlpLstmPolicy")`` (LSTM 256) at sb3-contrib's defaults;
* ``ours-fwm``:       our ``RecurrentPPO("MlpFwmPolicy")`` with FWM-32-16 at our defaults;
* ``sb3c-lstm-same``: sb3-contrib + LSTM 256 at ``--batch-size`` / ``--n-epochs``;
* ``ours-lstm-same``: ours + LSTM 256 (``"MlpLstmPolicy"``) at the same hyperparameters;
* ``ours-a2c``:       our ``RecurrentA2C`` with :func:`paper_a2c_kwargs` (the FWM paper's learner), for reference;
* ``ours-fwm-sep``, ``ours-lstm-same-sep``: ablations of ``ours-fwm`` / ``ours-lstm-same`` with the defaults before
  issue 17's changes: a separate critic core and a per-tensor (not fused) optimizer.

Targets: ``ours-fwm / sb3c-lstm >= 10`` and ``ours-lstm-same / sb3c-lstm-same >= 10``. Both libraries' defaults
are n_epochs 10 and a separate critic core with (64, 64) MLPs; sb3-contrib's batch_size is 128 transitions (padded
sequence chunks), ours ``None`` (all env-trajectories in one minibatch); "same" uses 120 = 4 whole trajectories of 30
steps, the multiple of n_steps nearest sb3-contrib's 128. Env: ``FWM/GraphNav-v0`` (5 nodes, 3 actions, 30-step
lifetimes) as one batched SB3 VecEnv of ``--n-envs`` (64) envs, ``n_steps=30``. A tiny warm-up run first pays the
one-off costs (lazy imports, loading the fused kernel); each contestant then runs ``--rollouts`` rollouts, and the rate
is env-steps / wall time of ``learn()``, with the share spent in ``train()``::

    python benchmarks/bench_agents.py
    python benchmarks/bench_agents.py --only ours-fwm ours-lstm-same --profile   # torch.profiler top entries
"""
from __future__ import annotations

import argparse
import os
import time
from typing import Any, Callable

import sb3_contrib
import torch as th

from fwm_rl.agents import RecurrentA2C, RecurrentPPO, paper_a2c_kwargs
from fwm_rl.envs import make_vec_env

FWM_32_16 = dict(core="fwm", hidden_size=32, core_kwargs=dict(preset="rl", memory_size=16))
SEPARATE = dict(critic="separate", optimizer_kwargs=dict(foreach=False))  # the defaults before issue 17
TARGETS = (("ours-fwm", "sb3c-lstm"), ("ours-lstm-same", "sb3c-lstm-same"), ("ours-fwm-sep", "sb3c-lstm"),
           ("ours-lstm-same-sep", "sb3c-lstm-same"))


def contestants(args: argparse.Namespace) -> dict[str, Callable[[Any], Any]]:
    common = dict(n_steps=args.n_steps, seed=0, device="cpu")
    same = dict(batch_size=args.batch_size, n_epochs=args.n_epochs, **common)
    return {
        "sb3c-lstm": lambda env: sb3_contrib.RecurrentPPO("MlpLstmPolicy", env, **common),
        "ours-fwm": lambda env: RecurrentPPO("MlpFwmPolicy", env, policy_kwargs=FWM_32_16, **common),
        "sb3c-lstm-same": lambda env: sb3_contrib.RecurrentPPO("MlpLstmPolicy", env, **same),
        "ours-lstm-same": lambda env: RecurrentPPO("MlpLstmPolicy", env, **same),
        "ours-a2c": lambda env: RecurrentA2C("MlpFwmPolicy", env, seed=0, device="cpu", **paper_a2c_kwargs()),
        "ours-fwm-sep": lambda env: RecurrentPPO("MlpFwmPolicy", env, policy_kwargs={**FWM_32_16, **SEPARATE},
                                                 **common),
        "ours-lstm-same-sep": lambda env: RecurrentPPO("MlpLstmPolicy", env, policy_kwargs=SEPARATE, **same),
    }


def warm_up() -> None:
    """Pay the one-off costs (lazy torch imports, loading the fused FWM kernel) before anything is timed."""
    env = make_vec_env("FWM/GraphNav-v0", 2, seed=0)
    sb3_contrib.RecurrentPPO("MlpLstmPolicy", env, n_steps=30, batch_size=60, device="cpu").learn(60)
    RecurrentPPO("MlpFwmPolicy", env, n_steps=30, policy_kwargs=FWM_32_16, device="cpu").learn(60)


def measure(build: Callable[[Any], Any], args: argparse.Namespace) -> tuple[float, float]:
    """(env-steps/s of learn(), share of the time in train()) over ``args.rollouts`` rollouts."""
    model = build(make_vec_env("FWM/GraphNav-v0", args.n_envs, seed=0))
    rollout = model.n_envs * model.n_steps
    train_time = [0.0]
    train = model.train

    def timed_train() -> None:
        start = time.perf_counter()
        train()
        train_time[0] += time.perf_counter() - start

    model.train = timed_train
    start = time.perf_counter()
    model.learn(args.rollouts * rollout)
    elapsed = time.perf_counter() - start
    return args.rollouts * rollout / elapsed, train_time[0] / elapsed


def profile(build: Callable[[Any], Any], args: argparse.Namespace, name: str) -> None:
    """torch.profiler's top entries (self CPU time) for one rollout + one update, after one untimed update."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    model = build(make_vec_env("FWM/GraphNav-v0", args.n_envs, seed=0))
    rollout = model.n_envs * model.n_steps
    model.learn(rollout)
    with torch_profile(activities=[ProfilerActivity.CPU], with_stack=False) as prof:
        model.learn(rollout, reset_num_timesteps=False)
    print(f"\n### {name}: one rollout + one update\n")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.profile_rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", default=None, help="contestants to run (default: all)")
    parser.add_argument("--n-envs", type=int, default=64)
    parser.add_argument("--n-steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=120, help="the 'same' rows' minibatch, in transitions")
    parser.add_argument("--n-epochs", type=int, default=10, help="the 'same' rows' epochs")
    parser.add_argument("--rollouts", type=int, default=2, help="timed rollouts per contestant")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--profile", action="store_true", help="print torch.profiler tables instead of rates")
    parser.add_argument("--profile-rows", type=int, default=15)
    args = parser.parse_args()
    th.set_num_threads(args.threads)
    table = contestants(args)
    names = args.only or list(table)
    unknown = sorted(set(names) - set(table))
    if unknown:
        parser.error(f"unknown contestant(s) {unknown}; choose from {list(table)}")
    print(f"GraphNav, {args.n_envs} envs x {args.n_steps} steps; 'same' rows: batch_size={args.batch_size}, "
          f"n_epochs={args.n_epochs}; torch threads={args.threads}; load average {os.getloadavg()[0]:.1f}")
    warm_up()
    if args.profile:
        for name in names:
            profile(table[name], args, name)
        return
    print("| contestant | env-steps/s | train share |\n|---|---|---|", flush=True)
    rates = {}
    for name in names:
        rates[name], train_share = measure(table[name], args)
        print(f"| {name} | {rates[name]:,.0f} | {100 * train_share:.0f} % |", flush=True)
    for ours, theirs in TARGETS:
        if ours in rates and theirs in rates:
            print(f"{ours} / {theirs} = {rates[ours] / rates[theirs]:.1f}x (target 10x)")
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
