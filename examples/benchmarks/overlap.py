"""Decoupled actors and learner (issue 19, item 3): the model-based loop's wall clock with collection in line vs in a
Ray worker that collects while the learner learns.

Runs `agents.model_based.run` for ``iterations`` with ``overlap="off"`` and then ``"ray"`` (same config otherwise, a
fresh run folder each) and reports each run's wall clock over its iterations (the loop's ``wall_clock_s``: setup,
including the Ray actor's start, is outside it), their ratio, and the in-line run's collection share of an
iteration's CPU time, measured by timing its collections: the most an overlap can save is that share (collection
and learning both need a core, so the worker needs a core of its own). Prints one JSON line.

Usage:
    python examples/benchmarks/overlap.py --run.env-id flatland:5 --run.env-kwargs dense_reward True \
        --run.real-steps 2500 --run.num-envs 5 --out benchmarks/overlap/flatland.json
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import tyro
from report import emit, machine

import agents.collection as collection
from agents.model_based import ModelBasedConfig, run


@dataclass
class Args:
    """Benchmark settings."""

    run: ModelBasedConfig = field(
        default_factory=lambda: ModelBasedConfig(iterations=4, progress=False, torch_threads=1, eval_episodes=2)
    )
    """The loop (its ``overlap`` and ``run_dir`` are set here)."""
    out: Path | None = None
    """Where to write the JSON line (None: print only)."""


def main(args: Args) -> dict:
    """Run in line, then overlapped; print (and write) the JSON."""
    collect_s: list[float] = []
    plain = collection.RealData.collect

    def timed(self: collection.RealData) -> tuple[list[float], int]:
        start = time.perf_counter()
        try:
            return plain(self)
        finally:
            collect_s.append(time.perf_counter() - start)

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("off", "ray"):
            cfg = dataclasses.replace(args.run, overlap=mode, run_dir=str(Path(tmp) / mode))
            collection.RealData.collect = timed  # type: ignore[method-assign]
            try:
                collect_s.clear()
                result = run(cfg)
            finally:
                collection.RealData.collect = plain  # type: ignore[method-assign]
            results[mode] = {"wall_clock_s": round(result["wall_clock_s"], 1), "collect_wait_s": round(sum(collect_s), 1),
                             "final_return": result["eval_returns"][-1][1]}  # fmt: skip
    off, ray = results["off"]["wall_clock_s"], results["ray"]["wall_clock_s"]
    summary = {
        "benchmark": "overlap",
        "env_id": args.run.env_id,
        "env_kwargs": args.run.env_kwargs,
        "iterations": args.run.iterations,
        "real_steps_per_iteration": args.run.real_steps,
        "results": results,
        "speedup": round(off / ray, 3),
        "inline_collection_share": round(results["off"]["collect_wait_s"] / off, 3),
        "machine": machine(),
    }
    return emit(summary, args.out)


if __name__ == "__main__":
    main(tyro.cli(Args))
