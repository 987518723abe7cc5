"""MAMBA's communication block: a transformer over the agents' (stochastic state, action) messages.

Glossary: B batch, N agents, M message width (S·K + A), E embedding width.

Each agent broadcasts (z_{t-1}, a_{t-1}); 3 stacked transformer encoder layers (dropout 0.1) turn the N
messages into N feature vectors e_t, one per agent, that update the agents' recurrent states. A learned
embedding per agent slot (the paper's positional encoding) tells homogeneous agents apart.
"""

from __future__ import annotations

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

    def forward(self, messages: Tensor) -> Tensor:
        """messages (B, N, M) -> features (B, N, E)."""
        x = self.embed(messages) + self.position.weight[: messages.shape[1]]
        return self.norm(self.encoder(x))
