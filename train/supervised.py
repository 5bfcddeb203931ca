"""Supervised trainer for the memory cores on ART, mART, catbAbI and word-level language modelling.

``fwm-rl supervised --task art --core fwlstm --pairs 8 --steps 5000``. A run directory holds what every run has
(``rundir.RunDir``: config.yaml, checkpoints/, metrics.csv/.jsonl with ``step`` plus ``train/``, ``val/`` and
``test/`` columns, log.txt), ``best_model.pt`` (the best validation metric, written atomically) and
``results.json`` (the best model on the test split, written when the run completes or its time budget ends it;
a resumed run rewrites it). ``--resume RUN_DIR`` continues a run exactly where its last
checkpoint left it. The same command runs data-parallel under ``torchrun -m fwm_rl.train.supervised`` (one
process per rank, DistributedDataParallel, gloo on CPU, nccl on CUDA): each rank reads its own share of the data,
rank 0 writes the run directory.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Optional

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from fwm_rl import State, build_core, detach_state
from fwm_rl.agents.distributed import DataParallel
from fwm_rl.envs.curriculum import SizeCurriculum
from fwm_rl.train import options, runner
from fwm_rl.train.errors import UserError, user_input
from fwm_rl.train.io import atomic_write, write_json
from fwm_rl.train.options import Alias
from fwm_rl.train.rundir import RunDir
from fwm_rl.train.seqmodel import SequenceModel, build_sequence_model, count_parameters, hidden_size_for_params
from fwm_rl.train.tasks.art import ARTTask, curriculum_sizes, load_or_make_splits
from fwm_rl.train.tasks.babi import CatBAbITask, read_babi_dir
from fwm_rl.train.tasks.babi_gen import generate_splits
from fwm_rl.train.tasks.base import IGNORE, Batch, Task, add_sums, empty_sums, score
from fwm_rl.train.tasks.lm import LMTask, read_corpus

TASKS = ("art", "mart", "catbabi", "lm")
# Per-task defaults for the fields left at None: batch, eval batch, embedding size.
TASK_DEFAULTS = {
    "art": {"batch_size": 128, "eval_batch_size": 1000, "embed_size": 100},
    "mart": {"batch_size": 128, "eval_batch_size": 1000, "embed_size": 100},
    "catbabi": {"batch_size": 32, "eval_batch_size": 32, "embed_size": None},
    "lm": {"batch_size": 20, "eval_batch_size": 10, "embed_size": None},
}
BEST_MODEL_FILE = "best_model.pt"
RESULTS_FILE = "results.json"
# Old spellings (before the RL and supervised trainers shared one run layer), accepted with a warning.
ALIASES = (Alias("core_options", "core_kwargs"), Alias("lr", "learning_rate"), Alias("grad_clip", "max_grad_norm"),
           Alias("eval_every", "eval_freq"))


@dataclass
class SupervisedConfig(runner.RunConfig):
    """One supervised run: task, model, optimisation, evaluation schedule and data."""

    experiment: str = ""
    """Name of the experiment; the run directory is RUNS_DIR/EXPERIMENT (empty: TASK-CORE)."""
    task: Literal["art", "mart", "catbabi", "lm"] = "art"
    """Task: art, mart (keys first, then values), catbabi or lm."""
    core: str = runner.core_field("lstm")
    """Memory core, a key of fwm_rl.CORE_CLASSES."""
    hidden_size: int = 64
    """Hidden size of the core."""
    target_params: Optional[int] = None
    """If set, use the largest hidden size whose whole model has at most this many parameters (matched sizes)."""
    embed_size: Optional[int] = None
    """Token embedding size; none for the task default (100 for art/mart, else the core's output size)."""
    core_kwargs: dict[str, Any] = field(default_factory=dict)
    """Further options of the core, as KEY=VALUE pairs (see each core's docstring)."""
    steps: int = 5000
    """Optimisation steps."""
    time_budget: Optional[float] = None
    """Stop after this many minutes of wall time (summed over resumed sessions), saving a checkpoint at once;
    continue with --resume (a first Ctrl-C or SIGTERM saves and stops the same way)."""
    batch_size: Optional[int] = None
    """Sequences (art/mart) or streams (catbabi/lm) per step and rank; none for 128 / 32 / 20."""
    learning_rate: float = 1e-3
    """Adam learning rate."""
    max_grad_norm: Optional[float] = None
    """Clip the gradient norm to this value; none for no clipping."""
    eval_freq: int = 500
    """Steps between evaluations on the validation split (and checkpoints)."""
    eval_batch_size: Optional[int] = None
    """Sequences (art/mart) or streams (catbabi/lm) per evaluation batch; none for 1000 / 32 / 10."""
    eval_test_periodically: bool = False
    """Also evaluate the test split at every evaluation (for test-error-against-steps curves)."""
    keep_checkpoints: int = 2
    """Most recent checkpoints kept on disk."""
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
    curriculum: dict[str, Any] = field(default_factory=dict)
    """art/mart: train on fewer pairs first, e.g. sizes=[2,4] promote=0.95: the ladder of K (the last is --pairs),
    promoted when the val accuracy at the current K reaches promote and demoted after patience evaluations below
    demote, the rule of fwm_rl.envs.curriculum (defaults promote 0.6, demote 0.2, patience 2); each smaller K has
    its own train split and a val split of a fifth of --val-size. The val and test splits that select and report
    the model hold --pairs throughout. Empty: no curriculum."""
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
    skip_reads: bool = True
    """fwm: skip the reads of F (and their backward) at steps with no target or scored position (catbabi qm: all
    but the answers; art/mart: all but the last); loss, gradients and metrics are unchanged."""

    RESUMABLE: ClassVar[tuple[str, ...]] = ("steps", "time_budget", "device", "threads")

    def __post_init__(self) -> None:
        super().__post_init__()
        runner.check_core(self.core)
        if not self.experiment:
            self.experiment = f"{self.task}-{self.core}"
        runner.check_positive(self, ("hidden_size", "steps", "eval_freq", "pairs", "train_size", "val_size",
                                     "test_size", "seq_len", "stories_per_task", "bptt", "target_params",
                                     "embed_size", "batch_size", "eval_batch_size", "keep_checkpoints"))
        runner.check_time_budget(self.time_budget)
        if self.learning_rate <= 0 or (self.max_grad_norm is not None and self.max_grad_norm <= 0):
            raise ValueError(f"learning_rate and max_grad_norm must be > 0, got {self.learning_rate} and "
                             f"{self.max_grad_norm}")
        if self.task in ("art", "mart") and not 1 <= self.pairs <= 26:
            raise ValueError(f"pairs must be in 1..26 (keys are distinct letters), got {self.pairs}")
        if self.curriculum:
            self.pairs_curriculum()
        if self.task == "lm" and self.data_dir is None:
            raise ValueError("task lm needs --data-dir, a directory with train.txt, valid.txt and test.txt")

    def pairs_curriculum(self) -> Optional[SizeCurriculum]:
        """A fresh curriculum over numbers of pairs from ``curriculum`` (None when it is empty)."""
        if not self.curriculum:
            return None
        if self.task not in ("art", "mart"):
            raise ValueError(f"curriculum is an option of the art and mart tasks, not of {self.task}")
        curriculum = SizeCurriculum.from_option(self.curriculum)
        if curriculum.target != self.pairs or curriculum.sizes[0] < 2:
            raise ValueError(f"curriculum sizes must be numbers of pairs from 2 up to --pairs ({self.pairs}), got "
                             f"{list(curriculum.sizes)}")
        return curriculum

    def resolved(self, name: str) -> Any:
        """A field, or the task default when the field is None."""
        value = getattr(self, name)
        return TASK_DEFAULTS[self.task][name] if value is None else value


# Tasks and model ----------------------------------------------------------------------------------------------------


def make_task(cfg: SupervisedConfig, ranks: DataParallel) -> Task:
    """The task of ``cfg``, with this rank's share of the data."""
    batch, eval_batch = cfg.resolved("batch_size"), cfg.resolved("eval_batch_size")
    if cfg.task in ("art", "mart"):
        sizes = {"train": cfg.train_size, "val": cfg.val_size, "test": cfg.test_size}
        data_dir = Path(cfg.data_dir or "data/art")
        curriculum = cfg.pairs_curriculum()
        wanted = {cfg.pairs: sizes, **{pairs: curriculum_sizes(pairs, cfg.train_size, cfg.val_size)
                                       for pairs in (curriculum.sizes[:-1] if curriculum else ())}}

        def read() -> dict[int, dict[str, tuple[np.ndarray, np.ndarray]]]:
            return {pairs: load_or_make_splits(data_dir, pairs, cfg.task == "mart", cfg.seed, sizes_of_k)
                    for pairs, sizes_of_k in wanted.items()}

        if ranks.main:
            with user_input("the art splits"):
                data = read()
        ranks.barrier()  # rank 0 made and saved the splits; the others read those files
        if not ranks.main:
            data = read()
        with user_input("the art task"):
            return ARTTask(data.pop(cfg.pairs), batch, eval_batch, cfg.seed, ranks.rank, ranks.world_size,
                           curriculum, data)
    if cfg.task == "catbabi":
        if cfg.data_dir is None:
            n = cfg.stories_per_task
            sizes = {"train": n, "val": max(1, n // 10), "test": max(1, n // 10)}
            with user_input("the generated bAbI stories"):
                splits = generate_splits(cfg.seed, sizes)
        else:
            splits = read_babi_dir(Path(cfg.data_dir))
        return CatBAbITask(splits, cfg.mode, batch, cfg.seq_len, eval_batch, cfg.seed, ranks.rank, ranks.world_size)
    vocab, ids = read_corpus(Path(cfg.data_dir))
    with user_input("the lm task"):
        return LMTask(vocab, ids, batch, cfg.bptt, eval_batch, ranks.rank, ranks.world_size)


def model_hidden_size(cfg: SupervisedConfig, task: Task) -> int:
    """``hidden_size``, or the largest one within ``target_params`` when that is set."""
    if cfg.target_params is None:
        return cfg.hidden_size
    with user_input(f"a {cfg.core} model within {cfg.target_params} parameters"):
        return hidden_size_for_params(cfg.target_params, lambda hidden: make_model(cfg, task, hidden))


def make_model(cfg: SupervisedConfig, task: Task, hidden: int) -> SequenceModel:
    """The sequence model of ``cfg`` for ``task`` with core hidden size ``hidden``."""
    with user_input(f"the {cfg.core} sequence model with {cfg.core_kwargs}"):
        embed = cfg.resolved("embed_size") or build_core(cfg.core, 1, hidden, **cfg.core_kwargs).output_size
        return build_sequence_model(cfg.core, task.vocab_size, embed, hidden, task.head, cfg.tie_weights,
                                    cfg.core_kwargs)


# Training -----------------------------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate(model: nn.Module, task: Task, split: str, device: torch.device, ranks: DataParallel, skip_reads: bool = False
             ) -> dict[str, float]:
    """Metrics ``{split}/...`` over the whole split (each rank scores its share; the sums are all-reduced);
    ``skip_reads`` as in :func:`run_model`."""
    was_training = model.training
    model.eval()
    total = empty_sums(task.num_groups, device)
    state: Optional[State] = None
    for batch in task.eval_batches(split):
        batch = batch.to(device)
        if batch.reset or not task.carries_state:
            state = None
        logits, state = run_model(model, batch, state, task, skip_reads)
        total = add_sums(total, score(logits, batch, task.num_groups)[1])
    model.train(was_training)
    return task.summarize(split, {name: ranks.sum(value) for name, value in total.items()})


def read_mask(batch: Batch, head: str) -> Tensor:
    """The steps whose logits the loss or the metrics use: ``[T]`` (only the last) for a last-step head, else
    ``[T, B]`` (a target or a scored position)."""
    if head == "mlp_last":
        mask = torch.zeros(batch.tokens.shape[0], dtype=torch.bool, device=batch.tokens.device)
        mask[-1] = True
        return mask
    return (batch.targets != IGNORE) | batch.scored


def run_model(model: nn.Module, batch: Batch, state: Optional[State], task: Task, skip_reads: bool
              ) -> tuple[Tensor, State]:
    """``model(batch.tokens, state)``, with the :func:`read_mask` of ``batch`` when ``skip_reads``."""
    if not skip_reads:
        return model(batch.tokens, state)
    return model(batch.tokens, state, read_mask=read_mask(batch, task.head))


def _to_cpu(state: Optional[State]) -> Optional[State]:
    return None if state is None else tuple(s.detach().cpu() for s in state)


class SupervisedTrainer(runner.Trainer):
    """Next-token / answer prediction with a memory core (see the module docstring)."""

    config_class = SupervisedConfig
    command = "supervised"
    aliases = ALIASES

    @classmethod
    def load_config(cls, name_or_path: str) -> SupervisedConfig:
        return load_config(Path(name_or_path))

    def __init__(self, config: SupervisedConfig, checkpoint: Optional[dict[str, Any]] = None,
                 progress_bar: bool = True, quiet: bool = False) -> None:
        super().__init__(config, checkpoint, progress_bar, quiet)
        self.ranks, device = runner.join_torchrun(config.device)
        self.device = runner.pick_device(device)
        torch.manual_seed(config.seed)
        self.task = make_task(config, self.ranks)
        self.hidden_size = model_hidden_size(config, self.task)
        self.model = make_model(config, self.task, self.hidden_size).to(self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.learning_rate)
        self.best, self.best_step, self.carry = float("inf"), -1, None
        self.elapsed_s = 0.0  # wall time of the earlier sessions of this run
        if checkpoint is not None:
            if len(checkpoint["ranks"]) != self.ranks.world_size:
                raise UserError(f"the run was trained by {len(checkpoint['ranks'])} process(es); resume it with as "
                                "many")
            self.model.load_state_dict(checkpoint["model"])
            self.optimizer.load_state_dict(checkpoint["optimizer"])
            self.best, self.best_step = checkpoint["best"], checkpoint["best_step"]
            self.elapsed_s = checkpoint.get("elapsed_s", 0.0)
            self.task.load_state_dict(checkpoint["ranks"][self.ranks.rank]["data"])
            carry = checkpoint["ranks"][self.ranks.rank]["carry"]
            self.carry = None if carry is None else tuple(s.to(self.device) for s in carry)

    def resolved_config(self) -> SupervisedConfig:
        cfg = self.config
        embed = cfg.resolved("embed_size") or self.model.embedding.embedding_dim
        return dataclasses.replace(cfg, hidden_size=self.hidden_size, embed_size=embed,
                                   batch_size=cfg.resolved("batch_size"),
                                   eval_batch_size=cfg.resolved("eval_batch_size"), device=str(self.device),
                                   threads=cfg.threads or torch.get_num_threads())

    def fit(self, run: RunDir, start_step: Optional[int]) -> runner.RunResult:
        cfg, model, ranks = self.config, self.model, self.ranks
        start = start_step or 0
        log = run.metrics() if ranks.main else None
        if log is not None:
            log.truncate(-1 if start_step is None else start_step)
        n_params = count_parameters(model)
        net: nn.Module = DistributedDataParallel(model) if ranks.world_size > 1 else model
        if ranks.main and not self.quiet:
            print(f"{cfg.task} with {cfg.core} (hidden {self.hidden_size}, {n_params} parameters) "
                  f"on {self.device} x{ranks.world_size}; run directory {run.path}", file=sys.stderr)
        bar = tqdm(total=cfg.steps, initial=start, disable=not ranks.main or not self.progress_bar,
                   desc=f"{cfg.task}-{cfg.core}", unit="step")
        session_start = time.monotonic()
        with runner.stop_on_signals(lambda name: tqdm.write(f"{name}: saving and stopping after this step (again "
                                                            "to abort without saving)", file=sys.stderr)) as stop:
            stopped = self._steps(run, log, net, bar, start, stop, session_start)
        bar.close()
        ranks.barrier()
        if stopped is None:
            return runner.RunResult(run.path, cfg.steps, None, self._final_test(run, log, n_params, cfg.steps))
        reason, step = stopped
        # A time budget ends a session as planned: score what it reached. Ctrl-C asks to stop now.
        summary = self._final_test(run, log, n_params, step, reason) if reason == "time budget" else {}
        if ranks.main and not self.quiet:
            print(f"stopped ({reason}) at step {step}; continue with: fwm-rl supervised --resume {run.path}",
                  file=sys.stderr)
        return runner.RunResult(run.path, step, reason, summary)

    def _steps(self, run: RunDir, log, net: nn.Module, bar, start: int, stop: runner.StopRequest,
               session_start: float) -> Optional[tuple[str, int]]:
        """Optimisation steps from ``start`` to ``steps``, evaluating and saving every ``eval_freq``; stops early
        (saving first) on a stop request or when the time budget is used up, and returns why ("interrupted",
        "time budget") and at which step (None: completed)."""
        cfg, model, task, ranks, device = self.config, self.model, self.task, self.ranks, self.device
        carry, window = self.carry, empty_sums(task.num_groups, device)
        tic, tic_step = time.perf_counter(), start
        for step in range(start, cfg.steps):
            batch = task.train_batch(step).to(device)
            if batch.reset or not task.carries_state:
                carry = None
            logits, state = run_model(net, batch, carry, task, cfg.skip_reads)
            loss, sums = score(logits, batch, task.num_groups)
            runner.check_finite_loss(loss, step, step)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.max_grad_norm is not None:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            self.optimizer.step()
            carry = detach_state(state) if task.carries_state else None
            window = add_sums(window, sums)
            bar.update(1)
            done = step + 1
            elapsed_s = self.elapsed_s + time.monotonic() - session_start
            interrupted, out_of_time = ranks.any(stop.requested, runner.out_of_time(cfg.time_budget, elapsed_s))
            stopping = done != cfg.steps and (interrupted or out_of_time)
            if done % cfg.eval_freq and done != cfg.steps and not stopping:
                continue
            metrics = task.summarize("train", {name: ranks.sum(value) for name, value in window.items()})
            metrics["train/steps_per_s"] = (done - tic_step) / (time.perf_counter() - tic)
            metrics.update(evaluate(model, task, "val", device, ranks, cfg.skip_reads))
            if cfg.eval_test_periodically:
                metrics.update(evaluate(model, task, "test", device, ranks, cfg.skip_reads))
            if task.curriculum is not None:
                metrics.update(self._curriculum_decision(done, metrics))
            improved = metrics[task.best_metric] < self.best
            if improved:
                self.best, self.best_step = metrics[task.best_metric], done
            per_rank = ranks.gather({"data": task.state_dict(), "carry": _to_cpu(carry)})
            if ranks.main:
                log.append(done, **metrics)
                if improved:
                    best = {"model": model.state_dict(), "step": done, "metrics": metrics}
                    atomic_write(run.path / BEST_MODEL_FILE, lambda tmp: torch.save(best, tmp))
                payload = {"model": model.state_dict(), "optimizer": self.optimizer.state_dict(), "best": self.best,
                           "best_step": self.best_step, "ranks": per_rank, "elapsed_s": elapsed_s}
                self.save_checkpoint(run, done, payload, model, step, keep=cfg.keep_checkpoints)
                bar.set_postfix(loss=f"{metrics['train/loss']:.3f}", best=f"{self.best:.4f}")
            if stopping:
                return ("interrupted" if interrupted else "time budget"), done
            window = empty_sums(task.num_groups, device)
            tic, tic_step = time.perf_counter(), done
        return None

    def _curriculum_decision(self, step: int, metrics: dict[str, float]) -> dict[str, float]:
        """Let the task's curriculum decide on the val accuracy at its current K (``metrics`` holds the target's
        val); -> the ``curriculum/`` columns of this evaluation."""
        task, curriculum = self.task, self.task.curriculum
        split, pairs = task.curriculum_split(), curriculum.size
        if split != "val":
            metrics = evaluate(self.model, task, split, self.device, self.ranks, self.config.skip_reads)
        accuracy = metrics[f"{split}/acc"]
        decision = curriculum.update(step, accuracy)
        if decision != "stay" and self.ranks.main and not self.quiet:
            tqdm.write(f"step {step}: curriculum val accuracy {accuracy:.3f} at K = {pairs} -> {decision} to "
                       f"K = {curriculum.size}", file=sys.stderr)
        return {"curriculum/pairs": pairs, "curriculum/acc": accuracy, "curriculum/level": curriculum.level}

    def _final_test(self, run: RunDir, log, n_params: int, step: int, stopped: Optional[str] = None
                    ) -> dict[str, Any]:
        """Score the best model up to ``step`` on the test split; log it as ``test/best_*`` at ``step`` and write
        ``results.json`` (with ``steps`` and ``stopped``: why training ended early, or None)."""
        cfg, ranks = self.config, self.ranks
        best = torch.load(run.path / BEST_MODEL_FILE, map_location="cpu", weights_only=False)
        final = copy.deepcopy(self.model)
        final.load_state_dict(best["model"])
        test = {k.replace("test/", "test/best_", 1): v
                for k, v in evaluate(final, self.task, "test", self.device, ranks, cfg.skip_reads).items()}
        val = {k: v for k, v in best["metrics"].items() if k.startswith("val/")}
        results = {"best_step": self.best_step, "steps": step, "stopped": stopped, **val, **test,
                   "parameters": n_params, "hidden_size": self.hidden_size, "run_dir": str(run.path)}
        if ranks.main:
            log.append(step, **test)
            write_json(run.path / RESULTS_FILE, results)
            if not self.quiet:
                print(json.dumps({k: v for k, v in results.items() if "acc_task" not in k}), file=sys.stderr)
        return {**results, "model": self.model}


def load_config(path: Path) -> SupervisedConfig:
    """A SupervisedConfig from a YAML file (a run's config.yaml; an old run's config.json, whose ``run_dir`` key is
    dropped with a warning: the run directory is an option now)."""
    values = options.read_yaml(path)
    if "run_dir" in values:
        options.warn_deprecated(f"{path}: run_dir in a config file is deprecated and ignored; use --run-dir")
        values.pop("run_dir")
    return options.make_config(SupervisedConfig, values, source=str(path), merge_dicts=False, aliases=ALIASES)


def train(cfg: SupervisedConfig, run_dir: Optional[Path] = None, runs_dir: Path = Path("runs"),
          overwrite: bool = False, progress_bar: bool = True, quiet: bool = False) -> dict[str, Any]:
    """Train ``cfg`` in a new run directory (default RUNS_DIR/EXPERIMENT); returns the results of the best model:
    ``best_step``, its validation metrics, its ``test/best_*`` metrics, ``parameters``, ``hidden_size``,
    ``run_dir`` and the final ``model`` (this rank's, trained weights)."""
    run_dir = Path(run_dir) if run_dir is not None else Path(runs_dir) / cfg.experiment
    return runner.start(SupervisedTrainer, cfg, run_dir, overwrite=overwrite, progress_bar=progress_bar,
                        quiet=quiet).summary


def resume(run_dir: Path, overrides: Optional[dict[str, Any]] = None, progress_bar: bool = True,
           quiet: bool = False) -> dict[str, Any]:
    """Continue the run in ``run_dir`` from its newest readable checkpoint; only RESUMABLE fields may change."""
    return runner.resume(SupervisedTrainer, Path(run_dir), overrides, progress_bar=progress_bar,
                         quiet=quiet).summary


if __name__ == "__main__":  # torchrun -m fwm_rl.train.supervised ...
    from fwm_rl.train.cli import main

    main(["supervised", *sys.argv[1:]])
