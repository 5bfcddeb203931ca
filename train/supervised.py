"""Supervised trainer for the memory cores on ART, mART, catbAbI and word-level language modelling.

``fwm-rl supervised --task art --core fwlstm --pairs 8 --steps 5000`` (or ``python -m fwm_rl.train.supervised``).
A run directory holds ``config.json``, ``metrics.csv`` / ``metrics.jsonl`` (``step`` plus ``train/``, ``val/`` and
``test/`` columns), ``checkpoints/last.pt`` and ``checkpoints/best.pt`` (best validation metric, written
atomically) and ``results.json`` (the best checkpoint on the test split). ``--resume RUN_DIR`` continues a run
exactly where its last checkpoint left it. The same command runs data-parallel under ``torchrun`` (one process per
rank, DistributedDataParallel, gloo on CPU, nccl on CUDA): each rank reads its own share of the data.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import sys
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from fwm_rl import CORE_CLASSES, State, build_core, detach_state
from fwm_rl.train.config import field_docs
from fwm_rl.train.errors import UserError
from fwm_rl.train.io import MetricsLog, atomic_write, write_json
from fwm_rl.train.seqmodel import SequenceModel, build_sequence_model, count_parameters, hidden_size_for_params
from fwm_rl.train.tasks.art import ARTTask, load_or_make_splits
from fwm_rl.train.tasks.babi import CatBAbITask, read_babi_dir
from fwm_rl.train.tasks.babi_gen import generate_splits
from fwm_rl.train.tasks.base import Task, add_sums, empty_sums, score
from fwm_rl.train.tasks.lm import LMTask, read_corpus

TASKS = ("art", "mart", "catbabi", "lm")
# Per-task defaults for the fields left at None: batch, eval batch, embedding size.
TASK_DEFAULTS = {
    "art": {"batch_size": 128, "eval_batch_size": 1000, "embed_size": 100},
    "mart": {"batch_size": 128, "eval_batch_size": 1000, "embed_size": 100},
    "catbabi": {"batch_size": 32, "eval_batch_size": 32, "embed_size": None},
    "lm": {"batch_size": 20, "eval_batch_size": 10, "embed_size": None},
}
RESUMABLE_FIELDS = ("steps", "device", "threads")  # what --resume may change


@dataclass
class SupervisedConfig:
    """One supervised run: task, model, optimisation, evaluation schedule and files."""

    task: Literal["art", "mart", "catbabi", "lm"] = "art"
    """Task: art, mart (keys first, then values), catbabi or lm."""
    core: str = "lstm"
    """Memory core (fwm, fwlstm, fwrnn, lstm, lnlstm, mlp)."""
    hidden_size: int = 64
    """Hidden size of the core."""
    target_params: Optional[int] = None
    """If set, use the largest hidden size whose whole model has at most this many parameters (matched sizes)."""
    embed_size: Optional[int] = None
    """Token embedding size; none for the task default (100 for art/mart, else the core's output size)."""
    core_options: dict[str, Any] = field(default_factory=dict)
    """Further core options as KEY=VALUE pairs (see each core's docstring)."""
    steps: int = 5000
    """Optimisation steps."""
    batch_size: Optional[int] = None
    """Sequences (art/mart) or streams (catbabi/lm) per step and rank; none for 128 / 32 / 20."""
    lr: float = 1e-3
    """Adam learning rate."""
    grad_clip: Optional[float] = None
    """Clip the gradient norm to this value; none for no clipping."""
    seed: int = 0
    """Seed of the model initialisation, the data order and the generated data."""
    eval_every: int = 500
    """Steps between evaluations on the validation split (and checkpoints)."""
    eval_batch_size: Optional[int] = None
    """Sequences (art/mart) or streams (catbabi/lm) per evaluation batch; none for 1000 / 32 / 10."""
    eval_test_periodically: bool = False
    """Also evaluate the test split at every evaluation (for test-error-against-steps curves)."""
    device: str = "auto"
    """Torch device; auto picks CUDA only when present."""
    threads: Optional[int] = None
    """Torch CPU threads; none for torch's default."""
    run_dir: Optional[str] = None
    """Run directory; none for runs/TASK-CORE-TIMESTAMP."""
    data_dir: Optional[str] = None
    """art/mart: where the splits are saved (default data/art); catbabi: a bAbI v1.2 en-valid-10k directory
    (none for generated stories); lm: a directory with train.txt, valid.txt and test.txt (required)."""
    pairs: int = 4
    """art/mart: key-value pairs K per sequence (sequence length 2K+3)."""
    train_size: int = 100_000
    """art/mart: training sequences."""
    val_size: int = 10_000
    """art/mart: validation sequences."""
    test_size: int = 20_000
    """art/mart: test sequences."""
    mode: Literal["qm", "lm"] = "qm"
    """catbabi: qm (loss on answers only) or lm (loss on every next token)."""
    seq_len: int = 200
    """catbabi: tokens per window (state carried across windows)."""
    stories_per_task: int = 1000
    """catbabi, generated data: training stories per task (validation and test get a tenth each)."""
    bptt: int = 70
    """lm: tokens per truncated-BPTT window."""
    tie_weights: bool = False
    """lm: tie the decoder to the embedding (needs embed size = core output size)."""

    def validate(self) -> None:
        """``UserError`` for a value outside its allowed range."""
        if self.core not in CORE_CLASSES:
            raise UserError(f"unknown core {self.core!r}; available: {', '.join(sorted(CORE_CLASSES))}")
        if self.task not in TASKS:
            raise UserError(f"unknown task {self.task!r}; expected one of {', '.join(TASKS)}")
        positive = ("hidden_size", "steps", "eval_every", "pairs", "train_size", "val_size", "test_size", "seq_len",
                    "stories_per_task", "bptt", "target_params", "embed_size", "batch_size", "eval_batch_size",
                    "threads")
        for name in positive:
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
        if self.lr <= 0 or (self.grad_clip is not None and self.grad_clip <= 0):
            raise UserError(f"--lr and --grad-clip must be > 0, got {self.lr} and {self.grad_clip}")
        if self.task in ("art", "mart") and not 1 <= self.pairs <= 26:
            raise UserError(f"--pairs must be in 1..26 (keys are distinct letters), got {self.pairs}")
        if self.task == "lm" and self.data_dir is None:
            raise UserError("--task lm needs --data-dir, a directory with train.txt, valid.txt and test.txt")

    def resolved(self, name: str) -> Any:
        """A field, or the task default when the field is None."""
        value = getattr(self, name)
        return TASK_DEFAULTS[self.task][name] if value is None else value


# Distributed set-up -------------------------------------------------------------------------------------------------


@dataclass
class Dist:
    """Rank and world size of this process (1 process when not started by torchrun)."""

    rank: int = 0
    world_size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def all_reduce(self, sums: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.world_size > 1:
            for value in sums.values():
                dist.all_reduce(value)
        return sums

    def gather(self, obj: Any) -> list[Any]:
        if self.world_size == 1:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: Any) -> Any:
        if self.world_size == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()


def pick_device(name: str) -> torch.device:
    """``auto`` -> CUDA when present, else CPU; anything else as torch reads it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name!r} is not a torch device (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name} asked for CUDA, which this machine does not have (use auto or cpu)")
    return device


def init_distributed(device: torch.device) -> Dist:
    """Join the process group that ``torchrun`` describes in the environment (no-op for a single process)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size())


