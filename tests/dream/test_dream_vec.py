"""`DreamVecEnv` against a scripted world model: starts, masks, refused actions, absent agents, episode ends, NaN."""

import numpy as np
import pytest
import torch
from numpy.testing import assert_array_equal
from scripted_wm import F, ScriptedStarts, ScriptedWorldModel, make_spec
from torch.testing import assert_close

from wmenv.dream import DreamVecEnv

SPEC = make_spec()  # N = 3 agents, A = 4 actions, masked
N, A = 3, 4
MASK = [[0.9, 0.5, 0.2, 0.7], [0.1, 0.2, 0.3, 0.4], [0.6, 0.6, 0.6, 0.6]]
"""Availability probabilities per agent: agent_0 -> [T, F, F, T] (0.5 is not above 0.5), agent_1 -> none (so all)."""
MASK_BOOL = torch.tensor([[True, False, False, True], [True] * 4, [True] * 4])


def scripted(**kwargs) -> ScriptedWorldModel:
    return ScriptedWorldModel(SPEC, **kwargs)


def cont_script(ends: dict[int, int], steps: int = 8) -> torch.Tensor:
    """(steps, N) continuation: agent n ends on step ``ends[n]`` (its prediction there is 0), 1 elsewhere."""
    cont = torch.ones(steps, N)
    for n, t in ends.items():
        cont[t, n] = 0.0
    return cont


def acts(*rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.long)


def zeros(B: int) -> torch.Tensor:
    return torch.zeros(B, N, dtype=torch.long)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_worlds": 0}, r"^num_worlds: expected an integer >= 1, got 0$"),
        ({"num_worlds": True}, r"^num_worlds: expected an integer >= 1, got True$"),
        ({"num_worlds": 2.0}, r"^num_worlds: expected an integer >= 1, got 2.0$"),
        ({"horizon": 0}, r"^horizon: expected an integer >= 1, got 0$"),
        ({"context": -1}, r"^context: expected an integer >= 1, got -1$"),
        ({"obs": "pixels"}, r"^obs: expected 'latent' or 'decoded', got 'pixels'$"),
        ({"start": ScriptedStarts(make_spec(id="other:v0"))}, r"^start: replay recorded for env \{'id': 'other:v0'.* is for "),
    ],
)
def test_bad_constructor_arguments_are_named(kwargs, match):
    """Each invalid argument raises a ValueError that starts with the argument's name."""
    with pytest.raises(ValueError, match=match):
        DreamVecEnv(scripted(), **{"num_worlds": 2, **kwargs})


def test_smallest_valid_arguments_and_replays_without_a_spec_are_accepted():
    """num_worlds = horizon = context = 1 are valid; a replay of the same env or with no recorded spec is accepted."""
    for start in (None, ScriptedStarts(SPEC), ScriptedStarts(None)):
        vec = DreamVecEnv(scripted(), num_worlds=1, horizon=1, context=1, start=start)
        assert vec.num_envs == 1 and vec.horizon == 1 and vec.reset().obs.shape == (1, N, F)


def test_reset_reports_fresh_worlds():
    """reset: the model's initial features, its critic view and mask, everyone alive, every per-step field zero."""
    model = scripted(mask=[MASK])
    vec = DreamVecEnv(model, num_worlds=2)
    assert vec.num_envs == 2 and not model.training and vec.device == torch.device("cpu")
    s = vec.reset()
    assert s.obs.shape == (2, N, F) and s.state.shape == (2, N * F)
    assert_close(
        s.obs[..., :5], torch.tensor([0.0, 0.0, -1.0, 0.0, 0.0]).repeat(2, N, 1) + torch.eye(5)[4] * torch.arange(N)[:, None]
    )
    assert_close(s.state, s.obs.flatten(1))
    assert_array_equal(s.action_mask, MASK_BOOL.expand(2, N, A))
    assert s.alive.dtype == torch.bool and s.alive.shape == (2, N) and s.alive.all()
    for field in (s.terminated, s.truncated):
        assert field.dtype == torch.bool and field.shape == (2, N) and not field.any()
    assert s.done.dtype == torch.bool and s.done.shape == (2,) and not s.done.any()
    for field, shape in (
        (s.reward, (2, N)),
        (s.final_obs, (2, N, F)),
        (s.final_state, (2, N * F)),
        (s.episode_return, (2, N)),
    ):
        assert_close(field, torch.zeros(shape))
    assert s.episode_length.dtype == torch.int64 and s.episode_length.shape == (2,) and not s.episode_length.any()


