"""Sample efficiency: model-based MAPPO (a registered world model, ``--run.model-kind``; actor trained in the dream) vs
model-free MAPPO.

Runs `agents.model_based.run` once per seed and records the greedy real-env return against the real
env steps taken. The model-free reference is the curve of ``examples/benchmarks/mappo_baseline.py`` for the
same env (``--model-free benchmarks/mappo/<env>.json``, same greedy evaluation: 8 episodes on the same
seeds). Reported:

- ``target``: model-free's final return (mean over its seeds of the mean of its last 3 evaluations);
- ``steps_to_target``: the first real step count at which each curve (mean over seeds, running mean of
  3 evaluations, the untrained evaluation at step 0 left out) reaches the target, and the model-free /
  model-based ratio (goal: ≥ 10);
- ``mb_final`` vs ``mf_at_same_steps``: the returns at the model-based budget;
- ``levels``: for returns from a quarter of the way (from the random policy's return to the target)
  up to the model-based curve's best, the real steps each needs to get there and their ratio. Steps
  are known only to each curve's evaluation spacing; where model-free reaches a level at its first
  trained evaluation, the ratio is an upper bound (``ratio_is_upper_bound``).

Writes ``<out>/<env>.json`` and ``<out>/<env>.png`` and prints one JSON line. Each seed's run checkpoints
every iteration and is resumed when the script is started again.

Usage:
    python examples/benchmarks/model_based.py --env-id mpe:simple_spread_v3 --seeds 0 1 2 --run.iterations 30
    python examples/benchmarks/model_based.py --env-id flatland:5 --env-kwargs dense_reward True --seeds 0 \\
        --model-free benchmarks/mappo/flatland_5.json --run.iterations 40
    # seeds as Ray tasks, one per core (or over a cluster: --sweep.ray-address):
    python examples/benchmarks/model_based.py --seeds 0 1 2 --sweep.backend ray
    # or as separate processes (one per core), then merged into one JSON + PNG:
    python examples/benchmarks/model_based.py --merge a/mpe_simple_spread_v3.json b/mpe_simple_spread_v3.json
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import torch
import tyro
from report import RANDOM_EPISODES, emit, machine, random_return

from agents.model_based import ModelBasedConfig, run
from agents.policies import POLICIES, policy_field
from agents.sweep import SweepConfig, run_folder, run_sweep
from wmenv.data.collect import mean_metrics

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


@dataclass
class Args:
    """Benchmark settings."""

    env_id: str = "mpe:simple_spread_v3"
    """A `wmenv.envs.make` id with discrete actions."""
    env_kwargs: dict[str, int | float | bool | str] = field(default_factory=dict)
    """Extra keywords for `wmenv.envs.make` (``dense_reward True`` for Flatland)."""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    """One model-based run per seed."""
    model_free: list[str] = field(default_factory=list)
    """Model-free baseline JSONs of `mappo_baseline.py` (default: ``benchmarks/mappo/<env>.json``); the one
    trained longest sets the target, a short one evaluated more often resolves the early curve."""
    torch_threads: int = 1
    """torch threads per run (1 lets two runs share a 2-core machine)."""
    out: str = "benchmarks/model_based"
    """Output folder for JSON, PNG and the runs (TensorBoard, checkpoints)."""
    merge: list[str] = field(default_factory=list)
    """Instead of running: combine these result JSONs (same env and settings) into ``out``."""
    run: ModelBasedConfig = field(default_factory=ModelBasedConfig)
    """The model-based loop's settings (``--run.iterations``, ``--run.train-ratio``, ``--run.model``, ...)."""
    sweep: SweepConfig = field(default_factory=SweepConfig)
    """Where the seeds run: one after the other here (default), or ``--sweep.backend ray``: one Ray task per seed
    (one per core here, or on the cluster of ``--sweep.ray-address``), each resuming its run folder."""


def mean_curve(curves: list[list[list[float]]]) -> tuple[np.ndarray, np.ndarray]:
    """Steps (K,) and the mean return over runs (K,) of curves that share their evaluation steps."""
    steps = np.array([s for s, _ in curves[0]], dtype=float)
    for c in curves[1:]:
        if [s for s, _ in c] != steps.tolist():
            raise ValueError(f"curves: expected evaluations at the same steps, got {[s for s, _ in c]} vs {steps.tolist()}")
    return steps, np.mean([[v for _, v in c] for c in curves], axis=0)


def smooth(values: np.ndarray, width: int = 3) -> np.ndarray:
    """Trailing running mean over ``width`` points (fewer at the start): (K,) -> (K,)."""
    cums = np.cumsum(np.insert(values, 0, 0.0))
    lo = np.maximum(np.arange(1, len(values) + 1) - width, 0)
    return (cums[1:] - cums[lo]) / (np.arange(1, len(values) + 1) - lo)


