"""fwm-rl export: the single-step ONNX graph of every core replays the torch policy over GraphNav lifetimes with
resets; the command's errors, atomic write and the README's onnxruntime example."""
from __future__ import annotations

import re
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces

import fwm_rl
from fwm_rl.agents import CorePolicy, MultiInputCorePolicy, RecurrentPPO
from fwm_rl.agents.onnx_policy import SingleStepPolicy
from fwm_rl.envs import make_vec_env
from fwm_rl.train import export, rl
from fwm_rl.train.config import TrainConfig
from fwm_rl.train.runs import load_agent
from test_cli_rundir import error_line, run_main

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

README = Path(__file__).resolve().parents[1] / "README.md"
LIFETIME, N_ENVS = 30, 3
SMALL_CORE_KWARGS = {"fwm": {"memory_size": 4}}


def graphnav_agent(core: str, critic: str, env_id: str = "FWM/GraphNav-v0", **env_kwargs) -> RecurrentPPO:
    vec_env = make_vec_env(env_id, N_ENVS, seed=0, **env_kwargs)
    return RecurrentPPO("MlpFwmPolicy", vec_env, n_steps=10, seed=1, device="cpu", policy_kwargs=dict(
        core=core, hidden_size=8, core_kwargs=SMALL_CORE_KWARGS.get(core, {}), critic=critic))


def session_of(policy, tmp_path: Path):
    step = SingleStepPolicy(policy)
    path = tmp_path / "policy.onnx"
    export.trace_onnx(step, path)
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]), step


def onnx_step(session, feed: dict) -> dict:
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feed)))


# float32 over a 30-step lifetime: ONNX Runtime and torch sum in CPU-dependent orders, and fast-weight states grow to
# 10-20, so the bound scales with the value (an AMD EPYC differed by 1.05e-5 at 15.8, 6.6e-7 of it).
FLOAT32_RTOL = 1e-5
# "separate" carries both cores' states through the graph; "shared" (the default) reads the actor core for the value.
@pytest.mark.parametrize("core, critic", [*((core, "separate") for core in sorted(fwm_rl.CORE_CLASSES)),
                                          ("fwm", "shared"), ("lstm", "none")])
def test_onnx_step_replays_the_torch_policy_over_a_graphnav_lifetime_with_resets(core, critic, tmp_path):
    """onnxruntime drives a 30-step GraphNav lifetime step by step; episode_start is set for every row at t=0 and
    t=15 and for row 1 alone at t=8. Actions and states equal ``predict`` with state, values equal the policy's own
    forward over the whole [T, B] sequence (for the FWM: the fused kernel against the graph's reference step)."""
    agent = graphnav_agent(core, critic)
    policy: CorePolicy = agent.policy
    session, step = session_of(policy, tmp_path)
    starts = np.zeros((LIFETIME, N_ENVS), dtype=bool)
    starts[[0, 15]] = True
    starts[8, 1] = True
    vec_env = agent.get_env()
    obs = vec_env.reset()
    names = [s.name for s in step.state_layout()]
    state = {s.name: np.zeros([N_ENVS, *s.shape[1:]], np.float32) for s in step.state_layout()}
    torch_state = None
    observations, onnx_values, onnx_actions = [], [], []
    for t in range(LIFETIME):
        out = onnx_step(session, {"obs": obs, "episode_start": starts[t], **state})
        actions, torch_state = policy.predict(obs, state=torch_state, episode_start=starts[t], deterministic=True)
        np.testing.assert_array_equal(out["action"], actions)
        for name, value in zip(names, torch_state):  # predict returns the actor state
            np.testing.assert_allclose(out["next_" + name], value, rtol=FLOAT32_RTOL, atol=1e-5)
        state = {name: out["next_" + name] for name in names}
        observations.append(obs)
        onnx_values.append(out["value"])
        onnx_actions.append(out["action"])
        obs, _, _, _ = vec_env.step(out["action"])
    with torch.no_grad():
        actions, values, _, final = policy.forward(torch.as_tensor(np.stack(observations)),
                                                   policy.initial_state(N_ENVS), torch.as_tensor(starts),
                                                   deterministic=True)
    np.testing.assert_array_equal(np.stack(onnx_actions), actions.numpy())
    np.testing.assert_allclose(np.stack(onnx_values), values.numpy(), rtol=FLOAT32_RTOL, atol=1e-5)
    for name, value in zip(names, [*final.actor, *final.critic]):
        np.testing.assert_allclose(state[name], value.numpy(), rtol=FLOAT32_RTOL, atol=1e-5)
    assert len(set(np.stack(onnx_actions).ravel().tolist())) > 1, "a policy that always plays one action proves little"


