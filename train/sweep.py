"""``fwm-rl sweep``: a grid of configs x seeds, each run an ordinary run directory trained by ``fwm-rl train`` in a
subprocess and then played once on the held-out test split by ``fwm-rl evaluate``.

A sweep folder RUNS_DIR/NAME holds::

    sweep.json                 the manifest: the sweep's settings, the --jobs it last ran with and each run's state
                               (written atomically)
    <config>-seed<S>/          one run directory per config and seed (made by ``fwm-rl train``)
    evaluations/<run>/<split>.json   the final evaluation of each run (``fwm-rl evaluate --json-file``)
    logs/<run>.log             everything the run's subprocesses printed
    .sweep.lock                held while a sweep writes here, so a second sweep cannot

Runs go through the command line only (never through ``fwm_rl.train``'s internals), so a sweep trains exactly what
``fwm-rl train`` would (or ``fwm-rl supervised`` with ``--command supervised``: those runs test their best-on-val
model themselves, so they get no final evaluation). Rerunning the same command, or ``fwm-rl sweep --resume FOLDER``, skips finished runs,
continues killed, interrupted or failed ones with ``fwm-rl train --resume RUN_DIR`` and starts the rest, as many at
once as the last ``--jobs`` unless given again; asking for more configs or seeds extends the grid. Ctrl-C asks every
running run to save at its next update and exit.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Optional, Sequence

from fwm_rl.train.errors import UserError
from fwm_rl.train.io import exclusive_lock, write_json

MANIFEST_FILE = "sweep.json"
LOCK_FILE = ".sweep.lock"
EVALUATIONS_DIR = "evaluations"
LOGS_DIR = "logs"
MANIFEST_FORMAT = 1
EXIT_INTERRUPTED = 130
DEFAULT_EVAL_SPLITS = ["test"]
THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
# Options the sweep sets itself; --set may not override them.
SWEEP_OWNED_FIELDS = ("seed", "experiment", "runs_dir", "run_dir", "time_budget", "threads", "resume", "overwrite",
                      "progress_bar")
# The settings a rerun must repeat: they change what a run computes or how it is scored.
SETTINGS = ("command", "time_budget", "overrides", "eval_splits", "eval_episodes", "best", "deterministic")
# The fwm-rl commands a sweep can train with. ``supervised`` runs test their best-on-val model themselves (test/best_*
# in metrics.csv), so they get no final evaluation.
COMMANDS = ("train", "supervised")

# Run states in the manifest. "done": trained and evaluated; a run in any other state is redone on a rerun.
PENDING, TRAINING, EVALUATING, DONE, FAILED, INTERRUPTED = (
    "pending", "training", "evaluating", "done", "failed", "interrupted")


def run_name(agent: str, seed: int) -> str:
    return f"{agent}-seed{seed}"


def read_manifest(sweep_dir: Path) -> dict[str, Any]:
    """The manifest of a sweep folder; UserError if there is none or it is unreadable."""
    path = Path(sweep_dir) / MANIFEST_FILE
    if not path.exists():
        raise UserError(f"{sweep_dir} is not a sweep folder (no {MANIFEST_FILE}); make one with `fwm-rl sweep`")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON ({e})") from None
    if manifest.get("format") != MANIFEST_FORMAT:
        raise UserError(f"{path} has format {manifest.get('format')!r}; this fwm-rl reads format {MANIFEST_FORMAT}")
    return manifest


def resolve_config(config: str, shipped_names: bool = True) -> tuple[str, str]:
    """(agent name, what to pass to ``--config``) of a YAML path or, with ``shipped_names``, a shipped config name."""
    path = Path(config)
    if path.suffix in (".yaml", ".yml") or path.exists() or not shipped_names:
        if not path.is_file():
            raise UserError(f"config file not found: {config}")
        return path.stem, str(path.resolve())
    shipped = sorted(p.stem for p in resources.files("fwm_rl.train").joinpath("configs").iterdir()
                     if p.name.endswith(".yaml"))
    if config not in shipped:
        raise UserError(f"unknown config {config!r}; shipped configs: {', '.join(shipped)} (or give a .yaml path)")
    return config, config


def parse_overrides(items: list[str]) -> dict[str, list[str]]:
    """``["n_envs=8", "core_kwargs=memory_size=8", "core_kwargs=n_reads=2"]`` -> {key: [values]} (a dict field takes
    several KEY=VALUE values); UserError for a malformed item or a field the sweep sets itself."""
    overrides: dict[str, list[str]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key.isidentifier():
            raise UserError(f"--set expects KEY=VALUE with KEY a config field (e.g. n_envs=8), got {item!r}")
        if key in SWEEP_OWNED_FIELDS:
            raise UserError(f"--set {key}=... : the sweep sets {key} itself (use the sweep's own options)")
        overrides.setdefault(key, []).append(value)
    return overrides


@dataclass
class Sweep:
    """A sweep folder and its manifest; every change of state is written to the manifest at once."""

    folder: Path
    manifest: dict[str, Any]
    threads: int = 1
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def settings(self) -> dict[str, Any]:
        return self.manifest["settings"]

    @property
    def runs(self) -> dict[str, dict[str, Any]]:
        return self.manifest["runs"]

    def update(self, name: str, **values: Any) -> None:
        with self.lock:
            self.runs[name].update(values)
            write_json(self.folder / MANIFEST_FILE, self.manifest)

    def log_path(self, name: str) -> Path:
        return self.folder / LOGS_DIR / f"{name}.log"

    # Commands ----------------------------------------------------------------------------------------------------

    def train_command(self, name: str) -> list[str]:
        """``fwm-rl train`` (or ``supervised``) for a fresh run, or ``--resume`` where the run directory already has
        its config."""
        run, run_dir, command = self.runs[name], self.folder / name, self.settings["command"]
        common = ["--threads", str(self.threads), "--no-progress-bar"]
        if self.settings["time_budget"] is not None:
            common += ["--time-budget", str(self.settings["time_budget"])]
        if (run_dir / "config.yaml").exists():
            return [*_fwm_rl(), command, "--resume", str(run_dir), *common]
        overrides = [arg for key, values in self.settings["overrides"].items()
                     for arg in ("--" + key.replace("_", "-"), *values)]
        return [*_fwm_rl(), command, "--config", run["config"], "--seed", str(run["seed"]), "--experiment", name,
                "--runs-dir", str(self.folder), *common, *overrides]

    def evaluation_path(self, name: str, split: str) -> Path:
        return self.folder / EVALUATIONS_DIR / name / f"{split}.json"

    def evaluate_command(self, name: str, split: str) -> list[str]:
        """``fwm-rl evaluate`` of the run's final model on ``split``, its report written to ``evaluation_path``."""
        command = [*_fwm_rl(), "evaluate", str(self.folder / name), "--split", split, "--json-file",
                   str(self.evaluation_path(name, split)), "--no-progress-bar"]
        if self.settings["eval_episodes"] is not None:
            command += ["--episodes", str(self.settings["eval_episodes"])]
        command += ["--best"] * self.settings["best"] + ["--deterministic"] * self.settings["deterministic"]
        return command

    def child_env(self) -> dict[str, str]:
        return {**os.environ, **{var: str(self.threads) for var in THREAD_ENV_VARS}}


