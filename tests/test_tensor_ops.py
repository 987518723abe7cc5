"""Small tensor helpers: the hand-written softmax / log-softmax over few classes against torch's kernels."""

import pytest
import torch

from wmenv.tensor_ops import SMALL_CLASSES, log_softmax, softmax


@pytest.mark.parametrize("classes", [1, 2, 5, 8, SMALL_CLASSES, SMALL_CLASSES + 1, 32, 255])
def test_softmax_and_log_softmax_match_torch_with_gradients_and_masks(classes):
    """Values and gradients equal torch's (to rounding) for few and many classes, with -inf (masked) entries, large
    logits and a 5-dim batch; masked entries get probability 0, log-probability -inf and gradient 0."""
    g = torch.Generator().manual_seed(classes)
    x = torch.randn(4, 3, 2, 3, classes, generator=g) * 20
    mask = torch.rand(x.shape, generator=g) < 0.3
    mask[..., 0] = False  # every row keeps a choice
    x = x.masked_fill(mask, float("-inf"))
    weights = torch.randn(x.shape, generator=g)
    for ours, theirs in ((softmax, torch.softmax), (log_softmax, torch.log_softmax)):
        a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
        out, ref = ours(a), theirs(b, -1)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
        assert torch.equal(torch.isinf(out), torch.isinf(ref))
        kept = torch.isfinite(ref)  # the gradient of a weighted sum of the finite outputs
        (torch.where(kept, out, 0) * weights).sum().backward()
        (torch.where(kept, ref, 0) * weights).sum().backward()
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-5)
        assert (a.grad[mask] == 0).all()
    torch.testing.assert_close(softmax(x).sum(-1), torch.ones(x.shape[:-1]))


def test_few_classes_take_the_hand_written_ops_on_the_cpu():
    """Under `SMALL_CLASSES` classes the CPU path is the hand-written one (bitwise); above it, torch's kernel (bitwise)."""
    x = torch.randn(7, 5)
    s = x - x.amax(-1, keepdim=True)
    assert torch.equal(log_softmax(x), s - s.exp().sum(-1, keepdim=True).log())
    y = torch.randn(7, 40)
    assert torch.equal(log_softmax(y), torch.log_softmax(y, -1)) and torch.equal(softmax(y), torch.softmax(y, -1))
