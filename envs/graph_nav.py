"""``FWM/GraphNav-v0``: the meta-RL task of the FWM paper (Schlag, Munkhdalai, Schmidhuber, ICLR 2021).

Each lifetime (30 steps) uses one random deterministic graph (5 nodes, 3 actions, 10 edges; see
:mod:`fwm_rl.envs.graphs`). The agent sees the goal node and its own node, never the graph, so it must explore the
edges and remember them. Dynamics follow the official ``metaRL/train_agent.py`` exactly:

* start: goal uniform, agent uniform among the other nodes;
* an action with no edge: reward -0.05, the agent stays, the timeout counter goes up;
* a move onto the goal: reward +10, a new goal (not the old one) and a teleport to a node other than the new goal;
  the timeout counter is *not* reset (as in the official code);
* any other move: the agent moves, the timeout counter goes up;
* timeout: once the counter exceeds n_nodes, goal and agent are resampled as after a goal, the previous action
  becomes "none" and the counter restarts.

Observation (float32, 2n + a + 3 = 16 values): goal one-hot [n], node one-hot [n], previous action one-hot with a
final "none" slot [a + 1], previous reward, steps taken / episode_steps.

Differences from the official code, all in the observation (the dynamics are the same):

* The official input has a constant-zero slot, a "bias" slot that collides with the "no previous action" slot
  (so it is always 1 and "none" is not distinguishable), and a previous-reward slot that is always 0 (the reward is
  zeroed before the input is built). Here "none" has its own slot and the previous reward is really observed.
  There is no bias slot (networks have biases). Hence 16 inputs, not 17.
* The official code feeds the same time fraction (step / 30 before acting); here the observation after the k-th
  step carries k / episode_steps, i.e. the same value at the same decision point (0 at reset).

Splits: "train" and "test" are the paper's fixed sets of 600 graphs (:func:`paper_graph_sets`); "procedural" draws
a fresh graph per lifetime from the env's ``np_random`` and never returns a test graph. With ``layout_order=
"sequential"`` env i of n gets graphs i, i+n, ... so 600 envs on "train" reproduce the paper's slot j -> graph j.
"""
from __future__ import annotations

import numpy as np

from fwm_rl.envs.core import BatchedCore, check_choice, check_int
from fwm_rl.envs.env import CoreEnv, CoreVectorEnv
from fwm_rl.envs.graphs import graph_id, paper_graph_sets, sample_graphs, shortest_paths
from fwm_rl.envs.streams import draw_index, draw_other

GRAPH_SPLITS = ("train", "test", "procedural")
GOAL_REWARD = 10.0
NO_EDGE_PENALTY = 0.05


