"""The training example runs as a subprocess with a tiny budget, writes TensorBoard events and checkpoints, and resumes."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from agents.mappo import MAPPO, MAPPOConfig
from agents.train import (
    TrainConfig,
    evaluate,
    evaluate_metrics,
    first_episodes,
    is_milestone,
    torch_threads,
    train,
    write_checkpoint,
)
from wmenv import VecEnv
from wmenv.envs import make

ROOT = Path(__file__).resolve().parents[2]


def _run(*args):
    cmd = [sys.executable, str(ROOT / "examples" / "02_train_mappo.py"), "--no-progress", "--torch-threads", "1", *args]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_example_trains_evaluates_checkpoints_and_resumes(tmp_path):
    run = tmp_path / "run"
    common = ["--env-id", "mpe:simple_spread_v3", "--num-envs", "2", "--mappo.epochs", "2", "--run-dir", str(run)]
    out = _run(*common, "--total-steps", "100", "--eval-every", "50", "--eval-episodes", "2",
               "--env-kwargs", "max_cycles", "25")  # fmt: skip
    assert "env steps: 100  iterations: 2" in out and "greedy eval return per agent" in out
    ckpt = run / "checkpoints" / "step_000000000100"
    assert (ckpt / "model.safetensors").is_file() and (run / "checkpoints" / "latest").read_text() == ckpt.name
    meta = json.loads((ckpt / "config.json").read_text())
    assert meta["counters"] == {"iteration": 2, "env_steps": 100, "episodes": 4}
    assert meta["spec"]["id"] == "mpe:simple_spread_v3" and meta["train"]["mappo"]["epochs"] == 2
    assert list(run.glob("events.out.tfevents.*"))
    out = _run(*common, "--total-steps", "150", "--eval-every", "0", "--resume")
    assert f"resumed from {ckpt}" in out and "env steps: 150  iterations: 3" in out


def test_example_help_lists_nested_configs():
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "02_train_mappo.py"), "--help"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 0 and "--mappo.lr" in out.stdout and "--gru.hidden" in out.stdout
    assert "--critic.value-norm" in out.stdout


@pytest.mark.parametrize("policy", ["mamba", "sp-mamba"])
def test_example_trains_mamba_policies_on_flatland_and_refuses_a_gru_checkpoint(tmp_path, policy):
    run = tmp_path / "run"
    common = ["--env-id", "flatland:5", "--num-envs", "2", "--mappo.epochs", "2", "--mappo.rollout-length", "10",
              "--eval-every", "0", "--run-dir", str(run)]  # fmt: skip
    extra = ["--sp-mamba.k", "2", "--sp-mamba.d-model", "16"] if policy == "sp-mamba" else ["--mamba.hidden", "16"]
    out = _run(*common, "--policy", policy, *extra, "--total-steps", "40")
    assert "env steps: 40  iterations: 2" in out
    meta = json.loads((run / "checkpoints" / "step_000000000040" / "config.json").read_text())
    assert meta["train"]["policy"] == policy
    if policy == "sp-mamba":
        scalars = EventAccumulator(str(run)).Reload().Tags()["scalars"]
        assert any("pred_kl" in tag for tag in scalars), scalars
    cmd = [sys.executable, str(ROOT / "examples" / "02_train_mappo.py"), "--no-progress", *common, "--policy", "gru",
           "--total-steps", "60", "--resume"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "ValueError" in proc.stderr


def test_policy_from_checkpoint_rebuilds_the_actor_and_refuses_mismatched_weights(tmp_path):
    import torch

    from agents.train import latest_checkpoint, policy_from_checkpoint

    run = tmp_path / "run"
    _run("--env-id", "mpe:simple_spread_v3", "--num-envs", "2", "--mappo.epochs", "1", "--total-steps", "50",
         "--eval-every", "0", "--policy", "mamba", "--mamba.hidden", "16", "--run-dir", str(run))  # fmt: skip
    ckpt = latest_checkpoint(run)
    policy, train_cfg = policy_from_checkpoint(ckpt)
    assert (
        type(policy).__name__ == "MambaPolicy" and policy.config.hidden == 16 and train_cfg["env_id"] == "mpe:simple_spread_v3"
    )
    from safetensors.torch import load_file

    saved = load_file(str(ckpt / "model.safetensors"))
    assert torch.equal(policy.head.weight, saved["agent.policy.head.weight"])
    meta = json.loads((ckpt / "config.json").read_text())
    meta["train"]["mamba"]["hidden"] = 32
    (ckpt / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="do not fit its saved mamba config"):
        policy_from_checkpoint(ckpt)
    (ckpt / "config.json").write_text("{")
    with pytest.raises(ValueError, match="holds no readable checkpoint config.json"):
        policy_from_checkpoint(ckpt)


def test_evaluation_reports_the_envs_episode_metrics():
    """Flatland evaluations carry the mean % arrived beside the return; MPE's carry the return alone."""
    _, spec = make("flatland:5")
    agent = MAPPO(spec, seed=0)
    kw = {"malfunction_rate": 0.0, "max_episode_steps": 40}
    result = evaluate_metrics(agent, "flatland:5", 3, seed=7, **kw)
    assert set(result) == {"episode_return", "arrived_fraction"} and 0.0 <= result["arrived_fraction"] <= 1.0
    # the same three episodes replayed by hand: the metric is the mean of each episode's final fraction
    with VecEnv("flatland:5", num_envs=3, seed=7, **kw) as vec:
        s, state = vec.reset(), agent.policy.initial_state(3 * spec.n_agents)
        resets, fractions = np.ones(3 * spec.n_agents, bool), {}
        while len(fractions) < 3:
            obs, mask = (torch.as_tensor(x).flatten(0, 1) for x in (s.obs, s.action_mask))
            actions, _, state = agent.act(obs, state, torch.as_tensor(resets), mask, deterministic=True)
            s = vec.step(actions.view(3, -1).numpy())
            fractions.update(
                {e: s.episode_metrics[e]["arrived_fraction"] for e in np.flatnonzero(s.done) if e not in fractions}
            )
            resets = (s.terminated | s.truncated | s.done[:, None]).reshape(-1)
    assert result["arrived_fraction"] == np.mean([fractions[e] for e in range(3)])
    _, mpe = make("mpe:simple_spread_v3")
    mpe_agent = MAPPO(mpe, seed=0)
    mpe_result = evaluate_metrics(mpe_agent, "mpe:simple_spread_v3", 2, seed=0, max_cycles=10)
    assert set(mpe_result) == {"episode_return"}
    assert mpe_result["episode_return"] == evaluate(mpe_agent, "mpe:simple_spread_v3", 2, seed=0, max_cycles=10)


