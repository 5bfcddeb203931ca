"""Gymnasium/SB3 hygiene shared by both envs: registration, checkers, batched == single, SB3 VecEnv, scoring,
bad options and actions."""
import copy
import pickle

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env
from stable_baselines3.common.evaluation import evaluate_policy

import fwm_rl.envs
from fwm_rl.envs import EpisodeRecorder, make_vec_env
from fwm_rl.envs.dynamics import PRIVILEGED_DISTANCES, privileged_size
from fwm_rl.envs.render import ACTION_COLOURS, AGENT, GOAL

IDS = ["FWM/GraphNav-v0", "FWM/GridMaze-v0"]
SMALL = {"FWM/GraphNav-v0": {}, "FWM/GridMaze-v0": {"size": 4, "episode_steps": 25, "obs": "both"}}


@pytest.mark.parametrize("env_id", IDS)
def test_ids_register_on_import_and_through_the_module_prefix(env_id):
    env = gym.make("fwm_rl.envs:" + env_id)
    assert isinstance(env.observation_space, gym.spaces.Box) and env.observation_space.dtype == np.float32
    assert isinstance(env.action_space, gym.spaces.Discrete)
    assert gym.spec(env_id).vector_entry_point is not None


@pytest.mark.parametrize("env_id", IDS)
def test_gymnasium_and_sb3_env_checkers_pass_headless(env_id):
    gym_check_env(gym.make(env_id, **SMALL[env_id]).unwrapped)
    sb3_check_env(gym.make(env_id, **SMALL[env_id]).unwrapped, warn=True)


@pytest.mark.parametrize("env_id", IDS)
def test_batched_and_single_envs_give_identical_trajectories_across_autoresets(env_id):
    n, steps = 4, 60
    kwargs = SMALL[env_id]
    venv = gym.make_vec(env_id, num_envs=n, vectorization_mode="vector_entry_point", **kwargs)
    assert venv.metadata["autoreset_mode"] == gym.vector.AutoresetMode.SAME_STEP
    envs = [gym.make(env_id, **kwargs) for _ in range(n)]
    obs, info = venv.reset(seed=7)
    single = [env.reset(seed=7 + i) for i, env in enumerate(envs)]
    np.testing.assert_array_equal(obs, np.stack([o for o, _ in single]))
    assert list(info["layout_id"]) == [i["layout_id"] for _, i in single]
    actions = np.random.default_rng(0).integers(envs[0].action_space.n, size=(steps, n))
    for t in range(steps):
        obs, rewards, terminated, truncated, info = venv.step(actions[t])
        for i, env in enumerate(envs):
            o, r, term, trunc, inf = env.step(int(actions[t, i]))
            assert (r, term, trunc) == (rewards[i], terminated[i], truncated[i])
            final = info["final_obs"][i] if trunc else obs[i]
            np.testing.assert_array_equal(final, o)
            where = info["final_info"] if trunc else info
            for key in ("layout_id", "goals_reached", "shortest_path", "steps_since_goal"):
                assert where[key][i] == inf[key]
            assert tuple(np.atleast_1d(where["agent_pos"][i])) == tuple(np.atleast_1d(inf["agent_pos"]))
            assert where["_exploit_ratio"][i] == ("exploit_ratio" in inf)
            if trunc:
                o, inf = env.reset()
                np.testing.assert_array_equal(obs[i], o)
                assert info["layout_id"][i] == inf["layout_id"]


