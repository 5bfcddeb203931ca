"""FWM/GraphNav-v0: the paper's graphs, the val split, dynamics against a naive simulator, reference scores."""
import hashlib
import itertools

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils import seeding

import fwm_rl.envs
from fwm_rl.envs.graph_nav import GOAL_REWARD, NO_EDGE_PENALTY
from fwm_rl.envs.graphs import (VAL_DATA_SEED, PAPER_DATA_SEED, build_val, canonical_graph_ids, graph_id, graph_sets,
                                paper_graph_sets, shortest_paths, val_path)


def naive_official_sampler(rs: np.random.RandomState, n: int = 5, a: int = 3) -> np.ndarray:
    """The official sampling procedure written out with nested lists (A[action][from][to])."""
    while True:
        A = [[[0] * n for _ in range(n)] for _ in range(a)]
        for src in range(n):
            others = [i for i in range(n) if i != src]
            dst = others[rs.randint(0, len(others))]
            A[rs.randint(0, a)][src][dst] = 1
        for dst in range(n):
            options = [(src, act) for act in range(a) for src in range(n) if sum(A[act][src]) == 0 and src != dst]
            src, act = options[rs.randint(0, len(options))]
            A[act][src][dst] = 1
        reach = [[any(A[act][i][j] for act in range(a)) for j in range(n)] for i in range(n)]
        for _ in range(n):
            reach = [[any(reach[i][k] and reach[k][j] for k in range(n)) for j in range(n)] for i in range(n)]
        if all(all(row) for row in reach):
            succ = np.full((n, a), -1, dtype=np.int8)
            for act in range(a):
                for i in range(n):
                    for j in range(n):
                        if A[act][i][j]:
                            succ[i, act] = j
            return succ


def test_paper_test_set_matches_the_official_procedure_drawn_from_random_state_666():
    rs = np.random.RandomState(666)
    expected = np.stack([naive_official_sampler(rs) for _ in range(40)])
    np.testing.assert_array_equal(paper_graph_sets()["test"][:40], expected)


def test_paper_sets_have_600_graphs_of_ten_edges_and_train_never_equals_test():
    sets = paper_graph_sets()
    assert sets["test"].shape == sets["train"].shape == (600, 5, 3)
    for graphs in sets.values():
        assert ((graphs >= 0).sum((1, 2)) == 10).all()
        assert (shortest_paths(graphs) < 5).all()  # strongly connected
    assert not {g.tobytes() for g in sets["train"]} & {g.tobytes() for g in sets["test"]}
    off_diagonal = ~np.eye(5, dtype=bool)
    assert shortest_paths(sets["test"])[:, off_diagonal].mean() == pytest.approx(1.75, abs=0.02)


def naive_lifetime(succ, rng, actions, steps=30, layout_draw=True):
    """Per-step simulator of the official rules reading the env's Generator doubles in the env's order."""
    n, a = succ.shape
    if layout_draw:
        rng.random()  # the layout index
    other = lambda u, exclude: (lambda k: k + (k >= exclude))(int(u * (n - 1)))
    goal = int(rng.random() * n)
    pos = other(rng.random(), goal)
    timer, prev_action, prev_reward, out = 0, a, 0.0, []
    for t in range(steps):
        act = actions[t]
        prev_action = act
        nxt = succ[pos, act]
        if nxt < 0:
            reward, timer = -NO_EDGE_PENALTY, timer + 1
        elif nxt == goal:
            reward = GOAL_REWARD
            goal = other(rng.random(), goal)
            pos = other(rng.random(), goal)
        else:
            reward, timer, pos = 0.0, timer + 1, nxt
        if timer > n:
            goal = other(rng.random(), goal)
            pos = other(rng.random(), goal)
            prev_action, timer = a, 0
        prev_reward = reward
        obs = np.zeros(2 * n + a + 3, dtype=np.float32)
        obs[goal] = obs[n + pos] = obs[2 * n + prev_action] = 1
        obs[-2], obs[-1] = prev_reward, (t + 1) / steps
        out.append((obs, reward))
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dynamics_match_a_naive_per_step_simulator(seed):
    env = gym.make("FWM/GraphNav-v0", split="test")
    _, info = env.reset(seed=seed)
    succ = paper_graph_sets()["test"][[graph_id(g) for g in paper_graph_sets()["test"]].index(info["layout_id"])]
    actions = np.random.default_rng(seed).integers(3, size=30).tolist()
    expected = naive_lifetime(succ.astype(int), seeding.np_random(seed)[0], actions)
    for t, (exp_obs, exp_reward) in enumerate(expected):
        obs, reward, terminated, truncated, _ = env.step(actions[t])
        np.testing.assert_allclose(obs, exp_obs, atol=1e-6)
        assert reward == pytest.approx(exp_reward)
        assert not terminated and truncated == (t == 29)


def test_reference_policies_land_on_the_spec_sanity_values_over_the_600_test_graphs():
    kwargs = dict(seed=0, split="test", layout_order="sequential")
    random = fwm_rl.envs.run_reference("FWM/GraphNav-v0", "random", 600, **kwargs)
    oracle = fwm_rl.envs.run_reference("FWM/GraphNav-v0", "oracle", 600, **kwargs)
    test_ids = {graph_id(g) for g in paper_graph_sets()["test"]}
    assert {s.layout_id for s in random} == {s.layout_id for s in oracle} == test_ids
    assert np.mean([s.episode_return for s in random]) == pytest.approx(45.2, abs=3.0)
    assert np.mean([s.episode_return for s in oracle]) == pytest.approx(167.0, abs=3.0)
    assert all(r == pytest.approx(1.0) for s in oracle for r in s.exploit_ratios)


