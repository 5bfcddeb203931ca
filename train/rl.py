"""The RL runner: ``train(config)`` trains an agent in a run directory with periodic held-out evaluation, best-model
saving, atomic checkpoints and a time budget, and ``resume(run_dir)`` continues a stopped or killed run to the same
result as an uninterrupted one.

A run directory holds::

    config.yaml        the resolved TrainConfig
    model.zip          the latest model (SB3 format), best_model.zip the best on the held-out split
    checkpoints/       step_<num_timesteps>.ckpt: model, optimizer, env and RNG states, the runner's state
    metrics.csv/.jsonl train rows (train/*, rollout/*, time/*) and held-out rows (<split>/*) by env step
    references.json    random and oracle summaries on the held-out split
    tb/                TensorBoard scalars;  log.txt  messages and SB3's tables

Exact resume: checkpoints are taken only at update boundaries (the start of a rollout, after the previous update),
and restore everything the next rollout reads: parameters, optimizer, ``num_timesteps``, the last observation and
recurrent state, the whole vector env (its layouts, positions and generators), the global torch/numpy/random
generators, and the runner's own state (schedule, episodes in progress, log values not yet written), so that even
metrics.csv comes out the same. Evaluation runs under ``seeded_rng`` so it changes nothing that training draws.
"""
from __future__ import annotations

import io
import json
import math
import random
import shutil
import signal
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import cloudpickle
import gymnasium
import numpy as np
import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import HumanOutputFormat, KVWriter, Logger

from fwm_rl.train.config import RESUMABLE_FIELDS, TrainConfig, load_config, make_config, save_config
from fwm_rl.train.errors import UserError
from fwm_rl.train.evaluate import MAX_EVAL_ENVS, add_scores, references, run_episodes, summarize
from fwm_rl.train.io import MetricsLog, atomic_write, write_json
from fwm_rl.train.runs import (BEST_MODEL_FILE, CHECKPOINT_DIR, CONFIG_FILE, LOG_FILE, MODEL_FILE, REFERENCES_FILE,
                               TENSORBOARD_DIR, algorithm_class, heldout_env_kwargs, make_env, seeded_rng)

CHECKPOINT_FORMAT = 1
EVAL_SEED = 0  # every evaluation of every run plays the same held-out episodes, so runs compare pairwise
ALGO_FIELDS = ("batch_size", "n_epochs", "learning_rate", "gamma", "gae_lambda", "ent_coef", "vf_coef",
               "max_grad_norm", "normalize_advantage", "timeout_bootstrap")
PPO_ONLY_FIELDS = ("batch_size", "n_epochs")
OPTIMIZERS = {"adam": torch.optim.Adam, "rmsprop": torch.optim.RMSprop}


@dataclass
class RunResult:
    run_dir: Path
    num_timesteps: int
    stopped: Optional[str]
    """Why training ended before total_timesteps ("time budget", "interrupted"), or None if it completed."""
    best_return: Optional[float]


def build_agent(config: TrainConfig, vec_env) -> BaseAlgorithm:
    """A fresh agent for ``config`` on ``vec_env`` (seeded with ``config.seed``)."""
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
    if config.optimizer is not None:
        policy_kwargs["optimizer_class"] = OPTIMIZERS[config.optimizer]
        policy_kwargs["optimizer_kwargs"] = dict(config.optimizer_kwargs)
    algo_kwargs = {name: getattr(config, name) for name in ALGO_FIELDS if getattr(config, name) is not None}
    policy = "MultiInputFwmPolicy" if isinstance(vec_env.observation_space, gymnasium.spaces.Dict) else "MlpFwmPolicy"
    try:
        return algorithm_class(config.algo)(policy, vec_env, n_steps=config.n_steps,
                                            policy_kwargs=policy_kwargs, seed=config.seed, device=config.device,
                                            verbose=0, **algo_kwargs)
    except (TypeError, ValueError) as e:
        raise UserError(f"cannot build the {config.algo} agent with core {config.core!r}: {e}") from None


# Checkpoints ----------------------------------------------------------------------------------------------------

def _runtime_attributes(model: BaseAlgorithm) -> list[str]:
    """Attributes the algorithm leaves out of its .zip on purpose (e.g. the recurrent state of the last step) that
    the next rollout still reads; SB3's own exclusions (policy, env, buffers, logger) are rebuilt instead."""
    standard = set(BaseAlgorithm._excluded_save_params(model))
    return [name for name in model._excluded_save_params() if name not in standard and hasattr(model, name)]


