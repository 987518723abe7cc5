"""Acting on real envs through a world model's execution-time filter (latent agents)."""

from wmenv.latent.env import LatentEnv, LatentGymEnv, check_same_spec
from wmenv.latent.filter import AgentFilters

__all__ = ["AgentFilters", "LatentEnv", "LatentGymEnv", "check_same_spec"]