def test_step_before_reset_is_refused():
    """Stepping a dream that was never reset raises a RuntimeError saying so."""
    with pytest.raises(RuntimeError, match=r"^DreamVecEnv.step before reset$"):
        DreamVecEnv(scripted(), num_worlds=1).step(zeros(1))


def view(t: float, act: float = 0.0, origin: float = -1.0, ctx: float = 0.0) -> torch.Tensor:
    """(N, 5): the scripted features [t, act, origin, ctx, agent index] of every agent (without the random draw)."""
    return torch.stack([torch.tensor([t, act, origin, ctx, n]) for n in range(N)])


@pytest.mark.parametrize("kind", ["latent", "decoded"])
def test_observations_are_features_or_decoded_predictions(kind):
    """obs="latent" hands out the model's features, obs="decoded" its decoded observations; the critic view is features."""
    vec = DreamVecEnv(scripted(), num_worlds=2, horizon=2, obs=kind)

    def expected(features):
        return features if kind == "latent" else -features - 1

    s = vec.reset()
    for t in (0, 1):
        features = s.state.view(2, N, F)
        assert_close(features[..., :5], view(t).expand(2, N, 5))
        assert_close(s.obs, expected(features))
        s = vec.step(zeros(2))
    assert s.done.all()
    assert_close(s.final_obs[..., :5], expected(view(2)).expand(2, N, 5))
    assert_close(s.final_state.view(2, N, F)[..., :5], view(2).expand(2, N, 5))
    assert_close(s.final_obs[..., 5], expected(s.final_state.view(2, N, F))[..., 5])
    assert_close(s.obs[..., :5], expected(view(0)).expand(2, N, 5))


def test_action_mask_is_the_predicted_availability_above_the_threshold():
    """Masks are predicted probabilities > mask_threshold (0.5 by default); an agent with none gets all actions."""
    model = scripted(mask=[MASK, [[0.1, 0.9, 0.9, 0.2], MASK[0], [0.51, 0.49, 0.0, 1.0]]])
    vec = DreamVecEnv(model, num_worlds=2)
    assert_array_equal(vec.reset().action_mask, MASK_BOOL.expand(2, N, A))
    s = vec.step(acts([0, 0, 0], [3, 2, 1]))
    step1 = torch.tensor([[False, True, True, False], [True, False, False, True], [True, False, False, True]])
    assert_array_equal(s.action_mask, step1.expand(2, N, A))
    strict = DreamVecEnv(scripted(mask=[MASK]), num_worlds=1, mask_threshold=0.65)
    assert_array_equal(strict.reset().action_mask[0], [[True, False, False, True], [True] * 4, [True] * 4])
    loose = DreamVecEnv(scripted(mask=[MASK]), num_worlds=1, mask_threshold=0.15)
    assert_array_equal(loose.reset().action_mask[0], [[True, True, True, True], [False, True, True, True], [True] * 4])


def test_unmasked_models_allow_every_action():
    """A model of an env without masks predicts none: every action is available to every agent."""
    vec = DreamVecEnv(ScriptedWorldModel(make_spec(masked=False)), num_worlds=2)
    s = vec.reset()
    assert s.action_mask.dtype == torch.bool and s.action_mask.shape == (2, N, A) and s.action_mask.all()
    s = vec.step(acts([1, 2, 3], [3, 2, 1]))
    assert s.action_mask.shape == (2, N, A) and s.action_mask.all()


@pytest.mark.parametrize(
    "world, agent, action",
    [(0, 0, 1), (0, 0, 2), (1, 0, 2)],
)
def test_masked_actions_are_refused_naming_agent_and_world(world, agent, action):
    """An action the model predicts unavailable for a present agent raises a ValueError naming agent, world and action."""
    vec = DreamVecEnv(scripted(mask=[MASK]), num_worlds=2)
    vec.reset()
    actions = zeros(2)
    actions[world, agent] = action
    match = rf"^actions: agent 'agent_{agent}' in world {world} chose action {action}, which the model predicts unavailable"
    with pytest.raises(ValueError, match=match):
        vec.step(actions)
    assert vec.model.imagined == []


