"""FWM/GridMaze-v0: layouts, ids and splits, frozen sets, dynamics against a naive simulator."""
from collections import deque

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils import seeding

import fwm_rl.envs
from fwm_rl.envs import layout_id, load_layouts, parse_layout
from fwm_rl.envs.layouts import split_of
from fwm_rl.envs.mazes import (GENERATOR_VERSION, OOD_SPLITS, build_frozen, frozen_path, generate_mazes,
                               generator_can_make, handdrawn_catalogue, split_layouts, standard_configs)

ROOM = """\
#######
#..#..#
#.##.##
#.....#
#######"""


def bfs(walls: np.ndarray, source: tuple[int, int]) -> dict[tuple[int, int], int]:
    dist, queue = {source: 0}, deque([source])
    while queue:
        r, c = queue.popleft()
        for nr, nc in ((r - 1, c), (r, c + 1), (r + 1, c), (r, c - 1)):
            inside = 0 <= nr < walls.shape[0] and 0 <= nc < walls.shape[1]
            if inside and not walls[nr, nc] and (nr, nc) not in dist:
                dist[nr, nc] = dist[r, c] + 1
                queue.append((nr, nc))
    return dist


def test_layout_id_is_invariant_under_the_8_symmetries_and_separates_different_mazes():
    walls = split_layouts("test", 5, 0.0)[0].walls
    images = [np.rot90(w, k) for w in (walls, walls.T) for k in range(4)]
    assert len({layout_id(image) for image in images}) == 1
    other = split_layouts("test", 5, 0.0)[1].walls
    assert layout_id(other) != layout_id(walls)


@pytest.mark.parametrize("text, message", [
    ("#.x#\n#..#", "line 1, column 3: unknown character 'x'"),
    ("#..#\n#.#", "line 2: ragged rows"),
    ("####\n####", "at least 2 floor tiles"),
    ("#G.G#", "several goals (line 1 column 2, line 1 column 4)"),
    ("#S.S#", "several starts"),
    ("#G.#.#", "line 1, column 5: floor tile cannot reach the goal"),
    ("", "empty layout"),
])
def test_malformed_layouts_raise_value_errors_naming_line_column_and_what_is_allowed(text, message):
    with pytest.raises(ValueError) as err:
        parse_layout(text)
    assert message in str(err.value)
    if "unknown" in message:
        assert "'#' wall, '.' floor" in str(err.value)


def test_load_layouts_reads_strings_files_folders_and_lists(tmp_path):
    (tmp_path / "a.txt").write_text("; two layouts\n" + ROOM + "\n\n" + ROOM.replace("#..#", "#G.#", 1) + "\n")
    (tmp_path / "b.txt").write_text(ROOM)
    assert len(load_layouts(tmp_path)) == 3
    assert len(load_layouts([str(tmp_path / "b.txt"), ROOM])) == 2
    assert load_layouts(tmp_path / "a.txt")[1].goal == (1, 1)
    with pytest.raises(ValueError, match="a.txt, layout starting at line 2"):
        (tmp_path / "a.txt").write_text("; bad\n#.x#\n")
        load_layouts(tmp_path / "a.txt")
    with pytest.raises(ValueError, match="neither a layout string nor an existing file"):
        load_layouts("no/such/file.txt")


@pytest.mark.parametrize("how", ["load_layouts", "layout=", "layouts="])
@pytest.mark.parametrize("data", [bytes(range(256)), b"#####\n#.\0.#\n#####\n"], ids=["not-utf8", "nul-bytes"])
def test_a_binary_layout_file_is_reported_as_not_a_text_layout_file(tmp_path, how, data):
    path = tmp_path / "maze.bin"
    path.write_bytes(data)
    with pytest.raises(ValueError) as err:
        if how == "load_layouts":
            load_layouts(path)
        else:
            gym.make("FWM/GridMaze-v0", **{how[:-1]: str(path) if how == "layout=" else [str(path)]})
    assert str(err.value) == (f"{path} is not a text layout file (binary data); expected UTF-8 text with rows of "
                              "'#' wall, '.' floor, 'G' goal (at most one), 'S' start (at most one)")


