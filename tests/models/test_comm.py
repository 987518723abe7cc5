"""Communication block: a pre-norm GELU transformer over the agents' messages, with one position embedding per slot."""

import warnings

import pytest
import torch
import torch.nn.functional as F

from wmenv.models.comm import CommBlock


def attention(attn: torch.nn.MultiheadAttention, x: torch.Tensor, heads: int) -> torch.Tensor:
    """Multi-head self-attention over the agents (dim 1) of x (B, N, E), written out."""
    b, n, e = x.shape
    q, k, v = F.linear(x, attn.in_proj_weight, attn.in_proj_bias).chunk(3, -1)
    split = lambda t: t.reshape(b, n, heads, e // heads).transpose(1, 2)  # noqa: E731 (B, heads, N, P)
    weights = torch.softmax(split(q) @ split(k).transpose(-1, -2) / (e // heads) ** 0.5, -1)
    return attn.out_proj((weights @ split(v)).transpose(1, 2).reshape(b, n, e))


def reference(block: CommBlock, messages: torch.Tensor, heads: int) -> torch.Tensor:
    """The block by hand: embed + position, per layer x += attn(LN(x)); x += W2 gelu(W1 LN(x)), then a final LN."""
    x = block.embed(messages) + block.position.weight[: messages.shape[1]]
    for layer in block.encoder.layers:
        x = x + attention(layer.self_attn, layer.norm1(x), heads)
        x = x + layer.linear2(F.gelu(layer.linear1(layer.norm2(x))))
    return block.norm(x)


def test_forward_equals_a_hand_written_pre_norm_transformer():
    """Eval-mode output = a hand-written pre-norm GELU transformer (2 layers, 2 heads, FF width 2E) over a world's agents."""
    torch.manual_seed(0)
    block = CommBlock(message_dim=5, width=6, n_agents=4, layers=2, heads=2, dropout=0.3).eval()
    messages = torch.randn(3, 4, 5)
    torch.testing.assert_close(block(messages), reference(block, messages, heads=2))
    assert len(block.encoder.layers) == 2
    layer = block.encoder.layers[0]
    assert layer.linear1.weight.shape == (12, 6) and layer.self_attn.num_heads == 2 and layer.dropout.p == 0.3


def test_fewer_agents_than_slots_use_the_first_position_embeddings():
    """N=2 messages into a block of 4 slots take positions 0 and 1; different slots tell equal messages apart."""
    torch.manual_seed(0)
    block = CommBlock(message_dim=3, width=4, n_agents=4, layers=1, heads=2, dropout=0.0).eval()
    same = torch.ones(1, 2, 3)
    out = block(same)
    torch.testing.assert_close(out, reference(block, same, heads=2))
    assert not torch.allclose(out[0, 0], out[0, 1])


def test_worlds_do_not_talk_to_each_other():
    """Changing world 1's messages leaves world 0's features unchanged; changing agent 1 changes agent 0's."""
    torch.manual_seed(0)
    block = CommBlock(5, 6, 3, layers=1, heads=3, dropout=0.0).eval()
    messages = torch.randn(2, 3, 5)
    other = messages.clone()
    other[1] += 1
    torch.testing.assert_close(block(other)[0], block(messages)[0])
    other[0, 1] += 1
    assert not torch.allclose(block(other)[0, 0], block(messages)[0, 0])


def test_defaults_are_the_papers():
    """CommBlock(M, E, N): 3 layers, 4 heads, dropout 0.1, built without warnings."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        block = CommBlock(3, 8, 2)
    layer = block.encoder.layers[0]
    assert len(block.encoder.layers) == 3 and layer.self_attn.num_heads == 4 and layer.dropout.p == 0.1
    assert block.embed.in_features == 3 and block.position.weight.shape == (2, 8) and block.norm.normalized_shape == (8,)


def test_heads_must_divide_the_width():
    """heads that do not divide the width raise a ValueError naming heads."""
    with pytest.raises(ValueError, match=r"^heads: expected a divisor of width=6, got 4$"):
        CommBlock(3, 6, 2, heads=4)


def test_one_receiver_per_row_equals_its_row_of_the_per_receiver_forward():
    """receive(messages, heard, receiver) = forward(messages, hears)[b, receiver] for any receiver slot (not only the last)."""
    torch.manual_seed(0)
    block = CommBlock(5, 6, 3, layers=2, heads=2, dropout=0.0).eval()
    messages, hears = torch.randn(2, 3, 5), torch.tensor([[[1, 0, 1], [1, 1, 0], [0, 0, 1]]] * 2, dtype=torch.bool)
    full = block(messages, hears)
    receiver = torch.tensor([0, 1])  # slot 2 never asked: the one-hot width must come from the message count
    got = block.receive(messages, hears[torch.arange(2), receiver], receiver)
    torch.testing.assert_close(got, full[torch.arange(2), receiver])