def selection_warning(name: str, selected_on: Optional[str], eval_splits: Sequence[str]) -> Optional[str]:
    """The warning for a run that played a held-out split other than val during training (``eval_split``) and is
    finally evaluated on it too; None otherwise. Val is for that: the final model is not chosen on it (and with
    ``--best`` the sweep refuses to report a split the model was chosen on)."""
    if selected_on is None or selected_on == "val" or selected_on not in eval_splits:
        return None
    return (f"warning: {name} was evaluated on {selected_on} during training (eval_split: {selected_on}); select on "
            f"val (--set eval_split=val) and keep {selected_on} for the final evaluation")


def _fwm_rl() -> list[str]:
    return [sys.executable, "-m", "fwm_rl"]


class _Children:
    """The subprocesses running now. They start in their own session, so a Ctrl-C reaches each exactly once, through
    ``interrupt`` (one SIGINT: save at the next update and exit; a second: abort)."""

    def __init__(self) -> None:
        self.processes: set[subprocess.Popen] = set()
        self.lock = threading.Lock()
        self.stopping = False

    def run(self, command: list[str], log_path: Path, env: dict[str, str], on_start=None) -> int:
        """Run ``command`` with its output appended to ``log_path``; its exit code. Returns EXIT_INTERRUPTED without
        starting it once the sweep is stopping."""
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("a") as log:
            log.write(f"$ {' '.join(command)}\n")
            log.flush()
            with self.lock:
                if self.stopping:
                    return EXIT_INTERRUPTED
                process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                           start_new_session=True)
                self.processes.add(process)
            if on_start is not None:
                on_start(process.pid)
            process.wait()
            with self.lock:
                self.processes.discard(process)
        return process.returncode

    def interrupt(self) -> int:
        with self.lock:
            self.stopping = True
            for process in self.processes:
                if process.poll() is None:
                    process.send_signal(signal.SIGINT)
            return len(self.processes)