@pytest.mark.parametrize("env_id", IDS)
def test_privileged_obs_appends_the_distance_to_the_goal_to_the_same_observation(env_id):
    """The privileged tail is one-hot(min(d, 8)) and min(d / episode_steps, 1) of the info's shortest path and the
    one-hot of the env's oracle action; the rest equals the plain env's observation along the same actions, across
    autoresets."""
    plain, privileged = (gym.make(env_id, **SMALL[env_id], **extra) for extra in ({}, {"privileged_obs": True}))
    gym_check_env(gym.make(env_id, **SMALL[env_id], privileged_obs=True).unwrapped)
    size, n_actions = plain.observation_space.shape[0], plain.action_space.n
    assert privileged.observation_space.shape == (size + privileged_size(n_actions),)
    (want, _), (got, info) = plain.reset(seed=3), privileged.reset(seed=3)
    horizon = privileged.unwrapped.dynamics.episode_steps
    distances = set()
    for action in np.random.default_rng(1).integers(plain.action_space.n, size=3 * horizon):
        np.testing.assert_array_equal(got[:size], want)
        d = info["shortest_path"]
        distances.add(d)
        tail = np.zeros(privileged_size(n_actions), dtype=np.float32)
        tail[min(d, PRIVILEGED_DISTANCES)] = 1.0
        tail[PRIVILEGED_DISTANCES + 1] = min(d / horizon, 1.0)
        tail[PRIVILEGED_DISTANCES + 2 + privileged.unwrapped.oracle_action()] = 1.0
        np.testing.assert_array_equal(got[size:], tail)
        want, _, _, truncated, _ = plain.step(int(action))
        got, _, _, _, info = privileged.step(int(action))
        if truncated:
            (want, _), (got, info) = plain.reset(), privileged.reset()
    assert len(distances) > 1


@pytest.mark.parametrize("env_id", IDS)
def test_async_vector_env_with_shared_memory_runs(env_id):
    venv = gym.make_vec(env_id, num_envs=2, vectorization_mode="async", **SMALL[env_id])
    obs, _ = venv.reset(seed=0)
    obs2, *_ = venv.step(np.zeros(2, dtype=np.int64))
    assert obs.shape == obs2.shape == (2,) + venv.single_observation_space.shape
    venv.close()


def test_sb3_vec_env_autoresets_with_terminal_observation_and_monitor_episode_info():
    vec = make_vec_env("FWM/GraphNav-v0", 3, seed=5)
    first = vec.reset()
    again = make_vec_env("FWM/GraphNav-v0", 3, seed=5).reset()
    np.testing.assert_array_equal(first, again)
    total = np.zeros(3)
    for t in range(30):
        obs, rewards, dones, infos = vec.step(np.array([0, 1, 2]))
        total += rewards
    assert dones.all()
    for i, info in enumerate(infos):
        assert info["TimeLimit.truncated"] and info["terminal_observation"][-1] == pytest.approx(1.0)
        assert info["episode"]["l"] == 30 and info["episode"]["r"] == pytest.approx(total[i])
    assert (obs[:, -1] == 0).all()  # the next lifetime's first observation


@pytest.mark.parametrize("env_id", IDS)
def test_sb3_vec_env_pickled_mid_lifetime_continues_bit_identically(env_id):
    """Checkpoints pickle the whole VecEnv (layouts, positions, generators, episode counters); resume needs this."""
    vec = make_vec_env(env_id, 4, seed=1, **SMALL[env_id])
    vec.reset()
    rng = np.random.default_rng(0)
    for _ in range(17):
        vec.step(rng.integers(vec.action_space.n, size=4))
    clone = pickle.loads(pickle.dumps(vec))
    for _ in range(60):
        actions = rng.integers(vec.action_space.n, size=4)
        (obs, rewards, dones, infos), (obs2, rewards2, dones2, infos2) = vec.step(actions), clone.step(actions)
        np.testing.assert_array_equal(obs, obs2)
        assert rewards.tolist() == rewards2.tolist() and dones.tolist() == dones2.tolist()
        for info, info2 in zip(infos, infos2):
            assert info.keys() == info2.keys() and info["layout_id"] == info2["layout_id"]
            if "episode" in info:
                assert (info["episode"]["r"], info["episode"]["l"]) == (info2["episode"]["r"], info2["episode"]["l"])
                np.testing.assert_array_equal(info["terminal_observation"], info2["terminal_observation"])


