"""Model-free MAPPO learning curves on real envs: return vs real env steps, plus the raw env step rate.

These curves are the baseline the model-based (world-model) learner is compared against. For each
env id the script measures, in the same run, the env's raw step rate (random available actions, one
process, resets included) and then trains MAPPO for each seed, recording greedy evaluation returns
and training-episode returns against env steps. It writes ``<out>/<env>.json`` and ``<out>/<env>.png``
and prints one JSON line of results.

Usage:
    python examples/benchmarks/mappo_baseline.py --env-id mpe:simple_spread_v3 --total-steps 1000000
    python examples/benchmarks/mappo_baseline.py --env-id flatland:5 --total-steps 300000 --env-kwargs dense_reward True
    python examples/benchmarks/mappo_baseline.py --env-id mpe:simple_spread_v3 --total-steps 20000 --seeds 0 1   # quick look
    # seeds run as separate processes (one per core), then merged into one JSON + PNG:
    python examples/benchmarks/mappo_baseline.py --merge a/mpe_simple_spread_v3.json b/mpe_simple_spread_v3.json --out all
"""

from __future__ import annotations

import dataclasses
import json
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib
import numpy as np
import torch
import tyro
from report import RANDOM_EPISODES, load_parts, random_return
from smax_reference import play

from agents.sweep import SweepConfig, run_folder, run_sweep
from agents.train import TrainConfig, train
from wmenv.data.collect import mean_metrics
from wmenv.envs import make

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


@dataclass
class Args:
    """Benchmark settings."""

    env_id: str = "mpe:simple_spread_v3"
    """A `wmenv.envs.make` id."""
    total_steps: int = 1_000_000
    """Real env steps per seed."""
    seeds: list[int] = field(default_factory=lambda: [0])
    """One training run per seed."""
    num_envs: int = 16
    """Env copies collected in parallel."""
    eval_every: int = 20_000
    """Greedy evaluation every this many env steps."""
    env_kwargs: dict[str, int | float | bool | str] = field(default_factory=dict)
    """Extra keywords for `wmenv.envs.make` (e.g. ``dense_reward True`` for Flatland)."""
    rate_seconds: float = 20.0
    """How long to measure the raw env step rate."""
    torch_threads: int = 1
    """torch threads for training (1 lets two benchmarks share a 2-core machine)."""
    out: str = "benchmarks/mappo"
    """Output folder for JSON, PNG and the runs' TensorBoard logs."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Further MAPPO / training settings (env id, steps, seeds and envs above take precedence)."""
    checkpoint_every: int = 50_000
    """Checkpoint every this many env steps, so an interrupted benchmark continues with ``--train.resume``."""
    merge: list[str] = field(default_factory=list)
    """Instead of training: merge the runs of these result JSONs (same env and steps) into ``out``."""
    sweep: SweepConfig = field(default_factory=SweepConfig)
    """Where the seeds run: one after the other here (default), or ``--sweep.backend ray``: one Ray task per seed
    (one per core here, or on the cluster of ``--sweep.ray-address``)."""
    random_episodes: int = RANDOM_EPISODES
    """Episodes of uniformly random available (or in-bounds) actions whose mean return per agent is recorded as
    ``random_policy_return``, the floor of the return levels `model_based.py` compares at. (Before 2026-12-06 it was
    the mean over the episodes that ended in the ``rate_seconds`` measurement: a handful of 573-step Flatland episodes
    gave -0.45 where 50 give -0.98.)"""
    reference_episodes: int = 0
    """SMAX only: also play this many battles with random actions and with the heuristic driving the allies
    (`smax_reference.play`) in the same run, the floor and the reference of the learners' win rates."""


