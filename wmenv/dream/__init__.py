"""Imaginary environments inside learned world models: `DreamVecEnv` (batched) and `DreamEnv` (PettingZoo), and MAG's
planned imagination (`MAGPlanner`)."""

from typing import Any

from wmenv.dream.env import DreamEnv
from wmenv.dream.gym import DreamGymEnv
from wmenv.dream.mag import ErrorPredictor, ErrorPredictorConfig, MAGConfig, MAGPlanner, fit_error_predictor
from wmenv.dream.vec import DreamStep, DreamVecEnv

__all__ = [
    "DreamEnv",
    "DreamGymEnv",
    "DreamSB3VecEnv",
    "DreamStep",
    "DreamVecEnv",
    "ErrorPredictor",
    "ErrorPredictorConfig",
    "MAGConfig",
    "MAGPlanner",
    "fit_error_predictor",
]


def __getattr__(name: str) -> Any:
    """``DreamSB3VecEnv`` on first use: importing stable-baselines3 takes ≈ 0.5 s that other users need not pay."""
    if name == "DreamSB3VecEnv":
        from wmenv.dream.sb3 import DreamSB3VecEnv

        return DreamSB3VecEnv
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
