"""fwm-rl: memory-based reinforcement learning with Fast Weight Memory.

``fwm_rl`` holds the memory cores (sequence models, no RL); ``fwm_rl.envs``, ``fwm_rl.agents`` and ``fwm_rl.train``
build on them.
"""
from fwm_rl.core import MemoryCore, State, StateSpec, detach_state
from fwm_rl.registry import CORE_CLASSES, build_core, core_options

__version__ = "0.1.0"

__all__ = ["MemoryCore", "State", "StateSpec", "detach_state", "build_core", "core_options", "CORE_CLASSES"]