@pytest.mark.parametrize("make", [load_layouts, lambda text: gym.make("FWM/GridMaze-v0", layout=text)])
def test_a_multi_line_string_is_always_a_layout_and_a_bad_character_is_reported_by_line_and_column(make):
    with pytest.raises(ValueError) as err:
        make("#####\n#.X.#\n#####")
    assert str(err.value) == ("layout string, layout starting at line 1: line 2, column 3: unknown character 'X'; "
                              "allowed: '#' wall, '.' floor, 'G' goal (at most one), 'S' start (at most one)")


@pytest.mark.parametrize("split, size, loops", [c for c in standard_configs() if c[1] <= 7])
def test_frozen_files_match_the_generator_and_hold_only_their_split(split, size, loops):
    shipped = load_layouts(frozen_path(split, size, loops))
    assert f"generator v{GENERATOR_VERSION}" in frozen_path(split, size, loops).read_text().split("\n")[0]
    assert [lay.id for lay in shipped] == [lay.id for lay in build_frozen(split, size, loops)]
    assert len({lay.id for lay in shipped}) == len(shipped)
    assert {split_of(lay.id) for lay in shipped} == {"test" if split in OOD_SPLITS else split}


def test_every_shipped_frozen_set_holds_only_ids_of_its_own_split():
    ids = {cfg: {lay.id for lay in load_layouts(frozen_path(*cfg))} for cfg in standard_configs()}
    for (split, _, _), found in ids.items():
        assert {split_of(i) for i in found} == {"test" if split in OOD_SPLITS else split}
    val = set().union(*(found for (split, _, _), found in ids.items() if split == "val"))
    assert val and not val & set().union(*(found for (split, _, _), found in ids.items() if split != "val"))


@pytest.mark.parametrize("split", ["train", "val"])
def test_no_train_reset_produces_a_val_or_test_layout_and_no_val_reset_a_test_layout(split):
    held_out = {lay.id for cfg in standard_configs() if cfg[0] != split for lay in split_layouts(*cfg)}
    venv = gym.make_vec("FWM/GridMaze-v0", num_envs=200, vectorization_mode="vector_entry_point", size=5,
                        episode_steps=1, split=split)
    _, info = venv.reset(seed=0)
    seen = set(info["layout_id"])
    for _ in range(4):
        seen |= set(venv.step(np.zeros(200, dtype=np.int64))[4]["layout_id"])
    assert len(seen) > (900 if split == "train" else 90)
    assert {split_of(i) for i in seen} == {split} and not seen & held_out


MOVES = [(-1, 0), (0, 1), (1, 0), (0, -1)]


def naive_grid_lifetime(walls, rng, policy_rng, steps):
    """Per-step simulator: goal uniform over floor (row-major), start/teleport uniform over floor minus goal.
    Actions: half greedy along the BFS distance, half random. Returns (action, pos, reward, shortest) per step."""
    floor = [tuple(t) for t in np.argwhere(~walls)]
    u_goal, u_start = rng.random(), rng.random()
    goal = floor[int(u_goal * len(floor))]
    rest = [t for t in floor if t != goal]
    pos = rest[int(u_start * len(rest))]
    dist = bfs(walls, goal)
    out = []
    for _ in range(steps):
        greedy = min(range(4), key=lambda a: dist.get((pos[0] + MOVES[a][0], pos[1] + MOVES[a][1]), 10 ** 6))
        action = greedy if policy_rng.random() < 0.5 else int(policy_rng.integers(4))
        nr, nc = pos[0] + MOVES[action][0], pos[1] + MOVES[action][1]
        if 0 <= nr < walls.shape[0] and 0 <= nc < walls.shape[1] and not walls[nr, nc]:
            pos = (nr, nc)
        reward = 1.0 if pos == goal else 0.0
        if reward:
            pos = rest[int(rng.random() * len(rest))]
        out.append((action, pos, reward, dist[pos]))
    return out


@pytest.mark.parametrize("seed", [0, 1])
def test_dynamics_and_shortest_paths_match_a_naive_simulator(seed):
    layout = split_layouts("val", 5, 0.0)[3]
    env = gym.make("FWM/GridMaze-v0", layout=layout.to_text(), obs="both", episode_steps=300,
                   layout_order="sequential")  # no layout draw
    _, info = env.reset(seed=seed)
    expected = naive_grid_lifetime(layout.walls, seeding.np_random(seed)[0], np.random.default_rng(seed), 300)
    goals = 0
    for action, pos, reward, shortest in expected:
        obs, r, _, truncated, info = env.step(action)
        goals += reward
        assert (info["agent_pos"], r, info["shortest_path"], info["goals_reached"]) == (pos, reward, shortest, goals)
        view = obs[:9].reshape(3, 3)
        padded = np.pad(layout.walls, 1, constant_values=True)
        np.testing.assert_array_equal(view, padded[pos[0]:pos[0] + 3, pos[1]:pos[1] + 3])
        np.testing.assert_allclose(obs[9:11], np.array(pos) / (np.array(layout.walls.shape) - 1), rtol=1e-6)
    assert truncated and goals > 0


