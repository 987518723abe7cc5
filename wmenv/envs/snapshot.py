"""Snapshots of a running env's whole state (positions, step counters, its random streams) as bytes.

A resumed training run restores its env copies from the snapshot saved with its checkpoint, so it continues the very
episodes the interrupted run was in, with the same random draws: its curve equals an uninterrupted run's.

Pickling an env object is not enough on its own: Gymnasium's and PettingZoo's envs (MPE, MuJoCo, classic control)
inherit `gymnasium.utils.EzPickle`, whose pickle rebuilds a *fresh* env from the constructor's arguments and drops
the state. `snapshot` pickles their attributes instead (with cloudpickle, for the lambdas Flatland and MaMuJoCo keep),
and pygame's render surface and font (which MPE creates even without rendering) by value.
"""

from __future__ import annotations

import io
import pickle
import zlib
from typing import Any

import cloudpickle
from gymnasium.utils.ezpickle import EzPickle


class SnapshotError(ValueError):
    """An object (an env holding a process or a socket, e.g. StarCraft II) whose state cannot be saved as bytes."""


def _blank(cls: type) -> Any:
    return cls.__new__(cls)


def _set_attributes(obj: Any, state: dict[str, Any]) -> None:
    obj.__dict__.update(state)  # not EzPickle.__setstate__, which would rebuild a fresh env


def _surface(size: tuple[int, int], rgba: bytes) -> Any:
    import pygame

    return pygame.image.frombytes(zlib.decompress(rgba), size, "RGBA")


def _font(path: str, size: float) -> Any:
    import pygame.freetype

    if not pygame.freetype.get_init():
        pygame.freetype.init()
    return pygame.freetype.Font(path, size)


def _closed_font() -> None:
    return None


def _atari(attributes: dict[str, Any], emulator: Any) -> Any:
    """An ale-py ``AtariEnv`` rebuilt from its constructor's arguments (which load the ROM with the same settings),
    then given the saved attributes and the emulator's saved state, its random stream included."""
    from ale_py.env import AtariEnv

    env = AtariEnv(*attributes["_ezpickle_args"], **attributes["_ezpickle_kwargs"])
    ale = env.ale
    env.__dict__.update(attributes)
    env.ale = ale
    ale.restoreState(emulator)
    return env


class _StatePickler(cloudpickle.Pickler):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._atari_envs: dict[int, Any] = {}  # id(ALEInterface) -> its AtariEnv, pickled before it

    def reducer_override(self, obj: Any) -> Any:
        module = type(obj).__module__ or ""
        if module.startswith("ale_py") and not isinstance(obj, type):
            return self._reduce_atari(obj)
        if isinstance(obj, EzPickle) and not isinstance(obj, type):
            return _blank, (type(obj),), obj.__dict__, None, None, _set_attributes
        if module.startswith("pygame"):
            import pygame
            import pygame.freetype

            if isinstance(obj, pygame.Surface):
                return _surface, (obj.get_size(), zlib.compress(pygame.image.tobytes(obj, "RGBA"), 1))  # mostly blank
            if isinstance(obj, pygame.freetype.Font):
                try:
                    return _font, (obj.path, obj.size)
                except pygame.error:  # its module was quit (another env's close): unusable here as there
                    return _closed_font, ()
        return super().reducer_override(obj)

    def _reduce_atari(self, obj: Any) -> Any:
        """ale-py's env as its attributes plus the emulator's cloned state; its ``ALEInterface`` (which wrappers such
        as Gymnasium's ``AtariPreprocessing`` also hold) as "the ``ale`` of that env"."""
        from ale_py import ALEInterface
        from ale_py.env import AtariEnv

        if isinstance(obj, AtariEnv):
            self._atari_envs[id(obj.ale)] = obj
            attributes = {k: v for k, v in obj.__dict__.items() if k != "ale"}
            return _atari, (attributes, obj.ale.cloneState(include_rng=True))
        if isinstance(obj, ALEInterface):
            if id(obj) not in self._atari_envs:
                raise TypeError("an ALEInterface outside an ale_py AtariEnv (or met before it) cannot be saved")
            return getattr, (self._atari_envs[id(obj)], "ale")
        return NotImplemented  # ALE's states, actions and other values pickle as they are


_LOADS_BACK: set[type] = set()
"""The types whose first snapshot in this process was loaded back successfully."""


def snapshot(obj: Any) -> bytes:
    """``obj`` (an env, or anything holding envs) with its whole state, as bytes for `restore`.

    The first snapshot of each type in a process is loaded back once, so an object that pickles but does not unpickle
    (JaxMARL's wrappers did: their ``__getattr__`` recursed) fails here, when it is saved, not when a run resumes.

    Raises:
        SnapshotError: something in ``obj`` cannot be pickled (the message names it), or its snapshot does not load.
    """
    buf = io.BytesIO()
    try:
        _StatePickler(buf, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
    except (TypeError, AttributeError, pickle.PicklingError, RecursionError) as e:
        raise SnapshotError(f"obj: the state of a {type(obj).__name__} cannot be saved: {e}") from e
    data = buf.getvalue()
    if type(obj) not in _LOADS_BACK:
        try:
            restore(data)
        except SnapshotError as e:
            what = type(obj).__name__
            raise SnapshotError(f"obj: a {what} pickles but its snapshot does not load back: {e.__cause__!r}") from e
        _LOADS_BACK.add(type(obj))
    return data


def restore(data: bytes) -> Any:
    """The object `snapshot` saved in ``data``. Only for bytes this library wrote (pickle runs code on load).

    Raises:
        TypeError: ``data`` is not bytes.
        SnapshotError: ``data`` is not a readable snapshot (truncated or corrupt).
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data: expected bytes from snapshot(), got {type(data).__name__}")
    try:
        return pickle.loads(data)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means the bytes are not a snapshot
        raise SnapshotError(f"data: {len(data)} bytes are not a readable env snapshot (truncated or corrupt?): {e!r}") from e
