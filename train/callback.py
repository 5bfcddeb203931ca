"""What runs inside ``model.learn`` of an RL run: the training episodes' statistics (read through a VecEnv wrapper)
and, at each update boundary, held-out evaluation, best model, checkpoint and the stop checks."""
from __future__ import annotations

import inspect
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Optional

from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper

from fwm_rl.agents.distributed import SINGLE_PROCESS, DataParallel
from fwm_rl.train import runner
from fwm_rl.train.checkpoints import BEST_MODEL_FILE, MODEL_FILE, agent_payload, save_model
from fwm_rl.train.config import TrainConfig
from fwm_rl.train.evaluate import run_episodes, summarize, add_scores
from fwm_rl.train.runlog import RunLog

EVAL_SEED = 0  # every evaluation of every run plays the same held-out episodes, so runs compare pairwise


class EpisodeStatsRecorder(VecEnvWrapper):
    """Records the statistics (``fwm_rl.envs.EpisodeStats``) of every episode the wrapped env finishes; the
    training loop reads them with ``pop_finished``. Episodes in progress travel with the env into checkpoints."""

    def __init__(self, venv: VecEnv) -> None:
        from fwm_rl.envs import EpisodeRecorder

        super().__init__(venv)
        self.recorder = EpisodeRecorder(venv.num_envs)
        self.finished: list[Any] = []

    def reset(self):
        return self.venv.reset()

    def step_wait(self):
        obs, rewards, dones, infos = self.venv.step_wait()
        self.finished += self.recorder.update(rewards, dones, infos)
        return obs, rewards, dones, infos

    def pop_finished(self) -> list[Any]:
        finished, self.finished = self.finished, []
        return finished

    def __getstate__(self) -> dict[str, Any]:  # VecEnvWrapper caches its class's members, which do not pickle
        return {key: value for key, value in self.__dict__.items() if key != "class_attributes"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.class_attributes = dict(inspect.getmembers(type(self)))


def prefixed(prefix: str, summary: dict[str, float]) -> dict[str, float]:
    names = {"return_mean": "return"}
    return {f"{prefix}/{names.get(key, key)}": value for key, value in summary.items()}


def next_multiple(step: int, every: int) -> int:
    return (step // every + 1) * every


class RunCallback(BaseCallback):
    """At each update boundary (rollout start): held-out evaluation and best model, checkpoint, and the stop checks
    (time budget, Ctrl-C). Per rollout: the training episodes' statistics (train/return, train/goals, ...).

    ``save_checkpoint(step, run_state)`` writes a checkpoint (the trainer's), ``run_state`` the schedule and the
    log values recorded but not yet dumped. Data-parallel (``ranks``), every rank runs the callback: the stop
    decisions are taken together, the training episodes of all ranks are summarised, and only rank 0 (which alone
    has an ``eval_env``) evaluates and writes models. ``on_evaluation(step, logged)`` is called (on rank 0) after each
    held-out evaluation with what was logged (``val/return``, ``val/score``, ...), once the boundary's checkpoint and
    models are written, so an exception it raises (a tuner's ``optuna.TrialPruned``) leaves a consistent run
    directory."""

    def __init__(self, config: TrainConfig, run_log: RunLog, eval_env, reference_rows: Optional[dict],
                 save_checkpoint, run_state: Optional[dict[str, Any]] = None, progress_bar: bool = False,
                 ranks: DataParallel = SINGLE_PROCESS,
                 on_evaluation: Optional[Callable[[int, dict[str, float]], None]] = None) -> None:
        super().__init__()
        self.ranks = ranks
        self.on_evaluation = on_evaluation
        self.progress_bar = progress_bar
        self.bar = None
        self.config, self.run_log, self.save_checkpoint = config, run_log, save_checkpoint
        self.eval_env, self.reference_rows = eval_env, reference_rows
        run_state = run_state or {"schedule": {"next_eval": 0, "last_eval": -1,
                                               "next_checkpoint": config.checkpoint_freq, "best_return": None,
                                               "elapsed_s": 0.0, "updates": 0},
                                  "pending_log": []}
        self.schedule = run_state["schedule"]
        self.pending_log = run_state["pending_log"]  # values SB3 recorded but has not dumped yet
        self.session_start = time.monotonic()
        self.interrupted = False
        self.stopped: Optional[str] = None
        self.stop_step: Optional[int] = None

    def run_state(self) -> dict[str, Any]:
        """What a checkpoint keeps of the runner (see ``__init__``)."""
        return {"schedule": dict(self.schedule), "pending_log": list(self.model.logger.pending)}

    def episodes(self) -> EpisodeStatsRecorder:
        return self.model.get_env()

    def _on_training_start(self) -> None:
        self.model.logger.replay(self.pending_log)
        self.session_start = time.monotonic()
        if self.progress_bar:
            self.bar = progress_bar(self.config, self.model.num_timesteps, self.schedule["elapsed_s"])

    def _on_training_end(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def _on_rollout_start(self) -> None:
        self.boundary()

    def _on_step(self) -> bool:
        if self.bar is not None:
            done = int(self.elapsed_s()) if self.config.time_budget is not None else self.model.num_timesteps
            self.bar.set_postfix_str(f"{self.model.num_timesteps:,} steps", refresh=False)
            self.bar.update(min(done, self.bar.total) - self.bar.n)  # past its total tqdm would drop the total
        return self.stopped is None

    def _on_rollout_end(self) -> None:
        self.schedule["updates"] += 1
        parts = self.ranks.gather(self.episodes().pop_finished())  # None on ranks > 0, which log nothing
        finished = [episode for part in parts or [] for episode in part]
        if finished:
            for key, value in prefixed("train", summarize(finished)).items():
                self.logger.record(key, value)

    def elapsed_s(self) -> float:
        return self.schedule["elapsed_s"] + time.monotonic() - self.session_start

    def boundary(self, final: bool = False) -> None:
        """Evaluate, checkpoint and decide whether to stop; ``final`` after the last update of the run."""
        step = self.model.num_timesteps
        if not final and self.stopped is None:
            out_of_time = runner.out_of_time(self.config.time_budget, self.elapsed_s())
            self.interrupted, out_of_time = self.ranks.any(self.interrupted, out_of_time)  # one rank alone: deadlock
            if self.interrupted or out_of_time:
                self.stopped, self.stop_step = ("interrupted" if self.interrupted else "time budget"), step
        last_eval = (final or self.stopped == "time budget") and step > self.schedule["last_eval"]
        logged = None
        if self.eval_env is not None and (step >= self.schedule["next_eval"] or last_eval):
            logged = self.evaluate(step)
        if final or self.stopped or step >= self.schedule["next_checkpoint"]:
            self.checkpoint(step)
        if (final or self.stopped) and self.ranks.main:
            save_model(self.model, self.run_log.run.path / MODEL_FILE)
        if logged is not None and self.on_evaluation is not None:
            self.on_evaluation(step, logged)

    def evaluate(self, step: int) -> dict[str, float]:
        """Play the held-out episodes, log them and keep the best model; what was logged."""
        self.schedule["next_eval"] = next_multiple(step, self.config.eval_freq)
        self.schedule["last_eval"] = step
        summary = summarize(run_episodes(self.model, self.eval_env, self.config.eval_episodes, seed=EVAL_SEED,
                                         deterministic=self.config.eval_deterministic))
        if self.reference_rows is not None:
            add_scores({"agent": summary}, self.reference_rows)
        split = self.config.eval_split
        logged = prefixed(split, summary)
        self.run_log.write(step, logged)
        best = self.schedule["best_return"]
        improved = best is None or summary["return_mean"] > best
        if improved:
            self.schedule["best_return"] = summary["return_mean"]
            save_model(self.model, self.run_log.run.path / BEST_MODEL_FILE)
        score = f", score {summary['score']:.2f}" if "score" in summary else ""
        self.run_log.message(f"step {step:,}: {split} return {summary['return_mean']:.2f} "
                             f"± {summary['return_ci95']:.2f}{score}, goals {summary['goals']:.2f}"
                             + (" (best)" if improved else ""))
        return logged

    def checkpoint(self, step: int) -> None:
        self.schedule["next_checkpoint"] = next_multiple(step, self.config.checkpoint_freq)
        self.schedule["elapsed_s"] = self.elapsed_s()
        self.session_start = time.monotonic()
        self.save_checkpoint(step, agent_payload(self.model, self.run_state()))


def progress_bar(config: TrainConfig, num_timesteps: int, elapsed_s: float):
    """A bar over the time budget (in seconds) if there is one, else over the environment steps."""
    from tqdm.auto import tqdm

    if config.time_budget is not None:
        return tqdm(total=round(60 * config.time_budget), initial=int(elapsed_s), desc="time budget",
                    dynamic_ncols=True, bar_format="{desc}: {percentage:3.0f}%|{bar}| {n}/{total} s{postfix}")
    return tqdm(total=config.total_timesteps, initial=num_timesteps, unit="step", unit_scale=True, desc="training",
                dynamic_ncols=True)


@contextmanager
def ctrl_c_stops(callback: RunCallback) -> Iterator[None]:
    """First Ctrl-C or SIGTERM (:func:`~fwm_rl.train.runner.stop_on_signals`): stop at the next update boundary
    after saving; a second: abort at once."""
    def notify(name: str) -> None:
        callback.interrupted = True
        callback.run_log.message(f"{name}: saving at the next update boundary (Ctrl-C again to abort without "
                                 "saving)")

    with runner.stop_on_signals(notify):
        yield
