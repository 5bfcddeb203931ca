"""Word-level language modelling on PTB / WikiText-2 style files: ``train.txt``, ``valid.txt``, ``test.txt``.

Each line is split on whitespace and ends with ``<eos>`` (the awd-lstm-lm convention); the vocabulary is every
word of the three files. The token stream of a split is cut into B contiguous streams (columns) and read in windows
of ``bptt`` tokens with the state carried and detached between windows (truncated BPTT); the state starts from zeros
at the start of every pass. Held-out metrics are the loss per token and the perplexity ``exp(loss)``.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Iterator

import torch
from torch import Tensor

from fwm_rl.train.errors import UserError
from fwm_rl.train.tasks.base import Batch, Task

EOS = "<eos>"
FILES = {"train": "train.txt", "val": "valid.txt", "test": "test.txt"}


def read_words(path: Path) -> list[str]:
    """The words of ``path``, ``<eos>`` after each line; ``UserError`` naming the file (and line) on a problem."""
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise UserError(f"lm: missing file {path} (the directory must hold train.txt, valid.txt, test.txt)") from None
    lines = raw.split(b"\n")
    if lines[-1] == b"":
        lines.pop()  # nothing after the final newline
    words: list[str] = []
    for number, line in enumerate(lines, start=1):
        try:
            words += line.decode("utf-8").split() + [EOS]
        except UnicodeDecodeError as e:
            raise UserError(f"lm: {path}, line {number}: not UTF-8 text ({e.reason} at column {e.start + 1})") from None
    if len(words) < 2:
        raise UserError(f"lm: {path} holds no text")
    return words


def read_corpus(directory: Path) -> tuple[list[str], dict[str, Tensor]]:
    """Vocabulary (in order of first appearance) and ``{"train", "val", "test"}`` -> token ids ``[N]``."""
    directory = Path(directory)
    if not directory.is_dir():
        raise UserError(f"lm: data directory {directory} does not exist (it must hold train.txt, valid.txt, test.txt)")
    words = {split: read_words(directory / name) for split, name in FILES.items()}
    index: dict[str, int] = {}
    for split in FILES:
        for w in words[split]:
            index.setdefault(w, len(index))
    ids = {split: torch.tensor([index[w] for w in ws], dtype=torch.long) for split, ws in words.items()}
    return list(index), ids


def streams(ids: Tensor, num_streams: int) -> Tensor:
    """``ids [N]`` cut into ``[N // num_streams, num_streams]`` contiguous columns (the remainder dropped)."""
    length = ids.numel() // num_streams
    if length < 2:
        raise ValueError(f"{ids.numel()} tokens cannot fill {num_streams} streams of at least 2 tokens")
    return ids[: length * num_streams].view(num_streams, length).T.contiguous()


class LMTask(Task):
    """Language modelling windows for one rank of a data-parallel run."""

    head = "decoder"
    carries_state = True
    best_metric = "val/ppl"

    def __init__(
        self,
        vocab: list[str],
        ids: dict[str, Tensor],
        batch_size: int,
        bptt: int,
        eval_batch_size: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.vocab, self.vocab_size, self.bptt = vocab, len(vocab), bptt
        self.rank, self.world_size, self.eval_batch_size = rank, world_size, eval_batch_size
        all_streams = streams(ids["train"], batch_size * world_size)  # [L, B * world]
        self.train = all_streams[:, rank * batch_size : (rank + 1) * batch_size]  # [L, B]
        self.windows_per_epoch = max(1, (self.train.shape[0] - 1) // bptt)
        self.held_out = {split: ids[split] for split in ("val", "test")}
        for split, held_out in self.held_out.items():
            if held_out.numel() < 2 * eval_batch_size:
                raise ValueError(f"the {split} split ({held_out.numel()} tokens) is too short for {eval_batch_size} "
                                 f"evaluation streams; lower the eval batch size")

    def train_batch(self, step: int) -> Batch:
        i = step % self.windows_per_epoch
        return self._window(self.train, i * self.bptt, reset=i == 0)

    def eval_batches(self, split: str) -> Iterator[Batch]:
        data = streams(self.held_out[split], self.eval_batch_size)[:, self.rank :: self.world_size]
        if data.shape[1] == 0:
            return
        for start in range(0, data.shape[0] - 1, self.bptt):
            yield self._window(data, start, reset=start == 0)

    def _window(self, data: Tensor, start: int, reset: bool) -> Batch:
        length = min(self.bptt, data.shape[0] - 1 - start)
        targets = data[start + 1 : start + 1 + length]  # [T, B]
        return Batch(
            tokens=data[start : start + length], targets=targets, scored=torch.ones_like(targets, dtype=torch.bool),
            reset=reset,
        )

    def summarize(self, prefix: str, sums: dict[str, Tensor]) -> dict[str, float]:
        metrics = super().summarize(prefix, sums)
        metrics[f"{prefix}/ppl"] = math.exp(min(metrics[f"{prefix}/loss"], 50.0))
        del metrics[f"{prefix}/error"]
        return metrics