def steps_to_reach(steps: np.ndarray, values: np.ndarray, target: float) -> float | None:
    """The first step after the start whose smoothed value is ≥ ``target`` (None if never).

    The evaluation at step 0 (the untrained initialization) is left out, also from the running mean.
    """
    trained = steps > 0
    hit = np.flatnonzero(smooth(values[trained]) >= target)
    return float(steps[trained][hit[0]]) if len(hit) else None


def _mf_reach(curves: list[tuple[np.ndarray, np.ndarray]], level: float) -> tuple[float | None, bool]:
    """Fewest real steps any model-free curve needs to reach ``level``; True if that is its first trained evaluation."""
    hits = []
    for steps, mean in curves:
        if (hit := steps_to_reach(steps, mean, level)) is not None:
            hits.append((hit, hit == float(steps[steps > 0][0])))
    return min(hits) if hits else (None, False)


def last3(run: dict) -> float:
    """A run's final return: the mean of its last 3 evaluations."""
    return float(np.mean([v for _, v in run["eval_returns"][-3:]]))


def ratio(model_free: float | None, model_based: float | None) -> float | None:
    """How many times the model-based steps the model-free ones are (None where either is unknown)."""
    return None if model_free is None or model_based is None else round(model_free / max(model_based, 1.0), 2)


def compare(runs: list[dict], references: list[dict], random: float | None = None) -> dict:
    """The sample-efficiency numbers of the module docstring from model-based runs and model-free JSONs.

    The target is the final return of the reference that trained longest; steps to a level are the
    fewest any reference needs (a short reference evaluated more often resolves the early curve).
    ``random`` is the random policy's return (default: the one recorded with the target's reference).
    """
    mb_steps, mb_mean = mean_curve([r["eval_returns"] for r in runs])
    curves = [mean_curve([r["eval_returns"] for r in ref["runs"]]) for ref in references]
    main_ref = max(range(len(references)), key=lambda i: curves[i][0][-1])
    final_runs = references[main_ref]["runs"]
    target = float(np.mean([last3(r) for r in final_runs]))
    mf_total = float(curves[main_ref][0][-1])
    mb_hit, (mf_hit, _) = steps_to_reach(mb_steps, mb_mean, target), _mf_reach(curves, target)
    budget = float(mb_steps[-1])
    best = float(smooth(mb_mean[mb_steps > 0]).max())
    if random is None:
        random = float(references[main_ref]["summary"]["random_policy_return"])
    levels = sorted({*(random + f * (target - random) for f in (0.25, 0.5, 0.75, 0.9, 1.0)), best})
    table = []
    for level in (x for x in levels if x <= best):
        mb, (mf, first) = steps_to_reach(mb_steps, mb_mean, level), _mf_reach(curves, level)
        table.append({"return": round(level, 3), "steps_model_based": mb, "steps_model_free": mf, "ratio": ratio(mf, mb),
                      "ratio_is_upper_bound": first})  # fmt: skip
    # model-free at the model-based budget: from the reference with the most evaluations up to it
    covering = [c for c in curves if c[0][-1] >= budget] or curves
    steps, mean = max(covering, key=lambda c: int((c[0] <= budget).sum()))
    finals = [last3(r) for r in runs]
    return {
        "target": round(target, 3),
        "model_free_seeds": [r["seed"] for r in final_runs],
        "model_free_total_steps": int(mf_total),
        "steps_to_target_model_based": mb_hit,
        "steps_to_target_model_free": mf_hit,
        "speedup_to_target": ratio(mf_hit, mb_hit),
        "fewer_steps_than_model_free_final": None if mb_hit is None else round(mf_total / max(mb_hit, 1.0), 1),
        "mb_budget_steps": int(budget),
        "mb_final_mean": round(float(np.mean(finals)), 3),
        "mb_final_std": round(float(np.std(finals)), 3),
        "mf_at_same_steps": round(float(np.interp(budget, steps, mean)), 3),
        "mb_best_smoothed": round(best, 3),
        "levels": table,
    }


def curve_label(run: dict) -> str:
    """The model-based curve's legend from the run settings: world model kind and preset, MAG rollouts if used (result
    JSONs from before the kinds were registered ran MAMBA's model)."""
    kind, preset = run.get("model_kind", "mamba"), run.get("model", "small")
    mag = ", MAG rollouts" if run.get("rollout", "sample") == "mag" else ""
    return f"model-based, {kind.upper()} world model ({preset}{mag})"