def test_available_actions_next_to_masked_ones_are_accepted():
    """The first and last actions are checked against their own availability, not a neighbour's."""
    model = scripted(mask=[[[0.9, 0.1, 0.9, 0.9], [0.9, 0.9, 0.1, 0.9], [0.9] * 4]])
    vec = DreamVecEnv(model, num_worlds=1)
    vec.reset()
    vec.step(acts([0, 3, 3]))  # agent_0: action 0 (action 1 masked); agent_1: action 3 (action 2 masked)
    assert_array_equal(model.imagined[-1], [[0, 3, 3]])


@pytest.mark.parametrize(
    "actions, error, match",
    [
        (np.zeros((2, N), np.int64), None, None),
        (torch.zeros(2, N, dtype=torch.int32), None, None),
        ([[0, 0, 0], [0, 0, 0]], TypeError, r"^actions: expected a tensor or NumPy array of shape \(2, 3\), got list$"),
        (
            torch.zeros(2, N + 1, dtype=torch.long),
            ValueError,
            r"^actions: expected shape \(2, 3\) \(worlds, agents\), got \(2, 4\)$",
        ),
        (torch.zeros(2, N), TypeError, r"^actions: expected an integer dtype, got torch.float32$"),
        (torch.zeros(2, N, dtype=torch.bool), TypeError, r"^actions: expected an integer dtype, got torch.bool$"),
        (torch.zeros(2, N, dtype=torch.complex64), TypeError, r"^actions: expected an integer dtype, got torch.complex64$"),
        (
            acts([0, 0, 0], [0, 0, 4]),
            ValueError,
            r"^actions: agent 'agent_2' in world 1: expected an action in \[0, 4\), got 4$",
        ),
        (
            acts([0, -1, 0], [0, 0, 0]),
            ValueError,
            r"^actions: agent 'agent_1' in world 0: expected an action in \[0, 4\), got -1$",
        ),
        (
            acts([0, 9, 0], [7, 0, 0]),
            ValueError,
            r"^actions: agent 'agent_1' in world 0: expected an action in \[0, 4\), got 9$",
        ),
    ],
)
def test_actions_are_checked_for_type_shape_and_range(actions, error, match):
    """(B, N) integer tensors or arrays in [0, A) are accepted; anything else is refused naming the argument."""
    vec = DreamVecEnv(scripted(), num_worlds=2)
    vec.reset()
    if error is None:
        vec.step(actions)
        assert vec.model.imagined[-1].dtype == torch.int64
        return
    with pytest.raises(error, match=match):
        vec.step(actions)


def test_absent_agents_get_zero_reward_all_actions_and_their_actions_are_ignored():
    """An agent that ended is absent: no reward, every action allowed, any action (even out of range) replaced by 0."""
    model = scripted(cont=cont_script({1: 2}), mask=[MASK])
    vec = DreamVecEnv(model, num_worlds=2, horizon=10)
    vec.reset()
    s = vec.step(acts([0, 1, 2], [3, 2, 1]))
    assert_close(s.reward, torch.tensor([[11.0, 12.0, 13.0]] * 2))
    assert s.alive.all() and not s.terminated.any()
    s = vec.step(acts([0, 3, 2], [3, 0, 1]))  # step 2: agent_1 ends, receiving its reward
    assert_close(s.reward, torch.tensor([[21.0, 22.0, 23.0]] * 2))
    assert_array_equal(s.terminated, [[False, True, False]] * 2)
    assert_array_equal(s.alive, [[True, False, True]] * 2)
    assert not s.done.any() and not s.truncated.any()
    assert_array_equal(s.action_mask[:, 1], torch.ones(2, A, dtype=torch.bool))
    assert_array_equal(s.action_mask[:, 0], MASK_BOOL[0].expand(2, A))
    s = vec.step(acts([0, 99, 2], [3, -5, 1]))  # agent_1's actions are not checked
    assert_array_equal(model.imagined[-1], [[0, 0, 2], [3, 0, 1]])
    s = vec.step(acts([0, 1, 2], [3, 2, 1]))  # nor masked: agent_1's mask would refuse 1 and 2
    assert_array_equal(model.imagined[-1], [[0, 0, 2], [3, 0, 1]])
    assert_close(s.reward, torch.tensor([[41.0, 0.0, 43.0]] * 2))
    assert not s.terminated.any() and not s.done.any()
    assert_array_equal(s.alive, [[True, False, True]] * 2)