class RandomModel:
    def __init__(self, n_actions):
        self.rng, self.n = np.random.default_rng(0), n_actions

    def predict(self, obs, state=None, episode_start=None, deterministic=False):
        return self.rng.integers(self.n, size=len(obs)), state


@pytest.mark.parametrize("env_id", IDS)
def test_evaluate_policy_reads_the_episode_statistics(env_id):
    vec = make_vec_env(env_id, 4, seed=0, **SMALL[env_id])
    rewards, lengths = evaluate_policy(RandomModel(vec.action_space.n), vec, n_eval_episodes=8,
                                       return_episode_rewards=True)
    assert len(rewards) == 8 and set(lengths) == {vec.get_attr("dynamics")[0].episode_steps}


def test_episode_recorder_scores_returns_first_goal_and_exploit_ratios_from_the_second_visit():
    recorder = EpisodeRecorder(2)
    base = {"layout_id": "x", "goals_reached": 0}
    steps = [
        ([0.0, 0.0], [False, False], [dict(base), dict(base)]),
        ([1.0, 0.0], [False, False], [dict(base, goal_visit=1, exploit_ratio=3.0), dict(base)]),
        ([1.0, 0.5], [False, False], [dict(base, goal_visit=2, exploit_ratio=1.5), dict(base)]),
        ([0.0, 0.0], [True, True], [dict(base, goals_reached=2), dict(base, layout_id="y")]),
    ]
    finished = []
    for rewards, dones, infos in steps:
        finished += recorder.update(np.array(rewards), np.array(dones), infos)
    a, b = finished
    assert (a.episode_return, a.goals, a.steps_to_first_goal, a.exploit_ratios) == (2.0, 2, 2, [1.5])
    assert (b.episode_return, b.goals, b.steps_to_first_goal, b.exploit_ratios, b.layout_id) == (0.5, 0, None, [], "y")
    assert recorder.update(np.zeros(2), np.array([True, False]), [dict(base), dict(base)])[0].episode_return == 0.0


def test_episode_recorder_pickled_by_an_older_version_without_goal_steps_resumes_recording():
    """A checkpoint written before ``goal_steps`` existed: its lifetime in progress lacks the goals before the save."""
    recorder = EpisodeRecorder(1)
    base = {"layout_id": "x", "goals_reached": 1}
    recorder.update(np.array([1.0]), np.array([False]), [dict(base, goal_visit=1, exploit_ratio=2.0)])
    old = EpisodeRecorder.__new__(EpisodeRecorder)  # what the older version pickled: no _goal_steps
    old.__dict__.update({key: value for key, value in recorder.__dict__.items() if key != "_goal_steps"})
    resumed = pickle.loads(pickle.dumps(old))
    resumed.update(np.array([1.0]), np.array([False]), [dict(base, goal_visit=2, exploit_ratio=1.0)])
    (stats,) = resumed.update(np.array([0.0]), np.array([True]), [dict(base, goals_reached=2)])
    assert (stats.episode_return, stats.goals, stats.steps_to_first_goal, stats.exploit_ratios) == (2.0, 2, 1, [1.0])
    assert stats.goal_steps == [2]


