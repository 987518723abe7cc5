"""wmenv.optim: fused Adam where torch has it, the same update as torch's looped Adam, state loading across both."""

import copy

import pytest
import torch

from wmenv.optim import adam, load_optimizer_state


def _net(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.LayerNorm(16), torch.nn.Linear(16, 3))


def _steps(net: torch.nn.Module, optimizer: torch.optim.Optimizer, n: int, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        x = torch.randn(32, 6, generator=g)
        optimizer.zero_grad(set_to_none=True)
        net(x).pow(2).mean().backward()
        optimizer.step()


def test_adam_fuses_on_this_torch_and_updates_as_the_looped_adam():
    fused_net, looped_net = _net(), _net()
    before = copy.deepcopy(fused_net.state_dict())
    fused = adam(fused_net.parameters(), lr=1e-2, eps=1e-5)
    looped = torch.optim.Adam(looped_net.parameters(), lr=1e-2, eps=1e-5, foreach=False)
    assert fused.defaults["fused"] is True  # torch >= 2.4 fuses Adam on the CPU (the CI's torch is 2.13)
    assert fused.defaults["eps"] == 1e-5 and fused.defaults["lr"] == 1e-2
    _steps(fused_net, fused, 5)
    _steps(looped_net, looped, 5)
    for (k, a), b in zip(fused_net.state_dict().items(), looped_net.state_dict().values(), strict=True):
        assert not torch.equal(a, before[k]), f"{k}: not vacuous, the steps moved it"
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=f"{k}: fused Adam != looped Adam")


def test_adam_takes_param_groups_and_an_explicit_implementation():
    net = _net()
    groups = [{"params": net[0].parameters(), "lr": 1e-3}, {"params": [*net[1].parameters(), *net[2].parameters()]}]
    opt = adam(groups, lr=5e-4)
    assert [g["lr"] for g in opt.param_groups] == [1e-3, 5e-4] and all(g["fused"] for g in opt.param_groups)
    assert not adam(_net().parameters(), lr=1e-3, fused=False).defaults["fused"]


def test_adam_falls_back_to_the_plain_one_where_torch_cannot_fuse(monkeypatch):
    real = torch.optim.Adam

    def no_fused(params, **kwargs):
        if kwargs.get("fused"):
            raise RuntimeError("`fused=True` requires all the params to be floating point Tensors of supported devices")
        return real(params, **kwargs)

    monkeypatch.setattr(torch.optim, "Adam", no_fused)
    net = _net()
    opt = adam(net.parameters(), lr=1e-3)
    assert isinstance(opt, real) and not opt.defaults["fused"]
    _steps(net, opt, 1)  # and it steps


def test_adam_falls_back_with_every_parameter_of_groups_given_as_generators(monkeypatch):
    """A torch that reads the groups' parameter generators before refusing ``fused`` leaves them empty for the retry
    unless `adam` holds them as lists."""
    real = torch.optim.Adam

    def reads_then_refuses(params, **kwargs):
        if kwargs.get("fused"):
            for group in params:
                list(group["params"])
            raise RuntimeError("`fused=True` requires all the params to be on supported devices")
        return real(params, **kwargs)

    monkeypatch.setattr(torch.optim, "Adam", reads_then_refuses)
    net = _net()
    opt = adam([{"params": net[0].parameters()}, {"params": net[2].parameters(), "lr": 1e-2}], lr=1e-3)
    assert [len(g["params"]) for g in opt.param_groups] == [2, 2] and [g["lr"] for g in opt.param_groups] == [1e-3, 1e-2]


@pytest.mark.parametrize("saved_fused", [True, False])
def test_loaded_state_keeps_this_optimizers_implementation_and_resumes_the_same_run(saved_fused):
    """A state saved by a fused optimizer loads into a looped one and back; the resumed steps are the unbroken run's."""
    net = _net()
    opt = adam(net.parameters(), lr=1e-2, fused=saved_fused)
    _steps(net, opt, 3)
    saved_net, saved_state = copy.deepcopy(net.state_dict()), copy.deepcopy(opt.state_dict())
    _steps(net, opt, 3, seed=2)  # the unbroken run

    resumed = _net(seed=7)
    resumed.load_state_dict(saved_net)
    other = adam(resumed.parameters(), lr=1e-2, fused=not saved_fused)
    load_optimizer_state(other, saved_state)
    assert other.param_groups[0]["fused"] is (not saved_fused), "the implementation is this optimizer's own"
    assert other.state_dict()["state"][0]["exp_avg"].equal(saved_state["state"][0]["exp_avg"])
    _steps(resumed, other, 3, seed=2)
    for (k, a), b in zip(net.state_dict().items(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=f"{k}: resumed across implementations")
