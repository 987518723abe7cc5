"""Softmax and log-softmax over few classes: torch's CPU kernels against the library's hand-written path, in one run.

For each shape (the library's: 8×8 latent categoricals of a fit batch and of a dream batch, 5-action policies in
PPO, 32×32 latents and 255 two-hot bins, where torch's kernel is kept) the script times forward + backward of
``torch.log_softmax`` / ``torch.softmax`` and of `wmenv.tensor_ops.log_softmax` / `softmax` (loss: a fixed weighted
sum), in CPU time per call after a warm-up, alternating the two, and reports the ratio torch / ours (> 1: ours is
faster) and the largest difference of the outputs. Prints one JSON line.

Usage:
    python examples/benchmarks/softmax.py --out benchmarks/softmax/cpu.json
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import tyro
from report import emit, machine

from wmenv.tensor_ops import SMALL_CLASSES, log_softmax, softmax

SHAPES = {
    "fit_kl_8x8": (16, 20, 3, 8, 8),
    "dream_latent_8x8": (768, 8, 8),
    "ppo_actions_5": (1536, 10, 5),
    "latent_32x32": (16, 20, 3, 32, 32),
    "twohot_255": (960, 255),
}

PAIRS = {"log_softmax": (lambda y: torch.log_softmax(y, -1), log_softmax),
         "softmax": (lambda y: torch.softmax(y, -1), softmax)}  # fmt: skip
"""op -> (torch's kernel, the library's function)."""


@dataclass
class Args:
    shapes: list[str] = field(default_factory=lambda: list(SHAPES))
    """Which of the shapes (`SHAPES`) to time."""
    calls: int = 50
    """Timed forward + backward calls per function and round."""
    rounds: int = 3
    """Alternating rounds (torch, ours, torch, ours, ...); the median per call is reported."""
    out: Path | None = None
    """Also write the JSON to this file."""


def per_call_ms(fn: Callable, x: torch.Tensor, weights: torch.Tensor, calls: int) -> float:
    """CPU ms of one forward + backward of ``(fn(x) * weights).sum()``."""
    x = x.clone().requires_grad_()
    for _ in range(3):
        (fn(x) * weights).sum().backward()
    start = time.process_time()
    for _ in range(calls):
        x.grad = None
        (fn(x) * weights).sum().backward()
    return (time.process_time() - start) / calls * 1e3


def main(args: Args) -> dict:
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    results = {}
    for name in args.shapes:
        x = torch.randn(SHAPES[name], generator=g) * 3
        w = torch.randn(SHAPES[name], generator=g)
        row = {"shape": list(x.shape), "hand_written": x.shape[-1] <= SMALL_CLASSES}
        for op, (theirs, ours) in PAIRS.items():
            times: dict[str, list[float]] = {"torch": [], "ours": []}
            for _ in range(args.rounds):
                times["torch"].append(per_call_ms(theirs, x, w, args.calls))
                times["ours"].append(per_call_ms(ours, x, w, args.calls))
            ms = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
            row[op] = {"torch_ms": round(ms["torch"], 4), "ours_ms": round(ms["ours"], 4),
                       "speedup": round(ms["torch"] / ms["ours"], 2),
                       "max_abs_diff": float((theirs(x) - ours(x)).abs().max())}  # fmt: skip
        results[name] = row
    return emit({"benchmark": "softmax", "machine": machine(), "torch": torch.__version__, "results": results}, args.out)


if __name__ == "__main__":
    main(tyro.cli(Args))
