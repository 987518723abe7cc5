"""How far mamba-ssm's kernels and the pure-PyTorch reference each are from the exact result, and their GPU speed.

`tests/models/ssm/test_ssm_kernels.py` asserts kernel == reference within a tolerance; when it fails it says
neither by how much nor which side is off. This script measures it. For each block kind (`Mamba`, `Mamba2`)
and reset rate it builds three copies with the same weights: the reference in float64 (the "exact" result),
the reference in float32 and the kernels in float32 (``backend="cuda"``), runs one training forward and
backward on the same (B, L, d_model) batch, and reports, relative to the largest float64 value:

- ``fwd_ref32`` / ``fwd_kernel``: max |y - y64| / max |y64| of the outputs;
- ``grad_ref32`` / ``grad_kernel``: the same for the gradient of every parameter (the worst one, named);
- ``first_call_s``: the kernels' first forward + backward (Triton compiles and autotunes there);
- ``ms_kernel`` / ``ms_ref32``: the median forward + backward after that, and their ratio.

Triton's float32 dot products default to TF32 (10 mantissa bits, ~5e-4 relative error per product) on
Ampere and later, where the reference's einsums follow ``torch.backends.cuda.matmul.allow_tf32`` (off by
default): the environment variable ``TRITON_F32_DEFAULT=ieee`` (read when Triton compiles) makes them full
float32, so running the script with and without it tells TF32 rounding from a wrong formula. Prints one
JSON line. Needs CUDA and mamba-ssm.

Usage:
    python examples/benchmarks/ssm_parity.py --out parity_tf32.json
    TRITON_CACHE_DIR=/tmp/triton_ieee TRITON_F32_DEFAULT=ieee python examples/benchmarks/ssm_parity.py --out parity_ieee.json
"""

from __future__ import annotations

import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import tyro
from report import emit, machine, wall_clock
from torch import nn

from wmenv.models.ssm import HAS_MAMBA_SSM, Mamba, Mamba2
from wmenv.models.ssm.kernels import IMPORT_ERROR


@dataclass
class Args:
    kinds: list[Literal["mamba", "mamba2"]] = field(default_factory=lambda: ["mamba2", "mamba"])
    """Block kinds to check."""
    reset_rates: list[float] = field(default_factory=lambda: [0.0, 0.05])
    """Probability that a step starts an episode (0: no resets passed at all)."""
    batch: int = 4
    """B."""
    length: int = 200
    """L."""
    d_model: int = 64
    """Block width (Mamba-2: headdim 32, kernel chunk 64, as in the parity test)."""
    repeats: int = 20
    """Timed forward + backward calls after the first."""
    seed: int = 0
    """Weights and data."""
    out: Path | None = None
    """Also write the JSON line here."""


def _block(kind: str, d_model: int, backend: str) -> nn.Module:
    if kind == "mamba":
        return Mamba(d_model=d_model, backend=backend)
    return Mamba2(d_model=d_model, headdim=32, chunk_size=64, backend=backend)


def _forward_backward(block: nn.Module, x: torch.Tensor, resets: torch.Tensor | None, w: torch.Tensor) -> tuple:
    """Outputs and every parameter's gradient of ``(block(x) * w).sum()``."""
    y = block(x, resets)
    grads = torch.autograd.grad((y * w).sum(), list(block.parameters()))
    return y, grads


def _relative(a: torch.Tensor, exact: torch.Tensor) -> float:
    return float((a.detach().double() - exact.detach()).abs().max() / exact.abs().max().clamp_min(1e-30))


def _seconds(block: nn.Module, x: torch.Tensor, resets: torch.Tensor | None, w: torch.Tensor) -> float:
    """Wall seconds of one forward + backward on the GPU."""
    now = wall_clock(x.device)
    start = now()
    _forward_backward(block, x, resets, w)
    return now() - start


def _timed_ms(block: nn.Module, x: torch.Tensor, resets: torch.Tensor | None, w: torch.Tensor, repeats: int) -> float:
    """Median ms of ``repeats`` forward + backward calls."""
    return 1e3 * statistics.median(_seconds(block, x, resets, w) for _ in range(repeats))


def check(kind: str, reset_rate: float, args: Args) -> dict:
    """One kind at one reset rate: errors of the float32 reference and of the kernels against float64."""
    torch.manual_seed(args.seed)
    ref64 = _block(kind, args.d_model, "ref").cuda().double()
    ref32 = _block(kind, args.d_model, "ref").cuda()
    kernel = _block(kind, args.d_model, "cuda").cuda()
    ref32.load_state_dict(ref64.state_dict())
    kernel.load_state_dict(ref64.state_dict())
    g = torch.Generator(device="cuda").manual_seed(args.seed + 1)
    x = torch.randn(args.batch, args.length, args.d_model, device="cuda", generator=g)
    w = torch.randn(args.batch, args.length, args.d_model, device="cuda", generator=g)
    resets = None
    if reset_rate > 0:
        resets = torch.rand(args.batch, args.length, device="cuda", generator=g) < reset_rate
    y64, g64 = _forward_backward(ref64, x.double(), resets, w.double())
    y32, g32 = _forward_backward(ref32, x, resets, w)
    now = wall_clock(x.device)
    start = now()
    yk, gk = _forward_backward(kernel, x, resets, w)  # Triton compiles and autotunes in the first call
    first = now() - start
    names = [name for name, _ in ref64.named_parameters()]
    grad_ref = {n: _relative(a, e) for n, a, e in zip(names, g32, g64)}
    grad_kernel = {n: _relative(a, e) for n, a, e in zip(names, gk, g64)}
    worst = max(grad_kernel, key=grad_kernel.get)
    ms_kernel = _timed_ms(kernel, x, resets, w, args.repeats)
    ms_ref = _timed_ms(ref32, x, resets, w, args.repeats)
    return {
        "kind": kind,
        "reset_rate": reset_rate,
        "fwd_ref32": _relative(y32, y64),
        "fwd_kernel": _relative(yk, y64),
        "grad_ref32_worst": max(grad_ref.values()),
        "grad_kernel_worst": grad_kernel[worst],
        "grad_kernel_worst_param": worst,
        "grad_kernel": grad_kernel,
        "first_call_s": first,
        "ms_kernel": ms_kernel,
        "ms_ref32": ms_ref,
        "kernel_speedup": ms_ref / ms_kernel,
    }


def main(args: Args) -> dict:
    if not torch.cuda.is_available():
        raise SystemExit("ssm_parity.py needs a CUDA device")
    if not HAS_MAMBA_SSM:
        raise SystemExit(f"ssm_parity.py needs mamba-ssm's kernels: {IMPORT_ERROR}")
    rows = []
    for kind in args.kinds:
        for rate in args.reset_rates:
            rows.append(check(kind, rate, args))
            print({k: v for k, v in rows[-1].items() if k != "grad_kernel"}, flush=True)
    summary = {
        "benchmark": "ssm_parity",
        "machine": machine(),
        "gpu": torch.cuda.get_device_name(),
        "TRITON_F32_DEFAULT": os.environ.get("TRITON_F32_DEFAULT"),
        "torch_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "shape": [args.batch, args.length, args.d_model],
        "rows": rows,
    }
    return emit(summary, args.out)


if __name__ == "__main__":
    main(tyro.cli(Args))
