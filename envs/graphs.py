"""Random deterministic POMDP graphs of the FWM paper (Schlag et al., ICLR 2021, metaRL experiment).

A graph is ``succ[node, action]``: the successor node, or -1 where that action has no edge. Sampling follows the
official ``sample_adjacency_matrix`` procedure and its draw order:

1. for each node in order: a successor among the other nodes (ascending), then an action;
2. for each target node in order: a (from, action) pair among those with no edge yet and from != target, listed
   action-major (the order of ``np.where`` over ``[action, from]``);
3. reject unless every entry of the binary adjacency raised to the power 2**n_nodes is positive (strongly connected
   and aperiodic).

With 5 nodes and 3 actions every graph has exactly 10 edges. The paper's sets come from ``np.random.RandomState(666)``:
600 test graphs, then 600 train graphs, each redrawn while it equals a test graph. Here a train graph is redrawn while
it is *isomorphic* to a test graph (equal up to relabelling the nodes, :func:`canonical_graph_id`); with 5 nodes and 3
actions no official train graph is, so both rules give the official sets (tested against frozen digests).

The val set (:func:`graph_sets`) is ours: up to 600 graphs drawn by the same procedure from its own
``RandomState(VAL_DATA_SEED)``, each redrawn while it is isomorphic to a train, test or earlier val graph. For 5
nodes and 3 actions it ships frozen in ``data/graphnav-val-nodes5-actions3.txt`` (written by ``python -m
fwm_rl.envs.graphs``); other sizes are generated the same way on first use.
"""
from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import AbstractSet, Callable

import numpy as np

PAPER_DATA_SEED = 666
PAPER_SET_SIZE = 600
VAL_DATA_SEED = 20260509
DATA_DIR = Path(__file__).parent / "data"
_MAX_ATTEMPTS = 2000

