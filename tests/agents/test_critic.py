"""ValueNorm: debiased running moments, exact inverse, identity when off; travels in the critic's state_dict."""

import pytest
import torch

from agents.critic import CentralCritic, CriticConfig, ValueNorm


def test_value_norm_tracks_moments_and_inverts():
    vn = ValueNorm(beta=0.99)
    g = torch.Generator().manual_seed(0)
    for _ in range(400):
        vn.update(torch.randn(256, generator=g, dtype=torch.float64) * 3.0 - 20.0)
    mean, var = vn.mean_var()
    assert abs(float(mean) + 20.0) < 0.1 and abs(float(var.sqrt()) - 3.0) < 0.1
    x = torch.randn(50, dtype=torch.float64)
    torch.testing.assert_close(vn.denormalize(vn.normalize(x)), x, rtol=1e-12, atol=1e-12)
    # debiasing: one update of a constant batch already gives its mean (not beta-shrunk toward 0)
    fresh = ValueNorm(beta=0.99999)
    fresh.update(torch.full((10,), 5.0))
    assert abs(float(fresh.mean_var()[0]) - 5.0) < 1e-6
    with pytest.raises(ValueError, match="x: expected at least one value target"):
        fresh.update(torch.zeros(0))


def test_value_norm_off_is_identity_and_state_is_saved():
    critic = CentralCritic(4, 2, CriticConfig(value_norm=False))
    x = torch.randn(7)
    critic.value_norm.update(x * 100)
    assert torch.equal(critic.value_norm.normalize(x), x) and torch.equal(critic.value_norm.denormalize(x), x)
    on = CentralCritic(4, 2)
    on.value_norm.update(torch.full((3,), 2.0))
    restored = CentralCritic(4, 2)
    restored.load_state_dict(on.state_dict())
    torch.testing.assert_close(restored.value_norm.mean_var(), on.value_norm.mean_var())
    assert "value_norm.running_mean" in on.state_dict()
