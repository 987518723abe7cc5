"""`EpisodeReplay`: whole multi-agent episodes in, ``(B, T, N, ...)`` training windows out.

Glossary: B batch (windows), T window length (rows), N agent slots, E stored episodes, R rows.

Storage is one preallocated ring of ``capacity`` rows per field. Episodes are written back to
back in insertion order (an episode may wrap around the end of the ring), so stored rows always
form one contiguous run, oldest episode first. Adding an episode that does not fit evicts the
oldest whole episodes first. Sampling turns B (episode, start) picks into a (B, T) array of ring
indices and gathers every field with one fancy-indexing call; no Python loop per element.

Streamed collection adds an episode in pieces as its steps arrive (`wmenv.data.episode`). A piece added with
``continues`` = the id of the stored episode it continues is appended to that episode when the episode is the newest
one stored (its rows are then adjacent in the ring; always so for one env copy), so windows run across the joins and
updates can follow every env step; otherwise it is stored as an episode of its own. A stored episode therefore only
grows at its end, and keeps its id (samplers that keep per-row statistics by id see more rows).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import uuid
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wmenv.checks import check_bool
from wmenv.data import persist
from wmenv.data.episode import episode_schema, validate_episode
from wmenv.data.samplers import StartSampler, uniform_starts
from wmenv.envs.spec import EnvSpec

Schema = dict[str, tuple[tuple[int, ...], np.dtype]]
MANIFEST_FORMAT = "wmenv.replay-manifest"


@dataclass
class ReplayConfig:
    """Settings of an `EpisodeReplay`."""

    capacity: int = 1_000_000
    """Most rows held (an episode of T steps has T+1 rows); the oldest whole episodes are evicted to make room."""
    seed: int = 0
    """Seed of the replay's own generator, used by `sample` when no ``generator`` is passed."""
    validate: bool = True
    """Check every added episode with `validate_episode` (when the replay has a spec)."""

    def __post_init__(self) -> None:
        for name in ("capacity", "seed"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise TypeError(f"ReplayConfig.{name}: expected an int, got {v!r} ({type(v).__name__})")
        if self.capacity < 2:
            raise ValueError(f"ReplayConfig.capacity: expected at least 2 rows (one env step), got {self.capacity}")
        check_bool("ReplayConfig.validate", self.validate)


def _positive_int(name: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"{name}: expected an integer >= 1, got {v!r} ({type(v).__name__})")
    if v < 1:
        raise ValueError(f"{name}: expected an integer >= 1, got {v}")
    return int(v)


class EpisodeReplay:
    """A replay of whole episodes with uniform (or pluggable) window sampling and atomic save / load.

    Args:
        config: capacity, seed, validation.
        spec: the env's spec. When given, the standard episode fields must match it (see
            `wmenv.data.episode`) and saved files record ``spec.describe()``. Without it, any fields
            are accepted; the first episode fixes them.
        sampler: picks window starts (default `uniform_starts`).
    """

    def __init__(
        self, config: ReplayConfig | None = None, spec: EnvSpec | None = None, sampler: StartSampler = uniform_starts
    ) -> None:
        if config is None:
            config = ReplayConfig()
        if not isinstance(config, ReplayConfig):
            raise TypeError(f"config: expected a ReplayConfig, got {type(config).__name__}")
        if spec is not None and not isinstance(spec, EnvSpec):
            raise TypeError(f"spec: expected an EnvSpec or None, got {type(spec).__name__}")
        if not callable(sampler):
            raise TypeError(f"sampler: expected a callable StartSampler, got {type(sampler).__name__}")
        self.config, self.spec, self.sampler = config, spec, sampler
        self.spec_description: dict[str, Any] | None = spec.describe() if spec is not None else None
        """What saved files record as the spec (kept from a loaded file when no spec was given)."""
        self._schema: Schema | None = None  # the stored fields
        self._data: dict[str, np.ndarray] = {}
        self._state_from_obs = False  # "state" is the single agent's observation: not stored, rebuilt when read
        self._starts: deque[int] = deque()  # ring index of each episode's row 0, oldest first
        self._lengths: deque[int] = deque()  # rows of each episode
        self._ids: deque[int] = deque()
        self._next_id = 0
        self._rows = 0
        self._head = 0  # ring index the next episode is written at
        self._cache: tuple[np.ndarray, np.ndarray] | None = None  # (lengths, ids) as arrays
        self._segments: list[dict[str, Any]] = []  # what `save_segments` wrote that stored episodes still need
        self._saved_id = 0  # episodes with smaller ids are in a segment already
        self._saved_rows = 0  # rows of episode ``_saved_id - 1`` in a segment (it may have grown since)
        self.generator = torch.Generator().manual_seed(int(config.seed))
        """The generator `sample` uses by default; its state is saved and restored with the replay."""

    # --- sizes ---
    def __len__(self) -> int:
        """Rows stored (T+1 per episode)."""
        return self._rows

    @property
    def num_episodes(self) -> int:
        """Episodes stored."""
        return len(self._lengths)

    @property
    def num_steps(self) -> int:
        """Env steps stored (rows minus one per episode)."""
        return self._rows - len(self._lengths)

    @property
    def episode_ids(self) -> np.ndarray:
        """(E,) int64 ids of the stored episodes, oldest first (ids count every episode ever added)."""
        return self._arrays()[1].copy()

    @property
    def episode_lengths(self) -> np.ndarray:
        """(E,) int64 rows of each stored episode, oldest first."""
        return self._arrays()[0].copy()

    @property
    def whole_episodes(self) -> np.ndarray:
        """(E,) bool, oldest first: whether a stored entry is a whole episode (its first row ``is_first``, its last
        ``is_last``) rather than a streamed piece of one; all True in a replay without those fields."""
        if not {"is_first", "is_last"} <= set(self._data):
            return np.ones(self.num_episodes, dtype=bool)
        lengths, _ = self._arrays()
        last = (np.fromiter(self._starts, np.int64, len(self._starts)) + lengths - 1) % self.config.capacity
        return self._starts_episodes() & self._data["is_last"][last]

    def _starts_episodes(self) -> np.ndarray:
        """(E,) bool, oldest first: whether a stored entry's first row is its episode's first (``is_first``), not a
        streamed piece continuing one; all True in a replay without that field."""
        if "is_first" not in self._data:
            return np.ones(self.num_episodes, dtype=bool)
        return self._data["is_first"][np.fromiter(self._starts, np.int64, len(self._starts))]

    @property
    def schema(self) -> Schema | None:
        """Field -> (shape of one row, dtype), fixed by the spec and the first episode; None before."""
        return None if self._schema is None else self._fields()

    def _fields(self) -> Schema:
        """Every field an episode has: the stored ones, plus a "state" rebuilt from the observation."""
        if not self._state_from_obs:
            return dict(self._schema)
        shape, dtype = self._schema["obs"]
        return {**self._schema, "state": (shape[1:], dtype)}

    def _with_state(self, fields: dict[str, Any]) -> dict[str, Any]:
        """``fields`` (rows of stored fields, (..., 1, D) observations) with the state rebuilt where it is not stored."""
        return {**fields, "state": fields["obs"][..., 0, :]} if self._state_from_obs else fields

    def _arrays(self) -> tuple[np.ndarray, np.ndarray]:
        if self._cache is None:
            self._cache = (
                np.fromiter(self._lengths, np.int64, len(self._lengths)),
                np.fromiter(self._ids, np.int64, len(self._ids)),
            )
        return self._cache

    # --- adding ---
    def add(self, episode: Mapping[str, Any], continues: int | None = None) -> int:
        """Store one whole episode, or a piece of one (streamed collection), evicting the oldest ones if it does not fit.

        Args:
            episode: field -> (R, ...) array, all fields with the same R >= 1 rows (an episode or piece in the
                format of `wmenv.data.episode` when the replay has a spec; extra fields allowed). A piece that
                continues an episode does not start with a reset.
            continues: for a piece, the id `add` returned for the earlier rows of its episode. When that episode is
                the newest one stored and the two fit in the replay together, the piece is appended to it (windows
                then run across the join); otherwise, or with None, the piece is stored as an episode of its own and
                windows do not span it and its neighbours (with ``cross_episodes`` they run from it into a
                following episode's start, never into the piece).

        Returns:
            The id of the stored episode that holds the rows: ``continues`` where they were appended, else a new id.

        Raises:
            ValueError: malformed fields, an episode longer than the capacity, or ``continues`` given for a piece
                that starts an episode (``is_first``) or for an episode whose last stored row ended it (``is_last``).
        """
        ep = self._check_episode(episode)
        rows = next(iter(ep.values())).shape[0]
        cap = self.config.capacity
        if rows > cap:
            raise ValueError(f"episode: {rows} rows do not fit in a replay of capacity {cap} rows")
        grow = continues is not None and self._appends(ep, continues, rows)
        if self._schema is None:
            # A single agent whose global state is its own observation (one-agent Gymnasium and Atari envs): keep one
            # copy (a 64x64 RGB step: 12 KB instead of 24 KB).
            spec = self.spec
            self._state_from_obs = bool(
                spec is not None and spec.n_agents == 1 and spec.state_space == spec.observation_spaces[spec.agents[0]]
                and "state" in ep and np.array_equal(ep["state"], ep["obs"][:, 0])
            )  # fmt: skip
            self._schema = {k: (v.shape[1:], v.dtype) for k, v in ep.items() if k != "state" or not self._state_from_obs}
            self._data = {k: np.zeros((cap, *shape), dtype) for k, (shape, dtype) in self._schema.items()}
        if self._state_from_obs and not np.array_equal(ep["state"], ep["obs"][:, 0]):
            row = int(np.argwhere(ep["state"] != ep["obs"][:, 0])[0][0])
            raise ValueError(
                f"episode['state']: expected the single agent's observation (as in this replay's earlier episodes), "
                f"got other values at row {row}"
            )
        self._write(ep, rows, grow)
        return int(continues) if grow else self._next_id - 1

    def _appends(self, ep: dict[str, np.ndarray], continues: Any, rows: int) -> bool:
        """Whether the piece ``ep`` goes at the end of stored episode ``continues`` (checked as `add` documents)."""
        if isinstance(continues, bool) or not isinstance(continues, (int, np.integer)):
            raise TypeError(f"continues: expected an episode id (int) or None, got {continues!r}")
        if "is_first" in ep and ep["is_first"][0]:
            raise ValueError(f"continues: episode {continues} given, but the piece starts an episode (is_first row 0)")
        if not self._ids or self._ids[-1] != continues:
            return False  # not the newest episode (another copy's rows came between) or evicted: stored on its own
        last = (self._starts[-1] + self._lengths[-1] - 1) % self.config.capacity
        if "is_last" in self._data and self._data["is_last"][last]:
            raise ValueError(f"continues: episode {continues} ended at its last stored row (is_last); a piece cannot "
                             "continue it")  # fmt: skip
        return self._lengths[-1] + rows <= self.config.capacity

    def _write(self, ep: dict[str, np.ndarray], rows: int, grow: bool) -> None:
        """Write ``rows`` rows at the head, evicting the oldest episodes first (never the newest when it ``grow``s),
        as a new episode or at the end of the newest one."""
        cap = self.config.capacity
        while self._rows + rows > cap:
            self._rows -= self._lengths.popleft()
            self._starts.popleft()
            self._ids.popleft()
        first = min(rows, cap - self._head)  # rows before the ring wraps
        for k, v in self._data.items():
            v[self._head : self._head + first] = ep[k][:first]
            v[: rows - first] = ep[k][first:]
        if grow:
            self._lengths[-1] += rows
        else:
            self._starts.append(self._head)
            self._lengths.append(rows)
            self._ids.append(self._next_id)
            self._next_id += 1
        self._rows += rows
        self._head = (self._head + rows) % cap
        self._cache = None

    def _check_episode(self, episode: Mapping[str, Any]) -> dict[str, np.ndarray]:
        if not isinstance(episode, Mapping) or not episode:
            raise TypeError(f"episode: expected a non-empty dict field -> array, got {episode!r:.80}")
        ep: dict[str, np.ndarray] = {}
        for k, v in episode.items():
            if not isinstance(k, str):
                raise TypeError(f"episode: expected str keys, got {k!r}")
            if k == "reset":
                raise ValueError("episode: the field name 'reset' is reserved for the reset flags `sample` adds")
            arr = v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)
            if arr.ndim == 0:
                raise ValueError(f"episode[{k!r}]: expected an array with one row per step, got a scalar")
            try:
                torch.from_numpy(arr[:0].copy())
            except TypeError as e:
                raise TypeError(f"episode[{k!r}]: dtype {arr.dtype} has no torch equivalent") from e
            ep[k] = arr
        rows = {k: v.shape[0] for k, v in ep.items()}
        if len(set(rows.values())) != 1:
            raise ValueError(f"episode: expected every field to have the same number of rows, got {rows}")
        if self.spec is not None and self.config.validate:
            validate_episode(ep, self.spec)
        expected = None if self._schema is None else self._fields()
        if expected is None and self.spec is not None:
            expected = {**{k: (v.shape[1:], v.dtype) for k, v in ep.items()}, **episode_schema(self.spec)}
        if expected is not None:
            if set(ep) != set(expected):
                raise ValueError(
                    f"episode: expected fields {sorted(expected)}; missing {sorted(set(expected) - set(ep))}, "
                    f"unexpected {sorted(set(ep) - set(expected))}"
                )
            for k, (shape, dtype) in expected.items():
                if ep[k].shape[1:] != shape or ep[k].dtype != dtype:
                    raise ValueError(
                        f"episode[{k!r}]: expected rows of shape {shape} {dtype}, got {ep[k].shape[1:]} {ep[k].dtype}"
                    )
        return ep

    def episode(self, index: int, fields: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """A copy of stored episode ``index`` (0 = oldest, -1 = newest): field -> (R, ...) array; only ``fields`` if
        given (e.g. the rewards of an Atari episode without copying its frames)."""
        e = self.num_episodes
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not -e <= index < e:
            raise IndexError(f"index: expected an integer in [{-e}, {e}), got {index!r}")
        if fields is not None:
            unknown = sorted(set(fields) - set(self._fields()))
            if isinstance(fields, str) or unknown:
                raise ValueError(f"fields: expected names among {sorted(self._fields())}, got {fields!r}")
        idx = (self._starts[index] + np.arange(self._lengths[index])) % self.config.capacity
        wanted = set(self._data if fields is None else fields)
        if self._state_from_obs and "state" in wanted:
            wanted.add("obs")
        out = {k: v[idx] for k, v in self._data.items() if k in wanted}
        out = self._with_state(out) if "obs" in out else out
        return out if fields is None else {k: out[k] for k in fields}

    # --- sampling ---
    def _generator(self, generator: torch.Generator | int | None) -> torch.Generator:
        if generator is None:
            return self.generator
        if isinstance(generator, torch.Generator):
            return generator
        if isinstance(generator, (int, np.integer)) and not isinstance(generator, bool):
            return torch.Generator().manual_seed(int(generator))
        raise TypeError(f"generator: expected a torch.Generator, an int seed or None, got {type(generator).__name__}")

    def sample_indices(
        self,
        batch_size: int,
        length: int,
        cross_episodes: bool = False,
        generator: torch.Generator | int | None = None,
        sampler: StartSampler | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Pick B windows of T rows (starts from ``sampler``, default the replay's own); the index half of `sample`.

        Returns:
            index: (B, T) int64 ring indices into the stored fields.
            reset: (B, T) bool, True where a row is an episode's first row.
        """
        batch_size, length = _positive_int("batch_size", batch_size), _positive_int("length", length)
        check_bool("cross_episodes", cross_episodes)
        gen = self._generator(generator)
        if self._rows == 0:
            raise ValueError("sample: the replay is empty; add episodes first")
        lengths, ids = self._arrays()
        ep_start = np.cumsum(lengths) - lengths  # (E,) first row of each episode in the stored run
        if cross_episodes:
            if length > self._rows:
                raise ValueError(f"length: requested windows of {length} rows but the replay holds only {self._rows} rows")
            run_end = self._run_ends(ep_start)
            valid = np.clip(run_end - length + 1 - ep_start, 0, lengths)  # starts that keep the window in its run
            if not valid.any():
                raise ValueError(
                    f"length: requested windows of {length} rows but the longest run of stored episodes joined at "
                    f"episode starts has {int((run_end - ep_start).max())} rows (pieces of episodes still streaming "
                    "from several env copies are stored apart, and windows do not run into them)"
                )
        else:
            valid = np.clip(lengths - length + 1, 0, None)
            if not valid.any():
                raise ValueError(
                    f"length: requested windows of {length} rows but the longest stored episode has {int(lengths.max())} rows "
                    "(pass cross_episodes=True to span episode boundaries)"
                )
        episode, start = (sampler or self.sampler)(valid, ids, length, batch_size, gen)
        episode, start = np.asarray(episode, dtype=np.int64), np.asarray(start, dtype=np.int64)
        if episode.shape != (batch_size,) or start.shape != (batch_size,):
            raise ValueError(f"sampler: expected two ({batch_size},) arrays, got shapes {episode.shape} and {start.shape}")
        ok = (episode >= 0) & (episode < len(lengths))
        if not ok.all() or (start < 0).any() or (start >= valid[episode]).any():
            raise ValueError("sampler: returned an episode index or start row outside the valid starts")
        rows = (ep_start[episode] + start)[:, None] + np.arange(length)  # (B, T) positions in the stored run
        index = (self._starts[0] + rows) % self.config.capacity
        if "is_first" in self._data:  # the episode format: pieces that continue an episode do not start with a reset
            reset = self._data["is_first"][index]
        elif cross_episodes:
            owner = np.searchsorted(ep_start, rows, side="right") - 1  # (B, T) episode of each row
            reset = rows == ep_start[owner]
        else:
            reset = (start[:, None] + np.arange(length)) == 0
        return index, reset

    def _run_ends(self, ep_start: np.ndarray) -> np.ndarray:
        """(E,) the end row (exclusive, in the stored run) of the run of entries each entry belongs to: entries
        joined where the next one starts an episode. A piece that continues an episode (no ``is_first`` at its first
        row; stored apart when several env copies stream) follows rows of another env copy, so a run ends before it."""
        starts_run = ~self._starts_episodes()
        starts_run[0] = True
        first_rows = ep_start[starts_run]
        return np.append(first_rows[1:], self._rows)[np.cumsum(starts_run) - 1]

    def gather(
        self, index: np.ndarray, reset: np.ndarray | None = None, device: torch.device | str | None = None
    ) -> dict[str, torch.Tensor]:
        """Fields at ring ``index`` (B, T) as tensors (B, T, ...), plus ``reset`` (B, T) if given. Observations and
        state stored as uint8 frames come out as float32 (after the move to ``device``: the copy moves bytes)."""
        out = {k: torch.from_numpy(v[index]) for k, v in self._data.items()}
        if reset is not None:
            out["reset"] = torch.from_numpy(np.asarray(reset, dtype=bool))
        if device is not None:
            out = {k: v.to(device, non_blocking=True) for k, v in out.items()}
        out.update({k: out[k].float() for k in ("obs", "state") if k in out and out[k].dtype == torch.uint8})
        return self._with_state(out)  # a state rebuilt from the observation is moved and converted once, with it

    def sample(
        self,
        batch_size: int,
        length: int,
        cross_episodes: bool = False,
        generator: torch.Generator | int | None = None,
        device: torch.device | str | None = None,
        sampler: StartSampler | None = None,
    ) -> dict[str, torch.Tensor]:
        """Sample B windows of T consecutive rows.

        Args:
            batch_size: B.
            length: T, rows per window.
            cross_episodes: let windows run from one episode into the next (in insertion order; ``reset`` marks
                where the next one starts), but never into a stored piece that continues an episode (with several
                env copies streaming, the rows before it are another copy's); otherwise windows stay inside one
                episode.
            generator: a `torch.Generator`, an int seed (a fresh generator), or None (the replay's own).
            device: where to put the tensors (default: CPU).
            sampler: where the windows start (default: the replay's ``sampler``).

        Returns:
            Every stored field as a (B, T, ...) tensor, e.g. ``obs`` (B, T, N, D), ``is_first`` (B, T),
            plus ``reset`` (B, T) bool: True at rows where an episode starts (its ``is_first`` row).

        Raises:
            ValueError: an empty replay, or ``length`` longer than every stored episode (longer than
                every run of episodes joined at episode starts with ``cross_episodes``).
        """
        index, reset = self.sample_indices(batch_size, length, cross_episodes, generator, sampler)
        return self.gather(index, reset, device)

    def using(self, sampler: StartSampler) -> ReplayView:
        """This replay, seen by a consumer (e.g. a dream's starts) that should draw with ``sampler``, not the
        replay's own: the view's `sample` and `sample_indices` use it; everything else is the replay's."""
        if not callable(sampler):
            raise TypeError(f"sampler: expected a callable StartSampler, got {type(sampler).__name__}")
        return ReplayView(self, sampler)

    # --- persistence ---
    def _meta(self) -> dict[str, Any]:
        """What a saved replay records besides its rows: spec, config, schema and the next episode id."""
        schema = None if self._schema is None else {k: [list(s), d.str] for k, (s, d) in self._schema.items()}
        return {"spec": self.spec_description, "config": asdict(self.config), "schema": schema, "next_id": self._next_id,
                "state_from_obs": self._state_from_obs}  # fmt: skip

    def _rows_of(self, first: int, skip: int = 0) -> dict[str, np.ndarray]:
        """The stored episodes from index ``first`` (0 = oldest) on, without the first ``skip`` rows of episode
        ``first``: their fields as (R, ...) arrays plus ``episode/lengths`` and ``episode/ids`` (E,)."""
        lengths, ids = self._arrays()
        lengths, ids = lengths[first:].copy(), ids[first:]
        begin = self._starts[first] + skip if first < self.num_episodes else self._head
        if len(lengths):
            lengths[0] -= skip
        order = (begin + np.arange(int(lengths.sum()))) % self.config.capacity
        arrays = {f"field/{k}": v[order] for k, v in self._data.items()}
        arrays.update({"episode/lengths": lengths.copy(), "episode/ids": ids.copy()})
        return arrays

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the replay to ``path`` atomically (a crash leaves any previous file intact)."""
        arrays = self._rows_of(0)
        arrays["rng/state"] = self.generator.get_state().numpy()
        persist.write(path, arrays, self._meta())

    def save_segments(self, folder: str | os.PathLike[str], manifest: str | os.PathLike[str]) -> int:
        """Save incrementally: append the episodes added since the last call as one new segment file in
        ``folder``, then write the JSON ``manifest`` naming every segment the replay's state needs.

        Bytes written grow with the new episodes, not with the replay: earlier segments are never rewritten.
        The rows a streamed episode gained since the last call (`add` with ``continues``) open the new segment,
        under that episode's id. Both writes are atomic, and the manifest is written last, so a crash at any
        point leaves every manifest written before it readable. Segments whose episodes have all been evicted
        drop out of the manifest (their files stay for the manifests that still name them).

        Args:
            folder: the segments' folder (created if missing); keep it for the replay's lifetime.
            manifest: where to write the manifest, e.g. inside a checkpoint folder.

        Returns:
            The bytes written (segment and manifest).
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        lengths, ids = self._arrays()
        first = int(np.searchsorted(ids, self._saved_id))  # the oldest stored episode not yet in a segment
        grown = first > 0 and ids[first - 1] == self._saved_id - 1 and lengths[first - 1] > self._saved_rows
        first, skip = (first - 1, self._saved_rows) if grown else (first, 0)
        written = 0
        if first < len(ids):
            arrays = self._rows_of(first, skip)
            entry = {"first_id": int(ids[first]), "end_id": int(ids[-1]) + 1, "uid": uuid.uuid4().hex}
            after = f"r{skip}" if skip else ""  # a grown episode's later rows: a name of their own
            entry["file"] = f"segment_{entry['first_id']:010d}{after}-{entry['end_id']:010d}.safetensors"
            written += persist.write(folder / entry["file"], arrays, {"segment": entry})
            self._segments.append(entry)
            self._saved_id, self._saved_rows = entry["end_id"], int(lengths[-1])
        oldest = int(ids[0]) if len(ids) else self._next_id
        self._segments = [e for e in self._segments if e["end_id"] > oldest]
        state = self.generator.get_state().numpy().tobytes()
        body = {
            "format": MANIFEST_FORMAT,
            "format_version": persist.FORMAT_VERSION,
            **self._meta(),
            "rng": base64.b64encode(state).decode("ascii"),
            "oldest_id": oldest,  # a segment may hold the later rows of an evicted episode: not read back
            "segments": self._segments,
        }
        data = json.dumps(body).encode()
        persist.atomic_write(manifest, data)
        return written + len(data)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        spec: EnvSpec | None = None,
        config: ReplayConfig | None = None,
        sampler: StartSampler = uniform_starts,
    ) -> EpisodeReplay:
        """Read a replay written by `save`.

        Args:
            path: the file.
            spec: the spec the data must belong to; a file saved for another spec (or without one) raises.
            config: overrides the saved config (e.g. a larger capacity); with a smaller capacity the
                oldest episodes that do not fit are dropped. The generator state always comes from the file.
            sampler: the start sampler of the loaded replay.

        Raises:
            ValueError: another format version, a corrupt or truncated file, or a spec mismatch.
        """
        arrays, meta = persist.read(path)
        where = f"path: {str(path)!r}"
        try:
            rng = arrays.pop("rng/state")
        except KeyError as e:
            raise ValueError(f"{where} has corrupt replay metadata: {e!r}") from e
        return cls._restore(arrays, meta, rng, where, spec, config, sampler)

    @classmethod
    def load_segments(
        cls,
        manifest: str | os.PathLike[str],
        folder: str | os.PathLike[str],
        spec: EnvSpec | None = None,
        config: ReplayConfig | None = None,
        sampler: StartSampler = uniform_starts,
    ) -> EpisodeReplay:
        """Read a replay written by `save_segments`: the ``manifest`` and the segments it names in ``folder``.

        The arguments ``spec``, ``config`` and ``sampler`` are those of `load`. Later `save_segments` calls
        append to the same folder.

        Raises:
            FileNotFoundError: no manifest at ``manifest``.
            ValueError: a corrupt manifest, a missing, corrupt or replaced segment, or a spec mismatch.
        """
        where = f"manifest: {str(manifest)!r}"
        if not Path(manifest).is_file():
            raise FileNotFoundError(f"{where}: no replay manifest there")
        try:
            meta = json.loads(Path(manifest).read_text())
            if meta.get("format") != MANIFEST_FORMAT:
                raise ValueError(f"expected format {MANIFEST_FORMAT!r}, got {meta.get('format')!r}")
            if meta.get("format_version") != persist.FORMAT_VERSION:
                raise ValueError(
                    f"format version {meta.get('format_version')!r}; this wmenv reads version {persist.FORMAT_VERSION}"
                )
            rng = np.frombuffer(base64.b64decode(meta["rng"], validate=True), np.uint8)
            entries = [dict(e) for e in meta["segments"]]
            names = [str(e["file"]) for e in entries]
        except (ValueError, KeyError, TypeError, AttributeError, binascii.Error) as e:
            raise ValueError(f"{where} is not a readable replay manifest: {e}") from e
        parts: list[dict[str, np.ndarray]] = []
        for entry, name in zip(entries, names, strict=True):
            path = Path(folder) / name
            if Path(name).name != name:
                raise ValueError(f"{where} names a segment outside its folder: {name!r}")
            if not path.is_file():
                raise ValueError(f"{where} names segment {str(path)!r}, which is missing")
            arrays, seg_meta = persist.read(path)
            if seg_meta.get("segment") != entry:
                raise ValueError(
                    f"{where}: segment {str(path)!r} is not the one it names (replaced by another run?): "
                    f"expected {entry}, found {seg_meta.get('segment')}"
                )
            parts.append(arrays)
        arrays = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]} if parts else _no_rows(meta, where)
        if "oldest_id" in meta:
            arrays = _from_id(arrays, meta["oldest_id"], where)
        replay = cls._restore(arrays, meta, rng, where, spec, config, sampler)
        replay._segments, replay._saved_id = entries, replay._next_id
        replay._saved_rows = replay._lengths[-1] if replay._lengths else 0
        return replay

    @classmethod
    def _restore(
        cls,
        arrays: dict[str, np.ndarray],
        meta: dict[str, Any],
        rng: np.ndarray,
        where: str,
        spec: EnvSpec | None,
        config: ReplayConfig | None,
        sampler: StartSampler,
    ) -> EpisodeReplay:
        """A replay from saved rows (``field/*``, ``episode/lengths``, ``episode/ids``) and `_meta`."""
        try:
            file_spec, schema_json, next_id = meta["spec"], meta["schema"], int(meta["next_id"])
            config = config if config is not None else ReplayConfig(**meta["config"])
            lengths, ids = _join_pieces(arrays.pop("episode/lengths"), arrays.pop("episode/ids"))
            schema = None if schema_json is None else {k: (tuple(s), np.dtype(d)) for k, (s, d) in schema_json.items()}
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{where} has corrupt replay metadata: {e!r}") from e
        if spec is not None and file_spec != spec.describe():
            if file_spec is None:
                raise ValueError(f"{where} was saved without a spec; expected spec {spec.describe()}")
            diff = {k: (file_spec.get(k), v) for k, v in spec.describe().items() if file_spec.get(k) != v}
            raise ValueError(f"{where} holds a replay of another env; field: (file, expected) = {diff}")
        fields = {k.removeprefix("field/"): v for k, v in arrays.items()}
        rows = int(lengths.sum())
        if set(fields) != set(schema or {}) or any(
            v.shape != (rows, *schema[k][0]) or v.dtype != schema[k][1] for k, v in fields.items()
        ):
            raise ValueError(f"{where} is inconsistent: its arrays do not match its schema and episode lengths")
        replay = cls(config, spec, sampler)
        replay.spec_description = file_spec
        try:
            replay.generator.set_state(torch.from_numpy(rng.copy()))
        except RuntimeError as e:
            raise ValueError(f"{where} has a corrupt generator state: {e}") from e
        replay._next_id = next_id
        if rows:
            # keep the newest episodes that fit, as adding them one by one would
            keep = int((np.cumsum(lengths[::-1]) <= config.capacity).sum())
            lengths, ids = lengths[len(lengths) - keep :], ids[len(ids) - keep :]
            kept = int(lengths.sum())
            replay._schema, replay._state_from_obs = schema, bool(meta.get("state_from_obs", False))
            replay._data = {k: np.zeros((config.capacity, *s), d) for k, (s, d) in schema.items()}
            for k, v in fields.items():
                replay._data[k][:kept] = v[rows - kept :]
            replay._starts.extend((np.cumsum(lengths) - lengths).tolist())
            replay._lengths.extend(lengths.tolist())
            replay._ids.extend(ids.tolist())
            replay._rows, replay._head = kept, kept % config.capacity
        return replay


def _join_pieces(lengths: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(E,) lengths and ids of saved rows, where an id repeated by the next entry is the same episode continued
    (segments written while it grew): the ids' runs merged, their lengths summed."""
    lengths, ids = np.asarray(lengths, np.int64), np.asarray(ids, np.int64)
    if lengths.shape != ids.shape or lengths.ndim != 1 or (np.diff(ids) < 0).any():
        raise ValueError(f"episode lengths {lengths.shape} and ids {ids.shape}: expected (E,) arrays with ids in order")
    if not len(ids):
        return lengths, ids
    first = np.flatnonzero(np.r_[True, np.diff(ids) != 0])
    return np.add.reduceat(lengths, first), ids[first]


def _from_id(arrays: dict[str, np.ndarray], oldest: Any, where: str) -> dict[str, np.ndarray]:
    """Saved rows without the episodes older than id ``oldest`` (evicted before the manifest was written)."""
    try:
        lengths, ids, oldest = arrays["episode/lengths"], arrays["episode/ids"], int(oldest)
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{where} has corrupt replay metadata: {e!r}") from e
    drop = int(np.searchsorted(ids, oldest))  # ids are in order: the evicted ones come first
    rows = int(lengths[:drop].sum())
    out = {k: v[rows:] for k, v in arrays.items() if k.startswith("field/")}
    return {**out, "episode/lengths": lengths[drop:], "episode/ids": ids[drop:]}


def _no_rows(meta: dict[str, Any], where: str) -> dict[str, np.ndarray]:
    """The arrays of a replay without episodes (a manifest naming no segment)."""
    try:
        schema = meta["schema"] or {}
        fields = {f"field/{k}": np.zeros((0, *s), np.dtype(d)) for k, (s, d) in schema.items()}
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{where} has corrupt replay metadata: {e!r}") from e
    return fields | {"episode/lengths": np.zeros(0, np.int64), "episode/ids": np.zeros(0, np.int64)}


class ReplayView:
    """An `EpisodeReplay` whose draws use another `StartSampler` (`EpisodeReplay.using`); it shares the data."""

    def __init__(self, replay: EpisodeReplay, sampler: StartSampler) -> None:
        self.replay, self.sampler = replay, sampler

    def sample_indices(self, *args: Any, **kwargs: Any) -> tuple[np.ndarray, np.ndarray]:
        """`EpisodeReplay.sample_indices` with this view's sampler."""
        return self.replay.sample_indices(*args, **{"sampler": self.sampler, **kwargs})

    def sample(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        """`EpisodeReplay.sample` with this view's sampler."""
        return self.replay.sample(*args, **{"sampler": self.sampler, **kwargs})

    def __getattr__(self, name: str) -> Any:
        if name == "replay":  # not set yet (e.g. while unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.replay, name)
