"""Mamba-2 block (Dao & Gu 2024, SSD) in pure PyTorch, weight-compatible with ``mamba_ssm.Mamba2``.

Glossary (one letter per dimension):
    B  batch, L  sequence length
    D  ``d_model``, E  ``d_inner = expand * d_model``
    H  heads (E / P), P  ``headdim``, G  ``ngroups``, N  ``d_state``, W  ``d_conv``

Per token: ``in_proj`` -> (z, xBC, dt) with widths (E, E + 2GN, H); xBC -> causal depthwise conv ->
SiLU -> (x, B, C); ``dt = softplus(dt + dt_bias)``; per head a scalar decay ``exp(dt A)``:
``h = exp(dt A) h + dt x B^T``, ``y = h C + D x``; gated RMSNorm ``rmsnorm(y * SiLU(z)) * w``
(per group of E / G channels); ``out_proj``. Parameter names and shapes are those of
``mamba_ssm.Mamba2`` (with ``d_ssm = d_inner``), so ``load_state_dict`` works across the two.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn

from wmenv.checks import check_choice, check_int
from wmenv.models.ssm.block import SSMBlock, SSMState, build_config, dt_bias_init
from wmenv.models.ssm.conv import causal_conv, conv_step
from wmenv.models.ssm.kernels import Backend, resolve_backend, ssd_cuda
from wmenv.models.ssm.ssd import ssd_chunked


@dataclass
class Mamba2Config:
    """A Mamba-2 block; defaults are ``mamba_ssm.Mamba2``'s except ``d_model``."""

    d_model: int = 64
    """D: input and output width."""
    d_state: int = 128
    """N: SSM state size per head."""
    d_conv: int = 4
    """W: width of the causal depthwise convolution."""
    expand: int = 2
    """E / D: inner width factor."""
    headdim: int = 64
    """P: channels per head (E must be a multiple)."""
    ngroups: int = 1
    """G: groups of B / C shared by heads (H must be a multiple)."""
    A_init_range: tuple[float, float] = (1.0, 16.0)
    """-A per head is drawn uniformly from this range."""
    D_has_hdim: bool = False
    """Skip connection D per channel (E,) instead of per head (H,)."""
    rmsnorm: bool = True
    """Gated RMSNorm on the output; otherwise the plain gate y * SiLU(z)."""
    norm_before_gate: bool = False
    """Normalize before gating (mamba_ssm's default is after)."""
    norm_eps: float = 1e-5
    """Epsilon of the RMSNorm."""
    dt_min: float = 0.001
    """Smallest initial step size."""
    dt_max: float = 0.1
    """Largest initial step size."""
    dt_init_floor: float = 1e-4
    """Floor of the initial step sizes."""
    conv_bias: bool = True
    """Bias in the convolution."""
    bias: bool = False
    """Biases in ``in_proj`` and ``out_proj``."""
    chunk_size: int = 256
    """Q: chunk length of the mamba-ssm SSD kernel."""
    ref_chunk_size: int = 64
    """Q of the pure-PyTorch SSD: its cost grows with Q^2 per chunk, so CPUs want it short (result-invariant)."""
    backend: Backend = "auto"
    """"ref": pure PyTorch; "cuda": mamba-ssm kernels (error if missing); "auto": kernels for CUDA tensors if installed."""
    d_inner: int = field(init=False)
    """E = expand * d_model (derived)."""
    nheads: int = field(init=False)
    """H = E / P (derived)."""

    def __post_init__(self) -> None:
        for name in ("d_model", "d_state", "d_conv", "expand", "headdim", "ngroups", "chunk_size", "ref_chunk_size"):
            check_int(f"Mamba2Config.{name}", getattr(self, name))
        check_choice("Mamba2Config.backend", self.backend, ("auto", "ref", "cuda"))
        self.d_inner = self.expand * self.d_model
        if self.d_inner % self.headdim:
            raise ValueError(f"Mamba2Config.headdim: expected a divisor of d_inner={self.d_inner}, got {self.headdim}")
        self.nheads = self.d_inner // self.headdim
        if self.nheads % self.ngroups:
            raise ValueError(f"Mamba2Config.ngroups: expected a divisor of nheads={self.nheads}, got {self.ngroups}")
        lo, hi = self.A_init_range
        if not 0 < lo <= hi:
            raise ValueError(f"Mamba2Config.A_init_range: expected 0 < low <= high, got {self.A_init_range}")
        if not 0 < self.dt_min <= self.dt_max:
            raise ValueError(f"Mamba2Config.dt_min, dt_max: expected 0 < dt_min <= dt_max, got {self.dt_min}, {self.dt_max}")


class RMSNormGated(nn.Module):
    """``rmsnorm(x * SiLU(z)) * weight`` over groups of channels, as ``mamba_ssm``'s ``RMSNormGated``."""

    def __init__(self, dim: int, group_size: int, eps: float = 1e-5, norm_before_gate: bool = False) -> None:
        """Norm over ``dim`` channels in groups of ``group_size``."""
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.group_size, self.eps, self.norm_before_gate = group_size, eps, norm_before_gate

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        g = rearrange(x, "... (g s) -> ... g s", s=self.group_size)
        g = g * torch.rsqrt(g.pow(2).mean(-1, keepdim=True) + self.eps)
        return rearrange(g, "... g s -> ... (g s)")

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """x, z: (..., E) -> (..., E)."""
        if self.norm_before_gate:
            return self._norm(x) * self.weight * F.silu(z)
        return self._norm(x * F.silu(z)) * self.weight


