"""CorePolicy's sequence API against a step-by-step reference; the sb3-contrib adapter (FWMPolicy): state packing,
equality with CorePolicy, and the unmodified sb3-contrib RecurrentPPO driving it (learn, save/load, predict,
evaluate_policy, EvalCallback, SubprocVecEnv)."""
from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import sb3_contrib
import torch as th
from gymnasium import spaces
from stable_baselines3.common.callbacks import EvalCallback
from stable_baselines3.common.env_util import make_vec_env as sb3_make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import SubprocVecEnv

from fwm_rl import build_core
from fwm_rl.agents import (
    ActorCriticStates,
    CorePolicy,
    FWMPolicy,
    LSTMPolicy,
    MultiInputCorePolicy,
    MultiInputFWMPolicy,
    PackedStateLayout,
    RecurrentPPO,
)
from fwm_rl.envs import GraphNavEnv, make_vec_env, privileged_size
from prediction_checks import assert_same_predictions

GRAPH = dict(n_nodes=3, n_actions=3, episode_steps=12)
SMALL_FWM = dict(core="fwm", hidden_size=16, core_kwargs=dict(memory_size=4, preset="rl"), net_arch=[16])
CRITICS = ("separate", "shared", "joint", "none")


def graph_env(n_envs: int = 4, seed: int = 0):
    return make_vec_env("FWM/GraphNav-v0", n_envs, seed=seed, **GRAPH)


def make_policy(env, policy_class: type[CorePolicy] = CorePolicy, **kwargs) -> CorePolicy:
    return policy_class(env.observation_space, env.action_space, lambda _: 1e-3, **{**SMALL_FWM, **kwargs})


def random_states(policy: CorePolicy, n: int) -> ActorCriticStates:
    states = policy.initial_state(n)
    return ActorCriticStates(*(tuple(th.randn_like(s) for s in part) for part in states))


def rollout_tensors(env, T: int, B: int, seed: int = 0):
    """Random observations, actions and episode starts [T, B] (starts also in the middle of sequences)."""
    gen = th.Generator().manual_seed(seed)
    obs = th.rand(T, B, *env.observation_space.shape, generator=gen)
    actions = th.randint(0, env.action_space.n, (T, B), generator=gen)
    starts = (th.rand(T, B, generator=gen) < 0.2).float()
    return obs, actions, starts


# ------------------------------------------------------------------ packing


@pytest.mark.parametrize("kind, options", [("fwm", dict(memory_size=3)), ("lstm", {}), ("fwrnn", {}), ("mlp", {})])
def test_packed_layout_round_trips_every_core_state(kind, options):
    core = build_core(kind, 5, 6, **options)
    layout = PackedStateLayout(core.state_spec, core.input_size)
    state = tuple(th.randn(7, *spec.shape) for spec in core.state_spec)
    packed = layout.pack(state, 7, th.device("cpu"))
    assert [tuple(p.shape) for p in packed] == [(1, 7, layout.hidden_size)] * 2
    assert 2 * layout.hidden_size >= sum(int(np.prod(spec.shape)) for spec in core.state_spec)
    unpacked = layout.unpack(packed)
    assert len(unpacked) == len(state)
    for original, restored in zip(state, unpacked):
        assert th.equal(original, restored)


def test_lstm_core_packs_exactly_like_nn_lstm_state():
    core = build_core("lstm", 5, 6)
    layout = PackedStateLayout(core.state_spec, core.input_size)
    h, c = th.randn(3, 6), th.randn(3, 6)
    s0, s1 = layout.pack((h, c), 3, th.device("cpu"))
    assert layout.hidden_size == 6 and layout.num_layers == 1
    assert th.equal(s0[0], h) and th.equal(s1[0], c)


def test_unpack_rejects_states_of_the_wrong_width():
    layout = PackedStateLayout(build_core("lstm", 5, 6).state_spec, 5)
    with pytest.raises(ValueError, match=r"two arrays \[1, B, 6\]"):
        layout.unpack((th.zeros(1, 2, 5), th.zeros(1, 2, 5)))


