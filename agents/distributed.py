"""Data-parallel on-policy training, DD-PPO style: one process per rank, each stepping its own envs, all ranks
applying the same update.

:class:`DataParallel` is what :class:`~fwm_rl.agents.RecurrentPPO` (and so ``RecurrentA2C``) calls at the few points
where ranks must agree: the initial parameters (broadcast from rank 0), every gradient (all-reduced and averaged
before clipping, so every rank takes the same optimizer step), the advantage statistics of a minibatch (so the
update equals a single-process one on the ranks' minibatches concatenated), the PPO early stop on ``target_kl``, and
the env-step counter (every rank counts all ranks' steps). Trainers use it for the collective decisions of a run
(stop, checkpoint). With one process every method is a no-op that returns its input, and the algorithms take their
single-process code paths unchanged.

SB3 users start a process group (``torch.distributed.init_process_group``, e.g. under ``torchrun``), give each rank
its own seed (:func:`rank_seed`) and call ``model.set_data_parallel(DataParallel.from_process_group())`` before
``learn``.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import torch as th
import torch.distributed as dist
from torch import Tensor, nn


@dataclass(frozen=True)
class DataParallel:
    """Rank and world size of this process in the default process group (``world_size == 1``: a single process)."""

    rank: int = 0
    world_size: int = 1

    @classmethod
    def from_process_group(cls) -> "DataParallel":
        """The default process group's rank and size (a single process when none is initialized)."""
        if not (dist.is_available() and dist.is_initialized()):
            return cls()
        return cls(dist.get_rank(), dist.get_world_size())

    @property
    def main(self) -> bool:
        """True on rank 0, the rank that writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def broadcast_module(self, module: nn.Module) -> None:
        """Copy rank 0's parameters and buffers into every rank's ``module``."""
        if self.distributed:
            with th.no_grad():
                for tensor in [*module.parameters(), *module.buffers()]:
                    dist.broadcast(tensor.data, src=0)

    def average_gradients(self, parameters: Iterable[nn.Parameter], extra: Optional[Tensor] = None) -> Optional[Tensor]:
        """Replace every ``.grad`` by its mean over the ranks (one all-reduce of one flat buffer); ``extra`` (a
        scalar, e.g. the loss) travels in the same buffer and comes back summed over the ranks."""
        if not self.distributed:
            return extra
        grads = [p.grad for p in parameters if p.grad is not None]
        parts = [g.reshape(-1) for g in grads] + ([extra.detach().reshape(1).to(grads[0].dtype)] if extra is not None
                                                   else [])
        flat = th.cat(parts)
        dist.all_reduce(flat)
        offset = 0
        for grad in grads:
            grad.copy_(flat[offset : offset + grad.numel()].view_as(grad) / self.world_size)
            offset += grad.numel()
        return flat[offset] if extra is not None else None

    def sum(self, values: Tensor) -> Tensor:
        """``values`` summed over the ranks (a new tensor; ``values`` itself with one process)."""
        if not self.distributed:
            return values
        total = values.detach().clone()
        dist.all_reduce(total)
        return total

    def mean(self, value: float) -> float:
        """A Python number averaged over the ranks."""
        if not self.distributed:
            return value
        return float(self.sum(th.tensor([value], dtype=th.float64, device=self._device()))[0]) / self.world_size

    def any(self, *flags: bool) -> tuple[bool, ...]:
        """Each flag, true on every rank when it is true on any rank: a decision every rank takes together."""
        if not self.distributed:
            return tuple(bool(flag) for flag in flags)
        votes = self.sum(th.tensor([float(bool(flag)) for flag in flags], device=self._device()))
        return tuple(bool(vote > 0) for vote in votes)

    def gather(self, obj: Any) -> Optional[list[Any]]:
        """Every rank's picklable ``obj`` in rank order, on rank 0 (None on the other ranks)."""
        if not self.distributed:
            return [obj]
        out: Optional[list[Any]] = [None] * self.world_size if self.main else None
        dist.gather_object(obj, out, dst=0)
        return out

    def barrier(self) -> None:
        """Wait until every rank gets here (e.g. rank 0 has written a file the others read)."""
        if self.distributed:
            dist.barrier()

    def _device(self) -> th.device:
        """Where small collective tensors live: the current CUDA device under nccl, else the CPU."""
        if dist.get_backend() == "nccl":
            return th.device("cuda", th.cuda.current_device())
        return th.device("cpu")


SINGLE_PROCESS = DataParallel()


def rank_seed(seed: int, n_envs: int, ranks: DataParallel) -> int:
    """The agent seed of this rank: SB3 seeds env i with ``seed + i``, so with ``seed + rank * n_envs`` the ranks'
    envs play what the ``world_size * n_envs`` envs of one process seeded ``seed`` would (no two alike)."""
    return seed + ranks.rank * n_envs


def per_rank(values: Sequence[Any], ranks: DataParallel, what: str) -> Any:
    """This rank's entry of ``values`` (one per rank of the run that saved them); ValueError when the run had a
    different number of processes."""
    if len(values) != ranks.world_size:
        raise ValueError(f"{what} was saved by {len(values)} process(es) and this run has {ranks.world_size}; "
                         f"continue it with {len(values)} in all (torchrun --nnodes x --nproc-per-node)")
    return values[ranks.rank]
