"""The run layer every trainer stands on: a config dataclass, a ``Trainer`` (build everything from the config, then
fit in a run directory), and the one way to start and to resume a run.

``start`` builds and validates everything (configs, devices, envs, models) before the run directory is created or
an old run is replaced, then takes the directory's lock, writes the resolved ``config.yaml`` and fits. ``resume``
takes the lock, reads the newest readable checkpoint, refuses a hand-edited ``config.yaml`` unless only resumable
fields changed, and fits on from that checkpoint. A trainer that goes non-finite stops with one line that names the
quantity, the update and the last good checkpoint.

Adding a trainer (see docs/adding-a-trainer.md): subclass ``RunConfig`` for its options and ``Trainer`` for its
training loop; ``add_trainer_arguments`` and ``run_from_args`` give it a command line.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import signal
from abc import ABC, abstractmethod
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable, Iterator, Optional, Sequence

import torch

from fwm_rl.train import options
from fwm_rl.train.errors import UserError
from fwm_rl.train.rundir import RunDir

DEVICE_TYPES = ("cpu", "cuda", "mps")


@dataclass
class RunConfig:
    """Fields every trainer has, under the same names."""

    experiment: str = "run"
    """Name of the experiment; the run directory is RUNS_DIR/EXPERIMENT."""
    seed: int = 0
    """Seed of everything random in the run (initialisation, data or environments, sampling)."""
    device: str = "auto"
    """Torch device: auto (CUDA when present, else CPU), cpu, cuda, cuda:N or mps."""
    threads: Optional[int] = None
    """Torch CPU threads; none for torch's default, one per physical core (the shipped configs leave it so; where
    other jobs keep the cores busy, 1 is faster)."""

    # Fields a resumed run may change (subclasses add theirs): they change where or how long it runs, not what.
    RESUMABLE: ClassVar[tuple[str, ...]] = ("device", "threads")

    def __post_init__(self) -> None:
        options.coerce_fields(self)
        check_positive(self, ("threads",))
        check_device(self.device)


def check_time_budget(minutes: Optional[float]) -> None:
    """ValueError unless a run's ``time_budget`` is none or above 0 minutes."""
    if minutes is not None and minutes <= 0:
        raise ValueError(f"time_budget must be > 0 minutes or none, got {minutes}")


def out_of_time(minutes: Optional[float], elapsed_s: float) -> bool:
    """Whether ``elapsed_s`` seconds of wall time have used up a time budget of ``minutes`` (none: never)."""
    return minutes is not None and elapsed_s >= 60 * minutes


def check_positive(config: Any, names: Iterable[str]) -> None:
    """ValueError naming the first of ``names`` that is set (not none) and below 1."""
    for name in names:
        value = getattr(config, name)
        if value is not None and value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")


def core_choices() -> list[str]:
    """The core kinds a config may name: the keys of ``fwm_rl.CORE_CLASSES``."""
    from fwm_rl import CORE_CLASSES

    return sorted(CORE_CLASSES)


def core_field(default: str) -> Any:
    """A dataclass field naming a memory core; --help lists fwm_rl.CORE_CLASSES."""
    return dataclasses.field(default=default, metadata={"choices": core_choices})


def check_core(kind: str) -> None:
    """ValueError unless ``kind`` is a key of ``fwm_rl.CORE_CLASSES``."""
    if kind not in core_choices():
        raise ValueError(f"unknown core {kind!r}; choose from {', '.join(core_choices())}")


def check_device(name: str) -> None:
    """ValueError for a device name torch does not know or this machine does not have (``auto`` is always fine:
    it picks the CPU when there is no GPU)."""
    if name == "auto":
        return
    allowed = "auto, cpu, cuda, cuda:N or mps"
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"device {name!r} is not a torch device; use {allowed}") from None
    if device.type not in DEVICE_TYPES:
        raise ValueError(f"device {name!r} is not supported; use {allowed}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name} asked for CUDA, which this machine does not have; use auto or cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {name} asked for MPS, which this machine does not have; use auto or cpu")