def test_worlds_end_alone_and_restart_in_place():
    """A world ends when all its agents have (or at the horizon) and restarts alone: return, length and t start over."""
    model = scripted(quit=3, mask=[MASK])
    vec = DreamVecEnv(model, num_worlds=2, horizon=3)
    vec.reset()
    s = vec.step(acts([3, 3, 3], [3, 0, 1]))  # every agent of world 0 quits, and agent_0 of world 1
    assert_array_equal(s.done, [True, False])
    assert_array_equal(s.terminated, [[True, True, True], [True, False, False]])
    assert not s.truncated.any()
    assert_close(s.reward, torch.tensor([[11.0, 12.0, 13.0]] * 2))
    assert_close(s.episode_return, torch.tensor([[11.0, 12.0, 13.0], [0.0, 0.0, 0.0]]))
    assert_array_equal(s.episode_length, [1, 0])
    assert_close(s.final_obs[0, :, :3], torch.tensor([[1.0, 3.0, -1.0]] * N))  # t = 1 after action 3
    assert_close(s.final_obs[1], torch.zeros(N, F))
    assert_close(s.final_state[0], s.final_obs[0].flatten())
    assert_close(s.final_state[1], torch.zeros(N * F))
    assert_close(s.obs[0, :, :3], torch.tensor([[0.0, 0.0, -1.0]] * N))  # world 0's new episode
    assert_close(s.obs[1, :, :2], torch.tensor([[1.0, 3.0], [1.0, 0.0], [1.0, 1.0]]))
    assert_close(s.state, s.obs.flatten(1))
    assert_array_equal(s.alive, [[True, True, True], [False, True, True]])
    assert_array_equal(s.action_mask[0], MASK_BOOL)
    assert_array_equal(s.action_mask[1], [[True] * 4, [True] * 4, [True] * 4])
    s = vec.step(zeros(2))
    assert not s.done.any()
    assert_close(s.reward, torch.tensor([[11.0, 12.0, 13.0], [0.0, 22.0, 23.0]]))
    s = vec.step(zeros(2))  # world 1 reaches the horizon (t = 3), world 0 is at t = 2
    assert_array_equal(s.done, [False, True])
    assert_array_equal(s.truncated, [[False, False, False], [False, True, True]])
    assert not s.terminated.any()
    assert_close(s.episode_return, torch.tensor([[0.0, 0.0, 0.0], [11.0, 12.0 + 22.0 + 32.0, 13.0 + 23.0 + 33.0]]))
    assert_array_equal(s.episode_length, [0, 3])
    assert_close(s.obs[:, :, 0], torch.tensor([[2.0] * N, [0.0] * N]))
    assert s.alive.all()
    s = vec.step(zeros(2))  # world 0's second episode reaches the horizon: only its own three steps count
    assert_array_equal(s.done, [True, False])
    assert_array_equal(s.truncated, [[True, True, True], [False, False, False]])
    assert_close(s.episode_return[0], torch.tensor([11.0 + 21.0 + 31.0, 12.0 + 22.0 + 32.0, 13.0 + 23.0 + 33.0]))
    assert_array_equal(s.episode_length, [3, 0])


def test_the_horizon_truncates_present_agents_only():
    """On step ``horizon`` the present agents are truncated, absent ones are not, one ending then is terminated."""
    vec = DreamVecEnv(scripted(cont=cont_script({0: 1, 1: 3})), num_worlds=1, horizon=3)
    vec.reset()
    for t in (1, 2):
        s = vec.step(zeros(1))
        assert not s.done.any() and not s.truncated.any(), t
    s = vec.step(zeros(1))
    assert s.done.all()
    assert_array_equal(s.terminated, [[False, True, False]])
    assert_array_equal(s.truncated, [[False, False, True]])


def test_the_default_horizon_is_15_steps():
    """Without ``horizon`` a world is truncated on its 15th step."""
    vec = DreamVecEnv(scripted(), num_worlds=1)
    vec.reset()
    done = [bool(vec.step(zeros(1)).done[0]) for _ in range(15)]
    assert done == [False] * 14 + [True]


def test_continuation_probabilities_are_clipped_to_0_1():
    """Predicted continuations a little outside [0, 1] count as certain: > 1 goes on, < 0 ends."""
    vec = DreamVecEnv(scripted(cont=[[1.0, 1.0, 1.0], [1.5, -0.5, 1.0]]), num_worlds=2)
    vec.reset()
    s = vec.step(zeros(2))
    assert_array_equal(s.terminated, [[False, True, False]] * 2)


