"""What the Mamba-1 and Mamba-2 blocks share: the sequence / step interface and its input checks.

Glossary: B batch, L sequence length, D ``d_model``.

Every block maps ``(B, L, D) -> (B, L, D)`` over a sequence and ``(B, D) -> (B, D)`` per step, and
carries an explicit state ``(conv_state, ssm_state)``. Public methods check their inputs and name
the tensor, the expected shape and the received one; the math lives in ``_forward`` / ``_step``,
which stay free of data-dependent checks so they trace and export (ONNX).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import fields, replace
from typing import Any, TypeVar

import torch
from torch import nn

C = TypeVar("C")

SSMState = tuple[torch.Tensor, torch.Tensor]
"""``(conv_state, ssm_state)`` of one block; shapes in each block's `state_shapes`."""


def _shape_text(dims: Sequence[int | str]) -> str:
    return "(" + ", ".join(str(d) for d in dims) + ")"


def check_tensor(
    name: str,
    t: object,
    dims: Sequence[int | str],
    values: Sequence[int | None],
    dtype: torch.dtype | None,
    finite: bool = True,
) -> None:
    """Check that ``t`` is a finite floating tensor of the given shape.

    Args:
        name: the tensor's name as the message shows it.
        t: the value to check.
        dims: the expected shape as the message shows it, e.g. ``("B", "L", 64)``.
        values: the expected size of each dimension, ``None`` where any size goes.
        dtype: the expected dtype (the block's parameters), or ``None`` for any floating dtype.
        finite: also check for NaN / inf (a pass over the data, and a host sync on CUDA).

    Raises:
        TypeError: ``t`` is not a tensor, or has another dtype.
        ValueError: another rank or size, or NaN / inf entries.
    """
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor of shape {_shape_text(dims)}, got {type(t).__name__}")
    if not t.is_floating_point() or (dtype is not None and t.dtype != dtype):
        raise TypeError(f"{name}: expected dtype {dtype or 'floating'} (the block's parameters), got {t.dtype}")
    if t.dim() != len(values) or any(v is not None and s != v for s, v in zip(t.shape, values)):
        raise ValueError(f"{name}: expected shape {_shape_text(dims)}, got {tuple(t.shape)}")
    if finite and not torch.isfinite(t).all():
        raise ValueError(f"{name}: contains NaN or inf")


class SSMBlock(nn.Module):
    """Base of `Mamba` and `Mamba2`: ``forward`` over sequences, ``step`` per token, explicit state."""

    d_model: int

    def state_shapes(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Per-sample shapes of ``(conv_state, ssm_state)``, without the batch dimension."""
        raise NotImplementedError

    def _forward(self, x: torch.Tensor, resets: torch.Tensor | None, state: SSMState | None) -> tuple[torch.Tensor, SSMState]:
        raise NotImplementedError

    def _step(self, x: torch.Tensor, state: SSMState) -> tuple[torch.Tensor, SSMState]:
        raise NotImplementedError

    @property
    def _dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def initial_state(self, batch_size: int, device: torch.device | str | None = None) -> SSMState:
        """Zero state for ``batch_size`` sequences: ``(conv_state, ssm_state)`` as in `state_shapes`."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size: expected an integer >= 1, got {batch_size!r}")
        p = next(self.parameters())
        device = p.device if device is None else device
        conv, ssm = self.state_shapes()
        return (
            torch.zeros(batch_size, *conv, device=device, dtype=p.dtype),
            torch.zeros(batch_size, *ssm, device=device, dtype=p.dtype),
        )

    def _check_state(self, state: object, batch: int) -> SSMState:
        if not isinstance(state, (tuple, list)) or len(state) != 2:
            raise TypeError(f"state: expected a (conv_state, ssm_state) pair, got {type(state).__name__}")
        for name, t, shape in zip(("state[0] (conv_state)", "state[1] (ssm_state)"), state, self.state_shapes()):
            # shape and dtype only: a state comes from this block, whose inputs are checked for NaN
            check_tensor(name, t, (batch, *shape), (batch, *shape), self._dtype, finite=False)
        return state[0], state[1]

    def forward(
        self,
        x: torch.Tensor,
        resets: torch.Tensor | None = None,
        state: SSMState | None = None,
        return_state: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, SSMState]:
        """Run the block over whole sequences.

        Args:
            x: (B, L, D) inputs.
            resets: (B, L) bool or 0/1, true where an episode starts: the convolution and SSM states
                entering that step are zeroed (as if ``state`` had been reset before it).
            state: ``(conv_state, ssm_state)`` before the first step (e.g. the end of the previous
                chunk); zeros when ``None``.
            return_state: also return the state after the last step.

        Returns:
            y: (B, L, D); with ``return_state``, ``(y, state)``.
        """
        y, new_state = self._forward(x, resets, self.check_sequence(x, resets, state))
        return (y, new_state) if return_state else y

    def check_sequence(self, x: torch.Tensor, resets: torch.Tensor | None, state: SSMState | None) -> SSMState | None:
        """Check the arguments of `forward` (see there); returns ``state`` as a tuple.

        Raises:
            TypeError, ValueError: naming the tensor, the expected shape and the received one.
        """
        check_tensor("x", x, ("B", "L", self.d_model), (None, None, self.d_model), self._dtype)
        batch, length = x.shape[:2]
        if resets is not None:
            if not isinstance(resets, torch.Tensor) or tuple(resets.shape) != (batch, length):
                got = tuple(resets.shape) if isinstance(resets, torch.Tensor) else type(resets).__name__
                raise ValueError(f"resets: expected shape ({batch}, {length}) (B, L) like x, got {got}")
        return None if state is None else self._check_state(state, batch)

    def step(self, x: torch.Tensor, state: SSMState) -> tuple[torch.Tensor, SSMState]:
        """Advance one token; the state is returned new, never updated in place.

        Args:
            x: (B, D) input.
            state: ``(conv_state, ssm_state)`` from `initial_state` or the previous step.

        Returns:
            y: (B, D); the new state.
        """
        check_tensor("x", x, ("B", self.d_model), (None, self.d_model), self._dtype)
        return self._step(x, self._check_state(state, x.shape[0]))


def dt_bias_init(size: int, dt_min: float, dt_max: float, dt_init_floor: float) -> torch.Tensor:
    """Biases whose softplus is log-uniform in ``[dt_min, dt_max]`` (Mamba's step-size init).

    Returns:
        (size,) the inverse softplus of the sampled step sizes.
    """
    lo, hi = torch.log(torch.tensor(dt_min)), torch.log(torch.tensor(dt_max))
    log_dt = torch.rand(size) * (hi - lo) + lo
    dt = torch.exp(log_dt).clamp(min=dt_init_floor)
    return dt + torch.log(-torch.expm1(-dt))  # inverse of softplus


def build_config(cls: type[C], config: C | None, overrides: Mapping[str, Any]) -> C:
    """``config`` (or ``cls()``) with the fields in ``overrides`` replaced; derived fields are recomputed.

    Raises:
        TypeError: ``config`` is not a ``cls``, or an override names no field of it.
    """
    if config is not None and not isinstance(config, cls):
        raise TypeError(f"config: expected a {cls.__name__}, got {type(config).__name__}")
    names = {f.name for f in fields(cls) if f.init}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise TypeError(f"{cls.__name__}: unknown field(s) {unknown}; fields are {sorted(names)}")
    if config is None:
        return cls(**overrides)
    return replace(config, **overrides) if overrides else config
