"""``fwm-rl tune``: Optuna over the RL config, each trial an ordinary run directory trained by ``rl.train``.

The objective is the return on the config's held-out ``eval_split`` (val; test is never played here) at the end of
the trial's run, and Optuna's pruner sees every periodic evaluation (``rl.train``'s ``on_evaluation``), so a poor
trial stops early. The search space of each algorithm and core lives in ``train/configs/tune/<algo>.yaml`` (see the
format there); ``--space FILE`` merges a user's file over it.

A study folder RUNS_DIR/STUDY holds::

    study.db           the Optuna study (SQLite, the default storage; --storage URL puts it anywhere SQLAlchemy
                       reaches, e.g. postgresql://..., and workers on many machines then share one study)
    trial-NNNN/        one run directory per trial (config.yaml, checkpoints/, metrics.csv, best_model.zip, ...)
    best.yaml          the best trial's config, ready for `fwm-rl train --config`
    base.yaml, space.yaml, logs/worker-K.log   what --jobs workers read and print

``--trials N`` counts the study's finished and running trials, over all workers and machines, so every worker
started with the same N stops once the study has N. Workers send heartbeats; a worker killed mid-trial has its trial
marked failed by the next worker to start a trial (Optuna's heartbeat and ``RetryHeartbeatStaleTrialCallback``),
which retries the same parameters and continues the killed trial's run directory from its last checkpoint when it
is on this machine.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import socket
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path
from typing import Any, Optional

from fwm_rl.train.config import CONFIG_DIR, TrainConfig, make_config
from fwm_rl.train.errors import UserError
from fwm_rl.train.io import atomic_write

SPACE_DIR = CONFIG_DIR / "tune"
DB_FILE, BEST_FILE, BASE_FILE, SPACE_FILE, LOGS_DIR = "study.db", "best.yaml", "base.yaml", "space.yaml", "logs"
MINIBATCHES = "minibatches"  # the derived parameter: batch_size = n_envs * n_steps / minibatches
SAMPLERS, PRUNERS = ("tpe", "random"), ("median", "none")
STARTUP_TRIALS = 5  # trials the TPE sampler and the median pruner see before they act
MAX_RETRIES = 2  # retries of a trial whose worker died
SCHEMA_ATTEMPTS = 4  # workers that open a new database at once race to create its tables: the losers try again
MAX_FAILURES_IN_A_ROW = 3  # a worker whose trials keep failing stops (a bad config would otherwise loop forever)
THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
# Fields that say where a trial runs, not what it computes: workers of one study may differ in them.
PLACEMENT_FIELDS = ("device", "threads")


def _optuna():
    try:
        import optuna
    except ImportError:
        raise UserError("fwm-rl tune needs Optuna and a database driver: pip install 'fwm-rl[tune]'") from None
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeats are experimental
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # our own line per trial says what Optuna would
    return optuna


# Search space ------------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Param:
    """One tuned value: a range ``[low, high]`` (on a log scale with ``log``; integers when both ends are) or a
    list of ``choices``."""

    name: str
    low: Any = None
    high: Any = None
    log: bool = False
    choices: Optional[tuple] = None

    @classmethod
    def from_spec(cls, name: str, spec: Any, source: str) -> "Param":
        where = f"{source}: {name}"
        if not isinstance(spec, dict) or set(spec) - {"low", "high", "log", "choices"}:
            raise UserError(f"{where} must be {{low: A, high: B[, log: true]}} or {{choices: [...]}}, got {spec!r}")
        if "choices" in spec:
            if set(spec) != {"choices"} or not isinstance(spec["choices"], list) or not spec["choices"]:
                raise UserError(f"{where}: choices must be a non-empty list and stand alone, got {spec!r}")
            return cls(name, choices=tuple(spec["choices"]))
        if "low" not in spec or "high" not in spec:
            raise UserError(f"{where} needs both low and high (or choices), got {spec!r}")
        low, high = (_number(spec[key], f"{where}.{key}") for key in ("low", "high"))
        log = spec.get("log", False)
        if not isinstance(log, bool):
            raise UserError(f"{where}.log must be true or false, got {log!r}")
        if not low < high or (log and low <= 0):
            raise UserError(f"{where}: need low < high{' and low > 0 on a log scale' if log else ''}, got "
                            f"low {low}, high {high}")
        return cls(name, low, high, log)

    def suggest(self, trial) -> Any:
        if self.choices is not None:
            return trial.suggest_categorical(self.name, list(self.choices))
        if isinstance(self.low, int) and isinstance(self.high, int):
            return trial.suggest_int(self.name, self.low, self.high, log=self.log)
        return trial.suggest_float(self.name, float(self.low), float(self.high), log=self.log)

    def extremes(self) -> tuple:
        """The values to check a config with before any trial runs."""
        return self.choices if self.choices is not None else (self.low, self.high)


def _number(value: Any, where: str) -> float | int:
    if isinstance(value, str):  # PyYAML reads 1e-4 (no dot) as a string
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UserError(f"{where} must be a finite number, got {value!r}")
    return value


def _read_space_file(path: Path) -> dict[str, Any]:
    from fwm_rl.train.options import read_yaml

    data = read_yaml(path)
    cores = data.get("cores", {})
    if not isinstance(cores, dict) or not all(isinstance(c, dict) for c in cores.values()):
        raise UserError(f"{path}: cores must map a core name to its parameters")
    return data


def space_specs(algo: str, core: str, override: Optional[Path] = None) -> dict[str, Any]:
    """The parameter specs for ``algo`` and ``core``: the shipped file's common and core parameters, with
    ``override``'s merged over them (its ``null`` drops a parameter)."""
    shipped = SPACE_DIR / f"{algo}.yaml"
    if not shipped.is_file():
        raise UserError(f"no search space for algo {algo!r}; shipped: {', '.join(p.stem for p in SPACE_DIR.glob('*.yaml'))}")
    specs: dict[str, Any] = {}
    for data in (_read_space_file(shipped), *([_read_space_file(Path(override))] if override else [])):
        specs.update({key: value for key, value in data.items() if key != "cores"})
        specs.update(data.get("cores", {}).get(core, {}))
    return {key: value for key, value in specs.items() if value is not None}