def plot(path: Path, env_id: str, runs: list[dict], references: list[dict], numbers: dict, label: str,
         others: Sequence[tuple[str, list[dict]]] = ()) -> None:  # fmt: skip
    """Return vs real env steps (log x): model-based seeds and their mean (``label``), each model-free mean with its
    min-max band, and the mean of each set of ``others`` ((legend, runs): other model-based runs, dashed)."""
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for i, ref in enumerate(references):
        mf = np.array([[v for _, v in r["eval_returns"]] for r in ref["runs"]])
        mf_steps = np.array([s for s, _ in ref["runs"][0]["eval_returns"]], dtype=float)
        keep, color = mf_steps > 0, ("C0", "C2", "C3")[i % 3]  # log axis: no step 0
        every = int(np.median(np.diff(mf_steps)) / 1000 + 0.5) * 1000
        ax.plot(mf_steps[keep], mf.mean(0)[keep], color=color, marker="o", ms=3,
                label=f"model-free MAPPO ({len(mf)} seed{'s' * (len(mf) > 1)}, evaluated every {every:,} steps)")  # fmt: skip
        ax.fill_between(mf_steps[keep], mf.min(0)[keep], mf.max(0)[keep], color=color, alpha=0.12)
    steps, mean = mean_curve([r["eval_returns"] for r in runs])
    for r in runs:
        s = np.array([x for x, _ in r["eval_returns"]], dtype=float)
        ax.plot(s[s > 0], [v for x, v in r["eval_returns"] if x > 0], color="C1", alpha=0.25, lw=0.8)
    ax.plot(steps[steps > 0], mean[steps > 0], color="C1", lw=2, marker="o", ms=2,
            label=f"{label}: {len(runs)} seed{'s' * (len(runs) > 1)}; thin: each seed")  # fmt: skip
    for i, (name, other) in enumerate(others):
        steps_o, mean_o = mean_curve([r["eval_returns"] for r in other])
        ax.plot(steps_o[steps_o > 0], mean_o[steps_o > 0], color=("C4", "C5", "C6")[i % 3], lw=1.5, ls="--",
                label=f"{name}: mean of {len(other)} seed{'s' * (len(other) > 1)}")  # fmt: skip
    ax.axhline(numbers["target"], color="k", ls=":", lw=1, label=f"model-free final return {numbers['target']:.2f}")
    ax.set_xscale("log")
    ax.set_xlabel("real env steps")
    ax.set_ylabel("greedy return per agent")
    ax.set_title(f"Sample efficiency on {env_id}")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def load_references(paths: list[str], env_id: str, env_kwargs: dict) -> list[dict]:
    """The model-free JSONs at ``paths``, each checked to be for ``env_id`` with ``env_kwargs``.

    Raises:
        ValueError: a path that is missing, not a `mappo_baseline.py` result, or for another env or other keywords.
    """
    references = []
    for path in paths:
        try:
            ref = json.loads(Path(path).read_text())
            made_for = (ref["summary"]["env_id"], ref["summary"]["env_kwargs"])
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"model_free: {path} is not a readable mappo_baseline.py result JSON: {e!r}") from e
        if made_for != (env_id, env_kwargs):
            raise ValueError(f"model_free: {path} is for {made_for[0]} {made_for[1]}, expected {env_id} {env_kwargs}")
        references.append(ref)
    return references


def write_results(out: Path, args_summary: dict, runs: list[dict], reference_paths: list[str]) -> dict:
    """Compare, write ``<env>.json`` and ``<env>.png``, print the summary line."""
    env_id = args_summary["env_id"]
    references = load_references(reference_paths, env_id, args_summary["env_kwargs"])
    # the random policy's return sets the levels; measured here when the references did not record it
    recorded = [r["summary"].get("random_policy_return") for r in references]
    random = next((x for x in recorded if x is not None), None)
    if random is None:
        random = random_return(env_id, RANDOM_EPISODES, 0, **args_summary["env_kwargs"])
    numbers = compare(runs, references, random)
    summary = {
        **args_summary,
        "seeds": [r["seed"] for r in runs],
        **numbers,
        "wall_clock_s_per_run": round(float(np.mean([r["wall_clock_s"] for r in runs])), 1),
        "model_free_references": reference_paths,
        "random_policy_return": round(float(random), 3),
        "machine": f"{machine()}, {args_summary['torch_threads']} torch thread(s) per run, torch {torch.__version__}",
    }
    # the sampling policy's real training episodes over each seed's last 3 iterations (Flatland's % arrived as the
    # papers report it; the curves above are greedy evaluations)
    real = [mean_metrics([m for _, m in r.get("real_metrics", [])[-3:]]) for r in runs]
    if any(real):
        summary["last3_real_metrics"] = [{k: round(v, 4) for k, v in m.items()} for m in real]
    tag = env_id.replace(":", "_")
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{tag}.json").write_text(json.dumps({"summary": summary, "runs": runs}, indent=1))
    plot(out / f"{tag}.png", env_id, runs, references, numbers, curve_label(args_summary["run"]))
    return emit(summary, None)


