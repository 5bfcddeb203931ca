"""Env-steps/s of ``learn()`` on GraphNav at the FWM paper's sizes: sb3-contrib's RecurrentPPO vs ours.

Contestants (one process, run in turn, same env and PPO hyperparameters):

* ``sb3c-lstm``:     ``sb3_contrib.RecurrentPPO`` + its ``MlpLstmPolicy`` (``lstm_hidden_size=--lstm-hidden``);
* ``sb3c-fwm``:      ``sb3_contrib.RecurrentPPO`` + our ``FWMPolicy`` (packed state stored at every step);
* ``ours-ppo-lstm``: our ``RecurrentPPO`` + ``MlpLstmPolicy`` of the same size (isolates the algorithm);
* ``ours-ppo``:      our ``RecurrentPPO`` + FWM (state stored once per rollout, whole-trajectory minibatches);
* ``ours-a2c``:      our ``RecurrentA2C`` + FWM with :func:`paper_a2c_kwargs` (one update per rollout).

Env: ``FWM/GraphNav-v0`` (5 nodes, 3 actions, 30-step lifetimes) as one batched SB3 VecEnv of ``--n-envs`` (600)
envs. FWM: hidden 32, d = 16 ("rl" preset). All policies have linear heads (``net_arch=[]``) and a separate critic
core. A tiny warm-up run first pays the one-off costs (lazy imports, loading the fused kernel); then each
contestant runs ``--rollouts`` rollouts of ``n_envs * n_steps`` steps; the rate is env-steps / wall time of
``learn()``, with the share spent in ``train()``.

    python benchmarks/bench_agents.py                      # all four, paper sizes
    python benchmarks/bench_agents.py --only ours-ppo ours-a2c --rollouts 3
"""
from __future__ import annotations

import argparse
import time
from typing import Any, Callable

import sb3_contrib
import torch as th

from fwm_rl.agents import FWMPolicy, RecurrentA2C, RecurrentPPO, paper_a2c_kwargs
from fwm_rl.envs import make_vec_env

FWM_POLICY = dict(core="fwm", hidden_size=32, core_kwargs=dict(preset="rl", memory_size=16), net_arch=[])


def contestants(args: argparse.Namespace) -> dict[str, Callable[[Any], Any]]:
    ppo = dict(n_steps=args.n_steps, batch_size=args.batch_size, n_epochs=args.n_epochs, learning_rate=3e-4,
               gamma=0.9, seed=0, device="cpu")
    lstm = dict(hidden_size=args.lstm_hidden, net_arch=[])
    return {
        "sb3c-lstm": lambda env: sb3_contrib.RecurrentPPO(
            "MlpLstmPolicy", env, policy_kwargs=dict(lstm_hidden_size=args.lstm_hidden, net_arch=[]), **ppo
        ),
        "sb3c-fwm": lambda env: sb3_contrib.RecurrentPPO(FWMPolicy, env, policy_kwargs=FWM_POLICY, **ppo),
        "ours-ppo-lstm": lambda env: RecurrentPPO("MlpLstmPolicy", env, policy_kwargs=lstm, **ppo),
        "ours-ppo": lambda env: RecurrentPPO("MlpFwmPolicy", env, policy_kwargs=FWM_POLICY, **ppo),
        "ours-a2c": lambda env: RecurrentA2C("MlpFwmPolicy", env, seed=0, device="cpu", **paper_a2c_kwargs()),
    }


def warm_up() -> None:
    """Pay the one-off costs (lazy torch imports, loading the fused FWM kernel) before anything is timed."""
    env = make_vec_env("FWM/GraphNav-v0", 2, seed=0)
    sb3_contrib.RecurrentPPO("MlpLstmPolicy", env, n_steps=30, batch_size=60, device="cpu").learn(60)
    RecurrentPPO("MlpFwmPolicy", env, n_steps=30, policy_kwargs=FWM_POLICY, device="cpu").learn(60)


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", default=None, help="contestants to run (default: all)")
    parser.add_argument("--n-envs", type=int, default=600)
    parser.add_argument("--n-steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=1800, help="PPO minibatch in transitions (60 envs x 30)")
    parser.add_argument("--n-epochs", type=int, default=4)
    parser.add_argument("--lstm-hidden", type=int, default=256, help="LSTM size (sb3-contrib's default 256)")
    parser.add_argument("--rollouts", type=int, default=2, help="timed rollouts per contestant")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args()
    th.set_num_threads(args.threads)
    table = contestants(args)
    names = args.only or list(table)
    unknown = sorted(set(names) - set(table))
    if unknown:
        parser.error(f"unknown contestant(s) {unknown}; choose from {list(table)}")
    print(f"GraphNav, {args.n_envs} envs x {args.n_steps} steps; PPO batch_size={args.batch_size}, "
          f"n_epochs={args.n_epochs}; torch threads={args.threads}")
    print(f"LSTM hidden {args.lstm_hidden}; FWM hidden 32, d 16")
    print("| contestant | env-steps/s | train share |\n|---|---|---|", flush=True)
    warm_up()
    rates = {}
    for name in names:
        rates[name], train_share = measure(table[name], args)
        print(f"| {name} | {rates[name]:,.0f} | {100 * train_share:.0f} % |", flush=True)
    for ours, theirs in (("ours-ppo", "sb3c-lstm"), ("ours-ppo", "sb3c-fwm"), ("ours-ppo-lstm", "sb3c-lstm")):
        if ours in rates and theirs in rates:
            print(f"{ours} / {theirs} = {rates[ours] / rates[theirs]:.1f}x")


if __name__ == "__main__":
    main()