def build_space(specs: dict[str, Any], base: TrainConfig, source: str) -> dict[str, Param]:
    """Parameters of ``specs``, each checked against ``base``: it names a field (or FIELD.KEY of a dict field, or
    minibatches) and every extreme value gives a valid config."""
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    space = {}
    for name, spec in specs.items():
        field, _, key = name.partition(".")
        if name != MINIBATCHES and (field not in fields or (key and not isinstance(getattr(base, field), dict))):
            raise UserError(f"{source}: {name!r} is not a config field, FIELD.KEY of a dict field, or "
                            f"{MINIBATCHES}; fields: {', '.join(fields)}")
        space[name] = param = Param.from_spec(name, spec, source)
        for value in param.extremes():
            trial_config(base, {name: value}, f"{source}: {name}={value!r}")
    return space


def trial_config(base: TrainConfig, values: dict[str, Any], source: str, **fields: Any) -> TrainConfig:
    """``base`` with the sampled ``values`` (and ``fields``) set; UserError naming ``source`` for a bad value."""
    updates: dict[str, Any] = dict(fields)
    for name, value in values.items():
        field, _, key = name.partition(".")
        if name == MINIBATCHES:
            if not isinstance(value, int) or value < 1 or base.n_envs % value:
                raise UserError(f"{source}: minibatches must divide n_envs={base.n_envs} (a minibatch holds whole "
                                "env trajectories)")
            updates["batch_size"] = base.n_envs * base.n_steps // value
        elif key:
            updates[field] = {**updates.get(field, getattr(base, field)), key: value}
        else:
            updates[field] = value
    return make_config(updates, source=source, base=base, merge_dicts=False)