# ------------------------------------------------------------------ construction


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(core="transformer"), "unknown core 'transformer'"),
        (dict(critic="both"), "unknown critic 'both'"),
        (dict(hidden_size=0), "hidden_size must be a positive integer"),
        (dict(hidden_size=-4), "hidden_size must be a positive integer"),
        (dict(core_kwargs=dict(memory_size=0)), "memory_size must be a positive integer"),
        (dict(core_kwargs=dict(heads=2)), r"unknown option\(s\) \['heads'\]"),
        (dict(critic="shared", share_features_extractor=False), "share_features_extractor=True"),
    ],
)
def test_bad_policy_kwargs_fail_at_construction(kwargs, message):
    env = graph_env(2)
    for algo, policy in ((sb3_contrib.RecurrentPPO, FWMPolicy), (RecurrentPPO, CorePolicy)):
        with pytest.raises(ValueError, match=message):
            algo(policy, env, n_steps=4, batch_size=8, policy_kwargs={**SMALL_FWM, **kwargs}, device="cpu")


@pytest.mark.parametrize("value, message", [
    (-1, r"privileged_features must be in \[0, 12\) for this 12-value observation, got -1"),
    (12, r"must be in \[0, 12\) .* got 12"),
    (True, "privileged_features must be an int, got True"),
    ("4", "privileged_features must be an int, got '4'"),
])
def test_bad_privileged_features_fail_at_construction(value, message):
    with pytest.raises(ValueError, match=message):
        make_policy(graph_env(2), privileged_features=value)


def test_privileged_features_need_a_flat_observation():
    space = spaces.Dict({"obs": spaces.Box(0, 1, (4,))})
    with pytest.raises(ValueError, match="privileged_features needs a 1-D Box observation and the FlattenExtractor"):
        MultiInputCorePolicy(space, spaces.Discrete(3), lambda _: 1e-3, privileged_features=2)


@pytest.mark.parametrize("critic", CRITICS)
def test_privileged_features_reach_the_critic_and_never_the_actor(critic):
    """Changing the privileged tail of the observation changes the values, and no log-prob, entropy, next-obs
    prediction, actor state or prediction; the next-observation head predicts the actor's features only."""
    env = make_vec_env("FWM/GraphNav-v0", 3, seed=0, **GRAPH, privileged_obs=True)
    th.manual_seed(0)
    size = privileged_size(env.action_space.n)
    policy = make_policy(env, critic=critic, privileged_features=size, predict_next_obs=True)
    assert policy.actor_core.input_size == env.observation_space.shape[0] - size
    obs, actions, starts = rollout_tensors(env, T=6, B=3)
    other = obs.clone()
    other[..., -size:] = th.rand(6, 3, size)
    states = random_states(policy, 3)
    with th.no_grad():
        a, b = (policy.evaluate_trajectories(o, actions, states, starts) for o in (obs, other))
        for name in ("log_prob", "entropy"):
            assert th.equal(getattr(a, name), getattr(b, name)), name
        assert th.equal(a.aux_losses["next_obs"], b.aux_losses["next_obs"])
        assert not th.allclose(a.values, b.values)
    (act_a, state_a), (act_b, state_b) = (policy.predict(o[0].numpy(), deterministic=True) for o in (obs, other))
    np.testing.assert_array_equal(act_a, act_b)
    for x, y in zip(state_a, state_b):
        np.testing.assert_array_equal(x, y)


# auxiliary loss -> (the policy flag that adds it, the logits it scores, from the actor core's output [T, B, H])
PRIVILEGED_ACTION_LOSSES = {
    "oracle_action": ("predict_oracle_action", lambda policy, pi: policy.oracle_net(pi)),
    "imitation": ("imitate_privileged_action",
                  lambda policy, pi: policy.action_net(policy.mlp_extractor.forward_actor(pi))),
}


@pytest.mark.parametrize("loss", sorted(PRIVILEGED_ACTION_LOSSES))
def test_a_privileged_action_loss_is_a_step_by_step_cross_entropy_that_trains_the_actor_core(loss):
    flag, logits_of = PRIVILEGED_ACTION_LOSSES[loss]
    env = make_vec_env("FWM/GraphNav-v0", 3, seed=0, **GRAPH, privileged_obs=True)
    th.manual_seed(0)
    policy = make_policy(env, critic="shared", privileged_features=privileged_size(3), **{flag: True})
    obs, actions, starts = rollout_tensors(env, T=5, B=3)
    teacher = th.randint(0, 3, (5, 3))
    obs[..., -3:] = th.nn.functional.one_hot(teacher, 3).float()
    states = random_states(policy, 3)
    got = policy.evaluate_trajectories(obs, actions, states, starts).aux_losses[loss]
    with th.no_grad():
        pi, _ = policy.actor_core(obs[:, :, :-privileged_size(3)], states.actor, starts)
        logits = logits_of(policy, pi)  # [T, B, A]
        want = np.mean([-th.log_softmax(logits[t, b], dim=-1)[teacher[t, b]].item()
                        for t in range(5) for b in range(3)])
    assert abs(got.item() - want) < 1e-5
    got.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in policy.actor_core.parameters())
    assert all(p.grad is None for p in policy.value_net.parameters())


