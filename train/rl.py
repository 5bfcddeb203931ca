"""The RL trainer: ``train(config)`` trains an agent in a run directory with periodic held-out evaluation (on val;
test is played only by ``fwm-rl evaluate``), best-model saving, atomic checkpoints and a time budget, and
``resume(run_dir)`` continues a stopped or killed run to the same result as an uninterrupted one.

A run directory holds, besides what every run has (``rundir.RunDir``: config.yaml, checkpoints/, metrics, log.txt)::

    model.zip          the latest model (SB3 format), best_model.zip the best on the held-out split
    references.json    random and oracle summaries on the held-out split
    tb/                TensorBoard scalars (log.txt also gets SB3's tables)

Exact resume: checkpoints are taken only at update boundaries (the start of a rollout, after the previous update),
and restore everything the next rollout reads: parameters, optimizer, the agent's runtime state (last observation
and recurrent state, counters), the whole vector env (its layouts, positions, generators and the training
episodes in progress), the global torch/numpy/random generators, and the runner's own state (schedule, log values
not yet written), so that even metrics.csv comes out the same. Evaluation runs under ``seeded_rng`` so it changes
nothing that training draws.

Under ``torchrun --nproc-per-node N -m fwm_rl train ...`` the run is data-parallel, DD-PPO style
(``fwm_rl.agents.distributed``): every rank steps its own ``n_envs`` envs (seeded ``seed + rank * n_envs``), the
gradients of every minibatch are averaged over the ranks, ``total_timesteps`` and every step count are all ranks'
steps together, and the stop decisions (time budget, Ctrl-C) are taken together. Rank 0 writes the run directory
alone: config, metrics (the training episodes of all ranks; the losses are rank 0's), evaluations, models and
checkpoints, which hold every rank's runtime state, env and RNGs. ``--resume`` under torchrun with the same number of processes
continues exactly; every rank reads the run directory, so across machines it sits on a shared filesystem.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable, Optional

from fwm_rl.agents.distributed import rank_seed
from fwm_rl.train.agent_factory import algorithm_class, build_agent, resolved_config
from fwm_rl.train.callback import EVAL_SEED, EpisodeStatsRecorder, RunCallback, ctrl_c_stops
from fwm_rl.train.checkpoints import gather_ranks, restore_agent
from fwm_rl.train.curriculum import with_curriculum
from fwm_rl.train.config import ALIASES, TrainConfig, find_config, load_config
from fwm_rl.train.evaluate import MAX_EVAL_ENVS, references
from fwm_rl.train import runner
from fwm_rl.train.io import write_json
from fwm_rl.train.rundir import RunDir
from fwm_rl.train.runlog import PendingLogger, RunLog
from fwm_rl.train.runs import heldout_env_kwargs, make_env

REFERENCES_FILE = "references.json"


class RLTrainer(runner.Trainer):
    """Recurrent PPO / A2C on a Gymnasium env id (see the module docstring)."""

    config_class = TrainConfig
    command = "train"
    aliases = ALIASES

    @classmethod
    def load_config(cls, name_or_path: str) -> TrainConfig:
        """A shipped experiment name (``graphnav-fwm``) or a YAML file."""
        return load_config(find_config(name_or_path))

    def __init__(self, config: TrainConfig, checkpoint: Optional[dict[str, Any]] = None, progress_bar: bool = True,
                 quiet: bool = False, on_evaluation: Optional[Callable[[int, dict[str, float]], None]] = None) -> None:
        super().__init__(config, checkpoint, progress_bar, quiet)
        self.ranks, device = runner.join_torchrun(config.device)
        # A data-parallel rank: its own envs and seed, its device (cuda:LOCAL_RANK); rank 0 alone evaluates. SB3
        # seeds env i with seed + i, so rank r's seed is seed + r * n_envs: its envs play what envs r * n_envs ...
        # of one process with all ranks' envs would (seed + r would replay other ranks' episodes).
        rank_config = (dataclasses.replace(config, seed=rank_seed(config.seed, config.n_envs, self.ranks),
                                           device=device) if self.ranks.distributed else config)
        if on_evaluation is not None and self.ranks.distributed:  # rank 0 alone evaluates: a raise would hang
            raise ValueError("on_evaluation (fwm-rl tune's pruning) needs one process; torchrun is not supported")
        self.on_evaluation = on_evaluation  # called after each held-out evaluation (RunCallback)
        # Everything that draws from the global RNGs comes before the agent is seeded or its checkpoint restored.
        self.eval_env, self.eval_kwargs = None, None
        if config.eval_split is not None and self.ranks.main:
            self.eval_kwargs = heldout_env_kwargs(config.env_id, config.env_kwargs, split=config.eval_split)
            self.eval_env = make_env(config.env_id, min(config.eval_episodes, MAX_EVAL_ENVS), seed=EVAL_SEED,
                                     **self.eval_kwargs)
        self.run_state = None
        if checkpoint is None:
            train_env = EpisodeStatsRecorder(make_env(config.env_id, config.n_envs, seed=rank_config.seed,
                                                      **config.env_kwargs))
            self.model = build_agent(rank_config, train_env)
        else:
            self.model = restore_agent(checkpoint, algorithm_class(config.algo), rank_config.device, self.ranks)
            self.run_state = checkpoint["run_state"]
        self.model.set_data_parallel(self.ranks)  # from rank 0 to all: the same parameters at the start
        self.resolved = resolved_config(config, self.model)
        if self.ranks.distributed:  # each rank picks cuda:LOCAL_RANK itself; the run is on the device type
            self.resolved = dataclasses.replace(self.resolved, device=self.model.device.type)

    def resolved_config(self) -> TrainConfig:
        return self.resolved

    def _references(self, run_log: RunLog) -> Optional[dict]:
        """Random and oracle summaries on the held-out episodes, computed once per run and kept in references.json."""
        config, path = self.config, run_log.run.path / REFERENCES_FILE
        if path.exists():
            return json.loads(path.read_text())
        try:
            rows = references(config.env_id, self.eval_kwargs, config.eval_episodes, self.eval_env.num_envs,
                              seed=EVAL_SEED)
        except NotImplementedError as e:  # an env without an oracle
            run_log.message(f"no random/oracle references for {config.env_id} ({e}); scores are not logged")
            return None
        write_json(path, rows)
        run_log.message(f"{config.eval_split} references: random {rows['random']['return_mean']:.2f}, "
                        f"oracle {rows['oracle']['return_mean']:.2f}")
        return rows

    def fit(self, run: RunDir, start_step: Optional[int]) -> runner.RunResult:
        config, model = self.config, self.model
        resumed = start_step is not None
        # From scratch (a new run, or a resumed one without a checkpoint) no earlier row is kept.
        run_log = (RunLog(run, resume_step=start_step if resumed else -1, quiet=self.quiet) if self.ranks.main
                   else _SilentLog(run))
        try:
            reference_rows = self._references(run_log) if self.eval_env is not None else None
            model.set_logger(run_log.sb3_logger())

            callback = RunCallback(config, run_log, self.eval_env, reference_rows,
                                   lambda step, state: self._save(run, step, state), self.run_state,
                                   self.progress_bar and self.ranks.main, self.ranks, self.on_evaluation)
            remaining = config.total_timesteps - model.num_timesteps
            if remaining <= 0:
                run_log.message(f"{run.path} has already trained {model.num_timesteps:,} of "
                                f"{config.total_timesteps:,} steps; raise --total-timesteps to go on")
                return runner.RunResult(run.path, model.num_timesteps, None,
                                        {"best_return": callback.schedule["best_return"]})
            if resumed:
                run_log.message(f"resuming {run.path} at {model.num_timesteps:,} steps")
            run_log.message(f"training {config.experiment}: {config.algo} + {config.core} core on {config.env_id}, "
                            f"{config.total_timesteps:,} steps -> {run.path}")
            callbacks = with_curriculum(callback, model.get_env(), config, run_log)
            with ctrl_c_stops(callback):
                model.learn(total_timesteps=remaining, callback=callbacks, log_interval=1,
                            reset_num_timesteps=not resumed)
                if callback.stopped is None:
                    callback.boundary(final=True)
            if callback.stopped == "interrupted":
                run_log.message(f"stopped by Ctrl-C at step {callback.stop_step:,} and saved. "
                                f"Continue with: fwm-rl train --resume {run.path}")
            elif callback.stopped:
                run_log.message(f"time budget of {config.time_budget:.3g} min used up at step "
                                f"{callback.stop_step:,}; saved. Continue with: fwm-rl train --resume {run.path} "
                                "--time-budget MORE_MINUTES")
            else:
                run_log.message(f"done: {model.num_timesteps:,} steps in {callback.elapsed_s() / 60:.1f} min -> "
                                f"{run.path}")
            steps = callback.stop_step if callback.stopped else model.num_timesteps
            return runner.RunResult(run.path, steps, callback.stopped, {"best_return": callback.schedule["best_return"]})
        finally:
            if self.eval_env is not None:
                self.eval_env.close()
            run_log.close()

    def _save(self, run: RunDir, step: int, payload: dict[str, Any]) -> None:
        payload = gather_ranks(payload, self.ranks)  # None on ranks > 0: rank 0 writes every rank's part
        if payload is not None:
            self.save_checkpoint(run, step, payload, self.model.policy, payload["run_state"]["schedule"]["updates"],
                                 keep=self.config.keep_checkpoints)


class _SilentLog:
    """A data-parallel rank > 0's stand-in for RunLog: rank 0 writes the run's metrics and messages, this drops
    them (its SB3 logger records without output: ``RunCallback.run_state`` reads what is pending)."""

    def __init__(self, run: RunDir) -> None:
        self.run = run

    def message(self, text: str) -> None:
        pass

    def write(self, step: int, metrics: dict[str, Any], tensorboard_skip: frozenset[str] = frozenset()) -> None:
        pass

    def sb3_logger(self) -> PendingLogger:
        return PendingLogger(folder=None, output_formats=[])

    def close(self) -> None:
        pass


def train(config: TrainConfig, run_dir: Optional[Path] = None, runs_dir: Path = Path("runs"), overwrite: bool = False,
          progress_bar: bool = True, quiet: bool = False,
          on_evaluation: Optional[Callable[[int, dict[str, float]], None]] = None) -> runner.RunResult:
    """Train ``config`` in ``run_dir`` (default RUNS_DIR/EXPERIMENT), a new run. ``on_evaluation(step, logged)``
    is called after every held-out evaluation (see ``RunCallback``); what it raises propagates out of ``train``."""
    run_dir = Path(run_dir) if run_dir is not None else Path(runs_dir) / config.experiment
    return runner.start(RLTrainer, config, run_dir, overwrite=overwrite, progress_bar=progress_bar, quiet=quiet,
                        on_evaluation=on_evaluation)


def resume(run_dir: Path, overrides: Optional[dict[str, Any]] = None, progress_bar: bool = True,
           quiet: bool = False,
           on_evaluation: Optional[Callable[[int, dict[str, float]], None]] = None) -> runner.RunResult:
    """Continue the run in ``run_dir`` from its newest readable checkpoint; only TrainConfig.RESUMABLE may change."""
    return runner.resume(RLTrainer, Path(run_dir), overrides, progress_bar=progress_bar, quiet=quiet,
                         on_evaluation=on_evaluation)
