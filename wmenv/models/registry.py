"""World models by kind name: what `wmenv.fit.load_model` and the model-based loop look up instead of importing a class.

```python
from wmenv.models.registry import build_model, model_kind

model = build_model("mabl", spec, "small")           # or a config object of the kind
model_kind("mamba").presets   # ("smac", "flatland", "small", "medium", "smac-mamba2", "small-mamba2")
```

A new model registers a `ModelKind` once (`register`); checkpoints record the kind, so a checkpoint of one
kind is never loaded as another.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from wmenv.checks import check_choice
from wmenv.models.drama import PRESETS as DRAMA_PRESETS
from wmenv.models.drama import DRAMAConfig, DRAMAWorldModel, drama_preset
from wmenv.models.mabl import PRESETS as MABL_PRESETS
from wmenv.models.mabl import MABLConfig, MABLWorldModel, mabl_preset
from wmenv.models.mamba_wm import PRESETS as MAMBA_PRESETS
from wmenv.models.mamba_wm import MAMBAConfig, MAMBAWorldModel, preset
from wmenv.models.world_model import WorldModel


@dataclass(frozen=True)
class ModelKind:
    """One registered world model."""

    name: str
    """The kind name (``--model-kind``)."""
    model_cls: type[WorldModel]
    """Built as ``model_cls(spec, config)``."""
    config_cls: type
    """Its config dataclass (rebuilt from a checkpoint's JSON by `config_from_dict`)."""
    preset: Callable[[str], Any]
    """Preset name -> config."""
    presets: tuple[str, ...]
    """The preset names, for help texts and checks."""


KINDS: dict[str, ModelKind] = {}
"""Registered kinds by name."""


def register(kind: ModelKind) -> ModelKind:
    """Add ``kind`` (its name must be new)."""
    if kind.name in KINDS:
        raise ValueError(f"kind: a world model named {kind.name!r} is already registered")
    KINDS[kind.name] = kind
    return kind


def model_kind(name: str) -> ModelKind:
    """The registered kind ``name`` (a ValueError lists the known ones)."""
    check_choice("model_kind", name, tuple(KINDS))
    return KINDS[name]


def kind_of(model: WorldModel) -> str:
    """The kind name of a model instance."""
    for kind in KINDS.values():
        if type(model) is kind.model_cls:
            return kind.name
    raise TypeError(f"model: {type(model).__name__} is not a registered world-model kind ({sorted(KINDS)})")


def build_model(kind: str, spec: Any, config: str | object) -> WorldModel:
    """A fresh model of ``kind`` for the env ``spec`` from a preset name or a config of that kind."""
    k = model_kind(kind)
    if isinstance(config, str):
        check_choice(f"preset of {kind!r}", config, k.presets)
        config = k.preset(config)
    if not isinstance(config, k.config_cls):
        raise TypeError(f"config: expected a {k.config_cls.__name__} for kind {kind!r}, got {type(config).__name__}")
    return k.model_cls(spec, config)


def config_from_dict(cls: type, fields: dict[str, Any]) -> Any:
    """The dataclass ``cls`` from ``dataclasses.asdict`` output, nested dataclasses included (derived fields skipped).

    Raises:
        ValueError: ``fields`` names a field ``cls`` does not have (a config of another model or version).
    """
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(fields) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise ValueError(f"config: {cls.__name__} has no field(s) {unknown}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if not f.init or f.name not in fields:
            continue
        value, kind = fields[f.name], hints[f.name]
        kwargs[f.name] = config_from_dict(kind, value) if dataclasses.is_dataclass(kind) and isinstance(value, dict) else value
    return cls(**kwargs)


def with_overrides(config: Any, overrides: Mapping[str, object], name: str = "overrides") -> Any:
    """``config`` (a world-model config dataclass) with the fields ``overrides`` names replaced, nested configs' fields
    by dotted names: ``{"head_hidden": 128, "rssm.deter": 128}``. The config's own checks run on the result.

    A value must have the type of the value it replaces (an int where an int was, a bool where a bool was; an int is
    read as a float where a float was), except where the field held None.

    Raises:
        TypeError: ``overrides`` is not a mapping of names (str) to values.
        ValueError: a name the config does not have (the message lists those it has), a nested config replaced whole,
            a value of another type, or one the config's checks refuse; every message names ``name[key]``.
    """
    if not isinstance(overrides, Mapping):
        raise TypeError(f"{name}: expected a mapping of field names to values, got {type(overrides).__name__}")
    for key, value in overrides.items():
        if not isinstance(key, str) or not key:
            raise TypeError(f"{name}: expected field names (str), got {key!r}")
        config = _override(config, key.split("."), value, f"{name}[{key!r}]")
    return config


def _override(config: Any, path: list[str], value: object, where: str) -> Any:
    """``config`` with the field at ``path`` (one name per nesting level) set to ``value``."""
    fields = {f.name for f in dataclasses.fields(config) if f.init}
    head = path[0]
    if head not in fields:
        raise ValueError(f"{where}: {type(config).__name__} has no field {head!r}; it has {sorted(fields)}")
    current = getattr(config, head)
    if len(path) > 1:
        if not dataclasses.is_dataclass(current):
            raise ValueError(f"{where}: {type(config).__name__}.{head} is {type(current).__name__}, not a nested config")
        return dataclasses.replace(config, **{head: _override(current, path[1:], value, where)})
    if dataclasses.is_dataclass(current):
        nested = sorted(f.name for f in dataclasses.fields(current))
        raise ValueError(f"{where}: {head} is a nested config; set its fields as '{head}.<field>' ({nested})")
    value = _typed_like(current, value, where)
    try:
        return dataclasses.replace(config, **{head: value})
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: {value!r} refused: {e}") from e


def _typed_like(current: object, value: object, where: str) -> object:
    """``value`` checked against the type of the ``current`` value it replaces (an int becomes a float where one was)."""
    if current is None:
        return value
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if type(value) is not type(current):
        kind = type(current).__name__
        raise ValueError(f"{where}: expected a value of type {kind} (the field holds {current!r}), got {value!r}")
    return value


register(ModelKind("mamba", MAMBAWorldModel, MAMBAConfig, preset, MAMBA_PRESETS))
register(ModelKind("mabl", MABLWorldModel, MABLConfig, mabl_preset, MABL_PRESETS))
register(ModelKind("drama", DRAMAWorldModel, DRAMAConfig, drama_preset, DRAMA_PRESETS))
