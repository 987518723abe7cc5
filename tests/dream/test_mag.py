"""MAG's planned imagination: per-step errors that reproduce the loss, the error predictor, per-world selection, plain
imagination at L = H = 1, seeds, refusals."""

import pytest
import torch

from agents.policies import make_policy
from wmenv.data.collect import random_replay
from wmenv.dream import DreamVecEnv
from wmenv.dream.mag import ErrorPredictor, ErrorPredictorConfig, MAGConfig, MAGPlanner, fit_error_predictor
from wmenv.fit import FitConfig, fit
from wmenv.models.mabl import MABLWorldModel, mabl_preset
from wmenv.models.mamba_wm import MAMBAWorldModel, preset


@pytest.fixture(scope="module")
def fitted():
    """A small MAMBA model fitted (400 steps) on 2,000 random MPE steps, the replay and a held-out replay."""
    replay, spec = random_replay("mpe:simple_spread_v3", 2000, seed=0)
    held, _ = random_replay("mpe:simple_spread_v3", 500, seed=1)
    torch.manual_seed(0)
    model = MAMBAWorldModel(spec, preset("small"))
    fit(model, replay, FitConfig(steps=400, batch_size=16, seq_len=20, progress=False))
    return model.eval(), replay, held


def actor(model, seed=0):
    torch.manual_seed(seed)
    return make_policy("gru", model.feature_widths()[0], model.spec.n_actions).eval()


def planner(model, L, H, selection="per_world", seed=0, predictor_seed=0):
    torch.manual_seed(predictor_seed)
    predictor = ErrorPredictor(model, ErrorPredictorConfig(hidden=32, layers=2))
    return MAGPlanner(predictor, actor(model), MAGConfig(candidates=L, lookahead=H, selection=selection), seed=seed)


