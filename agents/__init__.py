"""fwm_rl.agents: Stable-Baselines3 agents whose memory is an ``fwm_rl`` core.

* :class:`CorePolicy` (and :class:`MultiInputCorePolicy`, :class:`LSTMPolicy`, :class:`MultiInputLSTMPolicy`): an
  SB3 ``ActorCriticPolicy`` owning a core from :func:`fwm_rl.build_core`; the policy of our algorithms.
* :class:`RecurrentPPO`, :class:`RecurrentA2C`: sb3-contrib's ``RecurrentPPO`` API, trained on whole env-trajectories
  with the recurrent state stored once per rollout (:class:`TrajectoryRolloutBuffer`); ``get_runtime_state`` /
  ``set_runtime_state`` for exact resume; :class:`NonFiniteError` when an update goes non-finite;
  ``set_data_parallel(DataParallel.from_process_group())`` to train as one rank of many (DD-PPO style).
* :class:`SB3ContribCorePolicy` (alias :data:`FWMPolicy`, and :class:`MultiInputSB3ContribCorePolicy` alias
  :data:`MultiInputFWMPolicy`): the drop-in policy for the unmodified ``sb3_contrib.RecurrentPPO``.
"""
from fwm_rl.agents.a2c import RecurrentA2C, paper_a2c_kwargs
from fwm_rl.agents.buffers import TrajectoryBatch, TrajectoryDictRolloutBuffer, TrajectoryRolloutBuffer
from fwm_rl.agents.checks import NonFiniteError
from fwm_rl.agents.distributed import DataParallel
from fwm_rl.agents.policies import CRITIC_MODES, CorePolicy, LSTMPolicy, MultiInputCorePolicy, MultiInputLSTMPolicy
from fwm_rl.agents.ppo import EnvStep, RecurrentPPO
from fwm_rl.agents.sb3_contrib_adapter import MultiInputSB3ContribCorePolicy, PackedStateLayout, SB3ContribCorePolicy
from fwm_rl.agents.state import ActorCriticStates

FWMPolicy = SB3ContribCorePolicy  # the name of the sb3-contrib drop-in before CorePolicy existed
MultiInputFWMPolicy = MultiInputSB3ContribCorePolicy

__all__ = [
    "CRITIC_MODES",
    "ActorCriticStates",
    "CorePolicy",
    "DataParallel",
    "EnvStep",
    "FWMPolicy",
    "LSTMPolicy",
    "MultiInputCorePolicy",
    "MultiInputFWMPolicy",
    "MultiInputLSTMPolicy",
    "MultiInputSB3ContribCorePolicy",
    "NonFiniteError",
    "PackedStateLayout",
    "RecurrentA2C",
    "RecurrentPPO",
    "SB3ContribCorePolicy",
    "TrajectoryBatch",
    "TrajectoryDictRolloutBuffer",
    "TrajectoryRolloutBuffer",
    "paper_a2c_kwargs",
]
