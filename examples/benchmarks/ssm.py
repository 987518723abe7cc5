"""SSM block training speed: `Mamba` and `Mamba2` against a same-size `nn.GRU` and against their own step loop, in one run.

For each (d_model, L) the script times one training forward + backward (``loss = y.square().mean()``,
then ``loss.backward()``) of five models on a (B, L, d_model) float32 batch and reports tokens per
second, B * L / the median time over repeats after a warm-up:

    gru               ``nn.GRU(d_model, d_model, batch_first=True)``
    mamba             ``Mamba(d_model=...)`` over the sequence (blocked parallel scan), defaults d_state 16, expand 2
    mamba2            ``Mamba2(d_model=..., d_state=64, headdim=...)`` over the sequence (chunked SSD)
    mamba_step_loop   the same `Mamba` advanced by ``step`` L times from ``initial_state``, outputs stacked
    mamba2_step_loop  the same `Mamba2` likewise

with the ratios ``mamba_vs_gru``, ``mamba2_vs_gru``, ``mamba_vs_step_loop`` and ``mamba2_vs_step_loop``
(tokens/s over tokens/s), and a ``goals`` summary at L = 256: the sequence forward should be at least
10x its step loop and at least 0.5x the GRU. Step loops longer than ``--step-loop-max-len`` are skipped
(``null``). Runs on ``--device`` (the CPU by default) with ``--backend`` (the pure-PyTorch reference by default, or
mamba-ssm's kernels on CUDA). Prints one JSON line.

Usage:
    python examples/benchmarks/ssm.py --lengths 16 64 256 1024 --d-models 64 256 --batch 16 --seconds 2
    python examples/benchmarks/ssm.py --lengths 256 --d-models 64 --models mamba mamba_step_loop   # quick look
    python examples/benchmarks/ssm.py --step-loop-max-len 1024 --out benchmarks/ssm.json            # all step loops
"""

from __future__ import annotations

import functools
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import tyro
from report import emit, machine, wall_clock
from torch import nn

from wmenv.models.ssm import Mamba, Mamba2, selective_scan_naive, selective_scan_ref, ssd_chunked, ssd_naive

ModelName = Literal["gru", "mamba", "mamba2", "mamba_step_loop", "mamba2_step_loop"]
MODELS: tuple[ModelName, ...] = ("gru", "mamba", "mamba2", "mamba_step_loop", "mamba2_step_loop")
STEP_LOOP_GOAL = 10.0
"""The sequence forward should be at least this many times its step loop's tokens/s at the goal length."""
GRU_GOAL = 0.5
"""... and at least this fraction of the GRU's tokens/s (within 2x)."""


@dataclass
class Args:
    """Benchmark settings."""

    lengths: list[int] = field(default_factory=lambda: [16, 64, 256, 1024])
    """L, sequence lengths to measure."""
    d_models: list[int] = field(default_factory=lambda: [64, 256])
    """Model widths: GRU input and hidden size, the blocks' d_model."""
    batch: int = 16
    """B, sequences per batch."""
    models: list[ModelName] = field(default_factory=lambda: list(MODELS))
    """Models to measure; the others are reported as null."""
    seconds: float = 2.0
    """Measuring time per (d_model, L, model), after one warm-up forward + backward; at least one repeat."""
    step_loop_max_len: int = 256
    """Step loops are skipped (null) for L above this (they are slow and memory-hungry at L = 1024)."""
    goal_length: int = 256
    """L at which the goals (>= 10x the step loop, >= 0.5x the GRU) are checked."""
    mamba2_d_state: int = 64
    """N of `Mamba2` (its config default is 128)."""
    mamba2_headdim: int | None = None
    """P of `Mamba2`; None: 32 for d_model <= 64, else 64."""
    mamba2_chunk_size: int = 64
    """Q, the chunk length of `Mamba2`'s pure-PyTorch SSD (``ref_chunk_size``, its config default)."""
    mamba_scan_block: int = 8
    """Steps the `Mamba` reference scan solves at once (its config default)."""
    threads: int = 1
    """torch intra-op threads."""
    device: str = "cpu"
    """Torch device of the models and inputs ("cuda": times are wall time after synchronizing)."""
    backend: Literal["ref", "cuda"] = "ref"
    """The blocks' SSM path: the pure-PyTorch reference or mamba-ssm's kernels (CUDA tensors only; the step loops
    and the scan-only rows always run the reference)."""
    seed: int = 0
    """Seed of the models' init and the inputs."""
    scan_only: bool = True
    """Also time the SSM core alone (scan / SSD vs its plain loop over time) at the goal length."""
    out: Path | None = None
    """Also write the JSON to this file."""


