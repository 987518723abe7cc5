"""Mamba and Mamba2 blocks: sequence forward == step loop (with resets), mamba_ssm layout, clear errors."""

import copy
import warnings

import pytest
import torch

from wmenv.models.ssm import Mamba, Mamba2, Mamba2Config, MambaConfig

TOL = {torch.float64: 1e-10, torch.float32: 1e-5}
SMALL = {
    "mamba": lambda: Mamba(d_model=16, d_state=4, scan_block=8),  # "auto" picks the loop at these sizes
    "mamba_blocked": lambda: Mamba(d_model=16, d_state=4, scan="blocked", scan_block=8),
    "mamba2": lambda: Mamba2(d_model=16, d_state=8, headdim=8, ngroups=2, ref_chunk_size=8),
    "mamba2_d_hdim_no_norm": lambda: Mamba2(
        d_model=16, d_state=8, headdim=4, ref_chunk_size=16, D_has_hdim=True, rmsnorm=False
    ),
}


def _block(kind, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    block = SMALL[kind]().to(dtype)
    with torch.no_grad():  # D = 1 and zero biases at init hide mistakes: perturb everything
        for p in block.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return block


def _episode_data(batch=3, length=27, d=16, dtype=torch.float64):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, length, d, generator=g, dtype=dtype)
    resets = torch.rand(batch, length, generator=g) < 0.1
    resets[0, 0] = resets[1, 9] = resets[1, 10] = resets[2, length - 1] = True
    return x, resets


def _step_loop(block, x, resets, state):
    ys = []
    for t in range(x.shape[1]):
        keep = (~resets[:, t]).to(x.dtype)
        state = tuple(s * keep.view(-1, *[1] * (s.dim() - 1)) for s in state)
        y, state = block.step(x[:, t], state)
        ys.append(y)
    return torch.stack(ys, dim=1), state


@pytest.mark.parametrize("kind", list(SMALL))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_forward_equals_step_loop_with_resets(kind, dtype):
    block = _block(kind, dtype)
    x, resets = _episode_data(dtype=dtype)
    state0 = tuple(torch.randn_like(s) for s in block.initial_state(3))
    y, state = block(x, resets, state0, return_state=True)
    y_loop, state_loop = _step_loop(block, x, resets, state0)
    torch.testing.assert_close(y, y_loop, atol=TOL[dtype], rtol=TOL[dtype])
    for s, s_loop in zip(state, state_loop):
        torch.testing.assert_close(s, s_loop, atol=TOL[dtype], rtol=TOL[dtype])


@pytest.mark.parametrize("kind", list(SMALL))
def test_sequence_split_in_two_with_the_state_carried_equals_one_pass(kind):
    block = _block(kind)
    x, resets = _episode_data()
    y_full = block(x, resets)
    y1, state = block(x[:, :11], resets[:, :11], return_state=True)
    y2 = block(x[:, 11:], resets[:, 11:], state)
    torch.testing.assert_close(torch.cat([y1, y2], 1), y_full, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("kind", list(SMALL))
def test_parameter_gradients_of_forward_equal_those_of_the_step_loop(kind):
    block = _block(kind)
    x, resets = _episode_data(length=19)
    w = torch.randn(3, 19, 16, dtype=torch.float64)
    params = list(block.parameters())
    g_seq = torch.autograd.grad((block(x, resets) * w).sum(), params)
    g_loop = torch.autograd.grad((_step_loop(block, x, resets, block.initial_state(3))[0] * w).sum(), params)
    for (name, _), a, b in zip(block.named_parameters(), g_seq, g_loop):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10, msg=f"grad of {name}")


@pytest.mark.parametrize("kind", list(SMALL))
def test_same_seed_same_bits(kind):
    x, resets = _episode_data(dtype=torch.float32)
    a, b = _block(kind, torch.float32, seed=3), _block(kind, torch.float32, seed=3)
    assert torch.equal(a(x, resets), b(x, resets))
    assert not torch.equal(a(x, resets), _block(kind, torch.float32, seed=4)(x, resets))


