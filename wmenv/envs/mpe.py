"""MPE (multi-particle environments) from ``mpe2`` through `PettingZooAdapter`.

``make("mpe:simple_spread_v3")`` gives discrete actions (``continuous_actions=False``) and 25 steps per
episode (``max_cycles=25``, after which every agent is truncated), as in the MAPPO / MAMBA
benchmarks. Any ``mpe2`` keyword (``N``, ``local_ratio``, ``max_cycles``, ``continuous_actions``, ...)
can be passed to `make`.
"""

from __future__ import annotations

import pkgutil
import re
from typing import Any

from wmenv.checks import check_int
from wmenv.envs.pettingzoo import PettingZooAdapter, call_checked, import_env_module, split_adapter_kwargs

#: Scenarios where all agents share one objective (the rest are mixed / adversarial).
COOPERATIVE = ("simple_spread", "simple_reference", "simple_speaker_listener", "simple_formation", "simple_line", "simple")


def mpe_names() -> list[str]:
    """The env names ``mpe2`` provides (``simple_spread_v3``, ...)."""
    import mpe2

    return sorted(m.name for m in pkgutil.iter_modules(mpe2.__path__) if re.fullmatch(r"[a-z_]+_v\d+", m.name))


def make_mpe(name: str, **kwargs: Any) -> PettingZooAdapter:
    """Make an ``mpe2`` env, e.g. ``make_mpe("simple_spread_v3", N=3)``.

    Args:
        name: an ``mpe2`` module name (see `mpe_names`).
        **kwargs: ``masked_action`` goes to the adapter; the rest to ``mpe2.<name>.parallel_env``
            (defaults here: ``continuous_actions=False``, ``max_cycles=25``).

    Raises:
        ValueError: unknown ``name`` (the message lists the known ones) or a bad ``max_cycles``.
        TypeError: a keyword the scenario does not accept.
    """
    names = mpe_names()
    if name not in names:
        raise ValueError(f"name: unknown MPE env {name!r}; mpe2 provides {names}")
    own, env_kwargs = split_adapter_kwargs(kwargs)
    if "episode_limit" in own:
        raise TypeError("episode_limit: MPE's limit is max_cycles; pass max_cycles=... instead")
    env_kwargs = {"continuous_actions": False, "max_cycles": 25, **env_kwargs}
    max_cycles = check_int("max_cycles", env_kwargs["max_cycles"], expected="a positive int")
    module = import_env_module(f"mpe2.{name}", "mpe")
    env = call_checked(module.parallel_env, env_kwargs, f"mpe:{name}")
    base = name.rsplit("_v", 1)[0]
    extra = {
        "scenario": name,
        "cooperative": base in COOPERATIVE,
        **{k: v for k, v in env_kwargs.items() if isinstance(v, (bool, int, float, str))},
    }
    return PettingZooAdapter(env, id=f"mpe:{name}", episode_limit=max_cycles, extra=extra, **own)