def rollout(env, steps=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = [env.reset()]
    for _ in range(steps):
        logits = torch.rand(env.num_worlds, env.spec.n_agents, env.spec.n_actions, generator=g)
        out.append(env.step(logits.masked_fill(~out[-1].action_mask, -1).argmax(-1)))
    return out


@pytest.mark.parametrize(
    ("env_id", "kind", "preset_name"),
    [("mpe:simple_spread_v3", "mamba", "small"), ("flatland:5", "mamba", "small"), ("mpe:simple_spread_v3", "mabl", "small"),
     ("mpe:simple_spread_v3", "mabl-shared", "small")],
)  # fmt: skip
def test_step_errors_reproduce_the_loss(env_id, kind, preset_name):
    """StepErrors.loss() = model.loss() to 1e-5 (same seed; an absent agent; Flatland has action masks); per_agent
    sums the weighted terms where each counts; the features are the prior's [h, z] of every row."""
    replay, spec = random_replay(env_id, 400, **({"dense_reward": True} if "flatland" in env_id else {}))
    torch.manual_seed(0)
    if kind == "mamba":
        model = MAMBAWorldModel(spec, preset(preset_name))
    else:
        model = MABLWorldModel(spec, mabl_preset(preset_name, "shared" if kind == "mabl-shared" else "per_agent"))
    batch = replay.sample(6, 12, generator=0)
    batch["alive"][:, 6:, 0] = False  # agent 0 leaves half-way: its rows count only where the loss counts them
    torch.manual_seed(4)
    loss, _ = model.loss(batch)
    torch.manual_seed(4)
    errors = model.step_errors(batch)
    assert float(errors.loss().detach()) == pytest.approx(float(loss.detach()), abs=1e-5, rel=1e-5)
    assert errors.weights["info"] == model.config.info_scale
    assert errors.features.shape == (6, 12, spec.n_agents, model.feature_widths()[0])
    per = errors.per_agent()
    obs_err, alive = errors.errors["obs"]
    kl = sum(errors.weights[k] * errors.errors[k][0] for k in ("kl", "kl_agent", "kl_global") if k in errors.errors)
    expected = errors.errors["reward"][0] + errors.errors["cont"][0] + kl + obs_err * alive
    expected = expected + errors.errors["info"][0] * errors.errors["info"][1]
    if spec.action_masked:
        expected = expected + errors.errors["action_mask"][0] * errors.errors["action_mask"][1]
    torch.testing.assert_close(per, expected)
    assert ("action_mask" in errors.errors) == spec.action_masked == ("flatland" in env_id)


def test_the_predictor_learns_the_errors_and_ranks_held_out_rows(fitted):
    """On real MPE windows the predictor's Huber loss halves, and on held-out windows its predictions rank the realised
    per-agent errors (Spearman > 0.3)."""
    model, replay, held = fitted
    torch.manual_seed(0)
    predictor = ErrorPredictor(model, ErrorPredictorConfig(minibatches=300))
    history = fit_error_predictor(predictor, model, replay, torch.Generator().manual_seed(0))
    first, last = sum(history["loss"][:10]) / 10, sum(history["loss"][-10:]) / 10
    assert last < 0.5 * first, (first, last)
    batch = held.sample(64, 20, generator=3)
    torch.manual_seed(3)
    with torch.no_grad():
        errors = model.step_errors(batch)
        rows = batch["alive"].bool()
        predicted, realised = predictor(errors.features)[rows], errors.per_agent()[rows]
    rank = lambda x: x.argsort().argsort().double()  # noqa: E731
    spearman = torch.corrcoef(torch.stack([rank(predicted), rank(realised)]))[0, 1]
    assert spearman > 0.3, float(spearman)


def test_selection_is_per_world(fitted):
    """B = 64, L = 4, H = 3: every world keeps its own argmin candidate, the picks differ between worlds, and the
    returned state and prediction rows are the chosen candidate's."""
    model, replay, _ = fitted
    plan = planner(model, 4, 3)
    env = DreamVecEnv(model, 64, start=replay, seed=0, planner=plan)
    seen = {}
    imagine, lookahead = model.imagine, plan._lookahead

    def spy_imagine(*a, **kw):
        out = imagine(*a, **kw)
        seen.setdefault("candidates", out)  # the first call of the step: the L x B candidates
        return out

    def spy_lookahead(*a, **kw):
        seen["score"] = lookahead(*a, **kw)
        return seen["score"]

    first = env.reset()
    model.imagine, plan._lookahead = spy_imagine, spy_lookahead
    try:
        step = env.step(first.action_mask.float().argmax(-1))
    finally:
        del model.imagine
    score = seen["score"].view(4, 64)
    pick = score.argmin(0)
    assert len(set(pick.tolist())) > 1
    cand_state, cand_pred = seen["candidates"]
    rows = pick * 64 + torch.arange(64)
    live = ~step.done  # worlds that did not restart show the chosen candidate
    assert live.sum() > 32
    torch.testing.assert_close(env._state["deter"][live], cand_state["deter"][rows][live])
    torch.testing.assert_close(step.reward[live], cand_pred.reward[rows][live])
    torch.testing.assert_close(step.obs[live], model.features(cand_state)[rows][live])


def test_per_batch_selection_picks_one_candidate_for_all_worlds(fitted):
    """selection="per_batch" (the authors' released code): one candidate index, the lowest summed score."""
    model, replay, _ = fitted
    plan = planner(model, 4, 2, selection="per_batch")
    state = model.initial(16, generator=torch.Generator().manual_seed(0))
    plan.reset(16, model.spec.n_agents)
    actions = torch.zeros(16, model.spec.n_agents, dtype=torch.long)
    present = torch.ones(16, model.spec.n_agents, dtype=torch.bool)
    env = DreamVecEnv(model, 16, seed=0)
    g = torch.Generator().manual_seed(1)
    chosen, _ = plan.imagine(model, state, actions, g, False, present, env._view)
    g = torch.Generator().manual_seed(1)
    tile = {k: v.repeat(4, *[1] * (v.dim() - 1)) for k, v in state.items()}
    with torch.no_grad():
        cand, _ = model.imagine(tile, actions.repeat(4, 1), g, False, present=present.repeat(4, 1))
    stoch = cand["stoch"].view(4, 16, *cand["stoch"].shape[1:])  # the candidates differ in their latent samples
    matches = [torch.equal(chosen["stoch"], stoch[j]) for j in range(4)]
    assert sum(matches) == 1, "every world took the same one candidate"


def test_one_candidate_and_no_lookahead_is_plain_imagination(fitted):
    """L = 1, H = 1 reproduces the plain dream bit for bit (same seed), through auto-resets."""
    model, replay, _ = fitted
    plain = rollout(DreamVecEnv(model, 32, start=replay, seed=5))
    planned = rollout(DreamVecEnv(model, 32, start=replay, seed=5, planner=planner(model, 1, 1)))
    assert any(bool(s.done.any()) for s in plain)
    for a, b in zip(plain, planned, strict=True):
        for name in ("obs", "state", "reward", "alive", "done", "action_mask"):
            assert torch.equal(getattr(a, name), getattr(b, name)), name


def test_same_seed_same_planned_dream(fitted):
    """L = 4, H = 3: the same seeds give the same rollout; another planner seed another one."""
    model, replay, _ = fitted
    run = lambda seed: rollout(DreamVecEnv(model, 16, start=replay, seed=2, planner=planner(model, 4, 3, seed=seed)), 8)  # noqa: E731
    a, b, c = run(0), run(0), run(1)
    assert all(torch.equal(x.obs, y.obs) and torch.equal(x.reward, y.reward) for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(x.obs, y.obs) for x, y in zip(a, c, strict=True))


def test_the_lookahead_leaves_global_randomness_and_the_shadow_tracks_the_actor_state(fitted):
    """The planner draws only from its own and the dream's generators (torch's global stream is untouched); its shadow
    of the actor state equals the state the learner gets by running the same policy on what the dream showed it."""
    model, replay, _ = fitted
    plan = planner(model, 2, 3)
    env = DreamVecEnv(model, 8, start=replay, seed=0, planner=plan)
    before = torch.random.get_rng_state()
    s = env.reset()
    h = plan.policy.initial_state(8 * model.spec.n_agents)
    resets = torch.ones(8 * model.spec.n_agents, dtype=torch.bool)
    for _ in range(4):
        logits, h = plan.policy.step(s.obs.flatten(0, 1), h, resets)
        s = env.step(logits.argmax(-1).view(8, -1))
        resets = (s.terminated | s.truncated | s.done[:, None]).flatten()
        torch.testing.assert_close(plan._actor, h)
    assert torch.equal(torch.random.get_rng_state(), before)


def test_bad_configurations_and_models_are_refused(fitted):
    """L or H < 1, a model without per-step errors, a predictor fitted for another model: ValueErrors naming them."""
    model, replay, _ = fitted
    with pytest.raises(ValueError, match=r"^MAGConfig.candidates: expected an integer >= 1, got 0$"):
        MAGConfig(candidates=0)
    with pytest.raises(ValueError, match=r"^MAGConfig.lookahead: expected an integer >= 1, got 0$"):
        MAGConfig(lookahead=0)
    with pytest.raises(ValueError, match=r"^MAGConfig.selection: expected 'per_world' or 'per_batch', got 'best'$"):
        MAGConfig(selection="best")

    class NoErrors(MAMBAWorldModel):
        has_step_errors = False

    blind = NoErrors(model.spec, preset("small"))
    with pytest.raises(ValueError, match=r"^model: MAG needs per-step errors, NoErrors has no step_errors$"):
        ErrorPredictor(blind)
    plan = planner(model, 2, 2)
    with pytest.raises(ValueError, match=r"^planner: MAG needs a model with per-step errors, NoErrors has"):
        DreamVecEnv(blind, 4, planner=plan)
    other_spec = random_replay("mpe:simple_spread_v3", 50, seed=0, N=4)[1]
    other = MAMBAWorldModel(other_spec, preset("small"))
    with pytest.raises(ValueError, match=r"^predictor: fitted for MAMBAWorldModel\|.* the model is MAMBAWorldModel\|"):
        DreamVecEnv(other, 4, planner=plan)
    with pytest.raises(ValueError, match=r"^predictor: fitted for "):
        fit_error_predictor(plan.predictor, other, replay, torch.Generator())


def test_the_lookahead_only_takes_actions_the_model_predicts_available():
    """Flatland (action masks): every action the lookahead imagines is available in the predicted mask it was chosen
    under, and the planned dream steps through auto-resets without a refused action."""
    replay, spec = random_replay("flatland:5", 400, dense_reward=True)
    torch.manual_seed(0)
    model = MAMBAWorldModel(spec, preset("small")).eval()
    plan = planner(model, 3, 3)
    env = DreamVecEnv(model, 8, start=replay, seed=0, planner=plan, horizon=6)
    events = []  # ("view", mask) and ("imagine", actions) in call order
    view, imagine = env._view, model.imagine

    def spy_view(state, pred=None):
        out = view(state, pred)
        events.append(("view", out[2]))
        return out

    def spy_imagine(state, actions, *a, **kw):
        events.append(("imagine", actions))
        return imagine(state, actions, *a, **kw)

    env._view, model.imagine = spy_view, spy_imagine
    try:
        steps = rollout(env, steps=8)
    finally:
        del model.imagine
    assert any(bool(s.done.any()) for s in steps)
    rows = 3 * 8  # L x B: the lookahead's views and imaginings; the env's own views have B rows
    pairs = [(m, a) for (kind, m), (nxt, a) in zip(events, events[1:]) if kind == "view" and nxt == "imagine"
             and m.shape[0] == a.shape[0] == rows]  # fmt: skip
    assert len(pairs) == 8 * 2  # H - 1 = 2 lookahead steps per planned step
    for mask, actions in pairs:
        assert mask.gather(-1, actions.unsqueeze(-1)).all()
    assert any(not m.all() for m, _ in pairs)  # the predicted masks do forbid actions