def test_critic_modes_build_the_modules_they_need():
    env = graph_env(2)
    separate, shared, joint, none = (make_policy(env, critic=c) for c in CRITICS)
    assert separate.critic_core is not None and separate.critic_encoder is None
    assert shared.critic_core is None and shared.critic_encoder is None
    assert joint.critic_core is None and joint.critic_encoder is None
    assert none.critic_core is None and none.critic_encoder is not None
    assert len(separate.initial_state(3).critic) == 3
    assert shared.initial_state(3).critic == joint.initial_state(3).critic == none.initial_state(3).critic == ()


@pytest.mark.parametrize("critic, trains_core", [("shared", False), ("joint", True)])
def test_value_loss_trains_the_actor_core_only_when_joint(critic, trains_core):
    env = graph_env(2)
    policy = make_policy(env, critic=critic)
    obs, actions, starts = rollout_tensors(env, T=5, B=3)
    values, _, _ = policy.evaluate_actions(obs, actions, policy.initial_state(3), starts)
    values.pow(2).mean().backward()
    core_grad = sum(p.grad.abs().sum() for p in policy.actor_core.parameters() if p.grad is not None)
    assert (core_grad > 0) == trains_core


# ------------------------------------------------------------------ native API vs an independent reference


def reference_evaluate(policy: CorePolicy, obs, actions, states: ActorCriticStates, starts):
    """One core step at a time, rows zeroed by hand (no episode_starts reach the core), heads applied by hand."""
    T, B = starts.shape

    def zero_rows(state, t):
        keep = 1.0 - starts[t]
        return tuple(s * keep.view(B, *[1] * (s.dim() - 1)) for s in state)

    pi, vf = states
    values, log_probs, entropies = [], [], []
    for t in range(T):
        pi = zero_rows(pi, t)
        y_pi, pi = policy.actor_core(obs[t].unsqueeze(0), pi)
        if policy.critic_mode == "separate":
            vf = zero_rows(vf, t)
            y_vf, vf = policy.critic_core(obs[t].unsqueeze(0), vf)
            y_vf = y_vf[0]
        elif policy.critic_mode in ("shared", "joint"):
            y_vf = y_pi[0]
        else:
            y_vf = policy.critic_encoder(obs[t])
        logits = policy.action_net(policy.mlp_extractor.policy_net(y_pi[0]))
        log_p = th.log_softmax(logits, dim=-1)
        log_probs.append(log_p.gather(1, actions[t].view(B, 1)).squeeze(1))
        entropies.append(-(log_p.exp() * log_p).sum(-1))
        values.append(policy.value_net(policy.mlp_extractor.value_net(y_vf)).squeeze(1))
    return th.stack(values), th.stack(log_probs), th.stack(entropies)


@pytest.mark.parametrize("critic", CRITICS)
def test_evaluate_actions_matches_step_by_step_reference_with_resets(critic):
    env = graph_env(2)
    th.manual_seed(0)
    policy = make_policy(env, critic=critic)
    obs, actions, starts = rollout_tensors(env, T=9, B=5)
    states = random_states(policy, 5)
    with th.no_grad():
        got = policy.evaluate_actions(obs, actions, states, starts)
        want = reference_evaluate(policy, obs, actions, states, starts)
    for g, w in zip(got, want):
        th.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)


def reference_next_obs_loss(policy: CorePolicy, obs, actions, states: ActorCriticStates, starts) -> float:
    """Pair by pair: the actor core one step at a time (rows zeroed by hand), the head on [y_t, one_hot(a_t)], the
    squared error against obs[t + 1] with each feature's error divided by max(1, its variance over obs[1:])."""
    T, B = starts.shape
    variance = np.maximum(obs[1:].reshape(-1, obs.shape[-1]).double().numpy().var(axis=0), 1.0)
    outputs, state = [], states.actor
    for t in range(T):
        state = tuple(s * (1.0 - starts[t]).view(B, *[1] * (s.dim() - 1)) for s in state)
        y, state = policy.actor_core(obs[t].unsqueeze(0), state)
        outputs.append(y[0])
    errors = []
    for t in range(T - 1):
        for b in range(B):
            if starts[t + 1, b]:
                continue  # obs[t + 1] begins a new episode: nothing to predict
            one_hot = th.nn.functional.one_hot(actions[t, b], int(policy.action_space.n)).float()
            prediction = policy.next_obs_net(th.cat([outputs[t][b], one_hot])).double().numpy()
            errors.append(np.mean((prediction - obs[t + 1, b].double().numpy()) ** 2 / variance))
    return float(np.mean(errors))