def test_the_batch_dim_is_free_and_a_reset_row_ignores_its_incoming_state(tmp_path):
    session, step = session_of(graphnav_agent("fwm", "separate").policy, tmp_path)
    obs, _, *state = step.example_inputs(5)
    names = [s.name for s in step.state_layout()]
    clean = {name: np.zeros(s.shape, np.float32) for name, s in zip(names, state)}
    dirty = {name: np.full(s.shape, np.nan, np.float32) for name, s in zip(names, state)}  # NaN: a select clears it
    starts = np.ones(5, dtype=bool)
    a = onnx_step(session, {"obs": obs.numpy(), "episode_start": starts, **clean})
    b = onnx_step(session, {"obs": obs.numpy(), "episode_start": starts, **dirty})
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    first_row = {name: value[:1] for name, value in clean.items()}
    one = onnx_step(session, {"obs": obs[:1].numpy(), "episode_start": starts[:1], **first_row})
    np.testing.assert_allclose(one["value"], a["value"][:1], rtol=0, atol=1e-6)


def test_gridmaze_and_dict_observation_policies_export_and_replay(tmp_path):
    maze = graphnav_agent("fwm", "shared", env_id="FWM/GridMaze-v0", size=3, obs="both")
    session, step = session_of(maze.policy, tmp_path)
    assert export.replay_max_error(session, maze.policy, step) < 1e-5
    box = spaces.Box(-1.0, 1.0, (4,), np.float32)
    obs_space = spaces.Dict({"view": box, "goal": spaces.Box(0.0, 1.0, (2,), np.float32)})
    policy = MultiInputCorePolicy(obs_space, spaces.Discrete(3), lambda _: 1e-3, core="lstm", hidden_size=8,
                                  critic="separate")
    session, step = session_of(policy, tmp_path)
    assert [i.name for i in session.get_inputs()][:3] == ["obs_goal", "obs_view", "episode_start"]
    assert export.replay_max_error(session, policy, step) < 1e-5


# ---------------------------------------------------------------------------------------------- the command


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "tiny"
    rl.train(TrainConfig(experiment="tiny", n_envs=4, n_steps=10, hidden_size=8, core_kwargs={"memory_size": 4},
                         batch_size=20, n_epochs=1, total_timesteps=40, eval_episodes=4, eval_freq=40,
                         checkpoint_freq=40, threads=1), run_dir=run, progress_bar=False, quiet=True)
    return run


def test_export_writes_a_checked_graph_with_its_state_layout_in_the_metadata(run_dir, tmp_path, capsys):
    out = tmp_path / "policy.onnx"
    code, stdout, _ = run_main(["export", str(run_dir), "--onnx", str(out)], capsys)
    assert code == 0 and "onnxruntime matches torch" in stdout and "actor_F [batch, 4, 4, 4] float32" in stdout
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert meta["fwm_rl.core"] == "fwm" and meta["fwm_rl.source"].endswith("model.zip")
    code, _, _ = run_main(["export", str(run_dir), "--best", "--onnx", str(out), "--overwrite"], capsys)
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert code == 0 and meta["fwm_rl.source"].endswith("best_model.zip")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["policy.onnx"]  # no temporary file left behind


