"""`OnnxAgent`: an exported agent stepped by onnxruntime, keeping its recurrent state between calls.

Glossary: B batch (agents stepped together), D observation features, A actions.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from exports.onnx import EXPORT_FORMAT


def default_providers() -> list[str]:
    """CUDA then CPU where onnxruntime-gpu sees a GPU, else CPU."""
    available = ort.get_available_providers()
    return (
        ["CUDAExecutionProvider", "CPUExecutionProvider"] if "CUDAExecutionProvider" in available else ["CPUExecutionProvider"]
    )


class OnnxAgent:
    """Runs an `export_agent` graph: ``reset(batch_size)``, then ``act(obs, action_mask)`` step after step.

    Args:
        path: the ``.onnx`` file.
        providers: onnxruntime execution providers; default `default_providers`.
        spec: the `EnvSpec` the agent will act in; the file is refused if it was made for another.
        threads: intra-op threads of the session (onnxruntime's default when None).

    Raises:
        ValueError: not a wmenv agent file, another format version, a missing or misshapen input, or
            made for another env.
    """

    def __init__(
        self, path: str | Path, providers: list[str] | None = None, spec: Any | None = None, threads: int | None = None
    ):
        self.path = Path(path)
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=providers or default_providers())
        except Exception as e:  # onnxruntime raises its own Fail / InvalidGraph / NoSuchFile types
            raise ValueError(f"path: {self.path} is not a loadable ONNX model: {e}") from e
        meta = self.session.get_modelmeta().custom_metadata_map
        if meta.get("wmenv.format") != str(EXPORT_FORMAT):
            raise ValueError(f"path: {self.path} is not a wmenv agent of format {EXPORT_FORMAT} (metadata 'wmenv.format' = "
                             f"{meta.get('wmenv.format')!r}); export it with exports.export_agent")  # fmt: skip
        self.metadata = meta
        self.obs_dim, self.n_actions = int(meta["wmenv.obs_dim"]), int(meta["wmenv.n_actions"])
        self.state_shapes: dict[str, tuple[int, ...]] = {n: tuple(s) for n, s in json.loads(meta["wmenv.state"])}
        self.sampling: bool = json.loads(meta["wmenv.sampling"])
        self.env: dict | None = json.loads(meta["wmenv.env"])
        self._check_inputs()
        if spec is not None:
            self.check_spec(spec)
        self.reset(1)

    def _check_inputs(self) -> None:
        expected = {"obs": (self.obs_dim,), "action_mask": (self.n_actions,), "reset": ()}
        expected.update(self.state_shapes)
        if self.sampling:
            expected["noise"] = (self.n_actions,)
        got = {i.name: tuple(i.shape[1:]) for i in self.session.get_inputs()}
        for name, shape in expected.items():
            if name not in got:
                raise ValueError(
                    f"path: {self.path} has no input {name!r} (expected inputs {sorted(expected)}, got {sorted(got)})"
                )
            if got[name] != shape:
                raise ValueError(f"path: input {name!r} of {self.path} has shape (B, {', '.join(map(str, got[name]))}), "
                                 f"expected (B, {', '.join(map(str, shape))}) as its metadata says")  # fmt: skip
        extra = sorted(set(got) - set(expected))
        if extra:
            raise ValueError(f"path: {self.path} has unexpected inputs {extra}")

    def check_spec(self, spec: Any) -> None:
        """Raise ValueError unless ``spec`` (an `EnvSpec`) is the env the file was exported for."""
        if (spec.obs_dim, spec.n_actions) != (self.obs_dim, self.n_actions):
            raise ValueError(f"spec: {spec.id} has obs_dim={spec.obs_dim}, n_actions={spec.n_actions}; {self.path} expects "
                             f"obs_dim={self.obs_dim}, n_actions={self.n_actions}")  # fmt: skip
        if self.env is not None and self.env != spec.describe():
            raise ValueError(f"spec: {self.path} was exported for env {self.env}, got {spec.describe()}")

    def reset(self, batch_size: int) -> None:
        """Start B = ``batch_size`` fresh episodes (zero recurrent state)."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size: expected an integer >= 1, got {batch_size!r}")
        self.batch_size = batch_size
        self.state = {n: np.zeros((batch_size, *s), dtype=np.float32) for n, s in self.state_shapes.items()}
        self.logits: np.ndarray | None = None  # (B, A) of the last act, masked actions -inf

    def _array(self, name: str, value: Any, shape: tuple[int, ...], dtype: type) -> np.ndarray:
        arr = np.asarray(value)
        if arr.shape != shape:
            raise ValueError(f"{name}: expected shape {shape} (B = {self.batch_size} from reset), got {arr.shape}")
        if dtype is np.bool_ and arr.dtype != np.bool_:
            raise TypeError(f"{name}: expected a bool array, got dtype {arr.dtype}")
        return arr.astype(dtype, copy=False)

    def act(
        self,
        obs: Any,
        action_mask: Any | None = None,
        resets: Any | None = None,
        deterministic: bool = True,
        rng: np.random.Generator | None = None,
    ) -> np.ndarray:
        """One decision step for the B rows of `reset`; the recurrent state advances.

        Args:
            obs: (B, D) observations.
            action_mask: (B, A) bool, True where available (all available when None).
            resets: (B,) bool, rows that start a new episode at this step (before using ``obs``).
            deterministic: greedy action; otherwise sampled with Gumbel-max from ``rng``'s uniforms
                (needs a file exported with ``sampling=True``).
            rng: the random stream for sampling (a fresh default one when None).

        Returns:
            (B,) int64 actions.

        Raises:
            ValueError, TypeError: wrong shapes or dtypes, NaN observations, a row without available actions,
                or sampling asked of a file exported without it.
        """
        B, A = self.batch_size, self.n_actions
        obs = self._array("obs", obs, (B, self.obs_dim), np.float32)
        if not np.isfinite(obs).all():
            raise ValueError(f"obs: contains NaN or inf in rows {sorted(set(np.argwhere(~np.isfinite(obs))[:, 0].tolist()))}")
        mask = (
            np.ones((B, A), dtype=bool) if action_mask is None else self._array("action_mask", action_mask, (B, A), np.bool_)
        )
        if not mask.any(-1).all():
            raise ValueError(f"action_mask: rows {np.flatnonzero(~mask.any(-1)).tolist()} have no available action")
        reset = np.zeros(B, dtype=bool) if resets is None else self._array("resets", resets, (B,), np.bool_)
        feeds = {"obs": obs, "action_mask": mask, "reset": reset, **self.state}
        if self.sampling:
            feeds["noise"] = (rng or np.random.default_rng()).random((B, A), dtype=np.float32)
        elif not deterministic:
            raise ValueError(f"deterministic: {self.path} was exported without sampling (export_agent(..., sampling=True))")
        out = dict(zip([o.name for o in self.session.get_outputs()], self.session.run(None, feeds)))
        self.logits = out["logits"]
        self.state = {n: out[f"new_{n}"] for n in self.state_shapes}
        return out["action"] if deterministic else out["sampled_action"]


def play_episode(agent: OnnxAgent, env: Any, spec: Any, seed: int | None = None) -> float:
    """Play one episode of a real env (`wmenv.envs.make`) with ``agent`` controlling every agent slot.

    Returns:
        The undiscounted episode return, summed over steps and averaged over agents.
    """
    from wmenv.envs.spec import stack_masks, stack_obs, stack_rewards, unstack_actions

    agent.check_spec(spec)
    obs, infos = env.reset(seed=seed)
    agent.reset(spec.n_agents)
    total, first = np.zeros(spec.n_agents), True
    while env.agents:
        o, alive = stack_obs(spec, obs)
        actions = agent.act(o, stack_masks(spec, infos, alive), resets=np.full(spec.n_agents, first))
        first = False
        obs, rewards, _, _, infos = env.step(unstack_actions(spec, actions, env.agents))
        total += stack_rewards(spec, rewards)
    return float(total.mean())
