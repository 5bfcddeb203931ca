"""Grid layouts: text format, validation, canonical ids and splits by id.

Text format, one row per line: ``#`` wall, ``.`` floor, ``G`` the goal (optional, at most one), ``S`` the start
(optional, at most one). A file may hold several layouts separated by blank lines; lines starting with ``;`` are
comments (in files and :func:`load_layouts` strings). Every floor tile must reach every other (so the goal is
reachable from anywhere). Moves off the grid are blocked, so a layout needs no outer wall.

A layout's id is a hash of its wall grid up to the 8 symmetries of the square (rotations and reflections), so a
maze and its mirror image share an id and a split. Splits are decided by the id (train 80%, val 10%, test 10%),
never by seed, so no train reset can produce a val or test layout.
"""
from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

WALL, FLOOR, GOAL, START = "#", ".", "G", "S"
ALLOWED = (WALL, FLOOR, GOAL, START)
SPLIT_BUCKETS = {"train": range(0, 8), "val": range(8, 9), "test": range(9, 10)}  # id mod 10


@dataclass(frozen=True)
class Layout:
    """A grid: ``walls`` [H, W] bool, optional fixed ``goal`` and ``start`` as (row, col)."""

    walls: np.ndarray
    goal: tuple[int, int] | None = None
    start: tuple[int, int] | None = None

    @functools.cached_property
    def id(self) -> str:
        return layout_id(self.walls)

    def to_text(self) -> str:
        rows = [[WALL if w else FLOOR for w in row] for row in self.walls]
        for tile, char in ((self.goal, GOAL), (self.start, START)):
            if tile is not None:
                rows[tile[0]][tile[1]] = char
        return "\n".join("".join(row) for row in rows)


def layout_id(walls: np.ndarray) -> str:
    """Canonical id of a wall grid [H, W] bool: 16 hex digits, equal for all 8 rotations/reflections."""
    walls = np.asarray(walls, dtype=bool)
    forms = []
    for grid in (walls, walls.T):
        for k in range(4):
            g = np.rot90(grid, k)
            forms.append(bytes(np.array(g.shape, dtype=">u2").tobytes()) + np.packbits(g).tobytes())
    return hashlib.blake2b(min(forms), digest_size=8).hexdigest()


def split_of(layout: str) -> str:
    """The split ("train", "val" or "test") a layout id belongs to."""
    bucket = int(layout, 16) % 10
    return next(name for name, buckets in SPLIT_BUCKETS.items() if bucket in buckets)


def parse_layout(text: str) -> Layout:
    """Parse one layout (see the module docstring); raise ``ValueError`` with line and column on bad input."""
    lines = text.strip("\n").split("\n")
    if not lines or not lines[0]:
        raise ValueError(f"empty layout; expected rows of {_allowed()}")
    width = len(lines[0])
    marks: dict[str, list[tuple[int, int]]] = {GOAL: [], START: []}
    for r, line in enumerate(lines):
        if len(line) != width:
            raise ValueError(f"line {r + 1}: ragged rows: {len(line)} characters where line 1 has {width}")
        for c, char in enumerate(line):
            if char not in ALLOWED:
                raise ValueError(f"line {r + 1}, column {c + 1}: unknown character {char!r}; allowed: {_allowed()}")
            if char in marks:
                marks[char].append((r, c))
    for char, name in ((GOAL, "goals"), (START, "starts")):
        if len(marks[char]) > 1:
            where = ", ".join(f"line {r + 1} column {c + 1}" for r, c in marks[char])
            raise ValueError(f"several {name} ({where}); at most one {char!r} is allowed")
    walls = np.array([[char == WALL for char in line] for line in lines])
    if (~walls).sum() < 2:
        raise ValueError("a layout needs at least 2 floor tiles ('.', 'G' or 'S')")
    goal = marks[GOAL][0] if marks[GOAL] else None
    source = goal if goal is not None else tuple(np.argwhere(~walls)[0])
    reach = grid_distances(walls[None], np.array([source[0] * width + source[1]]))[0] >= 0
    stranded = np.argwhere(~walls & ~reach)
    if stranded.size:
        r, c = stranded[0]
        target = "the goal" if goal is not None else f"the floor at line {source[0] + 1}, column {source[1] + 1}"
        raise ValueError(f"line {r + 1}, column {c + 1}: floor tile cannot reach {target}; all floor must connect")
    return Layout(walls, goal, marks[START][0] if marks[START] else None)


def load_layouts(source: str | Path | list[str | Path]) -> list[Layout]:
    """Layouts from a path to a file (blank-line separated layouts), a folder (every ``*.txt``, sorted), a layout
    string (a string with a line break is always one), or a list of any of these."""
    if isinstance(source, (list, tuple)):
        return [layout for item in source for layout in load_layouts(item)]
    path = Path(source)
    if isinstance(source, str) and ("\n" in source or not path.exists()):
        if "\n" in source or set(source) <= set(ALLOWED) | {" "}:
            return _parse_many(source, "layout string")
    if path.is_dir():
        files = sorted(path.glob("*.txt"))
        if not files:
            raise ValueError(f"no *.txt layout files in folder {path}")
        return [layout for file in files for layout in _parse_many(_read_text(file), str(file))]
    if path.is_file():
        return _parse_many(_read_text(path), str(path))
    raise ValueError(f"{source!r} is neither a layout string nor an existing file or folder")


def _read_text(path: Path) -> str:
    """The text of a layout file; ``ValueError`` if it is binary (not UTF-8, or holding NUL bytes)."""
    data = path.read_bytes()
    try:
        if b"\0" in data:
            raise UnicodeError
        return data.decode("utf-8")
    except UnicodeError:
        raise ValueError(f"{path} is not a text layout file (binary data); expected UTF-8 text with rows of "
                         f"{_allowed()}") from None


def _parse_many(text: str, origin: str) -> list[Layout]:
    blocks, block, first = [], [], 1
    for number, line in enumerate(text.split("\n") + [""], start=1):
        if line.startswith(";"):
            continue
        if line.strip():
            if not block:
                first = number
            block.append(line.rstrip())
        elif block:
            blocks.append((first, "\n".join(block)))
            block = []
    layouts = []
    for first, body in blocks:
        try:
            layouts.append(parse_layout(body))
        except ValueError as err:
            raise ValueError(f"{origin}, layout starting at line {first}: {err}") from None
    if not layouts:
        raise ValueError(f"{origin} holds no layout")
    return layouts


def _allowed() -> str:
    return "'#' wall, '.' floor, 'G' goal (at most one), 'S' start (at most one)"


def grid_distances(walls: np.ndarray, sources: np.ndarray) -> np.ndarray:
    """Breadth-first steps from each grid's source to every tile: walls [R, H, W] bool, sources [R] flat tile
    indices (row * W + col) -> [R, H, W] int64, -1 on walls and unreachable tiles. Moves: 4 neighbours, none off
    the grid. The one BFS of the package (layout checks, GridMaze shortest paths)."""
    dist = np.full(walls.shape, -1, dtype=np.int64)
    frontier = np.zeros(walls.shape, dtype=bool)
    frontier.reshape(len(walls), -1)[np.arange(len(walls)), sources] = True
    floor = ~walls
    d = 0
    while frontier.any():
        dist[frontier] = d
        grown = np.zeros_like(frontier)
        grown[:, 1:] |= frontier[:, :-1]
        grown[:, :-1] |= frontier[:, 1:]
        grown[:, :, 1:] |= frontier[:, :, :-1]
        grown[:, :, :-1] |= frontier[:, :, 1:]
        frontier = grown & floor & (dist < 0)
        d += 1
    return dist
