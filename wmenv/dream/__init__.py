"""Imaginary environments inside learned world models: `DreamVecEnv` (batched) and `DreamEnv` (PettingZoo), and MAG's
planned imagination (`MAGPlanner`)."""

from wmenv.dream.env import DreamEnv
from wmenv.dream.gym import DreamGymEnv, DreamSB3VecEnv
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
