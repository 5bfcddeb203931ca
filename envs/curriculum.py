"""A maze-size curriculum for ``FWM/GridMaze-v0``: train on small mazes first, move up when the agent scores well on
the held-out val mazes of its current size, move back down when it keeps failing there.

The env option ``curriculum={"sizes": [3, 5, 7], "promote": 0.6, "demote": 0.2, "patience": 2}`` makes a train
env play the mazes of ``sizes[level]`` (level 0 first), with lifetimes of 10 size^2 steps unless ``episode_steps``
fixes them; a held-out split (val, test) of such an env plays the largest size, the target. Whoever evaluates the
agent on the val mazes of the current size (``fwm_rl.train.curriculum`` during ``fwm-rl train``) reports each
normalised val score s = (return - random) / (oracle - random) to :meth:`SizeCurriculum.update`, which decides:

* **promote** when s >= ``promote`` and a larger size is left: the next size;
* **demote** when the last ``patience`` evaluations at this level (counted since the level was entered) all scored
  s < ``demote`` and a smaller size exists: the previous size;
* otherwise **stay** (also for an undefined, NaN, score).

A new level takes effect when the env next begins a lifetime in every row at once (its rows run in lockstep, so at
the next lifetime boundary); the lifetimes in progress finish at their size. The state travels with the env, so a
checkpointed env resumes the curriculum where it was.

The supervised trainer climbs the same ladder over the number of pairs of ART and mART (``fwm-rl supervised
--curriculum sizes=[2,4] promote=0.95``), with the val accuracy as the score.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fwm_rl.envs.checks import check_int

DEFAULTS = {"sizes": (3, 5, 7), "promote": 0.6, "demote": 0.2, "patience": 2}
DECISIONS = ("promote", "demote", "stay")


def _check_real(name: str, value: Any) -> float:
    """A finite real threshold (scores can fall below 0, the random policy, so any real is allowed)."""
    real = not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating))
    if not real or not math.isfinite(value):
        raise ValueError(f"curriculum {name} must be a finite number (a normalised score), got {value!r}")
    return float(value)


@dataclass
class SizeCurriculum:
    """Curriculum state: the ladder ``sizes`` (cells, increasing), the thresholds, the current ``level`` and the
    ``history`` of decisions as (env steps, size evaluated, score, decision)."""

    sizes: tuple[int, ...] = DEFAULTS["sizes"]
    promote: float = DEFAULTS["promote"]
    demote: float = DEFAULTS["demote"]
    patience: int = DEFAULTS["patience"]
    level: int = 0
    low_streak: int = 0  # consecutive evaluations below ``demote`` at this level
    history: list[tuple[int, int, float, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        sizes = self.sizes
        if not isinstance(sizes, (list, tuple)) or not sizes:
            raise ValueError(f"curriculum sizes must be a non-empty list of maze sizes, got {sizes!r}")
        self.sizes = tuple(check_int("curriculum size", s, 2) for s in sizes)
        if any(b <= a for a, b in zip(self.sizes, self.sizes[1:])):
            raise ValueError(f"curriculum sizes must increase, got {list(self.sizes)}")
        self.promote, self.demote = _check_real("promote", self.promote), _check_real("demote", self.demote)
        if self.demote >= self.promote:
            raise ValueError(f"curriculum demote ({self.demote}) must be below promote ({self.promote})")
        self.patience = check_int("curriculum patience", self.patience, 1)
        self.level = check_int("curriculum level", self.level, 0, len(self.sizes) - 1)

    @classmethod
    def from_option(cls, option: Any) -> "SizeCurriculum":
        """The curriculum of the env option: a dict of some of ``sizes``, ``promote``, ``demote``, ``patience``
        (the rest from DEFAULTS), a list of sizes, or a SizeCurriculum (copied)."""
        if isinstance(option, SizeCurriculum):
            return cls(option.sizes, option.promote, option.demote, option.patience, option.level, option.low_streak,
                       list(option.history))
        if isinstance(option, (list, tuple)):
            option = {"sizes": option}
        if not isinstance(option, dict):
            raise ValueError(f"curriculum must be a dict with keys {', '.join(DEFAULTS)} or a list of sizes, "
                             f"got {option!r}")
        unknown = sorted(set(option) - set(DEFAULTS))
        if unknown:
            raise ValueError(f"unknown curriculum key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                             f"allowed: {', '.join(DEFAULTS)}")
        return cls(**{**DEFAULTS, **option})

    @property
    def size(self) -> int:
        """Maze size (cells per side) of the current level."""
        return self.sizes[self.level]

    @property
    def target(self) -> int:
        """The largest size, which held-out splits play."""
        return self.sizes[-1]

    def update(self, step: int, score: float) -> str:
        """Record the val score at the current size after ``step`` env steps and move the level (module docstring);
        -> "promote", "demote" or "stay"."""
        decision = "stay"
        if not math.isnan(score):
            self.low_streak = self.low_streak + 1 if score < self.demote else 0
            if score >= self.promote and self.level < len(self.sizes) - 1:
                decision = "promote"
            elif self.low_streak >= self.patience and self.level > 0:
                decision = "demote"
        self.history.append((int(step), self.size, float(score), decision))
        if decision != "stay":
            self.level += 1 if decision == "promote" else -1
            self.low_streak = 0
        return decision
