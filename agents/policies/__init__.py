"""Decentralized MAPPO actors behind one recurrent interface (`RecurrentPolicy`)."""

from agents.policies.base import (
    PolicyState,
    RecurrentPolicy,
    index_state,
    log_prob_entropy,
    mask_logits,
    masked_mean,
    reset_state,
    sample_actions,
)
from agents.policies.gru import GRUPolicy, GRUPolicyConfig
from agents.policies.mamba import MambaPolicy, MambaPolicyConfig
from agents.policies.sp_mamba import SPMambaConfig, SPMambaPolicy

POLICIES = ("gru", "mamba", "sp-mamba")
"""The kinds `make_policy` builds."""


def make_policy(
    kind: str, obs_dim: int, n_actions: int, config: GRUPolicyConfig | MambaPolicyConfig | SPMambaConfig | None = None
) -> RecurrentPolicy:
    """The actor of ``kind`` ("gru", "mamba" or "sp-mamba") for D = ``obs_dim`` and A = ``n_actions``.

    Raises:
        ValueError: an unknown kind (the message lists the known ones).
        TypeError: a config of another policy kind.
    """
    builders = {"gru": GRUPolicy, "mamba": MambaPolicy, "sp-mamba": SPMambaPolicy}
    if kind not in builders:
        raise ValueError(f"kind: expected one of {list(POLICIES)}, got {kind!r}")
    return builders[kind](obs_dim, n_actions, config)


__all__ = [
    "GRUPolicy",
    "GRUPolicyConfig",
    "MambaPolicy",
    "MambaPolicyConfig",
    "POLICIES",
    "SPMambaConfig",
    "SPMambaPolicy",
    "make_policy",
    "masked_mean",
    "PolicyState",
    "RecurrentPolicy",
    "index_state",
    "log_prob_entropy",
    "mask_logits",
    "reset_state",
    "sample_actions",
]