def test_first_episodes_plays_each_copy_until_its_first_episode_ends():
    """One yield per step until the last copy's first episode ends; ``running`` is what ``act`` saw, False from the step
    after a copy's end; ``act`` gets the env's current step and the loops' reset rule; an episode longer than
    ``max_steps`` is an error."""
    seen, rng = [], np.random.default_rng(0)

    def act(inputs, s, running, resets):  # a random available action per agent
        actions = (rng.random(s.action_mask.shape) * s.action_mask).argmax(-1)
        seen.append((inputs, s, running, resets, actions))
        return actions

    kw = {"malfunction_rate": 0.0, "max_episode_steps": 60, "deadlock_terminates": True}
    with VecEnv("flatland:5", num_envs=3, seed=0, **kw) as vec:
        steps = list(first_episodes(vec, act, seed=0))
    ended = np.array([next(i for i, (_, _, after, _) in enumerate(steps) if after.done[e]) for e in range(3)])
    assert len(steps) == len(seen) == ended.max() + 1 and ended.min() < ended.max()  # a copy ends early (deadlock)
    for i, ((before, actions, after, running), (inputs, s, saw, resets, chosen)) in enumerate(zip(steps, seen, strict=True)):
        assert s is before and inputs is before.obs and np.array_equal(running, saw) and actions is chosen
        assert np.array_equal(running, i <= ended)
        assert i == 0 or after is not steps[i - 1][2] and before is steps[i - 1][2]
        previous = steps[i - 1][2] if i else None  # all at the reset, then the agents that ended at the step before
        expected = np.ones((3, 5), bool) if i == 0 else previous.terminated | previous.truncated | previous.done[:, None]
        assert np.array_equal(resets, expected)
    assert any(r[3].any() and not r[3].all() for r in seen[1:])  # some agents' states restart mid-run
    zeros = lambda x, s, r, h: np.zeros((2, 3), np.int64)  # noqa: E731
    with VecEnv("mpe:simple_spread_v3", num_envs=2, seed=0, max_cycles=10) as vec:
        assert len(list(first_episodes(vec, zeros))) == 10
        with pytest.raises(RuntimeError, match="2 of 2 episodes did not end in 4 steps"):
            list(first_episodes(vec, zeros, max_steps=4))


