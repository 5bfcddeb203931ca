"""Rendering with numpy only (no display): ``ansi`` text and ``rgb_array`` frames [H, W, 3] uint8.

Frames show the layout, the goal (green), the agent (red) and the tiles or nodes visited this lifetime (blue trail).
The functions draw plain arrays, so this module imports no task module (the tasks import it).
"""
from __future__ import annotations

import numpy as np

WALL = (40, 40, 48)
FLOOR = (235, 235, 228)
TRAIL = (150, 190, 235)
GOAL = (60, 170, 80)
AGENT = (215, 50, 50)
ACTION_COLOURS = ((230, 140, 30), (120, 80, 200), (40, 160, 180), (200, 60, 140), (110, 110, 110))
TILE = 16
GRAPH_CANVAS = 256


def _disk(img: np.ndarray, cy: float, cx: float, radius: float, colour: tuple[int, int, int]) -> None:
    ys, xs = np.ogrid[:img.shape[0], :img.shape[1]]
    img[(ys - cy) ** 2 + (xs - cx) ** 2 <= radius ** 2] = colour


def _segment(img: np.ndarray, p0: np.ndarray, p1: np.ndarray, colour: tuple[int, int, int], width: float) -> None:
    ys, xs = np.ogrid[:img.shape[0], :img.shape[1]]
    d = p1 - p0
    t = np.clip(((ys - p0[0]) * d[0] + (xs - p0[1]) * d[1]) / max(d @ d, 1e-9), 0.0, 1.0)
    img[(ys - p0[0] - t * d[0]) ** 2 + (xs - p0[1] - t * d[1]) ** 2 <= width ** 2] = colour


# --------------------------------------------------------------------------------------------------------- GraphNav
def _node_centres(n: int) -> np.ndarray:
    angle = 2 * np.pi * np.arange(n) / n - np.pi / 2
    return GRAPH_CANVAS / 2 + 0.36 * GRAPH_CANVAS * np.stack([np.sin(angle), np.cos(angle)], axis=1)


def graph_frame(succ: np.ndarray, goal: int, pos: int, trail: list[int]) -> np.ndarray:
    """Graph succ [n, a] -> [256, 256, 3] frame: edges coloured by action (the dot sits near the target end),
    visited nodes blue, goal ringed green, agent red."""
    n_nodes, n_actions = succ.shape
    img = np.full((GRAPH_CANVAS, GRAPH_CANVAS, 3), FLOOR, dtype=np.uint8)
    centres = _node_centres(n_nodes)
    radius = GRAPH_CANVAS * 0.06
    for node in range(n_nodes):
        for action in range(n_actions):
            target = succ[node, action]
            if target >= 0:
                colour = ACTION_COLOURS[action % len(ACTION_COLOURS)]
                shift = 3.0 * (action - (n_actions - 1) / 2)
                normal = np.array([1.0, -1.0]) * (centres[target] - centres[node])[::-1]
                offset = shift * normal / max(np.linalg.norm(normal), 1e-9)
                p0, p1 = centres[node] + offset, centres[target] + offset
                _segment(img, p0, p1, colour, 1.5)
                _disk(img, *(p0 + 0.72 * (p1 - p0)), 4, colour)
    visited = set(trail)
    for node in range(n_nodes):
        if node == goal:
            _disk(img, *centres[node], radius + 4, GOAL)
        _disk(img, *centres[node], radius, TRAIL if node in visited else WALL)
    _disk(img, *centres[pos], radius * 0.6, AGENT)
    return img


def graph_ansi(succ: np.ndarray, goal: int, pos: int) -> str:
    """Text: one line per node of succ [n, a] listing ``action->target`` edges (``@`` agent, ``G`` goal)."""
    lines = []
    for node in range(succ.shape[0]):
        edges = " ".join(f"{a}->{t}" if t >= 0 else f"{a}->." for a, t in enumerate(succ[node]))
        mark = "@" if node == pos else ("G" if node == goal else " ")
        lines.append(f"{mark} {node}: {edges}")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------------- GridMaze
def grid_frame(walls: np.ndarray, goal: tuple[int, int], agent: tuple[int, int],
               trail: list[tuple[int, int]]) -> np.ndarray:
    """Grid walls [H, W] -> [16 H, 16 W, 3] frame: walls dark, trail blue, goal green, agent red."""
    colours = np.where(walls[..., None], np.array(WALL, dtype=np.uint8), np.array(FLOOR, dtype=np.uint8))
    for r, c in set(trail):
        colours[r, c] = TRAIL
    colours[goal] = GOAL
    img = np.repeat(np.repeat(colours, TILE, axis=0), TILE, axis=1)
    r, c = agent
    _disk(img, (r + 0.5) * TILE - 0.5, (c + 0.5) * TILE - 0.5, TILE * 0.35, AGENT)
    return img


def grid_ansi(walls: np.ndarray, goal: tuple[int, int], agent: tuple[int, int],
              trail: list[tuple[int, int]]) -> str:
    """Text grid of walls [H, W]: ``#`` wall, ``.`` floor, ``+`` visited, ``G`` goal, ``@`` agent."""
    chars = np.where(walls, "#", ".").astype("<U1")
    for r, c in set(trail):
        chars[r, c] = "+"
    chars[goal] = "G"
    chars[agent] = "@"
    return "\n".join("".join(line) for line in chars) + "\n"