def _rng_states() -> dict[str, Any]:
    states = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "random": random.getstate()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    np.random.set_state(states["numpy"])
    random.setstate(states["random"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _model_bytes(model: BaseAlgorithm) -> bytes:
    buffer = io.BytesIO()
    model.save(buffer)
    return buffer.getvalue()


def save_model(model: BaseAlgorithm, path: Path) -> None:
    """``model.save`` to ``path``, atomically."""
    data = _model_bytes(model)
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def checkpoint_path(run_dir: Path, num_timesteps: int) -> Path:
    return run_dir / CHECKPOINT_DIR / f"step_{num_timesteps:012d}.ckpt"


def save_checkpoint(path: Path, model: BaseAlgorithm, run_state: dict[str, Any]) -> None:
    """Everything the next rollout reads, in one file written atomically (see the module docstring)."""
    payload = {"format": CHECKPOINT_FORMAT, "model": _model_bytes(model),
               "runtime": {name: getattr(model, name) for name in _runtime_attributes(model)},
               "env": model.get_env(), "rng": _rng_states(), "run_state": run_state}
    data = cloudpickle.dumps(payload)
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def latest_checkpoint(run_dir: Path) -> Optional[Path]:
    paths = sorted((run_dir / CHECKPOINT_DIR).glob("step_*.ckpt"))
    return paths[-1] if paths else None


def load_checkpoint(path: Path, config: TrainConfig) -> tuple[BaseAlgorithm, dict[str, Any]]:
    """The agent (with its env attached, not reset) and the runner's state of a checkpoint; the global RNGs are
    restored last."""
    try:
        payload = cloudpickle.loads(path.read_bytes())
        if payload.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"format {payload.get('format')!r}, expected {CHECKPOINT_FORMAT}")
        model = algorithm_class(config.algo).load(io.BytesIO(payload["model"]), env=None, device=config.device)
    except UserError:
        raise
    except Exception as e:  # truncated or foreign files fail anywhere inside pickle, zipfile or torch
        raise UserError(f"checkpoint {path} is corrupt or unreadable ({type(e).__name__}: {e}); delete it to resume "
                        "from the previous one") from None
    for name, value in payload["runtime"].items():
        setattr(model, name, value)
    model.set_env(payload["env"], force_reset=False)
    _set_rng_states(payload["rng"])
    return model, payload["run_state"]


# Logging --------------------------------------------------------------------------------------------------------

class RunLog:
    """Where a run writes: metrics.csv/.jsonl, TensorBoard scalars, and messages to the terminal and log.txt."""

    def __init__(self, run_dir: Path, resume_step: Optional[int] = None, quiet: bool = False) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.metrics = MetricsLog(run_dir)
        if resume_step is not None:
            self.metrics.truncate(resume_step)
        purge_step = None if resume_step is None else resume_step + 1
        self.tensorboard = SummaryWriter(str(run_dir / TENSORBOARD_DIR), purge_step=purge_step)
        self.text = (run_dir / LOG_FILE).open("a")
        self.quiet = quiet

    def write(self, step: int, metrics: dict[str, Any], tensorboard_skip: frozenset[str] = frozenset()) -> None:
        numbers = {key: float(value) for key, value in metrics.items()
                   if isinstance(value, (int, float, np.number)) and not isinstance(value, bool)}
        self.metrics.append(step, **numbers)
        for key, value in numbers.items():
            if key not in tensorboard_skip and math.isfinite(value):
                self.tensorboard.add_scalar(key, value, step)
        self.tensorboard.flush()

    def message(self, text: str) -> None:
        if not self.quiet:
            from tqdm.auto import tqdm

            tqdm.write(text)  # above a progress bar, if one is shown
        self.text.write(f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] {text}\n")
        self.text.flush()

    def sb3_logger(self, run_dir: Path) -> Logger:
        """An SB3 logger whose dumps land in this log (metrics + TensorBoard) and as tables in log.txt."""
        return Logger(folder=str(run_dir), output_formats=[_MetricsWriter(self), HumanOutputFormat(self.text)])

    def close(self) -> None:
        self.tensorboard.close()
        self.text.close()


class _MetricsWriter(KVWriter):
    """SB3 output format that forwards every dump to a RunLog."""

    def __init__(self, run_log: RunLog) -> None:
        self.run_log = run_log

    def write(self, key_values: dict[str, Any], key_excluded: dict[str, tuple[str, ...]], step: int = 0) -> None:
        skip = frozenset(key for key, formats in key_excluded.items() if formats and "tensorboard" in formats)
        self.run_log.write(step, key_values, tensorboard_skip=skip)

    def close(self) -> None:
        pass


# The callback that runs at update boundaries --------------------------------------------------------------------

def _prefixed(prefix: str, summary: dict[str, float]) -> dict[str, float]:
    names = {"return_mean": "return"}
    return {f"{prefix}/{names.get(key, key)}": value for key, value in summary.items()}


class RunCallback(BaseCallback):
    """At each update boundary (rollout start): held-out evaluation and best model, checkpoint, and the stop checks
    (time budget, Ctrl-C). Per rollout: the training episodes' statistics (train/return, train/goals, ...)."""

    def __init__(self, config: TrainConfig, run_dir: Path, run_log: RunLog, eval_env, reference_rows: Optional[dict],
                 run_state: Optional[dict[str, Any]] = None, progress_bar: bool = False) -> None:
        super().__init__()
        self.progress_bar = progress_bar
        self.bar = None
        self.config, self.run_dir, self.run_log = config, run_dir, run_log
        self.eval_env, self.reference_rows = eval_env, reference_rows
        run_state = run_state or {"schedule": {"next_eval": 0, "last_eval": -1, "next_checkpoint": config.checkpoint_freq,
                                               "best_return": None, "elapsed_s": 0.0},
                                  "recorder": None, "pending_log": None}
        self.schedule = run_state["schedule"]
        self.recorder = run_state["recorder"]  # training episodes in progress (EpisodeRecorder)
        self.pending_log = run_state["pending_log"]  # values SB3 recorded but has not dumped yet
        self.session_start = time.monotonic()
        self.interrupted = False
        self.stopped: Optional[str] = None
        self.stop_step: Optional[int] = None
        self.train_episodes: list[Any] = []

    def run_state(self) -> dict[str, Any]:
        """What a checkpoint keeps of the runner (see ``__init__``)."""
        logger = self.model.logger
        pending = {name: dict(getattr(logger, name)) for name in ("name_to_value", "name_to_count", "name_to_excluded")}
        return {"schedule": dict(self.schedule), "recorder": self.recorder, "pending_log": pending}

    def _on_training_start(self) -> None:
        from fwm_rl.envs import EpisodeRecorder

        if self.recorder is None:
            self.recorder = EpisodeRecorder(self.training_env.num_envs)
        if self.pending_log is not None:
            for name, values in self.pending_log.items():
                getattr(self.model.logger, name).update(values)
        self.session_start = time.monotonic()
        if self.progress_bar:
            self.bar = _progress_bar(self.config, self.model.num_timesteps, self.schedule["elapsed_s"])

    def _on_training_end(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def _on_rollout_start(self) -> None:
        self.boundary()

    def _on_step(self) -> bool:
        self.train_episodes += self.recorder.update(self.locals["rewards"], self.locals["dones"], self.locals["infos"])
        if self.bar is not None:
            done = int(self.elapsed_s()) if self.config.time_budget is not None else self.model.num_timesteps
            self.bar.set_postfix_str(f"{self.model.num_timesteps:,} steps", refresh=False)
            self.bar.update(min(done, self.bar.total) - self.bar.n)  # past its total tqdm would drop the total
        return self.stopped is None

    def _on_rollout_end(self) -> None:
        if self.train_episodes:
            for key, value in _prefixed("train", summarize(self.train_episodes)).items():
                self.logger.record(key, value)
        self.train_episodes = []

    def elapsed_s(self) -> float:
        return self.schedule["elapsed_s"] + time.monotonic() - self.session_start

    def boundary(self, final: bool = False) -> None:
        """Evaluate, checkpoint and decide whether to stop; ``final`` after the last update of the run."""
        step = self.model.num_timesteps
        if not final and self.stopped is None:
            out_of_time = self.config.time_budget is not None and self.elapsed_s() >= 60 * self.config.time_budget
            if self.interrupted or out_of_time:
                self.stopped, self.stop_step = ("interrupted" if self.interrupted else "time budget"), step
        last_eval = (final or self.stopped == "time budget") and step > self.schedule["last_eval"]
        if self.eval_env is not None and (step >= self.schedule["next_eval"] or last_eval):
            self.evaluate(step)
        if final or self.stopped or step >= self.schedule["next_checkpoint"]:
            self.checkpoint(step)
        if final or self.stopped:
            save_model(self.model, self.run_dir / MODEL_FILE)

    def evaluate(self, step: int) -> None:
        self.schedule["next_eval"] = _next_multiple(step, self.config.eval_freq)
        self.schedule["last_eval"] = step
        summary = summarize(run_episodes(self.model, self.eval_env, self.config.eval_episodes, seed=EVAL_SEED,
                                         deterministic=self.config.eval_deterministic))
        if self.reference_rows is not None:
            add_scores({"agent": summary}, self.reference_rows)
        split = self.config.eval_split
        self.run_log.write(step, _prefixed(split, summary))
        best = self.schedule["best_return"]
        improved = best is None or summary["return_mean"] > best
        if improved:
            self.schedule["best_return"] = summary["return_mean"]
            save_model(self.model, self.run_dir / BEST_MODEL_FILE)
        score = f", score {summary['score']:.2f}" if "score" in summary else ""
        self.run_log.message(f"step {step:,}: {split} return {summary['return_mean']:.2f} "
                             f"± {summary['return_ci95']:.2f}{score}, goals {summary['goals']:.2f}"
                             + (" (best)" if improved else ""))

    def checkpoint(self, step: int) -> None:
        self.schedule["next_checkpoint"] = _next_multiple(step, self.config.checkpoint_freq)
        self.schedule["elapsed_s"] = self.elapsed_s()
        self.session_start = time.monotonic()
        save_checkpoint(checkpoint_path(self.run_dir, step), self.model, self.run_state())
        for old in sorted((self.run_dir / CHECKPOINT_DIR).glob("step_*.ckpt"))[:-self.config.keep_checkpoints]:
            old.unlink()


def _progress_bar(config: TrainConfig, num_timesteps: int, elapsed_s: float):
    """A bar over the time budget (in seconds) if there is one, else over the environment steps."""
    from tqdm.auto import tqdm

    if config.time_budget is not None:
        return tqdm(total=round(60 * config.time_budget), initial=int(elapsed_s), desc="time budget", dynamic_ncols=True,
                    bar_format="{desc}: {percentage:3.0f}%|{bar}| {n}/{total} s{postfix}")
    return tqdm(total=config.total_timesteps, initial=num_timesteps, unit="step", unit_scale=True, desc="training",
                dynamic_ncols=True)


def _next_multiple(step: int, every: int) -> int:
    return (step // every + 1) * every


@contextmanager
def _ctrl_c_stops(callback: RunCallback) -> Iterator[None]:
    """First Ctrl-C: stop at the next update boundary after saving; second Ctrl-C: abort at once."""
    def handler(signum, frame):
        if callback.interrupted:
            raise KeyboardInterrupt
        callback.interrupted = True
        callback.run_log.message("Ctrl-C: saving at the next update boundary (Ctrl-C again to abort without saving)")

    try:
        previous = signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread: leave Ctrl-C as it is
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


# The runner -----------------------------------------------------------------------------------------------------

def prepare_run_dir(run_dir: Path, overwrite: bool) -> None:
    """Create an empty run directory; an existing non-empty one is an error unless ``overwrite`` empties it."""
    if run_dir.exists() and any(run_dir.iterdir()):
        if not overwrite:
            raise UserError(f"run directory {run_dir} already exists; continue it with `fwm-rl train --resume "
                            f"{run_dir}`, or pick another --experiment / --run-dir, or pass --overwrite")
        if not (run_dir / CONFIG_FILE).exists():
            raise UserError(f"refusing to overwrite {run_dir}: it is not a run directory (no {CONFIG_FILE})")
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)


def _load_references(run_dir: Path, config: TrainConfig, eval_kwargs: dict[str, Any], n_eval_envs: int,
                     run_log: RunLog) -> Optional[dict]:
    """Random and oracle summaries on the held-out episodes, computed once per run and kept in references.json."""
    path = run_dir / REFERENCES_FILE
    if path.exists():
        return json.loads(path.read_text())
    try:
        rows = references(config.env_id, eval_kwargs, config.eval_episodes, n_eval_envs, seed=EVAL_SEED)
    except (ValueError, NotImplementedError) as e:
        run_log.message(f"no random/oracle references for {config.env_id} ({e}); scores are not logged")
        return None
    write_json(path, rows)
    run_log.message(f"{config.eval_split} references: random {rows['random']['return_mean']:.2f}, "
                    f"oracle {rows['oracle']['return_mean']:.2f}")
    return rows


def train(config: TrainConfig, run_dir: Optional[Path] = None, runs_dir: Path = Path("runs"), resume: bool = False,
          overwrite: bool = False, progress_bar: bool = True, quiet: bool = False) -> RunResult:
    """Train ``config`` in ``run_dir`` (default RUNS_DIR/EXPERIMENT); with ``resume``, continue from its latest
    checkpoint (the config must be the run's own, see ``resume``)."""
    run_dir = Path(run_dir) if run_dir is not None else Path(runs_dir) / config.experiment
    if not resume:
        prepare_run_dir(run_dir, overwrite)
        save_config(config, run_dir / CONFIG_FILE)
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    checkpoint = latest_checkpoint(run_dir) if resume else None
    run_log = RunLog(run_dir, resume_step=int(checkpoint.stem.split("_")[1]) if checkpoint else None, quiet=quiet)
    try:
        # Everything that draws from the global RNGs comes before the agent is seeded or its checkpoint restored.
        eval_env, reference_rows = None, None
        if config.eval_split is not None:
            eval_kwargs = heldout_env_kwargs(config.env_kwargs, split=config.eval_split)
            n_eval_envs = min(config.eval_episodes, MAX_EVAL_ENVS)
            eval_env = make_env(config.env_id, n_eval_envs, seed=EVAL_SEED, **eval_kwargs)
            reference_rows = _load_references(run_dir, config, eval_kwargs, n_eval_envs, run_log)
        run_state = None
        if checkpoint is not None:
            model, run_state = load_checkpoint(checkpoint, config)
            run_log.message(f"resuming {run_dir} from {checkpoint.name} ({model.num_timesteps:,} steps)")
        else:
            if resume:
                run_log.message(f"no checkpoint in {run_dir}: starting it from the beginning")
            model = build_agent(config, make_env(config.env_id, config.n_envs, seed=config.seed, **config.env_kwargs))
        model.set_logger(run_log.sb3_logger(run_dir))
        callback = RunCallback(config, run_dir, run_log, eval_env, reference_rows, run_state, progress_bar)
        remaining = config.total_timesteps - model.num_timesteps
        if remaining <= 0:
            run_log.message(f"{run_dir} has already trained {model.num_timesteps:,} of {config.total_timesteps:,} "
                            "steps; raise --total-timesteps to go on")
            return RunResult(run_dir, model.num_timesteps, None, callback.schedule["best_return"])
        run_log.message(f"training {config.experiment}: {config.algo} + {config.core} core on {config.env_id}, "
                        f"{config.total_timesteps:,} steps -> {run_dir}")
        with _ctrl_c_stops(callback):
            model.learn(total_timesteps=remaining, callback=callback, log_interval=1,
                        reset_num_timesteps=checkpoint is None)
            if callback.stopped is None:
                callback.boundary(final=True)
        if callback.stopped == "interrupted":
            run_log.message(f"stopped by Ctrl-C at step {callback.stop_step:,} and saved. "
                            f"Continue with: fwm-rl train --resume {run_dir}")
        elif callback.stopped:
            run_log.message(f"time budget of {config.time_budget:.3g} min used up at step {callback.stop_step:,}; saved. "
                            f"Continue with: fwm-rl train --resume {run_dir} --time-budget MORE_MINUTES")
        else:
            run_log.message(f"done: {model.num_timesteps:,} steps in {callback.elapsed_s() / 60:.1f} min -> {run_dir}")
        if eval_env is not None:
            eval_env.close()
        steps = callback.stop_step if callback.stopped else model.num_timesteps
        return RunResult(run_dir, steps, callback.stopped, callback.schedule["best_return"])
    finally:
        run_log.close()


def resume(run_dir: Path, overrides: Optional[dict[str, Any]] = None, **train_options: Any) -> RunResult:
    """Continue the run in ``run_dir`` from its latest checkpoint; only RESUMABLE_FIELDS may be overridden."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).exists():
        raise UserError(f"cannot resume {run_dir}: no {CONFIG_FILE} there (is it a run directory?)")
    overrides = overrides or {}
    fixed = sorted(set(overrides) - set(RESUMABLE_FIELDS))
    if fixed:
        raise UserError(f"a resumed run keeps its config; only {', '.join(RESUMABLE_FIELDS)} may change "
                        f"(got {', '.join(fixed)})")
    config = make_config(overrides, source="--resume", base=load_config(run_dir / CONFIG_FILE))
    if overrides:
        save_config(config, run_dir / CONFIG_FILE)
    return train(config, run_dir=run_dir, resume=True, **train_options)