def test_an_existing_output_is_kept_without_overwrite(run_dir, tmp_path, capsys):
    out = tmp_path / "policy.onnx"
    out.write_bytes(b"mine")
    code, _, err = run_main(["export", str(run_dir), "--onnx", str(out)], capsys)
    assert code == 1 and "exists; pass --overwrite" in error_line(err)
    assert out.read_bytes() == b"mine"


@pytest.mark.parametrize("make_bad, message", [
    (lambda tmp: tmp / "missing", "no such run directory or model file"),
    (lambda tmp: tmp, "holds no model.zip"),
])
def test_a_bad_run_directory_is_one_line(make_bad, message, tmp_path, capsys):
    code, _, err = run_main(["export", str(make_bad(tmp_path)), "--onnx", str(tmp_path / "p.onnx")], capsys)
    assert code == 1 and message in error_line(err)


def test_missing_onnxruntime_is_one_line_and_no_check_exports_without_it(run_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # what `import onnxruntime` sees when it is absent
    out = tmp_path / "policy.onnx"
    code, _, err = run_main(["export", str(run_dir), "--onnx", str(out)], capsys)
    line = error_line(err)
    assert code == 1 and "onnxruntime is not installed" in line and "fwm-rl[export]" in line and not out.exists()
    code, stdout, _ = run_main(["export", str(run_dir), "--onnx", str(out), "--no-check"], capsys)
    assert code == 0 and "not checked" in stdout and out.exists()


def test_a_graph_that_fails_its_check_is_not_written(run_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(export, "CHECK_TOLERANCE", -1.0)  # any difference, even 0, now fails
    with pytest.raises(AssertionError, match="nothing written"):
        export.export_onnx(run_dir, tmp_path / "policy.onnx")
    assert list(tmp_path.iterdir()) == []


def test_readme_onnxruntime_example_runs_as_written_and_plays_the_torch_actions(run_dir, tmp_path, monkeypatch):
    section = README.read_text().split("## Export to ONNX", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    export.export_onnx(run_dir, tmp_path / "policy.onnx")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md (export example)", "exec"), namespace)
    agent = load_agent(run_dir / "model.zip", "ppo")
    env = gym.make("FWM/GraphNav-v0", split="test")
    obs, _ = env.reset(seed=0)
    state, start, actions = None, np.ones(1, dtype=bool), []
    for _ in range(len(namespace["actions"])):
        action, state = agent.predict(obs[None], state=state, episode_start=start, deterministic=True)
        actions.append(int(action[0]))
        obs, _, terminated, truncated, _ = env.step(actions[-1])
        start = np.array([terminated or truncated])
    assert len(actions) == 30 and namespace["actions"] == actions


def test_readme_state_table_lists_every_core_with_its_state_names_and_shapes():
    section = README.read_text().split("## Export to ONNX", 1)[1]
    rows = dict(re.findall(r"^\| (\w+) \| (.+) \|$", section, re.M))
    H, d = 5, 3
    sizes = {"H": H, "d": d, "B": 2}
    for kind in fwm_rl.CORE_CLASSES:
        core = fwm_rl.build_core(kind, 4, H, **({"memory_size": d} if kind == "fwm" else {}))
        listed = re.findall(r"`(\w+) \[([^\]]*)\]`", rows[kind])
        assert [(name, tuple(sizes[n] for n in shape.split(", "))) for name, shape in listed] == [
            (spec.name, (2, *spec.shape)) for spec in core.state_spec], kind


def test_unsupported_policies_are_refused_with_the_reason():
    policy = CorePolicy(spaces.Box(-1.0, 1.0, (3,), np.float32), spaces.Box(-1.0, 1.0, (2,), np.float32),
                        lambda _: 1e-3, core="gru", hidden_size=4)
    with pytest.raises(ValueError, match="supports Discrete actions"):
        SingleStepPolicy(policy)