def _last_line(path: Path) -> str:
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1].strip() if lines else "no output"


def _alive(pid: Optional[int], name: str) -> bool:
    """Whether process ``pid`` lives and is a run of this name (so a reused pid does not count)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    cmdline = Path(f"/proc/{pid}/cmdline")
    return not cmdline.exists() or name in cmdline.read_text(errors="replace")


def _do_run(sweep: Sweep, children: _Children, name: str) -> str:
    """Train (or continue) one run, then evaluate it on each final split; returns its new state."""
    if children.stopping:  # Ctrl-C before this run started: it stays as it was
        return INTERRUPTED
    run, log_path, env = sweep.runs[name], sweep.log_path(name), sweep.child_env()
    if not run.get("trained"):
        command = sweep.train_command(name)
        sweep.update(name, state=TRAINING, attempts=run.get("attempts", 0) + 1, error=None)
        code = children.run(command, log_path, env, on_start=lambda pid: sweep.update(name, pid=pid))
        if code != 0:
            return _stopped(sweep, name, code, log_path, "training", children.stopping)
        sweep.update(name, trained=True, pid=None)
    selected_on = _read_run_config(sweep.folder / name).get("eval_split")
    warning = selection_warning(name, selected_on, sweep.settings["eval_splits"])
    if warning:
        from tqdm.auto import tqdm

        tqdm.write(warning, file=sys.stderr)
    if sweep.settings["best"] and selected_on in sweep.settings["eval_splits"]:
        sweep.update(name, state=FAILED, error=f"best_model.zip of {name} was chosen on {selected_on}; evaluating it "
                                               f"on {selected_on} would report a selected score (drop --best)")
        return FAILED
    sweep.update(name, state=EVALUATING)
    evaluations = dict(run.get("evaluations", {}))
    for split in sweep.settings["eval_splits"]:
        if split in evaluations:
            continue
        code = children.run(sweep.evaluate_command(name, split), log_path, env)
        if code != 0:
            return _stopped(sweep, name, code, log_path, f"evaluation on {split}", children.stopping)
        path = sweep.evaluation_path(name, split)
        if not path.is_file():
            sweep.update(name, state=FAILED, error=f"`fwm-rl evaluate --json-file {path}` wrote no file")
            return FAILED
        evaluations[split] = str(path.relative_to(sweep.folder))
        sweep.update(name, evaluations=evaluations)
    sweep.update(name, state=DONE, pid=None, error=None)
    return DONE


def _stopped(sweep: Sweep, name: str, code: int, log_path: Path, stage: str, stopping: bool) -> str:
    """Record a run whose command exited with ``code``: interrupted (it saved and exited 130, or a Ctrl-C reached it
    while it was still starting up, before it could save: killed by SIGINT; or the sweep had asked it to stop,
    whatever way it ended) or failed. An interrupted run continues on resume, as a failed one does on a rerun."""
    if code in (EXIT_INTERRUPTED, -signal.SIGINT) or stopping:
        sweep.update(name, state=INTERRUPTED, pid=None)
        return INTERRUPTED
    reason = f"killed by signal {-code}" if code < 0 else _last_line(log_path)
    sweep.update(name, state=FAILED, pid=None, error=f"{stage} exited with {code}: {reason}")
    return FAILED


def _read_run_config(run_dir: Path) -> dict[str, Any]:
    import yaml

    path = run_dir / "config.yaml"
    return (yaml.safe_load(path.read_text()) or {}) if path.exists() else {}


# Setting up a sweep (new, extended or resumed) ------------------------------------------------------------------

def _merge_grid(manifest: dict[str, Any], configs: list[str], seeds: int) -> None:
    """Add the runs of ``configs`` x seeds 0..seeds-1 that the manifest does not hold yet."""
    agents: dict[str, str] = {}
    for config in configs:
        agent, config_arg = resolve_config(config, shipped_names=manifest["settings"]["command"] == "train")
        if agents.get(agent, config_arg) != config_arg:
            raise UserError(f"two configs are named {agent!r} ({agents[agent]} and {config_arg}); rename one file")
        agents[agent] = config_arg
    for agent, config_arg in agents.items():
        for seed in range(seeds):
            name = run_name(agent, seed)
            known = manifest["runs"].get(name)
            if known is not None and known["config"] != config_arg:
                raise UserError(f"the sweep trains {agent} from {known['config']}, not {config_arg}; give another --name")
            manifest["runs"].setdefault(name, {"agent": agent, "config": config_arg, "seed": seed, "state": PENDING})


def runs_to_do(runs: dict[str, dict[str, Any]]) -> list[str]:
    """The unfinished runs of a manifest, seed by seed (every agent's seed 0, then every agent's seed 1, ...), so that
    a sweep stopped part-way holds as many seeds of every agent."""
    return sorted((name for name, run in runs.items() if run["state"] != DONE), key=lambda name: runs[name]["seed"])


def _check_settings(stored: dict[str, Any], given: dict[str, Any], folder: Path) -> None:
    for key in SETTINGS:
        if stored[key] != given[key]:
            raise UserError(f"sweep {folder} was started with {key} = {stored[key]!r}, not {given[key]!r}; rerun it "
                            f"with its own settings (`fwm-rl sweep --resume {folder}`) or give another --name")


TRAIN_ONLY_OPTIONS = ("--time-budget", "--eval-splits", "--eval-episodes", "--best", "--deterministic")
OPTION_DEFAULTS = {"--command": "train", "--eval-splits": DEFAULT_EVAL_SPLITS, "--best": False, "--deterministic": False}


def _given(args: argparse.Namespace, *options: str) -> list[str]:
    """Those of ``options`` that the command line set to something other than their default."""
    return [option for option in options
            if getattr(args, option[2:].replace("-", "_")) not in (None, OPTION_DEFAULTS.get(option))]


def sweep_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The SETTINGS of a new sweep from its command line (checked; configs are checked by ``_merge_grid``)."""
    if args.time_budget is not None and args.time_budget <= 0:
        raise UserError(f"--time-budget must be > 0 minutes, got {args.time_budget}")
    if args.eval_episodes is not None and args.eval_episodes < 1:
        raise UserError(f"--eval-episodes must be >= 1, got {args.eval_episodes}")
    eval_splits = list(dict.fromkeys(args.eval_splits))
    if args.command == "supervised":
        if _given(args, *TRAIN_ONLY_OPTIONS):
            raise UserError(f"only `train` runs take {', '.join(_given(args, *TRAIN_ONLY_OPTIONS))}; supervised runs "
                            "stop after --set steps=N and test their best-on-val model themselves")
        eval_splits = []
    return {"command": args.command, "time_budget": args.time_budget, "overrides": parse_overrides(args.set or []),
            "eval_splits": eval_splits, "eval_episodes": args.eval_episodes,
            "best": args.best, "deterministic": args.deterministic}


