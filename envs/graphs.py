"""Random deterministic POMDP graphs of the FWM paper (Schlag et al., ICLR 2021, metaRL experiment).

A graph is ``succ[node, action]``: the successor node, or -1 where that action has no edge. Sampling follows the
official ``sample_adjacency_matrix`` procedure and its draw order:

1. for each node in order: a successor among the other nodes (ascending), then an action;
2. for each target node in order: a (from, action) pair among those with no edge yet and from != target, listed
   action-major (the order of ``np.where`` over ``[action, from]``);
3. reject unless every entry of the binary adjacency raised to the power 2**n_nodes is positive (strongly connected
   and aperiodic).

With 5 nodes and 3 actions every graph has exactly 10 edges. The paper's sets come from ``np.random.RandomState(666)``:
600 test graphs, then 600 train graphs, each redrawn while it equals a test graph.
"""
from __future__ import annotations

import functools
import hashlib
from typing import Callable

import numpy as np

PAPER_DATA_SEED = 666
PAPER_SET_SIZE = 600
_MAX_ATTEMPTS = 2000

Draw = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""draw(rows [R], high [R]) -> [R] ints, row r uniform in [0, high[r])."""


def sample_graphs(draw: Draw, rows: np.ndarray, n_nodes: int, n_actions: int,
                  forbidden: frozenset[bytes] = frozenset()) -> np.ndarray:
    """One accepted graph per entry of ``rows`` -> succ [R, n_nodes, n_actions] int8.

    ``forbidden`` holds ``succ.tobytes()`` of graphs that must be redrawn (the test set, for train and procedural).
    """
    succ = np.empty((len(rows), n_nodes, n_actions), dtype=np.int8)
    pending = np.arange(len(rows))
    for _ in range(_MAX_ATTEMPTS):
        if not pending.size:
            return succ
        drawn = _draw_candidates(draw, rows[pending], n_nodes, n_actions)
        ok = _connected_aperiodic(drawn)
        ok &= np.array([g.tobytes() not in forbidden for g in drawn]) if forbidden else True
        succ[pending[ok]] = drawn[ok]
        pending = pending[~ok]
    raise ValueError(f"no acceptable graph with n_nodes={n_nodes}, n_actions={n_actions} in {_MAX_ATTEMPTS} draws "
                     "(too few distinct graphs outside the test set); use more nodes or actions")


def _draw_candidates(draw: Draw, rows: np.ndarray, n_nodes: int, n_actions: int) -> np.ndarray:
    n = len(rows)
    ar = np.arange(n)
    succ = np.full((n, n_nodes, n_actions), -1, dtype=np.int8)
    for node in range(n_nodes):
        other = draw(rows, np.full(n, n_nodes - 1))
        action = draw(rows, np.full(n, n_actions))
        succ[ar, node, action] = other + (other >= node)
    pair_from = np.tile(np.arange(n_nodes), n_actions)  # action-major list of (from, action) pairs
    pair_action = np.repeat(np.arange(n_actions), n_nodes)
    for target in range(n_nodes):
        free = (succ[:, pair_from, pair_action] < 0) & (pair_from != target)  # [n, n_nodes * n_actions]
        k = draw(rows, free.sum(1))
        pick = np.argmax(np.cumsum(free, axis=1) > k[:, None], axis=1)
        succ[ar, pair_from[pick], pair_action[pick]] = target
    return succ


def adjacency(succ: np.ndarray) -> np.ndarray:
    """succ [..., n, a] -> boolean adjacency [..., n, n] (an edge by any action)."""
    n = succ.shape[-2]
    return (succ[..., :, :, None] == np.arange(n)).any(-2)


def _connected_aperiodic(succ: np.ndarray) -> np.ndarray:
    q = adjacency(succ).astype(np.float64)
    for _ in range(succ.shape[-2]):
        q = np.minimum(q @ q, 1.0)
    return (q > 0).all((-2, -1))


def shortest_paths(succ: np.ndarray) -> np.ndarray:
    """succ [G, n, a] -> dist [G, n, n] int64: fewest actions from node i to node j (0 on the diagonal)."""
    g, n, _ = succ.shape
    adj = adjacency(succ).astype(np.int64)
    reach = np.broadcast_to(np.eye(n, dtype=bool), (g, n, n)).copy()
    dist = np.where(reach, 0, n)
    for k in range(1, n):
        grown = reach | ((reach.astype(np.int64) @ adj) > 0)
        dist[grown & ~reach] = k
        reach = grown
    return dist


def graph_id(succ: np.ndarray) -> str:
    """Stable id of one graph succ [n, a]: 16 hex digits of a hash of its shape and successor table."""
    data = np.asarray(succ, dtype=np.int8)
    return hashlib.blake2b(bytes(data.shape) + data.tobytes(), digest_size=8).hexdigest()


def _random_state_draw(rs: np.random.RandomState) -> Draw:
    return lambda rows, high: np.array([rs.randint(0, h) for h in high], dtype=np.int64)


@functools.cache
def paper_graph_sets(n_nodes: int = 5, n_actions: int = 3) -> dict[str, np.ndarray]:
    """The fixed benchmark sets {"test", "train"} -> succ [600, n, a] from ``RandomState(666)``, test drawn first."""
    draw = _random_state_draw(np.random.RandomState(PAPER_DATA_SEED))
    one = np.zeros(1, dtype=np.int64)
    test = np.concatenate([sample_graphs(draw, one, n_nodes, n_actions) for _ in range(PAPER_SET_SIZE)])
    forbidden = frozenset(g.tobytes() for g in test)
    train = np.concatenate([sample_graphs(draw, one, n_nodes, n_actions, forbidden) for _ in range(PAPER_SET_SIZE)])
    for graphs in (test, train):
        graphs.flags.writeable = False
    return {"test": test, "train": train}