def test_goal_and_start_markers_fix_goal_and_start_and_exploit_ratio_counts_steps_over_shortest_path():
    env = gym.make("FWM/GridMaze-v0", layout=ROOM.replace("#.....#", "#S...G#"), episode_steps=20)
    _, info = env.reset(seed=0)
    assert info["agent_pos"] == (3, 1) and info["shortest_path"] == 4
    for action in (0, 2, 1, 1, 1, 1):  # a wasted up-down detour, then straight right
        _, reward, _, _, info = env.step(action)
    assert reward == 1.0 and info["goal_visit"] == 1 and info["exploit_ratio"] == pytest.approx(6 / 4)


def test_observation_layout_is_the_same_for_every_size():
    sizes = {mode: {gym.make("FWM/GridMaze-v0", size=s, obs=mode).observation_space.shape for s in (3, 7, 11)}
             for mode in ("view", "position", "both")}
    assert sizes == {"view": {(16,)}, "position": {(9,)}, "both": {(18,)}}


@pytest.mark.parametrize("size", [3, 5])
def test_position_features_are_sines_and_cosines_of_the_tile_at_wavelengths_4_to_2_pow_k_plus_1(size):
    k = 3
    venv = gym.make_vec("FWM/GridMaze-v0", num_envs=4, vectorization_mode="vector_entry_point", size=size,
                        obs="both", position_scale=16, position_features=k)
    assert venv.single_observation_space.shape == (18 + 4 * k,)
    obs, info = venv.reset(seed=0)
    for t in range(20):
        pos = np.stack(info["agent_pos"]).astype(np.float64)  # [B, 2] (row, col) in tiles
        expected = []
        for fn in (np.sin, np.cos):
            for axis in (0, 1):
                expected += [fn(2 * np.pi * pos[:, axis] / wavelength) for wavelength in (4, 8, 16)]
        np.testing.assert_allclose(obs[:, 11:11 + 4 * k], np.stack(expected, axis=1), atol=1e-6)
        np.testing.assert_allclose(obs[:, 9:11], pos / 16, rtol=1e-6)  # the scaled position stays in front
        assert venv.single_observation_space.contains(obs[0])
        obs, _, _, _, info = venv.step(np.full(4, t % 4))
    with pytest.raises(ValueError, match="needs obs='position' or 'both'"):
        gym.make("FWM/GridMaze-v0", obs="view", position_features=2)
    with pytest.raises(ValueError, match="position_features"):
        gym.make("FWM/GridMaze-v0", obs="both", position_features=9)


def test_ood_splits_fix_size_and_loops_and_val_test_cover_their_frozen_sets_sequentially():
    env = gym.make("FWM/GridMaze-v0", split="test_large", layout_order="sequential")
    assert env.unwrapped.dynamics.size == 11
    with pytest.raises(ValueError, match="fixes size=11"):
        gym.make("FWM/GridMaze-v0", split="test_large", size=7)
    stats = fwm_rl.envs.run_reference("FWM/GridMaze-v0", "oracle", 100, n_envs=100, split="val", size=5,
                                      layout_order="sequential", episode_steps=40)
    assert [s.layout_id for s in stats] == [lay.id for lay in split_layouts("val", 5, 0.0)]
    assert all(r == pytest.approx(1.0) for s in stats for r in s.exploit_ratios)


def test_layouts_of_different_sizes_share_one_env_and_one_observation_layout():
    corridor = "#####\n#S.G#\n#####"
    venv = gym.make_vec("FWM/GridMaze-v0", num_envs=2, vectorization_mode="vector_entry_point",
                        layouts=[ROOM, corridor], layout_order="sequential", obs="both", episode_steps=30)
    obs, info = venv.reset(seed=0)
    assert obs.shape == (2, 18) and info["layout_id"][1] == layout_id(parse_layout(corridor).walls)
    assert tuple(info["agent_pos"][1]) == (1, 1) and tuple(obs[1, 9:11]) == (0.5, 0.25)
    vector_env = venv.unwrapped
    total = np.zeros(2)
    for _ in range(30):
        total += venv.step(vector_env.oracle_actions())[1]
    assert total[1] >= 15 and total[0] >= 5  # an oracle visit takes <= 2 steps in the corridor, <= 6 in the room


