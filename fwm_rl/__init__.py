"""fwm-rl: memory-based reinforcement learning with Fast Weight Memory.

``fwm_rl`` holds the memory cores (sequence models, no RL); ``fwm_rl.envs``, ``fwm_rl.agents`` and ``fwm_rl.train``
build on them. The core names below are imported on first use, so ``import fwm_rl.envs`` does not load torch.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "MemoryCore": "fwm_rl.core",
    "State": "fwm_rl.core",
    "StateSpec": "fwm_rl.core",
    "detach_state": "fwm_rl.core",
    "build_core": "fwm_rl.registry",
    "core_options": "fwm_rl.registry",
    "CORE_CLASSES": "fwm_rl.registry",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'fwm_rl' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
