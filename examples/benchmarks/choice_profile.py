"""Where a trained actor puts its probability where it has a choice, in reality and in its dream (issue 11, item 5:
what Flatland's model-based actors learn at decision cells).

For the latest checkpoint of each `agents.model_based` run folder given (or every kept one), the actor samples its
actions as it does when it collects (not greedily):

- **real**: ``episodes`` real episodes (seeds ``seed + i``), the actor reading what it reads in the loop (a latent
  actor: the model's filtered features of the episode);
- **dream**: one rollout of ``worlds`` imagined worlds over the run's horizon, started from the checkpoint's replay
  as the loop starts them (`DreamVecEnv`, the run's context and end rule), the actor on the dream's features.

On the rows where the agent is alive and has more than one available action, it reports per pattern of available
actions (``"101"``: actions 0 and 2) the pattern's share of those rows, the actor's mean probability of each action
there, and the mean entropy as a fraction of the uniform choice's (`agents.mappo.normalized_entropy`, what
``MAPPOConfig.entropy_floor`` holds up). On Flatland's decision interface the actions are leftmost way, rightmost
way and stop: a profile tells an actor that explores evenly from one that leans to stopping, or never takes the
right branch, though both have the same entropy. Prints one JSON line.

Usage:
    python examples/benchmarks/choice_profile.py --episodes 5 --out benchmarks/entropy_floor/choice_profile.json \
        --runs benchmarks/entropy_floor/flatland_mamba_env/f05/parts/seed0/runs/flatland_5_seed0
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import tyro
from dream_gap import over_checkpoints

from agents.mappo import normalized_entropy
from agents.policies.base import mask_logits, sample_actions
from agents.train import first_episodes, policy_from_checkpoint
from wmenv.checks import check_int
from wmenv.data.replay import EpisodeReplay, ReplayConfig
from wmenv.dream import DreamVecEnv
from wmenv.envs import make
from wmenv.envs.vector import VecEnv
from wmenv.fit import load_model


@dataclass
class Args:
    """Benchmark settings."""

    runs: list[Path] = field(default_factory=list)
    """Run folders with discrete actions: `agents.model_based` runs, or model-free ones (`agents.train`: their real
    profile only, ``dream`` null)."""
    episodes: int = 5
    """Real episodes per checkpoint (one env copy each)."""
    worlds: int = 256
    """Imagined worlds of the dream rollout (the loop's default ``dream_worlds``)."""
    all_checkpoints: bool = False
    """Profile every kept ``checkpoints/step_*`` of each run, not only the latest."""
    info_key: str | None = None
    """Split the real rows further by this per-agent info value at the row (the env's infos of the step before it;
    ``"?"`` where there is none, e.g. after a reset), as ``"<mask>|<value>"``. Flatland: ``state``, the train's state
    (0 waiting, 1 ready to depart, 3 moving, 4 stopped), which tells a train held back before departing from one
    stopping on the line. The dream has no infos: its rows are not split."""
    seed: int = 7_000_000
    """Real episode i is seeded ``seed + i``; the actor's samples and the dream draw from ``seed`` too."""
    out: Path | None = None
    """Where to write the JSON line (None: print only)."""

    def __post_init__(self) -> None:
        check_int("episodes", self.episodes)
        check_int("worlds", self.worlds)


def profile(probs: np.ndarray, masks: np.ndarray, tags: np.ndarray | None = None) -> dict[str, Any]:
    """The choice rows' summary per pattern of available actions.

    Args:
        probs: (R, A) float, the actor's probabilities on R rows with a choice.
        masks: (R, A) bool, the available actions of those rows (each with more than one).
        tags: (R,) str, a further label of each row (patterns become ``"<mask>|<tag>"``), or None.

    Returns:
        ``rows``: R; ``normalized_entropy``: the mean over rows of entropy / log #available; ``patterns``: per mask
        pattern (``"101"``), most frequent first, its ``share`` of the rows, the mean ``probs`` and ``normalized_entropy``.
    """
    if probs.shape != masks.shape or probs.ndim != 2:
        raise ValueError(f"probs, masks: expected the same (R, A) shape, got {probs.shape} and {masks.shape}")
    single = int((masks.sum(-1) < 2).sum())
    if single:
        raise ValueError(f"masks: expected more than one available action on every row, got {single} rows with one or none")
    entropy = -(probs * np.log(np.where(probs > 0, probs, 1.0))).sum(-1)
    normalized = normalized_entropy(torch.from_numpy(entropy), torch.from_numpy(masks)).numpy()
    keys = np.array(["".join("1" if v else "0" for v in row) for row in masks], dtype=object)
    if tags is not None:
        if tags.shape != (len(masks),):
            raise ValueError(f"tags: expected shape ({len(masks)},), got {tags.shape}")
        keys = keys + "|" + tags.astype(str).astype(object)
    patterns = []
    for key in sorted(set(keys.tolist()), key=lambda k: (-(keys == k).sum(), k)):
        rows = keys == key
        patterns.append({
            "mask": key, "share": round(float(rows.mean()), 4), "probs": probs[rows].mean(0).astype(float).round(4).tolist(),
            "normalized_entropy": round(float(normalized[rows].mean()), 4),
        })  # fmt: skip
    mean = round(float(normalized.mean()), 4) if len(probs) else None
    return {"rows": int(len(probs)), "normalized_entropy": mean, "patterns": patterns}


class ChoiceRows:
    """Collects the actor's probabilities and the masks of the rows with a choice, acting as it collects."""

    def __init__(self, policy: Any, rows: int, seed: int) -> None:
        self.policy, self.state = policy, policy.initial_state(rows)
        self.resets = torch.ones(rows, dtype=torch.bool)
        self.generator = torch.Generator().manual_seed(seed)
        self.probs: list[np.ndarray] = []
        self.masks: list[np.ndarray] = []
        self.tags: list[np.ndarray] = []

    @torch.no_grad()
    def act(self, inputs: np.ndarray, mask: np.ndarray, alive: np.ndarray, tags: np.ndarray | None = None) -> np.ndarray:
        """Sampled (W, N) actions for the (W, N, D) inputs; records the rows of ``alive`` agents with a choice (and
        their (W, N) ``tags``)."""
        W, N = alive.shape
        out, self.state = self.policy.step(torch.as_tensor(inputs, dtype=torch.float32).flatten(0, 1), self.state, self.resets)
        m = torch.as_tensor(mask).flatten(0, 1).bool()
        logits = mask_logits(out, m)
        actions = sample_actions(logits, self.generator, False)
        choice = (m.sum(-1) > 1) & torch.as_tensor(alive).flatten()
        self.probs.append(logits[choice].softmax(-1).numpy())
        self.masks.append(m[choice].numpy())
        if tags is not None:
            self.tags.append(tags.reshape(-1)[choice.numpy()])
        return actions.view(W, N).numpy()

    def ended(self, terminated: np.ndarray, truncated: np.ndarray, done: np.ndarray) -> None:
        """Restart the recurrent state of agents that ended (the loop's reset rule)."""
        self.resets = torch.as_tensor(terminated | truncated | done[:, None]).flatten()

    def summary(self, A: int) -> dict[str, Any]:
        probs = np.concatenate(self.probs) if self.probs else np.zeros((0, A), np.float32)
        masks = np.concatenate(self.masks) if self.masks else np.zeros((0, A), bool)
        return profile(probs, masks, np.concatenate(self.tags) if self.tags else None)


def real_profile(model: Any, policy: Any, latent: bool, train: dict[str, Any], episodes: int, seed: int,
                 info_key: str | None = None) -> dict:  # fmt: skip
    """`profile` of ``episodes`` real episodes, the actor sampling (rows split by ``info_key``, `Args.info_key`)."""
    with VecEnv(train["env_id"], num_envs=episodes, seed=seed, **train["env_kwargs"]) as vec:
        rows = ChoiceRows(policy, episodes * vec.spec.n_agents, seed)

        def act(inputs: np.ndarray, s: Any, running: np.ndarray, resets: np.ndarray) -> np.ndarray:
            # ``resets`` unused: the rows apply the same rule through `ChoiceRows.ended`, which the dream rollout shares
            tags = None if info_key is None else info_tags(s.infos, vec.spec.agents, info_key, s.alive.shape)
            return rows.act(inputs, s.action_mask, s.alive & running[:, None], tags)

        for _, _, s, _ in first_episodes(vec, act, model if latent else None, seed):
            rows.ended(s.terminated, s.truncated, s.done)
        return rows.summary(vec.spec.n_actions)


def info_tags(infos: list[dict[str, Any]], agents: Sequence[str], key: str, shape: tuple[int, int]) -> np.ndarray:
    """(W, N) str: each copy's per-agent info ``key`` (``"?"`` where the copy or the agent has none)."""
    tags = np.full(shape, "?", dtype=object)
    for w, info in enumerate(infos):
        for n, agent in enumerate(agents):
            if key in info.get(agent, {}):
                tags[w, n] = str(info[agent][key])
    return tags


def dream_profile(model: Any, policy: Any, train: dict[str, Any], replay: EpisodeReplay, worlds: int, seed: int) -> dict:
    """`profile` of one dream rollout of ``worlds`` worlds over the run's horizon, the actor sampling."""
    dream = DreamVecEnv(model, worlds, train["horizon"], start=replay, context=train["context"], obs=train["actor_input"],
                        seed=seed, terminations=train.get("terminations", "sample"))  # fmt: skip
    s = dream.reset()
    rows = ChoiceRows(policy, worlds * model.spec.n_agents, seed)
    for _ in range(train["horizon"]):
        s = dream.step(rows.act(s.obs, s.action_mask, s.alive))
        rows.ended(s.terminated, s.truncated, s.done)
    return rows.summary(model.spec.n_actions)


def measure(run: Path, ckpt: Path, args: Args) -> dict[str, Any]:
    """One checkpoint's real and dream profiles (a model-free checkpoint: real only)."""
    policy, train = policy_from_checkpoint(ckpt)
    probe, spec = make(train["env_id"], **train["env_kwargs"])
    probe.close()
    if not spec.discrete:
        raise ValueError(f"runs: {run} trains on continuous actions; a choice profile needs discrete ones")
    policy, steps = policy.eval(), int(json.loads((ckpt / "config.json").read_text())["counters"]["env_steps"])
    result = {"run": str(run), "checkpoint": ckpt.name, "real_steps": steps, "env_id": train["env_id"]}
    if not (ckpt / "world_model").is_dir():  # a model-free run: its actor on observations, in reality only
        real = real_profile(None, policy, False, train, args.episodes, args.seed, args.info_key)
        return {**result, "real": real, "dream": None}
    model = load_model(ckpt / "world_model", spec, kind=train["model_kind"]).eval()
    replay = EpisodeReplay.load_segments(ckpt / "replay.json", run / "replay", spec, ReplayConfig(capacity=train["capacity"]))
    real = real_profile(model, policy, train["actor_input"] == "latent", train, args.episodes, args.seed, args.info_key)
    return {**result, "real": real, "dream": dream_profile(model, policy, train, replay, args.worlds, args.seed)}


def main(args: Args) -> dict:
    """Measure every run; print (and write) the JSON line."""
    return over_checkpoints("choice_profile", args, measure)


if __name__ == "__main__":
    main(tyro.cli(Args))
