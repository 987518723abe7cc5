"""How far the dream's returns are from the real ones for a trained model-based run (issue 11, item 5: why the
model-based loop stops improving where it does).

For the latest checkpoint of each run folder given (`agents.model_based` runs: the world model and the actor), plays
``episodes`` real episodes with the greedy actor (seeds ``seed + i``; greedy as in the loop's evaluation: the most
likely available action, or the Gaussian's mean clipped to the bounds for continuous actions) and, from each
episode's first real observation, imagines the same number of steps in the world model twice:

- **policy**: the actor acts greedily on the imagined states, closed loop, as it does when it trains in the dream;
- **real actions**: the real episode's actions are replayed open loop.

Returns are undiscounted sums of the (predicted) rewards per agent, imagined steps stopping where the real episode
ended (or where the continuation head says the episode ends); ``by_horizon`` gives the sums over the first
``horizons`` steps (1, 5, 15: the loop's default rollout) and the whole episode, and their correlation across
episodes with the real ones (how well the dream ranks the actor's episodes).

Read as: *real actions − real* is the model's reward bias along the trajectories the actor really takes; *policy −
real* adds what the actor gains in the dream that the real env does not give (model exploitation, or the dream's
states drifting from the real ones). A low correlation says the dream cannot tell the actor's better episodes from
its worse ones, so it cannot teach what separates them. Prints one JSON line.

With ``--scripted``, fixed-preference policies (discrete actions: always the available action they prefer most) are
measured the same way beside the run's actor: the model's verdict on behaviours the actor does not show (on Flatland,
"always forward" against "never depart").

Usage:
    python examples/benchmarks/dream_gap.py --episodes 64 --out benchmarks/dream_gap/mpe.json \
        --runs benchmarks/model_based_ablation/smac/parts/seed1/runs/mpe_simple_spread_v3_seed1
    # what a Flatland run's model says of departing against staying put (the same real episodes for every checkpoint):
    python examples/benchmarks/dream_gap.py --episodes 32 --all-checkpoints --scripted forward:0,0.5,1,0.5,-1 \
        idle:1,0,0,0,-1 --runs benchmarks/model_based_mabl_flatland_100k/parts/seed0/runs/flatland_5_seed0
    # a model-free run's final policy on the same fresh episodes (its real return only), for a like-for-like target:
    python examples/benchmarks/dream_gap.py --episodes 256 --runs benchmarks/mappo/parts/seed0/runs/mpe_simple_spread_v3_seed0
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import tyro
from report import emit, machine

from agents.train import first_episodes, latest_checkpoint, policy_from_checkpoint
from wmenv.checks import check_int
from wmenv.envs import make
from wmenv.envs.spec import EnvSpec, action_bounds
from wmenv.envs.vector import VecEnv
from wmenv.fit import load_model
from wmenv.models.world_model import WorldModel


@dataclass
class Args:
    """Benchmark settings."""

    runs: list[Path] = field(default_factory=list)
    """Run folders of `agents.model_based` (their ``checkpoints/latest`` is read); a model-free run's folder
    (`agents.train`) gets the same greedy episodes, its real return only, so both are measured alike."""
    episodes: int = 32
    """Real episodes per run (one env copy each); the imagined rollouts start from their first observations."""
    all_checkpoints: bool = False
    """Measure every kept ``checkpoints/step_*`` of each run (a run with ``--run.keep-every`` milestones or a large
    ``--keep-checkpoints``: the gap along training), not only the latest."""
    seed: int = 7_000_000
    """Episode i is seeded ``seed + i`` (a seed range the loop's evaluations do not use)."""
    scripted: list[str] = field(default_factory=list)
    """Fixed-preference policies measured beside each checkpoint's actor, ``name:p_0,...,p_{A-1}`` (discrete actions:
    the available action with the highest preference, in the real env and in the dream alike), e.g. Flatland's
    ``forward:0,0.5,1,0.5,-1`` and ``idle:1,0,0,0,-1``."""
    average: int = 1
    """Also judge each checkpoint's actor in the mean of the world models of the newest ``average`` kept checkpoints
    up to it (weights averaged, the run's consecutive fits: would a Polyak-averaged model judge less noisily from one
    fit to the next?), as ``averaged`` beside the checkpoint's own model; 1 (the default): off. The real episodes are
    the same (a latent actor filters them through the checkpoint's own model); in the averaged dream a latent actor
    sees the averaged model's features. Checkpoints with fewer than ``average`` kept ones up to them get none."""
    horizons: list[int] = field(default_factory=lambda: [1, 5, 15])
    """Step counts of ``by_horizon``'s sums (besides the whole episode); add a run's ``--run.horizon`` to read the
    dream's verdict over the rollouts it trained on."""
    out: Path | None = None
    """Where to write the JSON line (None: print only)."""

    def __post_init__(self) -> None:
        if not self.horizons:
            raise ValueError("horizons: expected at least one step count, got []")
        for i, k in enumerate(self.horizons):
            check_int(f"horizons[{i}]", k)
        check_int("average", self.average)


def greedy(out: torch.Tensor, mask: torch.Tensor, spec: EnvSpec, worlds: int) -> torch.Tensor:
    """The loop's greedy evaluation actions from the actor's output ``out`` (W·N, A) for W worlds: the most likely
    available action, (W, N) int64, or the Gaussian's mean clipped to each agent's bounds, (W, N, A) float."""
    if spec.discrete:
        return out.masked_fill(~mask, float("-inf")).argmax(-1).view(worlds, spec.n_agents)
    low, high = (torch.as_tensor(b) for b in action_bounds(spec))
    return torch.clamp(out.view(worlds, spec.n_agents, -1), low, high)


@torch.no_grad()
def real_episodes(model: WorldModel | None, policy: Any, latent: bool, env_id: str, env_kwargs: dict, episodes: int,
                  seed: int) -> dict[str, np.ndarray]:  # fmt: skip
    """E greedy episodes: first observations, states and alive flags, actions (E, T, N[, A]), rewards (E, T, N),
    lengths. ``model`` drives a latent actor's filters (None for an actor on observations)."""
    with VecEnv(env_id, num_envs=episodes, seed=seed, **env_kwargs) as vec:
        N = vec.spec.n_agents
        h = policy.initial_state(episodes * N)

        def act(inputs: np.ndarray, s: Any, running: np.ndarray, resets: np.ndarray) -> np.ndarray:
            nonlocal h
            starts = torch.as_tensor(resets).flatten()
            logits, h = policy.step(torch.as_tensor(inputs, dtype=torch.float32).flatten(0, 1), h, starts)
            return greedy(logits, torch.as_tensor(s.action_mask).flatten(0, 1), vec.spec, episodes).numpy()

        first, actions, rewards, lengths = None, [], [], np.zeros(episodes, dtype=np.int64)
        for before, act_t, s, running in first_episodes(vec, act, model if latent else None, seed):
            if first is None:
                first = {"obs": before.obs.copy(), "state": before.state.copy(), "alive": before.alive.copy()}
            actions.append(act_t)
            rewards.append(np.where(running[:, None], s.reward, 0.0))
            lengths += running
    return {**first, "actions": np.stack(actions, 1), "rewards": np.stack(rewards, 1), "lengths": lengths}


@torch.no_grad()
def imagined_rewards(model: WorldModel, policy: Any, latent: bool, real: dict[str, np.ndarray], replay_actions: bool,
                     seed: int) -> np.ndarray:  # fmt: skip
    """(E, T) predicted rewards (mean over agents) of ``lengths[e]`` imagined steps from the posterior of each
    episode's first real observation (0 after the episode's length or a predicted end): the actor greedy on imagined
    states, or the real actions replayed."""
    g = torch.Generator().manual_seed(seed)
    spec = model.spec
    E, N = real["actions"].shape[0], real["actions"].shape[2]
    obs = torch.as_tensor(real["obs"], dtype=torch.float32)[:, None]
    kwargs = {"global_state": torch.as_tensor(real["state"], dtype=torch.float32)[:, None]}
    blank = torch.zeros(E, 1, N, dtype=torch.long) if spec.discrete else torch.zeros(E, 1, N, spec.n_actions)
    state = model.observe(obs, blank, torch.ones(E, 1, dtype=torch.bool), None, g, torch.as_tensor(real["alive"])[:, None],
                          **kwargs)  # fmt: skip
    h = policy.initial_state(E * N)
    resets = torch.ones(E * N, dtype=torch.bool)
    pred = model.predict(state, decode=not latent)
    lengths = torch.as_tensor(real["lengths"])
    rewards, going = torch.zeros(E, int(lengths.max())), torch.ones(E, dtype=torch.bool)
    for t in range(int(lengths.max())):
        if replay_actions:
            action = torch.as_tensor(real["actions"][:, t])
        else:
            inputs = model.features(state) if latent else pred.obs
            logits, h = policy.step(inputs.flatten(0, 1).float(), h, resets)
            mask = torch.ones_like(logits, dtype=torch.bool)
            if pred.action_mask is not None:  # the dream's rule: available where predicted likely, else all
                likely = pred.action_mask.flatten(0, 1) > 0.5
                mask = torch.where(likely.any(-1, keepdim=True), likely, mask)
            action = greedy(logits, mask, spec, E)
            resets = torch.zeros_like(resets)
        state, pred = model.imagine(state, action, g, decode=not latent)
        going &= t < lengths
        rewards[:, t] = torch.where(going, pred.reward.mean(-1), 0.0)
        going &= pred.cont.min(-1).values >= 0.5
    return rewards.numpy()


class Preference:
    """A policy with the recurrent actor's interface that scores every action by a fixed preference, whatever it sees:
    (M, A) logits ``preferences`` for any M inputs; greedy selection then takes the most preferred available one."""

    def __init__(self, preferences: list[float]) -> None:
        self.preferences = torch.tensor(preferences, dtype=torch.float32)

    def initial_state(self, rows: int) -> torch.Tensor:
        return torch.zeros(rows, 1)

    def step(self, inputs: torch.Tensor, state: torch.Tensor, resets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.preferences.expand(inputs.shape[0], -1), state

    def eval(self) -> Preference:
        return self


def parse_scripted(items: list[str], spec: EnvSpec) -> dict[str, Preference]:
    """``name:p_0,...`` items as named `Preference` policies for ``spec`` (discrete actions, one preference each)."""
    policies = {}
    for item in items:
        name, _, values = item.partition(":")
        try:
            prefs = [float(v) for v in values.split(",")]
        except ValueError:
            prefs = []
        if not name or not spec.discrete or len(prefs) != spec.n_actions:
            raise ValueError(
                f"scripted: expected 'name:p_0,...,p_{spec.n_actions - 1}' ({spec.n_actions} numbers for a discrete "
                f"env), got {item!r} for {'discrete' if spec.discrete else 'continuous'} actions"
            )
        policies[name] = Preference(prefs)
    return policies


def rounded_mean(x: np.ndarray) -> float:
    """The sample's mean, to 3 decimals (the JSON's precision)."""
    return round(float(np.mean(x)), 3)


def correlation(a: np.ndarray, b: np.ndarray) -> float | None:
    """Pearson's r of two samples, rounded; None where either is constant (e.g. Flatland's first reward, always 0)."""
    if np.std(a) == 0 or np.std(b) == 0:
        return None
    return round(float(np.corrcoef(a, b)[0, 1]), 3)


def mean_model(folders: list[Path], spec: EnvSpec, kind: str) -> WorldModel:
    """The world model whose floating-point weights are the mean of those saved in ``folders`` (one config, checked
    by `load_model` against the newest); integer buffers are the newest model's."""
    models = [load_model(f / "world_model", spec, kind=kind) for f in folders]
    newest = models[-1]
    for f, m in zip(folders, models, strict=True):
        if m.config != newest.config:
            raise ValueError(f"folders: {f} holds a world model of config {m.config}, expected {newest.config}")
    states = [m.state_dict() for m in models]
    mean = {k: torch.stack([s[k] for s in states]).mean(0) if v.is_floating_point() else v for k, v in states[-1].items()}
    newest.load_state_dict(mean)
    return newest.eval()


def checkpoints(run: Path, every: bool) -> list[Path]:
    """The run's latest checkpoint, or all its ``step_*`` ones in order."""
    found = sorted((run / "checkpoints").glob("step_*")) if every else [latest_checkpoint(run)]
    if not found or found[0] is None:
        raise ValueError(f"runs: {run} holds no checkpoint (checkpoints/latest)")
    return found


def over_checkpoints(benchmark: str, args: Any, measure: Callable[[Path, Path, Any], dict[str, Any]]) -> dict:
    """``measure(run, checkpoint, args)`` for the latest (or, with ``args.all_checkpoints``, every kept) checkpoint of
    each of ``args.runs``, one thread; prints (and writes to ``args.out``) the benchmark's JSON line."""
    if not args.runs:
        raise ValueError("runs: expected at least one run folder")
    torch.set_num_threads(1)
    results = [measure(Path(r), c, args) for r in args.runs for c in checkpoints(Path(r), args.all_checkpoints)]
    return emit({"benchmark": benchmark, "results": results, "machine": machine()}, args.out)


def measure(run: Path, ckpt: Path, args: Args) -> list[dict[str, Any]]:
    """One checkpoint's gap for its actor and each scripted policy; for a model-free run's checkpoint (no world model),
    its actor's real return only."""
    actor, train = policy_from_checkpoint(ckpt)
    env_id, env_kwargs = train["env_id"], train["env_kwargs"]
    probe, spec = make(env_id, **env_kwargs)
    probe.close()
    has_model = (ckpt / "world_model").is_dir()
    model = load_model(ckpt / "world_model", spec, kind=train["model_kind"]).eval() if has_model else None
    policies = {"actor": actor.eval(), **(parse_scripted(args.scripted, spec) if has_model else {})}
    averaged = None
    if has_model and args.average > 1:
        upto = [k for k in sorted((run / "checkpoints").glob("step_*")) if k.name <= ckpt.name]  # zero-padded steps
        if len(upto) >= args.average:
            averaged = mean_model(upto[-args.average :], spec, train["model_kind"])
    return [
        _measure(run, ckpt, train, spec, model, name, policy, args, averaged if name == "actor" else None)
        for name, policy in policies.items()
    ]


def _measure(run: Path, ckpt: Path, train: dict[str, Any], spec: EnvSpec, model: WorldModel | None, name: str,
             policy: Any, args: Args, averaged: WorldModel | None = None) -> dict[str, Any]:  # fmt: skip
    env_id, env_kwargs = train["env_id"], train["env_kwargs"]
    latent = name == "actor" and train.get("actor_input") == "latent"  # scripted policies ignore what they see
    real = real_episodes(model, policy, latent, env_id, env_kwargs, args.episodes, args.seed)
    real_return = real["rewards"].mean(-1).sum(-1)  # (E,)
    result = {
        "run": str(run),
        "checkpoint": ckpt.name,
        "real_steps": json.loads((ckpt / "config.json").read_text())["counters"]["env_steps"],
        "env_id": env_id,
        "model": train.get("model"),
        "model_kind": train.get("model_kind"),
        "actor_input": train.get("actor_input", "obs"),
        "policy": name,
        "real": rounded_mean(real_return),
        "real_return_std": round(float(np.std(real_return)), 3),
        "episodes": args.episodes,
    }
    if model is None:  # a model-free run: the same greedy episodes, nothing to imagine
        return result
    judged = {**result, **verdict(model, policy, latent, real, args)}
    if averaged is not None:
        judged["averaged"] = {"models": args.average, **verdict(averaged, policy, latent, real, args)}
    return judged


def verdict(model: WorldModel, policy: Any, latent: bool, real: dict[str, np.ndarray], args: Args) -> dict[str, Any]:
    """``model``'s returns for the greedy ``policy`` closed loop and for the ``real`` episodes' actions replayed, their
    gaps to the real returns, and (``by_horizon``) the sums over the first ``args.horizons`` steps with their
    correlation across episodes with the real ones."""
    real_rewards = real["rewards"].mean(-1)  # (E, T)
    real_return = real_rewards.sum(-1)  # (E,)
    dreamed = imagined_rewards(model, policy, latent, real, False, args.seed)
    replayed = imagined_rewards(model, policy, latent, real, True, args.seed)
    dreamed_return, replayed_return = dreamed.sum(-1), replayed.sum(-1)
    horizons = sorted({k for k in args.horizons if k < real_rewards.shape[1]} | {real_rewards.shape[1]})
    by_horizon = {
        str(k): {
            "real": rounded_mean(real_rewards[:, :k].sum(-1)),
            "dream_real_actions": rounded_mean(replayed[:, :k].sum(-1)),
            "corr_real_actions": correlation(replayed[:, :k].sum(-1), real_rewards[:, :k].sum(-1)),
            "dream_policy": rounded_mean(dreamed[:, :k].sum(-1)),
        }
        for k in horizons
    }
    return {
        "dream_policy": rounded_mean(dreamed_return),
        "dream_real_actions": rounded_mean(replayed_return),
        "gap_policy": rounded_mean(dreamed_return - real_return),
        "gap_real_actions": rounded_mean(replayed_return - real_return),
        "by_horizon": by_horizon,
    }


def main(args: Args) -> dict:
    """Measure every run; print (and write) the JSON line."""
    if not args.runs:
        raise ValueError("runs: expected at least one run folder")
    torch.set_num_threads(1)
    results = [
        row for r in args.runs for ckpt in checkpoints(Path(r), args.all_checkpoints) for row in measure(Path(r), ckpt, args)
    ]
    return emit({"benchmark": "dream_gap", "results": results, "machine": machine()}, args.out)


if __name__ == "__main__":
    main(tyro.cli(Args))
