"""The causal depthwise convolution in front of both Mamba blocks, with episode resets and carried state.

Glossary: B batch, L sequence length, D channels, W kernel width (``d_conv``).

The convolution state is the last W inputs, laid out ``(B, D, W)`` oldest first, as in
``mamba_ssm``'s inference cache. A step shifts it left and appends the new input; the output is the
state weighted by the kernel. Over a sequence, an episode start hides every earlier input from the
window, exactly as if the state had been zeroed before that step.
"""

from __future__ import annotations

import torch
from einops import rearrange


def window_taps(x: torch.Tensor, past: torch.Tensor, resets: torch.Tensor | None) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The inputs every step of a causal window of width W sees, hiding those before an episode start.

    Args:
        x: (B, L, D) inputs.
        past: (B, W-1, D) the W-1 inputs before the sequence, oldest first.
        resets: (B, L) 1 where an episode starts: inputs before it are not seen from there on.

    Returns:
        taps: W tensors (B, L, D); ``taps[k][:, t]`` is input ``t - (W-1-k)`` (zero where hidden).
        tail: (B, W, D) the last W inputs after the sequence (zero before its last episode start).
    """
    width, length = past.shape[1] + 1, x.shape[1]
    padded = torch.cat([past, x], dim=1)  # (B, W-1+L, D)
    taps = [padded[:, k : k + length] for k in range(width)]
    tail = padded[:, -width:]  # W-1+L >= W inputs are always there
    if resets is not None:
        # segment id of every padded position: the past is segment 0, each reset opens a new one
        seg = torch.cumsum(resets.to(torch.int64), dim=1)  # (B, L)
        seg_padded = torch.cat([seg.new_zeros(x.shape[0], width - 1), seg], dim=1)  # (B, W-1+L)
        taps = [tap * (seg_padded[:, k : k + length] == seg).unsqueeze(-1).to(x.dtype) for k, tap in enumerate(taps)]
        tail = tail * (seg_padded[:, -width:] == seg[:, -1:]).unsqueeze(-1).to(x.dtype)
    return taps, tail


def causal_conv(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    resets: torch.Tensor | None = None,
    conv_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Depthwise causal convolution of a sequence.

    Args:
        x: (B, L, D) inputs.
        weight: (D, 1, W) kernel, as ``nn.Conv1d(D, D, W, groups=D).weight``.
        bias: (D,) or ``None``.
        resets: (B, L) 1 where an episode starts: inputs before it are not seen from there on.
        conv_state: (B, D, W) the last W inputs before the sequence; zeros when ``None``.

    Returns:
        y: (B, L, D) outputs (before the activation); conv_state: (B, D, W) the last W inputs after it.
    """
    width = weight.shape[-1]
    if conv_state is None:
        past = x.new_zeros(x.shape[0], width - 1, x.shape[2])
    else:
        past = rearrange(conv_state[..., 1:], "b d w -> b w d")  # (B, W-1, D)
    taps, tail = window_taps(x, past, resets)
    kernel = rearrange(weight, "d 1 w -> w d")  # (W, D)
    y = x.new_zeros(x.shape) if bias is None else bias.expand_as(x)
    for tap, k in zip(taps, kernel):
        y = y + tap * k
    return y, rearrange(tail, "b w d -> b d w")


def conv_step(
    x: torch.Tensor, conv_state: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of `causal_conv`, written functionally (no in-place update) so it exports to ONNX.

    Args:
        x: (B, D) input.
        conv_state: (B, D, W) the last W inputs.
        weight: (D, 1, W) kernel.
        bias: (D,) or ``None``.

    Returns:
        y: (B, D) output (before the activation); conv_state: (B, D, W) shifted, ``x`` last.
    """
    conv_state = torch.cat([conv_state[..., 1:], x.unsqueeze(-1)], dim=-1)
    y = (conv_state * weight[:, 0]).sum(-1)
    return (y if bias is None else y + bias), conv_state