@pytest.mark.parametrize("critic", ["shared", "separate"])
def test_next_obs_loss_matches_a_pair_by_pair_reference_with_resets(critic):
    env = graph_env(2)
    th.manual_seed(0)
    policy = make_policy(env, critic=critic, predict_next_obs=True)
    obs, actions, starts = rollout_tensors(env, T=9, B=5)
    obs[..., 0] *= 10.0  # one feature with a variance above 1: its error is measured in units of that variance
    states = random_states(policy, 5)
    with th.no_grad():
        got = policy.evaluate_trajectories(obs, actions, states, starts).aux_losses["next_obs"]
        want = reference_next_obs_loss(policy, obs, actions, states, starts)
    assert got.item() == pytest.approx(want, rel=1e-5)


def test_next_obs_loss_trains_the_actor_core_under_a_shared_critic_and_is_absent_without_the_head():
    env = graph_env(2)
    obs, actions, starts = rollout_tensors(env, T=5, B=3)
    policy = make_policy(env, critic="shared", predict_next_obs=True)
    policy.evaluate_trajectories(obs, actions, policy.initial_state(3), starts).aux_losses["next_obs"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in policy.next_obs_net.parameters())
    assert sum(p.grad.abs().sum() for p in policy.actor_core.parameters() if p.grad is not None) > 0
    plain = make_policy(env)
    assert plain.next_obs_net is None
    assert plain.evaluate_trajectories(obs, actions, plain.initial_state(3), starts).aux_losses == {}


@pytest.mark.parametrize("critic", CRITICS)
def test_adapter_on_packed_env_major_batches_equals_core_policy(critic):
    """The adapter, seeded alike, builds CorePolicy's parameters, and its sb3-contrib methods (flat env-major batches,
    packed states) give what CorePolicy's give on the same time-major data."""
    env = graph_env(2)
    th.manual_seed(1)
    native = make_policy(env, critic=critic)
    th.manual_seed(1)
    adapter = make_policy(env, FWMPolicy, critic=critic)
    for a, b in zip(native.state_dict().values(), adapter.state_dict().values(), strict=True):
        assert th.equal(a, b)
    T, B = 6, 4
    obs, actions, starts = rollout_tensors(env, T, B, seed=1)
    states = random_states(native, B)
    packed = adapter._pack_states(states, B)

    def env_major(x):  # [T, B, ...] -> sb3-contrib's flat [B * T, ...]
        return x.transpose(0, 1).reshape(B * T, *x.shape[2:])

    with th.no_grad():
        values, log_prob, entropy = adapter.evaluate_actions(
            env_major(obs), env_major(actions), packed, env_major(starts)
        )
        want = native.evaluate_actions(obs, actions, states, starts)
        th.testing.assert_close(values.squeeze(-1), env_major(want[0]))
        th.testing.assert_close(log_prob, env_major(want[1]))
        th.testing.assert_close(entropy, env_major(want[2]))
        th.testing.assert_close(
            adapter.predict_values(env_major(obs), packed.vf, env_major(starts)).squeeze(-1), env_major(want[0])
        )
        th.manual_seed(2)
        _, step_values, step_log_prob, step_states = adapter(obs[0], packed, starts[0])
        th.manual_seed(2)
        _, native_values, native_log_prob, native_states = native(obs[:1], states, starts[:1])
    th.testing.assert_close(step_values.squeeze(-1), native_values[0])
    th.testing.assert_close(step_log_prob, native_log_prob[0])
    for got, want_state in zip(adapter.unpack_state(step_states.pi), native_states.actor, strict=True):
        th.testing.assert_close(got, want_state)


# ------------------------------------------------------------------ the unmodified sb3-contrib RecurrentPPO


