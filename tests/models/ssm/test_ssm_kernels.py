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


def _pair(kind, seed=0):
    torch.manual_seed(seed)
    make = {
        "mamba": lambda b: Mamba(d_model=64, backend=b),
        "mamba2": lambda b: Mamba2(d_model=64, headdim=32, chunk_size=64, backend=b),
    }
    ref = make[kind]("ref").cuda()
    fast = make[kind]("cuda").cuda()
    fast.load_state_dict(ref.state_dict())
    return ref, fast


@pytest.mark.cuda
@needs_kernels
@pytest.mark.parametrize("kind", ["mamba", "mamba2"])
@pytest.mark.parametrize("with_resets", [False, True])
def test_reference_matches_kernels_fp32(kind, with_resets):
    ref, fast = _pair(kind)
    g = torch.Generator(device="cuda").manual_seed(1)
    x = torch.randn(4, 200, 64, device="cuda", generator=g)
    resets = None
    if with_resets:
        resets = torch.rand(4, 200, device="cuda", generator=g) < 0.05
    y_ref, y_fast = ref(x, resets), fast(x, resets)
    torch.testing.assert_close(y_fast, y_ref, atol=6e-4, rtol=6e-4)
    w = torch.randn_like(y_ref)
    for (name, p_ref), p_fast in zip(ref.named_parameters(), fast.parameters()):
        g_ref = torch.autograd.grad((ref(x, resets) * w).sum(), p_ref)[0]
        g_fast = torch.autograd.grad((fast(x, resets) * w).sum(), p_fast)[0]
        torch.testing.assert_close(g_fast, g_ref, atol=2e-3, rtol=2e-3, msg=f"grad of {name}")
