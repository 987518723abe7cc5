"""What every benchmark script shares: the machine line and printing (and saving) its one JSON line."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path


def machine() -> str:
    """``"<arch>, <n> CPUs"`` of this machine."""
    return f"{platform.machine()}, {os.cpu_count()} CPUs"


def emit(summary: dict, out: Path | None) -> dict:
    """Print ``summary`` as one JSON line, also write it to ``out`` when given; returns ``summary``."""
    line = json.dumps(summary)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(line + "\n")
    print(line)
    return summary


def load_parts(paths: list[str]) -> list[dict]:
    """Result JSONs of one benchmark to merge; all must be for the same env, env kwargs and step budget.

    Raises:
        ValueError: a file for another env, kwargs or budget, naming it.
    """
    parts = [json.loads(Path(p).read_text()) for p in paths]
    first = parts[0]["summary"]
    key = (first["env_id"], first["env_kwargs"], first["total_steps"])
    for p, part in zip(paths, parts):
        s = part["summary"]
        if (s["env_id"], s["env_kwargs"], s["total_steps"]) != key:
            raise ValueError(f"merge: {p} is for {s['env_id']} {s['env_kwargs']} at {s['total_steps']} steps, "
                             f"expected {key[0]} {key[1]} at {key[2]} steps")  # fmt: skip
    return parts