def test_first_episodes_goes_on_from_snapshots_with_the_filters_that_saw_them():
    """With ``start`` (snapshots, the step they are at, its resets) and the filters' state at that step, the play goes
    on exactly as the unbroken one: the same inputs, actions and rewards from the snapshot's step to the end."""
    from wmenv.envs import make
    from wmenv.latent.filter import AgentFilters
    from wmenv.models.registry import build_model

    kw = {"malfunction_rate": 0.0, "max_episode_steps": 40, "deadlock_terminates": True}
    _, spec = make("flatland:5", **kw)
    model = build_model("mamba", spec, "small").eval()
    weights = torch.randn(model.feature_widths()[0], spec.n_actions, generator=torch.Generator().manual_seed(0))
    taken: dict = {}

    def act(inputs, s, running, resets):  # greedy in a fixed linear score of the features, among available actions
        scores = torch.as_tensor(inputs) @ weights
        return scores.masked_fill(~torch.as_tensor(s.action_mask), float("-inf")).argmax(-1).numpy()

    def snapshotting(vec, filters):
        def inner(inputs, s, running, resets):
            if len(taken.setdefault("inputs", [])) == 6:  # the seventh step: snapshot env and filters before acting
                taken.update(states=vec.get_state(), step=s, resets=resets, filters=filters.get_state())
            taken["inputs"].append(torch.as_tensor(inputs).clone())
            return act(inputs, s, running, resets)

        return inner

    with VecEnv("flatland:5", num_envs=2, seed=3, **kw) as vec:
        filters = AgentFilters(model, 2, seed=5)
        whole = [
            (a, after.reward) for _, a, after, _ in first_episodes(vec, snapshotting(vec, filters), model, filters=filters)
        ]
    with VecEnv("flatland:5", num_envs=2, seed=99, **kw) as vec:  # another seed: everything comes from the snapshots
        filters = AgentFilters(model, 2, seed=0)
        filters.set_state(taken["filters"])
        seen = []

        def recording(inputs, s, running, resets):
            seen.append(torch.as_tensor(inputs).clone())
            return act(inputs, s, running, resets)

        start = (taken["states"], taken["step"], taken["resets"])
        rest = [(a, after.reward) for _, a, after, _ in first_episodes(vec, recording, model, filters=filters, start=start)]
    assert len(rest) == len(whole) - 6 and len(rest) > 3
    for (a, r), (b, q) in zip(whole[6:], rest, strict=True):
        assert np.array_equal(a, b) and np.array_equal(r, q)
    for x, y in zip(taken["inputs"][6:], seen, strict=True):
        assert torch.equal(x, y)
    with VecEnv("flatland:5", num_envs=2, seed=3, **kw) as vec:
        with pytest.raises(ValueError, match="^filters: going on from start needs the AgentFilters that have seen"):
            next(first_episodes(vec, act, model, start=start))
        with pytest.raises(
            ValueError, match="^filters: expected AgentFilters over world_model with 2 worlds, got 3 worlds over it"
        ):
            next(first_episodes(vec, act, model, filters=AgentFilters(model, 3)))


def test_torch_threads_are_set_for_the_block_and_restored():
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with torch_threads(0):
        assert torch.get_num_threads() == before
    with pytest.raises(KeyError), torch_threads(1):
        raise KeyError("the count is restored when the block raises")
    assert torch.get_num_threads() == before


def test_checkpoint_pruning_keeps_the_newest_and_the_milestones(tmp_path):
    """``keep`` newest ``step_*`` folders survive, and with ``keep_every`` every multiple of it too, for good."""

    def fill(folder: Path) -> None:
        (folder / "weights.bin").write_bytes(b"w")

    def kept(keep_every: int) -> list[int]:
        run = tmp_path / f"every{keep_every}"
        for step in range(50, 450, 50):
            write_checkpoint(run, f"step_{step:012d}", fill, keep=2, keep_every=keep_every)
        assert (run / "checkpoints" / "latest").read_text() == "step_000000000400"
        return sorted(int(p.name[5:]) for p in (run / "checkpoints").glob("step_*"))

    assert kept(0) == [350, 400]
    assert kept(100) == [100, 200, 300, 350, 400]
    assert kept(150) == [150, 300, 350, 400]
    assert not is_milestone("step_000000000100", 0) and not is_milestone("latest", 100)


def test_training_episodes_report_the_envs_episode_metrics(tmp_path):
    """Each iteration's training episodes (the sampling policy's, as the papers' curves) carry Flatland's mean % arrived
    beside the return, in the result and in TensorBoard; MPE's carry none."""
    kw = {"malfunction_rate": 0.0, "max_episode_steps": 10}
    cfg = TrainConfig(env_id="flatland:5", env_kwargs=kw, total_steps=100, num_envs=2, eval_every=0, progress=False,
                      mappo=MAPPOConfig(epochs=1), run_dir=str(tmp_path / "flat"))  # fmt: skip
    result = train(cfg)
    assert [s for s, _ in result.train_metrics] == [s for s, _ in result.train_returns] == [50, 100]
    assert all(set(m) == {"arrived_fraction"} and 0.0 <= m["arrived_fraction"] <= 1.0 for _, m in result.train_metrics)
    logged = EventAccumulator(str(tmp_path / "flat")).Reload().Scalars("charts/arrived_fraction")
    assert [(e.step, e.value) for e in logged] == [(s, pytest.approx(m["arrived_fraction"])) for s, m in result.train_metrics]
    mpe = TrainConfig(total_steps=100, num_envs=2, eval_every=0, progress=False, mappo=MAPPOConfig(epochs=1),
                      run_dir=str(tmp_path / "mpe"))  # fmt: skip
    assert train(mpe).train_metrics == []
