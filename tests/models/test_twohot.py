"""Symlog two-hot math: symlog / symexp, bins, two-hot weights by hand, decoding and the cross-entropy."""

import math

import pytest
import torch

from wmenv.models.twohot import SYMLOG_LIMIT, symexp, symlog, symlog_bins, twohot_decode, twohot_encode, twohot_loss

BINS = torch.tensor([-2.0, -1.0, 0.0, 0.5, 2.0], dtype=torch.float64)  # uneven on purpose


def test_symlog_and_symexp_by_hand_and_round_trip():
    """symlog(x) = sign(x) ln(1 + |x|), symexp its inverse, both odd; round trips over 17 orders of magnitude."""
    x = torch.tensor([-10.0, -1.0, 0.0, 1.0, math.e - 1, 10.0], dtype=torch.float64)
    expected = torch.tensor([-math.log(11), -math.log(2), 0.0, math.log(2), 1.0, math.log(11)], dtype=torch.float64)
    torch.testing.assert_close(symlog(x), expected)
    torch.testing.assert_close(symexp(expected), x)
    wide = torch.tensor([-1e8, -3.5, -1e-9, 0.0, 1e-9, 0.01, 7.0, 1e8], dtype=torch.float64)
    torch.testing.assert_close(symexp(symlog(wide)), wide, rtol=1e-12, atol=0)
    torch.testing.assert_close(symlog(symexp(wide[1:-1])), wide[1:-1], rtol=1e-12, atol=0)
    assert symlog(torch.tensor(-0.0)).item() == 0.0 and symexp(torch.tensor(0.0)).item() == 0.0


def test_symlog_bins_are_dreamerv3s():
    """255 bins evenly over symlog [-20, 20] with an exact 0 in the middle; float32 unless asked."""
    bins = symlog_bins(255)
    assert bins.shape == (255,) and bins.dtype == torch.float32 and SYMLOG_LIMIT == 20.0
    assert bins[0].item() == -20.0 and bins[-1].item() == 20.0 and bins[127].item() == 0.0
    torch.testing.assert_close(bins[1:] - bins[:-1], torch.full((254,), 40 / 254))
    assert symlog_bins(3, torch.float64).tolist() == [-20.0, 0.0, 20.0]
    assert symlog_bins(5, torch.float64).dtype == torch.float64
    exact = torch.linspace(-20, 20, 255, dtype=torch.float64)
    exact[127] = 0.0
    torch.testing.assert_close(symlog_bins(255, torch.float64), exact, rtol=0, atol=1e-12)  # spaced in float64


@pytest.mark.parametrize("bad", [2, 4, 1, 0, -3, 255.0, True, "255"])
def test_symlog_bins_rejects_bad_counts(bad):
    """An even, too small or non-integer count raises a ValueError naming num_bins."""
    with pytest.raises(ValueError, match=r"^num_bins: expected an odd integer >= 3 \(so that 0 is a bin\), got "):
        symlog_bins(bad)


def test_twohot_weights_by_hand():
    """On a bin: one-hot there; between bins: linear; beyond the ends: clipped to the end bins."""
    x = torch.tensor([-2.0, 0.0, 0.5, 2.0, -1.5, 0.2, 1.25, -7.0, 9.0], dtype=torch.float64)
    expected = torch.tensor(
        [
            [1, 0, 0, 0, 0],  # first edge
            [0, 0, 1, 0, 0],  # an interior bin
            [0, 0, 0, 1, 0],
            [0, 0, 0, 0, 1],  # last edge
            [0.5, 0.5, 0, 0, 0],  # halfway between -2 and -1
            [0, 0, 0.6, 0.4, 0],  # 0.2 = 0.6 · 0 + 0.4 · 0.5
            [0, 0, 0, 0.5, 0.5],  # 1.25 halfway between 0.5 and 2
            [1, 0, 0, 0, 0],  # below the bins
            [0, 0, 0, 0, 1],  # above the bins
        ],
        dtype=torch.float64,
    )
    w = twohot_encode(x, BINS)
    torch.testing.assert_close(w, expected)
    torch.testing.assert_close(w @ BINS, x.clamp(-2, 2))  # Σ w · bins = x inside the bins