def run_sweep(args: argparse.Namespace) -> int:
    """Entry point of ``fwm-rl sweep``: set up or continue the sweep folder, run what is not done; exit status."""
    if args.jobs is not None and args.jobs < 1:
        raise UserError(f"--jobs must be >= 1, got {args.jobs}")
    if args.resume is not None:
        given = _given(args, "--command", "--config", "--seeds", "--set", *TRAIN_ONLY_OPTIONS)
        if given:
            raise UserError(f"--resume continues a sweep with its own settings; drop {', '.join(given)}")
        folder, settings = Path(args.resume), read_manifest(Path(args.resume))["settings"]
    else:
        if not args.config:
            raise UserError("give --config NAME [NAME ...] (or --resume SWEEP_DIR)")
        if args.seeds is None or args.seeds < 1:
            raise UserError(f"--seeds must be >= 1, got {args.seeds}")
        folder, settings = Path(args.runs_dir) / args.name, sweep_settings(args)
        _merge_grid({"settings": settings, "runs": {}}, args.config, args.seeds)  # check the configs first
    folder = folder.resolve()
    folder.mkdir(parents=True, exist_ok=True)
    busy = f"another `fwm-rl sweep` is writing {folder} (pid {{}} holds {LOCK_FILE}); wait for it to end"
    with exclusive_lock(folder / LOCK_FILE, busy.format):
        if (folder / MANIFEST_FILE).exists():
            manifest = read_manifest(folder)
            _check_settings(manifest["settings"], settings, folder)
        elif {path.name for path in folder.iterdir()} - {LOCK_FILE}:
            raise UserError(f"{folder} exists and is not a sweep folder (no {MANIFEST_FILE}); give another --name")
        else:
            manifest = {"format": MANIFEST_FORMAT, "settings": settings, "runs": {}}
        if args.resume is None:
            _merge_grid(manifest, args.config, args.seeds)
        manifest["jobs"] = jobs = args.jobs or manifest.get("jobs", 1)
        sweep = Sweep(folder, manifest, threads=max(1, _cores() // jobs))
        write_json(folder / MANIFEST_FILE, manifest)
        return _run_all(sweep, jobs, progress_bar=args.progress_bar)


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _run_all(sweep: Sweep, jobs: int, progress_bar: bool) -> int:
    from tqdm.auto import tqdm

    todo = runs_to_do(sweep.runs)
    for name in todo:
        run = sweep.runs[name]
        if run["state"] == TRAINING and _alive(run.get("pid"), name):
            raise UserError(f"{name} is still being trained by process {run['pid']}, left by a sweep that was killed; "
                            f"wait for it or stop it (kill -INT {run['pid']}), then rerun")
    done = len(sweep.runs) - len(todo)
    print(f"sweep {sweep.folder}: {len(sweep.runs)} runs, {done} done, {len(todo)} to run, {jobs} at a time with "
          f"{sweep.threads} thread(s) each", file=sys.stderr)
    children = _Children()
    bar = tqdm(total=len(sweep.runs), initial=done, unit="run", desc="sweep", disable=not progress_bar,
               dynamic_ncols=True)
    outcomes: dict[str, str] = {}
    previous_handlers = {signum: signal.signal(signum, _stop_as_ctrl_c) for signum in (signal.SIGINT, signal.SIGTERM)}
    executor = ThreadPoolExecutor(max_workers=jobs)
    futures: dict[Future, str] = {executor.submit(_do_run, sweep, children, name): name for name in todo}
    pending = set(futures)
    interrupts = 0
    while pending:
        try:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
        except KeyboardInterrupt:
            interrupts += 1
            running = children.interrupt()
            tqdm.write(f"Ctrl-C: {running} running run(s) save at their next update and stop"
                       + (" (Ctrl-C again to abort them)" if interrupts == 1 else ""), file=sys.stderr)
            continue
        for future in finished:
            name = futures[future]
            outcomes[name] = future.result()
            run = sweep.runs[name]
            if outcomes[name] == DONE:
                bar.update(1)
                tqdm.write(f"{name}: done" + "".join(f", {split} {_score(sweep, name, split)}"
                                                     for split in sweep.settings["eval_splits"]), file=sys.stderr)
            elif outcomes[name] == FAILED:
                tqdm.write(f"{name}: failed: {run['error']} (log: {sweep.log_path(name)})", file=sys.stderr)
    executor.shutdown()
    for signum, handler in previous_handlers.items():
        signal.signal(signum, handler)
    bar.close()
    failed = [name for name, outcome in outcomes.items() if outcome == FAILED]
    stopped = [name for name, outcome in outcomes.items() if outcome == INTERRUPTED]
    if stopped:
        print(f"sweep stopped with {len(stopped)} run(s) unfinished; continue with: fwm-rl sweep --resume "
              f"{sweep.folder}", file=sys.stderr)
        return EXIT_INTERRUPTED
    if failed:
        raise UserError(f"{len(failed)} of {len(sweep.runs)} runs failed ({failed[0]}: {sweep.runs[failed[0]]['error']});"
                        f" logs in {sweep.folder / LOGS_DIR}; rerun to retry them")
    print(f"sweep done: {len(sweep.runs)} runs in {sweep.folder}; aggregate them with: fwm-rl report {sweep.folder}",
          file=sys.stderr)
    return 0


def _stop_as_ctrl_c(signum: int, frame: Any) -> None:
    """SIGINT, also where the sweep started with it ignored (a background job, as a run handles it), and SIGTERM (a
    batch scheduler's, ``timeout``'s or ``docker stop``'s) stop the sweep as a Ctrl-C does."""
    raise KeyboardInterrupt


def _score(sweep: Sweep, name: str, split: str) -> str:
    report = json.loads((sweep.folder / sweep.runs[name]["evaluations"][split]).read_text())
    row = report.get("rows", {}).get(name, {})
    return f"return {row['return_mean']:.2f}" if "return_mean" in row else "evaluated"


def add_parser(commands: Any, formatter_class: type = argparse.HelpFormatter) -> None:
    """The ``sweep`` subcommand of ``fwm-rl``."""
    parser = commands.add_parser(
        "sweep", help="train a grid of configs x seeds (resumable, several at once), evaluate each on test",
        formatter_class=formatter_class,
        description=textwrap.fill(
            "Train every config with seeds 0..N-1, each an ordinary run directory RUNS_DIR/NAME/CONFIG-seedS made by "
            "`fwm-rl train`, then play each final model once on the held-out split(s) with `fwm-rl evaluate`. The "
            "manifest RUNS_DIR/NAME/sweep.json records each run's state: rerunning the same command (or --resume) "
            "skips finished runs and continues the rest; more --config or --seeds extend the grid. Ctrl-C lets "
            "running runs save first. Aggregate with `fwm-rl report`.", width=100),
        epilog="examples:\n"
               "  fwm-rl sweep --config graphnav-fwm graphnav-lstm graphnav-gru --seeds 5 --time-budget 10 --jobs 2\n"
               "  fwm-rl sweep --resume runs/sweep\n"
               "  fwm-rl sweep --config gridmaze-fwm --seeds 3 --set n_envs=64 --set core_kwargs=memory_size=8")
    parser.add_argument("--command", choices=COMMANDS, default="train",
                        help="the fwm-rl command that trains each run: train (RL, then a final evaluation) or "
                             "supervised (configs are YAML files; its runs test their best-on-val model) "
                             "[default: train]")
    parser.add_argument("--config", nargs="+", metavar="NAME_OR_FILE", help="configs to train (shipped names or "
                                                                            "YAML files); each is one agent")
    parser.add_argument("--seeds", type=int, help="seeds per config: 0, 1, ..., SEEDS-1")
    parser.add_argument("--time-budget", type=float, metavar="MINUTES", help="wall-clock minutes per run "
                                                                             "[default: the config's]")
    parser.add_argument("--jobs", type=int, help="runs at once; each gets cores // JOBS torch and OpenMP threads "
                                                 "[default: the sweep folder's last --jobs, else 1]")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs"), help="parent folder [default: runs]")
    parser.add_argument("--name", default="sweep", help="sweep folder name: RUNS_DIR/NAME [default: sweep]")
    parser.add_argument("--resume", metavar="SWEEP_DIR", help="continue the sweep in SWEEP_DIR with its own settings")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="override a config field of every run, as `fwm-rl train --KEY VALUE` would (repeat the "
                             "option; a dict field takes KEY=K=V)")
    parser.add_argument("--eval-splits", nargs="+", default=DEFAULT_EVAL_SPLITS, metavar="SPLIT",
                        help="held-out splits of the final evaluation [default: test]")
    parser.add_argument("--eval-episodes", type=int, help="episodes of the final evaluation [default: the run's "
                                                          "eval_episodes]")
    parser.add_argument("--best", action="store_true", help="evaluate best_model.zip (chosen on the run's eval_split, "
                                                            "which must not be an evaluated split) instead of model.zip")
    parser.add_argument("--deterministic", action="store_true", help="evaluate the most likely action")
    parser.add_argument("--progress-bar", action=argparse.BooleanOptionalAction, default=True,
                        help="show a progress bar over runs [default: on]")
    parser.set_defaults(func=run_sweep)
