"""`OnnxAgent`: an exported agent stepped by onnxruntime, keeping its recurrent state between calls.

Glossary: B batch (agents stepped together), N agent slots, D observation features, A actions, M message width.

Two kinds of files (metadata ``wmenv.kind``): ``"actor"`` (`export_agent`: the actor on the env's observations)
and ``"world_model"`` (`export_wm_agent`: the agent's own world-model filter, its messages and its actor). A
world-model agent's `OnnxAgent.act` also takes the messages it received and its slot, and leaves its outgoing
message in `OnnxAgent.outgoing`; `play_episode` passes the messages between N such agents.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from einops import repeat

from exports.onnx import EXPORT_FORMAT, spec_diff
from wmenv.envs.spec import own_action_dims

KINDS = ("actor", "world_model")


def default_providers() -> list[str]:
    """CUDA then CPU where onnxruntime-gpu sees a GPU, else CPU."""
    available = ort.get_available_providers()
    return (
        ["CUDAExecutionProvider", "CPUExecutionProvider"] if "CUDAExecutionProvider" in available else ["CPUExecutionProvider"]
    )


class OnnxAgent:
    """Runs an `export_agent` or `export_wm_agent` graph: ``reset(batch_size)``, then ``act(obs, action_mask, ...)``.

    Args:
        path: the ``.onnx`` file.
        providers: onnxruntime execution providers; default `default_providers`.
        spec: the `EnvSpec` the agent will act in; the file is refused if it was made for another.
        threads: intra-op threads of the session (onnxruntime's default when None).

    Raises:
        ValueError: not a wmenv agent file, another format version or kind, a missing or misshapen input, or
            made for another env.
    """

    state: dict[str, np.ndarray]
    """The recurrent state, name -> (B, ...): the actor's and, for world-model agents, ``deter``, ``stoch`` and
    ``prev_action`` (B,) int64 (continuous: (B, A) float32, NaN rows for none). Replace it with `set_state` (which
    checks it)."""
    outgoing: np.ndarray | None = None
    """(B, M) float32, world-model agents: the messages the B rows send after the last `act` (zeros after `reset`)."""

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
        self.kind = meta.get("wmenv.kind", "actor")  # files written before the world-model kind have no key
        if self.kind not in KINDS:
            raise ValueError(f"path: {self.path} is an agent of kind {self.kind!r}; expected one of {list(KINDS)}")
        self.obs_dim, self.n_actions = int(meta["wmenv.obs_dim"]), int(meta["wmenv.n_actions"])
        self.state_shapes: dict[str, tuple[int, ...]] = {n: tuple(s) for n, s in json.loads(meta["wmenv.state"])}
        self.sampling: bool = json.loads(meta["wmenv.sampling"])
        self.env: dict | None = json.loads(meta["wmenv.env"])
        self.continuous: bool = json.loads(meta.get("wmenv.continuous", "false"))  # a Gaussian actor (float actions)
        self.agents: list[str] | None = json.loads(meta.get("wmenv.agents", "null"))
        """The agents of one type the graph was exported for, with their own widths (`export_agent_types`), or None."""
        self.n_agents: int | None = None  # N message slots (world-model agents)
        self.message_dim = 0  # M
        self.latent: str | None = None  # "mode" or "sample" (world-model agents)
        self._filter_shapes: dict[str, tuple[int, ...]] = {}
        if self.kind == "world_model":
            self.n_agents, self.message_dim = int(meta["wmenv.n_agents"]), int(meta["wmenv.message_dim"])
            self.latent, self.latent_shape = meta["wmenv.latent"], tuple(json.loads(meta["wmenv.latent_shape"]))
            self._filter_shapes = {n: tuple(s) for n, s in json.loads(meta["wmenv.filter_state"])}
            self._filter_shapes["prev_action"] = (self.n_actions,) if self.continuous else ()
        # the agent sends and receives messages (MAMBA's communication; MABL's agents have none: M = 0)
        self.messaging = self.kind == "world_model" and self.message_dim > 0
        self._rng = np.random.default_rng()
        self._check_inputs()
        if spec is not None:
            self.check_spec(spec)
        self.reset(1)

    def _check_inputs(self) -> None:
        expected = {"obs": (self.obs_dim,), "action_mask": (self.n_actions,), "reset": ()}
        if self.kind == "world_model":
            if self.messaging:
                expected.update(agent=(), messages=(self.n_agents, self.message_dim), heard=(self.n_agents,))
            expected.update(self._filter_shapes)
            if self.latent == "sample":
                expected["noise"] = self.latent_shape
        expected.update(self.state_shapes)
        if self.sampling:
            expected["noise"] = (self.n_actions,)
        if self.continuous:
            expected["agent"] = ()
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
        if self.agents is not None:
            if self.env is not None and self.env != spec.describe():
                raise ValueError(f"spec: {self.path} was exported for {spec_diff(self.env, spec.describe())}")
            own = own_action_dims(spec).sum(-1)
            for a in self.agents:
                if a not in spec.agents:
                    raise ValueError(f"spec: {spec.id} has no agent {a!r}, which {self.path} was exported for")
                got = (int(spec.observation_spaces[a].shape[0]), int(own[spec.agents.index(a)]))
                if got != (self.obs_dim, self.n_actions):
                    raise ValueError(f"spec: agent {a!r} of {spec.id} has (obs width, actions) {got}; {self.path} "
                                     f"expects {(self.obs_dim, self.n_actions)}")  # fmt: skip
            return
        if (spec.obs_dim, spec.n_actions) != (self.obs_dim, self.n_actions):
            raise ValueError(f"spec: {spec.id} has obs_dim={spec.obs_dim}, n_actions={spec.n_actions}; {self.path} expects "
                             f"obs_dim={self.obs_dim}, n_actions={self.n_actions}")  # fmt: skip
        if self.n_agents is not None and spec.n_agents != self.n_agents:
            raise ValueError(f"spec: {spec.id} has {spec.n_agents} agents; {self.path} expects N={self.n_agents} "
                             "(its message slots)")  # fmt: skip
        if self.env is not None and self.env != spec.describe():
            raise ValueError(f"spec: {self.path} was exported for {spec_diff(self.env, spec.describe())}")

    def reset(self, batch_size: int) -> None:
        """Start B = ``batch_size`` fresh episodes (zero recurrent state)."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size: expected an integer >= 1, got {batch_size!r}")
        self.batch_size = batch_size
        self.state = {n: np.zeros((batch_size, *s), dtype=np.float32) for n, s in self._shapes().items()}
        if self.kind == "world_model":  # no previous action yet: -1, or a NaN row for continuous actions
            self.state["prev_action"] = (
                np.full((batch_size, self.n_actions), np.nan, np.float32)
                if self.continuous else np.full(batch_size, -1, dtype=np.int64)
            )  # fmt: skip
            self.outgoing = np.zeros((batch_size, self.message_dim), dtype=np.float32)
        self.logits: np.ndarray | None = None  # (B, A) of the last act: masked logits (-inf), or a Gaussian's mean

    def _shapes(self) -> dict[str, tuple[int, ...]]:
        """Per-row shape of every state tensor: the filter's (world-model agents), then the actor's."""
        return {**self._filter_shapes, **self.state_shapes}

    def set_state(self, state: dict[str, Any]) -> None:
        """Replace the recurrent state (names and shapes as `state`, B rows as set by `reset`).

        Raises:
            ValueError: other names, or a tensor of another shape (e.g. a state of another model).
        """
        shapes = self._shapes()
        if not isinstance(state, dict) or set(state) != set(shapes):
            got = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"state: expected the names {sorted(shapes)}, got {got}")
        new = {}
        for name, shape in shapes.items():
            arr, want = np.asarray(state[name]), (self.batch_size, *shape)
            if arr.shape != want:
                raise ValueError(f"{name}: expected shape {want} (B = {self.batch_size} from reset, then this file's "
                                 f"state {name!r}), got {arr.shape}: a state of another model?")  # fmt: skip
            new[name] = arr.astype(np.int64 if name == "prev_action" and not self.continuous else np.float32)
        self.state = new

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
        messages: Any | None = None,
        heard: Any | None = None,
        agent: Any | None = None,
        *,
        deterministic: bool = True,
        rng: np.random.Generator | None = None,
    ) -> np.ndarray:
        """One decision step for the B rows of `reset`; the recurrent state advances.

        Args:
            obs: (B, D) observations.
            action_mask: (B, A) bool, True where available (all available when None).
            resets: (B,) bool, rows that start a new episode at this step (before using ``obs``); a world-model
                agent then also blanks its filter state, previous action and the received messages.
            messages: world-model agents: (B, N, M) float, the messages each row received, in sender slots
                (its own slot is ignored); None: none (zeros, and ``heard`` defaults to none).
            heard: world-model agents: (B, N) bool, the slots of ``messages`` that were received (all when None).
            agent: world-model agents and continuous actors: (B,) int, each row's agent slot (None: row i is slot
                i mod N).
            deterministic: greedy action (continuous: the mean, clipped to the row's bounds); otherwise sampled, with
                Gumbel-max from ``rng``'s uniforms or, continuous, a Gaussian from its normals (needs an actor file
                exported with ``sampling=True``).
            rng: the random stream for sampling actions and, for world-model files exported with
                ``latent="sample"``, the posterior's uniform noise (the agent's own stream when None).

        Returns:
            (B,) int64 actions, or (B, A) float32 continuous actions (0 on an agent's padded dims).

        Raises:
            ValueError, TypeError: wrong shapes or dtypes, NaN observations, a row without available actions,
                sampling asked of a file exported without it, or messages of the wrong count or width.
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
        rng = rng or self._rng
        if self.messaging:
            feeds.update(self._exchange(messages, heard, agent))
        elif self.continuous and messages is None and heard is None:
            if agent is None and self.agents is not None:  # one type's rows: row i is its i-th agent (mod its count)
                slots = np.array([self.env["agents"].index(a) for a in self.agents])
                feeds["agent"] = slots[np.arange(B) % len(slots)]
            else:
                feeds["agent"] = self._slots(agent, len(self.env["agents"]))
        elif messages is not None or heard is not None or agent is not None:
            what = "an actor-only agent (kind 'actor')" if self.kind == "actor" else "a world-model agent without messages"
            raise ValueError(f"messages: {self.path} is {what}, it takes no messages")
        if self.kind == "world_model" and self.latent == "sample":
            feeds["noise"] = rng.random((B, *self.latent_shape), dtype=np.float32)
        if self.sampling:
            draw = rng.standard_normal if self.continuous else rng.random
            feeds["noise"] = draw((B, A), dtype=np.float32)
        elif not deterministic:
            how = "world-model agents act greedily" if self.kind == "world_model" else "export_agent(..., sampling=True)"
            raise ValueError(f"deterministic: {self.path} was exported without action sampling ({how})")
        out = dict(zip([o.name for o in self.session.get_outputs()], self.session.run(None, feeds)))
        self.logits = out["mean" if self.continuous else "logits"]
        self.state = {n: out[f"new_{n}"] for n in self._shapes()}
        if self.messaging:
            self.outgoing = out["message"]
        return out["action"] if deterministic else out["sampled_action"]

    def _exchange(self, messages: Any, heard: Any, agent: Any) -> dict[str, np.ndarray]:
        """Checked ``messages`` (B, N, M), ``heard`` (B, N) and ``agent`` (B,) feeds of a world-model agent."""
        B, N, M = self.batch_size, self.n_agents, self.message_dim
        if messages is None:
            msgs = np.zeros((B, N, M), dtype=np.float32)
            heard = np.zeros((B, N), dtype=bool) if heard is None else heard
        else:
            msgs = np.asarray(messages)
            if msgs.shape != (B, N, M):
                why = ""
                if msgs.ndim == 3 and msgs.shape[0] == B:
                    why = (f": each row must hold N={N} messages (one per agent slot; mark missing ones in heard), got "
                           f"{msgs.shape[1]}" if msgs.shape[1] != N else
                           f": each message must have width M={M} (this model's S·K + A), got {msgs.shape[2]}")  # fmt: skip
                raise ValueError(f"messages: expected shape (B, N, M) = {(B, N, M)}, got {msgs.shape}{why}")
            msgs = msgs.astype(np.float32, copy=False)
            if not np.isfinite(msgs).all():
                raise ValueError("messages: contains NaN or inf")
        heard = np.ones((B, N), dtype=bool) if heard is None else self._array("heard", heard, (B, N), np.bool_)
        return {"messages": msgs, "heard": heard, "agent": self._slots(agent, N)}

    def _slots(self, agent: Any, n: int) -> np.ndarray:
        """Checked (B,) int64 agent slots in [0, n) (None: row i is slot i mod n)."""
        if agent is not None and not np.issubdtype(np.asarray(agent).dtype, np.integer):
            raise TypeError(f"agent: expected an integer array of slots, got dtype {np.asarray(agent).dtype}")
        slots = np.arange(self.batch_size) % n if agent is None else self._array("agent", agent, (self.batch_size,), np.int64)
        if ((slots < 0) | (slots >= n)).any():
            raise ValueError(f"agent: expected slots in [0, {n}), got {slots.tolist()}")
        return slots


def play_episode(
    agent: OnnxAgent | Mapping[str, OnnxAgent], env: Any, spec: Any, seed: int | None = None, neighbours: int | None = None
) -> float:
    """Play one episode of a real env (`wmenv.envs.make`) with ``agent`` controlling every agent slot.

    ``agent`` is one `OnnxAgent` for all slots, or one per agent type (`exports.onnx.export_agent_types`: type name ->
    agent, each acting for its own agents with their own widths). A world-model agent runs as N agents (row i = slot
    i) that exchange messages: at each step every row receives the last outgoing message of every agent present at
    this step (absent or finished agents send nothing), restricted to ``env.neighbours(neighbours)`` when a radius is
    given (Flatland).

    Returns:
        The undiscounted episode return, summed over steps and averaged over agents.

    Raises:
        ValueError: another env, agent types that do not cover every agent once, or ``neighbours`` for an actor-only
            agent or an env without ``neighbours``.
    """
    from wmenv.envs.spec import stack_masks, stack_obs, stack_rewards, unstack_actions

    N = spec.n_agents
    types = _check_types(agent, spec) if isinstance(agent, Mapping) else None
    if types is None:
        agent.check_spec(spec)
        if neighbours is not None:
            if not agent.messaging:
                raise ValueError(f"neighbours: only world-model agents with messages exchange them, {agent.path} has none")
            if not callable(getattr(env, "neighbours", None)):
                raise ValueError(f"neighbours: env {spec.id} has no neighbours(radius) method, got neighbours={neighbours!r}")
        agent.reset(N)
    obs, infos = env.reset(seed=seed)
    total, first = np.zeros(N), True
    while env.agents:
        o, alive = stack_obs(spec, obs)
        mask, resets = stack_masks(spec, infos, alive), np.full(N, first)
        if types is not None:
            actions = np.zeros((N,) if spec.discrete else (N, spec.n_actions), np.int64 if spec.discrete else np.float32)
            for t, rows in types:  # each type acts for its own agents, on their own widths
                acts = t.act(o[rows, : t.obs_dim], mask[rows, : t.n_actions], resets[rows])
                if spec.discrete:
                    actions[rows] = acts
                else:
                    actions[rows, : t.n_actions] = acts
        elif agent.messaging:
            heard = repeat(alive, "j -> i j", i=N)  # (N, N): absent agents send nothing
            if neighbours is not None:
                heard = heard & np.asarray(env.neighbours(neighbours), dtype=bool)
            messages = repeat(agent.outgoing, "j m -> i j m", i=N)  # (N, N, M): everyone's last message
            actions = agent.act(o, mask, resets, messages, heard, np.arange(N))
        else:
            actions = agent.act(o, mask, resets=resets)
        first = False
        obs, rewards, _, _, infos = env.step(unstack_actions(spec, actions, env.agents))
        total += stack_rewards(spec, rewards)
    return float(total.mean())


def _check_types(types: Mapping[str, OnnxAgent], spec: Any) -> list[tuple[OnnxAgent, np.ndarray]]:
    """(agent, its rows (slots)) per type, each reset for its agents; refuses types that do not cover every agent once."""
    out, covered = [], []
    for name, t in types.items():
        if not isinstance(t, OnnxAgent) or t.agents is None or t.messaging:
            raise ValueError(f"agent: type {name!r} must be an actor exported for one agent type (export_agent_types)")
        t.check_spec(spec)
        t.reset(len(t.agents))
        out.append((t, np.array([spec.agents.index(a) for a in t.agents])))
        covered += t.agents
    if sorted(covered) != sorted(spec.agents):
        expected = sorted(spec.agents)
        raise ValueError(f"agent: the types cover {sorted(covered)}; expected every agent of {spec.id} once: {expected}")
    return out
