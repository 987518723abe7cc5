"""Imaginary environments inside learned world models: `DreamVecEnv` (batched) and `DreamEnv` (PettingZoo)."""

from wmenv.dream.env import DreamEnv
from wmenv.dream.gym import DreamGymEnv, DreamSB3VecEnv
from wmenv.dream.vec import DreamStep, DreamVecEnv

__all__ = ["DreamEnv", "DreamGymEnv", "DreamSB3VecEnv", "DreamStep", "DreamVecEnv"]