# Tasks and model ----------------------------------------------------------------------------------------------------


def make_task(cfg: SupervisedConfig, ranks: Dist) -> Task:
    """The task of ``cfg``, with this rank's share of the data."""
    batch, eval_batch = cfg.resolved("batch_size"), cfg.resolved("eval_batch_size")
    if cfg.task in ("art", "mart"):
        sizes = {"train": cfg.train_size, "val": cfg.val_size, "test": cfg.test_size}
        data_dir = Path(cfg.data_dir or "data/art")
        if ranks.main:
            splits = _user_errors(load_or_make_splits, data_dir, cfg.pairs, cfg.task == "mart", cfg.seed, sizes)
        ranks.barrier()  # rank 0 made and saved the splits; the others read that file
        if not ranks.main:
            splits = load_or_make_splits(data_dir, cfg.pairs, cfg.task == "mart", cfg.seed, sizes)
        return _user_errors(ARTTask, splits, batch, eval_batch, cfg.seed, ranks.rank, ranks.world_size)
    if cfg.task == "catbabi":
        if cfg.data_dir is None:
            n = cfg.stories_per_task
            sizes = {"train": n, "val": max(1, n // 10), "test": max(1, n // 10)}
            splits = _user_errors(generate_splits, cfg.seed, sizes)
        else:
            splits = read_babi_dir(Path(cfg.data_dir))
        return CatBAbITask(splits, cfg.mode, batch, cfg.seq_len, eval_batch, cfg.seed, ranks.rank, ranks.world_size)
    vocab, ids = read_corpus(Path(cfg.data_dir))
    return _user_errors(LMTask, vocab, ids, batch, cfg.bptt, eval_batch, ranks.rank, ranks.world_size)


def _user_errors(fn: Any, *args: Any) -> Any:
    """``fn(*args)`` with its ValueError (a bad setting) reported as a UserError."""
    try:
        return fn(*args)
    except ValueError as e:
        raise UserError(str(e)) from None


def make_model(cfg: SupervisedConfig, task: Task) -> SequenceModel:
    """The sequence model of ``cfg`` for ``task`` (hidden size matched to ``target_params`` when set)."""

    def build(hidden: int) -> SequenceModel:
        embed = cfg.resolved("embed_size") or _core_output_size(cfg, hidden)
        return build_sequence_model(cfg.core, task.vocab_size, embed, hidden, task.head, cfg.tie_weights,
                                    cfg.core_options)

    if cfg.target_params is not None:
        cfg.hidden_size = _user_errors(hidden_size_for_params, cfg.target_params, build)
    return _user_errors(build, cfg.hidden_size)


def _core_output_size(cfg: SupervisedConfig, hidden: int) -> int:
    return build_core(cfg.core, 1, hidden, **cfg.core_options).output_size


# Training -----------------------------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate(model: nn.Module, task: Task, split: str, device: torch.device, ranks: Dist) -> dict[str, float]:
    """Metrics ``{split}/...`` over the whole split (each rank scores its share; the sums are all-reduced)."""
    was_training = model.training
    model.eval()
    total = empty_sums(task.num_groups, device)
    state: Optional[State] = None
    for batch in task.eval_batches(split):
        batch = batch.to(device)
        if batch.reset or not task.carries_state:
            state = None
        logits, state = model(batch.tokens, state)
        total = add_sums(total, score(logits, batch, task.num_groups)[1])
    model.train(was_training)
    return task.summarize(split, ranks.all_reduce(total))


def _checkpoint(path: Path, payload: dict[str, Any]) -> None:
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


def _to_cpu(state: Optional[State]) -> Optional[State]:
    return None if state is None else tuple(s.detach().cpu() for s in state)


def train(cfg: SupervisedConfig, resume: bool = False) -> dict[str, Any]:
    """Train ``cfg`` (continuing ``cfg.run_dir`` when ``resume``); returns the results of the best checkpoint.

    The returned dict has ``best_step``, the validation metrics of the best checkpoint, its ``test/best_*`` metrics,
    ``parameters``, ``hidden_size``, ``run_dir`` and the final ``model`` (this rank's, trained weights).
    """
    cfg.validate()
    device = pick_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    ranks = init_distributed(device)
    if device.type == "cuda" and ranks.world_size > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    torch.manual_seed(cfg.seed)
    task = make_task(cfg, ranks)
    model = make_model(cfg, task).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    run_dir = Path(ranks.broadcast(cfg.run_dir or f"runs/{cfg.task}-{cfg.core}-{time.strftime('%Y%m%d-%H%M%S')}"))
    cfg.run_dir = str(run_dir)
    ckpt_dir = run_dir / "checkpoints"
    log = MetricsLog(run_dir) if ranks.main else None
    start, best, best_step, carry = 0, float("inf"), -1, None
    if resume:
        saved = torch.load(ckpt_dir / "last.pt", map_location="cpu", weights_only=False)
        if len(saved["ranks"]) != ranks.world_size:
            raise UserError(f"{run_dir} was trained by {len(saved['ranks'])} process(es); resume it with as many")
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        start, best, best_step = saved["step"], saved["best"], saved["best_step"]
        task.load_state_dict(saved["ranks"][ranks.rank]["data"])
        carry = saved["ranks"][ranks.rank]["carry"]
        carry = None if carry is None else tuple(s.to(device) for s in carry)
        if log is not None:
            log.truncate(start)
    elif ranks.main:
        if (ckpt_dir / "last.pt").exists():
            raise UserError(f"{run_dir} already holds a run; use --resume {run_dir} or another --run-dir")
        write_json(run_dir / "config.json", dataclasses.asdict(cfg))
    n_params = count_parameters(model)
    net: nn.Module = DistributedDataParallel(model) if ranks.world_size > 1 else model
    if ranks.main:
        print(f"{cfg.task} with {cfg.core} (hidden {cfg.hidden_size}, {n_params} parameters) "
              f"on {device} x{ranks.world_size}; run directory {run_dir}", file=sys.stderr)

    window = empty_sums(task.num_groups, device)
    tic, tic_step = time.perf_counter(), start
    bar = tqdm(total=cfg.steps, initial=start, disable=not ranks.main, desc=f"{cfg.task}-{cfg.core}", unit="step")
    for step in range(start, cfg.steps):
        batch = task.train_batch(step).to(device)
        if batch.reset or not task.carries_state:
            carry = None
        logits, state = net(batch.tokens, carry)
        loss, sums = score(logits, batch, task.num_groups)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        carry = detach_state(state) if task.carries_state else None
        window = add_sums(window, sums)
        bar.update(1)
        done = step + 1
        if done % cfg.eval_every and done != cfg.steps:
            continue
        metrics = task.summarize("train", ranks.all_reduce(window))
        metrics["train/steps_per_s"] = (done - tic_step) / (time.perf_counter() - tic)
        metrics.update(evaluate(model, task, "val", device, ranks))
        if cfg.eval_test_periodically:
            metrics.update(evaluate(model, task, "test", device, ranks))
        improved = metrics[task.best_metric] < best
        if improved:
            best, best_step = metrics[task.best_metric], done
        per_rank = ranks.gather({"data": task.state_dict(), "carry": _to_cpu(carry)})
        if ranks.main:
            log.append(done, **metrics)
            payload = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": done,
                       "best": best, "best_step": best_step, "ranks": per_rank, "config": dataclasses.asdict(cfg)}
            if improved:
                _checkpoint(ckpt_dir / "best.pt", {"model": model.state_dict(), "step": done, "metrics": metrics})
            _checkpoint(ckpt_dir / "last.pt", payload)
            bar.set_postfix(loss=f"{metrics['train/loss']:.3f}", best=f"{best:.4f}")
        window = empty_sums(task.num_groups, device)
        tic, tic_step = time.perf_counter(), done
    bar.close()
    ranks.barrier()
    return _final_test(cfg, model, task, device, ranks, log, n_params, best_step)


def _final_test(
    cfg: SupervisedConfig, model: SequenceModel, task: Task, device: torch.device, ranks: Dist,
    log: Optional[MetricsLog], n_params: int, best_step: int,
) -> dict[str, Any]:
    """Score the best checkpoint on the test split; log it as ``test/best_*`` and write ``results.json``."""
    run_dir = Path(cfg.run_dir)
    best = torch.load(run_dir / "checkpoints" / "best.pt", map_location="cpu", weights_only=False)
    final = copy.deepcopy(model)
    final.load_state_dict(best["model"])
    test = {k.replace("test/", "test/best_", 1): v for k, v in evaluate(final, task, "test", device, ranks).items()}
    val = {k: v for k, v in best["metrics"].items() if k.startswith("val/")}
    results = {"best_step": best_step, **val, **test, "parameters": n_params, "hidden_size": cfg.hidden_size,
               "run_dir": str(run_dir)}
    if ranks.main:
        log.append(cfg.steps, **test)
        write_json(run_dir / "results.json", results)
        print(json.dumps({k: v for k, v in results.items() if "acc_task" not in k}), file=sys.stderr)
    return {**results, "model": model}


# Command line -------------------------------------------------------------------------------------------------------


def _converter(hint: Any) -> Any:
    """An argparse ``type`` for a field annotated ``hint`` (int, float, str, optionally ``Optional``)."""
    optional = typing.get_origin(hint) is typing.Union
    base = next(a for a in typing.get_args(hint) if a is not type(None)) if optional else hint

    def convert(text: str) -> Any:
        if optional and text.lower() in ("none", "null"):
            return None
        try:
            if base is int and not text.lstrip("-").replace("_", "").isdigit():
                value = float(text)  # 1e5 is accepted as an int when it is a whole number
                if value.is_integer():
                    return int(value)
                raise ValueError(text)
            return base(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {base.__name__}{' or none' if optional else ''}, got {text!r}")

    convert.__name__ = base.__name__
    return convert


def _parse_option(item: str) -> tuple[str, Any]:
    """``"memory_size=16"`` -> ("memory_size", 16); the value is read as JSON when it can be, else as text."""
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {item!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One ``--field-name`` option per SupervisedConfig field (only the options given land in the namespace)."""
    docs, defaults = field_docs(SupervisedConfig), SupervisedConfig()
    hints = typing.get_type_hints(SupervisedConfig)
    for f in dataclasses.fields(SupervisedConfig):
        flag, hint, default = "--" + f.name.replace("_", "-"), hints[f.name], getattr(defaults, f.name)
        help_text = f"{docs[f.name]} [default: {default}]".replace("%", "%%")
        common = {"dest": f.name, "default": argparse.SUPPRESS, "help": help_text}
        if typing.get_origin(hint) is Literal:
            parser.add_argument(flag, choices=typing.get_args(hint), **common)
        elif hint is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **common)
        elif isinstance(default, dict):
            parser.add_argument(flag, nargs="+", type=_parse_option, metavar="KEY=VALUE", **common)
        else:
            parser.add_argument(flag, type=_converter(hint), metavar=f.name.upper(), **common)
    parser.add_argument("--resume", metavar="RUN_DIR", default=None,
                        help=f"continue the run in RUN_DIR from its last checkpoint with its config.json "
                             f"(only {', '.join('--' + n.replace('_', '-') for n in RESUMABLE_FIELDS)} may be given)")


def config_from_args(args: argparse.Namespace) -> tuple[SupervisedConfig, bool]:
    """The run's config (read from RUN_DIR/config.json for ``--resume``) and whether it resumes."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(SupervisedConfig) if hasattr(args, f.name)}
    if "core_options" in given:
        given["core_options"] = dict(given["core_options"])
    resume = getattr(args, "resume", None)
    if resume is None:
        return SupervisedConfig(**given), False
    fixed = sorted(set(given) - set(RESUMABLE_FIELDS))
    if fixed:
        flags = ", ".join("--" + n.replace("_", "-") for n in fixed)
        allowed = ", ".join("--" + n for n in RESUMABLE_FIELDS)
        raise UserError(f"--resume continues {resume} as configured; {flags} cannot be given (only {allowed} may)")
    path = Path(resume) / "config.json"
    if not path.exists() or not (Path(resume) / "checkpoints" / "last.pt").exists():
        raise UserError(f"--resume {resume}: not a run directory with config.json and checkpoints/last.pt")
    cfg = SupervisedConfig(**{**json.loads(path.read_text()), **given})
    cfg.run_dir = str(resume)
    return cfg, True


def run(args: argparse.Namespace) -> int:
    """Entry point of ``fwm-rl supervised``: train, return the exit status."""
    cfg, resume = config_from_args(args)
    train(cfg, resume=resume)
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


DESCRIPTION = "Train a memory core on ART, mART, catbAbI or word-level language modelling (runs under torchrun too)."


def add_parser(subparsers: Any) -> None:
    """Add the ``supervised`` subcommand to the ``fwm-rl`` command's subparsers."""
    parser = subparsers.add_parser("supervised", help=DESCRIPTION, description=DESCRIPTION)
    _add_config_arguments(parser)
    parser.set_defaults(func=run)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fwm_rl.train.supervised", description=DESCRIPTION)
    _add_config_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
