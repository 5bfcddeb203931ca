"""fwm_rl.agents: Stable-Baselines3 agents whose memory is an ``fwm_rl`` core.

* :class:`FWMPolicy` (and :class:`MultiInputFWMPolicy`, :class:`LSTMPolicy`, :class:`MultiInputLSTMPolicy`): a
  recurrent actor-critic policy owning a core from :func:`fwm_rl.build_core`; a drop-in policy for the unmodified
  ``sb3_contrib.RecurrentPPO``.
* :class:`RecurrentPPO`, :class:`RecurrentA2C`: the same API, trained on whole env-trajectories with the recurrent
  state stored once per rollout (:class:`TrajectoryRolloutBuffer`).
"""
from fwm_rl.agents.a2c import RecurrentA2C, paper_a2c_kwargs
from fwm_rl.agents.buffers import TrajectoryBatch, TrajectoryDictRolloutBuffer, TrajectoryRolloutBuffer
from fwm_rl.agents.checks import NonFiniteError
from fwm_rl.agents.policies import CRITIC_MODES, FWMPolicy, LSTMPolicy, MultiInputFWMPolicy, MultiInputLSTMPolicy
from fwm_rl.agents.ppo import RecurrentPPO
from fwm_rl.agents.state import PackedStateLayout

__all__ = [
    "CRITIC_MODES",
    "FWMPolicy",
    "LSTMPolicy",
    "MultiInputFWMPolicy",
    "MultiInputLSTMPolicy",
    "NonFiniteError",
    "PackedStateLayout",
    "RecurrentA2C",
    "RecurrentPPO",
    "TrajectoryBatch",
    "TrajectoryDictRolloutBuffer",
    "TrajectoryRolloutBuffer",
    "paper_a2c_kwargs",
]
