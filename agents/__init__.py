"""Learners on top of wmenv: MAPPO with recurrent policies, a centralized critic, and training loops.

The model-free loop lives in `agents.train` (imported on demand: it pulls in TensorBoard).
"""

from agents.critic import CentralCritic, CriticConfig, ValueNorm
from agents.gae import gae
from agents.mappo import MAPPO, Carry, Episodes, MAPPOConfig, ppo_policy_loss, ppo_value_loss
from agents.policies import GRUPolicy, GRUPolicyConfig, RecurrentPolicy
from agents.storage import Chunks, RolloutStorage

__all__ = [
    "MAPPO",
    "Carry",
    "CentralCritic",
    "Chunks",
    "CriticConfig",
    "Episodes",
    "GRUPolicy",
    "GRUPolicyConfig",
    "MAPPOConfig",
    "RecurrentPolicy",
    "RolloutStorage",
    "ValueNorm",
    "gae",
    "ppo_policy_loss",
    "ppo_value_loss",
]
