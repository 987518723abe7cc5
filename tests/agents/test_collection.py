"""Overlapped collection (issue 19, item 3): a worker collects one update's real data with the weights it is sent, its
pending state resumes exactly, and the model-based loop runs, counts and resumes with it; in a Ray actor (where Ray is
installed) it gives the local worker's data."""

import importlib.util

import numpy as np
import pytest
import torch
from test_model_based import _small

from agents.collection import CollectWorker, OverlappedCollection, actor_weights
from agents.model_based import ModelBasedConfig, run
from wmenv.models.registry import build_model


def _worker_args(agent, model=None, **kw):
    return {"env_id": "mpe:simple_spread_v3", "env_kwargs": {}, "num_envs": 2, "seed": 3, "agent": agent, "model": model,
            "filter_seed": 4, "stream": False, "real_steps": 60, "real_episodes": 0, **kw}  # fmt: skip


@pytest.fixture(scope="module")
def agent_and_model():
    """The MAPPO agent and `small` world model of a fresh latent-actor loop config (built as the loop builds them)."""
    from agents.critic import AttentionCritic
    from agents.mappo import MAPPO
    from agents.model_based import DreamSpec
    from agents.policies import make_policy
    from wmenv.envs import make

    cfg = ModelBasedConfig()
    _, spec = make(cfg.env_id)
    torch.manual_seed(0)
    model = build_model("mamba", spec, "small").eval()
    feat, state = model.feature_widths()
    policy = make_policy("gru", feat, spec.n_actions, cfg.gru)
    dream_spec = DreamSpec(spec.n_agents, feat, state, spec.n_actions, spec.discrete, spec.agents, spec.action_spaces)
    agent = MAPPO(dream_spec, cfg.mappo, policy=policy, critic=AttentionCritic(state, spec.n_agents, cfg.critic), seed=0)
    return agent, model


def _episodes_equal(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x) for x, y in zip(a, b))


def test_a_worker_collects_with_the_weights_it_is_sent_and_its_pending_state_resumes(agent_and_model):
    """Two workers built alike collect the same data with the same weights; other weights, other actions; a worker
    restored to a pending collection's state collects that collection again, episodes, returns and steps alike."""
    agent, model = agent_and_model
    weights = actor_weights(agent, model)
    first = OverlappedCollection("local", _worker_args(agent, model))
    twin = OverlappedCollection("local", _worker_args(agent, model))
    first.submit(weights)
    state = first.pending[0]
    a = first.take()
    twin.submit(weights)
    b = twin.take()
    assert a["steps"] == 60 and _episodes_equal(a["episodes"], b["episodes"]) and a["returns"] == b["returns"]
    first.submit(weights)  # the copies go on from where the first collection left them: other rows
    c = first.take()
    assert len(a["episodes"]) + len(c["episodes"]) >= 2 and not _episodes_equal(a["episodes"], c["episodes"])
    assert first.restore(state)
    first.submit(weights)
    again = first.take()
    assert _episodes_equal(again["episodes"], a["episodes"]) and again["returns"] == a["returns"]
    other = {**weights, "policy": {k: v + 0.5 * torch.randn_like(v) for k, v in weights["policy"].items()}}
    assert first.restore(state)
    first.submit(other)
    moved = first.take()
    actions = lambda data: np.concatenate([e["action"] for e in data["episodes"]])  # noqa: E731
    assert not np.array_equal(actions(moved), actions(a))
    for handle in (first, twin):
        handle.close()


def test_overlapped_collection_refuses_out_of_order_calls(agent_and_model):
    agent, _ = agent_and_model
    handle = OverlappedCollection("local", _worker_args(agent))
    with pytest.raises(RuntimeError, match="take: no collection was submitted"):
        handle.take()
    handle.submit(actor_weights(agent, None))
    with pytest.raises(RuntimeError, match="submit: a collection is already pending"):
        handle.submit(actor_weights(agent, None))
    handle.close()
    with pytest.raises(ValueError, match=r"backend: expected 'local' or 'ray', got 'thread'"):
        OverlappedCollection("thread", _worker_args(agent))
    with pytest.raises(ValueError, match=r"ModelBasedConfig.overlap: expected .*got 'async'"):
        ModelBasedConfig(overlap="async")
    worker = CollectWorker(**_worker_args(agent))
    assert set(worker.get_state()) == {"envs", "why_not", "collector", "actor", "generator"}
    worker.close()


def test_the_loop_overlaps_counts_real_steps_and_resumes_exactly(tmp_path):
    """overlap="local": the first collection is the in-line run's (same actor, same env seeds), every iteration counts
    its real steps, and a run stopped after 2 iterations and resumed to 3 equals the uninterrupted run."""
    inline = run(_small(tmp_path / "inline", 2))
    straight = run(_small(tmp_path / "straight", 3, overlap="local"))
    assert straight["real_returns"][0] == inline["real_returns"][0]
    assert straight["real_steps"] == 180 and [s for s, _ in straight["eval_returns"]] == [0, 60, 120, 180]
    run(_small(tmp_path / "resumed", 2, overlap="local"))
    resumed = run(_small(tmp_path / "resumed", 3, overlap="local", resume=True))
    assert resumed["eval_returns"] == straight["eval_returns"] and resumed["real_returns"] == straight["real_returns"]


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason='ray not installed: pip install "wmenv[ray]"')
def test_a_ray_worker_gives_the_local_workers_run(tmp_path, one_ray_cluster):
    """overlap="ray" (the worker in a Ray actor, collecting while the learner learns) = overlap="local", latent actors
    and their filters included."""
    import ray

    from wmenv.envs.ray_backend import join_ray

    join_ray()
    try:
        remote = run(_small(tmp_path / "ray", 2, overlap="ray"))
    finally:
        ray.shutdown()
    local = run(_small(tmp_path / "local", 2, overlap="local"))
    assert remote["eval_returns"] == local["eval_returns"] and remote["real_returns"] == local["real_returns"]