def test_handdrawn_layouts_parse_are_connected_15x15_and_keep_their_frozen_ids():
    catalogue = handdrawn_catalogue()
    names = [name for name, _, _ in catalogue]
    assert len(catalogue) >= 19 and len(set(names)) == len(names)
    for name, frozen_id, layout in catalogue:
        assert layout.walls.shape == (15, 15), name
        assert layout.id == frozen_id, f"{name}: the layout no longer matches its frozen id"
        floor = {tuple(t) for t in np.argwhere(~layout.walls)}
        assert set(bfs(layout.walls, next(iter(floor)))) == floor, f"{name} is not connected"
    assert len({layout.id for _, _, layout in catalogue}) == len(catalogue)


def test_no_generator_can_make_a_handdrawn_layout_so_its_id_is_in_no_procedural_split():
    rng = np.random.default_rng(0)
    uniform = lambda rows, k: rng.random((len(rows), k))  # noqa: E731
    for size, loops in ((2, 0.0), (5, 0.0), (7, 0.0), (7, 0.5), (7, 1.0)):
        assert all(generator_can_make(w) for w in generate_mazes(uniform, np.arange(20), size, loops))
    handdrawn = {layout.id for _, _, layout in handdrawn_catalogue()}
    assert not any(generator_can_make(layout.walls) for _, _, layout in handdrawn_catalogue())
    frozen = {lay.id for cfg in standard_configs() for lay in split_layouts(*cfg)}
    assert not handdrawn & frozen
    for loops in (0.0, 0.5):
        venv = gym.make_vec("FWM/GridMaze-v0", num_envs=300, vectorization_mode="vector_entry_point", size=7,
                            loops=loops, episode_steps=1, split="train")
        seen = set(venv.reset(seed=0)[1]["layout_id"])
        seen |= set(venv.step(np.zeros(300, dtype=np.int64))[4]["layout_id"])
        assert len(seen) > 500 and not seen & handdrawn


def test_the_handdrawn_split_plays_every_layout_whatever_size_the_run_trained_on():
    catalogue = handdrawn_catalogue()
    stats = fwm_rl.envs.run_reference("FWM/GridMaze-v0", "oracle", len(catalogue), n_envs=len(catalogue),
                                      split="test_handdrawn", size=3, layout_order="sequential")
    assert [s.layout_id for s in stats] == [layout.id for _, _, layout in catalogue]
    assert all(s.goals >= 10 for s in stats)  # 490-step lifetimes (10 x 7^2), as for a 7 x 7-cell maze
    env = gym.make("FWM/GridMaze-v0", split="test_handdrawn", obs="both")
    assert env.observation_space.shape == (18,) and env.unwrapped.dynamics.episode_steps == 490


MOVES = ((-1, 0), (0, 1), (1, 0), (0, -1))  # up, right, down, left, as the env numbers its actions


def naive_explorer_action(walls: np.ndarray, pos: tuple[int, int], seen: set, visited: set, goal) -> int:
    """The explorer's rule, written out tile by tile: walk to the nearest goal candidate (or the known goal) over
    tiles believed open (seen floor, or not seen), the lowest action on ties."""
    h, w = walls.shape
    inside = [(r, c) for r in range(h) for c in range(w)]
    believed_open = {t for t in inside if t not in seen or not walls[t]}
    targets = [goal] if goal is not None else [t for t in believed_open if t not in visited]
    dist, queue = {t: 0 for t in targets}, deque(targets)
    while queue:
        r, c = queue.popleft()
        for dr, dc in MOVES:
            near = (r + dr, c + dc)
            if near in believed_open and near not in dist:
                dist[near] = dist[r, c] + 1
                queue.append(near)
    steps = [dist.get((pos[0] + dr, pos[1] + dc), np.inf) for dr, dc in MOVES]
    return int(np.argmin(steps))


