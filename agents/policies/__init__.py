"""Decentralized MAPPO actors behind one recurrent interface (`RecurrentPolicy`)."""

from agents.policies.base import (
    PolicyState,
    RecurrentPolicy,
    index_state,
    log_prob_entropy,
    mask_logits,
    reset_state,
    sample_actions,
)
from agents.policies.gru import GRUPolicy, GRUPolicyConfig

__all__ = [
    "GRUPolicy",
    "GRUPolicyConfig",
    "PolicyState",
    "RecurrentPolicy",
    "index_state",
    "log_prob_entropy",
    "mask_logits",
    "reset_state",
    "sample_actions",
]
