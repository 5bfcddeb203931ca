"""What an RL checkpoint holds and how it comes back: the agent (SB3 ``.zip`` bytes plus its runtime state through
``get_runtime_state``/``set_runtime_state``), the whole training env, the global RNG states and the runner's own
state. The file itself is written and read by ``RunDir`` (atomic, newest readable first).

A data-parallel run (under torchrun) keeps one model and run state (the ranks hold the same ones) and, under
``"ranks"``, every rank's own runtime state, env and RNG states, in rank order; it resumes with as many processes."""
from __future__ import annotations

import io
import random
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from fwm_rl.agents.distributed import SINGLE_PROCESS, DataParallel, per_rank
from fwm_rl.train.errors import UserError
from fwm_rl.train.io import atomic_write

MODEL_FILE = "model.zip"
BEST_MODEL_FILE = "best_model.zip"
RANK_KEYS = ("runtime", "env", "rng")  # what each rank of a data-parallel run has of its own


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


def gather_ranks(payload: dict[str, Any], ranks: DataParallel) -> Optional[dict[str, Any]]:
    """The checkpoint payload of a data-parallel run on rank 0: ``payload`` with every rank's ``RANK_KEYS`` gathered
    under ``"ranks"`` (None on the other ranks); a single process's ``payload`` unchanged."""
    if not ranks.distributed:
        return payload
    parts = ranks.gather({key: payload[key] for key in RANK_KEYS})
    if not ranks.main:
        return None
    return {**{key: value for key, value in payload.items() if key not in RANK_KEYS}, "ranks": parts}


def restore_agent(payload: dict[str, Any], algorithm: type, device: str, ranks: DataParallel = SINGLE_PROCESS):
    """The agent of ``agent_payload`` (this rank's part of it, for a data-parallel run) with its env attached (not
    reset) and its runtime state; the global RNGs are restored last, so nothing drawn while loading changes what
    training draws next. UserError when the run was saved by another number of processes."""
    if "ranks" in payload or ranks.distributed:
        try:
            payload = {**payload, **per_rank(payload.get("ranks", [payload]), ranks, "the checkpoint")}
        except ValueError as e:
            raise UserError(f"cannot resume: {e}") from None
    model = algorithm.load(io.BytesIO(payload["model"]), env=None, device=device)
    model.set_env(payload["env"], force_reset=False)
    model.set_runtime_state(payload["runtime"])
    set_rng_states(payload["rng"])
    return model