@pytest.mark.parametrize("size, loops", [(3, 0.0), (4, 0.5)])
def test_the_memory_explorer_acts_as_a_tile_by_tile_planner_on_what_it_has_seen(size, loops):
    n = 6
    vec_env = fwm_rl.envs.make_vec_env("FWM/GridMaze-v0", n, seed=3, size=size, loops=loops, obs="both",
                                       episode_steps=45)
    dynamics = vec_env.venv.dynamics
    explorer = fwm_rl.envs.MemoryExplorer(dynamics)
    vec_env.reset()
    seen, visited, goal = [set() for _ in range(n)], [set() for _ in range(n)], [None] * n
    goals = 0
    for _ in range(2 * 45):  # two lifetimes per env, through the autoreset
        explorer.observe()
        expected = []
        for row in range(n):
            walls, (r, c) = dynamics.grid(row), tuple(dynamics.positions()[row].tolist())
            seen[row] |= {(r + dr, c + dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1)}
            visited[row].add((r, c))
            expected.append(naive_explorer_action(walls, (r, c), seen[row], visited[row], goal[row]))
        actions = explorer.actions()
        assert actions.tolist() == expected
        before = dynamics.positions().copy()
        _, rewards, dones, _ = vec_env.step(actions)
        explorer.forget(dones.nonzero()[0])
        for row in range(n):
            if rewards[row] > 0:  # the tile it stepped onto was the goal (then it was teleported)
                goals += 1
                goal[row] = tuple((before[row] + MOVES[actions[row]]).tolist())
            if dones[row]:
                seen[row], visited[row], goal[row] = set(), set(), None
    assert goals >= 4 * n  # it finds the goal and walks back to it


def test_the_memory_explorer_scores_between_random_and_oracle_and_is_refused_where_it_cannot_play():
    kwargs = dict(split="test", size=5, obs="both", layout_order="sequential")
    returns = {policy: np.mean([s.episode_return for s in fwm_rl.envs.run_reference(
        "FWM/GridMaze-v0", policy, 40, n_envs=40, **kwargs)]) for policy in ("random", "oracle", "explorer")}
    assert returns["random"] + 10 < returns["explorer"] < returns["oracle"]
    with pytest.raises(ValueError, match="needs obs='view' or 'both'"):
        fwm_rl.envs.run_reference("FWM/GridMaze-v0", "explorer", 2, size=3, obs="position")
    with pytest.raises(ValueError, match="FWM/GraphNav-v0 has no 'explorer' reference; allowed: random, oracle"):
        fwm_rl.envs.run_reference("FWM/GraphNav-v0", "explorer", 2)


def test_the_privileged_action_can_be_the_explorers_and_follows_it_through_goals_and_autoresets():
    kwargs = dict(size=3, obs="both", episode_steps=30, privileged_obs=True)
    vec_env = fwm_rl.envs.make_vec_env("FWM/GridMaze-v0", 5, seed=1, privileged_action="explorer", **kwargs)
    plain = fwm_rl.envs.make_vec_env("FWM/GridMaze-v0", 5, seed=1, **kwargs)
    teacher = fwm_rl.envs.MemoryExplorer(vec_env.venv.dynamics)  # driven from outside, as run_reference does
    obs, plain_obs = vec_env.reset(), plain.reset()
    rng, goals = np.random.default_rng(0), 0
    for _ in range(70):
        teacher.observe()
        n_actions = vec_env.action_space.n
        assert obs[:, -n_actions:].argmax(1).tolist() == teacher.actions().tolist()
        np.testing.assert_array_equal(obs[:, :-n_actions], plain_obs[:, :-n_actions])  # the rest as with the oracle
        actions = np.where(rng.random(5) < 0.5, teacher.actions(), rng.integers(n_actions, size=5))
        (obs, rewards, dones, _), (plain_obs, *_) = vec_env.step(actions), plain.step(actions)
        teacher.forget(dones.nonzero()[0])
        goals += int(rewards.sum())
    assert goals > 0 and obs[:, -n_actions:].sum(1).tolist() == [1.0] * 5
    with pytest.raises(ValueError, match="privileged_action='explorer' sets a privileged value: it needs "
                                         "privileged_obs=True"):
        gym.make("FWM/GridMaze-v0", privileged_action="explorer")
    with pytest.raises(ValueError, match="privileged_action"):
        gym.make("FWM/GridMaze-v0", privileged_obs=True, privileged_action="teacher")
