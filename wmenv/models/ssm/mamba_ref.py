"""Mamba-1 block (Gu & Dao 2023) in pure PyTorch, weight-compatible with ``mamba_ssm.Mamba``.

Glossary (one letter per dimension):
    B  batch, L  sequence length
    D  ``d_model`` (input / output width), E  ``d_inner = expand * d_model``
    N  ``d_state``, R  ``dt_rank``, W  ``d_conv``

Per token: ``in_proj`` -> (x, z); x -> causal depthwise conv -> SiLU; ``x_proj`` -> (dt, B, C);
``delta = softplus(dt_proj(dt))``; selective SSM ``h = exp(delta A) h + delta B x``,
``y = C h + D x``; ``y * SiLU(z)`` -> ``out_proj``. Parameter names and shapes are those of
``mamba_ssm.Mamba``, so ``load_state_dict`` works across the two.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from einops import repeat
from torch import nn

from wmenv.checks import check_choice, check_int
from wmenv.models.ssm.block import SSMBlock, SSMState, build_config, dt_bias_init
from wmenv.models.ssm.conv import causal_conv, conv_step
from wmenv.models.ssm.kernels import Backend, resolve_backend, selective_scan_cuda
from wmenv.models.ssm.scan import COMPILE_CHUNK, SCAN_BLOCK, ScanImpl, resolve_scan, selective_scan
from wmenv.tensor_ops import compiled


@dataclass
class MambaConfig:
    """A Mamba-1 block; defaults are ``mamba_ssm.Mamba``'s."""

    d_model: int = 64
    """D: input and output width."""
    d_state: int = 16
    """N: SSM state size per channel."""
    d_conv: int = 4
    """W: width of the causal depthwise convolution."""
    expand: int = 2
    """E / D: inner width factor."""
    dt_rank: int | Literal["auto"] = "auto"
    """R: rank of the step-size projection; ``"auto"`` is ceil(D / 16)."""
    dt_min: float = 0.001
    """Smallest initial step size."""
    dt_max: float = 0.1
    """Largest initial step size."""
    dt_init: Literal["random", "constant"] = "random"
    """Init of ``dt_proj.weight``: uniform in +-std or constant std, std = R^-0.5 * dt_scale."""
    dt_scale: float = 1.0
    """Scale of ``dt_proj.weight``'s init."""
    dt_init_floor: float = 1e-4
    """Floor of the initial step sizes."""
    conv_bias: bool = True
    """Bias in the convolution."""
    bias: bool = False
    """Biases in ``in_proj`` and ``out_proj``."""
    backend: Backend = "auto"
    """"ref": pure PyTorch; "cuda": mamba-ssm kernels (error if missing); "auto": kernels for CUDA tensors if installed."""
    scan: ScanImpl = "auto"
    """How the pure-PyTorch path runs a sequence: "blocked" (least memory), "loop", "compiled" (fastest on CPU,
    seconds to compile per shape: sequences of up to `COMPILE_CHUNK` steps compile the whole block, longer ones
    the scan in pieces) or "auto" (on the CPU compiled for large batches, else the loop); see `resolve_scan`."""
    scan_block: int = SCAN_BLOCK
    """Steps the blocked scan solves at once (speed / memory trade-off, not the result)."""
    d_inner: int = field(init=False)
    """E = expand * d_model (derived)."""
    rank: int = field(init=False)
    """R as an integer (derived)."""

    def __post_init__(self) -> None:
        for name in ("d_model", "d_state", "d_conv", "expand", "scan_block"):
            check_int(f"MambaConfig.{name}", getattr(self, name))
        check_choice("MambaConfig.backend", self.backend, ("auto", "ref", "cuda"))
        check_choice("MambaConfig.scan", self.scan, get_args(ScanImpl))
        check_choice("MambaConfig.dt_init", self.dt_init, ("random", "constant"))
        if not 0 < self.dt_min <= self.dt_max:
            raise ValueError(f"MambaConfig.dt_min, dt_max: expected 0 < dt_min <= dt_max, got {self.dt_min}, {self.dt_max}")
        self.d_inner = self.expand * self.d_model
        self.rank = math.ceil(self.d_model / 16) if self.dt_rank == "auto" else check_int("MambaConfig.dt_rank", self.dt_rank)


