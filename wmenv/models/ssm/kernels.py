"""The one module that imports ``mamba_ssm``: its CUDA kernels behind guarded imports, and backend choice.

``mamba_ssm`` needs a CUDA build (nvcc) and cannot even be imported on a CPU-only install, so every
import of it is wrapped here, and the rest of the library asks `HAS_MAMBA_SSM` / `resolve_backend`.
What the kernels cannot do falls back to the pure-PyTorch reference, on the same device:

- Mamba-1 (``selective_scan_fn``) takes neither an initial state nor episode resets: sequences that
  carry either run the reference scan.
- Mamba-2 (``mamba_chunk_scan_combined``) takes both: resets become ``seq_idx`` (the running count
  of episode starts, so the initial state belongs to sequence 0 and is dropped after a reset).
"""

from __future__ import annotations

import warnings
from typing import Literal

import torch
from einops import rearrange

Backend = Literal["auto", "ref", "cuda"]

INSTALL_HINT = (
    'pip install "wmenv[cuda]" (mamba-ssm and causal-conv1d, built against your CUDA toolkit; needs nvcc and a CUDA GPU)'
)

try:  # importing any mamba_ssm submodule runs its package __init__, which loads the compiled kernels
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn as _selective_scan_fn
    from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined as _mamba_chunk_scan_combined

    HAS_MAMBA_SSM = True
    IMPORT_ERROR: str | None = None
except Exception as e:  # ImportError, or an OSError / RuntimeError from a broken CUDA build
    _selective_scan_fn = _mamba_chunk_scan_combined = None
    HAS_MAMBA_SSM = False
    IMPORT_ERROR = f"{type(e).__name__}: {e}"

_warned: set[str] = set()


def require_kernels(owner: str) -> None:
    """Raise `ImportError` naming ``owner`` and the install command when ``mamba_ssm`` is missing."""
    if not HAS_MAMBA_SSM:
        raise ImportError(f"{owner}: backend 'cuda' needs the mamba-ssm kernels ({IMPORT_ERROR}); install: {INSTALL_HINT}")


def resolve_backend(backend: Backend, device: torch.device, owner: str) -> Literal["ref", "cuda"]:
    """The path a sequence on ``device`` takes: ``"cuda"`` (kernels) or ``"ref"`` (pure PyTorch).

    ``"auto"`` takes the kernels for CUDA tensors when they are installed, and warns once (per owner)
    when a CUDA tensor has to use the reference because they are not.

    Raises:
        ImportError: ``backend="cuda"`` without mamba-ssm.
        ValueError: ``backend="cuda"`` for tensors that are not on a CUDA device.
    """
    if backend == "ref":
        return "ref"
    if backend == "cuda":
        require_kernels(owner)
        if device.type != "cuda":
            raise ValueError(f"{owner}: backend 'cuda' needs CUDA tensors, got tensors on {device}")
        return "cuda"
    if device.type != "cuda":
        return "ref"
    if HAS_MAMBA_SSM:
        return "cuda"
    if owner not in _warned:
        _warned.add(owner)
        warnings.warn(
            f"{owner}: mamba-ssm is not installed, CUDA tensors use the slower reference path ({INSTALL_HINT})", stacklevel=3
        )
    return "ref"


def selective_scan_cuda(
    u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, D: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mamba-1's selective scan by ``mamba_ssm.selective_scan_fn``, with `selective_scan_ref`'s signature.

    Args:
        u: (B, L, D); delta: (B, L, D) positive step sizes; A: (D, N); B, C: (B, L, N); D: (D,).

    Returns:
        y: (B, L, D); h_last: (B, D, N).
    """
    require_kernels("selective_scan_cuda")
    y, h_last = _selective_scan_fn(
        rearrange(u, "b l d -> b d l"),
        rearrange(delta, "b l d -> b d l"),
        A,
        rearrange(B, "b l n -> b n l"),
        rearrange(C, "b l n -> b n l"),
        D=D.float(),
        delta_softplus=False,
        return_last_state=True,
    )
    return rearrange(y, "b d l -> b l d"), h_last


def ssd_cuda(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor,
    chunk_size: int,
    resets: torch.Tensor | None = None,
    h0: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mamba-2's SSD by ``mamba_ssm.mamba_chunk_scan_combined``, with `ssd_chunked`'s signature."""
    require_kernels("ssd_cuda")
    seq_idx = None if resets is None else torch.cumsum(resets.to(torch.int32), dim=1, dtype=torch.int32)
    y, h_last = _mamba_chunk_scan_combined(
        x, dt, A, B, C, chunk_size, D=D, initial_states=h0, seq_idx=seq_idx, dt_softplus=False, return_final_states=True
    )
    return y, h_last
