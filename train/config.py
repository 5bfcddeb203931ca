"""The RL training configuration: one dataclass whose field docstrings are the ``--help`` text of ``fwm-rl train``,
read from YAML files (``train/configs/NAME.yaml``) and overridden on the command line (``--field-name VALUE``)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Optional

from fwm_rl.train import options
from fwm_rl.train.options import Alias
from fwm_rl.train import runner
from fwm_rl.train.runner import RunConfig, check_core, check_positive

CONFIG_DIR = Path(__file__).parent / "configs"
# Old spellings of TrainConfig fields, accepted (with a warning) for one release.
ALIASES: tuple[Alias, ...] = ()


@dataclass
class TrainConfig(RunConfig):
    """One RL experiment: environment, agent, algorithm, budget and evaluation schedule."""

    experiment: str = "graphnav-fwm"
    """Name of the experiment; the run directory is RUNS_DIR/EXPERIMENT."""

    env_id: str = "FWM/GraphNav-v0"
    """Gymnasium id of the environment (FWM/GraphNav-v0, FWM/GridMaze-v0 or any registered id)."""
    env_kwargs: dict[str, Any] = field(default_factory=lambda: {"split": "train"})
    """Keyword arguments of the training environment, given as KEY=VALUE pairs (merged into the config's)."""
    eval_split: Optional[str] = "val"
    """Held-out split for periodic evaluation and best-model selection (val or another non-test split; test is
    played only by `fwm-rl evaluate`); none to skip evaluation."""
    eval_episodes: int = 600
    """Episodes per evaluation, one per held-out layout in order (600 = every GraphNav val graph once)."""
    eval_freq: int = 200_000
    """Environment steps between evaluations."""
    eval_deterministic: bool = False
    """Evaluate with the most likely action instead of a sampled one."""
    algo: Literal["ppo", "a2c"] = "ppo"
    """Learning algorithm: recurrent PPO or recurrent A2C."""
    core: str = runner.core_field("fwm")
    """Memory core of the policy, a key of fwm_rl.CORE_CLASSES (mlp is the memoryless baseline)."""
    hidden_size: int = 32
    """Hidden size of the core (the LSTM inside FWM and FW-LSTM)."""
    core_kwargs: dict[str, Any] = field(default_factory=dict)
    """Further options of the core, as KEY=VALUE pairs (fwm: memory_size, preset, ...)."""
    critic: Optional[Literal["separate", "shared", "joint", "none"]] = None
    """Critic: its own core (separate), the actor core's detached output (shared), the actor core trained by both
    losses (joint, the paper's agent) or feed-forward (none); none for the policy's default (separate)."""
    net_arch: Optional[list[int]] = None
    """MLP layers between the core and the policy/value heads ([] = linear heads, as in the paper); none for the
    policy's default."""
    n_envs: int = 64
    """Parallel environments."""
    n_steps: int = 30
    """Steps per environment in each rollout (one update per rollout of n_envs * n_steps steps)."""
    batch_size: Optional[int] = None
    """Minibatch size in steps (ppo); none for the algorithm's default."""
    n_epochs: Optional[int] = None
    """Passes over each rollout (ppo); none for the algorithm's default."""
    learning_rate: Optional[float] = None
    """Optimizer learning rate; none for the algorithm's default."""
    anneal_lr: bool = False
    """Decay the learning rate linearly from learning_rate to 0 over total_timesteps (CleanRL's anneal_lr); under a
    time budget, set total_timesteps to the steps the budget allows."""
    gamma: Optional[float] = None
    """Discount factor; none for the algorithm's default."""
    gae_lambda: Optional[float] = None
    """GAE lambda (1 = Monte-Carlo returns); none for the algorithm's default."""
    ent_coef: Optional[float] = None
    """Entropy bonus coefficient; none for the algorithm's default."""
    vf_coef: Optional[float] = None
    """Value loss coefficient; none for the algorithm's default."""
    max_grad_norm: Optional[float] = None
    """Gradient norm clip; none for the algorithm's default."""
    normalize_advantage: Optional[bool] = None
    """Normalise advantages per minibatch; none for the algorithm's default."""
    timeout_bootstrap: Optional[bool] = None
    """Bootstrap the value at a truncated episode end (false: Monte-Carlo returns, as in the paper); none for the
    algorithm's default (true)."""
    next_obs_coef: Optional[float] = None
    """Weight of an auxiliary loss: a head predicts the next observation from the actor core's output and the action
    taken, which trains the memory to hold what the agent has seen; none for the algorithm's default (0, off)."""
    oracle_coef: Optional[float] = None
    """Weight of an auxiliary loss: a head predicts, from the actor core's output, the action of an oracle that
    knows the layout, which trains the memory to hold the layout (needs env_kwargs privileged_obs=true; acting never
    reads it); none for the algorithm's default (0, off)."""
    imitation_coef: Optional[float] = None
    """Weight of a behaviour-cloning loss: the policy's cross-entropy against the env's privileged action (the
    oracle's, or the memory-perfect explorer's with env_kwargs privileged_action=explorer) on the states the agent
    visits (needs env_kwargs privileged_obs=true; acting never reads it); none for the algorithm's default (0, off)."""
    optimizer: Optional[Literal["adam", "rmsprop"]] = None
    """Optimizer; none for the algorithm's default (adam for ppo, rmsprop for a2c)."""
    optimizer_kwargs: dict[str, Any] = field(default_factory=dict)
    """Optimizer options as KEY=VALUE pairs (e.g. eps=1e-4)."""
    total_timesteps: int = 1_000_000
    """Environment steps to train for."""
    time_budget: Optional[float] = None
    """Stop after this many minutes of wall time (summed over resumed sessions), at the next update boundary."""
    checkpoint_freq: int = 200_000
    """Environment steps between checkpoints (always also at the end and on Ctrl-C)."""
    keep_checkpoints: int = 2
    """Most recent checkpoints kept on disk."""

    # Fields a resumed run may change: they do not alter what is computed, or only how long it goes on.
    RESUMABLE: ClassVar[tuple[str, ...]] = ("total_timesteps", "time_budget", "device", "threads")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_core(self.core)
        check_positive(self, ("eval_episodes", "eval_freq", "hidden_size", "n_envs", "n_steps", "total_timesteps",
                              "checkpoint_freq", "keep_checkpoints", "batch_size", "n_epochs"))
        runner.check_time_budget(self.time_budget)
        if self.eval_split == "test":
            raise ValueError("eval_split test would pick best_model.zip on the test set; use val (test is played "
                             "only by `fwm-rl evaluate`)")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def shipped_configs() -> dict[str, Path]:
    """Named experiments shipped in ``train/configs/``: name -> file."""
    return {path.stem: path for path in sorted(CONFIG_DIR.glob("*.yaml"))}


def find_config(name_or_path: str) -> Path:
    """A shipped experiment name (``graphnav-fwm``) or a path to a YAML file."""
    return options.find_config(name_or_path, shipped_configs())


def load_config(path: Path) -> TrainConfig:
    return options.load_config(TrainConfig, path, ALIASES)


def make_config(values: dict[str, Any], source: str, base: Optional[TrainConfig] = None,
                merge_dicts: bool = True) -> TrainConfig:
    """``base`` (or the defaults) updated with ``values``; UserError naming ``source`` for a bad key or value."""
    return options.make_config(TrainConfig, values, source, base=base, merge_dicts=merge_dicts, aliases=ALIASES)
