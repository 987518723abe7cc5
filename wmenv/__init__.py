"""wmenv: learned multi-agent world models as imaginary PettingZoo environments."""

from wmenv import envs
from wmenv.envs import EnvSpec, make

__version__ = "0.1.0"

__all__ = ["EnvSpec", "__version__", "envs", "make"]
