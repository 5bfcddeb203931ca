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
final "none" slot [a + 1], previous reward, steps taken / episode_steps. ``privileged_obs=True`` appends the
shortest-path distance to the goal, for an asymmetric critic only (10 more values).

Differences from the official code, all in the observation (the dynamics are the same):

* The official input has a constant-zero slot, a "bias" slot that collides with the "no previous action" slot
  (so it is always 1 and "none" is not distinguishable), and a previous-reward slot that is always 0 (the reward is
  zeroed before the input is built). Here "none" has its own slot and the previous reward is really observed.
  There is no bias slot (networks have biases). Hence 16 inputs, not 17.
* The official code feeds the same time fraction (step / 30 before acting); here the observation after the k-th
  step carries k / episode_steps, i.e. the same value at the same decision point (0 at reset).

Splits (:func:`~fwm_rl.envs.graphs.split_graphs`): "train" and "test" are the paper's fixed sets of 600 graphs; "val"
is our frozen set of 600 graphs, none isomorphic to a train or test graph, for model selection; "procedural" draws a
fresh graph per lifetime from the env's ``np_random`` and redraws any graph isomorphic to a val or test graph. No two
of train, val and test share a graph up to node relabelling. With ``layout_order="sequential"`` env i of n gets
graphs i, i+n, ... so 600 envs on "train" reproduce the paper's slot j -> graph j.
"""
from __future__ import annotations

import numpy as np

from fwm_rl.envs.checks import check_choice, check_int
from fwm_rl.envs.dynamics import BatchedDynamics
from fwm_rl.envs.env import TaskEnv, TaskVectorEnv
from fwm_rl.envs.graphs import canonical_graph_ids, graph_id, sample_graphs, shortest_paths, split_graphs
from fwm_rl.envs.render import graph_ansi, graph_frame
from fwm_rl.envs.streams import draw_index, draw_other

ENV_ID = "FWM/GraphNav-v0"
GRAPH_SPLITS = ("train", "val", "test", "procedural")
MAX_NODES = MAX_ACTIONS = 16  # the val and paper sets take a few seconds to draw at this size
GOAL_REWARD = 10.0
NO_EDGE_PENALTY = 0.05


class GraphNavDynamics(BatchedDynamics):
    """Batched GraphNav dynamics (see the module docstring). Row state: graph ``succ`` [B, n, a], ``goal`` [B],
    ``pos`` [B] and ``timeout_at`` [B], the official timeout counter kept as the step count t at which the next
    non-goal step times out (so it needs no update on ordinary steps). Per-row tables filled when a lifetime starts:
    ``next_node`` [B, n a] (the node after each (node, action); the same node where there is no edge),
    ``edge_reward`` [B, n a] and ``dist`` [B, n, n]."""

    def __init__(self, n_rows: int, split: str = "train", n_nodes: int = 5, n_actions: int = 3,
                 episode_steps: int = 30, layout_order: str = "random",
                 privileged_obs: bool = False) -> None:
        check_choice("split", split, GRAPH_SPLITS)
        self.n_nodes = check_int("n_nodes", n_nodes, 3, MAX_NODES)
        self.n_actions = check_int("n_actions", n_actions, 3, MAX_ACTIONS)  # fewer leaves the sampler no free slot
        self.split = split
        n, a = self.n_nodes, self.n_actions
        self.forbidden: frozenset[str] = frozenset()  # canonical ids that "procedural" redraws
        if split == "procedural":
            self.bank = None
            held_out = np.concatenate([split_graphs("val", n, a), split_graphs("test", n, a)])
            self.forbidden = frozenset(canonical_graph_ids(held_out))
        else:
            self.bank = split_graphs(split, n, a)
            self.bank_tables = self._tables(self.bank)
            self.bank_ids = [graph_id(g) for g in self.bank]
        super().__init__(n_rows, episode_steps, None if self.bank is None else len(self.bank), layout_order,
                         privileged_obs)
        n, a = self.n_nodes, self.n_actions
        self.succ = np.zeros((n_rows, n, a), dtype=np.int64)
        self.next_node = np.zeros((n_rows, n * a), dtype=np.int64)
        self.edge_reward = np.zeros((n_rows, n * a), dtype=np.float32)
        self.dist = np.zeros((n_rows, n, n), dtype=np.int64)
        self._link_views()
        self._edge_start = self.rows * (n * a)  # [B] offset of each row in the flat (node, action) tables
        self._dist_start = self.rows * (n * n)
        self.goal = np.zeros(n_rows, dtype=np.int64)
        self.pos = np.ones(n_rows, dtype=np.int64)
        self.timeout_at = np.zeros(n_rows, dtype=np.int64)
        self._init_observation(2 * n, -NO_EDGE_PENALTY, GOAL_REWARD)
        self._pos_slot = self._obs_start + n  # [B] flat index of each row's "node 0" slot

    def _link_views(self) -> None:
        super()._link_views()
        self._next_flat, self._reward_flat = self.next_node.reshape(-1), self.edge_reward.reshape(-1)
        self._dist_flat = self.dist.reshape(-1)

    def _tables(self, succ: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Graphs succ [G, n, a] -> (succ, next_node [G, n a], edge_reward [G, n a], dist [G, n, n])."""
        edge = succ >= 0
        next_node = np.where(edge, succ, np.arange(self.n_nodes)[:, None]).reshape(len(succ), -1)
        edge_reward = np.where(edge, 0.0, -NO_EDGE_PENALTY).astype(np.float32).reshape(len(succ), -1)
        return succ, next_node, edge_reward, shortest_paths(succ)

    def _draw(self, rows: np.ndarray, high: np.ndarray) -> np.ndarray:
        return draw_index(self.streams.uniform(rows)[:, 0], high)

    def _start_lifetime(self, rows: np.ndarray, layout_index: np.ndarray | None) -> None:
        if layout_index is None:
            graphs = sample_graphs(self._draw, rows, self.n_nodes, self.n_actions, self.forbidden)
            tables = self._tables(graphs)
            ids = [graph_id(g) for g in graphs]
        else:
            tables = [table[layout_index] for table in self.bank_tables]
            ids = [self.bank_ids[i] for i in layout_index.tolist()]
        for row_table, table in zip((self.succ, self.next_node, self.edge_reward, self.dist), tables):
            row_table[rows] = table
        for row, layout in zip(rows.tolist(), ids):
            self.layout_ids[row] = layout
        u = self.streams.uniform(rows, 2)
        self.goal[rows] = draw_index(u[:, 0], self.n_nodes)
        self.pos[rows] = draw_other(u[:, 1], self.n_nodes, self.goal[rows])
        self.timeout_at[rows] = self.n_nodes  # the clock t restarts at 0

    def _move(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        edge = self._edge_start + self.pos * self.n_actions + actions
        self.pos = self._next_flat[edge]
        rewards = self._reward_flat[edge]
        hit = self.pos == self.goal
        restart = (hit | (self.t >= self.timeout_at)).nonzero()[0]  # the clock t ticks after the move
        if restart.size:
            self._restart(restart, hit[restart], rewards)
        return rewards, hit, restart

    def _restart(self, rows: np.ndarray, hit: np.ndarray, rewards: np.ndarray) -> None:
        """Rows that reached the goal (``hit`` [R]: reward it) or timed out: new goal other than the current one,
        agent anywhere but on the new goal. A goal step does not count towards the timeout (official code)."""
        goal_rows, timeout = rows[hit], rows[~hit]
        rewards[goal_rows] = GOAL_REWARD
        self.timeout_at[goal_rows] += 1
        self.timeout_at[timeout] = self.t[timeout] + (self.n_nodes + 1)
        self.prev_action[timeout] = self.n_actions
        u = self.streams.uniform(rows, 2)
        self.goal[rows] = goal = draw_other(u[:, 0], self.n_nodes, self.goal[rows])
        self.pos[rows] = draw_other(u[:, 1], self.n_nodes, goal)

    def shortest_path(self) -> np.ndarray:
        return self._dist_flat[self._dist_start + self.pos * self.n_nodes + self.goal]

    def positions(self) -> np.ndarray:
        return self.pos

    def _observe_features(self, obs: np.ndarray, flat: np.ndarray) -> None:
        flat[self._obs_start + self.goal] = 1.0
        flat[self._pos_slot + self.pos] = 1.0

    def oracle_actions(self) -> np.ndarray:
        nxt = self.succ[self.rows, self.pos]  # [B, a]
        remaining = self.dist[self.rows[:, None], np.maximum(nxt, 0), self.goal[:, None]]
        return np.argmin(np.where(nxt >= 0, remaining, self.n_nodes + 1), axis=1)


class GraphNavEnv(TaskEnv):
    """``FWM/GraphNav-v0`` (single env). Kwargs: split ("train", "val", "test", "procedural"), n_nodes, n_actions,
    episode_steps, layout_order, privileged_obs (see :class:`~fwm_rl.envs.dynamics.BatchedDynamics`)."""

    env_id = ENV_ID
    dynamics_class = GraphNavDynamics

    def draw(self, mode: str) -> str | np.ndarray:
        d = self.dynamics
        if mode == "rgb_array":
            return graph_frame(d.succ[0], d.goal[0], d.pos[0], self.trail)
        head = (f"t={d.t[0]}/{d.episode_steps} agent={d.pos[0]} goal={d.goal[0]} goals={d.goals_reached[0]} "
                f"graph={d.layout_ids[0]}")
        return head + "\n" + graph_ansi(d.succ[0], d.goal[0], d.pos[0])


class GraphNavVectorEnv(TaskVectorEnv):
    """Native batched ``FWM/GraphNav-v0``: ``num_envs`` graphs stepped by one numpy call."""

    env_id = ENV_ID
    dynamics_class = GraphNavDynamics
