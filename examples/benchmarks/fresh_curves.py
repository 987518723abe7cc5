"""Model-based against model-free budget by budget, on fresh episodes (issue 11, item 5).

The loops' own curves are greedy evaluations on 8 episodes with the same starts at every evaluation: on MPE one
episode's return has a std of 4–5 per agent, so one evaluation is ≈ 1.5 from the policy's expected return, and the
error does not average out along a run. Too coarse to say whether one learner is ahead of another at a budget where
they differ by less than that. ``dream_gap.py --all-checkpoints --episodes 128`` plays every kept checkpoint of a run
(model-based or model-free) on fresh greedy episodes (standard error ≈ 0.4); this script reads those JSONs for the two
learners and reports:

- ``budgets``: at every real-step budget where both learners were evaluated (within ``--window``), each learner's mean
  over its runs, its standard error (the std over runs / √runs; one run: the episodes' std / √episodes), and the
  difference (model-based − model-free) with its standard error;
- ``ahead`` / ``behind``: how many of those budgets the model-based mean is at or above / below the model-free one, and
  ``behind_beyond_2se``: how many it is below by more than twice the difference's standard error;
- ``compare``: `model_based.compare` on these curves (the target is the final return of the model-free reference that
  trained longest, e.g. 1M-step checkpoints given with ``--target``; real steps each learner needs to reach it and the
  levels on the way, from the running mean of 3 evaluations);
- ``baseline`` (with ``--baseline``, e.g. the default loop's runs beside an arm's): the same budget rows, counts and
  standard errors for the model-based runs against those other model-based runs.

Writes ``<out>/<env>.json`` and ``<out>/<env>.png`` (both curves, each run thin) and prints one JSON line.

Usage:
    python examples/benchmarks/fresh_curves.py --random -26.22 --window 5000 100000 --out benchmarks/fresh_curves/spread \
        --model-based benchmarks/model_ema/dream_gap/spread_default_s{0,1,2}.json \
        --model-free benchmarks/mappo_fresh/dream_gap/spread_s{0,1,2}.json --target benchmarks/dream_gap/target_256.json
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tyro
from model_based import compare, plot  # also puts this checkout first on sys.path (through `report`)
from report import emit, machine


@dataclass
class Args:
    """Benchmark settings."""

    model_based: list[Path] = field(default_factory=list)
    """`dream_gap.py` result JSONs of model-based runs (their actors' rows; one curve per run folder)."""
    model_free: list[Path] = field(default_factory=list)
    """`dream_gap.py` result JSONs of model-free runs (rows without a world model) over the same budgets."""
    random: float = float("nan")
    """The uniformly random policy's return per agent (`mappo_baseline.py`'s ``random_policy_return``): the floor of the
    levels ``compare`` counts steps to."""
    target: list[Path] = field(default_factory=list)
    """`dream_gap.py` JSONs of longer model-free runs (e.g. their last checkpoints at 1M): the target is their final
    return. Without them, the model-free runs above set it."""
    window: tuple[int, int] = (5_000, 100_000)
    """Only budgets in [first, last] real steps enter ``budgets``."""
    label: str = "model-based"
    """The model-based curve's legend."""
    baseline: list[Path] = field(default_factory=list)
    """`dream_gap.py` result JSONs of other model-based runs to compare the model-based runs with as well (e.g. the
    default loop, when ``model_based`` is an arm of an ablation); none: no ``baseline`` section."""
    baseline_label: str = "baseline"
    """The baseline curve's legend."""
    out: Path | None = None
    """Folder for ``<env>.json`` and ``<env>.png``; nothing is written when None."""


def curves(paths: list[Path], name: str, world_model: bool) -> list[dict]:
    """One curve per run folder found in ``paths``' rows: ``{"run", "seed", "eval_returns": [[steps, return], ...],
    "se": [...]}``, sorted by seed (from the folder's ``_seed<N>`` suffix, else its order), only the steps every run of
    the list was evaluated at. Only the actors' rows of runs with a world model (``world_model``) or without one are
    read, so a file holding both kinds (e.g. 1M model-free checkpoints beside model-based milestones) serves either.

    Raises:
        ValueError: ``paths`` empty, a file that is not a `dream_gap.py` result, no row of the kind, runs of several
            envs, or no step that every run was evaluated at.
    """
    if not paths:
        raise ValueError(f"{name}: expected at least one dream_gap.py result JSON")
    by_run: dict[str, dict[int, tuple[float, float]]] = {}
    envs = set()
    for path in paths:
        try:
            rows = json.loads(Path(path).read_text())["results"]
            for row in rows:
                if row.get("policy", "actor") != "actor" or ("dream_policy" in row) != world_model:
                    continue  # scripted policies beside the actor; the other kind of learner
                envs.add(row["env_id"])
                se = row["real_return_std"] / np.sqrt(row["episodes"])
                by_run.setdefault(row["run"], {})[int(row["real_steps"])] = (float(row["real"]), float(se))
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{name}: {path} is not a readable dream_gap.py result JSON: {e!r}") from e
    if not by_run:
        kind = "a model-based" if world_model else "a model-free"
        raise ValueError(f"{name}: no actor row of {kind} run in {[str(p) for p in paths]}")
    if len(envs) != 1:
        raise ValueError(f"{name}: expected runs of one env, got {sorted(envs)}")
    (env_id,) = envs
    common = sorted(set.intersection(*(set(c) for c in by_run.values())))
    if not common:
        raise ValueError(f"{name}: no real-step budget at which every run of {[str(p) for p in paths]} was evaluated")
    out = []
    for i, (run, points) in enumerate(by_run.items()):
        seed = re.search(r"_seed(\d+)$", run.rstrip("/"))
        out.append({"run": run, "seed": int(seed.group(1)) if seed else i, "env_id": env_id,
                    "eval_returns": [[s, points[s][0]] for s in common], "se": [points[s][1] for s in common]})  # fmt: skip
    return sorted(out, key=lambda c: c["seed"])


def at_budgets(runs: list[dict]) -> dict[int, tuple[float, float]]:
    """Budget -> (mean over runs, its standard error): the std over runs (ddof 1) / √runs, or with one run the
    episodes' standard error."""
    steps = [s for s, _ in runs[0]["eval_returns"]]
    values = np.array([[v for _, v in r["eval_returns"]] for r in runs])  # (R, K)
    if len(runs) > 1:
        se = values.std(0, ddof=1) / np.sqrt(len(runs))
    else:
        se = np.array(runs[0]["se"])
    return {s: (float(m), float(e)) for s, m, e in zip(steps, values.mean(0), se)}


def budget_table(mb: list[dict], other: list[dict], window: tuple[int, int], name: str = "model_free") -> list[dict]:
    """The ``budgets`` rows of the module docstring, at the steps both sets of runs were evaluated at within ``window``
    (the other runs' columns named ``name``)."""
    a, b = at_budgets(mb), at_budgets(other)
    rows = []
    for s in sorted(set(a) & set(b)):
        if not window[0] <= s <= window[1]:
            continue
        (ma, ea), (mo, eo) = a[s], b[s]
        rows.append({"steps": s, "model_based": round(ma, 3), "model_based_se": round(ea, 3), name: round(mo, 3),
                     f"{name}_se": round(eo, 3), "difference": round(ma - mo, 3),
                     "difference_se": round(float(np.hypot(ea, eo)), 3)})  # fmt: skip
    return rows


def tally(rows: list[dict]) -> dict[str, int]:
    """How many budget rows the model-based mean is at or above / below the other's, and below by more than twice the
    difference's standard error."""
    return {"ahead": sum(r["difference"] >= 0 for r in rows), "behind": sum(r["difference"] < 0 for r in rows),
            "behind_beyond_2se": sum(r["difference"] < -2 * r["difference_se"] for r in rows)}  # fmt: skip


def main(args: Args) -> dict:
    """Read both learners' curves, compare them budget by budget, write JSON + PNG, print the JSON line."""
    if not np.isfinite(args.random):
        raise ValueError(f"random: expected the random policy's return per agent (a finite float), got {args.random}")
    if not 0 <= args.window[0] <= args.window[1]:
        raise ValueError(f"window: expected 0 <= first <= last, got {args.window}")
    mb, mf = curves(args.model_based, "model_based", True), curves(args.model_free, "model_free", False)
    target = curves(args.target, "target", False) if args.target else []
    baseline = curves(args.baseline, "baseline", True) if args.baseline else []
    env_id = mb[0]["env_id"]
    for name, runs in (("model_free", mf), ("target", target), ("baseline", baseline)):
        if runs and runs[0]["env_id"] != env_id:
            raise ValueError(f"{name}: expected runs on {env_id} (the model-based runs' env), got {runs[0]['env_id']}")
    references = [{"runs": mf}] + ([{"runs": target}] if target else [])
    rows = budget_table(mb, mf, args.window)
    if not rows:
        raise ValueError(f"window: no budget in {args.window} where both learners were evaluated")
    against = budget_table(mb, baseline, args.window, "baseline") if baseline else []
    if baseline and not against:
        raise ValueError(f"baseline: no budget in {args.window} where it and the model-based runs were evaluated")
    numbers = compare(mb, references, args.random)
    summary = {
        "benchmark": "fresh_curves",
        "env_id": env_id,
        "model_based_runs": [r["run"] for r in mb],
        "model_free_runs": [r["run"] for r in mf],
        "target_runs": [r["run"] for r in target],
        "window": list(args.window),
        **tally(rows),
        "budgets": rows,
        "compare": numbers,
        **({"baseline": {"runs": [r["run"] for r in baseline], **tally(against), "budgets": against}} if baseline else {}),
        "random_policy_return": args.random,
        "machine": machine(),
    }
    if args.out is not None:
        tag = env_id.replace(":", "_")
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"{tag}.json").write_text(json.dumps(summary, indent=1))
        others = [(f"{args.baseline_label} (fresh episodes)", baseline)] if baseline else []
        plot(args.out / f"{tag}.png", env_id, mb, references, numbers, f"{args.label} (fresh episodes)", others)
    return emit(summary, None)


if __name__ == "__main__":
    main(tyro.cli(Args))
