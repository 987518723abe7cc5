"""The Mamba actors' training step against the GRU actor's, at MAPPO's training shapes, per scan formulation.

One MAPPO minibatch step of an actor is ``forward_sequence`` over B chunks of L steps and a backward
pass. For each B this script times that step (median of interleaved repeats, so the machine's load
hits every variant alike) for the GRU actor and for the Mamba and SP-Mamba actors with each
`MambaConfig.scan` formulation:

    blocked   the doubling scan (the library's only formulation before the compiled loop)
    loop      autograd through the plain step loop
    compiled  the loop through torch.compile (whole block for L <= 16); its compile time is reported apart

and reports milliseconds, each variant's ratio to the GRU (``x_gru``) and the speed-up of ``compiled``
over ``blocked``. B = 120 is MPE's minibatch (16 copies × 25 steps × 3 agents / L 10), B = 1600 SMAX's
(8 copies × 400 steps × 5 agents / 10). Prints one JSON line.

Usage:
    python examples/benchmarks/mamba_training.py --batches 120 1600 --out benchmarks/mamba_training/cpu.json
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import report  # noqa: F401 - this checkout's library first on sys.path
import torch
import tyro

from agents.policies import POLICY_CONFIGS, make_policy

SCANS = ("blocked", "loop", "compiled")


@dataclass
class Args:
    """Benchmark settings."""

    batches: list[int] = field(default_factory=lambda: [120, 1600])
    """B, chunks per minibatch."""
    length: int = 10
    """L, MAPPO's chunk length."""
    obs_dim: int = 18
    """D, observation features (MPE simple_spread)."""
    n_actions: int = 5
    """A, actions."""
    policies: list[str] = field(default_factory=lambda: ["mamba", "sp-mamba"])
    """Mamba actors to compare with the GRU actor at their default sizes."""
    repeats: int = 15
    """Interleaved timed repeats per variant (after two warm-up steps)."""
    threads: int = 1
    """torch intra-op threads."""
    seed: int = 0
    """Seed of the weights and inputs."""
    out: Path | None = None
    """Also write the JSON here."""


def actor_step(kind: str, scan: str | None, args: Args, batch: int) -> Callable[[], None]:
    """A closure running one forward_sequence + backward of a fresh actor (``scan`` for the Mamba kinds)."""
    torch.manual_seed(args.seed)
    config = POLICY_CONFIGS[kind]()
    if scan is not None:
        config = replace(config, scan=scan)
    policy = make_policy(kind, args.obs_dim, args.n_actions, config)
    g = torch.Generator().manual_seed(args.seed)
    obs = torch.randn(batch, args.length, args.obs_dim, generator=g)
    resets = torch.rand(batch, args.length, generator=g) < 0.05
    resets[:, 0] = True
    state0 = policy.initial_state(batch)

    def step() -> None:
        policy.zero_grad(set_to_none=True)
        policy.forward_sequence(obs, resets, state0).logsumexp(-1).mean().backward()

    return step


def measure(args: Args, batch: int) -> dict:
    """Median ms per variant at batch ``batch``, the ratios and the compile seconds."""
    variants = {"gru": actor_step("gru", None, args, batch)}
    variants |= {f"{k}_{s}": actor_step(k, s, args, batch) for k in args.policies for s in SCANS}
    first: dict[str, float] = {}
    for name, step in variants.items():
        start = time.perf_counter()
        step()
        first[name] = time.perf_counter() - start
        step()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, step in variants.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    ms = {name: statistics.median(v) * 1e3 for name, v in times.items()}
    return {
        "B": batch,
        "ms": {k: round(v, 2) for k, v in ms.items()},
        "x_gru": {k: round(v / ms["gru"], 2) for k, v in ms.items() if k != "gru"},
        "compiled_speedup_vs_blocked": {k: round(ms[f"{k}_blocked"] / ms[f"{k}_compiled"], 2) for k in args.policies},
        "first_call_s": {k: round(v, 1) for k, v in first.items() if k.endswith("_compiled")},
    }


def main(args: Args) -> dict:
    """Measure every batch; print and return the JSON summary."""
    torch.set_num_threads(args.threads)
    summary = {
        "benchmark": "mamba_training",
        "L": args.length,
        "results": [measure(args, b) for b in args.batches],
        "machine": f"{platform.machine()} {torch.get_num_threads()} torch thread(s), torch {torch.__version__}",
    }
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main(tyro.cli(Args))
