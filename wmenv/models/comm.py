"""MAMBA's communication block: a transformer over the agents' (stochastic state, action) messages.

Glossary: B batch, N agents (message slots), M message width (S·K + A), E embedding width.

Each agent broadcasts (z_{t-1}, a_{t-1}); 3 stacked transformer encoder layers (dropout 0.1) turn the N
messages into N feature vectors e_t, one per agent, that update the agents' recurrent states. A learned
embedding per agent slot (the paper's positional encoding) tells homogeneous agents apart.

Who hears whom: by default every agent hears every message (one transformer pass per world). With a
``hears`` matrix each receiver runs the transformer over only the messages it receives (its own always
among them), the way a decentralized agent computes it at execution (MAMBA §3.3, Locality: attention
masked to neighbours); messages a receiver does not hear cannot reach it, not even through another
agent's layer outputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import Tensor, nn


class CommBlock(nn.Module):
    """(B, N, M) messages -> (B, N, E) features.

    Args:
        message_dim: M.
        width: E, the transformer width.
        n_agents: N, the number of agent slots (one position embedding each).
        layers: stacked encoder layers (the paper: 3).
        heads: attention heads (must divide E).
        dropout: dropout probability (the paper: 0.1).
    """

    def __init__(
        self, message_dim: int, width: int, n_agents: int, layers: int = 3, heads: int = 4, dropout: float = 0.1
    ) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"heads: expected a divisor of width={width}, got {heads}")
        self.embed = nn.Linear(message_dim, width)
        self.position = nn.Embedding(n_agents, width)
        layer = nn.TransformerEncoderLayer(
            width, heads, 2 * width, dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)

    def _encode(self, messages: Tensor, ignored: Tensor | None = None) -> Tensor:
        """messages (B, N, M), ignored (B, N) bool (messages left out of attention) -> (B, N, E)."""
        x = self.embed(messages) + self.position.weight[: messages.shape[1]]
        return self.norm(self.encoder(x, src_key_padding_mask=ignored))

    def forward(self, messages: Tensor, hears: Tensor | None = None) -> Tensor:
        """messages (B, N, M) -> features (B, N, E).

        ``hears`` (B, N, N) bool: [b, i, j] receiver i hears sender j (i always hears itself); None: all hear all.
        """
        if hears is None:
            return self._encode(messages)
        batch, n = messages.shape[:2]
        receivers = torch.arange(n, device=messages.device).repeat(batch)  # (B·N,)
        out = self.receive(repeat(messages, "b j m -> (b i) j m", i=n), rearrange(hears, "b i j -> (b i) j"), receivers)
        return rearrange(out, "(b i) e -> b i e", b=batch)

    def receive(self, messages: Tensor, heard: Tensor, receiver: Tensor) -> Tensor:
        """One receiver per row: messages (B, N, M) in sender slots, heard (B, N) bool, receiver (B,) slot -> (B, E).

        The transformer runs over the heard messages only (the receiver's own slot is always heard).
        """
        heard = heard.bool() | F.one_hot(receiver, messages.shape[1]).bool()
        out = self._encode(messages, ~heard)
        return out[torch.arange(len(receiver), device=out.device), receiver]
