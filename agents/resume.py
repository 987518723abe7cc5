"""What a checkpoint holds beyond weights so that a resumed run continues *exactly*: the real env copies mid-episode
(`VecEnv.get_state`), what collection carries between iterations (recurrent states, unfinished episodes) and the
global random streams. A run killed anywhere and resumed from its last checkpoint then gives the same curve, weights
and episode counts as a run never interrupted (same seed, same device).

Written into the checkpoint folder before it is moved in place, so it is as atomic as the rest:
``run_state.pkl`` (a `wmenv.envs.snapshot` of a dict) and ``run_state.json`` (its size and CRC-32, and whether the
envs were saved). Where an env's state cannot be saved (StarCraft II runs in its own process) the rest is still
saved and a resumed run restarts the env copies from fresh episodes: resume is then statistical, not exact, and the
run says so when it resumes.
"""

from __future__ import annotations

import json
import random
import warnings
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wmenv.envs.snapshot import SnapshotError, restore, snapshot
from wmenv.tensor_ops import to_device

RUN_STATE = "run_state.pkl"
"""The snapshot's file name in a checkpoint folder; ``run_state.json`` beside it describes it."""
RUN_STATE_FORMAT = 1


def global_rng_state() -> dict[str, Any]:
    """Python's, NumPy's and torch's global random streams (what `agents.train.seed_everything` seeds), with every
    CUDA device's where this process has initialised CUDA (dropout and unseeded draws on a GPU use those; ``None``
    otherwise, so a CPU run never starts CUDA to save it)."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(), "cuda": cuda}


def set_global_rng_state(state: dict[str, Any]) -> None:
    """Continue the global random streams `global_rng_state` saved (torch's state back on the CPU, where it lives,
    should a run state have been loaded onto a GPU). The CUDA streams continue where this machine has as many CUDA
    devices as the saving one; elsewhere (a GPU run resumed on a CPU, say) a warning says the resume is not exact.
    Run states from before CUDA streams were saved have no ``"cuda"`` entry."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda")
    if cuda is None:
        return
    have = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if have != len(cuda):
        warnings.warn(
            f"the run state holds {len(cuda)} CUDA random stream(s) but this machine has {have} CUDA device(s): "
            "they are not restored, so draws on a GPU (dropout) differ from the unbroken run's",
            stacklevel=2,
        )
        return
    torch.cuda.set_rng_state_all([s.cpu() for s in cuda])


def save_run_state(folder: str | Path, vec: Any, **parts: Any) -> None:
    """Write ``vec``'s env copies, the global random streams and ``parts`` (tensors moved to the CPU) into the
    checkpoint ``folder``. An env whose state cannot be saved is recorded as such, with the reason; ``vec`` None: the
    run has no env copies here (an overlapped collection's worker holds them, saved in ``parts``)."""
    folder = Path(folder)
    try:
        envs, why_not = (None, "no env copies in this process") if vec is None else (vec.get_state(), None)
    except SnapshotError as e:
        envs, why_not = None, str(e)
    data = snapshot({"envs": envs, "rng": global_rng_state(), **to_device(parts, "cpu")})
    (folder / RUN_STATE).write_bytes(data)
    info = {"format": RUN_STATE_FORMAT, "bytes": len(data), "crc32": zlib.crc32(data), "envs": why_not or "saved"}
    (folder / "run_state.json").write_text(json.dumps(info))


def load_run_state(folder: str | Path, device: torch.device | str = "cpu") -> dict[str, Any] | None:
    """The run state `save_run_state` wrote into ``folder`` (tensors on ``device``), or None for a checkpoint from
    before run states (it resumes with fresh episodes). ``["envs"]`` is None where the envs could not be saved, and
    ``["why_not"]`` then says why.

    Raises:
        ValueError: the run state is truncated, corrupt or of another format (the message names the file).
    """
    folder = Path(folder)
    if not (folder / "run_state.json").is_file():
        return None
    try:
        info = json.loads((folder / "run_state.json").read_text())
        data = (folder / RUN_STATE).read_bytes()
        if info.get("format") != RUN_STATE_FORMAT:
            raise ValueError(f"format {info.get('format')!r}, expected {RUN_STATE_FORMAT}")
        if (len(data), zlib.crc32(data)) != (info["bytes"], info["crc32"]):
            raise ValueError(f"{len(data)} bytes with CRC-32 {zlib.crc32(data)}, expected {info['bytes']} / {info['crc32']}")
        state = restore(data)
    except (OSError, json.JSONDecodeError, KeyError, AttributeError, SnapshotError, ValueError) as e:
        raise ValueError(f"path: {folder / RUN_STATE} is not a readable run state (corrupt checkpoint?): {e}") from e
    state["why_not"] = None if info["envs"] == "saved" else info["envs"]
    return to_device(state, device)


def resume_envs(vec: Any, state: dict[str, Any] | None) -> bool:
    """Put ``vec``'s copies back where the checkpoint's run state left them and continue the global random streams;
    False (and a printed note saying why the resume is statistical) where the state holds no envs."""
    if state is not None:
        set_global_rng_state(state["rng"])
    if state is None or state["envs"] is None:
        why = "its checkpoint predates run states" if state is None else state["why_not"]
        print(f"resume is statistical, not exact: the real envs restart from fresh episodes ({why})")
        return False
    vec.set_state(state["envs"])
    return True
