"""A stable-baselines3 ``VecEnv`` over the native Gymnasium vector env (one numpy call per step, no per-env Python
objects, and the vector env's own autoreset: :meth:`~fwm_rl.envs.env.TaskVectorEnv.step_per_env`).

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

from fwm_rl.envs.env import TaskVectorEnv


class BatchedVecEnv(VecEnv):
    """SB3 view of a :class:`~fwm_rl.envs.env.TaskVectorEnv` (seeding: env i gets ``seed + i`` via :meth:`seed`,
    as in SB3). A wrong action array raises ``ValueError`` in :meth:`step` and changes nothing."""

    def __init__(self, venv: TaskVectorEnv) -> None:
        self.venv = venv
        super().__init__(venv.num_envs, venv.single_observation_space, venv.single_action_space)
        self._actions: np.ndarray | None = None
        self._returns = np.zeros(venv.num_envs)
        self._lengths = np.zeros(venv.num_envs, dtype=np.int64)
        self._start = time.time()

    def reset(self) -> VecEnvObs:
        seeds = self._seeds if any(s is not None for s in self._seeds) else None
        obs, _ = self.venv.reset(seed=seeds)
        self.reset_infos = self.venv.infos_per_env()
        self._returns[:] = 0.0
        self._lengths[:] = 0
        self._reset_seeds()
        self._reset_options()
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = actions

    def step_wait(self) -> VecEnvStepReturn:
        obs, rewards, dones, infos, final_obs = self.venv.step_per_env(self._actions)
        self._returns += rewards
        self._lengths += 1
        if final_obs is not None:
            elapsed = round(time.time() - self._start, 6)
            done_rows = np.flatnonzero(dones)
            for row in done_rows.tolist():
                infos[row]["terminal_observation"] = final_obs[row]
                infos[row]["TimeLimit.truncated"] = True
                infos[row]["episode"] = {"r": float(self._returns[row]), "l": int(self._lengths[row]), "t": elapsed}
            self._returns[done_rows] = 0.0
            self._lengths[done_rows] = 0
        return obs, rewards, dones, infos

    def oracle_actions(self) -> np.ndarray:
        """[n_envs] actions of a full-knowledge agent walking shortest paths to the goals (a reference)."""
        return self.venv.oracle_actions()

    def close(self) -> None:
        self.venv.close()

    def get_images(self) -> Sequence[np.ndarray | None]:
        return [None] * self.num_envs

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        """Attributes are shared by all envs of the batch (``render_mode``, ``spec``, ``dynamics``, ...)."""
        return [getattr(self.venv, attr_name)] * len(self._get_indices(indices))

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        raise AttributeError(f"cannot set {attr_name!r}: the {self.num_envs} envs are rows of one batched env")

    def env_method(self, method_name: str, *method_args: Any, indices: VecEnvIndices = None,
                   **method_kwargs: Any) -> list[Any]:
        raise AttributeError(f"cannot call {method_name!r} per env: the envs are rows of one batched env")

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
