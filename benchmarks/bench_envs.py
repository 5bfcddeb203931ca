"""Env-steps per second of the fwm_rl.envs tasks: single env, native batched VectorEnv, SB3 VecEnv.

Random actions drawn up front; resets (autoresets for batched envs) are included in the time. Each row is the median
of ``--repeats`` runs, in wall-clock time and in CPU time of this process (``time.process_time``): on a shared machine
the wall-clock rate drops with the load while the CPU-time rate estimates what an idle core would give.
Usage: python benchmarks/bench_envs.py [--steps 20000] [--repeats 3] [--references]
``--references`` instead prints the reference-policy scores (random, oracle) on the frozen evaluation sets.
"""
from __future__ import annotations

import argparse
import os
import platform
import time

import gymnasium as gym
import numpy as np

import fwm_rl.envs
from fwm_rl.envs import make_vec_env

ENV_IDS = ("FWM/GraphNav-v0", "FWM/GridMaze-v0")
BATCH_SIZES = (1, 64, 1024)


Rates = tuple[float, float]
"""(env-steps per wall-clock second, env-steps per CPU second)."""


def single_env_rate(env: gym.Env, steps: int) -> Rates:
    actions = np.random.default_rng(0).integers(env.action_space.n, size=steps).tolist()
    env.reset(seed=0)
    wall, cpu = time.perf_counter(), time.process_time()
    for action in actions:
        if env.step(action)[3]:
            env.reset()
    return steps / (time.perf_counter() - wall), steps / (time.process_time() - cpu)


def batched_rate(step, n_envs: int, n_actions: int, steps: int) -> Rates:
    calls = max(steps // n_envs, 20)
    actions = np.random.default_rng(0).integers(n_actions, size=(calls, n_envs))
    wall, cpu = time.perf_counter(), time.process_time()
    for batch in actions:
        step(batch)
    return calls * n_envs / (time.perf_counter() - wall), calls * n_envs / (time.process_time() - cpu)


def median(fn, repeats: int) -> Rates:
    """Median wall-clock and median CPU-time rate over ``repeats`` runs of ``fn``."""
    runs = np.array([fn() for _ in range(repeats)])
    return float(np.median(runs[:, 0])), float(np.median(runs[:, 1]))


REFERENCE_CONFIGS = (
    ("FWM/GraphNav-v0", {"split": "train"}),
    ("FWM/GraphNav-v0", {"split": "test"}),
    ("FWM/GridMaze-v0", {"split": "test", "size": 5}),
    ("FWM/GridMaze-v0", {"split": "test", "size": 7}),
    ("FWM/GridMaze-v0", {"split": "test", "size": 9}),
    ("FWM/GridMaze-v0", {"split": "test_large"}),
    ("FWM/GridMaze-v0", {"split": "test_loopy"}),
)


def references() -> None:
    """One lifetime per layout of each frozen set (sequential order, seed 0) for both reference policies."""
    print("| env | kwargs | policy | lifetimes | mean return | goals / lifetime | steps to first goal | "
          "exploit ratio (visits >= 2) |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for env_id, kwargs in REFERENCE_CONFIGS:
        n = gym.make(env_id, **kwargs).unwrapped.dynamics.n_layouts
        for policy in ("random", "oracle"):
            stats = fwm_rl.envs.run_reference(env_id, policy, n, seed=0, layout_order="sequential", **kwargs)
            first = [s.steps_to_first_goal for s in stats if s.steps_to_first_goal is not None]
            ratios = [r for s in stats for r in s.exploit_ratios]
            print(f"| {env_id} | {kwargs} | {policy} | {n} | {np.mean([s.episode_return for s in stats]):.2f} | "
                  f"{np.mean([s.goals for s in stats]):.2f} | {np.mean(first) if first else float('nan'):.1f} | "
                  f"{np.mean(ratios) if ratios else float('nan'):.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=20000,
                        help="env-steps per single-env measurement (batched: 10x as many)")
    parser.add_argument("--repeats", type=int, default=5, help="measurements per row; the median is reported")
    parser.add_argument("--references", action="store_true", help="print reference-policy scores instead")
    args = parser.parse_args()
    if args.references:
        references()
        return
    print(f"python {platform.python_version()}, numpy {np.__version__}, gymnasium {gym.__version__}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start")
    rows = []
    for env_id in ENV_IDS:
        env = gym.make(env_id)
        rows.append((env_id, "single env (gym.make, wrappers)", 1,
                     median(lambda: single_env_rate(env, args.steps), args.repeats)))
        raw = gym.make(env_id).unwrapped
        rows.append((env_id, "single env (unwrapped)", 1,
                     median(lambda: single_env_rate(raw, args.steps), args.repeats)))
        for n in BATCH_SIZES:
            venv = gym.make_vec(env_id, num_envs=n, vectorization_mode="vector_entry_point")
            venv.reset(seed=0)
            rate = median(lambda: batched_rate(venv.step, n, venv.single_action_space.n, 10 * args.steps), args.repeats)
            rows.append((env_id, "gymnasium VectorEnv (native, numpy)", n, rate))
        for n in BATCH_SIZES[1:]:
            vec = make_vec_env(env_id, n, seed=0)
            vec.reset()
            rate = median(lambda: batched_rate(vec.step, n, vec.action_space.n, 10 * args.steps), args.repeats)
            rows.append((env_id, "SB3 VecEnv (make_vec_env)", n, rate))
    try:
        import minigrid  # noqa: F401
    except ImportError:
        print("minigrid not installed: Minigrid comparison skipped (spec measured MiniGrid-MultiRoom-N6-v0 at "
              "~10,000 steps/s single env on a 2-core machine)")
    print(f"load average {os.getloadavg()[0]:.1f} at end\n")
    print("| env | implementation | n envs | env-steps/s (wall clock) | env-steps per CPU second |")
    print("|---|---|---:|---:|---:|")
    for env_id, impl, n, (wall, cpu) in rows:
        print(f"| {env_id} | {impl} | {n} | {wall:,.0f} | {cpu:,.0f} |")


if __name__ == "__main__":
    main()
