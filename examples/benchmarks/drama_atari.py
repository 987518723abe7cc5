"""DRAMA end to end on Atari at the budget a CPU allows (issue 16, item 6): the greedy return against real env steps for
each game, seed and start sampler (DRAMA's DFS or uniform), beside random play measured in the same run and the paper's
Atari100k scores.

Each (game, sampler, seed) is one `agents.drama_loop.run` in ``<out>/parts/<Game>_<sampler>_seed<s>``: a checkpoint
every iteration; started again, an interrupted run resumes and a finished one is read, not run again. Runs with the same
seed share their warm-up data and initial weights, so the samplers are compared seed by seed. Reported per game and
sampler: the final return (mean of a run's last 3 evaluations; mean ± std over seeds), the mean of all its trained
evaluations, the best, and the CPU seconds per 1,000 env steps by phase; per game, random play's return on the
evaluation's env seeds and DRAMA's Table 1 (random, human, PPO and DRAMA at 100k steps).

What the samplers change first is what the world model fits, whether or not the actor learns: each run's final world
model is also scored on the same held-out windows (random play on env seeds no run trains or evaluates on; the loss's
terms, in eval mode), per sampler and paired seed by seed. And whether the actor moved at all: each run's last logged
actor entropy beside the uniform policy's ln |A|, and the mean real return of its last 3 training episodes (the
sampled actor that collects data: greedy evaluations of a near-uniform actor measure one arbitrary action, not
learning), both read from the run's TensorBoard events.

Writes ``<out>/drama_atari.json`` and ``<out>/drama_atari.png`` and prints one JSON line.

Usage:
    python examples/benchmarks/drama_atari.py --games Boxing Pong --seeds 0 1 --samplers dfs uniform
    # one process per core, each a share of the runs, then the report of every finished run in <out>/parts:
    python examples/benchmarks/drama_atari.py --games Boxing --seeds 0 --samplers dfs uniform &
    python examples/benchmarks/drama_atari.py --games Boxing --seeds 1 --samplers dfs uniform &
    python examples/benchmarks/drama_atari.py --report-only
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import matplotlib
import numpy as np
import torch
import tyro
from model_based import BOOKKEEPING, differences, last3, mean_curve, smooth
from report import emit, machine, random_returns
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from agents.drama_loop import DRAMALoopConfig, run
from agents.train import EVAL_SEED_OFFSET, latest_checkpoint
from wmenv.checks import check_int
from wmenv.data.collect import random_replay
from wmenv.envs.vector import VecEnv
from wmenv.fit import load_model

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

PAPER = {
    "Boxing": {"random": 0.0, "human": 12.0, "ppo_100k": 3.0, "drama_100k": 78.0},
    "Pong": {"random": -21.0, "human": 15.0, "ppo_100k": -20.0, "drama_100k": 15.0},
}
"""DRAMA's Table 1 (Atari100k: 100k env steps, frame skip 4), per game."""

HELDOUT_SEED = 2 * EVAL_SEED_OFFSET
"""Env seed of the held-out random play (training uses the run's seed, evaluations ``EVAL_SEED_OFFSET`` + seed)."""

PER_RUN = ("env_id", "sampler", "seed", "run_dir", "resume", "progress")
"""Run settings each run sets for itself; the rest (but `BOOKKEEPING`) must agree among a game's runs."""


@dataclass
class Args:
    """Benchmark settings."""

    games: list[str] = field(default_factory=lambda: ["Boxing", "Pong"])
    """Atari games (``atari:<Game>`` ids; the report quotes the paper for those in its Table 1)."""
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    """One run per seed, game and sampler."""
    samplers: list[Literal["dfs", "uniform"]] = field(default_factory=lambda: ["dfs", "uniform"])
    """Window and imagination starts: DRAMA's DFS and/or uniform."""
    out: str = "benchmarks/drama_atari"
    """Output folder: the runs under ``parts/``, the JSON and PNG."""
    random_episodes: int = 10
    """Random-play episodes per game, on the env seeds the evaluations use."""
    heldout_steps: int = 2048
    """Random-play env steps (from `HELDOUT_SEED`) on which every run's final world model is scored."""
    heldout_windows: int = 32
    """Windows of the runs' ``seq_len`` rows drawn once from those steps, the same for every run of a game (0: none)."""
    torch_threads: int = 1
    """torch threads for the runs (1 lets two processes share a 2-core machine)."""
    report_only: bool = False
    """Do not run: report every finished run found in ``<out>/parts``."""
    run: DRAMALoopConfig = field(default_factory=lambda: DRAMALoopConfig(iterations=40, progress=False))
    """The loop's settings (``--run.iterations``, ``--run.fit-steps``, ...; env, sampler and seed are set per run)."""


