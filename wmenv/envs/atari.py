"""Atari 2600 games (ale-py's Arcade Learning Environment, ROMs included) as one-agent parallel envs.

``make("atari:Pong")`` plays ``ALE/Pong-v5`` with the preprocessing DRAMA's code runs (realwenlongwang/drama
``train.py``; the same as DreamerV3's and STORM's Atari100k setting): the game's minimal action set, sticky actions
off, no no-op starts, each action repeated for 4 frames and the maximum of the last two frames kept, resized to
64 × 64 RGB with area interpolation, no frame stacking, no reward clipping. The episode ends when the game ends
(or at the v5 limit of 108,000 frames); each step's info carries ``lives`` and ``life_loss`` (the lives count
dropped on this step), which DRAMA's world model learns as a termination.

Observations reach the learner flattened as (64·64·3,) values in [0, 255] in (H, W, C) order (`GymAdapter`);
``spec.extra["frame_shape"]`` is (H, W, C). Install with ``pip install "wmenv[atari]"`` (ale-py and OpenCV).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from wmenv.checks import check_int, check_unit_interval

INSTALL_ATARI = 'pip install "wmenv[atari]"'


@dataclass(frozen=True)
class AtariConfig:
    """Preprocessing of an ``atari:<Game>`` env (defaults: DRAMA's, i.e. Atari100k's)."""

    frame_skip: int = 4
    """Frames each action is repeated for; the observation is the maximum of the last two (flicker removal)."""
    screen_size: int = 64
    """Side of the square observation after area-interpolated resizing."""
    grayscale: bool = False
    """One luminance channel instead of RGB."""
    sticky_actions: float = 0.0
    """Probability that the emulator repeats the previous action instead (ALE's ``repeat_action_probability``;
    the v5 default is 0.25, DRAMA and Atari100k use 0)."""
    full_action_space: bool = False
    """All 18 joystick actions instead of the game's minimal set."""
    noop_max: int = 0
    """Up to this many no-op actions after each reset (0: none, as DRAMA)."""
    terminal_on_life_loss: bool = False
    """End the episode when a life is lost (default False: it is recorded in ``info["life_loss"]``)."""

    def __post_init__(self) -> None:
        check_int("AtariConfig.frame_skip", self.frame_skip)
        check_int("AtariConfig.screen_size", self.screen_size)
        check_int("AtariConfig.noop_max", self.noop_max, 0)
        check_unit_interval("AtariConfig.sticky_actions", self.sticky_actions, what="a probability")


def _imports() -> tuple[Any, Any]:
    """``(gymnasium, ale_py)`` with the ALE envs registered, or an ImportError saying how to install them."""
    try:
        import ale_py
        import cv2  # noqa: F401 - gymnasium's AtariPreprocessing resizes with it
        import gymnasium as gym
    except ImportError as e:
        raise ImportError(f"atari envs need ale-py and OpenCV ({e.name} is missing); install with {INSTALL_ATARI}") from e
    gym.register_envs(ale_py)
    return gym, ale_py


def _life_loss_wrapper(gym: Any) -> type:
    class LifeLoss(gym.Wrapper):
        """Adds ``info["life_loss"]``: whether the lives count dropped on this step."""

        def reset(self, **kwargs: Any) -> tuple[Any, dict]:
            obs, info = self.env.reset(**kwargs)
            self.lives = int(info["lives"])
            return obs, {**info, "life_loss": False}

        def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
            obs, reward, terminated, truncated, info = self.env.step(action)
            lives = int(info["lives"])
            lost, self.lives = lives < self.lives, lives
            return obs, reward, terminated, truncated, {**info, "life_loss": lost}

    return LifeLoss


def make_atari(game: str, **kwargs: Any):  # -> GymAdapter
    """``atari:<Game>`` (e.g. ``Pong``, ``Boxing``, the names of ``ALE/<Game>-v5``) as a one-agent parallel env.

    Args:
        game: the ALE game name.
        **kwargs: `AtariConfig` fields (``frame_skip``, ``screen_size``, ...); ``masked_action`` goes to `GymAdapter`.

    Raises:
        ImportError: ale-py or OpenCV missing (naming the extra to install).
        ValueError: an unknown game, or a bad preprocessing setting.
    """
    from wmenv.envs.gym import GymAdapter

    own = {k: kwargs.pop(k) for k in ("masked_action",) if k in kwargs}
    unknown = sorted(set(kwargs) - set(AtariConfig.__dataclass_fields__))
    if unknown:
        raise TypeError(f"make_atari: unknown settings {unknown}; expected AtariConfig fields or masked_action")
    cfg = AtariConfig(**kwargs)
    gym, _ = _imports()
    name = f"ALE/{game}-v5"
    try:
        env = gym.make(name, frameskip=1, repeat_action_probability=cfg.sticky_actions,
                       full_action_space=cfg.full_action_space)  # fmt: skip
    except gym.error.Error as e:
        v5 = [i for i in gym.registry if i.startswith("ALE/") and i.endswith("-v5")]
        games = sorted(i.removeprefix("ALE/").removesuffix("-v5") for i in v5)
        raise ValueError(f"game: {game!r} is not an ALE game ({e}); expected one of {games}") from e
    env = gym.wrappers.AtariPreprocessing(
        env, noop_max=cfg.noop_max, frame_skip=cfg.frame_skip, screen_size=cfg.screen_size,
        terminal_on_life_loss=cfg.terminal_on_life_loss, grayscale_obs=cfg.grayscale, scale_obs=False,
    )  # fmt: skip
    env = _life_loss_wrapper(gym)(env)
    shape = (cfg.screen_size, cfg.screen_size) + (() if cfg.grayscale else (3,))
    return GymAdapter(env, id=f"atari:{game}", extra={"frame_shape": shape, "atari": dataclasses.asdict(cfg)}, **own)


def frames(obs: np.ndarray, spec: Any) -> np.ndarray:
    """Flat observations (..., D) of an ``atari:`` spec back to uint8 frames (..., H, W[, C])."""
    shape = tuple(spec.extra["frame_shape"])
    if obs.shape[-1] != int(np.prod(shape)):
        raise ValueError(f"obs: expected a last axis of {int(np.prod(shape))} (frames of {shape}), got {obs.shape}")
    return np.asarray(obs).reshape(*obs.shape[:-1], *shape).astype(np.uint8)