Draw = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""draw(rows [R], high [R]) -> [R] ints, row r uniform in [0, high[r])."""


def sample_graphs(draw: Draw, rows: np.ndarray, n_nodes: int, n_actions: int,
                  forbidden: AbstractSet[str] = frozenset()) -> np.ndarray:
    """One accepted graph per entry of ``rows`` -> succ [R, n_nodes, n_actions] int8.

    ``forbidden`` holds :func:`canonical_graph_id` of graphs that must be redrawn, with all their relabellings (the
    held-out sets).
    """
    succ = np.empty((len(rows), n_nodes, n_actions), dtype=np.int8)
    pending = np.arange(len(rows))
    for _ in range(_MAX_ATTEMPTS):
        if not pending.size:
            return succ
        drawn = _draw_candidates(draw, rows[pending], n_nodes, n_actions)
        ok = _connected_aperiodic(drawn)
        if forbidden:
            ok[ok] = [key not in forbidden for key in canonical_graph_ids(drawn[ok])]
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


def canonical_graph_ids(succ: np.ndarray) -> list[str]:
    """Ids of graphs succ [G, n, a] up to node relabelling: two graphs share an id iff one is the other with its
    nodes renamed (actions keep their labels). Graphs must be strongly connected (every sampled graph is).

    Each node as a start gives one labelling, breadth-first: a node at depth d is numbered after all nodes of
    smaller depth, in the order of its first edge (number of the source, action) from depth d - 1. In a
    deterministic, strongly connected graph this labelling is fixed by the start alone, so the lexicographically
    smallest of the n relabelled successor tables is a canonical form; its :func:`graph_id` is the id.
    """
    g, n, a = succ.shape
    if not g:
        return []
    tables = np.repeat(np.asarray(succ, dtype=np.int64), n, axis=0)  # [K = G n, n, a]: traversal k starts at k mod n
    k = len(tables)
    ar = np.arange(k)
    depth = np.repeat(shortest_paths(succ), n, axis=0)[ar, np.tile(np.arange(n), g)]  # [K, n] steps from the start
    if (depth >= n).any():
        raise ValueError("canonical_graph_ids needs strongly connected graphs")
    label = np.where(depth == 0, 0, -1)  # [K, n] new number of each node
    numbered = np.ones(k, dtype=np.int64)
    reaches = tables[..., None] == np.arange(n)  # [K, n from, a, n to]
    edge_key = np.arange(a)
    no_key = n * a
    for d in range(1, int(depth.max()) + 1):
        key = np.where((depth == d - 1)[:, :, None], label[:, :, None] * a + edge_key, no_key)  # [K, n, a]
        first = np.where(reaches, key[..., None], no_key).min((1, 2))  # [K, n] first edge into each node
        level = depth == d
        rank = np.argsort(np.argsort(np.where(level, first, no_key), axis=1, kind="stable"), axis=1)
        label = np.where(level, numbered[:, None] + rank, label)
        numbered += level.sum(1)
    mapped = np.where(tables >= 0, np.take_along_axis(label, np.maximum(tables, 0).reshape(k, -1), 1).reshape(k, n, a),
                      -1)
    relabelled = np.empty_like(mapped)
    relabelled[ar[:, None], label] = mapped  # node i becomes node label[i]
    flat = relabelled.reshape(k, n * a)
    order = np.lexsort(np.vstack([flat.T[::-1], ar // n]))  # by graph, then lexicographically
    return [graph_id(code.reshape(n, a)) for code in flat[order[::n]]]


def _random_state_draw(rs: np.random.RandomState) -> Draw:
    return lambda rows, high: np.array([rs.randint(0, h) for h in high], dtype=np.int64)


def _draw_set(rs: np.random.RandomState, count: int, n_nodes: int, n_actions: int,
              forbidden: AbstractSet[str] = frozenset(), distinct: bool = False) -> np.ndarray:
    """``count`` graphs drawn from ``rs`` in turn, each redrawn while it is isomorphic to a ``forbidden`` graph (or,
    if ``distinct``, to an earlier graph of the set; then the set stops early when no new graph turns up)
    -> succ [<= count, n, a], read-only. Redrawing here draws the same stream as ``sample_graphs(..., forbidden)``."""
    draw, one = _random_state_draw(rs), np.zeros(1, dtype=np.int64)
    taken = set(forbidden)
    graphs: list[np.ndarray] = []
    rejected = 0
    while len(graphs) < count:
        graph = sample_graphs(draw, one, n_nodes, n_actions)
        key = canonical_graph_ids(graph)[0] if taken or distinct else ""
        if key in taken:
            rejected += 1
            if rejected < _MAX_ATTEMPTS:
                continue
            if distinct and graphs:
                break
            raise ValueError(f"no acceptable graph with n_nodes={n_nodes}, n_actions={n_actions} in {_MAX_ATTEMPTS} "
                             "draws (too few distinct graphs outside the held-out sets); use more nodes or actions")
        rejected = 0
        graphs.append(graph[0])
        if distinct:
            taken.add(key)
    out = np.stack(graphs)
    out.flags.writeable = False
    return out


@functools.cache
def paper_graph_sets(n_nodes: int = 5, n_actions: int = 3) -> dict[str, np.ndarray]:
    """The fixed benchmark sets {"test", "train"} -> succ [600, n, a] from ``RandomState(666)``, test drawn first."""
    rs = np.random.RandomState(PAPER_DATA_SEED)
    test = _draw_set(rs, PAPER_SET_SIZE, n_nodes, n_actions)
    train = _draw_set(rs, PAPER_SET_SIZE, n_nodes, n_actions, frozenset(canonical_graph_ids(test)))
    return {"test": test, "train": train}


def val_path(n_nodes: int, n_actions: int) -> Path:
    return DATA_DIR / f"graphnav-val-nodes{n_nodes}-actions{n_actions}.txt"


def build_val(n_nodes: int, n_actions: int) -> np.ndarray:
    """Generate the val set (see the module docstring) -> succ [<= 600, n, a]."""
    paper = paper_graph_sets(n_nodes, n_actions)
    forbidden = frozenset(canonical_graph_ids(np.concatenate([paper["train"], paper["test"]])))
    return _draw_set(np.random.RandomState(VAL_DATA_SEED), PAPER_SET_SIZE, n_nodes, n_actions, forbidden,
                     distinct=True)


def _read_val(path: Path, n_nodes: int, n_actions: int) -> np.ndarray:
    """Graphs of a val file: one per line, its id then succ row-major; ``;`` lines are comments."""
    graphs = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if line.startswith(";") or not line.strip():
            continue
        key, *values = line.split()
        graph = np.array(values, dtype=np.int8).reshape(n_nodes, n_actions)
        if graph_id(graph) != key:
            raise ValueError(f"{path}, line {number}: graph does not match its id {key}")
        graphs.append(graph)
    out = np.stack(graphs)
    out.flags.writeable = False
    return out


@functools.cache
def graph_sets(n_nodes: int = 5, n_actions: int = 3) -> dict[str, np.ndarray]:
    """The frozen sets {"train", "val", "test"} -> succ [G, n, a]: the paper's train and test sets and our val set
    (shipped file if present, else generated)."""
    path = val_path(n_nodes, n_actions)
    val = _read_val(path, n_nodes, n_actions) if path.exists() else build_val(n_nodes, n_actions)
    return paper_graph_sets(n_nodes, n_actions) | {"val": val}


def write_val() -> None:
    """Regenerate the shipped val file (5 nodes, 3 actions)."""
    n_nodes, n_actions = 5, 3
    graphs = build_val(n_nodes, n_actions)
    header = (f"; fwm-rl GraphNav val graphs: {len(graphs)} graphs, {n_nodes} nodes, {n_actions} actions, drawn from "
              f"RandomState({VAL_DATA_SEED}) by the official sampler,\n; none isomorphic to a train, test or other val "
              "graph. One graph per line: graph_id, then succ[node, action] row-major (-1: no edge).\n")
    body = "".join(f"{graph_id(g)} {' '.join(map(str, g.ravel().tolist()))}\n" for g in graphs)
    val_path(n_nodes, n_actions).write_text(header + body)


if __name__ == "__main__":
    write_val()
