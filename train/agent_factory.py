"""The RL agent of a TrainConfig: its class, its construction from user-given values, and the resolved values it
runs with (every "none = the algorithm's default" field filled in from the built agent)."""
from __future__ import annotations

import dataclasses
import inspect
import math
import os
from typing import Any

import gymnasium
import torch
from stable_baselines3.common.utils import LinearSchedule

from fwm_rl.envs import privileged_size
from fwm_rl.train.config import TrainConfig
from fwm_rl.train.errors import UserError, user_input

ALGO_FIELDS = ("batch_size", "n_epochs", "learning_rate", "gamma", "gae_lambda", "ent_coef", "vf_coef",
               "max_grad_norm", "normalize_advantage", "timeout_bootstrap", "next_obs_coef",
               "oracle_coef", "imitation_coef")
PPO_ONLY_FIELDS = ("batch_size", "n_epochs")
OPTIMIZERS = {"adam": torch.optim.Adam, "rmsprop": torch.optim.RMSprop}


def algorithm_class(algo: str) -> type:
    """The agent class of an ``algo`` name (``ppo`` -> RecurrentPPO, ``a2c`` -> RecurrentA2C)."""
    from fwm_rl.agents import RecurrentA2C, RecurrentPPO

    classes = {"ppo": RecurrentPPO, "a2c": RecurrentA2C}
    if algo not in classes:
        raise UserError(f"unknown algorithm {algo!r}; choose from {', '.join(classes)}")
    return classes[algo]


GIB = 2**30


def available_memory_bytes(device: str) -> int:
    """Total memory of the device the agent will run on: the GPU's, or the machine's RAM."""
    if device != "cpu" and torch.cuda.is_available() and (device == "auto" or device.startswith("cuda")):
        return torch.cuda.get_device_properties(torch.device(device if device != "auto" else "cuda")).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def estimated_state_bytes(config: TrainConfig) -> int:
    """Float32 bytes of the recurrent states of one update: the state of every env ``[n_envs, *spec.shape]`` for
    each of the ``n_steps + 1`` steps that back-propagation through the rollout keeps, twice when the critic has a
    core of its own. A lower bound on what training allocates; the core is built alone to read its state_spec."""
    from fwm_rl import build_core

    with user_input(f"core {config.core!r} with {config.core_kwargs}"):
        core = build_core(config.core, 1, config.hidden_size, **config.core_kwargs)
    row = sum(math.prod(spec.shape) for spec in core.state_spec) * 4
    cores = 2 if (config.critic or default_critic(config.algo)) == "separate" else 1
    return row * config.n_envs * (config.n_steps + 1) * cores


def algorithm_default(algo: str, name: str) -> Any:
    """The default of the agent class's constructor argument ``name``."""
    return inspect.signature(algorithm_class(algo)).parameters[name].default


def default_critic(algo: str) -> str:
    """The critic mode of the policy when the config leaves it none (read from the policy's signature)."""
    policy = algorithm_class(algo).policy_aliases["MlpFwmPolicy"]
    return inspect.signature(policy).parameters["critic"].default


def check_state_memory(config: TrainConfig) -> None:
    """UserError, before anything large is allocated, when the states alone would not fit in memory."""
    need, have = estimated_state_bytes(config), available_memory_bytes(config.device)
    if need > have:
        raise UserError(f"core {config.core!r} with hidden_size {config.hidden_size} and {config.core_kwargs} needs "
                        f"an estimated {need / GIB:,.1f} GiB of recurrent state for {config.n_envs} envs x "
                        f"{config.n_steps} steps, more than the {have / GIB:,.1f} GiB this machine has; lower "
                        "memory_size / hidden_size, n_envs or n_steps")