def pick_device(name: str) -> torch.device:
    """The torch device of a checked device name (``auto`` -> CUDA when present, else CPU)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def check_finite_parameters(module: torch.nn.Module, update: int, step: int) -> None:
    """NonFiniteError if any parameter of ``module`` holds NaN or Inf (checked before every checkpoint, so that none
    is ever written with non-finite parameters)."""
    from fwm_rl.agents import NonFiniteError

    for name, parameter in module.named_parameters():
        if not torch.isfinite(parameter).all():
            raise NonFiniteError(f"parameters ({name})", update, step)


def check_finite_loss(loss: torch.Tensor, update: int, step: int) -> None:
    """NonFiniteError for a NaN or Inf loss, before it is back-propagated."""
    from fwm_rl.agents import NonFiniteError

    if not math.isfinite(float(loss.detach())):
        raise NonFiniteError("loss", update, step)


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # each asks a run to save and stop


class StopRequest:
    """Whether a Ctrl-C or SIGTERM (as batch schedulers, ``timeout`` and ``docker stop`` send) asked the run to save
    at its next boundary and stop; set by :func:`stop_on_signals`."""

    def __init__(self) -> None:
        self.requested = False


@contextmanager
def stop_on_signals(notify: Callable[[str], None]) -> Iterator[StopRequest]:
    """While inside: the first SIGINT or SIGTERM sets ``requested`` and calls ``notify`` with the signal's name
    ("Ctrl-C", "SIGTERM"); a second raises KeyboardInterrupt (abort without saving). The handlers are installed
    even where the process started with SIGINT ignored (a background job), so that a sweep's forwarded Ctrl-C
    reaches its runs. Outside the main thread the signals are left as they are."""
    stop = StopRequest()

    def handler(signum: int, frame: Any) -> None:
        if stop.requested:
            raise KeyboardInterrupt
        stop.requested = True
        notify("Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name)

    try:
        previous = {signum: signal.signal(signum, handler) for signum in STOP_SIGNALS}
    except ValueError:  # not the main thread
        yield stop
        return
    try:
        yield stop
    finally:
        for signum, old_handler in previous.items():
            signal.signal(signum, old_handler)


@dataclass
class RunResult:
    run_dir: Path
    step: int
    """Where training ended (environment steps or optimisation steps)."""
    stopped: Optional[str] = None
    """Why training ended early ("time budget", "interrupted"), or None if it completed."""
    summary: dict[str, Any] = dataclasses.field(default_factory=dict)
    """What the trainer reports (best held-out metric, final test scores, ...)."""


class Trainer(ABC):
    """One way of training, built from a config and fitted in a run directory.

    ``__init__(config, checkpoint)`` (called with torch's threads already set) builds and validates everything the
    run needs (a constructor's ValueError or
    TypeError for a user-given value is wrapped with ``errors.user_input``) and restores ``checkpoint`` (the
    payload ``fit`` saved) when given; it writes no file. ``fit(run, start_step)`` trains in the locked run
    directory and saves checkpoints with ``save_checkpoint``.
    """

    config_class: ClassVar[type[RunConfig]]
    command: ClassVar[str]  # the fwm-rl subcommand, for messages ("train", "supervised")
    aliases: ClassVar[tuple[options.Alias, ...]] = ()  # deprecated spellings of config fields

    @classmethod
    def load_config(cls, name_or_path: str) -> RunConfig:
        """The config of a ``--config`` file (a YAML mapping of field: value)."""
        return options.load_config(cls.config_class, Path(name_or_path), cls.aliases)

    def __init__(self, config: RunConfig, checkpoint: Optional[dict[str, Any]] = None, progress_bar: bool = True,
                 quiet: bool = False) -> None:
        self.config = config
        self.progress_bar, self.quiet = progress_bar, quiet

    def resolved_config(self) -> RunConfig:
        """The config with every default resolved to the value that runs (written to config.yaml)."""
        return self.config

    @abstractmethod
    def fit(self, run: RunDir, start_step: Optional[int]) -> RunResult:
        """Train in ``run`` (locked, its config written) from ``start_step`` (None: from scratch)."""

    def save_checkpoint(self, run: RunDir, step: int, payload: dict[str, Any], module: torch.nn.Module,
                        update: int, keep: Optional[int] = None) -> Path:
        """Write ``payload`` (with the resolved config) as the checkpoint of ``step`` (after ``update`` updates),
        after checking that the parameters of ``module`` are finite."""
        check_finite_parameters(module, update, step)
        config = dataclasses.asdict(self.resolved_config())
        return run.write_checkpoint(step, {**payload, "config": config}, keep=keep)


def _nonfinite_message(error: Any, run: RunDir, trainer: Trainer) -> str:
    checkpoints = run.checkpoints()
    last = (f"last good checkpoint {checkpoints[-1]} (`fwm-rl {trainer.command} --resume {run.path}` continues from "
            "it)" if checkpoints else "no checkpoint was written yet")
    rate = getattr(trainer.resolved_config(), "learning_rate", None)
    return (f"training stopped: non-finite {error.quantity} at update {error.update}, before it was applied; {last}; "
            f"the updates diverge at this learning rate ({rate:g}): use a lower --learning-rate or clip gradients "
            "(--max-grad-norm) in a new run")


def _fit(trainer: Trainer, run: RunDir, start_step: Optional[int]) -> RunResult:
    from fwm_rl.agents import NonFiniteError

    try:
        return trainer.fit(run, start_step)
    except NonFiniteError as e:
        message = _nonfinite_message(e, run, trainer)
        if is_main_process():
            run.log(message)
        raise UserError(message) from None


def is_main_process() -> bool:
    """False in the ranks > 0 of a data-parallel run (torchrun sets RANK); those leave the run directory alone."""
    return int(os.environ.get("RANK", "0")) == 0


def join_torchrun(device: str):
    """This process's ``(DataParallel, device)`` for a data-parallel run under torchrun (``WORLD_SIZE > 1``): it
    joins the default process group, nccl for CUDA and gloo for the CPU, and trains on ``cuda:LOCAL_RANK`` when
    ``device`` is auto or cuda on a CUDA machine. A single process gets ``SINGLE_PROCESS`` and ``device`` as given.
    UserError for a device a data-parallel run cannot use."""
    import torch.distributed as dist

    from fwm_rl.agents.distributed import SINGLE_PROCESS, DataParallel

    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return SINGLE_PROCESS, device
    picked = pick_device(device)
    if picked.type == "mps":
        raise UserError("data-parallel training (torchrun) runs on cpu or cuda (nccl), not mps; use --device cpu")
    if picked.type == "cuda":
        if device not in ("auto", "cuda"):
            raise UserError(f"under torchrun every rank trains on cuda:LOCAL_RANK; use --device cuda (or auto) "
                            f"instead of {device}")
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if local_rank >= torch.cuda.device_count():
            raise UserError(f"torchrun started local rank {local_rank} but this machine has "
                            f"{torch.cuda.device_count()} CUDA device(s); lower --nproc-per-node or use --device cpu")
        picked = torch.device("cuda", local_rank)
        torch.cuda.set_device(picked)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if picked.type == "cuda" else "gloo")
    return DataParallel.from_process_group(), str(picked)


def _build(trainer_class: type[Trainer], config: RunConfig, checkpoint: Optional[dict[str, Any]],
           **fit_options: Any) -> Trainer:
    """The trainer of ``config`` with torch's CPU threads set first (``threads``, when given)."""
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    return trainer_class(config, checkpoint, **fit_options)


def start(trainer_class: type[Trainer], config: RunConfig, run_dir: Path, overwrite: bool = False,
          **fit_options: Any) -> RunResult:
    """A new run of ``config`` in ``run_dir``: build and validate first, then (with ``overwrite``) replace an old
    run under its lock, write the resolved config.yaml and fit."""
    run = RunDir(run_dir)
    if not is_main_process():  # a data-parallel rank > 0: rank 0 owns the run directory
        return _fit(_build(trainer_class, config, None, **fit_options), run, None)
    run.check_can_create(overwrite)
    trainer = _build(trainer_class, config, None, **fit_options)
    with run.open_new(overwrite):
        run.write_config(dataclasses.asdict(trainer.resolved_config()))
        return _fit(trainer, run, None)


def resumed_config(config_class: type[RunConfig], run: RunDir, saved: Optional[dict[str, Any]],
                   overrides: dict[str, Any], aliases: Sequence[options.Alias] = ()) -> RunConfig:
    """The config a resumed run continues with: its config.yaml (which must match the checkpoint's ``saved``
    config except in resumable fields) updated with ``overrides`` (resumable fields only).

    A field that ``saved`` does not name was added by a later version than the one that wrote the checkpoint; the
    config.yaml of an earlier resume holds its resolved value, which is not an edit."""
    resumable = config_class.RESUMABLE
    fixed = sorted(set(overrides) - set(resumable))
    if fixed:
        raise UserError(f"a resumed run keeps its config; only {', '.join(resumable)} may change "
                        f"(got {', '.join(fixed)})")
    on_disk = options.make_config(config_class, run.read_config(), source=str(run.config_path), merge_dicts=False,
                                  aliases=aliases)
    if saved is not None:
        ran = options.make_config(config_class, saved, source="the checkpoint's config", merge_dicts=False)
        edited = [name for name in options.changed_fields(ran, on_disk) if name not in resumable and name in saved]
        if edited:
            raise UserError(f"{run.config_path} was edited after the run started ({', '.join(edited)} changed); a "
                            f"resumed run may change only {', '.join(resumable)}: undo the edit, or start a new "
                            "run with --config on the edited file")
    return options.make_config(config_class, overrides, source="--resume", base=on_disk)


def resume(trainer_class: type[Trainer], run_dir: Path, overrides: Optional[dict[str, Any]] = None,
           **fit_options: Any) -> RunResult:
    """Continue the run in ``run_dir`` from its newest readable checkpoint (from the start when it has none)."""
    run = RunDir(run_dir)
    if not run.holds_a_run():
        raise UserError(f"cannot resume {run_dir}: no config.yaml there (is it a run directory?)")
    with (run.locked() if is_main_process() else nullcontext()):
        newest = run.read_newest_checkpoint()
        step, payload = (newest[1], newest[2]) if newest else (None, None)
        config = resumed_config(trainer_class.config_class, run, payload["config"] if payload else None,
                                overrides or {}, trainer_class.aliases)
        trainer = _build(trainer_class, config, payload, **fit_options)
        if is_main_process():
            run.write_config(dataclasses.asdict(trainer.resolved_config()))
            run.log(f"resuming {run.path} from {newest[0].name}" if newest else
                    f"no checkpoint in {run.path}: starting it from the beginning")
        return _fit(trainer, run, step)


# Command line ------------------------------------------------------------------------------------------------------

def add_trainer_arguments(parser: argparse.ArgumentParser, trainer_class: type[Trainer],
                          config_help: str = "YAML config file; options below override its fields") -> None:
    """The options of a trainer's command: --config, --resume, --runs-dir, --run-dir, --overwrite, --progress-bar,
    then one option per config field (deprecated spellings accepted with a warning)."""
    parser.add_argument("--config", metavar="NAME_OR_FILE", help=config_help)
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its newest readable "
                        f"checkpoint (only {', '.join(trainer_class.config_class.RESUMABLE)} may be given)")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs"), help="folder of run directories [default: runs]")
    parser.add_argument("--run-dir", type=Path, help="run directory [default: RUNS_DIR/EXPERIMENT]")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing run directory (only after the "
                        "new run has been validated, and not while another process writes it)")
    parser.add_argument("--progress-bar", action=argparse.BooleanOptionalAction, default=True,
                        help="show a progress bar [default: on]")
    options.add_config_arguments(parser, trainer_class.config_class,
                                 f"{trainer_class.command} config (override the --config file)", trainer_class.aliases)


def config_from_args(args: argparse.Namespace, trainer_class: type[Trainer]) -> RunConfig:
    """The config of a new run: defaults, then the --config file, then the options given."""
    config_class = trainer_class.config_class
    base = trainer_class.load_config(args.config) if args.config is not None else None
    return options.make_config(config_class, options.values_from_args(args, config_class), source="command line",
                               base=base, aliases=trainer_class.aliases)


def run_from_args(args: argparse.Namespace, trainer_class: type[Trainer]) -> RunResult:
    """Start the run the options describe, or resume ``--resume RUN_DIR`` (with the resumable options given)."""
    fit_options = {"progress_bar": args.progress_bar}
    if args.resume is not None:
        if args.config is not None or args.run_dir is not None or args.overwrite:
            raise UserError("--resume RUN_DIR continues a run with its own config; drop --config / --run-dir / "
                            "--overwrite")
        overrides = options.values_from_args(args, trainer_class.config_class)
        return resume(trainer_class, Path(args.resume), overrides, **fit_options)
    config = config_from_args(args, trainer_class)
    run_dir = Path(args.run_dir) if args.run_dir is not None else Path(args.runs_dir) / config.experiment
    return start(trainer_class, config, run_dir, overwrite=args.overwrite, **fit_options)
