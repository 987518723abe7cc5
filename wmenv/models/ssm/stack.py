"""A stack of Mamba-2 blocks as a sequence model: linear stem, pre-norm residual blocks, a final RMSNorm.

Glossary: B batch, T time, I input features, M ``d_model``.

DRAMA's dynamics (``papers/drama-mamba2-world-model.txt``; the authors' ``mamba_ssm`` mixer sequence) and the
multi-agent Mamba-2 RSSM (`wmenv.models.rssm_mamba2`) both run it:

    x_t  = SiLU(RMSNorm(Linear(input_t)))          the stem, M wide
    r_1  = x_t;  y_1 = Block_1(RMSNorm(r_1))
    r_l  = y_{l-1} + r_{l-1};  y_l = Block_l(RMSNorm(r_l))
    h_t  = RMSNorm(y_L + r_L)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from wmenv.checks import check_choice, check_int
from wmenv.models.ssm.kernels import Backend
from wmenv.models.ssm.mamba2_ref import Mamba2, Mamba2Config

__all__ = ["DynamicsConfig", "MambaDynamics", "RMSNorm", "SSMStates"]


@dataclass
class DynamicsConfig:
    """The sequence model over time of a multi-agent world model's deterministic state: the fields `RSSMConfig`
    (MAMBA) and `MABLConfig` share."""

    dynamics: Literal["gru", "mamba2"] = "gru"
    """``"gru"``: a GRU cell per agent, and the posterior reads its state with the observation (the papers' models);
    ``"mamba2"``: Mamba-2 blocks per agent (`MambaDynamics`) as wide as the deterministic state, and the posterior
    reads the observation alone, so windows train in parallel over time. The fields below are read only by
    ``"mamba2"``."""
    ssm_layers: int = 2
    """Pre-norm residual Mamba-2 blocks (DRAMA: 2)."""
    d_state: int = 16
    """Mamba-2 state size per head (DRAMA: 16)."""
    expand: int = 2
    """Mamba-2 inner width factor: ``expand · width`` channels."""
    headdim: int = 64
    """Mamba-2 channels per head (must divide ``expand · width``)."""
    backend: Backend = "auto"
    """Mamba-2: "ref" pure PyTorch, "cuda" mamba-ssm kernels, "auto" kernels for CUDA tensors where installed."""

    def mamba2_config(self, d_model: int) -> Mamba2Config:
        """The Mamba-2 blocks' config for a deterministic state ``d_model`` wide."""
        return Mamba2Config(d_model=d_model, d_state=self.d_state, expand=self.expand, headdim=self.headdim,
                            backend=self.backend)  # fmt: skip

    def _check_dynamics(self, owner: str, widths: dict[str, int]) -> None:
        """Check the fields (``owner``: the config's name in errors) and, with ``"mamba2"``, that each named width
        gives valid blocks."""
        check_choice(f"{owner}.dynamics", self.dynamics, ("gru", "mamba2"))
        check_choice(f"{owner}.backend", self.backend, ("auto", "ref", "cuda"))
        check_int(f"{owner}.ssm_layers", self.ssm_layers)
        if self.dynamics == "mamba2":
            for name, width in widths.items():
                try:
                    self.mamba2_config(width)  # checks d_state, expand, headdim against the width
                except ValueError as err:
                    raise ValueError(f"{owner}: the Mamba-2 dynamics of {name}={width}: {err}") from None


class RMSNorm(nn.Module):
    """x / rms(x) · w over the last dim (torch's own arrived in 2.4; the project supports 2.3)."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight, self.eps = nn.Parameter(torch.ones(dim)), eps

    def forward(self, x: Tensor) -> Tensor:
        """(..., dim) -> (..., dim)."""
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


SSMStates = list[tuple[Tensor, Tensor]]
"""One (conv_state, ssm_state) pair per Mamba-2 block."""


class MambaDynamics(nn.Module):
    """Stem on the inputs, pre-norm residual Mamba-2 blocks, a final RMSNorm (see the module docstring).

    `forward` runs whole windows (chunked SSD, or the mamba-ssm kernels on CUDA); `step` runs one token. Both give
    the same h to float rounding (`tests/models/test_drama.py`, `tests/models/test_rssm_mamba2.py`).

    Args:
        in_dim: I.
        layers: Mamba-2 blocks.
        mamba: the blocks' config; its ``d_model`` is M, the stem's and the output's width.
        eps: epsilon of the RMSNorms.
    """

    def __init__(self, in_dim: int, layers: int, mamba: Mamba2Config, eps: float = 1e-5) -> None:
        super().__init__()
        width = mamba.d_model
        self.stem = nn.Sequential(nn.Linear(in_dim, width), RMSNorm(width, eps), nn.SiLU())
        self.norms = nn.ModuleList(RMSNorm(width, eps) for _ in range(layers))
        self.blocks = nn.ModuleList(Mamba2(mamba) for _ in range(layers))
        self.norm_f = RMSNorm(width, eps)

    def initial_states(self, batch_size: int) -> SSMStates:
        """Zero states of every block for ``batch_size`` sequences."""
        return [block.initial_state(batch_size) for block in self.blocks]

    def state_shapes(self) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
        """Each block's (conv_state, ssm_state) shape after the batch dimension."""
        return [block.state_shapes() for block in self.blocks]

    def forward(self, x: Tensor, resets: Tensor | None = None, states: SSMStates | None = None) -> tuple[Tensor, SSMStates]:
        """x (B, T, I) -> h (B, T, M) and every block's state after the last row.

        ``resets`` (B, T) bool: the states entering row t are zeroed (an episode starts there).
        """
        hidden, residual, out = self.stem(x), None, []
        for i, (norm, block) in enumerate(zip(self.norms, self.blocks)):
            residual = hidden if residual is None else hidden + residual
            hidden, state = block(norm(residual), resets, None if states is None else states[i], return_state=True)
            out.append(state)
        return self.norm_f(hidden + residual), out

    def step(self, x: Tensor, states: SSMStates) -> tuple[Tensor, SSMStates]:
        """One token: x (B, I) -> h (B, M) and the new states (never updated in place).

        The blocks' unchecked step: their inputs are this stack's own (shapes fixed by construction), and a finite-value
        check would cost a sync per block and step and does not export to ONNX."""
        hidden, residual, out = self.stem(x), None, []
        for norm, block, state in zip(self.norms, self.blocks, states):
            residual = hidden if residual is None else hidden + residual
            hidden, state = block._step(norm(residual), state)
            out.append(state)
        return self.norm_f(hidden + residual), out
