"""Procedural mazes (batched) and the frozen evaluation sets.

A maze of ``size`` x ``size`` cells is a (2 size + 1)-tile square grid: cells on odd (row, col), walls between.
Generation is randomised Kruskal (a random spanning tree of the cell grid: a perfect maze), then every remaining
inner wall between two cells opens with probability ``loops``. Each row draws exactly 2 E uniforms per attempt
(E inner walls) from its own stream and redraws until the maze's id falls in the requested split.

Frozen sets: :func:`split_layouts` returns the val/test/OOD layouts of a configuration; for the standard
configurations they ship as ``data/gridmaze-v{GENERATOR_VERSION}-*.txt`` (written by ``python -m
fwm_rl.envs.mazes``), for others they are generated the same way on first use. Bump ``GENERATOR_VERSION`` with any
change to the generator.

Hand-drawn set: the split ``test_handdrawn`` (:func:`handdrawn_layouts`) holds 15 x 15-tile layouts drawn by hand in
``data/gridmaze-handdrawn-15.txt`` (rooms with doors, spirals, combs, pillars, dead ends, caves, ...), each under
a ``; name`` and its frozen ``; id``. None has the generator's shape (:func:`generator_can_make`), so no train,
val or test maze of any size or loops can equal one of them.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Callable

import numpy as np

from fwm_rl.envs.layouts import Layout, load_layouts, split_of

GENERATOR_VERSION = 1
DATA_DIR = Path(__file__).parent / "data"
FROZEN_SEED = 20260101
FROZEN_COUNTS = {"val": 100, "test": 200}
STANDARD_SIZES = (5, 7, 9)
OOD_SPLITS = {"test_large": {"size": 11, "loops": 0.0}, "test_loopy": {"size": 7, "loops": 0.5}}
"""Named out-of-distribution test splits: larger mazes, more loops. They fix size and loops."""
HANDDRAWN_SPLIT = "test_handdrawn"
HANDDRAWN_PATH = DATA_DIR / "gridmaze-handdrawn-15.txt"
_MAX_ATTEMPTS = 200

Uniform = Callable[[np.ndarray, int], np.ndarray]
"""uniform(rows [R], k) -> [R, k] doubles in [0, 1), each row from its own stream."""


@functools.cache
def _cell_edges(size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inner walls of a size x size cell grid: cell a [E], cell b [E], wall tile flat index [E] in the tile grid."""
    cells = np.arange(size * size).reshape(size, size)
    a = np.concatenate([cells[:, :-1].ravel(), cells[:-1, :].ravel()])
    b = np.concatenate([cells[:, 1:].ravel(), cells[1:, :].ravel()])
    side = 2 * size + 1
    ra, ca, rb, cb = 2 * (a // size) + 1, 2 * (a % size) + 1, 2 * (b // size) + 1, 2 * (b % size) + 1
    return a, b, ((ra + rb) // 2) * side + (ca + cb) // 2


def generate_mazes(uniform: Uniform, rows: np.ndarray, size: int, loops: float) -> np.ndarray:
    """One maze per entry of ``rows`` -> walls [R, 2 size + 1, 2 size + 1] bool (see the module docstring)."""
    a, b, wall_tile = _cell_edges(size)
    n, n_edges, side = len(rows), len(a), 2 * size + 1
    u = uniform(rows, 2 * n_edges)
    order = np.argsort(u[:, :n_edges], axis=1, kind="stable")  # [R, E] Kruskal edge order
    component = np.tile(np.arange(size * size), (n, 1))  # [R, C] cell -> component label
    opened = np.zeros((n, n_edges), dtype=bool)
    ar = np.arange(n)
    for rank in range(n_edges):
        edge = order[:, rank]
        ca, cb = component[ar, a[edge]], component[ar, b[edge]]
        join = ca != cb
        opened[ar, edge] = join
        component = np.where(join[:, None] & (component == cb[:, None]), ca[:, None], component)
    opened |= u[:, n_edges:] < loops
    walls = np.ones((n, side * side), dtype=bool)
    cell_rows, cell_cols = np.divmod(np.arange(size * size), size)
    walls[:, (2 * cell_rows + 1) * side + 2 * cell_cols + 1] = False
    walls[:, wall_tile] &= ~opened
    return walls.reshape(n, side, side)


def generate_split(uniform: Uniform, rows: np.ndarray, size: int, loops: float, split: str) -> list[Layout]:
    """One maze per row whose id belongs to ``split``; raise ``ValueError`` if the split seems empty."""
    found: list[Layout | None] = [None] * len(rows)
    pending = np.arange(len(rows))
    for _ in range(_MAX_ATTEMPTS):
        if not pending.size:
            return found
        walls = generate_mazes(uniform, rows[pending], size, loops)
        keep = []
        for i, grid in zip(pending, walls):
            layout = Layout(grid)
            if split_of(layout.id) == split:
                found[i] = layout
            else:
                keep.append(i)
        pending = np.array(keep, dtype=np.int64)
    raise ValueError(f"no {split} maze found at size={size}, loops={loops} in {_MAX_ATTEMPTS} draws (too few distinct "
                     "mazes at this size); use a larger size, loops > 0, or layout=/layouts=")


def frozen_path(split: str, size: int, loops: float) -> Path:
    return DATA_DIR / f"gridmaze-v{GENERATOR_VERSION}-{split}-size{size}-loops{loops:g}.txt"


def standard_configs() -> list[tuple[str, int, float]]:
    """(split, size, loops) of every shipped frozen set."""
    configs = [(split, size, 0.0) for split in FROZEN_COUNTS for size in STANDARD_SIZES]
    return configs + [(name, ood["size"], ood["loops"]) for name, ood in OOD_SPLITS.items()]


def build_frozen(split: str, size: int, loops: float) -> list[Layout]:
    """Generate the frozen set of a configuration: row i seeded with FROZEN_SEED + i, duplicates (by id) dropped."""
    base = "test" if split in OOD_SPLITS else split
    count = FROZEN_COUNTS[base]
    streams_rows = np.arange(2 * count)
    rngs = [np.random.default_rng([FROZEN_SEED, size, int(loops * 1000), i]) for i in streams_rows]

    def uniform(rows: np.ndarray, k: int) -> np.ndarray:
        return np.stack([rngs[r].random(k) for r in rows])

    layouts, seen = [], set()
    for layout in generate_split(uniform, streams_rows, size, loops, base):
        if layout.id not in seen and len(layouts) < count:
            seen.add(layout.id)
            layouts.append(layout)
    return layouts


@functools.cache
def split_layouts(split: str, size: int, loops: float) -> tuple[Layout, ...]:
    """The frozen val/test/OOD layouts of a configuration (shipped file if present, else generated)."""
    path = frozen_path(split, size, loops)
    return tuple(load_layouts(path) if path.exists() else build_frozen(split, size, loops))


def generator_can_make(walls: np.ndarray) -> bool:
    """Whether :func:`generate_mazes` can output the grid walls [H, W] at some size and loops: a (2 s + 1)-square
    with a wall border, floor on every (odd, odd) tile (the cells) and wall on every (even, even) tile. The 8
    symmetries keep this shape, so a grid without it has an id that no procedural split ever holds."""
    walls = np.asarray(walls, dtype=bool)
    h, w = walls.shape
    if h != w or h % 2 == 0 or h < 5:
        return False
    border = walls[0].all() and walls[-1].all() and walls[:, 0].all() and walls[:, -1].all()
    return bool(border and not walls[1::2, 1::2].any() and walls[::2, ::2].all())


@functools.cache
def handdrawn_catalogue() -> tuple[tuple[str, str, Layout], ...]:
    """(name, frozen id, layout) of every hand-drawn layout, in file order (the ``; name`` and ``; id`` comments
    above each layout)."""
    text = HANDDRAWN_PATH.read_text(encoding="utf-8")
    layouts = load_layouts(HANDDRAWN_PATH)
    tags: dict[str, list[str]] = {"name": [], "id": []}
    for line in text.split("\n"):
        key, _, value = line.lstrip("; ").partition(" ")
        if line.startswith(";") and key in tags:
            tags[key].append(value.strip())
    if not len(tags["name"]) == len(tags["id"]) == len(layouts):
        raise ValueError(f"{HANDDRAWN_PATH}: every layout needs one '; name' and one '; id' line above it")
    return tuple(zip(tags["name"], tags["id"], layouts))


def handdrawn_layouts() -> tuple[Layout, ...]:
    """The layouts of the ``test_handdrawn`` split, in file order."""
    return tuple(layout for _, _, layout in handdrawn_catalogue())


def write_frozen() -> None:
    """Regenerate every shipped frozen set under ``data/``."""
    DATA_DIR.mkdir(exist_ok=True)
    for split, size, loops in standard_configs():
        layouts = build_frozen(split, size, loops)
        header = (f"; fwm-rl GridMaze layouts, generator v{GENERATOR_VERSION}, split={split}, size={size}, "
                  f"loops={loops:g}, {len(layouts)} layouts\n")
        body = "\n\n".join(f"; id {layout.id}\n{layout.to_text()}" for layout in layouts)
        frozen_path(split, size, loops).write_text(header + body + "\n")


if __name__ == "__main__":
    write_frozen()
