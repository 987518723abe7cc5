"""Argument checks shared by configs and constructors, with messages that name the argument.

Every check raises `ValueError` with ``"<name>: expected <what>, got <value>"``, where ``name``
carries the owner prefix when there is one (e.g. ``"TrainConfig.total_steps"``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import torch

T = TypeVar("T")


def check_int(name: str, value: object, minimum: int = 1, *, expected: str | None = None) -> int:
    """Check that ``value`` is a Python ``int`` (not a ``bool``) of at least ``minimum``.

    NumPy integers are rejected like any other non-``int``: the callers take plain config values.

    Args:
        name: the argument's name as the message shows it, e.g. ``"MAPPOConfig.epochs"``.
        value: the value to check.
        minimum: the smallest value allowed.
        expected: what the message says was expected; defaults to ``"an integer >= {minimum}"``.

    Returns:
        ``value``, typed as ``int``.

    Raises:
        ValueError: ``value`` is a bool, not an int, or below ``minimum``;
            the message is ``f"{name}: expected {expected}, got {value!r}"``.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        what = expected if expected is not None else f"an integer >= {minimum}"
        raise ValueError(f"{name}: expected {what}, got {value!r}")
    return value


def check_positive(name: str, value: object) -> float:
    """Check that ``value`` is a positive finite Python ``int`` or ``float`` (not a ``bool``).

    Returns:
        ``value``.

    Raises:
        ValueError: the message is ``f"{name}: expected a positive finite number, got {value!r}"``.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
        raise ValueError(f"{name}: expected a positive finite number, got {value!r}")
    return value


def check_unit_interval(
    name: str, value: object, *, what: str = "a number", open_low: bool = False, open_high: bool = False
) -> float:
    """Check that ``value`` is a Python ``int`` or ``float`` (not a ``bool``, not NaN) in the unit interval: [0, 1],
    with the low end open (``open_low``: 0 excluded) and/or the high end open (``open_high``: 1 excluded).

    Args:
        name: the argument's name as the message shows it, e.g. ``"RSSMConfig.dropout"``.
        value: the value to check.
        what: what the message says was expected before the interval, e.g. ``"a probability"``.
        open_low: exclude 0.
        open_high: exclude 1.

    Returns:
        ``value``.

    Raises:
        ValueError: the message is ``f"{name}: expected {what} in {interval}, got {value!r}"``, the interval written
            ``[0, 1]``, ``[0, 1)``, ``(0, 1]`` or ``(0, 1)``.
    """
    numeric = not isinstance(value, bool) and isinstance(value, (int, float))
    above_low = numeric and (value > 0 if open_low else value >= 0)
    below_high = numeric and (value < 1 if open_high else value <= 1)
    if not (above_low and below_high):
        interval = f"{'(' if open_low else '['}0, 1{')' if open_high else ']'}"
        raise ValueError(f"{name}: expected {what} in {interval}, got {value!r}")
    return value


def check_bool(name: str, value: object) -> bool:
    """Check that ``value`` is a bool (not an int or a string that reads like one).

    Returns:
        ``value``.

    Raises:
        TypeError: the message is ``f"{name}: expected a bool, got {value!r}"``.
    """
    if not isinstance(value, bool):
        raise TypeError(f"{name}: expected a bool, got {value!r}")
    return value


def check_device(name: str, value: object) -> torch.device:
    """Check that ``value`` names a torch device (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...); whether this machine has
    it is not checked.

    Returns:
        The `torch.device`.

    Raises:
        ValueError: the message is ``f"{name}: expected a torch device string, got {value!r}"``.
    """
    try:
        return torch.device(value)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"{name}: expected a torch device string, got {value!r}") from e


def check_choice(name: str, value: T, choices: Sequence[T]) -> T:
    """Check that ``value`` is one of ``choices`` (compared with ``==``).

    Args:
        name: the argument's name as the message shows it, e.g. ``"CriticConfig.activation"``.
        value: the value to check.
        choices: the allowed values, in the order the message lists them.

    Returns:
        ``value``.

    Raises:
        ValueError: ``value`` is not among ``choices``; the message lists them,
            e.g. ``"TrainConfig.backend: expected 'sync' or 'subproc', got 'x'"``.
    """
    if value not in choices:
        names = [repr(c) for c in choices]
        listed = " or ".join(names) if len(names) <= 2 else f"{', '.join(names[:-1])} or {names[-1]}"
        raise ValueError(f"{name}: expected {listed}, got {value!r}")
    return value
