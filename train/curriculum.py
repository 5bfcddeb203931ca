"""The maze-size curriculum during ``fwm-rl train``: every ``eval_freq`` env steps the agent plays the val mazes of
its current size (``eval_episodes`` lifetimes, seeded, beside the random and oracle references of that size) and
the normalised val score goes to the train env's :class:`fwm_rl.envs.curriculum.SizeCurriculum`, which promotes or
demotes by its rule. Enabled by the env option ``curriculum`` (see that module), e.g. in a config::

    env_kwargs: {obs: both, position_scale: 16, split: train, curriculum: {sizes: [3, 5, 7], promote: 0.6,
                 demote: 0.2, patience: 2}}

The curriculum's state (level and decisions) lives in the train env, which checkpoints carry, so a resumed run
continues the same schedule. Each decision is logged (``curriculum/size``, ``curriculum/score``,
``curriculum/level`` in metrics.csv, and a line in log.txt). Held-out evaluation by the runner and ``fwm-rl
evaluate`` play the largest size, the target.
"""
from __future__ import annotations

from typing import Any, Optional

from stable_baselines3.common.callbacks import BaseCallback, CallbackList

from fwm_rl.train.callback import EVAL_SEED, next_multiple
from fwm_rl.train.config import TrainConfig
from fwm_rl.train.evaluate import MAX_EVAL_ENVS, add_scores, references, run_episodes, summarize
from fwm_rl.train.runlog import RunLog
from fwm_rl.train.runs import heldout_env_kwargs, make_env, seeded_rng

CURRICULUM_SPLIT = "val"  # never test


def env_curriculum(vec_env) -> Optional[Any]:
    """The SizeCurriculum of a batched FWM env (through any VecEnv wrappers), or None."""
    try:
        dynamics = vec_env.get_attr("dynamics")[0]
    except AttributeError:
        return None
    return getattr(dynamics, "curriculum", None)


class CurriculumCallback(BaseCallback):
    """At each update boundary where ``eval_freq`` env steps have passed since the last decision: evaluate on the
    val mazes of the current size and let the curriculum decide (module docstring)."""

    def __init__(self, config: TrainConfig, run_log: RunLog) -> None:
        super().__init__()
        self.config, self.run_log = config, run_log
        kwargs = {key: value for key, value in config.env_kwargs.items() if key != "curriculum"}
        self.base_kwargs = heldout_env_kwargs(config.env_id, kwargs, split=CURRICULUM_SPLIT)
        self.n_envs = min(config.eval_episodes, MAX_EVAL_ENVS)
        self.envs: dict[int, Any] = {}  # size -> val env
        self.references: dict[int, dict] = {}  # size -> random and oracle summaries

    def curriculum(self):
        return env_curriculum(self.model.get_env())

    def _on_step(self) -> bool:
        return True

    def _on_rollout_start(self) -> None:
        curriculum, step = self.curriculum(), self.model.num_timesteps
        last = curriculum.history[-1][0] if curriculum.history else 0
        if step >= next_multiple(last, self.config.eval_freq):
            self.decide(curriculum, step)

    def val_score(self, size: int) -> float:
        """Normalised score of the current model on ``eval_episodes`` val lifetimes of mazes of ``size`` cells
        (the global generators left as they were, so that training draws the same whenever this runs)."""
        with seeded_rng(EVAL_SEED):
            return self._val_score(size)

    def _val_score(self, size: int) -> float:
        if size not in self.envs:
            kwargs = {**self.base_kwargs, "size": size}
            self.envs[size] = make_env(self.config.env_id, self.n_envs, seed=EVAL_SEED, **kwargs)
            self.references[size] = references(self.config.env_id, kwargs, self.config.eval_episodes, self.n_envs,
                                               seed=EVAL_SEED)
        summary = summarize(run_episodes(self.model, self.envs[size], self.config.eval_episodes, seed=EVAL_SEED,
                                         deterministic=self.config.eval_deterministic))
        add_scores({"agent": summary}, self.references[size])
        return summary["score"]

    def decide(self, curriculum, step: int) -> str:
        size = curriculum.size
        score = self.val_score(size)
        decision = curriculum.update(step, score)
        self.run_log.write(step, {"curriculum/size": size, "curriculum/score": score,
                                  "curriculum/level": curriculum.level})
        moved = "" if decision == "stay" else f" -> {decision} to size {curriculum.size}"
        self.run_log.message(f"step {step:,}: curriculum val score {score:.2f} at size {size}{moved}")
        return decision

    def _on_training_end(self) -> None:
        for env in self.envs.values():
            env.close()
        self.envs.clear()


def with_curriculum(callback: BaseCallback, train_env, config: TrainConfig, run_log: RunLog) -> BaseCallback:
    """``callback`` preceded by a CurriculumCallback when the train env has a curriculum (else ``callback``)."""
    if env_curriculum(train_env) is None:
        return callback
    return CallbackList([CurriculumCallback(config, run_log), callback])
