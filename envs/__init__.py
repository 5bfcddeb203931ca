"""fwm_rl.envs: Gymnasium POMDP meta-RL tasks with numpy-batched twins.

Importing registers ``FWM/GraphNav-v0`` (the FWM paper's random-graph task) and ``FWM/GridMaze-v0`` (procedural
mazes with a hidden goal), each with a native ``vector_entry_point``. ``make_vec_env`` builds a batched SB3
``VecEnv``; it is the only part that imports stable-baselines3 (and so torch), lazily.
"""
from __future__ import annotations

from typing import Any

import gymnasium

from fwm_rl.envs.dynamics import privileged_size
from fwm_rl.envs.explorer import MemoryExplorer
from fwm_rl.envs.graph_nav import GraphNavEnv, GraphNavVectorEnv
from fwm_rl.envs.grid_maze import GridMazeEnv, GridMazeVectorEnv
from fwm_rl.envs.layouts import Layout, layout_id, load_layouts, parse_layout
from fwm_rl.envs.reference import EpisodeRecorder, EpisodeStats, run_reference

__all__ = ["GraphNavEnv", "GraphNavVectorEnv", "GridMazeEnv", "GridMazeVectorEnv", "Layout", "layout_id",
           "load_layouts", "parse_layout", "EpisodeRecorder", "EpisodeStats", "run_reference", "make_vec_env",
           "privileged_size", "MemoryExplorer"]

for _env, _vector_env in ((GraphNavEnv, GraphNavVectorEnv), (GridMazeEnv, GridMazeVectorEnv)):
    if _env.env_id not in gymnasium.registry:
        gymnasium.register(id=_env.env_id, entry_point=f"{_env.__module__}:{_env.__qualname__}",
                           vector_entry_point=f"{_vector_env.__module__}:{_vector_env.__qualname__}")


def __getattr__(name: str) -> Any:
    if name in ("make_vec_env", "BatchedVecEnv"):
        from fwm_rl.envs import sb3_vec

        return getattr(sb3_vec, name)
    raise AttributeError(f"module 'fwm_rl.envs' has no attribute {name!r}")
