"""Does a DRAMA run's dream teach its actor, given more updates? From one checkpoint of an `agents.drama_loop` run, the
world model frozen, continue only the actor-critic for ``--updates`` updates at each learning rate of ``--lrs`` (each
from the checkpoint's actor and critic, a fresh optimizer), and evaluate greedily on the real game every
``--eval-every`` updates.

It separates the two reasons an actor may not learn in a short run: too few (or too small) actor updates, or a dream
whose rewards do not tell good actions from bad. Per learning rate, it records the greedy return (the run's own
evaluation seeds), the actor's entropy, the dream's mean reward per step and the mean λ-return. Imagination starts are
drawn uniformly from the checkpoint's replay (the run may have used DFS).

Writes ``--out`` (JSON) and prints one JSON line.

Usage:
    python examples/benchmarks/drama_actor_probe.py --run-dir benchmarks/drama_atari/parts/Boxing_dfs_seed0 \\
        --step 5120 --lrs 4e-5 6.4e-4 --updates 200 --out benchmarks/drama_atari/actor_probe_boxing_seed0.json
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import tyro
from report import emit, machine

from agents.drama_loop import REPLAY_SEGMENTS, DRAMALoopConfig, evaluate
from agents.dreamer_ac import DreamerAC, DreamerACConfig
from agents.resume import load_run_state
from agents.train import EVAL_SEED_OFFSET, latest_checkpoint
from wmenv.data import EpisodeReplay, ReplayConfig
from wmenv.dream import DreamVecEnv
from wmenv.envs.vector import VecEnv
from wmenv.fit import load_model


@dataclass
class Args:
    """Probe settings."""

    run_dir: str = "benchmarks/drama_atari/parts/Boxing_dfs_seed0"
    """A `agents.drama_loop` run folder."""
    step: int | None = None
    """The checkpoint taken at this many env steps (default: the latest)."""
    lrs: list[float] = field(default_factory=lambda: [4e-5])
    """Actor-critic learning rates to try, each from the checkpoint."""
    updates: int = 200
    """Actor-critic updates per learning rate."""
    eval_every: int = 50
    """Greedy real evaluation every this many updates (and before the first)."""
    eval_episodes: int = 3
    """Episodes per evaluation."""
    worlds: int | None = None
    """Imagined worlds per update (default: the run's)."""
    seed: int = 0
    """Seeds the imagination."""
    out: str | None = None
    """Also write the JSON here."""


def checkpoint(run_dir: Path, step: int | None) -> Path:
    """The run's checkpoint at ``step`` env steps (None: the latest).

    Raises:
        ValueError: no such checkpoint, naming the ones there are.
    """
    path = latest_checkpoint(run_dir) if step is None else run_dir / "checkpoints" / f"step_{step:012d}"
    if path is None or not path.is_dir():
        there = sorted(p.name for p in (run_dir / "checkpoints").glob("step_*"))
        raise ValueError(f"step: no checkpoint {'latest' if step is None else step} in {run_dir}, found {there}")
    return path


def probe(args: Args) -> dict:
    """Run the probe of the module docstring; returns the summary."""
    torch.set_num_threads(1)
    run_dir = Path(args.run_dir)
    ckpt = checkpoint(run_dir, args.step)
    loop = json.loads((ckpt / "loop.json").read_text())
    saved = loop["config"]
    cfg = DRAMALoopConfig(**{**saved, "ac": DreamerACConfig(**saved["ac"]), "eval_episodes": args.eval_episodes})
    with VecEnv(cfg.env_id, num_envs=1, seed=cfg.seed, **cfg.env_kwargs) as vec:
        spec = vec.spec
    model = load_model(ckpt / "world_model", spec, kind="drama")
    replay_cfg = ReplayConfig(capacity=cfg.capacity, seed=cfg.seed)
    replay = EpisodeReplay.load_segments(ckpt / "replay.json", run_dir / REPLAY_SEGMENTS, spec, replay_cfg)
    state = load_run_state(ckpt)
    curves = {}
    for lr in args.lrs:
        learner = DreamerAC(model.feature_widths()[0], spec.n_actions, DreamerACConfig(**{**vars(cfg.ac), "lr": lr}))
        learner.load_state_dict(state["learner"])
        learner.scale.load_state_dict(state["scale"])
        generator = torch.Generator().manual_seed(args.seed)
        dream = DreamVecEnv(model, args.worlds or cfg.worlds, horizon=10**9, start=replay, context=cfg.context,
                            seed=args.seed)  # fmt: skip
        points, began = [], time.process_time()
        stats, reward = {}, None
        for u in range(args.updates + 1):
            if u % args.eval_every == 0 or u == args.updates:
                greedy = evaluate(model, learner, cfg, cfg.seed + EVAL_SEED_OFFSET)
                points.append({"updates": u, "greedy_return": round(greedy, 3), "entropy": stats.get("entropy"),
                               "dream_reward_per_step": reward, "return_mean": stats.get("return_mean"),
                               "cpu_s": round(time.process_time() - began, 1)})  # fmt: skip
            if u < args.updates:
                trajectory, _ = learner.imagine(dream, generator)
                stats = learner.update(trajectory)
                reward = round(float(trajectory.rewards.mean()), 5)
        curves[f"{lr:g}"] = points
    summary = {
        "benchmark": "drama_actor_probe", "run_dir": str(run_dir), "checkpoint": ckpt.name, "env_id": cfg.env_id,
        "env_steps": loop["counters"]["env_steps"], "fit_steps": loop["counters"]["fit_steps"],
        "ac_updates_before": loop["counters"]["ac_updates"], "worlds": args.worlds or cfg.worlds,
        "eval_episodes": args.eval_episodes, "curves": curves,
        "final_greedy": {k: c[-1]["greedy_return"] for k, c in curves.items()},
        "mean_greedy_after_start": {k: round(float(np.mean([p["greedy_return"] for p in c[1:]])), 3)
                                    for k, c in curves.items()},
        "machine": f"{machine()}, 1 torch thread, torch {torch.__version__}",
    }  # fmt: skip
    return emit(summary, Path(args.out) if args.out else None)


if __name__ == "__main__":
    probe(tyro.cli(Args))