@pytest.mark.parametrize("env_id, kwargs, message", [
    ("FWM/GraphNav-v0", {"split": "dev"}, "unknown split 'dev'; allowed: 'train', 'val', 'test', 'procedural'"),
    ("FWM/GridMaze-v0", {"split": "dev"}, "unknown split 'dev'; allowed: 'train', 'val', 'test', 'test_large'"),
    ("FWM/GridMaze-v0", {"obs": "pixels"}, "unknown obs 'pixels'; allowed: 'view', 'position', 'both'"),
    ("FWM/GridMaze-v0", {"size": 1}, "size must be an integer in [2, 25], got 1"),
    ("FWM/GridMaze-v0", {"size": 1000}, "size must be an integer in [2, 25], got 1000"),
    ("FWM/GridMaze-v0", {"size": 7.5}, "size must be an integer in [2, 25], got 7.5"),
    ("FWM/GridMaze-v0", {"view_radius": 1000}, "view_radius must be an integer in [1, 10], got 1000"),
    ("FWM/GridMaze-v0", {"loops": 1.5}, "loops must lie in [0, 1], got 1.5"),
    ("FWM/GridMaze-v0", {"loops": -0.1}, "loops must lie in [0, 1]"),
    ("FWM/GridMaze-v0", {"loops": "many"}, "loops must lie in [0, 1], got 'many'"),
    ("FWM/GridMaze-v0", {"episode_steps": 0}, "episode_steps must be an integer >= 1, got 0"),
    ("FWM/GraphNav-v0", {"layout_order": "shuffled"}, "allowed: 'random', 'sequential'"),
    ("FWM/GraphNav-v0", {"n_actions": 2}, "n_actions must be an integer in [3, 16], got 2"),
    ("FWM/GraphNav-v0", {"n_nodes": 1000}, "n_nodes must be an integer in [3, 16], got 1000"),
    ("FWM/GraphNav-v0", {"render_mode": "svg"}, "allowed: None, ansi, rgb_array"),
    ("FWM/GridMaze-v0", {"privileged_obs": "yes"}, "privileged_obs must be true or false, got 'yes'"),
])
@pytest.mark.filterwarnings("ignore:.*render_mode=.svg.")
def test_bad_options_raise_one_line_value_errors_saying_what_is_allowed(env_id, kwargs, message):
    """Sizes are bounded, so a huge one fails at once instead of hanging in construction."""
    with pytest.raises(ValueError) as err:
        gym.make(env_id, **kwargs)
    assert message in str(err.value) and "\n" not in str(err.value)


GRID_OPTIONS = ("size, loops, obs, split, layout, layouts, episode_steps, view_radius, layout_order, position_scale, "
                "position_features, curriculum, privileged_obs, privileged_action")
GRAPH_OPTIONS = "split, n_nodes, n_actions, episode_steps, layout_order, privileged_obs"


@pytest.mark.parametrize("make, allowed", [
    (lambda **kw: gym.make("FWM/GridMaze-v0", **kw), "render_mode, " + GRID_OPTIONS),
    (lambda **kw: gym.make("FWM/GraphNav-v0", **kw), "render_mode, " + GRAPH_OPTIONS),
    (lambda **kw: gym.make_vec("FWM/GridMaze-v0", 2, vectorization_mode="vector_entry_point", **kw), GRID_OPTIONS),
    (lambda **kw: make_vec_env("FWM/GraphNav-v0", 2, **kw), GRAPH_OPTIONS),
], ids=["grid-env", "graph-env", "grid-vector-env", "graph-sb3-vec-env"])
def test_unknown_options_raise_one_line_value_errors_listing_the_allowed_keys(make, allowed):
    with pytest.raises(ValueError) as err:
        make(bogus=3)
    env_id = "FWM/GridMaze-v0" if "size" in allowed else "FWM/GraphNav-v0"
    assert str(err.value) == f"unknown {env_id} option 'bogus'; allowed: {allowed}"


def single_env(env_id):
    env = gym.make(env_id, **SMALL[env_id]).unwrapped
    env.reset(seed=0)
    for action in (0, 1, 2):
        env.step(action)
    return env