def build_models(d_model: int, args: Args) -> dict[str, nn.Module]:
    """The GRU and both blocks at width ``d_model``, float32 on ``args.device``, from a fixed seed."""
    torch.manual_seed(args.seed)
    headdim = args.mamba2_headdim or (32 if d_model <= 64 else 64)
    models = {
        "gru": nn.GRU(d_model, d_model, batch_first=True),
        "mamba": Mamba(d_model=d_model, scan="blocked", scan_block=args.mamba_scan_block, backend=args.backend),
        "mamba2": Mamba2(
            d_model=d_model, d_state=args.mamba2_d_state, headdim=headdim, ref_chunk_size=args.mamba2_chunk_size,
            backend=args.backend,
        ),
    }  # fmt: skip
    return {k: m.to(args.device) for k, m in models.items()}


def forward(name: str, models: dict[str, nn.Module], x: torch.Tensor) -> torch.Tensor:
    """y (B, L, D) of model ``name`` from x (B, L, D)."""
    if name == "gru":
        return models["gru"](x)[0]
    if name in ("mamba", "mamba2"):
        return models[name](x)
    block = models[name.removesuffix("_step_loop")]
    state = block.initial_state(x.shape[0])
    ys = []
    for t in range(x.shape[1]):
        y, state = block.step(x[:, t], state)
        ys.append(y)
    return torch.stack(ys, dim=1)