class GraphNavCore(BatchedCore):
    """Batched GraphNav dynamics (see the module docstring). Row state: graph ``succ`` [B, n, a], ``goal`` [B],
    ``pos`` [B], ``timer`` [B]."""

    def __init__(self, n_rows: int, split: str = "train", n_nodes: int = 5, n_actions: int = 3,
                 episode_steps: int = 30, layout_order: str = "random") -> None:
        check_choice("split", split, GRAPH_SPLITS)
        self.n_nodes = check_int("n_nodes", n_nodes, 3)
        self.n_actions = check_int("n_actions", n_actions, 3)  # fewer leaves the sampler no free (node, action)
        self.split = split
        sets = paper_graph_sets(self.n_nodes, self.n_actions)
        self.forbidden = frozenset(g.tobytes() for g in sets["test"])
        self.bank = None if split == "procedural" else sets[split]
        self.bank_dist = None if self.bank is None else shortest_paths(self.bank)
        self.bank_ids = None if self.bank is None else [graph_id(g) for g in self.bank]
        super().__init__(n_rows, episode_steps, None if self.bank is None else len(self.bank), layout_order)
        n, a = self.n_nodes, self.n_actions
        self.succ = np.zeros((n_rows, n, a), dtype=np.int64)
        self.dist = np.zeros((n_rows, n, n), dtype=np.int64)
        self.goal = np.zeros(n_rows, dtype=np.int64)
        self.pos = np.ones(n_rows, dtype=np.int64)
        self.timer = np.zeros(n_rows, dtype=np.int64)
        self._ar = np.arange(n_rows)
        self.obs_low = np.zeros(2 * n + a + 3, dtype=np.float32)
        self.obs_high = np.ones(2 * n + a + 3, dtype=np.float32)
        self.obs_low[-2], self.obs_high[-2] = -NO_EDGE_PENALTY, GOAL_REWARD
        self._rewards = np.array([-NO_EDGE_PENALTY, 0.0, GOAL_REWARD], dtype=np.float32)
        self._eye_node = np.eye(n, dtype=np.float32)
        self._eye_action = np.eye(a + 1, dtype=np.float32)

    def _draw(self, rows: np.ndarray, high: np.ndarray) -> np.ndarray:
        return draw_index(self.streams.uniform(rows)[:, 0], high)

    def _start_lifetime(self, rows: np.ndarray, layout_index: np.ndarray | None) -> None:
        if layout_index is None:
            graphs = sample_graphs(self._draw, rows, self.n_nodes, self.n_actions, self.forbidden)
            self.succ[rows] = graphs
            self.dist[rows] = shortest_paths(graphs)
            ids = [graph_id(g) for g in graphs]
        else:
            self.succ[rows] = self.bank[layout_index]
            self.dist[rows] = self.bank_dist[layout_index]
            ids = [self.bank_ids[i] for i in layout_index]
        for row, layout in zip(rows, ids):
            self.layout_ids[row] = layout
        u = self.streams.uniform(rows, 2)
        self.goal[rows] = draw_index(u[:, 0], self.n_nodes)
        self.pos[rows] = draw_other(u[:, 1], self.n_nodes, self.goal[rows])
        self.timer[rows] = 0

    def _new_goal(self, rows: np.ndarray) -> None:
        """Goal other than the current one, agent anywhere but on the new goal (after a goal and a timeout)."""
        u = self.streams.uniform(rows, 2)
        self.goal[rows] = draw_other(u[:, 0], self.n_nodes, self.goal[rows])
        self.pos[rows] = draw_other(u[:, 1], self.n_nodes, self.goal[rows])

    def _move(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        nxt = self.succ[self._ar, self.pos, actions]
        valid = nxt >= 0
        hit = nxt == self.goal
        self.pos = np.where(valid, nxt, self.pos)
        self.timer += ~hit
        rewards = self._rewards[np.add(valid, hit, dtype=np.intp)]  # no edge, move, goal (a goal implies an edge)
        timeout = self.timer > self.n_nodes
        restart = hit | timeout
        if restart.any():
            self._new_goal(np.flatnonzero(restart))
            if timeout.any():
                self.prev_action[timeout] = self.n_actions
                self.timer[timeout] = 0
        return rewards, hit, restart

    def shortest_path(self) -> np.ndarray:
        return self.dist[self._ar, self.pos, self.goal]

    def positions(self) -> np.ndarray:
        return self.pos

    def observe(self) -> np.ndarray:
        return np.concatenate([
            self._eye_node[self.goal], self._eye_node[self.pos], self._eye_action[self.prev_action],
            self.prev_reward[:, None], (self.t * np.float32(1 / self.episode_steps))[:, None],
        ], axis=1, dtype=np.float32)

    def oracle_actions(self) -> np.ndarray:
        nxt = self.succ[self._ar, self.pos]  # [B, a]
        remaining = self.dist[self._ar[:, None], np.maximum(nxt, 0), self.goal[:, None]]
        return np.argmin(np.where(nxt >= 0, remaining, self.n_nodes + 1), axis=1)


class GraphNavEnv(CoreEnv):
    """``FWM/GraphNav-v0`` (single env). Kwargs: split, n_nodes, n_actions, episode_steps, layout_order."""

    core_class = GraphNavCore

    def draw(self, mode: str) -> str | np.ndarray:
        from fwm_rl.envs.render import graph_ansi, graph_frame

        return graph_ansi(self.core, 0) if mode == "ansi" else graph_frame(self.core, 0, self.trail)


class GraphNavVectorEnv(CoreVectorEnv):
    """Native batched ``FWM/GraphNav-v0``: ``num_envs`` graphs stepped by one numpy call."""

    core_class = GraphNavCore