def raw_step_rate(env_id: str, seconds: float, seed: int = 0, **kwargs: object) -> dict[str, float]:
    """Agent-steps and env-steps per second of random available actions in one process, resets included, and the
    number of episodes that ended in that time."""
    env, spec = make(env_id, **kwargs)
    rng = np.random.default_rng(seed)

    def random_actions(infos: dict) -> dict:
        actions = {}
        for a in env.agents:
            mask = infos[a].get("action_mask")
            actions[a] = int(rng.choice(np.flatnonzero(mask))) if mask is not None else env.action_space(a).sample()
        return actions

    _, infos = env.reset(seed=seed)
    env.step(random_actions(infos))  # not timed: the first step compiles jitted envs (SMAX, seconds)
    obs, infos = env.reset(seed=seed)
    agent_steps = env_steps = episodes = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        actions = random_actions(infos)
        agent_steps += len(env.agents)
        env_steps += 1
        obs, _, _, _, infos = env.step(actions)
        if not env.agents:
            episodes += 1
            obs, infos = env.reset()
    wall = time.perf_counter() - start
    env.close()
    return {
        "agent_steps_per_s": agent_steps / wall,
        "env_steps_per_s": env_steps / wall,
        "episodes": episodes,
        "n_agents": spec.n_agents,
    }


def plot(path: Path, env_id: str, runs: list[dict]) -> None:
    """Greedy eval return (solid) and training-episode return (faint) vs env steps, one colour per seed."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for i, run in enumerate(runs):
        c = f"C{i}"
        ev = np.array(run["eval_returns"])
        tr = np.array(run["train_returns"])
        if len(tr):
            ax.plot(tr[:, 0], tr[:, 1], color=c, alpha=0.25, lw=0.8)
        if len(ev):
            ax.plot(ev[:, 0], ev[:, 1], color=c, marker="o", ms=3, label=f"seed {run['seed']} (greedy eval)")
    ax.set_xlabel("real env steps")
    ax.set_ylabel("return per agent")
    ax.set_title(f"MAPPO (GRU) on {env_id}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def train_seed(cfg: TrainConfig) -> dict:
    """One seed's training (resumed with ``cfg.resume``): its curves, env steps and the seconds this call took."""
    start = time.perf_counter()
    result = train(cfg)
    return {
        "seed": cfg.seed,
        "wall_clock_s": time.perf_counter() - start,
        "env_steps": result.env_steps,
        "eval_returns": result.eval_returns,
        "train_returns": result.train_returns,
        "train_metrics": result.train_metrics,
    }


def main(args: Args) -> dict:
    """Measure the raw rate, train every seed, write JSON + PNG, return the summary."""
    torch.set_num_threads(args.torch_threads)
    out = Path(args.out)
    if args.merge:
        return merge(args.merge, out)
    tag = args.env_id.replace(":", "_")
    rate = raw_step_rate(args.env_id, args.rate_seconds, **args.env_kwargs)
    rate["random_policy_return"] = random_return(args.env_id, args.random_episodes, 0, **args.env_kwargs)
    rate["random_episodes"] = args.random_episodes
    if args.reference_episodes > 0:
        if not args.env_id.startswith("smax:"):
            raise ValueError(f"--reference-episodes: only for smax:<map> env ids, got {args.env_id!r}")
        map_name = args.env_id.removeprefix("smax:")
        rate["references"] = {p: play(map_name, p, args.reference_episodes, seed=0) for p in ("random", "heuristic")}
    # with --train.resume, each seed continues its checkpoint and its curve continues the earlier JSON's
    earlier = {}
    if args.train.resume and (out / f"{tag}.json").is_file():
        earlier = {r["seed"]: r for r in json.loads((out / f"{tag}.json").read_text())["runs"]}
    configs = [
        dataclasses.replace(
            args.train,
            env_id=args.env_id,
            total_steps=args.total_steps,
            num_envs=args.num_envs,
            seed=seed,
            env_kwargs=dict(args.env_kwargs),
            eval_every=args.eval_every,
            checkpoint_every=args.checkpoint_every,
            run_dir=str(run_folder(out / "runs" / f"{tag}_seed{seed}", args.sweep)),
            torch_threads=args.torch_threads,
            progress=False,
        )
        for seed in args.seeds
    ]
    runs = run_sweep(train_seed, configs, args.sweep, names=[f"seed {s}" for s in args.seeds])
    for run in runs:
        if run["seed"] in earlier:  # keep the earlier part of the curve, up to where this call resumed
            before = earlier[run["seed"]]
            first = min([s for s, _ in run["train_returns"] + run["eval_returns"]], default=run["env_steps"])
            for key in ("eval_returns", "train_returns", "train_metrics"):
                run[key] = [p for p in before.get(key, []) if p[0] < first] + run[key]
            run["wall_clock_s"] += before["wall_clock_s"]
        run["train_env_steps_per_s"] = run["env_steps"] / run["wall_clock_s"]
    return write_results(out, args.env_id, dict(args.env_kwargs), args.total_steps, rate, runs)