def time_fwd_bwd(run: Callable[[], torch.Tensor], params: list[nn.Parameter], seconds: float) -> tuple[float, int]:
    """Median seconds of one forward + backward after a warm-up, repeated for ``seconds`` (at least once); wall time,
    after waiting for a GPU's queued kernels."""
    now = wall_clock(params[0].device)

    def once() -> float:
        for p in params:
            p.grad = None
        start = now()
        run().square().mean().backward()
        return now() - start

    once()  # warm-up
    times: list[float] = []
    while not times or sum(times) < seconds:
        times.append(once())
    return statistics.median(times), len(times)


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b rounded, or None when either is missing."""
    return None if a is None or b is None else round(a / b, 3)


def measure(d_model: int, length: int, models: dict[str, nn.Module], args: Args) -> dict:
    """Tokens/s of every selected model at (d_model, L), and the ratios."""
    x = torch.randn(args.batch, length, d_model, generator=torch.Generator().manual_seed(args.seed + length)).to(args.device)
    rate: dict[str, float | None] = dict.fromkeys(MODELS)
    repeats: dict[str, int | None] = dict.fromkeys(MODELS)
    for name in MODELS:
        if name not in args.models or (name.endswith("_step_loop") and length > args.step_loop_max_len):
            continue
        module = models[name.removesuffix("_step_loop")]
        run = functools.partial(forward, name, models, x)
        median, repeats[name] = time_fwd_bwd(run, list(module.parameters()), args.seconds)
        rate[name] = args.batch * length / median
    return {
        "d_model": d_model,
        "L": length,
        "tokens_per_s": {k: None if v is None else round(v, 1) for k, v in rate.items()},
        "mamba_vs_gru": ratio(rate["mamba"], rate["gru"]),
        "mamba2_vs_gru": ratio(rate["mamba2"], rate["gru"]),
        "mamba_vs_step_loop": ratio(rate["mamba"], rate["mamba_step_loop"]),
        "mamba2_vs_step_loop": ratio(rate["mamba2"], rate["mamba2_step_loop"]),
        "repeats": repeats,
    }


def scan_only(d_model: int, length: int, models: dict[str, nn.Module], args: Args) -> dict:
    """Tokens/s of the SSM core alone (no projections): parallel form vs the plain loop over time.

    Inputs are random with the blocks' shapes at ``d_model`` (Mamba: u, delta (B, L, E), A (E, N);
    Mamba2: x (B, L, H, P), dt (B, L, H), one group), all requiring grad, loss ``y.square().mean()``.
    """
    g = torch.Generator().manual_seed(args.seed)
    m1, m2 = models["mamba"].config, models["mamba2"].config
    b, e, n = args.batch, m1.d_inner, m1.d_state
    s1 = [torch.randn(b, length, e, generator=g), torch.rand(b, length, e, generator=g) * 0.1, -torch.rand(e, n, generator=g)]
    s1 += [torch.randn(b, length, n, generator=g), torch.randn(b, length, n, generator=g), torch.randn(e, generator=g)]
    h, p, n2 = m2.nheads, m2.headdim, m2.d_state
    s2 = [torch.randn(b, length, h, p, generator=g), torch.rand(b, length, h, generator=g) * 0.1, -torch.rand(h, generator=g)]
    s2 += [torch.randn(b, length, 1, n2, generator=g), torch.randn(b, length, 1, n2, generator=g), torch.randn(h, generator=g)]
    s1, s2 = [t.to(args.device).requires_grad_(True) for t in s1], [t.to(args.device).requires_grad_(True) for t in s2]
    runs = {
        "mamba_scan": lambda: selective_scan_ref(*s1, block=m1.scan_block)[0],
        "mamba_scan_loop": lambda: selective_scan_naive(*s1)[0],
        "mamba2_ssd": lambda: ssd_chunked(*s2, chunk_size=m2.ref_chunk_size)[0],
        "mamba2_ssd_loop": lambda: ssd_naive(*s2)[0],
    }
    rate = {k: args.batch * length / time_fwd_bwd(run, s1 + s2, args.seconds)[0] for k, run in runs.items()}
    return {
        "d_model": d_model,
        "L": length,
        "tokens_per_s": {k: round(v, 1) for k, v in rate.items()},
        "mamba_scan_vs_loop": ratio(rate["mamba_scan"], rate["mamba_scan_loop"]),
        "mamba2_ssd_vs_loop": ratio(rate["mamba2_ssd"], rate["mamba2_ssd_loop"]),
    }


def goals(results: list[dict], length: int) -> dict[str, dict[str, bool | None]]:
    """Per d_model at L = ``length``: is each block >= 10x its step loop and >= 0.5x the GRU (None: not measured)."""
    out = {}
    for r in results:
        if r["L"] != length:
            continue
        checks: dict[str, bool | None] = {}
        for block in ("mamba", "mamba2"):
            vs_loop, vs_gru = r[f"{block}_vs_step_loop"], r[f"{block}_vs_gru"]
            checks[f"{block}_vs_step_loop_ok"] = None if vs_loop is None else vs_loop >= STEP_LOOP_GOAL
            checks[f"{block}_vs_gru_ok"] = None if vs_gru is None else vs_gru >= GRU_GOAL
        out[str(r["d_model"])] = checks
    return out


def main(args: Args) -> dict:
    """Measure every (d_model, L, model); print and return the JSON summary."""
    torch.set_num_threads(args.threads)
    results, configs, scans = [], {}, []
    for d_model in args.d_models:
        models = build_models(d_model, args)
        m1, m2 = models["mamba"].config, models["mamba2"].config
        configs[str(d_model)] = {
            "gru": {"input_size": d_model, "hidden_size": d_model},
            "mamba": {"d_state": m1.d_state, "expand": m1.expand, "d_conv": m1.d_conv, "scan_block": m1.scan_block},
            "mamba2": {
                "d_state": m2.d_state,
                "headdim": m2.headdim,
                "nheads": m2.nheads,
                "expand": m2.expand,
                "ref_chunk_size": m2.ref_chunk_size,
            },  # fmt: skip
            "params": {k: sum(p.numel() for p in m.parameters()) for k, m in models.items()},
        }
        for length in args.lengths:
            results.append(measure(d_model, length, models, args))
        if args.scan_only:
            scans.append(scan_only(d_model, args.goal_length, models, args))
    summary = {
        "benchmark": "ssm",
        "batch": args.batch,
        "seconds_per_measurement": args.seconds,
        "step_loop_max_len": args.step_loop_max_len,
        "loss": "y.square().mean()",
        "dtype": "float32",
        "device": args.device,
        "backend": args.backend,
        "configs": configs,
        "results": results,
        "goals": {
            "L": args.goal_length,
            "step_loop_x": STEP_LOOP_GOAL,
            "gru_x": GRU_GOAL,
            "by_d_model": goals(results, args.goal_length),
        },  # fmt: skip
        "scan_only": scans,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": machine(),
    }
    return emit(summary, args.out)


if __name__ == "__main__":
    main(tyro.cli(Args))