@pytest.mark.parametrize("kind", list(SMALL))
def test_step_returns_a_new_state_and_leaves_the_old_one_alone(kind):
    block = _block(kind)
    state = tuple(torch.randn_like(s) for s in block.initial_state(2))
    before = tuple(s.clone() for s in state)
    _, new = block.step(torch.randn(2, 16, dtype=torch.float64), state)
    assert all(torch.equal(s, b) for s, b in zip(state, before))
    assert all(n is not s for n, s in zip(new, state))


# Names and shapes of mamba_ssm 2.x's Mamba(d_model=64) and Mamba2(d_model=64, headdim=32) state dicts.
MAMBA_SSM_MAMBA_64 = {
    "in_proj.weight": (256, 64), "conv1d.weight": (128, 1, 4), "conv1d.bias": (128,), "x_proj.weight": (36, 128),
    "dt_proj.weight": (128, 4), "dt_proj.bias": (128,), "A_log": (128, 16), "D": (128,), "out_proj.weight": (64, 128),
}  # fmt: skip
MAMBA_SSM_MAMBA2_64_HD32 = {
    "dt_bias": (4,), "A_log": (4,), "D": (4,), "in_proj.weight": (516, 64), "conv1d.weight": (384, 1, 4),
    "conv1d.bias": (384,), "norm.weight": (128,), "out_proj.weight": (64, 128),
}  # fmt: skip


@pytest.mark.parametrize(
    "block, expected",
    [(lambda: Mamba(d_model=64), MAMBA_SSM_MAMBA_64), (lambda: Mamba2(d_model=64, headdim=32), MAMBA_SSM_MAMBA2_64_HD32)],
)
def test_state_dict_has_mamba_ssm_names_and_shapes_and_round_trips(block, expected):
    torch.manual_seed(0)
    a = block()
    assert {k: tuple(v.shape) for k, v in a.state_dict().items()} == expected
    torch.manual_seed(1)
    b = block()
    b.load_state_dict(a.state_dict(), strict=True)
    x = torch.randn(2, 5, 64)
    assert torch.equal(a(x), b(x))


def test_initialization_follows_mamba_ssm():
    torch.manual_seed(0)
    m = Mamba(d_model=32, dt_min=0.002, dt_max=0.05)
    assert torch.allclose(m.A_log, torch.log(torch.arange(1, 17.0)).expand(64, 16))
    dt = torch.nn.functional.softplus(m.dt_proj.bias)
    assert dt.min() >= 0.002 - 1e-6 and dt.max() <= 0.05 + 1e-6 and torch.equal(m.D.data, torch.ones(64))
    m2 = Mamba2(d_model=64, headdim=16, A_init_range=(2.0, 3.0))
    assert ((-m2.A_log.exp() <= -2.0) & (-m2.A_log.exp() >= -3.0)).all()
    dt2 = torch.nn.functional.softplus(m2.dt_bias)
    assert dt2.min() >= 0.001 - 1e-6 and dt2.max() <= 0.1 + 1e-6