def run_dir(out: Path, game: str, sampler: str, seed: int) -> Path:
    """Where one run lives."""
    return out / "parts" / f"{game}_{sampler}_seed{seed}"


def finished(folder: Path, iterations: int | None = None) -> dict | None:
    """The run's ``result.json`` if it finished (``iterations`` of them, when given), else None."""
    path = folder / "result.json"
    if not path.exists():
        return None
    result = json.loads(path.read_text())
    done = result["counters"]["iteration"]
    return result if done >= (iterations or result["config"]["iterations"]) else None


def run_all(args: Args, out: Path) -> None:
    """Run (or resume) every game × sampler × seed not yet finished at ``args.run.iterations``."""
    torch.set_num_threads(args.torch_threads)
    for game in args.games:
        for sampler in args.samplers:
            for seed in args.seeds:
                folder = run_dir(out, game, sampler, seed)
                if finished(folder, args.run.iterations) is None:
                    run(dataclasses.replace(args.run, env_id=f"atari:{game}", sampler=sampler, seed=seed,
                                            run_dir=str(folder), resume=True, progress=False))  # fmt: skip


def protocol(config: dict) -> dict:
    """What makes runs of one game comparable: their settings but `PER_RUN` and `BOOKKEEPING`."""
    return {k: v for k, v in config.items() if k not in PER_RUN + BOOKKEEPING}


def collect_runs(out: Path) -> tuple[dict[str, list[dict]], list[str]]:
    """Finished runs in ``<out>/parts`` by game (sorted by sampler and seed), and the unfinished ones' names with the
    env steps they reached.

    Raises:
        ValueError: two runs of one game made with other settings, naming the file and the differences.
    """
    games: dict[str, list[dict]] = {}
    unfinished = []
    for folder in sorted(p for p in (out / "parts").glob("*") if p.is_dir()):
        result = finished(folder)
        if result is None:
            latest = latest_checkpoint(folder)
            steps = 0 if latest is None else json.loads((latest / "loop.json").read_text())["counters"]["env_steps"]
            unfinished.append(f"{folder.name} ({steps} env steps)")
            continue
        cfg = result["config"]
        runs = games.setdefault(cfg["env_id"].removeprefix("atari:"), [])
        if runs and (diff := differences(protocol(cfg), protocol(runs[0]["config"]))):
            text = "; ".join(f"{k} {v!r}, expected {w!r}" for k, v, w in diff)
            raise ValueError(f"runs: {folder / 'result.json'} was made with other settings than {runs[0]['folder']}: {text}")
        runs.append({"folder": str(folder), "sampler": cfg["sampler"], "seed": cfg["seed"], **result})
    for runs in games.values():
        runs.sort(key=lambda r: (r["sampler"], r["seed"]))
    return games, unfinished


TRAINING_TAGS = {"entropy": "actor_critic/entropy", "episode_return": "charts/real_episode_return"}
"""The run's TensorBoard scalars the report reads: the actor's entropy after each iteration's updates, and the real
return of each training episode (actions sampled from the actor)."""


