"""GRU vs Mamba vs SP-Mamba actors in MAPPO: learning curves at equal real env steps, wall-clock, inference cost.

For one env id, trains MAPPO once per (policy, seed) with the same PPO settings and records greedy
evaluation returns and training-episode returns against real env steps, and the wall-clock of each
run. Then measures each actor's inference cost per agent step (PyTorch eager, ``torch.no_grad``,
``step`` on a batch of 1 and of 1024 rows). Writes ``<out>/<env>.json`` and ``<out>/<env>.png`` and
prints one JSON line. The SP-Mamba paper reports SP-Mamba > Mamba > GRU (its Table 1, SMAC); this
measures whether that holds here.

Usage:
    python examples/benchmarks/policies.py --env-id mpe:simple_spread_v3 --total-steps 200000 --seeds 0 1 2
    python examples/benchmarks/policies.py --env-id flatland:5 --total-steps 150000 --env-kwargs dense_reward True \\
        --train.mappo.epochs 5
    # parts run as separate processes (one per core), then merged into one JSON + PNG:
    python examples/benchmarks/policies.py --merge a/mpe_simple_spread_v3.json b/mpe_simple_spread_v3.json --out all
"""

from __future__ import annotations

import dataclasses
import json
import platform
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib
import numpy as np
import torch
import tyro
from report import load_parts

from agents.policies import POLICIES, make_policy
from agents.train import TrainConfig, train
from wmenv.envs import make

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


@dataclass
class Args:
    """Benchmark settings."""

    env_id: str = "mpe:simple_spread_v3"
    """A `wmenv.envs.make` id with discrete actions."""
    policies: list[str] = field(default_factory=lambda: list(POLICIES))
    """Actor kinds to compare ("gru", "mamba", "sp-mamba")."""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    """One training run per (policy, seed)."""
    total_steps: int = 200_000
    """Real env steps per run (the same for every policy)."""
    num_envs: int = 16
    """Env copies collected in parallel."""
    eval_every: int = 25_000
    """Greedy evaluation every this many env steps."""
    env_kwargs: dict[str, int | float | bool | str] = field(default_factory=dict)
    """Extra keywords for `wmenv.envs.make` (e.g. ``dense_reward True`` for Flatland)."""
    torch_threads: int = 1
    """torch threads (1 lets two benchmarks share a 2-core machine)."""
    inference_batches: list[int] = field(default_factory=lambda: [1, 1024])
    """Batch sizes (agent rows) of the inference-cost measurement."""
    inference_seconds: float = 2.0
    """Measuring time per (policy, batch) of the inference cost."""
    out: str = "benchmarks/policies"
    """Output folder for JSON, PNG and the runs' TensorBoard logs."""
    merge: list[str] = field(default_factory=list)
    """Instead of training: combine these result JSONs (same env and budget) into ``out``."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """PPO and architecture settings shared by all runs (``--train.mappo.epochs 5``, ``--train.sp-mamba.k 8``, ...)."""


def inference_cost(
    env_id: str, env_kwargs: dict, policies: list[str], cfg: TrainConfig, batches: list[int], seconds: float
) -> dict:
    """Microseconds per agent step of each actor's ``step`` (eval mode, no grad), per batch size."""
    _, spec = make(env_id, **env_kwargs)
    out: dict[str, dict[str, float]] = {}
    for kind in policies:
        policy = make_policy(kind, spec.obs_dim, spec.n_actions, dataclasses.replace(cfg, policy=kind).policy_config).eval()
        out[kind] = {"params": sum(p.numel() for p in policy.parameters())}
        for batch in batches:
            obs, resets = torch.randn(batch, spec.obs_dim), torch.zeros(batch, dtype=torch.bool)
            state = policy.initial_state(batch)
            times: list[float] = []
            with torch.no_grad():
                policy.step(obs, state, resets)  # warm-up
                while not times or sum(times) < seconds:
                    start = time.perf_counter()
                    _, state = policy.step(obs, state, resets)
                    times.append(time.perf_counter() - start)
            out[kind][f"us_per_agent_step_b{batch}"] = round(statistics.median(times) / batch * 1e6, 3)
    return out


def bin_curve(points: list[list[float]], total: int, bins: int = 20) -> list[float | None]:
    """Mean return of the (env steps, return) points in each of ``bins`` equal step ranges up to ``total``."""
    edges = np.linspace(0, total, bins + 1)
    arr = np.array(points, dtype=float).reshape(-1, 2)
    means = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = arr[(arr[:, 0] > lo) & (arr[:, 0] <= hi), 1]
        means.append(float(sel.mean()) if len(sel) else None)
    return means


