"""wmenv: learned multi-agent world models as imaginary PettingZoo environments."""

from wmenv import data, envs
from wmenv.data import EpisodeRecorder, EpisodeReplay, ReplayConfig
from wmenv.dream import DreamEnv, DreamVecEnv
from wmenv.envs import EnvSpec, make
from wmenv.envs.vector import VecEnv, VecStep, WorkerError
from wmenv.latent import LatentEnv, LatentGymEnv

__version__ = "0.1.0"

__all__ = [
    "DreamEnv",
    "DreamVecEnv",
    "EnvSpec",
    "EpisodeRecorder",
    "EpisodeReplay",
    "LatentEnv",
    "LatentGymEnv",
    "ReplayConfig",
    "VecEnv",
    "VecStep",
    "WorkerError",
    "__version__",
    "data",
    "envs",
    "make",
]