@pytest.mark.parametrize("what, kind", [("reward", "latent"), ("obs", "decoded")])
def test_nan_predictions_are_reported_with_step_world_and_agent(what, kind):
    """A NaN reward or observation raises a FloatingPointError naming the episode step, the world and the agent."""
    vec = DreamVecEnv(scripted(nan=(2, 2, what)), num_worlds=2, obs=kind)
    vec.reset()
    vec.step(zeros(2))
    with pytest.raises(
        FloatingPointError, match=r"^the world model produced NaN/inf at step 2 of world 0 for agent 'agent_2'$"
    ):
        vec.step(zeros(2))


def test_a_seed_fixes_every_draw_and_reseeding_restarts_it():
    """Same seed, same dream (starts and steps); another seed, another dream; seed() rewinds; the default seed is 0."""

    def run(vec, steps=3):
        out = [vec.reset().obs]
        out += [vec.step(zeros(2)).obs for _ in range(steps)]
        return torch.stack(out)

    a = run(DreamVecEnv(scripted(), num_worlds=2, seed=3))
    assert_close(a, run(DreamVecEnv(scripted(), num_worlds=2, seed=3)))
    assert not torch.equal(a, run(DreamVecEnv(scripted(), num_worlds=2, seed=4)))
    vec = DreamVecEnv(scripted(), num_worlds=2, seed=4)
    run(vec)
    vec.seed(3)
    assert_close(run(vec), a)
    assert_close(run(DreamVecEnv(scripted(), num_worlds=2)), run(DreamVecEnv(scripted(), num_worlds=2, seed=0)))


def test_replay_starts_are_the_models_posteriors_of_sampled_windows():
    """start=replay: windows of ``context`` rows, drawn with seed+1, seed+2, ... are filtered by ``model.observe``."""
    model, starts = scripted(), ScriptedStarts(SPEC)
    vec = DreamVecEnv(model, num_worlds=2, start=starts, context=3, seed=7, horizon=2)
    s = vec.reset()
    assert starts.calls == [{"batch_size": 2, "length": 3, "generator": 8, "device": vec.device}]
    seen = model.observed[-1]
    assert seen["alive"].dtype == torch.bool and seen["alive"].shape == (2, 3, N) and seen["alive"].all()
    assert seen["generator"] is vec.generator and seen["resets"].shape == (2, 3)
    assert_close(seen["actions"], torch.arange(2 * 3 * N).reshape(2, 3, N) % A)
    origin = 8000.0 + 10 * torch.arange(2.0)[:, None] + torch.arange(N)
    assert_close(s.obs[..., 2], origin)  # the last real observation of each window
    assert_close(s.obs[..., 3], torch.full((2, N), 3.0))  # 3 rows of context
    assert_close(s.obs[..., 1], (torch.arange(2 * 3 * N).reshape(2, 3, N) % A)[:, -1].float())
    vec.step(zeros(2))
    s = vec.step(zeros(2))  # horizon: both worlds restart from a fresh window
    assert starts.calls[-1] == {"batch_size": 2, "length": 3, "generator": 9, "device": vec.device}
    assert_close(s.obs[..., 2], origin + 1000)
    vec.seed(1)
    vec.reset()
    assert starts.calls[-1]["generator"] == 2


def test_replay_starts_default_to_8_rows_of_context():
    """Without ``context`` a replay start filters 8 real rows."""
    starts = ScriptedStarts(SPEC)
    DreamVecEnv(scripted(), num_worlds=1, start=starts).reset()
    assert starts.calls[0]["length"] == 8 and starts.calls[0]["generator"] == 1


def test_a_step_reuses_the_prediction_of_imagine():
    """A step asks the model for one prediction (imagine's), and one more per restarted world batch only."""
    model = scripted()
    vec = DreamVecEnv(model, num_worlds=2, horizon=2)
    vec.reset()
    before = model.predictions
    vec.step(zeros(2))
    assert model.predictions == before + 1
    vec.step(zeros(2))  # both worlds restart: their fresh starts are predicted once more
    assert model.predictions == before + 3


