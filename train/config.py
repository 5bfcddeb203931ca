"""The training configuration: one dataclass whose field docstrings are the ``--help`` text, read from YAML files
(``train/configs/NAME.yaml``) and overridden on the command line (``--field-name VALUE``)."""
from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import textwrap
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

from fwm_rl.train.errors import UserError

CONFIG_DIR = Path(__file__).parent / "configs"
# Fields a resumed run may change: they do not alter what is computed, or only how long it goes on.
RESUMABLE_FIELDS = ("total_timesteps", "time_budget", "device", "threads")


@dataclass
class TrainConfig:
    """One RL experiment: environment, agent, algorithm, budget and evaluation schedule."""

    experiment: str = "graphnav-fwm"
    """Name of the experiment; the run directory is RUNS_DIR/EXPERIMENT."""
    env_id: str = "FWM/GraphNav-v0"
    """Gymnasium id of the environment (FWM/GraphNav-v0, FWM/GridMaze-v0 or any registered id)."""
    env_kwargs: dict[str, Any] = field(default_factory=lambda: {"split": "train"})
    """Keyword arguments of the training environment, given as KEY=VALUE pairs (merged into the config's)."""
    eval_split: Optional[str] = "test"
    """Held-out split for periodic evaluation and best-model selection (val, test, ...); none to skip evaluation."""
    eval_episodes: int = 600
    """Episodes per evaluation, one per held-out layout in order (600 = every GraphNav test graph once)."""
    eval_freq: int = 200_000
    """Environment steps between evaluations."""
    eval_deterministic: bool = False
    """Evaluate with the most likely action instead of a sampled one."""
    algo: Literal["ppo", "a2c"] = "ppo"
    """Learning algorithm: recurrent PPO or recurrent A2C."""
    core: Literal["fwm", "fwlstm", "fwrnn", "lnlstm", "lstm", "mlp"] = "fwm"
    """Memory core of the policy (mlp is the memoryless baseline)."""
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
    optimizer: Optional[Literal["adam", "rmsprop"]] = None
    """Optimizer; none for the algorithm's default (adam for ppo, rmsprop for a2c)."""
    optimizer_kwargs: dict[str, Any] = field(default_factory=dict)
    """Optimizer options as KEY=VALUE pairs (e.g. eps=1e-4)."""
    total_timesteps: int = 1_000_000
    """Environment steps to train for."""
    time_budget: Optional[float] = None
    """Stop after this many minutes of wall time (summed over resumed sessions), at the next update boundary."""
    seed: int = 0
    """Seed of the policy initialisation, the action sampling and the environments."""
    device: str = "auto"
    """Torch device (auto picks CUDA when present)."""
    threads: Optional[int] = None
    """Torch CPU threads; none for torch's default."""
    checkpoint_freq: int = 200_000
    """Environment steps between checkpoints (always also at the end and on Ctrl-C)."""
    keep_checkpoints: int = 2
    """Most recent checkpoints kept on disk."""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            setattr(self, f.name, _coerce(f.name, getattr(self, f.name), hints[f.name]))
        for name in ("eval_episodes", "eval_freq", "hidden_size", "n_envs", "n_steps", "total_timesteps",
                     "checkpoint_freq", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("batch_size", "n_epochs", "threads"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1 or none, got {getattr(self, name)}")
        if self.time_budget is not None and self.time_budget <= 0:
            raise ValueError(f"time_budget must be > 0 minutes or none, got {self.time_budget}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _coerce(name: str, value: Any, annotation: Any) -> Any:
    """Check ``value`` against a field's type (ints are accepted for floats); raise ValueError saying what is allowed."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if isinstance(value, str) and annotation is not str:
        value = _number_or_none(value)
    if origin is Union:
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(name, value, inner)
    if origin is Literal:
        if value not in args:
            raise ValueError(f"{name} must be one of {', '.join(map(str, args))}; got {value!r}")
        return value
    expected = origin or annotation
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise ValueError(f"{name} must be {expected.__name__}, got {value!r}")
    return dict(value) if expected is dict else value


def field_docs(cls: type = TrainConfig) -> dict[str, str]:
    """The docstring written under each field of a dataclass, read from its source (as tyro and CleanRL do)."""
    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body
    docs = {}
    for node, following in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant) and isinstance(following.value.value, str)):
            docs[node.target.id] = " ".join(following.value.value.split())
    return docs


def shipped_configs() -> dict[str, Path]:
    """Named experiments shipped in ``train/configs/``: name -> file."""
    return {path.stem: path for path in sorted(CONFIG_DIR.glob("*.yaml"))}


def read_yaml(path: Path) -> dict[str, Any]:
    """A YAML mapping from ``path``; UserError if it is missing or not a mapping."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"config file not found: {path}") from None
    except yaml.YAMLError as e:
        raise UserError(f"config file {path} is not valid YAML: {' '.join(str(e).split())}") from None
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping of field: value")
    return data


def find_config(name_or_path: str) -> Path:
    """A shipped experiment name (``graphnav-fwm``) or a path to a YAML file."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.exists():
            raise UserError(f"config file not found: {path}")
        return path
    shipped = shipped_configs()
    if name_or_path not in shipped:
        raise UserError(f"unknown config {name_or_path!r}; shipped configs: {', '.join(shipped)} (or give a .yaml path)")
    return shipped[name_or_path]


def make_config(values: dict[str, Any], source: str, base: Optional[TrainConfig] = None,
                merge_dicts: bool = True) -> TrainConfig:
    """``base`` (or the defaults) updated with ``values``; dict fields are merged key by key unless
    ``merge_dicts`` is off (a config file's dict replaces the default). UserError names ``source``."""
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise UserError(f"{source}: unknown config key {', '.join(map(repr, unknown))}; known keys: {', '.join(sorted(known))}")
    merged = (base or TrainConfig()).to_dict()
    for key, value in values.items():
        if merge_dicts and isinstance(merged[key], dict) and isinstance(value, dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    try:
        return TrainConfig(**merged)
    except ValueError as e:
        raise UserError(f"{source}: {e}") from None


def load_config(path: Path) -> TrainConfig:
    return make_config(read_yaml(path), source=str(path), merge_dicts=False)


def save_config(config: TrainConfig, path: Path) -> None:
    from fwm_rl.train.io import atomic_write

    atomic_write(path, lambda tmp: tmp.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False)))


# Command line: every field is an option; only options the user gives override the config file.

def _parse_scalar(text: str) -> Any:
    """A command-line value as YAML reads it, plus ``1e-4`` as a float and ``none`` as None."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return _number_or_none(value) if isinstance(value, str) else value


def _number_or_none(text: str) -> Any:
    """``"1e-4"`` -> 1e-4 (PyYAML reads exponents without a dot as strings), ``"none"`` -> None, else ``text``."""
    if text.lower() in ("none", "null"):
        return None
    try:
        return float(text)
    except ValueError:
        return text


def _parse_pairs(items: list[str]) -> dict[str, Any]:
    pairs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {item!r}")
        pairs[key] = _parse_scalar(value)
    return pairs


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One ``--field-name`` option per TrainConfig field, its help the field's docstring and default."""
    group = parser.add_argument_group("experiment config (override the --config file)")
    docs, defaults = field_docs(), TrainConfig().to_dict()
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        help_text = f"{docs[f.name]} [default: {defaults[f.name]}]".replace("%", "%%")
        if isinstance(defaults[f.name], dict):
            group.add_argument(flag, dest=f.name, nargs="+", metavar="KEY=VALUE", default=argparse.SUPPRESS,
                               help=help_text)
        elif hints[f.name] is bool:
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                               help=help_text)
        else:
            group.add_argument(flag, dest=f.name, type=_parse_scalar, metavar=f.name.upper(),
                               default=argparse.SUPPRESS, help=help_text)


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The config fields given on the command line, dict fields parsed from KEY=VALUE pairs."""
    overrides = {}
    for f in dataclasses.fields(TrainConfig):
        if hasattr(args, f.name):
            value = getattr(args, f.name)
            if isinstance(value, list):
                try:
                    value = _parse_pairs(value)
                except argparse.ArgumentTypeError as e:
                    raise UserError(f"--{f.name.replace('_', '-')}: {e}") from None
            overrides[f.name] = value
    return overrides