def test_prefill_takes_uniformly_random_actions_then_the_actor_takes_over(agent_and_model):
    """``prefill=40`` over 2 copies: the first 20 steps of each copy take the uniform draws of the prefill stream (MPE:
    every action available), the rest the actor's; the (latent) actor and its filters stepped through the prefill all
    the same (its random stream drew what a worker without prefill drew); the loop's config refuses a negative
    prefill, and its default is the first episode of every copy for continuous actions, none for discrete ones."""
    from agents.collection import PREFILL_STREAM

    agent, model = agent_and_model
    weights = actor_weights(agent, model)
    random_first = CollectWorker(**_worker_args(agent, model, prefill=40))
    actor_only = CollectWorker(**_worker_args(agent, model))
    data, plain = random_first.collect(weights), actor_only.collect(weights)
    rng = np.random.default_rng((4, PREFILL_STREAM))
    expected = np.stack([rng.random((2, 3, 5)).argmax(-1) for _ in range(20)], 1)  # (E, 20, N)
    taken = np.stack([e["action"][:25] for e in data["episodes"][:2]])  # each copy's first episode: (E, 25, N)
    assert data["steps"] == plain["steps"] == 60 and len(data["episodes"]) == len(plain["episodes"]) == 2
    np.testing.assert_array_equal(taken[:, :20], expected)
    assert len(np.unique(expected)) == 5  # every action drawn
    assert torch.equal(random_first.agent.generator.get_state(), actor_only.agent.generator.get_state())
    assert random_first.act.carry["prefill"] <= 0
    for w in (random_first, actor_only):
        w.close()
    with pytest.raises(ValueError, match=r"ModelBasedConfig.prefill.*-1"):
        ModelBasedConfig(prefill=-1)
    from agents.model_based import prefill_steps
    from wmenv.envs import make

    _, mpe = make("mpe:simple_spread_v3")
    _, pendulum = make("gym:Pendulum-v1")
    assert prefill_steps(ModelBasedConfig(), mpe) == 0 and prefill_steps(ModelBasedConfig(prefill=7), mpe) == 7
    assert pendulum.episode_limit == 200 and prefill_steps(ModelBasedConfig(num_envs=3), pendulum) == 600


def test_explore_replaces_sampled_actions_by_the_streams_random_ones(agent_and_model):
    """``explore=0.3``: at every step each agent's action is, with that probability, the prefill stream's uniform draw
    instead of the actor's sample (the stream decides which, then draws them); the others at the first step are the
    actor's own (same observations, same state, same sampling stream); ``explore=0`` collects what no floor collects;
    the in-line collection gets the floor too; a probability outside [0, 1) is refused."""
    from agents.collection import PREFILL_STREAM, RealData
    from wmenv.data.replay import EpisodeReplay, ReplayConfig

    agent, model = agent_and_model
    weights = actor_weights(agent, model)
    floor, plain, zero = (CollectWorker(**_worker_args(agent, model, explore=p)) for p in (0.3, 0.0, 0.0))
    data, ref = floor.collect(weights), plain.collect(weights)
    assert _episodes_equal(zero.collect(weights)["episodes"], ref["episodes"])
    rng = np.random.default_rng((4, PREFILL_STREAM))
    taken = np.stack([e["action"][:25] for e in data["episodes"][:2]], 1)  # each copy's first episode: (25, E, N)
    swapped = 0
    for t, actions in enumerate(taken):
        swap = rng.random((2, 3)) < 0.3
        if swap.any():
            np.testing.assert_array_equal(actions[swap], rng.random((2, 3, 5)).argmax(-1)[swap])
        if t == 0:
            first = np.stack([e["action"][0] for e in ref["episodes"][:2]])
            np.testing.assert_array_equal(actions[~swap], first[~swap])
        swapped += swap.sum()
    assert 25 < swapped < 65, swapped  # of 25 x 2 x 3 agent-steps, 45 expected
    spec = floor.vec.spec
    for w in (floor, plain, zero):
        w.close()
    inline = RealData(EpisodeReplay(ReplayConfig(capacity=1000), spec=spec), agent, model, "off",
                      _worker_args(agent, model, explore=0.3))  # fmt: skip
    assert inline.act.explore == 0.3
    inline.close()
    for bad in (1.0, -0.1):
        with pytest.raises(ValueError, match=rf"ModelBasedConfig.explore: expected a probability in \[0, 1\), got {bad}"):
            ModelBasedConfig(explore=bad)