def plot(path: Path, env_id: str, runs: list[dict], total: int) -> None:
    """Training return (binned mean over seeds, min-max band) and greedy eval (mean over seeds), per policy."""
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    centers = (np.linspace(0, total, 21)[:-1] + total / 40).tolist()
    for i, kind in enumerate(dict.fromkeys(r["policy"] for r in runs)):
        mine = [r for r in runs if r["policy"] == kind]
        curves = np.array([[np.nan if v is None else v for v in bin_curve(r["train_returns"], total)] for r in mine])
        ax.plot(centers, np.nanmean(curves, 0), color=f"C{i}", label=f"{kind} (training, {len(mine)} seeds)")
        ax.fill_between(centers, np.nanmin(curves, 0), np.nanmax(curves, 0), color=f"C{i}", alpha=0.15)
        evals = np.array([[v for _, v in r["eval_returns"]] for r in mine])
        steps = [s for s, _ in mine[0]["eval_returns"]]
        ax.plot(steps, evals.mean(0), color=f"C{i}", ls="--", marker="o", ms=3, label=f"{kind} (greedy eval)")
    ax.set_xlabel("real env steps")
    ax.set_ylabel("return per agent")
    ax.set_title(f"MAPPO actors on {env_id}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_results(out: Path, env_id: str, env_kwargs: dict, total: int, runs: list[dict], cost: dict) -> dict:
    """Summarize per policy, write ``<env>.json`` and ``<env>.png``, print the summary as one JSON line."""
    per_policy = {}
    for kind in dict.fromkeys(r["policy"] for r in runs):
        mine = [r for r in runs if r["policy"] == kind]
        finals = [r["eval_returns"][-1][1] for r in mine]
        last_train = [np.mean([v for s, v in r["train_returns"] if s > 0.9 * total]) for r in mine]
        per_policy[kind] = {
            "seeds": [r["seed"] for r in mine],
            "final_eval_mean": round(float(np.mean(finals)), 3),
            "final_eval_std": round(float(np.std(finals)), 3),
            "last3_eval_mean": round(float(np.mean([np.mean([v for _, v in r["eval_returns"][-3:]]) for r in mine])), 3),
            "train_return_last10pct_mean": round(float(np.mean(last_train)), 3),
            "train_return_last10pct_std": round(float(np.std(last_train)), 3),
            "wall_clock_s_per_run": round(float(np.mean([r["wall_clock_s"] for r in mine])), 1),
            "train_env_steps_per_s": round(float(np.mean([r["env_steps"] / r["wall_clock_s"] for r in mine])), 1),
            **cost.get(kind, {}),
        }
    summary = {
        "benchmark": "policies",
        "env_id": env_id,
        "env_kwargs": env_kwargs,
        "total_steps": total,
        "policies": per_policy,
        "machine": f"{platform.machine()} {torch.get_num_threads()} torch thread(s), torch {torch.__version__}",
    }
    tag = env_id.replace(":", "_")
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{tag}.json").write_text(json.dumps({"summary": summary, "inference": cost, "runs": runs}, indent=1))
    plot(out / f"{tag}.png", env_id, runs, total)
    print(json.dumps(summary))
    return summary


def merge(paths: list[str], out: Path) -> dict:
    """Combine the runs (and inference costs) of several result JSONs of one env and budget."""
    parts = load_parts(paths)
    first = parts[0]["summary"]
    runs = [r for part in parts for r in part["runs"]]
    keys = [(r["policy"], r["seed"]) for r in runs]
    if len(set(keys)) != len(keys):
        raise ValueError(f"merge: a (policy, seed) appears twice among {sorted(keys)}")
    cost = {k: v for part in parts for k, v in part["inference"].items()}
    runs.sort(key=lambda r: (list(POLICIES).index(r["policy"]), r["seed"]))
    return write_results(out, first["env_id"], first["env_kwargs"], first["total_steps"], runs, cost)


def main(args: Args) -> dict:
    """Train every (policy, seed), measure inference cost, write JSON + PNG, return the summary."""
    torch.set_num_threads(args.torch_threads)
    out = Path(args.out)
    if args.merge:
        return merge(args.merge, out)
    tag = args.env_id.replace(":", "_")
    runs = []
    for kind in args.policies:
        for seed in args.seeds:
            cfg = dataclasses.replace(
                args.train, env_id=args.env_id, policy=kind, total_steps=args.total_steps, num_envs=args.num_envs,
                seed=seed, env_kwargs=dict(args.env_kwargs), eval_every=args.eval_every,
                run_dir=str(out / "runs" / f"{tag}_{kind}_seed{seed}"), torch_threads=args.torch_threads, progress=False,
            )  # fmt: skip
            start = time.perf_counter()
            result = train(cfg)
            runs.append({
                "policy": kind, "seed": seed, "wall_clock_s": time.perf_counter() - start, "env_steps": result.env_steps,
                "eval_returns": result.eval_returns, "train_returns": result.train_returns,
            })  # fmt: skip
    cost = inference_cost(
        args.env_id, dict(args.env_kwargs), args.policies, args.train, args.inference_batches, args.inference_seconds
    )
    return write_results(out, args.env_id, dict(args.env_kwargs), args.total_steps, runs, cost)


if __name__ == "__main__":
    main(tyro.cli(Args))