def sample(space: dict[str, Param], trial) -> dict[str, Any]:
    """One value of each parameter, drawn by the trial's sampler."""
    return {name: param.suggest(trial) for name, param in space.items()}


# Storage and study -------------------------------------------------------------------------------------------------

def hidden_password(url: str) -> str:
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy parses: show it as given
        return url


def open_storage(url: str, heartbeat_s: int):
    """Optuna's RDB storage at ``url`` with heartbeats every ``heartbeat_s`` seconds; a trial silent for twice that
    is failed and retried (``RetryHeartbeatStaleTrialCallback``). UserError if it cannot be opened."""
    optuna = _optuna()
    from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    for attempt in range(SCHEMA_ATTEMPTS):
        try:
            return optuna.storages.RDBStorage(
                url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat_s, grace_period=2 * heartbeat_s,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES))
        except (IntegrityError, ProgrammingError, OperationalError) as e:
            # Another worker is creating the tables of a new database (SQLite says "table ... already exists").
            creating = not isinstance(e, OperationalError) or "already exists" in str(e)
            if not creating or attempt == SCHEMA_ATTEMPTS - 1:
                error = e
                break
            time.sleep(1 + attempt)
        except Exception as e:  # SQLAlchemy's ArgumentError/OperationalError, a missing driver's ImportError, ...
            error = e
            break
    reason = " ".join(str(error).split())[:300]
    raise UserError(f"--storage {hidden_password(url)}: cannot open it ({type(error).__name__}: {reason})")


def make_sampler(name: str, seed: Optional[int]):
    optuna = _optuna()
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(n_startup_trials=STARTUP_TRIALS, seed=seed)


def make_pruner(name: str):
    optuna = _optuna()
    if name == "none":
        return optuna.pruners.NopPruner()
    # n_warmup_steps=1: the evaluation at step 0 (before any update) never prunes
    return optuna.pruners.MedianPruner(n_startup_trials=STARTUP_TRIALS, n_warmup_steps=1)


def settings(base: TrainConfig, specs: dict[str, Any]) -> dict[str, Any]:
    """What every worker of a study must share: the base config (less where it runs) and the search space."""
    config = {key: value for key, value in dataclasses.asdict(base).items() if key not in PLACEMENT_FIELDS}
    return json.loads(json.dumps({"base_config": config, "space": specs}))


def open_study(storage, name: str, base: TrainConfig, specs: dict[str, Any], sampler, pruner):
    """The study ``name`` (created if new); UserError if it exists with another base config or search space."""
    optuna = _optuna()
    study = optuna.create_study(storage=storage, study_name=name, direction="maximize", sampler=sampler,
                                pruner=pruner, load_if_exists=True)
    given, stored = settings(base, specs), study.user_attrs.get("settings")
    if stored is None:
        study.set_user_attr("settings", given)
    elif stored != given:
        changed = sorted(key for key in {**stored["base_config"], **given["base_config"]}
                         if stored["base_config"].get(key) != given["base_config"].get(key))
        what = f"config fields {', '.join(changed)}" if changed else "search space"
        raise UserError(f"study {name!r} was started with other settings ({what} differ); tune with the same "
                        "--config, options and --space, or give another --study")
    return study


def _states(*names: str):
    from optuna.trial import TrialState

    return tuple(getattr(TrialState, name) for name in names)


def counted_trials(study) -> list:
    """Trials that count towards --trials: finished (complete, pruned) or running."""
    return study.get_trials(deepcopy=False, states=_states("COMPLETE", "PRUNED", "RUNNING"))


def finished_trials(study) -> int:
    """Complete and pruned trials (a failed one is made up by another)."""
    return len(study.get_trials(deepcopy=False, states=_states("COMPLETE", "PRUNED")))


# Trials ------------------------------------------------------------------------------------------------------------

class SurplusTrial(Exception):
    """A trial started by a worker that raced another for the study's last trial; it is failed before it runs."""