def test_one_agent_models_step_and_end():
    """With N = 1 a world ends exactly when its agent does."""
    vec = DreamVecEnv(ScriptedWorldModel(make_spec(n_agents=1), cont=[[1.0], [1.0], [0.0]]), num_worlds=2)
    s = vec.reset()
    assert s.done.shape == (2,) and not s.done.any()
    assert not vec.step(torch.zeros(2, 1, dtype=torch.long)).done.any()
    s = vec.step(torch.zeros(2, 1, dtype=torch.long))
    assert s.done.all() and s.terminated.all()
    assert_array_equal(s.episode_length, [2, 2])


def test_thresholded_terminations_end_agents_below_one_half_in_every_world():
    """``terminations="threshold"`` (DRAMA's code: termination logit > 0): an agent ends where its continuation is below
    0.5, in every world and for any seed; ``"sample"`` ends it with probability 1 - p."""
    model = scripted(cont=torch.tensor([[0.6, 0.4, 0.5]]))
    ends = []
    for seed in range(3):
        vec = DreamVecEnv(model, num_worlds=4, horizon=10, seed=seed, terminations="threshold")
        vec.reset()
        ends.append(vec.step(acts(*[[0, 1, 2]] * 4)).terminated)
    assert all(torch.equal(e, torch.tensor([[False, True, False]] * 4)) for e in ends)
    vec = DreamVecEnv(model, num_worlds=4000, horizon=10, seed=0)
    vec.reset()
    rate = vec.step(torch.tensor([[0, 1, 2]] * 4000)).terminated.float().mean(0)
    assert_close(rate, torch.tensor([0.4, 0.6, 0.5]), atol=0.03, rtol=0)
    with pytest.raises(ValueError, match="terminations: expected 'sample', 'threshold' or 'expected', got 'never'"):
        DreamVecEnv(model, num_worlds=1, terminations="never")


def test_expected_terminations_never_end_agents_and_report_the_continuation_as_a_discount():
    """``terminations="expected"`` (MAMBA's and MABL's code): no agent ends before the horizon, whatever its
    continuation; each step's discount is that probability; the other modes report 1."""
    model = scripted(cont=torch.tensor([[0.6, 0.1, 0.0]]))
    vec = DreamVecEnv(model, num_worlds=2, horizon=3, seed=0, terminations="expected")
    assert torch.equal(vec.reset().discount, torch.ones(2, 3))
    for t in range(3):
        step = vec.step(acts(*[[0, 1, 2]] * 2))
        assert not step.terminated.any() and step.alive.all()
        assert_close(step.discount, torch.tensor([[0.6, 0.1, 0.0]] * 2))
        assert torch.equal(step.truncated, torch.full((2, 3), t == 2)) and torch.equal(step.done, torch.full((2,), t == 2))
    sampled = DreamVecEnv(model, num_worlds=2, horizon=3, seed=0)
    sampled.reset()
    assert torch.equal(sampled.step(acts(*[[0, 1, 2]] * 2)).discount, torch.ones(2, 3))


def test_reset_starts_from_given_states_and_later_ends_draw_starts():
    """``reset(start=...)``: the B worlds begin at the given states (their features, masks and first rewards are those
    states'); a world that ends later restarts from a drawn start; a start of another batch size or without the
    model's state keys is refused with the name of what is wrong."""
    model = scripted()
    vec = DreamVecEnv(model, num_worlds=2, horizon=2, start=ScriptedStarts(SPEC))
    start = model._state(2, torch.tensor([[3.0] * N, [5.0] * N]), zeros(2), torch.full((2, N), 7.0), 2.0, None)
    s = vec.reset(start=start)
    assert_close(s.obs[..., 0], start["t"]) and assert_close(s.obs[..., 2], start["origin"])
    assert not model.observed  # nothing drawn from the replay
    s = vec.step(zeros(2))  # t 3 -> 4 and 5 -> 6: the scripts' rewards at those rows
    assert_close(s.reward, model.reward[[4, 6]])
    assert not s.done.any()
    s = vec.step(zeros(2))
    assert s.done.all() and len(model.observed) == 1  # the worlds end at the horizon and restart from replay windows
    assert_array_equal(s.obs[..., 0].numpy(), np.zeros((2, N)))
    bad_keys = {k: v for k, v in start.items() if k != "u"}
    with pytest.raises(ValueError, match=r"^start: expected a state with keys \['act', 'ctx', 'origin', 't', 'u'\], got "):
        vec.reset(start=bad_keys)
    with pytest.raises(ValueError, match=r"^start\['t'\]: expected shape \(2, 3\), got \(1, 3\)$"):
        vec.reset(start={k: v[:1] for k, v in start.items()})
