"""The causal depthwise convolution: the same as nn.Conv1d without resets, the same as its step loop with them."""

import torch
from torch import nn

from wmenv.models.ssm.conv import causal_conv, conv_step


def test_matches_conv1d_as_mamba_ssm_uses_it():
    torch.manual_seed(0)
    conv = nn.Conv1d(6, 6, 4, groups=6, padding=3).double()
    x = torch.randn(2, 11, 6, dtype=torch.float64)
    y, state = causal_conv(x, conv.weight, conv.bias)
    expected = conv(x.transpose(1, 2))[..., :11].transpose(1, 2)
    torch.testing.assert_close(y, expected, atol=1e-12, rtol=0)
    torch.testing.assert_close(state, x[:, -4:].transpose(1, 2), atol=0, rtol=0)


def test_sequence_equals_step_loop_with_resets_and_state():
    torch.manual_seed(1)
    weight, bias = torch.randn(5, 1, 4, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    x = torch.randn(3, 13, 5, dtype=torch.float64)
    resets = torch.zeros(3, 13, dtype=torch.bool)
    resets[0, 0] = resets[1, 6] = resets[1, 7] = resets[2, 12] = True
    state0 = torch.randn(3, 5, 4, dtype=torch.float64)
    y, state = causal_conv(x, weight, bias, resets, state0)
    s, ys = state0, []
    for t in range(13):
        s = s * (~resets[:, t]).double()[:, None, None]
        y_t, s = conv_step(x[:, t], s, weight, bias)
        ys.append(y_t)
    torch.testing.assert_close(y, torch.stack(ys, 1), atol=1e-12, rtol=0)
    torch.testing.assert_close(state, s, atol=0, rtol=0)


def test_short_sequence_keeps_part_of_the_old_state():
    weight = torch.ones(2, 1, 4)
    state0 = torch.arange(8.0).reshape(1, 2, 4)
    _, state = causal_conv(torch.full((1, 1, 2), 9.0), weight, None, conv_state=state0)
    assert state.tolist() == [[[1.0, 2.0, 3.0, 9.0], [5.0, 6.0, 7.0, 9.0]]]
