"""``python -m fwm_rl.zoo train|enjoy ...``: rl-zoo3's own ``train`` and ``enjoy`` with our algorithms registered.

rl-zoo3 checks ``--algo`` against ``rl_zoo3.ALGOS`` before it imports any ``--gym-packages``, so new algorithms
must be added by a wrapper (the pattern rl-zoo3 documents for SBX). This one adds "fwm_ppo"
(:class:`~fwm_rl.agents.RecurrentPPO`) and "fwm_a2c" (:class:`~fwm_rl.agents.RecurrentA2C`), registers our
environments (``FWM/...``), and, for those two algorithms, uses the example hyperparameters shipped in
``fwm_rl/agents/zoo_hyperparams/<algo>.yml`` unless ``-conf`` is given. Every other argument is rl-zoo3's::

    python -m fwm_rl.zoo train --algo fwm_ppo --env FWM/GraphNav-v0 -n 200000 -f logs
    python -m fwm_rl.zoo enjoy --algo fwm_ppo --env FWM/GraphNav-v0 -f logs --exp-id 1 --no-render -n 300

``-optimize`` works for our two algorithms too: their Optuna samplers (registered in rl-zoo3's
``HYPERPARAMS_SAMPLER``) draw from the same search space as ``fwm-rl tune`` (``train/configs/tune/<ppo|a2c>.yaml``)
on top of the config's hyperparameters, and trials are scored on the ``val`` split of our environments unless
``--eval-env-kwargs`` is given::

    python -m fwm_rl.zoo train --algo fwm_ppo --env FWM/GraphNav-v0 -n 30000 -optimize --n-trials 20 \
        --storage sqlite:///study.db --study-name fwm-ppo

sb3-contrib's own ``ppo_lstm`` takes our drop-in policy from a config (``zoo_hyperparams/ppo_lstm.yml``). Needs the
``[zoo]`` extra (``rl_zoo3``, and ``requests``, which rl-zoo3 2.9 imports in ``enjoy`` without declaring it), and
``[tune]`` for ``-optimize``.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable, Optional

from fwm_rl.agents.a2c import RecurrentA2C
from fwm_rl.agents.ppo import RecurrentPPO

ZOO_ALGOS = {"fwm_ppo": RecurrentPPO, "fwm_a2c": RecurrentA2C}
TUNE_ALGOS = {"fwm_ppo": "ppo", "fwm_a2c": "a2c"}  # the fwm-rl tune search space of each
HYPERPARAMS_DIR = Path(__file__).with_name("zoo_hyperparams")
COMMANDS = ("train", "enjoy")
USAGE = "usage: python -m fwm_rl.zoo {train,enjoy} [rl-zoo3 arguments]"


def register(hyperparams: Optional[dict[str, dict[str, Any]]] = None) -> None:
    """Add our algorithms to ``rl_zoo3.ALGOS``, their ``-optimize`` samplers to rl-zoo3's ``HYPERPARAMS_SAMPLER``
    (drawing around ``hyperparams[algo]``, the config's settings; default: the shipped ones for GraphNav) and our
    environments to Gymnasium's registry."""
    try:
        import rl_zoo3
        from rl_zoo3 import hyperparams_opt
    except ImportError as error:
        raise ImportError("fwm_rl.zoo needs rl-zoo3: pip install 'fwm-rl[zoo]'") from error
    import fwm_rl.envs  # noqa: F401  (registers FWM/... ids)

    rl_zoo3.ALGOS.update(ZOO_ALGOS)
    for algo in ZOO_ALGOS:
        settings = (hyperparams or {}).get(algo) or zoo_hyperparams(HYPERPARAMS_DIR / f"{algo}.yml", "FWM/GraphNav-v0")
        hyperparams_opt.HYPERPARAMS_SAMPLER[algo] = make_sampler(algo, settings)


def zoo_hyperparams(path: Path, env_id: str) -> dict[str, Any]:
    """The settings of ``env_id`` (or ``default``) in an rl-zoo3 hyperparameter file, ``policy_kwargs`` evaluated
    as rl-zoo3 does (``th`` and ``nn`` in scope)."""
    import torch as th
    import yaml

    entries = yaml.safe_load(Path(path).read_text()) or {}
    settings = dict(entries.get(env_id) or entries.get("default") or {})
    if isinstance(settings.get("policy_kwargs"), str):
        settings["policy_kwargs"] = eval(settings["policy_kwargs"], {"th": th, "nn": th.nn})
    return settings


def make_sampler(algo: str, settings: dict[str, Any]) -> Callable[..., dict[str, Any]]:
    """An rl-zoo3 sampler ``(trial, n_actions, n_envs, additional_args) -> hyperparameters`` over the fwm-rl tune
    search space of ``algo``'s core, applied to ``settings`` (the config's hyperparameters, policy_kwargs included):
    minibatches become ``batch_size``, ``hidden_size`` and ``core_kwargs.*`` go into ``policy_kwargs``."""
    from fwm_rl.train.tune import MINIBATCHES, Param, space_specs

    policy_kwargs = dict(settings.get("policy_kwargs") or {})
    specs = space_specs(TUNE_ALGOS[algo], policy_kwargs.get("core", "fwm"))
    space = {name: Param.from_spec(name, spec, f"search space of {algo}") for name, spec in specs.items()}

    def sample(trial, n_actions: int, n_envs: int, additional_args: dict) -> dict[str, Any]:
        sampled = {name: param.suggest(trial) for name, param in space.items()}
        kwargs: dict[str, Any] = {}
        policy = {**policy_kwargs, "core_kwargs": dict(policy_kwargs.get("core_kwargs") or {})}
        for name, value in sampled.items():
            field, _, key = name.partition(".")
            if name == MINIBATCHES:
                kwargs["batch_size"] = max(1, n_envs // value) * settings.get("n_steps", 30)
            elif field == "hidden_size":
                policy["hidden_size"] = value
            elif field == "core_kwargs":
                policy["core_kwargs"][key] = value
            else:
                kwargs[name] = value
        return {**kwargs, "policy_kwargs": policy}

    return sample


def _option(args: list[str], *names: str) -> Optional[str]:
    """The value of the first of ``names`` in ``args`` (``--name value`` or ``--name=value``), else None."""
    for i, arg in enumerate(args):
        for name in names:
            if arg == name and i + 1 < len(args):
                return args[i + 1]
            if arg.startswith(name + "="):
                return arg[len(name) + 1 :]
    return None


def zoo_arguments(command: str, args: list[str]) -> list[str]:
    """``args`` for rl-zoo3's ``command``, with our example hyperparameters added when training our algorithms, and
    with ``-optimize`` on our environments, their trials evaluated on the val split."""
    algo, args = _option(args, "--algo"), list(args)
    if command != "train" or algo not in ZOO_ALGOS:
        return args
    if _option(args, "-conf", "--conf-file") is None:
        args += ["--conf-file", str(HYPERPARAMS_DIR / f"{algo}.yml")]
    optimize = "-optimize" in args or "--optimize-hyperparameters" in args
    if optimize and (_option(args, "--env") or "").startswith("FWM/") and "--eval-env-kwargs" not in args:
        args += ["--eval-env-kwargs", "split:'val'"]
    return args


def _settings(args: list[str]) -> dict[str, dict[str, Any]]:
    """Our algorithm's settings in the config that ``args`` train with (the base of its ``-optimize`` sampler)."""
    algo, conf, env_id = _option(args, "--algo"), _option(args, "-conf", "--conf-file"), _option(args, "--env")
    if algo not in ZOO_ALGOS or conf is None or env_id is None or not Path(conf).is_file():
        return {}
    settings = zoo_hyperparams(Path(conf), env_id)
    if "-params" in args:  # -params n_steps:20 ... overrides the file, as in rl-zoo3
        for item in args[args.index("-params") + 1:]:
            key, sep, value = item.partition(":")
            if item.startswith("-") or not sep:
                break
            if key == "n_steps":
                settings["n_steps"] = int(value)
    return {algo: settings}


def main(argv: Optional[list[str]] = None) -> None:
    """Run rl-zoo3's ``train`` or ``enjoy`` on ``argv`` (default ``sys.argv[1:]``) with our algorithms registered."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in COMMANDS:
        raise SystemExit(USAGE)
    command, rest = args[0], zoo_arguments(args[0], args[1:])
    register(_settings(rest) if command == "train" else None)
    sys.argv = [f"fwm_rl.zoo {command}", *rest]
    if command == "train":
        from rl_zoo3.train import train

        train()
    else:
        from rl_zoo3.enjoy import enjoy

        enjoy()


if __name__ == "__main__":
    main()
