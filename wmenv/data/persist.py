"""The replay file format and its atomic writer.

A replay file is one safetensors file (no pickle): the arrays under string names, plus a metadata
dict of strings holding

* ``format`` = ``"wmenv.replay"`` and ``format_version`` (an integer as a string);
* ``meta``: JSON written by the caller (spec description, config, schema, ...);
* ``crc32``: JSON name -> CRC-32 of each array's bytes, so flipped bits are caught on load
  (safetensors itself checks the header and the sizes, not the contents);
* ``meta_crc32``: CRC-32 of ``meta`` and ``crc32`` together, so a flipped bit in the header's text is caught too
  (optional on read: files written before it have none).

A replay saved incrementally (`EpisodeReplay.save_segments`) is a folder of such files, one per
save with the episodes new since the previous one, plus a JSON manifest naming the segments (each
with a random ``uid`` that its file's ``meta`` repeats, so a segment replaced by another run is caught).

Writes go to a temporary file in the target's directory, are fsynced and then renamed over the
target with `os.replace`, so a crash at any point leaves either the old file or the new one.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import zlib
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import safetensors.numpy
from safetensors import safe_open

FORMAT = "wmenv.replay"
FORMAT_VERSION = 1
_CHUNK = 1 << 26  # 64 MiB per write call


def _write_all(f: BinaryIO, data: bytes) -> None:
    """Write ``data`` to ``f`` in chunks (the step a crash can interrupt; tests patch it)."""
    view = memoryview(data)
    for i in range(0, len(view), _CHUNK):
        f.write(view[i : i + _CHUNK])


def temporary_name(name: str) -> tuple[str, str]:
    """(prefix, suffix) of the temporary file or folder an atomic write of ``name`` goes through (`tempfile`'s
    ``mkstemp`` / ``mkdtemp``), which `remove_temporaries` recognises."""
    return f".{name}.", ".tmp"


def remove_temporaries(folder: str | os.PathLike[str]) -> list[str]:
    """Delete what writes a kill interrupted left in ``folder`` (hidden ``.*.tmp`` files and folders of
    `atomic_write` and checkpoint writes). Only for a folder no other process is writing to.

    Returns:
        The names removed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = [p for p in folder.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp")]
    for p in stale:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    return sorted(p.name for p in stale)


def atomic_write(path: str | os.PathLike[str], data: bytes) -> None:
    """Replace ``path`` by ``data`` atomically: temp file in the same directory, fsync, `os.replace`.

    On any error the temp file is removed and the previous ``path`` (if any) is untouched.
    """
    path = Path(path)
    prefix, suffix = temporary_name(path.name)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=prefix, suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            _write_all(f, data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open directories
        return
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _crc(x: np.ndarray) -> int:
    return zlib.crc32(np.ascontiguousarray(x).view(np.uint8).reshape(-1))


def _header_crc(metadata: dict[str, str]) -> str:
    """``meta_crc32``: the CRC-32 of the header's ``meta`` and ``crc32`` texts together."""
    return str(zlib.crc32((metadata.get("meta", "") + metadata.get("crc32", "")).encode()))


def write(path: str | os.PathLike[str], arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> int:
    """Atomically write ``arrays`` and the JSON-able ``meta`` as a replay file at ``path``; returns the bytes written."""
    arrays = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "meta": json.dumps(meta),
        "crc32": json.dumps({k: _crc(v) for k, v in arrays.items()}),
    }
    metadata["meta_crc32"] = _header_crc(metadata)
    data = safetensors.numpy.save(arrays, metadata=metadata)
    atomic_write(path, data)
    return len(data)


def read(path: str | os.PathLike[str]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read a replay file written by `write`.

    Returns:
        arrays: name -> array; meta: the caller's JSON metadata.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: not a safetensors file, truncated or corrupt (checksum mismatch), not a wmenv
            replay, or written in another format version.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"path: no replay file at {str(path)!r}")
    try:
        with safe_open(str(path), framework="np") as f:
            metadata = f.metadata() or {}
            arrays = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for broken headers and sizes
        raise ValueError(f"path: {str(path)!r} is not a readable replay file (corrupt or truncated): {e}") from e
    if metadata.get("format") != FORMAT:
        raise ValueError(
            f"path: {str(path)!r} is not a wmenv replay file: expected format {FORMAT!r}, got {metadata.get('format')!r}"
        )
    if metadata.get("format_version") != str(FORMAT_VERSION):
        raise ValueError(
            f"path: {str(path)!r} has replay format version {metadata.get('format_version')!r}; "
            f"this wmenv reads version {FORMAT_VERSION}"
        )
    stored = metadata.get("meta_crc32")  # files written before it was added have none
    if stored is not None and stored != _header_crc(metadata):
        raise ValueError(f"path: {str(path)!r} is corrupt: checksum mismatch in its metadata")
    try:
        meta, crcs = json.loads(metadata["meta"]), json.loads(metadata["crc32"])
    except (KeyError, json.JSONDecodeError) as e:
        raise ValueError(f"path: {str(path)!r} has corrupt replay metadata: {e}") from e
    if set(crcs) != set(arrays):
        raise ValueError(f"path: {str(path)!r} is corrupt: arrays {sorted(arrays)} but checksums for {sorted(crcs)}")
    bad = [k for k, v in arrays.items() if _crc(v) != crcs[k]]
    if bad:
        raise ValueError(f"path: {str(path)!r} is corrupt: checksum mismatch in arrays {bad}")
    return arrays, meta