def write_results(out: Path, env_id: str, env_kwargs: dict, total_steps: int, rate: dict, runs: list[dict]) -> dict:
    """Summarize ``runs``, write ``<env>.json`` and ``<env>.png`` to ``out``, print the summary as one JSON line."""
    finals = [r["eval_returns"][-1][1] for r in runs if r["eval_returns"]]
    train_rate = float(np.mean([r["train_env_steps_per_s"] for r in runs]))
    summary = {
        "benchmark": "mappo_baseline",
        "env_id": env_id,
        "env_kwargs": env_kwargs,
        "total_steps": total_steps,
        "seeds": [r["seed"] for r in runs],
        "raw_agent_steps_per_s": round(rate["agent_steps_per_s"], 1),
        "raw_env_steps_per_s": round(rate["env_steps_per_s"], 1),
        "random_policy_return": round(rate.get("random_policy_return", float("nan")), 3),
        "train_env_steps_per_s": round(train_rate, 1),
        "train_vs_raw_ratio": round(train_rate / rate["env_steps_per_s"], 3),
        "wall_clock_s": round(float(np.sum([r["wall_clock_s"] for r in runs])), 1),
        "first_eval_return": round(float(np.mean([r["eval_returns"][0][1] for r in runs if r["eval_returns"]])), 3),
        "final_eval_return_mean": round(float(np.mean(finals)), 3) if finals else None,
        "final_eval_return_std": round(float(np.std(finals)), 3) if finals else None,
        # each seed's mean over its last 3 evaluations: less noisy than one evaluation of a few episodes
        "last3_eval_return_mean": round(float(np.mean([np.mean([v for _, v in r["eval_returns"][-3:]]) for r in runs])), 3)
        if finals
        else None,
        "machine": f"{platform.machine()} {torch.get_num_threads()} torch thread(s), torch {torch.__version__}",
    }
    last_metrics = [last_tenth_metrics(r.get("train_metrics", []), total_steps) for r in runs]
    if any(last_metrics):  # e.g. Flatland's % arrived of the sampling policy, as the papers report it
        summary["last_tenth_train_metrics"] = [{k: round(v, 4) for k, v in m.items()} for m in last_metrics]
    if "references" in rate:
        summary["reference_win_rates"] = {p: r["win_rate"] for p, r in rate["references"].items()}
    tag = env_id.replace(":", "_")
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{tag}.json").write_text(json.dumps({"summary": summary, "raw_rate": rate, "runs": runs}, indent=1))
    plot(out / f"{tag}.png", env_id, runs)
    print(json.dumps(summary))
    return summary


def last_tenth_metrics(train_metrics: list, total_steps: int) -> dict[str, float]:
    """Each metric's mean over the training iterations in the last tenth of ``total_steps`` ({} where none)."""
    return mean_metrics([m for step, m in train_metrics if step > 0.9 * total_steps])


def merge(paths: list[str], out: Path) -> dict:
    """Combine the runs of several result JSONs of one env and budget; the raw rate is their mean."""
    parts = load_parts(paths)
    first = parts[0]["summary"]
    runs = sorted((r for part in parts for r in part["runs"]), key=lambda r: r["seed"])
    seeds = [r["seed"] for r in runs]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"merge: the same seed appears twice among {seeds}")
    keys = ("agent_steps_per_s", "env_steps_per_s", "random_policy_return")
    rate = {k: float(np.mean([part["raw_rate"][k] for part in parts if k in part["raw_rate"]])) for k in keys}
    rate.update(n_agents=parts[0]["raw_rate"]["n_agents"], merged_from=list(paths))
    references = [part["raw_rate"]["references"] for part in parts if "references" in part["raw_rate"]]
    if references:  # the same battles (seed 0) in every part: keep the first part's
        rate["references"] = references[0]
    return write_results(out, first["env_id"], first["env_kwargs"], first["total_steps"], rate, runs)


if __name__ == "__main__":
    main(tyro.cli(Args))