def test_twohot_keeps_leading_shapes_and_the_bins_dtype():
    """(...) targets -> (..., K) weights in the bins' dtype, rows summing to 1."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 2, generator=g) * 3
    bins = symlog_bins(7)
    w = twohot_encode(x, bins)
    assert w.shape == (3, 4, 2, 7) and w.dtype == torch.float32 and (w >= 0).all()
    torch.testing.assert_close(w.sum(-1), torch.ones(3, 4, 2))
    assert ((w > 0).sum(-1) <= 2).all()


def test_results_follow_the_dtypes_of_the_bins_and_the_logits():
    """encode: the bins' dtype whatever the targets'; decode and loss: the logits' dtype whatever the bins'."""
    bins32 = BINS.float()
    w = twohot_encode(torch.tensor([0.2, -7.0], dtype=torch.float64), bins32)
    assert w.dtype == torch.float32
    torch.testing.assert_close(w[0], torch.tensor([0, 0, 0.6, 0.4, 0]))
    logits = torch.zeros(2, 5)
    assert twohot_decode(logits, BINS).dtype == torch.float32
    torch.testing.assert_close(twohot_decode(logits, BINS), torch.full((2,), -0.1))
    loss = twohot_loss(logits, torch.tensor([0.0, 1.25]), BINS)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, torch.full((2,), math.log(5)))


def test_decode_is_the_expected_bin_and_round_trips_the_encoding():
    """decode(logits) = Σ softmax · bins; decoding log two-hot weights gives the target back (inside the bins)."""
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.0], [1.0, 2.0, 3.0, 4.0, 5.0]], dtype=torch.float64)
    p = torch.softmax(logits[1], -1)
    torch.testing.assert_close(twohot_decode(logits, BINS), torch.stack([BINS.mean(), (p * BINS).sum()]))
    x = torch.tensor([-1.9, -0.3, 0.0, 0.45, 1.99], dtype=torch.float64)
    torch.testing.assert_close(twohot_decode(twohot_encode(x, BINS).log(), BINS), x)
    r = torch.tensor([-300.0, -5.0, -0.01, 0.0, 0.01, 10.0, 1e6])  # the reward head's round trip in env units
    bins = symlog_bins(255)
    torch.testing.assert_close(symexp(twohot_decode(twohot_encode(symlog(r), bins).log(), bins)), r, rtol=1e-4, atol=1e-6)


def test_loss_is_the_cross_entropy_against_the_two_hot_target():
    """loss = -Σ_k w_k log softmax_k: by hand for two bins, and against torch's soft-label cross-entropy."""
    logits = torch.tensor([0.0, math.log(3.0), 0.0, 0.0, 0.0], dtype=torch.float64)  # softmax: 1/7, 3/7, 1/7, 1/7, 1/7
    target = torch.tensor(-1.5, dtype=torch.float64)  # weights 1/2, 1/2 on the first two bins
    hand = -(0.5 * math.log(1 / 7) + 0.5 * math.log(3 / 7))
    assert twohot_loss(logits, target, BINS).item() == pytest.approx(hand, rel=1e-12)
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 3, 5, generator=g, dtype=torch.float64)
    target = torch.randn(4, 3, generator=g, dtype=torch.float64)
    ce = torch.nn.functional.cross_entropy(
        logits.permute(0, 2, 1), twohot_encode(target, BINS).permute(0, 2, 1), reduction="none"
    )
    torch.testing.assert_close(twohot_loss(logits, target, BINS), ce)


def test_bad_inputs_raise_value_errors_naming_the_argument():
    """Non-finite targets, bad bins and logits of another width are refused."""
    for bad in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(ValueError, match=r"^x: expected finite targets, got 1 non-finite value\(s\)$"):
            twohot_encode(torch.tensor([0.0, bad, 1.0]), BINS)
    torch.testing.assert_close(twohot_encode(torch.tensor([0.25]), torch.tensor([0.0, 1.0])), torch.tensor([[0.75, 0.25]]))
    with pytest.raises(ValueError, match=r"^bins: expected a 1-D tensor of at least 2 bin values, got shape \(1,\)$"):
        twohot_encode(torch.zeros(2), torch.zeros(1))
    with pytest.raises(ValueError, match=r"^bins: expected a 1-D tensor"):
        twohot_decode(torch.zeros(2, 4), torch.zeros(2, 2))
    for bins in ([0.0, 0.0, 1.0], [0.0, 2.0, 1.0]):  # a tie; out of order after the first bin
        with pytest.raises(ValueError, match=r"^bins: expected strictly increasing bin values$"):
            twohot_encode(torch.zeros(2), torch.tensor(bins))
    with pytest.raises(ValueError, match=r"^logits: expected a last dim of 5 \(one per bin\), got shape \(2, 4\)$"):
        twohot_decode(torch.zeros(2, 4), BINS)
