"""Evaluation on held-out layouts: play a fixed set of episodes, summarise them (mean return with a 95% interval,
goals, steps to the first goal, exploit ratio, the per-visit curve) and score them against the random and oracle
references (GridMaze also plays the memory-perfect explorer beside them)."""
from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from fwm_rl.train.errors import UserError
from fwm_rl.train.runs import (check_device_option, find_model, heldout_env_kwargs, load_agent, make_env,
                               registered_class, seeded_rng)

MAX_EVAL_ENVS = 1000
_Z95 = 1.959963984540054
_T95_SMALL_DF = {1: 12.706204736, 2: 4.302652730, 3: 3.182446305, 4: 2.776445105}


def t_critical_95(df: int) -> float:
    """Two-sided 95% quantile of Student's t with ``df`` degrees of freedom: table values for df <= 4, beyond that a
    Cornish-Fisher series in 1/df (|error| < 1e-3)."""
    if df < 1:
        raise ValueError(f"df must be >= 1, got {df}")
    if df in _T95_SMALL_DF:
        return _T95_SMALL_DF[df]
    z, v = _Z95, float(df)
    return (z + (z**3 + z) / (4 * v) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * v**2)
            + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * v**3)
            + (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / (92160 * v**4))


def summarize(episodes: Sequence[Any]) -> dict[str, float]:
    """Statistics of a list of ``fwm_rl.envs.EpisodeStats``: mean return and the half-width of its 95% t-interval,
    goals per episode, steps to the first goal (over episodes that reached one) and the share that did, and the
    exploit ratio (steps / shortest path, pooled over every goal after the first). NaN where undefined."""
    if not episodes:
        raise ValueError("no episodes to summarise")
    returns = np.array([e.episode_return for e in episodes], dtype=np.float64)
    first = [e.steps_to_first_goal for e in episodes if e.steps_to_first_goal is not None]
    ratios = [r for e in episodes for r in e.exploit_ratios]
    n = len(returns)
    return {
        "episodes": n,
        "return_mean": float(returns.mean()),
        "return_ci95": float(t_critical_95(n - 1) * returns.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan,
        "goals": float(np.mean([e.goals for e in episodes])),
        "steps_to_first_goal": float(np.mean(first)) if first else math.nan,
        "first_goal_rate": len(first) / n,
        "exploit_ratio": float(np.mean(ratios)) if ratios else math.nan,
    }


def visit_curve(episodes: Sequence[Any]) -> dict[str, list]:
    """Steps to goal per visit: ``visit_steps[k]`` is the mean number of steps that visit k + 1 of a lifetime took
    (visit 1 from the lifetime's start, visit k > 1 from the teleport after goal k - 1) over the
    ``visit_count[k]`` lifetimes that completed it. Later visits count only the lifetimes that got that far."""
    durations: list[list[int]] = []
    for episode in episodes:
        times = [0, *episode.goal_steps]
        for k in range(len(times) - 1):
            if k == len(durations):
                durations.append([])
            durations[k].append(times[k + 1] - times[k])
    return {"visit_steps": [float(np.mean(d)) for d in durations], "visit_count": [len(d) for d in durations]}


def normalised_score(value: float, random_value: float, oracle_value: float) -> float:
    """(value - random) / (oracle - random): 0 plays like the random policy, 1 like the oracle."""
    if oracle_value == random_value:
        return math.nan
    return (value - random_value) / (oracle_value - random_value)


def episode_quotas(n_episodes: int, n_envs: int) -> np.ndarray:
    """Episodes each env plays so that env i plays layouts i, i+n, ... and the total is ``n_episodes``: [n_envs]."""
    return np.array([n_episodes // n_envs + (i < n_episodes % n_envs) for i in range(n_envs)])


def run_episodes(agent, vec_env, n_episodes: int, seed: int = 0, deterministic: bool = False,
                 progress: bool = False) -> list[Any]:
    """Play ``n_episodes`` episodes with ``agent.predict`` (recurrent state reset at every episode start) and
    return their ``EpisodeStats`` in layout order; ``progress`` shows a bar of finished episodes and env steps on
    stderr. Global RNGs are left as they were."""
    from tqdm.auto import tqdm

    from fwm_rl.envs import EpisodeRecorder

    n_envs = vec_env.num_envs
    quotas = episode_quotas(n_episodes, n_envs)
    played = np.zeros(n_envs, dtype=int)
    recorder = EpisodeRecorder(n_envs)
    finished: list[tuple[int, int, Any]] = []  # (round k, env i, stats): layout i + k * n_envs
    with seeded_rng(seed):
        vec_env.seed(seed)
        obs = vec_env.reset()
        state, episode_starts = None, np.ones(n_envs, dtype=bool)
        bar = tqdm(total=n_episodes, desc="evaluating", unit="episode", disable=not progress, dynamic_ncols=True)
        steps = 0
        while (played < quotas).any():
            actions, state = agent.predict(obs, state=state, episode_start=episode_starts, deterministic=deterministic)
            obs, rewards, dones, infos = vec_env.step(actions)
            steps += n_envs
            for env_index, stats in zip(np.flatnonzero(dones), recorder.update(rewards, dones, infos)):
                if played[env_index] < quotas[env_index]:
                    finished.append((played[env_index], env_index, stats))
                    bar.update(1)
                played[env_index] += 1
            bar.set_postfix_str(f"{steps:,} env steps", refresh=False)
            bar.update(0)  # redraws at most every mininterval, also while no episode has ended yet
            episode_starts = dones
        bar.close()
    return [stats for _, _, stats in sorted(finished, key=lambda item: item[:2])]


def reference_episodes(env_id: str, env_kwargs: dict[str, Any], n_episodes: int, n_envs: int, seed: int = 0,
                       policies: Sequence[str] = ("random", "oracle")) -> dict[str, list[Any]]:
    """Episodes of the reference ``policies`` on the same layouts, in the same order, as ``run_episodes``."""
    from fwm_rl.envs import run_reference

    return {policy: run_reference(env_id, policy=policy, n_episodes=n_episodes, seed=seed, n_envs=n_envs, **env_kwargs)
            for policy in policies}


def all_reference_policies(env_id: str) -> tuple[str, ...]:
    """Every reference policy the env plays (random and oracle; GridMaze adds the memory-perfect explorer)."""
    dynamics_class = getattr(registered_class(env_id), "dynamics_class", None)
    return getattr(dynamics_class, "reference_policies", ("random", "oracle"))


def references(env_id: str, env_kwargs: dict[str, Any], n_episodes: int, n_envs: int, seed: int = 0) -> dict[str, dict]:
    """Summaries of :func:`reference_episodes`."""
    return {policy: summarize(episodes)
            for policy, episodes in reference_episodes(env_id, env_kwargs, n_episodes, n_envs, seed).items()}


def add_scores(rows: dict[str, dict], reference_rows: dict[str, dict]) -> None:
    """Put ``score`` (normalised return) into every row, in place."""
    low, high = reference_rows["random"]["return_mean"], reference_rows["oracle"]["return_mean"]
    for row in rows.values():
        row["score"] = normalised_score(row["return_mean"], low, high)


def evaluate(path: str | Path, split: str = "test", episodes: Optional[int] = None,
             layouts: Optional[list[str]] = None, n_envs: Optional[int] = None, seed: int = 0,
             deterministic: bool = False, best: bool = False, with_references: bool = True,
             device: str = "auto", progress: bool = False, size: Optional[int] = None) -> dict[str, Any]:
    """Evaluate the model of a run directory (or a model file inside one) on a held-out split or on layout files;
    ``size`` plays mazes of that many cells per side instead of the run's (GridMaze).

    Returns ``{"env_id", "env_kwargs", "model", "rows": {name: summary (+ score) + visit_curve}}`` with rows for
    the agent and, unless ``with_references`` is off, the references on the same layouts (random, oracle and, on
    GridMaze, the memory-perfect explorer; scores stay normalised by random and oracle).
    ``progress`` shows a bar of the agent's episodes (and env steps) on stderr.
    """
    check_device_option(device)
    model_path, config = find_model(path, best=best)
    if config is None:
        raise UserError(f"no config.yaml beside {model_path}: evaluate a run directory made by `fwm-rl train`")
    episodes = config.eval_episodes if episodes is None else episodes
    if episodes < 1:
        raise UserError(f"--episodes must be >= 1, got {episodes}")
    if n_envs is not None and n_envs < 1:
        raise UserError(f"--n-envs must be >= 1, got {n_envs}")
    n_envs = min(n_envs or episodes, episodes, MAX_EVAL_ENVS)
    env_kwargs = heldout_env_kwargs(config.env_id, config.env_kwargs, split=split, layouts=layouts, size=size)
    agent = load_agent(model_path, config.algo, device=device)
    vec_env = make_env(config.env_id, n_envs, seed=seed, **env_kwargs)
    try:
        played = {config.experiment: run_episodes(agent, vec_env, episodes, seed, deterministic, progress=progress)}
    finally:
        vec_env.close()
    if with_references:
        policies = all_reference_policies(config.env_id)
        played = {**reference_episodes(config.env_id, env_kwargs, episodes, n_envs, seed, policies), **played}
    rows = {name: {**summarize(stats), **visit_curve(stats)} for name, stats in played.items()}
    if with_references:
        add_scores(rows, rows)
    return {"env_id": config.env_id, "env_kwargs": env_kwargs, "model": str(model_path), "rows": rows}


def _fmt(value: float, digits: int = 2) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def format_table(rows: dict[str, dict]) -> str:
    """A plain-text table of summaries, one row per agent."""
    header = ["agent", "episodes", "return", "±95%", "score", "goals/ep", "1st goal (steps)", "reached", "exploit"]
    lines = [[name, str(r["episodes"]), _fmt(r["return_mean"]), _fmt(r["return_ci95"]), _fmt(r.get("score", math.nan)),
              _fmt(r["goals"]), _fmt(r["steps_to_first_goal"], 1), f"{r['first_goal_rate']:.0%}",
              _fmt(r["exploit_ratio"])] for name, r in rows.items()]
    widths = [max(len(row[i]) for row in [header, *lines]) for i in range(len(header))]

    def render(row: list[str]) -> str:
        return "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))

    return "\n".join([render(header), "  ".join("-" * w for w in widths), *map(render, lines)])


def print_report(report: dict[str, Any], file=sys.stdout) -> None:
    print(f"{report['env_id']} {report['env_kwargs']}", file=file)
    print(format_table(report["rows"]), file=file)
