"""A stable-baselines3 ``VecEnv`` stepping a task core in one numpy call (no per-env Python objects).

SB3 semantics: on ``done`` the returned observation is the next lifetime's first one, ``infos[i]`` is the info of
the finished lifetime's last step with ``terminal_observation``, ``TimeLimit.truncated`` (lifetimes only truncate)
and ``episode = {"r", "l", "t"}`` as SB3's ``Monitor`` writes them, so ``rollout/ep_rew_mean`` and
``evaluate_policy`` work unchanged.
"""
from __future__ import annotations

import time
from typing import Any, Sequence

import gymnasium as gym
import numpy as np
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import VecEnv
from stable_baselines3.common.vec_env.base_vec_env import VecEnvIndices, VecEnvObs, VecEnvStepReturn

from fwm_rl.envs.env import CoreVectorEnv, check_actions


class BatchedVecEnv(VecEnv):
    """SB3 view of a :class:`CoreVectorEnv` (seeding: env i gets ``seed + i`` via :meth:`seed`, as in SB3)."""

    def __init__(self, venv: CoreVectorEnv) -> None:
        self.venv = venv
        self.core = venv.core
        super().__init__(venv.num_envs, venv.single_observation_space, venv.single_action_space)
        self._actions = np.zeros(venv.num_envs, dtype=np.int64)
        self._returns = np.zeros(venv.num_envs)
        self._start = time.time()

    def reset(self) -> VecEnvObs:
        seeds = self._seeds if any(s is not None for s in self._seeds) else None
        obs, _ = self.venv.reset(seed=seeds)
        self.reset_infos = self.core.row_infos()
        self._returns[:] = 0.0
        self._reset_seeds()
        self._reset_options()
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = check_actions(np.asarray(actions).reshape(self.num_envs), self.core.n_actions)

    def step_wait(self) -> VecEnvStepReturn:
        rewards, dones = self.core.step(self._actions)
        self._returns += rewards
        obs = self.core.observe()
        infos = self.core.row_infos()
        done_rows = np.flatnonzero(dones)
        if done_rows.size:
            elapsed = round(time.time() - self._start, 6)
            for row in done_rows.tolist():
                infos[row]["terminal_observation"] = obs[row]
                infos[row]["TimeLimit.truncated"] = True
                infos[row]["episode"] = {"r": float(self._returns[row]), "l": int(self.core.t[row]), "t": elapsed}
            self._returns[done_rows] = 0.0
            self.core.reset_rows(done_rows)
            obs = self.core.observe()
        return obs, rewards, dones, infos

    def close(self) -> None:
        self.venv.close()

    def get_images(self) -> Sequence[np.ndarray | None]:
        return [None] * self.num_envs

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        """Attributes are shared by all envs of the batch (``render_mode``, ``spec``, ``core``, ...)."""
        return [getattr(self.venv, attr_name)] * len(self._get_indices(indices))

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        raise AttributeError(f"cannot set {attr_name!r}: the {self.num_envs} envs are rows of one batched core")

    def env_method(self, method_name: str, *method_args: Any, indices: VecEnvIndices = None,
                   **method_kwargs: Any) -> list[Any]:
        raise AttributeError(f"cannot call {method_name!r} per env: the envs are rows of one batched core")

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None) -> list[bool]:
        """True for ``Monitor`` only: the episode statistics it would add are already in ``infos``."""
        return [wrapper_class is Monitor] * len(self._get_indices(indices))


def make_vec_env(env_id: str, n_envs: int, seed: int | None = None, **env_kwargs: Any) -> BatchedVecEnv:
    """A batched SB3 ``VecEnv`` of ``n_envs`` copies of ``env_id`` ("FWM/GraphNav-v0" or "FWM/GridMaze-v0").

    ``seed``: env i is seeded with ``seed + i`` at the first reset (None: random). ``env_kwargs`` go to the env.
    """
    spec = gym.spec(env_id)
    if spec.vector_entry_point is None:
        raise ValueError(f"{env_id!r} has no batched implementation; use an FWM/ id")
    venv = gym.make_vec(env_id, num_envs=n_envs, vectorization_mode="vector_entry_point", **env_kwargs)
    vec_env = BatchedVecEnv(venv)
    if seed is not None:
        vec_env.seed(seed)
    return vec_env
