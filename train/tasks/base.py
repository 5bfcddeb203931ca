"""What the supervised trainer needs from a task: training windows, evaluation windows, and how to score them."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE = -100  # target value that carries no loss (``ignore_index`` of the cross-entropy)


@dataclass
class Batch:
    """One window of token ids.

    ``tokens [T, B]`` inputs. ``targets`` is ``[T, B]`` for per-step heads or ``[B]`` for last-step heads, with
    ``IGNORE`` where there is no loss. ``scored`` (shape of ``targets``, bool) marks the positions whose accuracy is
    reported; ``groups`` (same shape, int, optional) assigns each scored position to a group for per-group accuracy
    (catbAbI: task number - 1). ``reset`` starts the carried state from zeros before this window.
    """

    tokens: Tensor
    targets: Tensor
    scored: Tensor
    groups: Optional[Tensor] = None
    reset: bool = False

    def to(self, device: torch.device) -> "Batch":
        moved = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in vars(self).items()}
        return Batch(**moved)


class Task(ABC):
    """A supervised sequence task: data for one rank of a data-parallel run plus its scoring rules."""

    vocab_size: int
    head: str  # sequence-model head: "mlp_last" (one prediction per sequence), "linear" or "decoder" (per step)
    carries_state: bool  # carry the core state (detached) from one training window to the next
    best_metric: str  # held-out metric that picks the best checkpoint (lower is better)
    num_groups: int = 0  # number of groups in ``Batch.groups``
    group_names: tuple[str, ...] = ()
    curriculum: Optional[Any] = None  # a SizeCurriculum over the task's difficulty (art/mart), or None

    def curriculum_split(self) -> str:
        """The held-out split whose accuracy decides the curriculum at its current level."""
        raise NotImplementedError(f"{type(self).__name__} has no curriculum")

    @abstractmethod
    def train_batch(self, step: int) -> Batch:
        """The training window of this rank at optimisation step ``step`` (0-based)."""

    @abstractmethod
    def eval_batches(self, split: str) -> Iterator[Batch]:
        """This rank's share of ``split`` ("val" or "test"), in order; state is carried when ``carries_state``."""

    def state_dict(self) -> dict[str, Any]:
        """Position of the training data stream, for exact resumption (empty when it is a function of the step)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""

    def summarize(self, prefix: str, sums: dict[str, Tensor]) -> dict[str, float]:
        """Metrics named ``{prefix}/...`` from the sums of ``score``: loss, acc, error and per-group acc."""
        loss = (sums["loss_sum"] / sums["loss_count"].clamp(min=1)).item()
        acc = (sums["correct"] / sums["scored"].clamp(min=1)).item()
        metrics = {f"{prefix}/loss": loss, f"{prefix}/acc": acc, f"{prefix}/error": 1.0 - acc}
        if self.num_groups:
            group_acc = sums["group_correct"] / sums["group_scored"].clamp(min=1)
            for name, value, count in zip(self.group_names, group_acc.tolist(), sums["group_scored"].tolist()):
                if count > 0:
                    metrics[f"{prefix}/acc_{name}"] = value
        return metrics


def score(logits: Tensor, batch: Batch, num_groups: int = 0) -> tuple[Tensor, dict[str, Tensor]]:
    """Mean cross-entropy over the non-ignored targets, and detached sums for metrics.

    ``logits [*targets.shape, V]``. The sums are float64 tensors: ``loss_sum``, ``loss_count``, ``correct``,
    ``scored``, and with groups ``group_correct [G]``, ``group_scored [G]``.
    """
    flat_logits = logits.reshape(-1, logits.shape[-1])  # [N, V]
    targets = batch.targets.reshape(-1)  # [N]
    has_target = targets != IGNORE
    losses = F.cross_entropy(flat_logits, targets, ignore_index=IGNORE, reduction="none")  # [N]
    loss_count = has_target.sum()
    loss = losses.sum() / loss_count.clamp(min=1)
    scored = batch.scored.reshape(-1)
    hit = (flat_logits.argmax(dim=-1) == targets) & scored
    sums = {
        "loss_sum": losses.detach().sum().double(),
        "loss_count": loss_count.double(),
        "correct": hit.sum().double(),
        "scored": scored.sum().double(),
    }
    if num_groups:
        groups = batch.groups.reshape(-1)
        zeros = torch.zeros(num_groups, dtype=torch.float64, device=logits.device)
        sums["group_correct"] = zeros.index_add(0, groups[scored], hit[scored].double())
        sums["group_scored"] = zeros.index_add(0, groups[scored], torch.ones_like(groups[scored], dtype=torch.float64))
    return loss, sums


def empty_sums(num_groups: int = 0, device: Optional[torch.device] = None) -> dict[str, Tensor]:
    """Zeros with the keys and shapes that ``score`` returns."""
    keys = ("loss_sum", "loss_count", "correct", "scored")
    sums = {k: torch.zeros((), dtype=torch.float64, device=device) for k in keys}
    if num_groups:
        sums["group_correct"] = torch.zeros(num_groups, dtype=torch.float64, device=device)
        sums["group_scored"] = torch.zeros(num_groups, dtype=torch.float64, device=device)
    return sums


def add_sums(total: dict[str, Tensor], sums: dict[str, Tensor]) -> dict[str, Tensor]:
    """Element-wise ``total + sums``."""
    return {key: total[key] + value for key, value in sums.items()}
