"""catbAbI (Schlag et al. 2021): bAbI stories concatenated into B endless streams, read in windows of T tokens.

Data comes from the real bAbI v1.2 ``en-valid-10k`` files (``qa{1..20}_{train,valid,test}.txt`` in one directory,
no download here) or from the offline generator in ``babi_gen``. A story becomes tokens the way the catbAbI code
does it: lower case, "." and "?" as tokens, each question kept in place followed by "?" and its answer (one token,
even when it holds commas, e.g. "n,w"); supporting-fact ids are dropped. A story is encoded as inputs
``[<eos>] + tokens`` and next-token targets ``tokens + [<eos>]``.

Training streams: stories are drawn without replacement (a fresh shuffle each epoch) and appended to the shortest of
the B buffers until each holds at least 4T tokens; each window takes the next T tokens of every buffer, so the state
carried between windows is never reset at story boundaries. QM mode puts the loss only on answer tokens, LM mode on
every next token; both report accuracy on answer tokens, overall and per task. Evaluation deals every story of the
split, in file order, to ``eval_batch_size`` streams and runs them from a zero state to the end (the tail padded).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from fwm_rl.train.errors import UserError
from fwm_rl.train.tasks.babi_gen import NUM_TASKS, Line, Story
from fwm_rl.train.tasks.base import IGNORE, Batch, Task

PAD, EOS = "<pad>", "<eos>"
FILE_SPLITS = {"train": "train", "val": "valid", "test": "test"}  # our split name -> bAbI file suffix
MODES = ("qm", "lm")


def read_babi_file(path: Path, task: int) -> list[Story]:
    """Stories of one bAbI file; ``UserError`` naming the file and line for anything malformed."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"catbAbI: missing file {path} (expected the bAbI v1.2 en-valid-10k layout: "
                        f"qa1_train.txt, qa1_valid.txt, qa1_test.txt, ... qa20_test.txt)") from None
    except UnicodeDecodeError as e:
        raise UserError(f"catbAbI: {path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    stories: list[Story] = []
    lines: list[Line] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        where = f"catbAbI: {path}, line {number}"
        if not raw.strip():
            continue
        index, _, rest = raw.strip().partition(" ")
        if not index.isdigit() or not rest:
            raise UserError(f"{where}: expected 'ID sentence', got {raw!r}")
        if int(index) == 1 and lines:
            stories.append(Story(task, tuple(lines)))
            lines = []
        expected = len(lines) + 1
        if int(index) != expected:
            raise UserError(f"{where}: line id {index}, expected {expected} (ids count up from 1 in each story)")
        if "\t" in rest:
            question, answer, *_ = rest.split("\t") + [""]
            question = question.strip()
            if not question.endswith("?") or not answer.strip():
                raise UserError(f"{where}: a question line must be 'ID question?<TAB>answer<TAB>ids', got {raw!r}")
            lines.append(Line(_words(question[:-1]), answer.strip().lower()))
        elif "?" in rest:
            raise UserError(f"{where}: a question line needs a TAB between the question and its answer "
                            f"('ID question?<TAB>answer<TAB>ids'), got {raw!r}")
        else:
            if not rest.strip().endswith("."):
                raise UserError(f"{where}: a statement must end with '.', got {raw!r}")
            lines.append(Line(_words(rest.strip()[:-1])))
    if lines:
        stories.append(Story(task, tuple(lines)))
    if not stories:
        raise UserError(f"catbAbI: {path} holds no stories")
    return stories


def _words(sentence: str) -> str:
    return " ".join(sentence.lower().replace(".", " . ").split())


def read_babi_dir(directory: Path, tasks: Sequence[int] = range(1, NUM_TASKS + 1)) -> dict[str, list[Story]]:
    """``{"train", "val", "test"}`` -> stories of all ``tasks``, read from an en-valid-10k directory."""
    directory = Path(directory)
    if not directory.is_dir():
        raise UserError(f"catbAbI: data directory {directory} does not exist (give the bAbI v1.2 en-valid-10k "
                        f"directory, or no --data-dir to use generated stories)")
    return {
        split: [story for task in tasks for story in read_babi_file(directory / f"qa{task}_{suffix}.txt", task)]
        for split, suffix in FILE_SPLITS.items()
    }


def story_tokens(story: Story) -> list[str]:
    """The catbAbI token sequence of a story (questions in place, each followed by "?" and its answer)."""
    tokens: list[str] = []
    for line in story.lines:
        tokens += line.words.split()
        tokens += ["."] if line.answer is None else ["?", line.answer]
    return tokens


def build_vocab(splits: dict[str, list[Story]]) -> list[str]:
    """``<pad>``, ``<eos>``, then every token of every split, sorted."""
    words = {token for stories in splits.values() for story in stories for token in story_tokens(story)}
    return [PAD, EOS, *sorted(words)]


def encode(story: Story, index: dict[str, int]) -> np.ndarray:
    """``[4, L]`` int64 rows: inputs, next-token targets, is-answer (target is an answer), task number."""
    ids = [index[t] for t in story_tokens(story)]
    inputs = np.array([index[EOS], *ids])
    targets = np.array([*ids, index[EOS]])
    is_answer = inputs == index["?"]
    return np.stack([inputs, targets, is_answer, np.full_like(inputs, story.task)])


def deal(stories: Sequence[np.ndarray], num_streams: int) -> list[np.ndarray]:
    """Concatenate encoded stories into ``num_streams`` streams, each story going to the shortest stream."""
    parts: list[list[np.ndarray]] = [[] for _ in range(num_streams)]
    lengths = [0] * num_streams
    for story in stories:
        b = lengths.index(min(lengths))
        parts[b].append(story)
        lengths[b] += story.shape[1]
    return [np.concatenate(p, axis=1) if p else np.zeros((4, 0), dtype=np.int64) for p in parts]


class CatBAbITask(Task):
    """catbAbI windows for one rank: ``batch_size`` endless training streams, finite evaluation streams."""

    head = "linear"
    carries_state = True
    best_metric = "val/loss"
    num_groups = NUM_TASKS
    group_names = tuple(f"task{t:02d}" for t in range(1, NUM_TASKS + 1))

    def __init__(
        self,
        splits: dict[str, list[Story]],
        mode: str,
        batch_size: int,
        seq_len: int,
        eval_batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"catbAbI mode must be one of {MODES}, got {mode!r}")
        self.vocab = build_vocab(splits)
        self.vocab_size = len(self.vocab)
        index = {word: i for i, word in enumerate(self.vocab)}
        self.encoded = {split: [encode(s, index) for s in stories] for split, stories in splits.items()}
        if not self.encoded["train"]:
            raise ValueError("catbAbI: no training stories")
        self.mode, self.batch_size, self.seq_len = mode, batch_size, seq_len
        self.eval_batch_size, self.seed, self.rank, self.world_size = eval_batch_size, seed, rank, world_size
        self.buffers = [np.zeros((4, 0), dtype=np.int64) for _ in range(batch_size)]
        self.epoch, self.drawn = 0, 0  # position in the current epoch's shuffle of the training stories
        self._order = self._shuffle(0)

    def _shuffle(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, self.rank, epoch]).permutation(len(self.encoded["train"]))

    def _refill(self) -> None:
        lengths = [b.shape[1] for b in self.buffers]
        while min(lengths) < 4 * self.seq_len:
            if self.drawn == len(self._order):
                self.epoch, self.drawn = self.epoch + 1, 0
                self._order = self._shuffle(self.epoch)
            story = self.encoded["train"][self._order[self.drawn]]
            self.drawn += 1
            b = lengths.index(min(lengths))
            self.buffers[b] = np.concatenate([self.buffers[b], story], axis=1)
            lengths[b] += story.shape[1]

    def train_batch(self, step: int) -> Batch:
        self._refill()
        window = np.stack([b[:, : self.seq_len] for b in self.buffers], axis=2)  # [4, T, B]
        self.buffers = [b[:, self.seq_len :] for b in self.buffers]
        return self._batch(torch.from_numpy(window))

    def eval_batches(self, split: str) -> Iterator[Batch]:
        streams = deal(self.encoded[split], self.eval_batch_size)[self.rank :: self.world_size]
        if not streams:
            return
        length = max(s.shape[1] for s in streams)
        window = np.zeros((4, length, len(streams)), dtype=np.int64)  # [4, L, B], padded at the tail
        window[0] = self.vocab.index(PAD)
        window[1] = IGNORE
        for b, s in enumerate(streams):
            window[:, : s.shape[1], b] = s
        for start in range(0, length, self.seq_len):
            yield self._batch(torch.from_numpy(window[:, start : start + self.seq_len]))

    def _batch(self, window: torch.Tensor) -> Batch:
        """``window [4, T, B]`` (inputs, targets, is-answer, task) -> a Batch with this mode's targets."""
        tokens, targets, is_answer, task = window
        is_answer = is_answer.bool()
        if self.mode == "qm":
            targets = torch.where(is_answer, targets, torch.full_like(targets, IGNORE))
        return Batch(tokens=tokens, targets=targets, scored=is_answer, groups=(task - 1).clamp(min=0))

    def state_dict(self) -> dict[str, Any]:
        return {"buffers": [b.copy() for b in self.buffers], "epoch": self.epoch, "drawn": self.drawn}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state["buffers"]) != self.batch_size:
            raise ValueError(f"saved catbAbI stream has {len(state['buffers'])} rows, this run {self.batch_size}")
        self.buffers = [np.asarray(b) for b in state["buffers"]]
        self.epoch, self.drawn = state["epoch"], state["drawn"]
        self._order = self._shuffle(self.epoch)
