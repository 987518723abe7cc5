"""Small tensor helpers shared by the models and the learners."""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

SMALL_CLASSES = 16
"""`log_softmax` and `softmax` over a last dim of at most this many classes run as a few plain ops on the CPU: torch's
CPU kernels for a short last dim (the models' 8-class latents, 5-action policies) measured 3-6x slower than those ops
(BENCHMARKS.md, "Softmax over few classes"), while for 32 classes and more torch's kernels are the faster."""


def _small_on_cpu(x: Tensor) -> bool:
    return x.device.type == "cpu" and x.shape[-1] <= SMALL_CLASSES


def log_softmax(x: Tensor) -> Tensor:
    """``torch.log_softmax(x, -1)``; over a short last dim on the CPU (`SMALL_CLASSES`) as torch computes it, by hand:
    ``s - log(sum(exp(s)))`` with ``s = x - max(x)`` (the shift changes no value or gradient, so it is taken out of
    the graph). -inf entries (masked choices) stay -inf, provided each row has a finite one."""
    if not _small_on_cpu(x):
        return torch.log_softmax(x, -1)
    s = x - x.detach().amax(-1, keepdim=True)
    return s - s.exp().sum(-1, keepdim=True).log()


def softmax(x: Tensor) -> Tensor:
    """``torch.softmax(x, -1)``; over a short last dim on the CPU (`SMALL_CLASSES`) by hand: ``exp(s) / sum(exp(s))``
    with ``s = x - max(x)`` (as in `log_softmax`)."""
    if not _small_on_cpu(x):
        return torch.softmax(x, -1)
    e = (x - x.detach().amax(-1, keepdim=True)).exp()
    return e / e.sum(-1, keepdim=True)


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``x`` over the True entries of ``mask`` (0 if there are none); masked-out values never leak."""
    return torch.where(mask, x, torch.zeros_like(x)).sum() / mask.sum().clamp(min=1)


def compiled(fn: Callable) -> Callable:
    """``fn`` through `torch.compile`, drawing random numbers as eager does (inductor's ``fallback_random``), so a
    seed gives the plain path's samples; if compiling fails, a warning and the plain ``fn`` from then on.

    On the CPU the compiled code's wrapper is C++ (inductor's ``cpp_wrapper``) instead of Python: the functions compiled
    here are small per-row graphs whose Python wrapper, not their arithmetic, was a large part of their time (the world
    model's fit step 12 % faster, the same compile time; BENCHMARKS.md, "A C++ wrapper for the compiled rows"). Other
    devices keep inductor's defaults; each device type gets its own compiled function.

    Compiled on the first call, not here: `torch.compile` imports torch's compiler stack (about 4 s of CPU), which a
    module that merely defines compiled functions, and a process that never calls them, should not pay."""
    versions: dict[str, Callable] = {}  # device type -> compiled fn (fn itself once compiling has failed)

    def call(*args: Any) -> Any:
        device = _device_type(args)
        current = versions.get(device)
        if current is not fn:
            try:
                if current is None:
                    options = {"fallback_random": True, "cpp_wrapper": device == "cpu"}
                    current = versions[device] = torch.compile(fn, options=options)
                return current(*args)
            except Exception as e:  # any compiler or backend failure (a C++ compiler missing, an unsupported op)
                warnings.warn(f"torch.compile failed ({type(e).__name__}: {e}); using the plain function", stacklevel=2)
                versions[device] = fn
        return fn(*args)

    return call


def _device_type(args: tuple) -> str:
    """The device type of the first tensor, or module parameter, among ``args`` (and in dicts among them); "cpu" if none."""
    for a in args:
        if isinstance(a, torch.nn.Module):
            a = next(a.parameters(), None)
        elif isinstance(a, dict):
            a = next((v for v in a.values() if isinstance(v, Tensor)), None)
        if isinstance(a, Tensor):
            return a.device.type
    return "cpu"


def to_device(obj: Any, device: torch.device | str) -> Any:
    """``obj`` with every tensor in it (in dataclasses, dicts, lists, tuples) moved to ``device``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.replace(obj, **{f.name: to_device(getattr(obj, f.name), device) for f in dataclasses.fields(obj)})
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(v, device) for v in obj)
    return obj
