"""What reads a finished RL run: its model and config, its agent, and the environments it names."""
from __future__ import annotations

import difflib
import random
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import torch

from fwm_rl.train.checkpoints import BEST_MODEL_FILE, MODEL_FILE
from fwm_rl.train.config import TrainConfig, load_config
from fwm_rl.train.errors import UserError
from fwm_rl.train.rundir import CONFIG_FILE


def check_env_id(env_id: str) -> None:
    """UserError unless ``env_id`` is registered (after ``fwm_rl.envs`` registered its environments)."""
    import gymnasium

    import fwm_rl.envs  # noqa: F401  (registers the FWM/ environments)

    if env_id not in gymnasium.registry:
        ours = sorted(name for name in gymnasium.registry if name.startswith("FWM/"))
        close = difflib.get_close_matches(env_id, list(gymnasium.registry), n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        raise UserError(f"unknown env id {env_id!r}{hint} (fwm-rl environments: {', '.join(ours)})")


@contextmanager
def env_errors(env_id: str, env_kwargs: dict[str, Any]) -> Iterator[None]:
    """Turn the errors an environment raises for a bad id or bad kwargs into one UserError line."""
    import gymnasium

    check_env_id(env_id)
    try:
        yield
    except (TypeError, ValueError, FileNotFoundError, gymnasium.error.Error) as e:
        raise UserError(f"cannot make {env_id} with {env_kwargs}: {e}") from None


def make_env(env_id: str, n_envs: int, seed: Optional[int] = None, **env_kwargs: Any):
    """A batched SB3 VecEnv of ``n_envs`` copies of ``env_id``; a bad id or bad kwargs is a UserError."""
    from fwm_rl.envs import make_vec_env

    with env_errors(env_id, env_kwargs):
        return make_vec_env(env_id, n_envs, seed=seed, **env_kwargs)


def heldout_env_kwargs(env_id: str, env_kwargs: dict[str, Any], split: Optional[str] = None,
                       layouts: Optional[list[str]] = None, size: Optional[int] = None) -> dict[str, Any]:
    """Env kwargs that play a held-out ``split`` (or the given layout files) in a fixed order: env i of n gets
    layouts i, i+n, ... so that n_envs = set size plays every layout once. An env class with a ``heldout_kwargs``
    classmethod (ours: :meth:`fwm_rl.envs.env.TaskEnv.heldout_kwargs`) says which training kwargs a split
    replaces. ``size`` plays mazes of that many cells per side instead of the run's (GridMaze; without it a
    curriculum run plays its largest size)."""
    kwargs = {key: value for key, value in env_kwargs.items() if key not in ("split", "layout", "layouts")}
    if layouts:
        kwargs["layouts"] = layouts[0] if len(layouts) == 1 else list(layouts)
    elif split is not None:
        env_class = registered_class(env_id)
        kwargs = env_class.heldout_kwargs(kwargs, split) if hasattr(env_class, "heldout_kwargs") else {
            **kwargs, "split": split}
    if size is not None:
        kwargs = {key: value for key, value in kwargs.items() if key != "curriculum"} | {"size": size}
    kwargs["layout_order"] = "sequential"
    return kwargs


def registered_class(env_id: str) -> Any:
    """The class (or creator) a registered Gymnasium id makes; UserError for an unknown id."""
    import gymnasium
    from gymnasium.envs.registration import load_env_creator

    check_env_id(env_id)
    entry_point = gymnasium.spec(env_id).entry_point
    return load_env_creator(entry_point) if isinstance(entry_point, str) else entry_point


def find_model(path: str | Path, best: bool = False) -> tuple[Path, Optional[TrainConfig]]:
    """The model file of a run directory (``model.zip``, or ``best_model.zip`` with ``best``) or a ``.zip`` path,
    and the run's config when one sits beside it (or one level up, for checkpoints)."""
    path = Path(path)
    if path.is_dir():
        model = path / (BEST_MODEL_FILE if best else MODEL_FILE)
        if not model.exists():
            raise UserError(f"{path} holds no {model.name}; is it a run directory of `fwm-rl train`?")
    elif path.exists():
        model = path
    else:
        raise UserError(f"no such run directory or model file: {path}")
    for folder in (model.parent, model.parent.parent):
        if (folder / CONFIG_FILE).exists():
            return model, load_config(folder / CONFIG_FILE)
    return model, None


def check_device_option(device: str) -> None:
    """UserError for a --device this machine cannot use (see ``runner.check_device``)."""
    from fwm_rl.train.runner import check_device

    try:
        check_device(device)
    except ValueError as e:
        raise UserError(f"--device: {e}") from None


def load_agent(model_path: Path, algo: str, device: str = "auto"):
    """An agent loaded from an SB3 ``.zip`` for prediction (no environment attached)."""
    from fwm_rl.train.agent_factory import algorithm_class

    cls = algorithm_class(algo)
    try:
        return cls.load(model_path, device=device)
    except Exception as e:  # a corrupt or foreign file fails anywhere inside zipfile/torch/cloudpickle
        raise UserError(f"cannot load model {model_path}: {type(e).__name__}: {e}") from None


@contextmanager
def seeded_rng(seed: int) -> Iterator[None]:
    """Run a block with the global torch, numpy and random generators seeded, then put them back as they were,
    so that evaluating in the middle of training changes nothing that training draws."""
    np_state, py_state = np.random.get_state(), random.getstate()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        np.random.seed(seed)
        random.seed(seed)
        try:
            yield
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)