@dataclasses.dataclass
class Worker:
    """Runs trials of ``study`` until it holds ``n_trials`` counted trials; each trial a run directory in
    ``study_dir``."""

    study: Any
    base: TrainConfig
    space: dict[str, Param]
    study_dir: Path
    n_trials: int
    progress_bar: bool = True

    def run(self) -> None:
        from tqdm.auto import tqdm

        optuna = _optuna()
        failures: list[str] = []
        bar = tqdm(total=self.n_trials, initial=min(finished_trials(self.study), self.n_trials), unit="trial",
                   desc=f"study {self.study.study_name}", disable=not self.progress_bar, dynamic_ncols=True)
        try:
            while True:
                optuna.storages.fail_stale_trials(self.study)
                if len(counted_trials(self.study)) >= self.n_trials:
                    return
                self.study.optimize(self.objective, n_trials=1, catch=(UserError, SurplusTrial), gc_after_trial=True)
                last = self._my_last_trial()
                bar.update(min(finished_trials(self.study), self.n_trials) - bar.n)
                if last is not None:
                    tqdm.write(describe(last), file=sys.stderr)
                if last is not None and last.state.name == "FAIL" and "surplus" not in last.user_attrs:
                    failures.append(last.user_attrs.get("error", "see the worker's output"))
                    if len(failures) >= MAX_FAILURES_IN_A_ROW:
                        raise UserError(f"{len(failures)} trials in a row failed, the last with: {failures[-1]}")
                else:
                    failures.clear()
        finally:
            bar.close()

    def _my_last_trial(self):
        mine = [t for t in self.study.get_trials(deepcopy=False) if t.user_attrs.get("worker") == _worker_id()]
        return mine[-1] if mine else None

    def objective(self, trial) -> float:
        optuna = _optuna()
        trial.set_user_attr("worker", _worker_id())
        ahead = [t.number for t in counted_trials(self.study) if t.number < trial.number]
        if len(ahead) >= self.n_trials:  # another worker took the last trial between our count and our ask
            trial.set_user_attr("surplus", True)
            raise SurplusTrial(f"the study already has {self.n_trials} trials")
        values = sample(self.space, trial)
        frozen = next(t for t in self.study.get_trials(deepcopy=False) if t.number == trial.number)
        retried = optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(frozen)
        run_dir = self.study_dir / f"trial-{(trial.number if retried is None else retried):04d}"
        try:
            config = trial_config(self.base, values, f"trial {trial.number}", experiment=run_dir.name)
        except UserError as e:
            trial.set_user_attr("error", str(e))
            raise
        trial.set_user_attr("config", json.loads(json.dumps(dataclasses.asdict(config))))
        trial.set_user_attr("run_dir", str(run_dir.resolve()))
        key = f"{config.eval_split}/return"
        returns: list[float] = []

        def on_evaluation(step: int, logged: dict[str, float]) -> None:
            returns.append(logged[key])
            trial.report(logged[key], step)
            if step < config.total_timesteps and trial.should_prune():  # a trial that trained in full completes
                trial.set_user_attr("pruned_at_step", step)
                raise optuna.TrialPruned(f"{key} {logged[key]:.3f} at step {step:,}")

        from fwm_rl.train import rl

        try:
            if retried is not None and (run_dir / "config.yaml").is_file():
                trial.set_user_attr("resumed", True)
                result = rl.resume(run_dir, progress_bar=False, quiet=True, on_evaluation=on_evaluation)
            else:
                result = rl.train(config, run_dir=run_dir, overwrite=retried is not None, progress_bar=False,
                                  quiet=True, on_evaluation=on_evaluation)
        except UserError as e:
            trial.set_user_attr("error", str(e))
            raise
        if result.stopped == "interrupted":
            raise KeyboardInterrupt
        if not returns:
            raise UserError(f"trial {trial.number}: the run made no {config.eval_split} evaluation")
        return returns[-1]