@pytest.mark.parametrize("critic", CRITICS)
def test_stock_recurrent_ppo_learns_saves_loads_predicts_and_continues(critic, tmp_path):
    env = graph_env(4)
    model = sb3_contrib.RecurrentPPO(
        FWMPolicy, env, n_steps=12, batch_size=24, n_epochs=2, policy_kwargs={**SMALL_FWM, "critic": critic},
        seed=0, device="cpu",
    )
    before = model.policy.parameters_to_vector().copy()
    model.learn(96)
    assert not np.allclose(before, model.policy.parameters_to_vector())
    model.save(tmp_path / "model")
    loaded = sb3_contrib.RecurrentPPO.load(tmp_path / "model", env=graph_env(4, seed=5), device="cpu")
    assert loaded.policy.critic_mode == critic and loaded.policy.core_kind == "fwm"
    assert_same_predictions(model, loaded, graph_env(4, seed=3))
    state_width = model.policy.lstm_actor.hidden_size
    _, state = loaded.predict(env.reset())
    assert [s.shape for s in state] == [(1, 4, state_width)] * 2
    loaded.learn(48, reset_num_timesteps=False)
    assert loaded.num_timesteps == 96 + 48


def test_stock_recurrent_ppo_with_evaluate_policy_and_eval_callback(tmp_path):
    env = graph_env(4)
    model = sb3_contrib.RecurrentPPO(FWMPolicy, env, n_steps=12, batch_size=48, n_epochs=1, policy_kwargs=SMALL_FWM,
                                     seed=0, device="cpu")
    callback = EvalCallback(graph_env(2, seed=9), n_eval_episodes=2, eval_freq=12, log_path=str(tmp_path), verbose=0)
    model.learn(96, callback=callback)
    assert callback.evaluations_results and np.isfinite(callback.last_mean_reward)
    mean, std = evaluate_policy(model, graph_env(3, seed=1), n_eval_episodes=3)
    assert np.isfinite(mean) and np.isfinite(std)


def test_stock_recurrent_ppo_runs_with_subproc_vec_env():
    env = sb3_make_vec_env(lambda: GraphNavEnv(**GRAPH), n_envs=2, seed=0, vec_env_cls=SubprocVecEnv,
                           vec_env_kwargs=dict(start_method="fork"))  # fork: no re-import of torch per worker
    try:
        model = sb3_contrib.RecurrentPPO(FWMPolicy, env, n_steps=12, batch_size=24, n_epochs=1,
                                         policy_kwargs=SMALL_FWM, seed=0, device="cpu")
        model.learn(48)
        assert model.num_timesteps == 48
    finally:
        env.close()


@pytest.mark.parametrize("policy_class", [CorePolicy, FWMPolicy])
def test_policy_level_save_load_keeps_core_and_critic(policy_class, tmp_path):
    env = graph_env(2)
    policy = make_policy(env, policy_class, core="lstm", hidden_size=12, critic="none", core_kwargs={})
    policy.save(tmp_path / "policy.pth")
    loaded = policy_class.load(tmp_path / "policy.pth", device="cpu")
    assert (loaded.core_kind, loaded.hidden_size, loaded.critic_mode) == ("lstm", 12, "none")
    for a, b in zip(policy.state_dict().values(), loaded.state_dict().values()):
        assert th.equal(a, b)
    obs = env.reset()
    assert_same_predictions(policy, loaded, env)
    assert obs.shape == (2, env.observation_space.shape[0])


def test_lstm_policy_defaults_to_an_lstm_of_sb3_contrib_size():
    env = graph_env(2)
    policy = LSTMPolicy(env.observation_space, env.action_space, lambda _: 1e-3)
    assert policy.core_kind == "lstm" and policy.hidden_size == 256 and policy.actor_core.hidden_size == 256


def dict_obs_env(seed: int = 0):
    """GraphNav with its observation inside a Dict."""

    def make():
        env = GraphNavEnv(**GRAPH)
        space = spaces.Dict({"obs": env.observation_space})
        return gym.wrappers.TransformObservation(env, lambda o: {"obs": o}, space)

    return sb3_make_vec_env(make, n_envs=2, seed=seed)


