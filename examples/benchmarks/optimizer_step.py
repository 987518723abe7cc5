"""One Adam step over a world model's parameters: torch's CPU default (a loop over the tensors), ``foreach`` and the
fused Adam that `wmenv.optim.adam` builds, in one run.

For each world-model preset (MAMBA's `small` and `smac` on `mpe:simple_spread_v3`, and any others named) the script
gives every parameter a fixed random gradient and times ``optimizer.step()`` for each implementation in CPU time per
step after a warm-up, alternating them over rounds, and reports the ratio default / fused (> 1: fused is faster) and
the largest difference of the parameters after 10 steps from the same start (the update is the same to rounding).
With ``--fit-steps N`` it also times whole world-model fit steps (`wmenv.fit.fit`: windows, loss, backward, clip,
step; the loop's B 16 x T 20 and compiled rows) with the default and the fused Adam, alternating, so the share of the
optimizer in a fit step is measured in the same process. Prints one JSON line.

Usage:
    python examples/benchmarks/optimizer_step.py --out benchmarks/optimizer_step/cpu.json
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import tyro
from report import emit, machine

from wmenv.data.collect import random_replay
from wmenv.fit import FitConfig, fit
from wmenv.models.registry import build_model

IMPLEMENTATIONS = {"default": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}
"""name -> `torch.optim.Adam` keyword arguments (``default``: what torch picks for CPU tensors, its per-tensor loop)."""


@dataclass
class Args:
    env_id: str = "mpe:simple_spread_v3"
    """The env whose spec sizes the models."""
    models: list[str] = field(default_factory=lambda: ["mamba:small", "mamba:smac"])
    """``kind:preset`` world models to time."""
    steps: int = 50
    """Timed steps per implementation and round."""
    rounds: int = 3
    """Alternating rounds over the implementations; the median per step is reported."""
    fit_steps: int = 0
    """Also time this many whole fit steps per implementation and round (0: not)."""
    fit_compile: str = "steps"
    """`FitConfig.compile` of those fit steps (the model-based loop's default: ``steps``)."""
    out: Path | None = None
    """Also write the JSON to this file."""


def per_step_ms(optimizer: torch.optim.Optimizer, steps: int) -> float:
    """CPU ms of one ``optimizer.step()`` (gradients already set), after 3 warm-up steps."""
    for _ in range(3):
        optimizer.step()
    start = time.process_time()
    for _ in range(steps):
        optimizer.step()
    return (time.process_time() - start) / steps * 1e3


def _model(kind: str, preset: str, spec) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(kind, spec, preset)


def _model_with_grads(kind: str, preset: str, spec) -> torch.nn.Module:
    """The model with fixed random gradients, for timing optimizer steps alone."""
    model = _model(kind, preset, spec)
    g = torch.Generator().manual_seed(1)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=g)
    return model


def fit_step_ms(kind: str, preset: str, replay, spec, args: Args) -> dict[str, float]:
    """CPU ms per whole fit step with the default and the fused Adam (alternating rounds, the median; one warm-up fit
    first, which also compiles)."""
    times: dict[str, list[float]] = {"default": [], "fused": []}
    cfg = FitConfig(steps=args.fit_steps, batch_size=16, seq_len=20, progress=False, compile=args.fit_compile)
    for r in range(args.rounds + 1):
        for k in times:
            model = _model(kind, preset, spec)
            opt = torch.optim.Adam(model.parameters(), lr=1e-4, **IMPLEMENTATIONS[k])
            start = time.process_time()
            fit(model, replay, cfg, optimizer=opt)
            if r > 0:  # round 0 warms up (and compiles)
                times[k].append((time.process_time() - start) / args.fit_steps * 1e3)
    return {k: round(statistics.median_high(v), 2) for k, v in times.items()}


def main(args: Args) -> dict:
    torch.set_num_threads(1)
    replay, spec = random_replay(args.env_id, 2000 if args.fit_steps else 50, num_envs=1, seed=0)
    results = {}
    for name in args.models:
        kind, preset = name.split(":")
        model = _model_with_grads(kind, preset, spec)
        params = list(model.parameters())
        row: dict = {"tensors": len(params), "parameters": sum(p.numel() for p in params)}
        optimizers = {k: torch.optim.Adam(params, lr=1e-4, **kw) for k, kw in IMPLEMENTATIONS.items()}
        times: dict[str, list[float]] = {k: [] for k in IMPLEMENTATIONS}
        for _ in range(args.rounds):
            for k, opt in optimizers.items():
                times[k].append(per_step_ms(opt, args.steps))
        ms = {k: statistics.median_high(v) for k, v in times.items()}
        row.update({f"{k}_ms": round(v, 3) for k, v in ms.items()})
        row["default_over_fused"] = round(ms["default"] / ms["fused"], 2)
        after = {}
        for k, kw in (("default", IMPLEMENTATIONS["default"]), ("fused", IMPLEMENTATIONS["fused"])):
            m = _model_with_grads(kind, preset, spec)
            opt = torch.optim.Adam(m.parameters(), lr=1e-4, **kw)
            for _ in range(10):
                opt.step()
            after[k] = [p.detach().clone() for p in m.parameters()]
        row["max_abs_diff_after_10_steps"] = max(float((a - b).abs().max()) for a, b in zip(*after.values()))
        if args.fit_steps:
            fit_ms = fit_step_ms(kind, preset, replay, spec, args)
            row["fit_step_ms"] = fit_ms
            row["fit_step_default_over_fused"] = round(fit_ms["default"] / fit_ms["fused"], 3)
        results[name] = row
    summary = {"benchmark": "optimizer_step", "env_id": args.env_id, "models": results, "threads": 1,
               "torch": torch.__version__, "machine": machine()}  # fmt: skip
    return emit(summary, args.out)


if __name__ == "__main__":
    main(tyro.cli(Args))