def _worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def describe(trial) -> str:
    """One line about a finished trial."""
    state = trial.state.name.lower()
    if state == "complete":
        what = f"val return {trial.value:.3f}"
    elif state == "pruned":
        step = trial.user_attrs.get("pruned_at_step")
        what = f"pruned at step {step:,}" if step is not None else "pruned"
    else:
        what = trial.user_attrs.get("error") or ("surplus" if trial.user_attrs.get("surplus") else "failed")
    params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.params.items())
    return f"trial {trial.number}: {state}: {what} ({params})"


def write_best(study, path: Path) -> Optional[Any]:
    """The best complete trial's config as a YAML for `fwm-rl train --config`; None when no trial completed."""
    import yaml

    complete = study.get_trials(deepcopy=False, states=_states("COMPLETE"))
    if not complete:
        return None
    best = max(complete, key=lambda t: t.value)
    config = dict(best.user_attrs["config"], experiment=f"{study.study_name}-best")
    header = (f"# Best of {len(complete)} complete trials of study {study.study_name!r} (fwm-rl tune): trial "
              f"{best.number}, final {config['eval_split']} return {best.value:.4f}.\n"
              f"# Parameters: {json.dumps(best.params)}\n# Train it with: fwm-rl train --config {path}\n")
    atomic_write(path, lambda tmp: tmp.write_text(header + yaml.safe_dump(config, sort_keys=False)))
    return best


# Command line ------------------------------------------------------------------------------------------------------

def _check_args(args: argparse.Namespace) -> None:
    for name in ("trials", "jobs", "heartbeat"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name} must be >= 1, got {getattr(args, name)}")


def _base_config(args: argparse.Namespace) -> TrainConfig:
    from fwm_rl.train.rl import RLTrainer
    from fwm_rl.train.runner import config_from_args

    base = config_from_args(args, RLTrainer)
    if base.eval_split is None:
        raise UserError("fwm-rl tune scores trials on the held-out eval_split; give --eval-split val (not none)")
    return base


def _worker_command(args: argparse.Namespace, study_dir: Path, storage_url: str, index: int, threads: int) -> list:
    command = [sys.executable, "-m", "fwm_rl", "tune", "--config", str(study_dir / BASE_FILE), "--space",
               str(study_dir / SPACE_FILE), "--storage", storage_url, "--study", args.study, "--runs-dir",
               str(args.runs_dir), "--trials", str(args.trials), "--sampler", args.sampler, "--pruner", args.pruner,
               "--heartbeat", str(args.heartbeat), "--threads", str(threads), "--no-progress-bar"]
    if args.sampler_seed is not None:
        command += ["--sampler-seed", str(args.sampler_seed + index)]
    return command