def build_agent(config: TrainConfig, vec_env):
    """A fresh agent for ``config`` on ``vec_env`` (seeded with ``config.seed``); a value the algorithm or the
    policy refuses is a one-line UserError, and so is a core whose states would not fit in memory. An env with
    ``privileged_obs`` gets a policy whose actor does not read those values (an asymmetric critic)."""
    check_state_memory(config)
    if config.algo != "ppo":
        given = [name for name in PPO_ONLY_FIELDS if getattr(config, name) is not None]
        if given:
            raise UserError(f"{', '.join(given)} apply to ppo only; set them to none for {config.algo}")
    if config.optimizer_kwargs and config.optimizer is None:
        raise UserError("optimizer_kwargs needs an optimizer (--optimizer adam or rmsprop)")
    policy_kwargs: dict[str, Any] = {"core": config.core, "hidden_size": config.hidden_size,
                                     "core_kwargs": dict(config.core_kwargs)}
    for name in ("critic", "net_arch"):
        if getattr(config, name) is not None:
            policy_kwargs[name] = getattr(config, name)
    if config.env_kwargs.get("privileged_obs"):  # the env appends them; the policy hides them from the actor
        policy_kwargs["privileged_features"] = privileged_size(vec_env.action_space.n)
    if config.optimizer is not None:
        policy_kwargs["optimizer_class"] = OPTIMIZERS[config.optimizer]
        policy_kwargs["optimizer_kwargs"] = dict(config.optimizer_kwargs)
    algo_kwargs = {name: getattr(config, name) for name in ALGO_FIELDS if getattr(config, name) is not None}
    if config.anneal_lr:
        start = algo_kwargs.get("learning_rate", algorithm_default(config.algo, "learning_rate"))
        algo_kwargs["learning_rate"] = LinearSchedule(start, 0.0, 1.0)  # of the progress remaining, 1 -> 0
    policy = "MultiInputFwmPolicy" if isinstance(vec_env.observation_space, gymnasium.spaces.Dict) else "MlpFwmPolicy"
    with user_input(f"the {config.algo} agent with core {config.core!r}"):
        return algorithm_class(config.algo)(policy, vec_env, n_steps=config.n_steps, policy_kwargs=policy_kwargs,
                                            seed=config.seed, device=config.device, verbose=0, **algo_kwargs)


def _plain(value: Any) -> Any:
    """numpy/torch scalars and tuples as the plain YAML types of a config file."""
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    return value


def resolved_config(config: TrainConfig, agent) -> TrainConfig:
    """``config`` with every field left at none (the algorithm's or the policy's default) replaced by the value the
    built ``agent`` runs with, ``device`` the device it runs on and ``threads`` torch's thread count. Fields that
    do not apply stay none (batch_size and n_epochs for a2c; eval_split none means no evaluation; time_budget none
    means no limit)."""
    values = dataclasses.asdict(config)
    for name in ALGO_FIELDS:
        if values[name] is None and not (config.algo != "ppo" and name in PPO_ONLY_FIELDS):
            value = getattr(agent, name)
            if callable(value):  # a schedule (anneal_lr): the value it starts from
                value = value(1.0)
            if name == "batch_size" and value is None:  # our PPO's "every env in one minibatch"
                value = agent.n_envs * agent.n_steps
            values[name] = _plain(value)
    policy = agent.policy
    if values["critic"] is None:
        values["critic"] = policy.critic_mode if hasattr(policy, "critic_mode") else policy.critic
    if values["net_arch"] is None:
        arch = _plain(policy.net_arch)
        values["net_arch"] = arch["pi"] if isinstance(arch, dict) and arch.get("pi") == arch.get("vf") else arch
    if values["optimizer"] is None:
        names = {cls: name for name, cls in OPTIMIZERS.items()}
        values["optimizer"] = names[type(policy.optimizer)]
        values["optimizer_kwargs"] = _plain(dict(policy.optimizer_kwargs))
    values["device"] = str(agent.device)
    if values["threads"] is None:
        values["threads"] = torch.get_num_threads()
    return TrainConfig(**values)