BOOKKEEPING = ("keep_checkpoints", "keep_every")
"""Run settings that decide which checkpoints are kept, not what is learned: runs differing in them merge."""


def with_defaults(settings: dict, defaults: dict) -> dict:
    """``settings`` with every key it lacks (at any depth) taken from ``defaults``."""
    out = {**defaults, **settings}
    return {k: with_defaults(v, defaults[k]) if isinstance(v, dict) and isinstance(defaults.get(k), dict) else v
            for k, v in out.items()}  # fmt: skip


def protocol(summary: dict) -> dict:
    """What makes two result JSONs one protocol: env, its keywords and the run settings but `BOOKKEEPING`. A setting
    a JSON lacks was added to `ModelBasedConfig` after it was written, with a default that keeps the earlier
    behaviour (e.g. ``explore`` 0): it counts as that default."""
    run = with_defaults(summary["run"], dataclasses.asdict(ModelBasedConfig()))
    run = {k: v for k, v in run.items() if k not in BOOKKEEPING}
    return {"env_id": summary["env_id"], "env_kwargs": summary["env_kwargs"], "run": run}


def differences(a: Any, b: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted key, value in ``a``, value in ``b``) for every leaf where two nested dicts differ (None where absent)."""
    if not (isinstance(a, dict) and isinstance(b, dict)):
        return [] if a == b else [(prefix.rstrip(".") or "settings", a, b)]
    return [d for k in dict.fromkeys([*a, *b]) for d in differences(a.get(k), b.get(k), f"{prefix}{k}.")]


def merge(paths: list[str], out: Path, references: list[str]) -> dict:
    """Combine the runs of several result JSONs made with the same settings (compared with ``references``, or theirs)."""
    parts = [json.loads(Path(p).read_text()) for p in paths]
    settings = [protocol(p["summary"]) for p in parts]
    for p, s in zip(paths, settings):
        if s != settings[0]:
            diff = "; ".join(f"{k} {v!r}, expected {w!r}" for k, v, w in differences(s, settings[0]))
            raise ValueError(f"merge: {p} was made with other settings than {paths[0]}: {diff}")
    runs = sorted((r for p in parts for r in p["runs"]), key=lambda r: r["seed"])
    if len({r["seed"] for r in runs}) != len(runs):
        raise ValueError(f"merge: a seed appears twice among {[r['seed'] for r in runs]}")
    first = parts[0]["summary"]
    keys = ("env_id", "env_kwargs", "run", "torch_threads")
    head = {"benchmark": "model_based", **{k: first[k] for k in keys}}
    return write_results(out, head, runs, references or first["model_free_references"])


def run_seed(cfg: ModelBasedConfig) -> dict:
    """One seed's run (resumed where its folder holds a checkpoint): its result and the seconds this call took."""
    start = time.perf_counter()
    result = run(cfg)
    return {"seed": cfg.seed, **result, "process_s": time.perf_counter() - start}


def main(args: Args) -> dict:
    """Run every seed (resuming finished or interrupted ones), compare with the model-free JSON, write JSON + PNG."""
    out = Path(args.out)
    if args.merge:
        return merge(args.merge, out, args.model_free)
    tag = args.env_id.replace(":", "_")
    references = args.model_free or [f"benchmarks/mappo/{tag}.json"]
    load_references(references, args.env_id, dict(args.env_kwargs))  # before hours of runs, not after them
    configs = [
        dataclasses.replace(
            args.run,
            env_id=args.env_id,
            env_kwargs=dict(args.env_kwargs),
            seed=seed,
            resume=True,
            progress=False,
            run_dir=str(run_folder(out / "runs" / f"{tag}_seed{seed}", args.sweep)),
            torch_threads=args.torch_threads,
        )  # fmt: skip
        for seed in args.seeds
    ]
    runs = run_sweep(run_seed, configs, args.sweep, names=[f"seed {s}" for s in args.seeds])
    unused = {policy_field(k) for k in POLICIES} - {policy_field(args.run.policy)}  # other actors' architectures
    skip = {"env_id", "env_kwargs", "seed", "run_dir", "resume", "progress", "torch_threads", *unused}
    run_settings = {k: v for k, v in dataclasses.asdict(args.run).items() if k not in skip}
    head = {"benchmark": "model_based", "env_id": args.env_id, "env_kwargs": dict(args.env_kwargs), "run": run_settings,
            "torch_threads": args.torch_threads}  # fmt: skip
    return write_results(out, head, runs, references)


if __name__ == "__main__":
    main(tyro.cli(Args))
