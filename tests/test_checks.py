"""check_int, check_positive, check_unit_interval and check_choice: what they accept, what they reject, and what the message
says."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from wmenv.checks import check_bool, check_choice, check_device, check_int, check_positive, check_unit_interval


def test_check_int_accepts_and_returns_ints():
    assert check_int("n", 1) == 1
    assert check_int("n", 7, minimum=7) == 7
    assert check_int("n", 0, 0) == 0
    assert check_int("n", -3, minimum=-5) == -3


@pytest.mark.parametrize(
    "value, shown",
    [
        (True, "True"),
        (False, "False"),
        (1.0, "1.0"),
        (2.5, "2.5"),
        ("3", "'3'"),
        (None, "None"),
        (np.int64(3), None),  # numpy integers are not plain ints: rejected like floats
    ],
)
def test_check_int_rejects_non_ints(value, shown):
    with pytest.raises(ValueError) as e:
        check_int("Owner.size", value)
    message = str(e.value)
    assert message.startswith("Owner.size: expected an integer >= 1, got ")
    assert message.endswith(repr(value))
    if shown is not None:
        assert message == f"Owner.size: expected an integer >= 1, got {shown}"


def test_check_int_rejects_below_minimum():
    with pytest.raises(ValueError, match=r"^TrainConfig\.total_steps: expected an integer >= 1, got 0$"):
        check_int("TrainConfig.total_steps", 0)
    with pytest.raises(ValueError, match=r"^TrainConfig\.eval_every: expected an integer >= 0, got -1$"):
        check_int("TrainConfig.eval_every", -1, 0)
    with pytest.raises(ValueError, match=r"^h: expected an integer >= 2, got 1$"):
        check_int("h", 1, minimum=2)


def test_check_int_custom_expected_text():
    with pytest.raises(ValueError, match=r"^max_cycles: expected a positive int, got 0$"):
        check_int("max_cycles", 0, expected="a positive int")
    # the custom text only changes the message, not the check
    assert check_int("max_cycles", 5, expected="a positive int") == 5


def test_check_choice():
    assert check_choice("activation", "tanh", ("relu", "tanh")) == "tanh"
    with pytest.raises(ValueError, match=r"^CriticConfig\.activation: expected 'relu' or 'tanh', got 'gelu'$"):
        check_choice("CriticConfig.activation", "gelu", ("relu", "tanh"))
    with pytest.raises(ValueError, match=r"^mode: expected 'a', 'b' or 'c', got None$"):
        check_choice("mode", None, ("a", "b", "c"))
    with pytest.raises(ValueError, match=r"^mode: expected 'a', got 'b'$"):
        check_choice("mode", "b", ["a"])


def test_check_positive_accepts_positive_finite_numbers_and_names_the_rest():
    """Positive finite ints and floats pass (returned as given); bools, zero, negatives, inf, NaN and non-numbers fail."""
    assert check_positive("lr", 5e-4) == 5e-4 and check_positive("lr", 3) == 3
    for bad in (True, 0, 0.0, -1e-3, float("inf"), float("nan"), "1", None):
        with pytest.raises(ValueError, match=rf"^Cfg\.lr: expected a positive finite number, got {re.escape(repr(bad))}$"):
            check_positive("Cfg.lr", bad)


def test_check_device():
    assert check_device("X.device", "cpu") == torch.device("cpu")
    assert check_device("X.device", "cuda:1") == torch.device("cuda", 1)  # named, not looked for on this machine
    for bad in ("gpu0", None):
        with pytest.raises(ValueError, match=re.escape(f"X.device: expected a torch device string, got {bad!r}")):
            check_device("X.device", bad)


def test_check_bool():
    assert check_bool("X.flag", True) is True and check_bool("X.flag", False) is False
    for bad in (1, 0, "True", None, np.bool_(True)):
        with pytest.raises(TypeError, match=rf"^X\.flag: expected a bool, got {re.escape(repr(bad))}$"):
            check_bool("X.flag", bad)


@pytest.mark.parametrize(
    ("kwargs", "inside", "outside", "interval"),
    [
        ({}, [0, 0.5, 1, 1.0], [-0.1, 1.01], "[0, 1]"),
        ({"open_high": True}, [0, 0.0, 0.999], [1, 1.0, -1e-9], "[0, 1)"),
        ({"open_low": True}, [1e-9, 1], [0, 0.0, 2], "(0, 1]"),
        ({"open_low": True, "open_high": True}, [0.5], [0, 1], "(0, 1)"),
    ],
)
def test_check_unit_interval_ends(kwargs, inside, outside, interval):
    """Each end is closed unless asked open; the message writes the interval as asked."""
    for v in inside:
        assert check_unit_interval("x", v, **kwargs) == v
    for v in outside:
        with pytest.raises(ValueError, match=re.escape(f"Owner.x: expected a number in {interval}, got {v!r}")):
            check_unit_interval("Owner.x", v, **kwargs)


@pytest.mark.parametrize("value", [True, False, "0.5", None, float("nan"), [0.5]])
def test_check_unit_interval_rejects_non_numbers_and_nan(value):
    """Bools, strings, None, NaN and containers are refused with the argument's name and what was expected."""
    with pytest.raises(ValueError, match=re.escape(f"RSSMConfig.dropout: expected a probability in [0, 1), got {value!r}")):
        check_unit_interval("RSSMConfig.dropout", value, what="a probability", open_high=True)