@pytest.mark.parametrize("env_id", IDS)
@pytest.mark.parametrize("bad, shown", [
    (-1, "-1"), ("n", "{n}"), (1.5, "1.5"), (float("nan"), "nan"), (np.float64("inf"), "inf"), (None, "None"),
    ("up", "'up'"), (True, "True"), ([1], "[1]"),
    (np.array([1, 2]), "an array of shape (2,) and dtype int64"),
])
def test_an_invalid_action_raises_one_line_naming_the_space_and_leaves_the_env_unchanged(env_id, bad, shown):
    env = single_env(env_id)
    n = int(env.action_space.n)
    twin = copy.deepcopy(env)
    with pytest.raises(ValueError) as err:
        env.step(n if isinstance(bad, str) and bad == "n" else bad)
    assert str(err.value) == (f"action must be an integer in [0, {n - 1}] (action space Discrete({n})), got "
                              + shown.format(n=n))
    for action in [1, 0, 3 % n, 2] * 10:
        np.testing.assert_array_equal(env.step(action)[0], twin.step(action)[0])
    np.testing.assert_array_equal(env.reset(seed=4)[0], twin.reset(seed=4)[0])
    assert env.step(np.int64(1))[1] == twin.step(1)[1]


@pytest.mark.parametrize("env_id", IDS)
@pytest.mark.parametrize("kind", ["vector", "sb3"])
@pytest.mark.parametrize("bad, shown", [
    (np.zeros(3, dtype=np.int64), "3 integers in [0, {top}] ({space}), got an array of shape (3,) and dtype int64"),
    (np.zeros((2, 2), dtype=np.int64), "2 integers in [0, {top}] ({space}), got an array of shape (2, 2)"),
    (None, "2 integers in [0, {top}] ({space}), got None"),
    (np.array([0, 99]), "integers in [0, {top}] ({space}), got 99 for env 1"),
    (np.array([0.0, 0.5]), "integers in [0, {top}] ({space}), got 0.5 for env 1"),
    (np.array([np.nan, 0.0]), "integers in [0, {top}] ({space}), got nan for env 0"),
    (np.array([0, 2 ** 64 - 1], dtype=np.uint64), "integers in [0, {top}] ({space}), got 18446744073709551615 for "
                                                   "env 1"),
])
def test_invalid_vector_actions_raise_one_line_naming_the_space_and_leave_the_envs_unchanged(env_id, kind, bad, shown):
    if kind == "vector":
        envs = gym.make_vec(env_id, num_envs=2, vectorization_mode="vector_entry_point", **SMALL[env_id])
        envs.reset(seed=0)
    else:
        envs = make_vec_env(env_id, 2, seed=0, **SMALL[env_id])
        envs.reset()
    n = int(envs.single_action_space.n if kind == "vector" else envs.action_space.n)
    if bad is not None and bad.shape == (3,):
        shown = shown.replace("3 integers", "2 integers")
    twin = copy.deepcopy(envs)
    with pytest.raises(ValueError) as err:
        envs.step(bad)
    space = f"action space MultiDiscrete([{n}] * 2)"
    assert str(err.value).startswith("actions must be ") and shown.format(top=n - 1, space=space) in str(err.value)
    assert "\n" not in str(err.value)
    for t in range(40):
        actions = np.array([t % n, (t + 1) % n])
        np.testing.assert_array_equal(envs.step(actions)[0], twin.step(actions)[0])
    assert envs.step(np.array([[1], [0]]))[1].tolist() == twin.step(np.array([1, 0]))[1].tolist()


@pytest.mark.parametrize("env_id", IDS)
def test_rgb_frames_show_agent_goal_and_trail_and_ansi_is_text(env_id):
    env = gym.make(env_id, render_mode="rgb_array", **SMALL[env_id])
    env.reset(seed=1)
    for _ in range(3):
        env.step(env.unwrapped.oracle_action())
    frame = env.render()
    assert frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3
    colours = {tuple(c) for c in frame.reshape(-1, 3)}
    assert AGENT in colours and GOAL in colours
    if env_id == "FWM/GraphNav-v0":
        assert colours & set(ACTION_COLOURS)
    text = gym.make(env_id, render_mode="ansi", **SMALL[env_id])
    text.reset(seed=1)
    assert "@" in text.render()
