"""What an RL checkpoint holds and how it comes back: the agent (SB3 ``.zip`` bytes plus its runtime state through
``get_runtime_state``/``set_runtime_state``), the whole training env, the global RNG states and the runner's own
state. The file itself is written and read by ``RunDir`` (atomic, newest readable first)."""
from __future__ import annotations

import io
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fwm_rl.train.io import atomic_write

MODEL_FILE = "model.zip"
BEST_MODEL_FILE = "best_model.zip"


def rng_states() -> dict[str, Any]:
    """The global torch, numpy and random generator states (and CUDA's when present)."""
    states = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "random": random.getstate()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    np.random.set_state(states["numpy"])
    random.setstate(states["random"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def model_bytes(model) -> bytes:
    buffer = io.BytesIO()
    model.save(buffer)
    return buffer.getvalue()


def save_model(model, path: Path) -> None:
    """``model.save`` to ``path``, atomically."""
    data = model_bytes(model)
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def agent_payload(model, run_state: dict[str, Any]) -> dict[str, Any]:
    """Everything the next rollout reads (taken at an update boundary): see ``restore_agent``."""
    return {"model": model_bytes(model), "runtime": model.get_runtime_state(), "env": model.get_env(),
            "rng": rng_states(), "run_state": run_state}


def restore_agent(payload: dict[str, Any], algorithm: type, device: str):
    """The agent of ``agent_payload`` with its env attached (not reset) and its runtime state; the global RNGs are
    restored last, so nothing drawn while loading changes what training draws next."""
    model = algorithm.load(io.BytesIO(payload["model"]), env=None, device=device)
    model.set_env(payload["env"], force_reset=False)
    model.set_runtime_state(payload["runtime"])
    set_rng_states(payload["rng"])
    return model