@pytest.mark.parametrize("kind", ["mamba", "mamba2"])
def test_bad_inputs_name_the_tensor_and_the_expected_shape(kind):
    block = _block(kind, torch.float32)
    x = torch.randn(2, 5, 16)
    with pytest.raises(ValueError, match=r"x: expected shape \(B, L, 16\), got \(2, 16\)"):
        block(x[:, 0])
    with pytest.raises(ValueError, match=r"x: expected shape \(B, L, 16\), got \(2, 5, 8\)"):
        block(x[..., :8])
    with pytest.raises(ValueError, match=r"x: expected shape \(B, 16\), got \(2, 5, 16\)"):
        block.step(x, block.initial_state(2))
    bad = x.clone()
    bad[1, 2, 3] = float("nan")
    with pytest.raises(ValueError, match="x: contains NaN"):
        block(bad)
    with pytest.raises(TypeError, match="x: expected dtype torch.float32"):
        block(x.double())
    with pytest.raises(ValueError, match=r"resets: expected shape \(2, 5\)"):
        block(x, torch.zeros(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"state\[0\] \(conv_state\): expected shape \(2, "):
        block.step(x[:, 0], block.initial_state(3))
    other = SMALL[kind]()  # same kind, bigger state: a state from another config
    other_state = (block.initial_state(2)[0], torch.zeros(2, *[s + 1 for s in block.state_shapes()[1]]))
    with pytest.raises(ValueError, match=r"state\[1\] \(ssm_state\): expected shape"):
        block(x, state=other_state)
    with pytest.raises(TypeError, match="state: expected a \\(conv_state, ssm_state\\) pair"):
        block.step(x[:, 0], block.initial_state(2)[0])
    with pytest.raises(ValueError, match="batch_size: expected an integer >= 1, got 0"):
        other.initial_state(0)


def test_bad_configs_are_named():
    with pytest.raises(ValueError, match="Mamba2Config.headdim: expected a divisor of d_inner=128, got 48"):
        Mamba2Config(d_model=64, headdim=48)
    with pytest.raises(ValueError, match="Mamba2Config.ngroups: expected a divisor of nheads=2, got 3"):
        Mamba2Config(d_model=64, ngroups=3)
    with pytest.raises(ValueError, match="MambaConfig.d_state: expected an integer >= 1, got 0"):
        MambaConfig(d_state=0)
    with pytest.raises(ValueError, match="MambaConfig.backend: expected 'auto', 'ref' or 'cuda', got 'gpu'"):
        Mamba(backend="gpu")
    with pytest.raises(TypeError, match=r"MambaConfig: unknown field\(s\) \['d_modle'\]"):
        Mamba(d_modle=8)
    with pytest.raises(TypeError, match="config: expected a Mamba2Config, got MambaConfig"):
        Mamba2(MambaConfig())


def test_mamba_features_are_the_ssm_output_before_the_gate():
    block = _block("mamba")
    x, resets = _episode_data()
    y, ssm_out, state = block.forward_features(x, resets)
    y2, state2 = block(x, resets, return_state=True)
    assert torch.equal(y, y2) and all(torch.equal(a, b) for a, b in zip(state, state2))
    assert ssm_out.shape == (3, 27, block.config.d_inner)
    _, z = block.in_proj(x).chunk(2, dim=-1)
    torch.testing.assert_close(block.out_proj(ssm_out * torch.nn.functional.silu(z)), y)
    with pytest.raises(ValueError, match=r"x: expected shape \(B, L, 16\)"):
        block.forward_features(x[..., :3])


def test_compiled_block_equals_the_loop_and_a_copy_runs_its_own_weights(monkeypatch):
    """scan="compiled" on a short sequence compiles the whole block once for every block (the block is an argument):
    its outputs and parameter gradients equal the eager loop's, and a perturbed deep copy gets its own results."""
    x, resets = _episode_data(batch=4, length=12, dtype=torch.float32)
    a = _block("mamba", torch.float32)
    a.config.scan = "compiled"
    b = copy.deepcopy(a)
    with torch.no_grad():
        for p in b.parameters():
            p.add_(0.1 * torch.randn_like(p))
    w = torch.randn(4, 12, 16)
    for block in (a, b):
        results = {}
        for scan in ("compiled", "loop"):
            block.config.scan = scan
            block.zero_grad()
            with warnings.catch_warnings():
                warnings.filterwarnings("error", "torch.compile failed")
                y, state = block(x, resets=resets, return_state=True)
            ((y * w).sum() + state[1].sum()).backward()
            results[scan] = [y, *state] + [p.grad.clone() for p in block.parameters()]
        for got, want in zip(results["compiled"], results["loop"]):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(a(x, resets=resets), b(x, resets=resets))
    # a batch larger than a cache-sized group runs in groups of rows (here 3 + 1 of 4), with the same results
    from wmenv.models.ssm import mamba_ref

    monkeypatch.setattr(mamba_ref, "COMPILE_GROUP_BYTES", 3 * a.config.d_inner * a.config.d_state * 4)
    core, rows = mamba_ref._compiled_core(), []
    monkeypatch.setattr(
        mamba_ref, "_compiled_core", lambda: lambda block, xg, *rest: rows.append(len(xg)) or core(block, xg, *rest)
    )
    a.config.scan = "compiled"
    state0 = a.initial_state(4)
    state0 = (torch.randn_like(state0[0]), torch.randn_like(state0[1]))
    y_groups, (conv, ssm) = a(x, resets=resets, state=state0, return_state=True)
    a.config.scan = "loop"
    y_loop, (conv_loop, ssm_loop) = a(x, resets=resets, state=state0, return_state=True)
    assert rows == [3, 1]
    for got, want in ((y_groups, y_loop), (conv, conv_loop), (ssm, ssm_loop)):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
