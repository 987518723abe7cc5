"""Decentralized MAPPO actors behind one recurrent interface (`RecurrentPolicy`)."""

from agents.policies.base import (
    PolicyState,
    RecurrentPolicy,
    gaussian_log_prob_entropy,
    gaussian_sample,
    index_state,
    log_prob_entropy,
    mask_logits,
    masked_mean,
    reset_state,
    sample_actions,
)
from agents.policies.gru import GRUPolicy, GRUPolicyConfig
from agents.policies.mamba import MambaPolicy, MambaPolicyConfig
from agents.policies.mlp import MLPPolicy, MLPPolicyConfig
from agents.policies.sp_mamba import SPMambaConfig, SPMambaPolicy

PolicyConfig = GRUPolicyConfig | MambaPolicyConfig | SPMambaConfig | MLPPolicyConfig
"""The config of any actor kind."""

POLICY_CONFIGS: dict[str, type] = {
    "gru": GRUPolicyConfig,
    "mamba": MambaPolicyConfig,
    "sp-mamba": SPMambaConfig,
    "mlp": MLPPolicyConfig,
}
"""Actor kind -> its config class; the kinds `make_policy` builds. A learner config holds one field per kind,
named as the kind with ``-`` as ``_`` (see `policy_field`)."""

POLICIES = tuple(POLICY_CONFIGS)
"""The kinds `make_policy` builds: "gru", "mamba", "sp-mamba", "mlp"."""


def policy_field(kind: str) -> str:
    """The name of a learner config's field that holds the architecture of actor ``kind`` ("sp-mamba" -> "sp_mamba")."""
    return kind.replace("-", "_")


def make_policy(kind: str, obs_dim: int, n_actions: int, config: PolicyConfig | None = None) -> RecurrentPolicy:
    """The actor of ``kind`` (one of `POLICIES`) for D = ``obs_dim`` and A = ``n_actions``.

    Raises:
        ValueError: an unknown kind (the message lists the known ones).
        TypeError: a config of another policy kind.
    """
    builders = {"gru": GRUPolicy, "mamba": MambaPolicy, "sp-mamba": SPMambaPolicy, "mlp": MLPPolicy}
    if kind not in builders:
        raise ValueError(f"kind: expected one of {list(POLICIES)}, got {kind!r}")
    return builders[kind](obs_dim, n_actions, config)


__all__ = [
    "GRUPolicy",
    "GRUPolicyConfig",
    "MambaPolicy",
    "MambaPolicyConfig",
    "MLPPolicy",
    "MLPPolicyConfig",
    "POLICIES",
    "POLICY_CONFIGS",
    "PolicyConfig",
    "policy_field",
    "SPMambaConfig",
    "SPMambaPolicy",
    "make_policy",
    "masked_mean",
    "PolicyState",
    "RecurrentPolicy",
    "gaussian_log_prob_entropy",
    "gaussian_sample",
    "index_state",
    "log_prob_entropy",
    "mask_logits",
    "reset_state",
    "sample_actions",
]
