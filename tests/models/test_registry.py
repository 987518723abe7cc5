"""The world-model registry: presets with field overrides (`with_overrides`), what they replace and what they refuse."""

from __future__ import annotations

import dataclasses

import pytest

from wmenv.models.drama import drama_preset
from wmenv.models.mabl import mabl_preset
from wmenv.models.mamba_wm import preset
from wmenv.models.registry import with_overrides


def test_overrides_replace_top_level_and_nested_fields_and_leave_the_rest():
    """Top-level and dotted (nested) names are replaced; every other field keeps the preset's value."""
    base = preset("small")
    got = with_overrides(base, {"head_hidden": 128, "head_layers": 2, "rssm.deter": 96, "rssm.dropout": 0.0})
    assert got == dataclasses.replace(
        base, head_hidden=128, head_layers=2, rssm=dataclasses.replace(base.rssm, deter=96, dropout=0.0)
    )
    assert base.head_hidden == 64 and base.rssm.deter == 64  # the preset itself is not changed
    assert with_overrides(base, {}) == base


def test_overrides_read_an_int_as_a_float_where_a_float_was():
    """An int given for a float field (as a command line gives ``lr 1``) is stored as a float."""
    got = with_overrides(preset("small"), {"lr": 1, "kl_balance": 1})
    assert got.lr == 1.0 and isinstance(got.lr, float) and isinstance(got.kl_balance, float)


@pytest.mark.parametrize("config", [mabl_preset("small"), drama_preset("cpu-small")])
def test_overrides_work_on_every_kind(config):
    """MABL's and DRAMA's configs take overrides the same way."""
    assert with_overrides(config, {"head_hidden": 32}).head_hidden == 32


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"head_width": 128}, r"^run\['head_width'\]: MAMBAConfig has no field 'head_width'; it has \[.*'head_hidden'"),
        ({"rssm.width": 1}, r"^run\['rssm.width'\]: RSSMConfig has no field 'width'"),
        ({"rssm": 3}, r"^run\['rssm'\]: rssm is a nested config; set its fields as 'rssm.<field>' \(\[.*'deter'"),
        ({"lr.x": 3}, r"^run\['lr.x'\]: MAMBAConfig.lr is float, not a nested config"),
        ({"head_hidden": 1.5}, r"^run\['head_hidden'\]: expected a value of type int \(the field holds 64\), got 1.5"),
        ({"head_hidden": True}, r"^run\['head_hidden'\]: expected a value of type int \(the field holds 64\), got True"),
        ({"lr": "fast"}, r"^run\['lr'\]: expected a value of type float \(the field holds 0.001\), got 'fast'"),
        ({"head_hidden": 0}, r"^run\['head_hidden'\]: 0 refused: MAMBAConfig.head_hidden: expected an integer >= 1"),
        ({"rssm.dropout": 1.0}, r"^run\['rssm.dropout'\]: 1.0 refused: RSSMConfig.dropout: expected a number in \[0, 1\)"),
        ({"reward_head": "huber"}, r"^run\['reward_head'\]: 'huber' refused: MAMBAConfig.reward_head"),
    ],
)
def test_overrides_refuse_unknown_names_nested_configs_and_bad_values(overrides, message):
    """Every refusal is a ValueError naming the override, with what was expected."""
    with pytest.raises(ValueError, match=message):
        with_overrides(preset("small"), overrides, "run")


def test_overrides_must_be_a_mapping_of_names():
    with pytest.raises(TypeError, match=r"^overrides: expected a mapping of field names to values, got list"):
        with_overrides(preset("small"), [("lr", 1.0)])
    with pytest.raises(TypeError, match=r"^overrides: expected field names \(str\), got 3"):
        with_overrides(preset("small"), {3: 1.0})