def _run_workers(args: argparse.Namespace, study, base: TrainConfig, specs: dict[str, Any], study_dir: Path,
                 storage_url: str) -> None:
    """``--jobs`` worker processes of this command on one machine, a bar over the study's trials meanwhile."""
    import yaml
    from tqdm.auto import tqdm

    threads = base.threads or max(1, (os.cpu_count() or 1) // args.jobs)
    atomic_write(study_dir / BASE_FILE, lambda tmp: tmp.write_text(yaml.safe_dump(dataclasses.asdict(base))))
    atomic_write(study_dir / SPACE_FILE, lambda tmp: tmp.write_text(yaml.safe_dump(specs)))
    env = {**os.environ, **{var: str(threads) for var in THREAD_ENV_VARS}}
    (study_dir / LOGS_DIR).mkdir(exist_ok=True)
    workers = []
    for index in range(args.jobs):
        log = (study_dir / LOGS_DIR / f"worker-{index}.log").open("a")
        workers.append((subprocess.Popen(_worker_command(args, study_dir, storage_url, index, threads), stdout=log,
                                         stderr=subprocess.STDOUT, env=env), log))
    print(f"study {args.study}: {args.jobs} workers with {threads} thread(s) each; logs in {study_dir / LOGS_DIR}",
          file=sys.stderr)
    bar = tqdm(total=args.trials, unit="trial", desc=f"study {args.study}", disable=not args.progress_bar,
               dynamic_ncols=True)
    reported: set[int] = set()

    def report_new_trials() -> None:
        for trial in study.get_trials(deepcopy=False, states=_states("COMPLETE", "PRUNED", "FAIL")):
            if trial.number not in reported:
                reported.add(trial.number)
                tqdm.write(describe(trial), file=sys.stderr)
        done = min(finished_trials(study), args.trials)
        if done != bar.n:
            bar.update(done - bar.n)

    try:
        while any(process.poll() is None for process, _ in workers):
            report_new_trials()
            time.sleep(1.0)
    except KeyboardInterrupt:
        for process, _ in workers:
            process.send_signal(2)  # SIGINT: each worker's run saves a checkpoint at its next update
        for process, _ in workers:
            process.wait()
        raise
    finally:
        report_new_trials()
        bar.close()
        for _, log in workers:
            log.close()
    failed = [(index, process.returncode) for index, (process, _) in enumerate(workers) if process.returncode]
    if failed:
        index, code = failed[0]
        lines = (study_dir / LOGS_DIR / f"worker-{index}.log").read_text(errors="replace").strip().splitlines()
        raise UserError(f"{len(failed)} of {args.jobs} workers failed; worker {index} exited with {code}: "
                        f"{lines[-1] if lines else 'no output'}")


def run_tune(args: argparse.Namespace) -> int:
    _check_args(args)
    _optuna()
    base = _base_config(args)
    specs = space_specs(base.algo, base.core, args.space)
    source = f"search space {SPACE_DIR / base.algo}.yaml" + (f" + {args.space}" if args.space else "")
    space = build_space(specs, base, source)
    if not space:
        raise UserError(f"the search space for {base.algo} + {base.core} is empty; nothing to tune")
    args.study = args.study or f"{base.experiment}-tune"
    study_dir = Path(args.runs_dir) / args.study
    study_dir.mkdir(parents=True, exist_ok=True)
    storage_url = args.storage or f"sqlite:///{(study_dir / DB_FILE).resolve()}"
    storage = open_storage(storage_url, args.heartbeat)
    study = open_study(storage, args.study, base, specs, make_sampler(args.sampler, args.sampler_seed),
                       make_pruner(args.pruner))
    known = {Path(t.user_attrs["run_dir"]).name for t in study.get_trials(deepcopy=False) if "run_dir" in t.user_attrs}
    strangers = sorted(p.name for p in study_dir.glob("trial-*") if p.name not in known)
    if strangers and not known:
        raise UserError(f"{study_dir} holds trial folders ({strangers[0]}, ...) of another study; give another "
                        "--study or --runs-dir")
    print(f"study {args.study} ({hidden_password(storage_url)}): tuning {', '.join(space)} of {base.algo} + "
          f"{base.core} on {base.env_id}, {args.trials} trials in all", file=sys.stderr)
    if args.jobs == 1:
        Worker(study, base, space, study_dir, args.trials, args.progress_bar).run()
    else:
        _run_workers(args, study, base, specs, study_dir, storage_url)
    best = write_best(study, study_dir / BEST_FILE)
    counts = {state: len(study.get_trials(deepcopy=False, states=_states(state.upper())))
              for state in ("complete", "pruned", "fail")}
    print(f"study {args.study}: {', '.join(f'{n} {state}' for state, n in counts.items())}", file=sys.stderr)
    if best is None:
        print("no trial completed yet, so no best config", file=sys.stderr)
    else:
        print(f"best: {describe(best)}; its config -> {study_dir / BEST_FILE}\n"
              f"train it with: fwm-rl train --config {study_dir / BEST_FILE}", file=sys.stderr)
    return 0


def add_parser(commands: Any, formatter_class: type = argparse.HelpFormatter) -> None:
    """The ``tune`` subcommand of ``fwm-rl``."""
    from fwm_rl.train import options

    parser = commands.add_parser(
        "tune", help="tune a config's hyperparameters with Optuna (val return, pruning, shared studies)",
        formatter_class=formatter_class,
        description=textwrap.fill(
            "Search the hyperparameters of an RL config with Optuna. Each trial trains the --config (with the "
            "options below) and sampled values of the search space (train/configs/tune/<algo>.yaml: learning rate, "
            "entropy, epochs, minibatches, gamma, lambda, hidden and memory sizes; --space FILE overrides it) in an "
            "ordinary run directory RUNS_DIR/STUDY/trial-NNNN, and scores it by its final return on the config's "
            "held-out eval_split (val; test is never played). The pruner stops poor trials at their periodic "
            "evaluations. The study lives in RUNS_DIR/STUDY/study.db unless --storage gives an SQLAlchemy URL: "
            "run the same command on many machines with --storage postgresql://... --study NAME and they share the "
            "study; --trials counts all their trials. The best trial is written to RUNS_DIR/STUDY/best.yaml, ready "
            "for `fwm-rl train --config`. Needs the [tune] extra.", width=100),
        epilog="examples:\n"
               "  fwm-rl tune --config graphnav-fwm --total-timesteps 2e5 --n-envs 64 --eval-episodes 100 "
               "--trials 20 --jobs 2\n"
               "  fwm-rl tune --config graphnav-fwm --storage postgresql://user@db-host/optuna --study fwm-a "
               "--trials 100\n"
               "  fwm-rl tune --config my.yaml --space my-space.yaml --sampler random --pruner none\n"
               "  fwm-rl train --config runs/graphnav-fwm-tune/best.yaml")
    parser.add_argument("--config", metavar="NAME_OR_FILE", help="the base config: a shipped experiment or a YAML "
                        "file; the train options below override its fields, the tuned values override both")
    parser.add_argument("--trials", type=int, default=20, help="trials of the study in all, counted over every "
                        "worker and machine (finished and running; a failed trial is made up) [default: 20]")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes on this machine, each with cores // "
                        "JOBS threads [default: 1]")
    parser.add_argument("--space", type=Path, metavar="FILE", help="YAML merged over the shipped search space of the "
                        "config's algo and core (same format; a parameter set to null is not tuned)")
    parser.add_argument("--storage", metavar="URL", help="SQLAlchemy URL of the study's database, shared by workers "
                        "on many machines (postgresql://USER:PASSWORD@HOST/DB, sqlite:///FILE, ...) "
                        "[default: sqlite:///RUNS_DIR/STUDY/study.db]")
    parser.add_argument("--study", metavar="NAME", help="study name, also its folder RUNS_DIR/NAME "
                        "[default: EXPERIMENT-tune]")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs"), help="parent folder of the study's folder "
                        "[default: runs]")
    parser.add_argument("--sampler", choices=SAMPLERS, default="tpe", help="Optuna sampler [default: tpe]")
    parser.add_argument("--sampler-seed", type=int, metavar="SEED", help="seed of the sampler (worker K of --jobs "
                        "gets SEED+K) [default: unseeded]")
    parser.add_argument("--pruner", choices=PRUNERS, default="median", help="median: stop a trial whose val "
                        f"return is below the median of earlier trials at the same step (after {STARTUP_TRIALS} "
                        "trials); none: never [default: median]")
    parser.add_argument("--heartbeat", type=int, default=60, metavar="SECONDS", help="seconds between a running "
                        "trial's heartbeats; a trial silent for twice that (its worker died) is marked failed and "
                        f"retried up to {MAX_RETRIES} times [default: 60]")
    parser.add_argument("--progress-bar", action=argparse.BooleanOptionalAction, default=True,
                        help="show a progress bar over trials [default: on]")
    options.add_config_arguments(parser, TrainConfig, "train config (override the --config file's fields)")
    parser.set_defaults(func=run_tune)
