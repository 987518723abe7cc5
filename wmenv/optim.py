"""Optimizers: Adam built fused where this torch supports it, and state loading that keeps that choice.

torch's CPU Adam defaults to a Python loop over the parameter tensors; its fused implementation updates them all in
one kernel (torch >= 2.4 on the CPU, earlier on CUDA). For the world models' and agents' many small tensors that loop
is most of an optimizer step: 4.7x slower than fused for MAMBA's `small` model (63 tensors) on one CPU thread, 2.8x
for `smac` (BENCHMARKS.md, "Fused Adam"). Fused and looped Adam compute the same update to float rounding.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

_IMPLEMENTATION_KEYS = ("fused", "foreach")
"""Param-group keys that choose how a step runs, not what it computes: kept from this process on load."""


def adam(params: Iterable[torch.Tensor] | Iterable[dict[str, Any]], lr: float, **kwargs: Any) -> torch.optim.Adam:
    """`torch.optim.Adam` over ``params`` (tensors or param groups), fused where this torch can fuse on their device.

    Args:
        params: the parameters, or param-group dicts as `torch.optim.Adam` takes them.
        lr: learning rate (the groups' default).
        **kwargs: more `torch.optim.Adam` arguments (``eps``, ``betas``, ...); ``fused`` / ``foreach`` choose the
            implementation yourself.

    Returns:
        The optimizer; ``optimizer.defaults["fused"]`` says whether it fused.
    """
    # lists, not iterators, so that a second construction after a refused fused one sees every parameter again
    params = [dict(p, params=_listed(p["params"])) if isinstance(p, dict) else p for p in params]
    if "fused" in kwargs or "foreach" in kwargs:
        return torch.optim.Adam(params, lr=lr, **kwargs)
    try:
        return torch.optim.Adam(params, lr=lr, fused=True, **kwargs)
    except RuntimeError:  # this torch has no fused Adam for the params' device or dtype: the plain one
        return torch.optim.Adam(params, lr=lr, **kwargs)


def _listed(params: torch.Tensor | Iterable[torch.Tensor]) -> list[torch.Tensor]:
    """A param group's ``params`` as a list (a single tensor is one parameter, as `torch.optim.Optimizer` reads it)."""
    return [params] if isinstance(params, torch.Tensor) else list(params)


def load_optimizer_state(optimizer: torch.optim.Optimizer, state_dict: dict[str, Any]) -> None:
    """``optimizer.load_state_dict(state_dict)``, keeping this optimizer's implementation choice (``fused``,
    ``foreach``): a state saved by a fused optimizer loads into a torch or device that cannot fuse, and vice versa."""
    chosen = [{k: group[k] for k in _IMPLEMENTATION_KEYS if k in group} for group in optimizer.param_groups]
    optimizer.load_state_dict(state_dict)
    for group, keys in zip(optimizer.param_groups, chosen, strict=True):
        for k in _IMPLEMENTATION_KEYS:
            if k in keys:
                group[k] = keys[k]
            else:
                group.pop(k, None)