def test_sequential_order_gives_env_j_train_graph_j_every_lifetime():
    vec = fwm_rl.envs.make_vec_env("FWM/GraphNav-v0", 600, seed=0, layout_order="sequential")
    train_ids = [graph_id(g) for g in paper_graph_sets()["train"]]
    vec.reset()
    assert [info["layout_id"] for info in vec.reset_infos] == train_ids
    for _ in range(30):
        _, _, dones, infos = vec.step(np.zeros(600, dtype=np.int64))
    assert dones.all() and [info["layout_id"] for info in infos] == train_ids
    assert [info["layout_id"] for info in vec.core.row_infos()] == train_ids


def relabel(succ: np.ndarray, perm: np.ndarray) -> np.ndarray:
    """succ [n, a] with node i renamed perm[i]."""
    out = np.empty_like(succ)
    out[perm] = np.where(succ >= 0, perm[np.maximum(succ, 0)], -1)
    return out


def brute_force_form(succ: np.ndarray) -> bytes:
    """The smallest successor table over all n! node relabellings."""
    n = succ.shape[0]
    return min(relabel(succ, np.array(p)).astype(np.int8).tobytes() for p in itertools.permutations(range(n)))


@pytest.mark.parametrize("n_nodes", [3, 5])
def test_canonical_graph_id_is_relabelling_invariant_and_agrees_with_a_brute_force_over_all_permutations(n_nodes):
    graphs = paper_graph_sets(n_nodes, 3)["test"][:80].astype(np.int64)
    ids = canonical_graph_ids(graphs)
    rng = np.random.default_rng(n_nodes)
    assert canonical_graph_ids(np.stack([relabel(g, rng.permutation(n_nodes)) for g in graphs])) == ids
    forms = [brute_force_form(g) for g in graphs]
    same_id = np.equal.outer(np.array(ids), np.array(ids))
    same_form = np.array([[f == h for h in forms] for f in forms])
    np.testing.assert_array_equal(same_id, same_form)
    assert not same_form.all()


def digest(graphs: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(graphs, dtype=np.int8).tobytes()).hexdigest()[:16]


def test_paper_train_and_test_sets_stay_bit_identical():
    """Digests of the official sets (RandomState(666), test first); the val split must not disturb them."""
    sets = graph_sets()
    assert (digest(sets["test"]), digest(sets["train"])) == ("42237a9eb779e110", "92dc8d611c8341a9")


def test_val_split_is_the_shipped_frozen_set_disjoint_from_train_and_test_up_to_node_relabelling():
    sets = graph_sets()
    assert VAL_DATA_SEED != PAPER_DATA_SEED and val_path(5, 3).exists()
    np.testing.assert_array_equal(sets["val"], build_val(5, 3))  # the file is what its own seed draws
    assert sets["val"].shape == (600, 5, 3) and ((sets["val"] >= 0).sum((1, 2)) == 10).all()
    assert (shortest_paths(sets["val"]) < 5).all()
    classes = {name: set(canonical_graph_ids(graphs)) for name, graphs in sets.items()}
    assert len(classes["val"]) == 600 and len(classes["test"]) == 600
    assert not classes["val"] & classes["train"] and not classes["val"] & classes["test"]
    assert not classes["train"] & classes["test"]


def graphs_met(split: str, n_nodes: int = 5, n_actions: int = 3, n_envs: int = 256, lifetimes: int = 4) -> np.ndarray:
    """Every graph that ``lifetimes`` resets of ``n_envs`` envs (random layout order) meet -> succ [M, n, a]."""
    venv = gym.make_vec("FWM/GraphNav-v0", num_envs=n_envs, vectorization_mode="vector_entry_point", split=split,
                        n_nodes=n_nodes, n_actions=n_actions, episode_steps=1)
    venv.reset(seed=0)
    met = [venv.unwrapped.core.succ.copy()]
    for _ in range(lifetimes - 1):
        venv.step(np.zeros(n_envs, dtype=np.int64))
        met.append(venv.unwrapped.core.succ.copy())
    return np.concatenate(met)


def test_no_train_or_val_reset_produces_a_test_graph_and_no_train_reset_a_val_graph():
    sets = graph_sets()
    classes = {name: set(canonical_graph_ids(graphs)) for name, graphs in sets.items()}
    for split, held_out in (("train", ("val", "test")), ("val", ("test",))):
        met = graphs_met(split)
        assert {graph_id(g) for g in met} <= {graph_id(g) for g in sets[split]}
        seen = set(canonical_graph_ids(met))
        assert len(seen) > 400
        for name in held_out:
            assert not seen & classes[name], (split, name)


def test_procedural_split_never_returns_a_val_or_test_graph_even_where_most_graphs_are_test_graphs():
    sets = graph_sets(3, 3)
    held_out = set(canonical_graph_ids(np.concatenate([sets["val"], sets["test"]])))
    seen = set(canonical_graph_ids(graphs_met("procedural", n_nodes=3)))
    assert seen and not seen & held_out


def test_options_change_graph_and_observation_sizes():
    env = gym.make("FWM/GraphNav-v0", n_nodes=6, n_actions=4, episode_steps=12, split="procedural")
    obs, _ = env.reset(seed=0)
    assert obs.shape == (2 * 6 + 4 + 3,) and env.action_space.n == 4
    steps = 0
    while not env.step(0)[3]:
        steps += 1
    assert steps + 1 == 12
