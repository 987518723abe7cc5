"""Can rare events be read from what the world model sees? Supervised probes on real rows (issue 11, item 3).

The dream-vs-reality benchmark found that no world model here recognizes Flatland's deadlocks even with the row's
observation in view (the "filtered" scores), while arrivals are recognized. This asks whether the information is
there at all: on random-action data (the rare-events protocol: a training set and a held-out set from other seeds),
an MLP classifier learns, per agent-row, whether the reward received on arriving at row t is an event (an
**arrival**: reward > ``arrival_threshold``; a **deadlock**: reward < ``deadlock_threshold``), from:

- ``now``: the agent's observation o_t (what a filtered posterior sees);
- ``before``: [o_{t-1}, one_hot(a_{t-1})] (foreseeing the event one step ahead, as an imagined step must);
- ``both``: [o_{t-1}, one_hot(a_{t-1}), o_t];
- ``state``: the env's global state s_t (what MABL's global level reads in training), with the agent's one-hot slot.

A probe that cannot find an event on held-out rows says no model reading that input will; one that can shows the
information is there and the world model does not learn it. Rows: agents present at t - 1 and t. Each probe is an
MLP (2 × ``hidden``, ReLU) fitted with a class-weighted binary cross-entropy (positive weight = negatives /
positives), Adam, ``epochs`` passes of minibatches of 512. Reported on the held-out rows: recall and precision at
probability 0.5, and average precision (area under the precision-recall curve; a classifier that knows nothing
scores the base rate). Writes ``<out>/<env>.json``; prints one JSON line.

Usage:
    python examples/benchmarks/event_visibility.py --env-id flatland:5 --env-kwargs dense_reward True \
        --train-steps 5000 --heldout-steps 3000 --out benchmarks/event_visibility
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import tyro
from dream_vs_reality import event_scores
from report import emit, machine
from torch import nn

from wmenv.data.collect import random_replay
from wmenv.data.replay import EpisodeReplay

INPUTS = ("now", "before", "both", "state")


@dataclass
class Args:
    """Benchmark settings."""

    env_id: str = "flatland:5"
    """Env id (`wmenv.envs.make`)."""
    env_kwargs: dict[str, int | float | bool | str] = field(default_factory=lambda: {"dense_reward": True})
    """Env options (default: Flatland's dense reward, which marks arrivals +10 and deadlocks -5)."""
    train_steps: int = 5000
    """Random env steps of the training set."""
    heldout_steps: int = 3000
    """Random env steps of the held-out set (other seeds)."""
    arrival_threshold: float = 5.0
    """An arrival: reward above this (half of Flatland's +10)."""
    deadlock_threshold: float = -2.5
    """A deadlock: reward below this (half of Flatland's -5)."""
    hidden: int = 256
    """Width of the probes' two hidden layers."""
    epochs: int = 40
    """Passes over the training rows."""
    lr: float = 1e-3
    """Adam learning rate."""
    seed: int = 0
    """Data and probe seed (the held-out set uses seed + 10,000, as dream_vs_reality.py)."""
    threads: int = 1
    """torch threads."""
    out: Path | None = None
    """Output folder for the JSON (None: print only)."""


def rows(replay: EpisodeReplay, n_actions: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Probe inputs (name -> (R, ·) float32) and rewards (R,) of every agent-row t >= 1 of every stored episode
    where the agent is present at t - 1 and t."""
    parts: dict[str, list[np.ndarray]] = {k: [] for k in INPUTS}
    rewards = []
    for i in range(replay.num_episodes):
        e = replay.episode(i)
        present = e["alive"][1:] & e["alive"][:-1]  # (R - 1, N)
        t, n = np.nonzero(present)
        obs, prev_obs = e["obs"][1:][t, n], e["obs"][:-1][t, n]
        prev_action = np.eye(n_actions, dtype=np.float32)[e["action"][:-1][t, n]]
        slot = np.eye(e["obs"].shape[1], dtype=np.float32)[n]
        parts["now"].append(obs)
        parts["before"].append(np.concatenate([prev_obs, prev_action], -1))
        parts["both"].append(np.concatenate([prev_obs, prev_action, obs], -1))
        parts["state"].append(np.concatenate([e["state"][1:][t], slot], -1))
        rewards.append(e["reward"][1:][t, n])
    return {k: np.concatenate(v).astype(np.float32) for k, v in parts.items()}, np.concatenate(rewards)


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """Area under the precision-recall curve (the mean of the precisions at each positive's rank); None: no positive."""
    if not labels.any():
        return None
    order = np.argsort(-scores, kind="stable")
    hits = labels[order].astype(np.float64)
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float((precision * hits).sum() / hits.sum())


def probe(x: np.ndarray, y: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, args: Args) -> dict:
    """Fit one MLP classifier on (x, y) and score it on the held-out rows."""
    g = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)
    mean, std = x.mean(0), x.std(0) + 1e-6
    xt, yt = torch.from_numpy((x - mean) / std), torch.from_numpy(y.astype(np.float32))
    net = nn.Sequential(nn.Linear(x.shape[1], args.hidden), nn.ReLU(), nn.Linear(args.hidden, args.hidden), nn.ReLU(),
                        nn.Linear(args.hidden, 1))  # fmt: skip
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    pos = max(int(y.sum()), 1)
    weight = torch.tensor((len(y) - pos) / pos)
    for _ in range(args.epochs):
        for idx in torch.randperm(len(xt), generator=g).split(512):
            loss = F.binary_cross_entropy_with_logits(net(xt[idx]).squeeze(-1), yt[idx], pos_weight=weight)
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        scores = torch.sigmoid(net(torch.from_numpy((x_test - mean) / std)).squeeze(-1)).numpy()
        train_scores = torch.sigmoid(net(xt).squeeze(-1)).numpy()
    real = y_test.astype(bool)
    return {
        **event_scores(torch.from_numpy(real.astype(np.float32)), torch.from_numpy(scores), above=0.5),
        "average_precision": None if (ap := average_precision(scores, real)) is None else round(ap, 4),
        "base_rate": round(float(real.mean()), 6),
        "train_average_precision": None if (tap := average_precision(train_scores, y.astype(bool))) is None else round(tap, 4),
    }


def main(args: Args) -> dict:
    """Collect, build rows, fit and score every probe; print (and write) the JSON."""
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    train, spec = random_replay(args.env_id, args.train_steps, seed=args.seed, **args.env_kwargs)
    held, _ = random_replay(args.env_id, args.heldout_steps, seed=args.seed + 10_000, **args.env_kwargs)
    if spec.n_actions is None or not spec.discrete:
        raise ValueError(f"env_id: {args.env_id} has continuous actions; the probes take one-hot discrete actions")
    x, reward = rows(train, spec.n_actions)
    x_test, reward_test = rows(held, spec.n_actions)
    events = {"arrival": (reward > args.arrival_threshold, reward_test > args.arrival_threshold),
              "deadlock": (reward < args.deadlock_threshold, reward_test < args.deadlock_threshold)}  # fmt: skip
    results: dict[str, dict[str, dict | None]] = {}
    for event, (y, y_test) in events.items():
        results[event] = {}
        for name in INPUTS:
            fits = y.any() and y_test.any()
            results[event][name] = probe(x[name], y, x_test[name], y_test, args) if fits else None
    summary = {
        "benchmark": "event_visibility",
        "env_id": args.env_id,
        "env_kwargs": args.env_kwargs,
        "train_rows": len(reward),
        "heldout_rows": len(reward_test),
        "train_events": {k: int(y.sum()) for k, (y, _) in events.items()},
        "thresholds": {"arrival": args.arrival_threshold, "deadlock": args.deadlock_threshold},
        "probe": {"hidden": args.hidden, "epochs": args.epochs, "lr": args.lr, "seed": args.seed},
        "results": results,
        "wall_clock_s": round(time.perf_counter() - start, 1),
        "machine": machine(),
    }
    out = None if args.out is None else Path(args.out) / f"{args.env_id.replace(':', '_')}.json"
    emit(summary, out)
    return summary


if __name__ == "__main__":
    main(tyro.cli(Args))
