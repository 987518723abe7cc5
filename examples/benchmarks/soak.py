"""Soak: memory over long runs of the dream and of the model-free loop (issue 18, item 7).

Two phases, each in this process, with the resident set size (RSS, from ``/proc/self/statm``) sampled by a
background thread every ``sample_seconds``:

- ``dream``: a `DreamVecEnv` of B worlds over a world model of the env's spec (``model`` preset, untrained: memory
  does not depend on the weights) stepped with random available actions until ``dream_steps`` imagined
  agent-steps (B worlds × N agents per step; auto-resets included);
- ``model_free``: `agents.train.train` (MAPPO, GRU actor, its defaults) for ``real_steps`` real env steps, with
  evaluation and checkpoints as configured.

The baseline is the phase's own RSS once it is warm (after ``warmup`` of its work): the phase reports its growth
after that point (the end minus the warm RSS, and the largest RSS minus it) and the slope of a line fitted to the
second half of its samples (MiB per 10 % of the phase), and passes when the growth stays under ``bound_mib``. Prints
one JSON line.

Usage:
    python examples/benchmarks/soak.py --out benchmarks/soak/mpe.json
    python examples/benchmarks/soak.py --dream-steps 20000 --real-steps 2000 --dream-worlds 16
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import tyro
from report import emit, machine

from agents.train import TrainConfig, train
from wmenv.dream import DreamVecEnv
from wmenv.envs import make
from wmenv.models.registry import build_model


@dataclass
class Args:
    """Soak settings."""

    env_id: str = "mpe:simple_spread_v3"
    """The env (the dream uses its spec)."""
    env_kwargs: dict[str, int | float | bool | str] = field(default_factory=dict)
    """Extra keywords for `wmenv.envs.make`."""
    model: str = "small"
    """MAMBA world-model preset of the dream."""
    dream_worlds: int = 256
    """B, imagined worlds stepped together."""
    dream_steps: int = 1_000_000
    """Imagined agent-steps of the dream phase."""
    real_steps: int = 100_000
    """Real env steps of the model-free phase."""
    eval_every: int = 10_000
    """Model-free evaluation period in real steps (0: none)."""
    checkpoint_every: int = 10_000
    """Model-free checkpoint period in real steps (0: only at the end)."""
    warmup: float = 0.1
    """Fraction of each phase after which its RSS is the baseline."""
    bound_mib: float = 64.0
    """The stated bound: growth after warm-up (MiB) a phase may show and pass."""
    sample_seconds: float = 0.25
    """RSS sampling period."""
    threads: int = 1
    """torch threads."""
    seed: int = 0
    """Seed of the dream, its actions and the model-free run."""
    out: Path | None = None
    """Also write the JSON to this file."""


PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_mib() -> float:
    """This process's resident set size in MiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE / 2**20


class Sampler:
    """A background thread recording (progress, RSS MiB) every ``period`` s; ``progress`` is read from a callable."""

    def __init__(self, progress: Callable[[], float], period: float) -> None:
        self.progress, self.period = progress, period
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.samples.append((self.progress(), rss_mib()))
            self._stop.wait(self.period)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append((self.progress(), rss_mib()))


def growth(samples: list[tuple[float, float]], warmup: float, bound: float, seconds: float) -> dict:
    """The phase's summary from its (progress in [0, 1], RSS) samples."""
    p, rss = np.array(samples).T
    warm = rss[np.searchsorted(p, warmup)] if (p >= warmup).any() else rss[-1]
    half = p >= 0.5
    slope = float(np.polyfit(p[half], rss[half], 1)[0]) / 10 if half.sum() >= 3 and np.ptp(p[half]) > 0 else 0.0
    end_growth, max_growth = float(rss[-1] - warm), float(rss[p >= warmup].max() - warm) if (p >= warmup).any() else 0.0
    return {
        "rss_warm_mib": round(float(warm), 1),
        "rss_end_mib": round(float(rss[-1]), 1),
        "rss_max_mib": round(float(rss.max()), 1),
        "growth_end_mib": round(end_growth, 1),
        "growth_max_mib": round(max_growth, 1),
        "slope_mib_per_10pct": round(slope, 2),
        "samples": int(len(rss)),
        "seconds": round(seconds, 1),
        "within_bound": bool(max(end_growth, max_growth) <= bound),
    }


def soak_dream(args: Args) -> dict:
    """Step a `DreamVecEnv` for ``dream_steps`` imagined agent-steps; returns its `growth` summary."""
    _, spec = make(args.env_id, **args.env_kwargs)
    torch.manual_seed(args.seed)
    model = build_model("mamba", spec, args.model).eval()
    vec = DreamVecEnv(model, args.dream_worlds, seed=args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    per_step = args.dream_worlds * spec.n_agents
    total = -(-args.dream_steps // per_step)
    done = [0]
    start = time.perf_counter()
    with Sampler(lambda: done[0] / total, args.sample_seconds) as sampler:
        s = vec.reset()
        for _ in range(total):
            s = vec.step((torch.rand(s.action_mask.shape, generator=gen) * s.action_mask).argmax(-1))
            done[0] += 1
    out = growth(sampler.samples, args.warmup, args.bound_mib, time.perf_counter() - start)
    return {"imagined_agent_steps": total * per_step, "worlds": args.dream_worlds, **out}


def soak_model_free(args: Args) -> dict:
    """Train model-free MAPPO for ``real_steps``; returns its `growth` summary (progress: the fraction of the run's
    wall time, as the loop exposes no step counter while it runs)."""
    with tempfile.TemporaryDirectory() as run_dir:
        cfg = TrainConfig(env_id=args.env_id, env_kwargs=dict(args.env_kwargs), total_steps=args.real_steps,
                          seed=args.seed, eval_every=args.eval_every, checkpoint_every=args.checkpoint_every,
                          run_dir=run_dir, progress=False, torch_threads=args.threads)  # fmt: skip
        start = time.perf_counter()
        clock = lambda: time.perf_counter() - start  # noqa: E731
        with Sampler(clock, args.sample_seconds) as sampler:
            result = train(cfg)
        seconds = clock()
    samples = [(t / seconds, r) for t, r in sampler.samples]
    return {"real_steps": result.env_steps, **growth(samples, args.warmup, args.bound_mib, seconds)}


def main(args: Args) -> dict:
    """Run both phases and print the JSON summary."""
    torch.set_num_threads(args.threads)
    summary = {
        "benchmark": "soak",
        "machine": machine(),
        "env_id": args.env_id,
        "model": args.model,
        "bound_mib": args.bound_mib,
        "warmup": args.warmup,
        "dream": soak_dream(args) if args.dream_steps else None,
        "model_free": soak_model_free(args) if args.real_steps else None,
    }
    return emit(summary, args.out)


if __name__ == "__main__":
    main(tyro.cli(Args))