class Mamba2(SSMBlock):
    """Mamba-2 block: ``forward`` over sequences (chunked SSD or kernels), ``step`` per token."""

    def __init__(self, config: Mamba2Config | None = None, **overrides: object) -> None:
        """Build from ``config`` (default `Mamba2Config`), with fields overridden by keyword."""
        super().__init__()
        cfg = build_config(Mamba2Config, config, overrides)
        self.config, self.d_model = cfg, cfg.d_model
        E, H, G, N = cfg.d_inner, cfg.nheads, cfg.ngroups, cfg.d_state
        conv_dim = E + 2 * G * N
        self.in_proj = nn.Linear(cfg.d_model, 2 * E + 2 * G * N + H, bias=cfg.bias)
        self.conv1d = nn.Conv1d(conv_dim, conv_dim, cfg.d_conv, groups=conv_dim, padding=cfg.d_conv - 1, bias=cfg.conv_bias)
        self.dt_bias = nn.Parameter(dt_bias_init(H, cfg.dt_min, cfg.dt_max, cfg.dt_init_floor))
        self.A_log = nn.Parameter(torch.log(torch.empty(H).uniform_(*cfg.A_init_range)))
        self.D = nn.Parameter(torch.ones(E if cfg.D_has_hdim else H))
        if cfg.rmsnorm:
            self.norm = RMSNormGated(E, E // G, cfg.norm_eps, cfg.norm_before_gate)
        self.out_proj = nn.Linear(E, cfg.d_model, bias=cfg.bias)

    def state_shapes(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """``conv_state`` (E + 2GN, W) and ``ssm_state`` (H, P, N), as ``mamba_ssm``'s inference cache."""
        c = self.config
        return (c.d_inner + 2 * c.ngroups * c.d_state, c.d_conv), (c.nheads, c.headdim, c.d_state)

    def _split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """z (..., E), xBC (..., E + 2GN), dt (..., H) from x (..., D)."""
        c = self.config
        return self.in_proj(x).split([c.d_inner, c.d_inner + 2 * c.ngroups * c.d_state, c.nheads], dim=-1)

    def _ssm_inputs(self, xBC: torch.Tensor, dt: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """x (..., H, P), B and C (..., G, N), dt (..., H) positive, D (H,) or (H, P), from the activated xBC."""
        c = self.config
        x, B, C = xBC.split([c.d_inner, c.ngroups * c.d_state, c.ngroups * c.d_state], dim=-1)
        x = rearrange(x, "... (h p) -> ... h p", p=c.headdim)
        B, C = (rearrange(t, "... (g n) -> ... g n", n=c.d_state) for t in (B, C))
        D = rearrange(self.D, "(h p) -> h p", p=c.headdim) if c.D_has_hdim else self.D
        return x, B, C, F.softplus(dt + self.dt_bias), D

    def _output(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """out_proj(gate / norm(y, z)): y (..., H, P), z (..., E) -> (..., D)."""
        y = rearrange(y, "... h p -> ... (h p)")
        y = self.norm(y, z) if self.config.rmsnorm else y * F.silu(z)
        return self.out_proj(y)

    def _forward(self, x: torch.Tensor, resets: torch.Tensor | None, state: SSMState | None) -> tuple[torch.Tensor, SSMState]:
        """y (B, L, D) and the final state, from x (B, L, D)."""
        z, xBC, dt = self._split(x)
        conv0, ssm0 = (None, None) if state is None else state
        xBC, conv_state = causal_conv(xBC, self.conv1d.weight, self.conv1d.bias, resets, conv0)
        xs, B, C, dt, D = self._ssm_inputs(F.silu(xBC), dt)
        A = -torch.exp(self.A_log)
        if resolve_backend(self.config.backend, x.device, "Mamba2") == "cuda":
            y, ssm_state = ssd_cuda(xs, dt, A, B, C, D, self.config.chunk_size, resets, ssm0)
        else:
            y, ssm_state = ssd_chunked(xs, dt, A, B, C, D, self.config.ref_chunk_size, resets, ssm0)
        return self._output(y, z), (conv_state, ssm_state)

    def _step(self, x: torch.Tensor, state: SSMState) -> tuple[torch.Tensor, SSMState]:
        """y (B, D) and the new state, from x (B, D)."""
        conv_state, ssm_state = state
        z, xBC, dt = self._split(x)
        xBC, conv_state = conv_step(xBC, conv_state, self.conv1d.weight, self.conv1d.bias)
        xs, B, C, dt, D = self._ssm_inputs(F.silu(xBC), dt)  # xs (B, H, P), B / C (B, G, N), dt (B, H)
        heads = self.config.nheads // self.config.ngroups
        B, C = (repeat(t, "b g n -> b (g r) n", r=heads) for t in (B, C))  # (B, H, N)
        decay = torch.exp(dt * -torch.exp(self.A_log))  # (B, H)
        # decay · h + (dt x) B^T in two passes over the (B, H, P, N) state (the state dominates a step's memory traffic)
        ssm_state = torch.addcmul(ssm_state * decay[..., None, None], (xs * dt.unsqueeze(-1)).unsqueeze(-1), B.unsqueeze(2))
        y = (ssm_state @ C.unsqueeze(-1)).squeeze(-1) + xs * (D.unsqueeze(-1) if D.dim() == 1 else D)
        return self._output(y, z), (conv_state, ssm_state)
