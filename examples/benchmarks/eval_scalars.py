"""Collect the greedy-evaluation scalars (``eval/*``: return, Flatland's ``arrived_fraction``, ...) that runs logged to
TensorBoard into one JSON, with each scalar's mean over the runs at every step and over the last 3 evaluations.

The model-based benchmark's result JSONs store the return curve only; this reads the rest from the runs' events.

Usage:
    python examples/benchmarks/eval_scalars.py \\
        --runs benchmarks/model_based_latent/flatland_latent/parts/seed*/runs/flatland_5_seed* \\
        --out benchmarks/model_based_latent/flatland_latent/eval_scalars.json
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tyro
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


@dataclass
class Args:
    """What to read."""

    runs: list[Path] = field(default_factory=list)
    """TensorBoard run folders (one per seed), all evaluated at the same steps."""
    out: Path | None = None
    """Also write the JSON to this file."""
    prefix: str = "eval/"
    """Which scalars: the tags starting with this (``dream/`` or ``world_model/``: the loop's per-update scalars)."""


def read_eval(run: Path, prefix: str = "eval/") -> dict[str, dict[int, float]]:
    """``<prefix><name>`` scalars of one run folder: name -> {step: value}."""
    events = EventAccumulator(str(run), size_guidance={"scalars": 0}).Reload()
    tags = [t for t in events.Tags()["scalars"] if t.startswith(prefix)]
    return {t[len(prefix) :]: {e.step: e.value for e in events.Scalars(t)} for t in tags}


def main(args: Args) -> dict:
    """Read every run; per scalar: the runs' values, their mean per step and the mean of each run's last 3 evaluations."""
    if not args.runs:
        raise ValueError("runs: expected at least one TensorBoard run folder, got none")
    per_run = {str(r): read_eval(r, args.prefix) for r in args.runs}
    names = sorted(set.intersection(*(set(v) for v in per_run.values())))
    summary: dict = {"runs": list(per_run), "scalars": {}}
    for name in names:
        steps = sorted(set.intersection(*(set(v[name]) for v in per_run.values())))
        values = np.array([[v[name][s] for s in steps] for v in per_run.values()])  # (runs, steps)
        summary["scalars"][name] = {
            "steps": steps,
            "per_run": values.round(4).tolist(),
            "mean": values.mean(0).round(4).tolist(),
            "last3_per_run": values[:, -3:].mean(1).round(4).tolist(),
            "last3_mean": round(float(values[:, -3:].mean()), 4),
        }
    line = json.dumps(summary)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=1))
    print(line)
    return summary


if __name__ == "__main__":
    main(tyro.cli(Args))
