"""Backend choice, and the reference against mamba-ssm's CUDA kernels where both exist."""

import pytest
import torch

from wmenv.models.ssm import HAS_MAMBA_SSM, Mamba, Mamba2
from wmenv.models.ssm.kernels import resolve_backend

needs_kernels = pytest.mark.skipif(not (torch.cuda.is_available() and HAS_MAMBA_SSM), reason="needs CUDA and mamba-ssm")


def test_cpu_tensors_use_the_reference_without_warning(recwarn):
    assert resolve_backend("auto", torch.device("cpu"), "Mamba") == "ref"
    assert resolve_backend("ref", torch.device("cpu"), "Mamba") == "ref"
    Mamba(d_model=8)(torch.randn(1, 3, 8))
    assert not [w for w in recwarn if "mamba-ssm" in str(w.message)]


@pytest.mark.skipif(HAS_MAMBA_SSM, reason="mamba-ssm is installed here")
def test_cuda_backend_without_kernels_says_how_to_install():
    expected = r"Mamba2: backend 'cuda' needs the mamba-ssm kernels .*pip install \"wmenv\[cuda\]\""
    with pytest.raises(ImportError, match=expected):
        Mamba2(d_model=8, headdim=4, backend="cuda")(torch.randn(1, 3, 8))


def _copies(kind, seed=0):
    """The reference in float64 (the exact result), the reference in float32 and the kernels, with the same weights."""
    torch.manual_seed(seed)
    make = {
        "mamba": lambda b: Mamba(d_model=64, backend=b),
        "mamba2": lambda b: Mamba2(d_model=64, headdim=32, chunk_size=64, backend=b),
    }
    exact = make[kind]("ref").cuda().double()
    ref, fast = make[kind]("ref").cuda(), make[kind]("cuda").cuda()
    ref.load_state_dict(exact.state_dict())
    fast.load_state_dict(exact.state_dict())
    return exact, ref, fast


def _relative_error(a, exact):
    """max |a - exact| / max |exact|."""
    return float((a.detach().double() - exact.detach()).abs().max() / exact.detach().abs().max())


# Bounds on (forward, gradient) errors against float64, relative to the largest exact value, by the arithmetic each
# path does. The reference and Mamba-1's CUDA scan compute in float32 (measured on an H200: <= 5e-7 forward, 1.5e-6
# gradients). Mamba-2's Triton SSD kernels take float32 dot products in TF32 (Triton's default on Ampere and later:
# 10-bit mantissa, unit roundoff 2^-11 = 4.9e-4): measured 1.6e-4 forward and 1.6e-3 in the gradients of dt_bias and
# A_log, which sum over all B * L steps (examples/benchmarks/ssm_parity.py; BENCHMARKS.md, "GPU").
BOUNDS = {"ref": (1e-5, 1e-5), "mamba": (1e-5, 1e-5), "mamba2": (1e-3, 5e-3)}


@pytest.mark.cuda
@needs_kernels
@pytest.mark.parametrize("kind", ["mamba", "mamba2"])
@pytest.mark.parametrize("with_resets", [False, True])
def test_reference_and_kernels_match_float64(kind, with_resets):
    exact, ref, fast = _copies(kind)
    g = torch.Generator(device="cuda").manual_seed(1)
    x = torch.randn(4, 200, 64, device="cuda", generator=g)
    w = torch.randn(4, 200, 64, device="cuda", generator=g)
    resets = None
    if with_resets:
        resets = torch.rand(4, 200, device="cuda", generator=g) < 0.05
    names = [name for name, _ in exact.named_parameters()]
    y64 = exact(x.double(), resets)
    g64 = torch.autograd.grad((y64 * w.double()).sum(), list(exact.parameters()))
    for path, block in (("ref", ref), (kind, fast)):
        fwd_bound, grad_bound = BOUNDS[path]
        y = block(x, resets)
        grads = torch.autograd.grad((y * w).sum(), list(block.parameters()))
        assert _relative_error(y, y64) < fwd_bound, f"{path} forward"
        for name, grad, grad64 in zip(names, grads, g64):
            assert _relative_error(grad, grad64) < grad_bound, f"{path} gradient of {name}"
