"""``python -m fwm_rl.zoo train|enjoy ...``: rl-zoo3's own ``train`` and ``enjoy`` with our algorithms registered.

rl-zoo3 checks ``--algo`` against ``rl_zoo3.ALGOS`` before it imports any ``--gym-packages``, so new algorithms
must be added by a wrapper (the pattern rl-zoo3 documents for SBX). This one adds "fwm_ppo"
(:class:`~fwm_rl.agents.RecurrentPPO`) and "fwm_a2c" (:class:`~fwm_rl.agents.RecurrentA2C`), registers our
environments (``FWM/...``), and, for those two algorithms, uses the example hyperparameters shipped in
``fwm_rl/agents/zoo_hyperparams/<algo>.yml`` unless ``-conf`` is given. Every other argument is rl-zoo3's::

    python -m fwm_rl.zoo train --algo fwm_ppo --env FWM/GraphNav-v0 -n 200000 -f logs
    python -m fwm_rl.zoo enjoy --algo fwm_ppo --env FWM/GraphNav-v0 -f logs --exp-id 1 --no-render -n 300

sb3-contrib's own ``ppo_lstm`` takes our drop-in policy from a config (``zoo_hyperparams/ppo_lstm.yml``). Needs the
``[zoo]`` extra (``rl_zoo3``, and ``requests``, which rl-zoo3 2.9 imports in ``enjoy`` without declaring it).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

from fwm_rl.agents.a2c import RecurrentA2C
from fwm_rl.agents.ppo import RecurrentPPO

ZOO_ALGOS = {"fwm_ppo": RecurrentPPO, "fwm_a2c": RecurrentA2C}
HYPERPARAMS_DIR = Path(__file__).with_name("zoo_hyperparams")
COMMANDS = ("train", "enjoy")
USAGE = "usage: python -m fwm_rl.zoo {train,enjoy} [rl-zoo3 arguments]"


def register() -> None:
    """Add our algorithms to ``rl_zoo3.ALGOS`` and our environments to Gymnasium's registry."""
    try:
        import rl_zoo3
    except ImportError as error:
        raise ImportError("fwm_rl.zoo needs rl-zoo3: pip install 'fwm-rl[zoo]'") from error
    import fwm_rl.envs  # noqa: F401  (registers FWM/... ids)

    rl_zoo3.ALGOS.update(ZOO_ALGOS)


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
    """``args`` for rl-zoo3's ``command``, with our example hyperparameters added when training our algorithms."""
    algo = _option(args, "--algo")
    if command == "train" and algo in ZOO_ALGOS and _option(args, "-conf", "--conf-file") is None:
        return [*args, "--conf-file", str(HYPERPARAMS_DIR / f"{algo}.yml")]
    return list(args)


def main(argv: Optional[list[str]] = None) -> None:
    """Run rl-zoo3's ``train`` or ``enjoy`` on ``argv`` (default ``sys.argv[1:]``) with our algorithms registered."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in COMMANDS:
        raise SystemExit(USAGE)
    command, rest = args[0], args[1:]
    register()
    sys.argv = [f"fwm_rl.zoo {command}", *zoo_arguments(command, rest)]
    if command == "train":
        from rl_zoo3.train import train

        train()
    else:
        from rl_zoo3.enjoy import enjoy

        enjoy()


if __name__ == "__main__":
    main()