@pytest.mark.parametrize(
    "algo, policy", [(sb3_contrib.RecurrentPPO, MultiInputFWMPolicy), (RecurrentPPO, MultiInputCorePolicy)]
)
def test_multi_input_policy_handles_dict_observations(algo, policy, tmp_path):
    model = algo(policy, dict_obs_env(), n_steps=12, batch_size=24, n_epochs=1,
                 policy_kwargs=SMALL_FWM, seed=0, device="cpu")
    model.learn(48)
    model.save(tmp_path / "model")
    loaded = algo.load(tmp_path / "model", env=dict_obs_env(), device="cpu")
    assert_same_predictions(model, loaded, dict_obs_env(seed=2))


# ------------------------------------------------------------------ predict: bad inputs are one-line ValueErrors


def one_env_state(policy) -> tuple[np.ndarray, ...]:
    """A valid state for one env, in the policy's format (the core's tuple, or the adapter's packed pair)."""
    _, state = policy.predict(np.zeros((1, *policy.observation_space.shape), np.float32))
    return state


PACKED_GARBAGE = r"packed state must be two arrays \[1, B, \d+\] \(the state predict returned\), got "
NATIVE_GARBAGE = r"state must be the \(h, c, F\) tuple that predict returned, shapes \[\(3, 16\), \(3, 16\), "
BAD_PREDICT_INPUTS = {  # id: (state, episode_start, NaN observation entry, message)
    "state-of-1-env-for-3-obs": (one_env_state, None, None, r"state holds \[1\] env row\(s\) but the observation "
                                 r"holds 3: pass the state predict returned for these 3 envs, or state=None"),
    "short-episode-start": (None, np.ones(2, bool), None, r"episode_start must hold one flag per observation, "
                            r"shape \(3,\), got bool of shape \(2,\)"),
    "episode-start-of-wrong-rank": (None, np.ones((3, 1), bool), None, r"episode_start must hold one flag per "),
    "garbage-state": (("garbage",), None, None, "GARBAGE"),
    "state-not-a-tuple": (np.zeros(3), None, None, "GARBAGE"),
    "state-of-nones": ((None, None, None), None, None, "GARBAGE"),
    "nan-observation": (None, None, (1, 0), r"the observation holds NaN \(rows \[1\]\); check the environment"),
}


@pytest.mark.parametrize("algo, policy_class", [(RecurrentPPO, CorePolicy), (sb3_contrib.RecurrentPPO, FWMPolicy)],
                         ids=["core-policy", "sb3-contrib-adapter"])
@pytest.mark.parametrize("case", list(BAD_PREDICT_INPUTS))
def test_predict_rejects_bad_inputs_with_one_line_value_error(algo, policy_class, case):
    state, episode_start, nan_at, message = BAD_PREDICT_INPUTS[case]
    if message == "GARBAGE":
        message = PACKED_GARBAGE if policy_class is FWMPolicy else NATIVE_GARBAGE
    env = graph_env(3)
    model = algo(policy_class, env, n_steps=4, batch_size=12, policy_kwargs=SMALL_FWM, device="cpu")
    obs = env.reset()
    if nan_at is not None:
        obs[nan_at] = np.nan
    if callable(state):
        state = state(model.policy)
    with pytest.raises(ValueError, match=message) as error:
        model.predict(obs, state=state, episode_start=episode_start)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("algo, policy_class", [(RecurrentPPO, CorePolicy), (sb3_contrib.RecurrentPPO, FWMPolicy)],
                         ids=["core-policy", "sb3-contrib-adapter"])
def test_predict_state_round_trips_and_a_single_observation_works(algo, policy_class):
    env = graph_env(3)
    model = algo(policy_class, env, n_steps=4, batch_size=12, policy_kwargs=SMALL_FWM, device="cpu")
    obs = env.reset()
    actions, state = model.predict(obs, episode_start=np.ones(3, bool))
    actions, state = model.predict(obs, state=state, episode_start=np.zeros(3, bool))
    assert actions.shape == (3,)
    single, single_state = model.predict(obs[0])
    assert np.shape(single) == () and all(s.shape[-2 if policy_class is FWMPolicy else 0] == 1 for s in single_state)


def test_predict_carries_the_empty_state_of_a_memoryless_core_for_any_number_of_envs():
    env = graph_env(3)
    model = RecurrentPPO(CorePolicy, env, n_steps=4, batch_size=12, policy_kwargs=dict(core="mlp", hidden_size=8),
                         device="cpu")
    obs = env.reset()
    actions, state = model.predict(obs, episode_start=np.ones(3, bool))
    assert state == ()
    actions, state = model.predict(obs, state=state, episode_start=np.zeros(3, bool))
    assert actions.shape == (3,) and state == ()