def training_curves(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """`TRAINING_TAGS`' scalars of the run in ``folder`` as (env step, value) lists, read by TensorBoard itself: a
    resumed run's event files are read in order and what its restart purged (steps from the resumed checkpoint on,
    logged before the interruption) is dropped."""
    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    events.Reload()
    logged = set(events.Tags()["scalars"])
    return {name: [(e.step, e.value) for e in events.Scalars(tag)] if tag in logged else []
            for name, tag in TRAINING_TAGS.items()}  # fmt: skip


def actor_numbers(curves: dict[str, list[tuple[int, float]]]) -> dict:
    """From a run's `training_curves`: its last logged actor entropy and the mean real return of its last 3 training
    episodes (None where none was logged), with how many training episodes ended."""
    returns = [v for _, v in curves["episode_return"]]
    return {
        "actor_entropy_final": round(curves["entropy"][-1][1], 4) if curves["entropy"] else None,
        "training_return_last3": round(float(np.mean(returns[-3:])), 2) if returns else None,
        "training_episodes": len(returns),
    }


@torch.no_grad()
def heldout_losses(runs: list[dict], game: str, steps: int, windows: int) -> None:
    """Score each run's final world model on the same ``windows`` held-out windows of ``steps`` random-play steps
    (env seed `HELDOUT_SEED`): the loss and its terms in eval mode, latents drawn from seed 0; adds
    ``run["heldout_loss"]``."""
    cfg = runs[0]["config"]
    held, spec = random_replay(f"atari:{game}", steps, num_envs=1, seed=HELDOUT_SEED, stream=True, **cfg["env_kwargs"])
    batch = held.sample(windows, cfg["seq_len"], generator=0)
    for r in runs:
        model = load_model(latest_checkpoint(Path(r["folder"])) / "world_model", spec, kind="drama").eval()
        torch.manual_seed(0)
        total, terms = model.loss(batch)
        r["heldout_loss"] = {"loss": round(float(total), 4), **{k: round(v, 4) for k, v in terms.items()}}


def summarize(runs: list[dict], random: list[float], game: str, n_actions: int) -> dict:
    """One game's numbers (module docstring) from its finished runs, random play's returns and the game's action
    count."""
    samplers = {}
    for sampler in dict.fromkeys(r["sampler"] for r in runs):
        mine = [r for r in runs if r["sampler"] == sampler]
        finals = [last3(r) for r in mine]
        steps = sum(r["counters"]["env_steps"] for r in mine)
        cpu = {k: round(1000 * sum(r["cpu_seconds"][k] for r in mine) / steps, 1) for k in mine[0]["cpu_seconds"]}
        samplers[sampler] = {
            "seeds": [r["seed"] for r in mine],
            "final_by_seed": [round(f, 2) for f in finals],
            "final_mean": round(float(np.mean(finals)), 2),
            "final_std": round(float(np.std(finals)), 2),
            "mean_of_evaluations": round(float(np.mean([v for r in mine for _, v in r["eval_returns"]])), 2),
            "best_evaluation": max(v for r in mine for _, v in r["eval_returns"]),
            "env_steps": mine[0]["counters"]["env_steps"],
            "cpu_s_per_1k_steps": {**cpu, "total": round(sum(cpu.values()), 1)},
            **{f"{k}_by_seed": [r["actor"][k] for r in mine] for k in mine[0]["actor"]},
        }
        if all("heldout_loss" in r for r in mine):
            terms = mine[0]["heldout_loss"]
            samplers[sampler]["heldout_loss_mean"] = {k: round(float(np.mean([r["heldout_loss"][k] for r in mine])), 4)
                                                      for k in terms}  # fmt: skip
    summary = {"random_mean": round(float(np.mean(random)), 2), "random_std": round(float(np.std(random)), 2),
               "random_episodes": len(random), "uniform_actor_entropy": round(float(np.log(n_actions)), 4),
               "samplers": samplers, "paper": PAPER.get(game)}  # fmt: skip
    if {"dfs", "uniform"} <= samplers.keys():
        summary["final_dfs_minus_uniform_by_seed"] = dfs_minus_uniform(runs, last3, 2)
        if all("heldout_loss" in r for r in runs):
            summary["heldout_loss_dfs_minus_uniform_by_seed"] = dfs_minus_uniform(runs, lambda r: r["heldout_loss"]["loss"], 4)
    return summary


def dfs_minus_uniform(runs: list[dict], value, digits: int) -> dict[int, float]:
    """``value(run)`` of the DFS run minus that of the uniform run, per seed that has both, rounded to ``digits``."""
    by_seed: dict[int, dict[str, float]] = {r["seed"]: {} for r in runs}
    for r in runs:
        by_seed[r["seed"]][r["sampler"]] = value(r)
    return {s: round(v["dfs"] - v["uniform"], digits) for s, v in by_seed.items() if len(v) == 2}


def plot(path: Path, games: dict[str, list[dict]], numbers: dict[str, dict]) -> None:
    """Greedy return vs real env steps, one panel per game: each sampler's seeds (thin) and their mean (thick, running
    mean of 3 evaluations), the real returns of its training episodes (crosses: the sampled actor that collects),
    random play's mean (dashed)."""
    fig, axes = plt.subplots(1, len(games), figsize=(6.5 * len(games), 4.2), squeeze=False)
    for ax, (game, runs) in zip(axes[0], games.items()):
        for i, sampler in enumerate(numbers[game]["samplers"]):
            mine, color = [r for r in runs if r["sampler"] == sampler], f"C{i}"
            for r in mine:
                ax.plot(*zip(*r["eval_returns"]), color=color, alpha=0.3, lw=0.8)
            steps, mean = mean_curve([r["eval_returns"] for r in mine])
            name = "DFS" if sampler == "dfs" else sampler
            ax.plot(steps, smooth(mean), color=color, lw=2, label=f"{name} starts, {len(mine)} seed{'s' * (len(mine) > 1)}")
            episodes = [p for r in mine for p in r["training_returns"]]
            if episodes:
                ax.scatter(*zip(*episodes), color=color, marker="x", s=18, label=f"{name}: training episodes (sampled)")
        n = numbers[game]
        ax.axhline(n["random_mean"], color="k", ls="--", lw=1, label=f"random play {n['random_mean']:.1f}")
        paper = f"; paper at 100k: DRAMA {n['paper']['drama_100k']:g}, PPO {n['paper']['ppo_100k']:g}" if n["paper"] else ""
        ax.set_title(f"DRAMA on {game}{paper}", fontsize=10)
        ax.set_xlabel("real env steps")
        episodes = runs[0]["config"]["eval_episodes"]
        ax.set_ylabel(f"greedy return ({episodes} episode{'s' * (episodes > 1)} per evaluation)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report(args: Args, out: Path) -> dict:
    """Summarize every finished run in ``<out>/parts``; write JSON + PNG; print the summary line."""
    check_int("heldout_windows", args.heldout_windows, 0)
    check_int("heldout_steps", args.heldout_steps)
    games, unfinished = collect_runs(out)
    if not games:
        raise ValueError(f"out: no finished run in {out / 'parts'} (unfinished: {unfinished or 'none'})")
    numbers = {}
    for game, runs in games.items():
        cfg = runs[0]["config"]
        seeds = range(EVAL_SEED_OFFSET, EVAL_SEED_OFFSET + args.random_episodes)
        random = [r for s in seeds for r in random_returns(f"atari:{game}", 1, s, **cfg["env_kwargs"])]
        if args.heldout_windows:
            heldout_losses(runs, game, args.heldout_steps, args.heldout_windows)
        for r in runs:
            curves = training_curves(Path(r["folder"]))
            r["actor"], r["training_returns"] = actor_numbers(curves), curves["episode_return"]
        with VecEnv(f"atari:{game}", **cfg["env_kwargs"]) as env:
            numbers[game] = summarize(runs, random, game, env.spec.n_actions)
    settings = {game: protocol(runs[0]["config"]) for game, runs in games.items()}
    summary = {"benchmark": "drama_atari", "games": numbers, "unfinished": unfinished, "run": settings,
               "machine": f"{machine()}, {args.torch_threads} torch thread(s) per run, torch {torch.__version__}"}  # fmt: skip
    kept = ("sampler", "seed", "eval_returns", "training_returns", "counters", "cpu_seconds", "wall_clock_s",
            "heldout_loss", "actor")  # fmt: skip
    data = {"summary": summary, "runs": {g: [{k: r[k] for k in kept if k in r} for r in runs] for g, runs in games.items()}}
    out.mkdir(parents=True, exist_ok=True)
    (out / "drama_atari.json").write_text(json.dumps(data, indent=1))
    plot(out / "drama_atari.png", games, numbers)
    return emit(summary, None)


def main(args: Args) -> dict:
    """Run what is missing (unless ``report_only``), then report."""
    out = Path(args.out)
    if not args.report_only:
        run_all(args, out)
    return report(args, out)


if __name__ == "__main__":
    main(tyro.cli(Args))
