"""Scoring lifetimes and the reference policies (uniform random, full-knowledge oracle, and on GridMaze the
memory-perfect :class:`~fwm_rl.envs.explorer.MemoryExplorer`).

:class:`EpisodeRecorder` turns the SB3 stream ``(rewards, dones, infos)`` into one :class:`EpisodeStats` per finished
lifetime; :func:`run_reference` plays a reference policy through the same batched ``VecEnv`` an agent is evaluated
on, so with ``layout_order="sequential"`` and the same seed both meet the same layouts.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from fwm_rl.envs.checks import check_int
from fwm_rl.envs.explorer import MemoryExplorer


@dataclass
class EpisodeStats:
    """Score of one lifetime."""

    episode_return: float
    """Sum of rewards."""
    goals: int
    """Goals reached."""
    steps_to_first_goal: int | None
    """Steps until the first goal (None if no goal was reached)."""
    exploit_ratios: list[float] = field(default_factory=list)
    """Steps taken / shortest path for goal visits k >= 2 (1.0 is perfect recall and planning)."""
    layout_id: str = ""
    """Id of the lifetime's layout."""
    goal_steps: list[int] = field(default_factory=list)
    """Step of the lifetime (1-based) at which each goal was reached, in order."""


class EpisodeRecorder:
    """Accumulates per-env lifetimes from ``VecEnv.step`` outputs.

    :param n_envs: number of envs N of the ``VecEnv``.
    """

    def __init__(self, n_envs: int) -> None:
        self.n_envs = check_int("n_envs", n_envs, 1)
        self._returns = np.zeros(self.n_envs)
        self._steps = np.zeros(self.n_envs, dtype=np.int64)
        self._first_goal: list[int | None] = [None] * self.n_envs
        self._ratios: list[list[float]] = [[] for _ in range(self.n_envs)]
        self._goal_steps: list[list[int]] = [[] for _ in range(self.n_envs)]

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Unpickle (a checkpoint's training env): a recorder saved by an older version lacks the newer fields; they
        start empty, so the lifetimes in progress at the save miss only what those fields would have held before it."""
        self.__init__(state["n_envs"])
        self.__dict__.update(state)

    def update(self, rewards: np.ndarray, dones: np.ndarray, infos: Sequence[dict[str, Any]]) -> list[EpisodeStats]:
        """Record one step: rewards [N], dones [N], infos (N dicts) -> the lifetimes that ended, in env order."""
        self._returns += rewards
        self._steps += 1
        finished = []
        for env, info in enumerate(infos):
            if "goal_visit" in info:
                self._goal_steps[env].append(int(self._steps[env]))
                if self._first_goal[env] is None:
                    self._first_goal[env] = int(self._steps[env])
                if info["goal_visit"] >= 2:
                    self._ratios[env].append(float(info["exploit_ratio"]))
            if dones[env]:
                finished.append(EpisodeStats(float(self._returns[env]), int(info["goals_reached"]),
                                             self._first_goal[env], self._ratios[env], info["layout_id"],
                                             self._goal_steps[env]))
                self._returns[env] = 0.0
                self._steps[env] = 0
                self._first_goal[env] = None
                self._ratios[env] = []
                self._goal_steps[env] = []
        return finished


def run_reference(env_id: str, policy: str, n_episodes: int, seed: int = 0, n_envs: int | None = None,
                  **env_kwargs: Any) -> list[EpisodeStats]:
    """Play ``policy`` ("random": uniform actions; "oracle": knows the layout and walks shortest paths;
    "explorer", GridMaze only: remembers all it has seen, :class:`~fwm_rl.envs.explorer.MemoryExplorer`) for
    ``n_episodes`` lifetimes on ``make_vec_env(env_id, n_envs, seed=seed, **env_kwargs)``.

    ``n_envs`` defaults to ``min(n_episodes, 1024)``. Lifetimes are returned in the order they end (env order
    within a step), the first ``n_episodes`` of them.
    """
    from fwm_rl.envs.sb3_vec import make_vec_env

    n_episodes = check_int("n_episodes", n_episodes, 1)
    n_envs = min(n_episodes, 1024) if n_envs is None else n_envs
    vec_env = make_vec_env(env_id, n_envs, seed=seed, **env_kwargs)
    dynamics = vec_env.venv.dynamics
    if policy not in dynamics.reference_policies:
        vec_env.close()
        raise ValueError(f"{env_id} has no {policy!r} reference; allowed: {', '.join(dynamics.reference_policies)}")
    explorer = MemoryExplorer(dynamics) if policy == "explorer" else None
    actions_rng = np.random.default_rng(seed)
    recorder = EpisodeRecorder(n_envs)
    vec_env.reset()
    stats: list[EpisodeStats] = []
    while len(stats) < n_episodes:
        if explorer is not None:
            explorer.observe()
            actions = explorer.actions()
        elif policy == "oracle":
            actions = vec_env.oracle_actions()
        else:
            actions = actions_rng.integers(vec_env.action_space.n, size=n_envs)
        _, rewards, dones, infos = vec_env.step(actions)
        if explorer is not None:
            explorer.forget(dones.nonzero()[0])
        stats += recorder.update(rewards, dones, infos)
    vec_env.close()
    return stats[:n_episodes]
