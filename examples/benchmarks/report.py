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
