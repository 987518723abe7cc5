"""Real environments behind one view: ``env, spec = wmenv.envs.make(id)``.

Ids are ``"<family>:<name>"``:

=================================  ==========================================================
``mpe:simple_spread_v3``           MPE from ``mpe2`` (any ``mpe2`` parallel env name)
``pettingzoo:<module path>``       any PettingZoo parallel env, e.g. ``pettingzoo:pettingzoo.butterfly.pistonball_v6``
``flatland:5`` / ``:10`` / ``:15``  Flatland 4.x with the MAMBA paper's maps (Table 2)
``smacv2:<map>``                   SMACv2, e.g. ``smacv2:protoss_5_vs_5`` (needs StarCraft II)
``smax:<map>``                     SMAX, JaxMARL's SC2-free SMAC, e.g. ``smax:3s_vs_5z`` (extra ``[smax]``)
``mamujoco:<scenario>:<conf>``     MaMuJoCo from ``gymnasium-robotics``, e.g. ``mamujoco:Humanoid:9|8``
``gym:<id>``                       a single-agent Gymnasium env as a one-agent parallel env
``atari:<Game>``                   an Atari game (ale-py) as DRAMA preprocesses it: 64×64 RGB (extra ``[atari]``)
=================================  ==========================================================
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from wmenv.envs.base import MultiAgentEnv
from wmenv.envs.spec import EnvSpec, check_actions, stack_masks, stack_obs, stack_rewards, unstack_actions

# family -> "module:function"; imported lazily so a missing optional package only matters when used.
_FAMILIES: dict[str, str] = {
    "mpe": "wmenv.envs.mpe:make_mpe",
    "pettingzoo": "wmenv.envs.pettingzoo:make_pettingzoo",
    "flatland": "wmenv.envs.flatland:make_flatland",
    "smacv2": "wmenv.envs.smacv2:make_smacv2",
    "smax": "wmenv.envs.smax:make_smax",
    "mamujoco": "wmenv.envs.mamujoco:make_mamujoco",
    "gym": "wmenv.envs.gym:make_gym",
    "atari": "wmenv.envs.atari:make_atari",
}

KNOWN_IDS: tuple[str, ...] = (
    "mpe:simple_spread_v3",
    "pettingzoo:<module path>",
    "flatland:5",
    "flatland:10",
    "flatland:15",
    "smacv2:protoss_5_vs_5",
    "smacv2:terran_5_vs_5",
    "smacv2:zerg_5_vs_5",
    "smax:3m",
    "smax:3s_vs_5z",
    "mamujoco:Humanoid:9|8",
    "gym:CartPole-v1",
    "atari:Pong",
)


def make(id: str, **kwargs: Any) -> tuple[MultiAgentEnv, EnvSpec]:
    """Make a real environment by id.

    Args:
        id: ``"<family>:<name>"``, see the module docstring.
        **kwargs: passed to the family's adapter (e.g. ``dense_reward=True`` for Flatland).

    Returns:
        env: a PettingZoo `ParallelEnv` (a `MultiAgentEnv`) with ``state()`` and action masks in infos.
        spec: its `EnvSpec`.

    Raises:
        ValueError: an unknown id (the message lists the known ones), or keyword values the env refuses.
        TypeError: keywords the env does not take, or of the wrong type.
        gymnasium.error.DependencyNotInstalled: the family's package is missing (the message says how to install it).
    """
    if not isinstance(id, str):
        raise TypeError(f"id: expected a string like 'mpe:simple_spread_v3', got {type(id).__name__}")
    family, sep, name = id.partition(":")
    if not sep or family not in _FAMILIES or not name:
        raise ValueError(f"id: unknown environment {id!r}; known ids: {', '.join(KNOWN_IDS)}")
    module, fn = _FAMILIES[family].split(":")
    try:
        env = getattr(importlib.import_module(module), fn)(name, **kwargs)
    except (TypeError, ValueError, AssertionError, AttributeError, KeyError, IndexError) as e:
        if _raised_here(e):
            raise  # the library's own errors name their input already
        # third-party constructors refuse bad keywords with whatever they raise; name the input in a library error
        kind = TypeError if isinstance(e, TypeError) else ValueError
        raise kind(f"kwargs: {id!r} refused {kwargs!r}: {type(e).__name__}: {e}") from e
    return env, env.env_spec


def _raised_here(e: BaseException) -> bool:
    """Whether ``e`` was raised by this library's own code (its innermost frame lies in the wmenv package)."""
    tb = e.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and Path(tb.tb_frame.f_code.co_filename).resolve().is_relative_to(_PACKAGE)


_PACKAGE = Path(__file__).resolve().parents[1]


__all__ = [
    "KNOWN_IDS",
    "EnvSpec",
    "MultiAgentEnv",
    "check_actions",
    "make",
    "stack_masks",
    "stack_obs",
    "stack_rewards",
    "unstack_actions",
]
