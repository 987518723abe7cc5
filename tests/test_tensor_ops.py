"""Small tensor helpers: the hand-written softmax / log-softmax over few classes against torch's kernels; `compiled`
compiles on the first call and falls back to the plain function when compiling fails."""

import subprocess
import sys

import pytest
import torch

from wmenv import tensor_ops
from wmenv.tensor_ops import SMALL_CLASSES, compiled, log_softmax, softmax


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


def test_compiled_compiles_on_the_first_call_and_falls_back_once_when_compiling_fails(monkeypatch):
    calls = []

    def failing_compile(fn, **kwargs):
        calls.append(kwargs)
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(tensor_ops.torch, "compile", failing_compile)
    double = compiled(lambda x: 2 * x)
    assert calls == [], "compiled before its first call"
    with pytest.warns(UserWarning, match=r"torch.compile failed \(RuntimeError: no C\+\+ compiler\); using the plain"):
        assert torch.equal(double(torch.ones(3)), torch.full((3,), 2.0))
    assert calls == [{"options": {"fallback_random": True, "cpp_wrapper": True}}]
    assert torch.equal(double(torch.ones(2)), torch.full((2,), 2.0)) and len(calls) == 1, "compiling was retried"
    with pytest.warns(UserWarning, match="torch.compile failed"):  # another device type: its own try, Python wrapper
        assert double(torch.ones(2, device="meta")).device.type == "meta"
    assert calls[1:] == [{"options": {"fallback_random": True, "cpp_wrapper": False}}]
    assert double(torch.ones(2, device="meta")).device.type == "meta" and len(calls) == 2, "compiling was retried"


def test_compiled_takes_the_device_from_the_first_tensor_module_or_dict_of_tensors():
    meta = torch.nn.Linear(2, 2, device="meta")
    assert tensor_ops._device_type((3, meta, torch.ones(1))) == "meta"
    assert tensor_ops._device_type(({"a": 1, "b": torch.ones(1, device="meta")},)) == "meta"
    assert tensor_ops._device_type((None, torch.ones(1), meta)) == "cpu"
    assert tensor_ops._device_type((1.0, "x")) == "cpu"


def test_importing_the_models_and_the_fit_leaves_torchs_compiler_unimported():
    """Modules that define compiled functions import without torch's compiler stack (about 4 s of CPU per process)."""
    code = (
        "import sys, wmenv.fit, wmenv.models.mabl, wmenv.models.ssm.scan\n"
        "print(sorted(m for m in ('torch._dynamo', 'torch._inductor') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]", out.stdout