class Mamba(SSMBlock):
    """Mamba-1 block: ``forward`` over sequences (blocked parallel scan or kernels), ``step`` per token."""

    def __init__(self, config: MambaConfig | None = None, **overrides: object) -> None:
        """Build from ``config`` (default `MambaConfig`), with fields overridden by keyword."""
        super().__init__()
        cfg = build_config(MambaConfig, config, overrides)
        self.config, self.d_model = cfg, cfg.d_model
        E, N, R = cfg.d_inner, cfg.d_state, cfg.rank
        self.in_proj = nn.Linear(cfg.d_model, 2 * E, bias=cfg.bias)
        self.conv1d = nn.Conv1d(E, E, cfg.d_conv, groups=E, padding=cfg.d_conv - 1, bias=cfg.conv_bias)
        self.x_proj = nn.Linear(E, R + 2 * N, bias=False)
        self.dt_proj = nn.Linear(R, E, bias=True)
        self.A_log = nn.Parameter(torch.log(repeat(torch.arange(1, N + 1, dtype=torch.float32), "n -> e n", e=E).contiguous()))
        self.D = nn.Parameter(torch.ones(E))
        self.out_proj = nn.Linear(E, cfg.d_model, bias=cfg.bias)
        std = R**-0.5 * cfg.dt_scale
        with torch.no_grad():
            if cfg.dt_init == "constant":
                self.dt_proj.weight.fill_(std)
            else:
                self.dt_proj.weight.uniform_(-std, std)
            self.dt_proj.bias.copy_(dt_bias_init(E, cfg.dt_min, cfg.dt_max, cfg.dt_init_floor))

    def state_shapes(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """``conv_state`` (E, W) and ``ssm_state`` (E, N), as ``mamba_ssm``'s inference cache."""
        return (self.config.d_inner, self.config.d_conv), (self.config.d_inner, self.config.d_state)

    def _ssm_inputs(self, xc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """delta (..., E), B (..., N), C (..., N), A (E, N) from the convolved input xc (..., E)."""
        N = self.config.d_state
        dt, B, C = self.x_proj(xc).split([self.config.rank, N, N], dim=-1)
        return F.softplus(self.dt_proj(dt)), B, C, -torch.exp(self.A_log)

    def _core(
        self, x: torch.Tensor, resets: torch.Tensor | None, state: SSMState | None
    ) -> tuple[torch.Tensor, torch.Tensor, SSMState]:
        """SSM output ``C h + D x`` (B, L, E), the gate input z (B, L, E) and the final state, from x (B, L, D)."""
        if resolve_backend(self.config.backend, x.device, "Mamba") == "cuda" and resets is None and state is None:
            return self._core_ref(x, None, None, "cuda")  # the kernel takes neither resets nor an initial state
        E, N = self.config.d_inner, self.config.d_state
        impl = resolve_scan(self.config.scan, x.shape[0] * x.shape[1] * E * N, x.device)
        if impl == "compiled" and x.shape[1] <= COMPILE_CHUNK:
            # rows are independent: groups whose (rows, E, N) states fit in a core's cache run 1.8x faster at B = 1600
            rows = max(1, COMPILE_GROUP_BYTES // (E * N * x.element_size()))
            if x.shape[0] <= rows:
                return _compiled_core()(self, x, resets, state)
            groups = [
                _compiled_core()(
                    self, xg, None if resets is None else resets[i : i + rows],
                    None if state is None else (state[0][i : i + rows], state[1][i : i + rows]),
                )
                for i, xg in zip(range(0, x.shape[0], rows), x.split(rows))
            ]  # fmt: skip
            y, z, conv, ssm = (torch.cat(parts) for parts in zip(*((g[0], g[1], *g[2]) for g in groups)))
            return y, z, (conv, ssm)
        return self._core_ref(x, resets, state, impl)

    def _core_ref(
        self, x: torch.Tensor, resets: torch.Tensor | None, state: SSMState | None, impl: str
    ) -> tuple[torch.Tensor, torch.Tensor, SSMState]:
        """`_core` with the scan ``impl`` ("cuda": the mamba-ssm kernel, or a `selective_scan` formulation)."""
        xs, z = self.in_proj(x).chunk(2, dim=-1)  # (B, L, E) each
        conv0, ssm0 = (None, None) if state is None else state
        xc, conv_state = causal_conv(xs, self.conv1d.weight, self.conv1d.bias, resets, conv0)
        xc = F.silu(xc)
        delta, B, C, A = self._ssm_inputs(xc)
        if impl == "cuda":
            y, ssm_state = selective_scan_cuda(xc, delta, A, B, C, self.D)
        else:
            y, ssm_state = selective_scan(xc, delta, A, B, C, self.D, resets, ssm0, impl, self.config.scan_block)
        return y, z, (conv_state, ssm_state)

    def _forward(self, x: torch.Tensor, resets: torch.Tensor | None, state: SSMState | None) -> tuple[torch.Tensor, SSMState]:
        """y (B, L, D) and the final state, from x (B, L, D)."""
        y, z, state = self._core(x, resets, state)
        return self.out_proj(y * F.silu(z)), state

    def forward_features(
        self, x: torch.Tensor, resets: torch.Tensor | None = None, state: SSMState | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, SSMState]:
        """`forward` that also returns the SSM's own output, before the gate and ``out_proj``.

        Args:
            x: (B, L, D); resets: (B, L); state: as in `forward`.

        Returns:
            y: (B, L, D) the block's output; ssm_out: (B, L, E) ``C h_t + D x_t`` per step; the final state.
        """
        y, z, state = self._core(x, resets, self.check_sequence(x, resets, state))
        return self.out_proj(y * F.silu(z)), y, state

    def _step(self, x: torch.Tensor, state: SSMState) -> tuple[torch.Tensor, SSMState]:
        """y (B, D) and the new state, from x (B, D)."""
        conv_state, ssm_state = state
        xs, z = self.in_proj(x).chunk(2, dim=-1)  # (B, E) each
        xc, conv_state = conv_step(xs, conv_state, self.conv1d.weight, self.conv1d.bias)
        xc = F.silu(xc)
        delta, B, C, A = self._ssm_inputs(xc)
        decay = torch.exp(delta.unsqueeze(-1) * A)  # (B, E, N)
        ssm_state = ssm_state * decay + (delta * xc).unsqueeze(-1) * B.unsqueeze(1)
        y = (ssm_state @ C.unsqueeze(-1)).squeeze(-1) + self.D * xc  # (B, E)
        return self.out_proj(y * F.silu(z)), (conv_state, ssm_state)


def _core_loop(
    block: Mamba, x: torch.Tensor, resets: torch.Tensor | None, state: SSMState | None
) -> tuple[torch.Tensor, torch.Tensor, SSMState]:
    return block._core_ref(x, resets, state, "loop")


COMPILE_GROUP_BYTES = 1 << 21
"""The compiled block runs a batch in groups of rows whose SSM state, (rows, E, N) floats, is at most this big."""


@functools.cache
def _compiled_core() -> Callable:
    """`Mamba._core` of a short sequence through `torch.compile`, whole: the projections, the convolution and
    the step loop fuse (2x the compiled scan alone at MAPPO's training shapes). One function for every block,
    which it takes as an argument, so a copied block never runs another's weights."""
    return compiled(_core_loop)
