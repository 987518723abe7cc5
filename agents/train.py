"""The model-free MAPPO loop on a real env: vectorized collection -> update -> log, with checkpoints.

Glossary: E parallel envs, T rollout steps, N agents. An *env step* is one step of one env copy, so
one iteration advances ``E * T`` env steps; every x-axis in TensorBoard counts env steps.

Each run writes to ``run_dir``: TensorBoard scalars (``train/*`` losses and entropy, ``charts/*``
episode returns and env steps/s, ``eval/episode_return`` of the greedy policy on fixed seeds) and
``checkpoints/step_<env steps>/{model.safetensors, config.json}``, each written to a temporary
folder and moved in place with ``os.replace``; ``checkpoints/latest`` names the newest.
Resuming restores networks, value normalizer, optimizer, sampling stream and counters, and (`agents.resume`) the env
copies mid-episode with the collection carry and the global random streams: a resumed run's curve equals an
uninterrupted one's. Envs whose state cannot be saved (StarCraft II) restart from fresh episodes seeded from the step
count instead, and the run says so.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm

from agents.critic import CriticConfig
from agents.mappo import MAPPO, MAPPOConfig
from agents.policies import (
    POLICIES,
    POLICY_CONFIGS,
    GRUPolicyConfig,
    MambaPolicyConfig,
    MLPPolicyConfig,
    PolicyConfig,
    RecurrentPolicy,
    SPMambaConfig,
    make_policy,
    policy_field,
)
from agents.resume import load_run_state, resume_envs, save_run_state
from agents.storage import Carry
from wmenv.checks import check_choice, check_int
from wmenv.data.collect import mean_metrics
from wmenv.data.persist import atomic_write, remove_temporaries, temporary_name
from wmenv.envs.vector import BACKENDS, VecEnv
from wmenv.latent.filter import AgentFilters
from wmenv.optim import load_optimizer_state

CHECKPOINT_FORMAT = 1


@dataclass
class TrainConfig:
    """A model-free MAPPO run (defaults: MPE simple_spread, 100k env steps, about two minutes on 2 CPU cores)."""

    env_id: str = "mpe:simple_spread_v3"
    """A `wmenv.envs.make` id."""
    total_steps: int = 100_000
    """Env steps to train for (one step of one env copy counts 1), rounded up to whole iterations."""
    num_envs: int = 8
    """E, env copies collected in parallel (the MAPPO paper used 128 on MPE)."""
    seed: int = 0
    """Seeds torch, NumPy, the envs (copy i gets ``seed + i``) and the learner's sampling stream."""
    backend: Literal["sync", "subproc", "ray", "jax"] = "sync"
    """`VecEnv` backend: in-process (fast envs such as MPE), worker processes (slow envs), Ray actors (a cluster),
    "jax" (SMAX: one jitted call)."""
    env_kwargs: dict[str, int | float | bool | str] = field(default_factory=dict)
    """Extra keywords for `wmenv.envs.make` (e.g. ``max_cycles`` for MPE)."""
    run_dir: str = "runs/mappo"
    """Where TensorBoard events and checkpoints go."""
    resume: bool = False
    """Continue from ``run_dir/checkpoints/latest`` if there is one (a fresh run otherwise)."""
    eval_every: int = 10_000
    """Evaluate the greedy policy every this many env steps (and at the start); 0 turns evaluation off."""
    eval_episodes: int = 8
    """Episodes per evaluation, one per env copy, on fixed seeds."""
    checkpoint_every: int = 50_000
    """Save a checkpoint every this many env steps (and always at the end)."""
    keep_checkpoints: int = 2
    """How many of the newest checkpoints to keep."""
    keep_every: int = 0
    """Also keep, for good, every checkpoint taken at a multiple of this many env steps (0: none), so a run's policy can
    be measured again later at its milestones (``examples/benchmarks/dream_gap.py --all-checkpoints``)."""
    anneal_lr: bool = False
    """Decay both learning rates linearly to 0 over the run."""
    torch_threads: int = 1
    """torch intra-op threads (0: torch's default, one per core). One by measurement: this library's small models
    barely split across threads (2 threads alone: 1.2-1.3x faster for 1.5-1.7x the CPU), and with another busy
    process on the cores 2-thread small ops ran 6.8x slower (BENCHMARKS.md, "Model-based loop: cost per real step").
    Raise it on a machine this run has to itself; on CUDA it only affects the CPU-side work."""
    progress: bool = True
    """Show a tqdm progress bar."""
    mappo: MAPPOConfig = field(default_factory=MAPPOConfig)
    """PPO hyperparameters."""
    policy: Literal["gru", "mamba", "sp-mamba", "mlp"] = "gru"
    """Actor: the MAPPO GRU policy, the plain Mamba policy, Self-Predictive Mamba, or a feed-forward MLP."""
    gru: GRUPolicyConfig = field(default_factory=GRUPolicyConfig)
    """Architecture of the "gru" actor."""
    mamba: MambaPolicyConfig = field(default_factory=MambaPolicyConfig)
    """Architecture of the "mamba" actor."""
    sp_mamba: SPMambaConfig = field(default_factory=SPMambaConfig)
    """Architecture and self-prediction losses of the "sp-mamba" actor."""
    mlp: MLPPolicyConfig = field(default_factory=MLPPolicyConfig)
    """Architecture of the "mlp" actor."""
    critic: CriticConfig = field(default_factory=CriticConfig)
    """Critic architecture and value normalization."""
    steps_per_iteration: int = field(init=False)
    """Derived: E * T env steps per iteration."""
    iterations: int = field(init=False)
    """Derived: iterations to reach ``total_steps``."""

    def __post_init__(self) -> None:
        for name in ("total_steps", "num_envs", "eval_episodes", "keep_checkpoints"):
            check_int(f"TrainConfig.{name}", getattr(self, name))
        for name in ("eval_every", "checkpoint_every", "keep_every", "torch_threads"):
            check_int(f"TrainConfig.{name}", getattr(self, name), 0)
        check_choice("TrainConfig.backend", self.backend, BACKENDS)
        check_choice("TrainConfig.policy", self.policy, POLICIES)
        self.steps_per_iteration = self.num_envs * self.mappo.rollout_length
        self.iterations = math.ceil(self.total_steps / self.steps_per_iteration)

    @property
    def policy_config(self) -> PolicyConfig:
        """The config of the selected actor kind."""
        return getattr(self, policy_field(self.policy))


@dataclass
class TrainResult:
    """What `train` returns."""

    env_steps: int
    """Env steps taken in total (including those before a resume)."""
    iterations: int
    """Iterations done in total."""
    eval_returns: list[tuple[int, float]]
    """(env steps, mean greedy return per agent and episode) of this call's evaluations."""
    train_returns: list[tuple[int, float]]
    """(env steps, mean return of the training episodes that ended in that iteration)."""
    train_metrics: list[tuple[int, dict[str, float]]]
    """(env steps, each `episode_metrics` name's mean over those training episodes), where the env reports any."""
    metrics: dict[str, float]
    """The last update's losses and statistics."""
    checkpoint: str
    """The folder of the final checkpoint."""


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global random streams."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@torch.no_grad()
def first_episodes(
    vec: VecEnv,
    act: Callable[[np.ndarray, Any, np.ndarray, np.ndarray], np.ndarray],
    world_model: Any = None,
    seed: int = 0,
    max_steps: int = 100_000,
    filters: AgentFilters | None = None,
    start: tuple[list[bytes], Any, np.ndarray] | None = None,
) -> Iterator[tuple[Any, np.ndarray, Any, np.ndarray]]:
    """Play every copy of ``vec`` from a reset until its first episode ends, the actor's choices from ``act``.

    ``act(inputs, before, running, resets)`` returns the (E, N) (or (E, N, A)) env actions for the step: ``inputs``
    (E, N, ·) are the raw observations, or with ``world_model`` each agent's own filtered features
    (`wmenv.latent.AgentFilters`, seeded ``seed``); ``before`` is the env's current `VecStep`; ``running`` (E,) bool
    marks the copies whose first episode has not ended; ``resets`` (E, N) bool the agents whose recurrent state starts
    afresh (every one at the reset, then those that terminated or were truncated, or whose copy's episode ended, at the
    step before: the loops' reset rule). Yields ``(before, actions, after, running)`` per step (``running`` as ``act``
    saw it). Copies that ended keep stepping (as vectorized envs do) until the last one ends. ``filters``: the
    `AgentFilters` of ``vec.num_envs`` worlds to filter with (the caller's, e.g. to snapshot them mid-episode with
    `AgentFilters.get_state`); None: new ones over ``world_model``. ``start``: ``(snapshots, step, resets)`` to go on
    from the middle of episodes instead of a reset: `VecEnv.get_state` snapshots (one per copy), the `VecStep` the
    copies are at and its (E, N) resets; with ``world_model``, ``filters`` must already have seen that step (their
    ``features`` are the first inputs). "First episode" then means the episode each snapshot is in.

    Raises:
        RuntimeError: some copy's episode did not end within ``max_steps`` steps.
    """
    if filters is not None and (filters.model is not world_model or filters.num_worlds != vec.num_envs):
        raise ValueError(
            f"filters: expected AgentFilters over world_model with {vec.num_envs} worlds, got "
            f"{filters.num_worlds} worlds over {'it' if filters.model is world_model else 'another model'}"
        )
    if start is None:
        s = vec.reset()
        resets = np.ones(s.alive.shape, dtype=bool)
    else:
        if world_model is not None and (filters is None or filters.features is None):
            raise ValueError("filters: going on from start needs the AgentFilters that have seen start's step, got none")
        snapshots, s, resets = start
        vec.set_state(list(snapshots))
    if filters is None and world_model is not None:
        filters = AgentFilters(world_model, vec.num_envs, seed)
    running = np.ones(vec.num_envs, dtype=bool)
    for i in range(max_steps):
        if filters is None:
            inputs = s.obs
        else:
            inputs = filters.features if start is not None and i == 0 else filters.observe_vec(s, first=i == 0)
        seen = running.copy()
        actions = act(inputs, s, seen, resets)
        if filters is not None:
            filters.record(actions, s.alive)
        after = vec.step(actions)
        yield s, actions, after, seen
        running &= ~after.done
        if not running.any():
            return
        s, resets = after, after.terminated | after.truncated | after.done[:, None]
    raise RuntimeError(f"{int(running.sum())} of {vec.num_envs} episodes did not end in {max_steps} steps")


def evaluate_metrics(
    agent: MAPPO,
    env_id: str,
    episodes: int,
    seed: int,
    deterministic: bool = True,
    world_model: Any = None,
    **make_kwargs: Any,
) -> dict[str, float]:
    """Means over ``episodes`` episodes, one per env copy seeded ``seed + i``: the undiscounted return per
    agent (``episode_return``) and the env's `episode_metrics` (e.g. Flatland's ``arrived_fraction``).

    With ``world_model``, the actor is a latent one: it sees each agent's own filtered features
    (`wmenv.latent.AgentFilters`, seeded ``seed``) instead of the raw observations.

    Raises:
        RuntimeError: an episode did not end within 100,000 steps.
    """
    with VecEnv(env_id, num_envs=episodes, seed=seed, **make_kwargs) as vec:
        N = vec.spec.n_agents
        state = agent.policy.initial_state(episodes * N)

        def act(inputs: np.ndarray, s: Any, running: np.ndarray, resets: np.ndarray) -> np.ndarray:
            nonlocal state
            obs = torch.as_tensor(inputs, dtype=torch.float32, device=agent.device).flatten(0, 1)  # (E*N, D)
            mask = torch.as_tensor(s.action_mask, device=agent.device).flatten(0, 1)  # (E*N, A)
            starts = torch.as_tensor(resets, device=agent.device).flatten()
            actions, _, state = agent.act(obs, state, starts, mask, deterministic=deterministic)
            return agent.env_actions(actions, episodes)

        returns = np.zeros(episodes)
        metrics: list[dict[str, float]] = [{} for _ in range(episodes)]
        for _, _, s, running in first_episodes(vec, act, world_model, seed):
            ended = s.done & running
            returns[ended] = s.episode_return[ended].mean(-1)
            for e in np.flatnonzero(ended):
                metrics[e] = s.episode_metrics[e]
        return {"episode_return": float(returns.mean()), **mean_metrics(metrics)}


def evaluate_and_log(
    agent: MAPPO,
    writer: SummaryWriter,
    step: int,
    env_id: str,
    episodes: int,
    seed: int,
    world_model: Any = None,
    **make_kwargs: Any,
) -> dict[str, float]:
    """`evaluate_metrics` (greedy), each mean logged to TensorBoard as ``eval/<name>`` at ``step``."""
    result = evaluate_metrics(agent, env_id, episodes, seed, True, world_model, **make_kwargs)
    for k, v in result.items():
        writer.add_scalar(f"eval/{k}", v, step)
    return result


def evaluate(agent: MAPPO, env_id: str, episodes: int, seed: int, deterministic: bool = True, **make_kwargs: Any) -> float:
    """Mean undiscounted return per agent over ``episodes`` episodes (`evaluate_metrics`' ``episode_return``)."""
    return evaluate_metrics(agent, env_id, episodes, seed, deterministic, **make_kwargs)["episode_return"]


def optimizer_tensors(optimizer: torch.optim.Optimizer, prefix: str = "optim") -> tuple[dict[str, torch.Tensor], list]:
    """An optimizer's state as flat tensors ``<prefix>.<param>.<key>`` plus its JSON-able param groups."""
    sd = optimizer.state_dict()
    tensors = {f"{prefix}.{p}.{k}": v.contiguous().cpu() for p, st in sd["state"].items() for k, v in st.items()}
    return tensors, sd["param_groups"]


def restore_optimizer(
    optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], param_groups: list, prefix: str = "optim"
) -> None:
    """Load the state written by `optimizer_tensors` back into ``optimizer``."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in tensors.items():
        if k.startswith(f"{prefix}."):
            p, key = k[len(prefix) + 1 :].split(".", 1)
            state.setdefault(int(p), {})[key] = v
    load_optimizer_state(optimizer, {"state": state, "param_groups": param_groups})


def write_checkpoint(run_dir: str | Path, name: str, fill: Callable[[Path], None], keep: int, keep_every: int = 0) -> Path:
    """Write ``checkpoints/<name>`` atomically: ``fill`` writes the files into a temporary folder, which is then moved in
    place; ``checkpoints/latest`` is pointed at it and only the newest ``keep`` ``step_<n>`` folders are kept, besides
    the milestones: those whose step count n is a multiple of ``keep_every`` (> 0) are never pruned.

    Returns:
        The checkpoint folder.
    """
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    prefix, suffix = temporary_name(name)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=prefix, suffix=suffix))
    fill(tmp)
    final = root / name
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    atomic_write(root / "latest", name.encode())
    kept = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step_"))
    for old in kept[:-keep]:
        if not is_milestone(old.name, keep_every):
            shutil.rmtree(old, ignore_errors=True)
    return final


def is_milestone(name: str, keep_every: int) -> bool:
    """Whether the checkpoint folder ``name`` (``step_<n>``) is one that ``keep_every`` keeps: n a multiple of it (> 0)."""
    step = name.removeprefix("step_")
    return keep_every > 0 and step.isdigit() and int(step) % keep_every == 0


def save_checkpoint(
    run_dir: str | Path,
    agent: MAPPO,
    cfg: Any,
    spec: Any,
    counters: dict[str, int],
    extra: Callable[[Path], None] | None = None,
) -> Path:
    """Write ``checkpoints/step_<env steps>`` atomically and point ``checkpoints/latest`` at it (`write_checkpoint`).

    Args:
        cfg: the run's config dataclass (saved as ``train``; its ``keep_checkpoints`` and ``keep_every`` are honoured).
        extra: writes further files into the (temporary) checkpoint folder before it is moved in place.

    Returns:
        The checkpoint folder.
    """

    def fill(tmp: Path) -> None:
        tensors = {f"agent.{k}": v.detach().contiguous().cpu() for k, v in agent.state_dict().items()}
        optim_tensors, param_groups = optimizer_tensors(agent.optimizer)
        tensors.update(optim_tensors)
        tensors["rng.generator"] = agent.generator.get_state()
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": str(CHECKPOINT_FORMAT)})
        meta = {
            "format": CHECKPOINT_FORMAT,
            "counters": counters,
            "spec": spec.describe(),
            "policy_obs_dim": agent.policy.obs_dim,  # the env's D, or the world model's F for latent actors
            "train": asdict(cfg),
            "optimizer": {"param_groups": param_groups},
        }
        with open(tmp / "config.json", "w") as f:
            json.dump(meta, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        if extra is not None:
            extra(tmp)

    return write_checkpoint(run_dir, f"step_{counters['env_steps']:012d}", fill, cfg.keep_checkpoints, cfg.keep_every)


EVAL_SEED_OFFSET = 1_000_000
"""Greedy evaluation episode e of a run seeded s plays the real env seeded s + EVAL_SEED_OFFSET + e (apart from the
seeds training uses); every loop and benchmark that evaluates or measures random play on those seeds reads it here."""


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The folder ``checkpoints/latest`` names, or None if there is none."""
    pointer = Path(run_dir) / "checkpoints" / "latest"
    if not pointer.is_file():
        return None
    path = pointer.parent / pointer.read_text().strip()
    return path if path.is_dir() else None


def policy_from_checkpoint(path: str | Path) -> tuple[RecurrentPolicy, dict[str, Any]]:
    """The actor saved in a checkpoint folder, rebuilt from its config and weights (CPU, eval mode).

    Returns:
        The policy and the run's saved training config (a dict: ``env_id``, ``env_kwargs``, ...).

    Raises:
        ValueError: not a checkpoint of this format, or weights that do not fit the saved architecture.
    """
    path = Path(path)
    try:
        meta = json.loads((path / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"path: {path} holds no readable checkpoint config.json: {e}") from e
    if not isinstance(meta, dict) or meta.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"path: expected checkpoint format {CHECKPOINT_FORMAT}, got {meta.get('format')!r} in {path}")
    train_cfg, spec = meta["train"], meta["spec"]
    if isinstance(train_cfg["policy"], dict):  # checkpoints from before the policy choice: a GRU config there
        kind, fields = "gru", train_cfg["policy"]
    else:
        kind, fields = train_cfg["policy"], train_cfg[policy_field(train_cfg["policy"])]
    config_type = POLICY_CONFIGS[kind]
    init = {f.name for f in dataclasses.fields(config_type) if f.init}
    policy = make_policy(
        kind,
        meta.get("policy_obs_dim", spec["obs_dim"]),
        spec["n_actions"],
        config_type(**{k: v for k, v in fields.items() if k in init}),
    )
    tensors = load_file(str(path / "model.safetensors"))
    weights = {k[len("agent.policy.") :]: v for k, v in tensors.items() if k.startswith("agent.policy.")}
    try:
        policy.load_state_dict(weights)
    except RuntimeError as e:
        raise ValueError(f"path: the policy weights in {path} do not fit its saved {kind} config: {e}") from e
    return policy.eval(), train_cfg


def load_checkpoint(path: str | Path, agent: MAPPO, spec: Any) -> dict[str, int]:
    """Restore ``agent`` (networks, value normalizer, optimizer, sampling stream) from a checkpoint folder.

    Returns:
        The saved counters (``iteration``, ``env_steps``, ``episodes``).

    Raises:
        ValueError: the checkpoint is of another format, corrupt, made for an env with another spec or
            for another architecture.
        FileNotFoundError: ``path`` holds no checkpoint.
    """
    path = Path(path)
    try:
        with open(path / "config.json") as f:
            meta = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"path: {path / 'config.json'} is not valid JSON (corrupt checkpoint?): {e}") from e
    if not isinstance(meta, dict) or meta.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"path: expected checkpoint format {CHECKPOINT_FORMAT}, got {meta.get('format')!r} in {path}")
    if meta["spec"] != spec.describe():
        raise ValueError(f"path: checkpoint was made for env {meta['spec']}, expected {spec.describe()}")
    try:
        tensors = load_file(str(path / "model.safetensors"), device=str(agent.device))
    except (SafetensorError, OSError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise ValueError(f"path: {path / 'model.safetensors'} cannot be read (corrupt checkpoint?): {e}") from e
    weights = {k[len("agent.") :]: v for k, v in tensors.items() if k.startswith("agent.")}
    expected = {k: tuple(v.shape) for k, v in agent.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in weights.items()}
    if got != expected:
        diff = sorted(k for k in expected.keys() | got.keys() if expected.get(k) != got.get(k))[:5]
        raise ValueError(
            f"path: checkpoint {path} holds another architecture; first differing weights "
            + ", ".join(f"{k}: expected {expected.get(k)}, got {got.get(k)}" for k in diff)
        )
    agent.load_state_dict(weights)
    restore_optimizer(agent.optimizer, tensors, meta["optimizer"]["param_groups"])
    agent.generator.set_state(tensors["rng.generator"].cpu())
    return {k: int(v) for k, v in meta["counters"].items()}


def log_scalars(writer: SummaryWriter, prefix: str, values: dict[str, float], step: int) -> None:
    """Write each of ``values`` as the scalar ``<prefix>/<name>`` at ``step``."""
    for k, v in values.items():
        writer.add_scalar(f"{prefix}/{k}", v, step)


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads (0: leave the count as it is), then restore the previous count."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train(cfg: TrainConfig) -> TrainResult:
    """Train MAPPO on ``cfg.env_id`` for ``cfg.total_steps`` env steps; see the module docstring for outputs."""
    with torch_threads(cfg.torch_threads):
        return _train(cfg)


def _train(cfg: TrainConfig) -> TrainResult:
    seed_everything(cfg.seed)
    run_dir = Path(cfg.run_dir)
    probe = VecEnv(cfg.env_id, num_envs=1, seed=cfg.seed, **cfg.env_kwargs)
    spec = probe.spec
    probe.close()
    policy = make_policy(cfg.policy, spec.obs_dim, spec.n_actions, cfg.policy_config)
    agent = MAPPO(spec, cfg.mappo, policy=policy, critic_config=cfg.critic, seed=cfg.seed)
    counters = {"iteration": 0, "env_steps": 0, "episodes": 0}
    remove_temporaries(run_dir / "checkpoints")  # of a checkpoint write a kill interrupted
    ckpt = latest_checkpoint(run_dir) if cfg.resume else None
    if ckpt is not None:
        counters = load_checkpoint(ckpt, agent, spec)
        print(f"resumed from {ckpt} at {counters['env_steps']} env steps")
    elif cfg.resume:
        print(f"no checkpoint in {run_dir / 'checkpoints'}; starting a fresh run")
    state = load_run_state(ckpt, agent.device) if ckpt is not None else None
    # A resume restores the copies mid-episode where it can; otherwise copy i of a run restarted at iteration k gets
    # seed + k*E + i. A fresh run is `VecEnv(seed=cfg.seed)`.
    env_seed = cfg.seed + counters["iteration"] * cfg.num_envs
    vec = VecEnv(cfg.env_id, num_envs=cfg.num_envs, seed=env_seed, backend=cfg.backend, **cfg.env_kwargs)
    # a resumed run hides what an interrupted run logged after its checkpoint (scalars at steps > env_steps); a run
    # that starts from step 0 hides everything logged in run_dir before (e.g. by an attempt killed before its first
    # checkpoint)
    writer = SummaryWriter(str(run_dir), purge_step=counters["env_steps"] + 1 if ckpt is not None else 0)
    writer.add_text("config", f"```\n{json.dumps(asdict(cfg), indent=2)}\n```", counters["env_steps"])
    storage = agent.new_storage(cfg.num_envs)
    carry = state["carry"] if ckpt is not None and resume_envs(vec, state) else agent.start(vec)
    eval_seed = cfg.seed + EVAL_SEED_OFFSET
    eval_returns: list[tuple[int, float]] = []
    train_returns: list[tuple[int, float]] = []
    train_metrics: list[tuple[int, dict[str, float]]] = []
    metrics: dict[str, float] = {}

    def run_eval() -> None:
        step = counters["env_steps"]
        result = evaluate_and_log(agent, writer, step, cfg.env_id, cfg.eval_episodes, eval_seed, **cfg.env_kwargs)
        eval_returns.append((counters["env_steps"], result["episode_return"]))

    def run_state(carry: Carry) -> Callable[[Path], None]:
        return lambda folder: save_run_state(folder, vec, carry=carry)

    saved_at = -1
    bar = tqdm(total=cfg.iterations * cfg.steps_per_iteration, initial=counters["env_steps"], disable=not cfg.progress,
               unit="step", dynamic_ncols=True)  # fmt: skip
    try:
        if cfg.eval_every and counters["env_steps"] == 0:
            run_eval()
        while counters["iteration"] < cfg.iterations:
            t0 = time.perf_counter()
            lr_scale = 1.0 - counters["iteration"] / cfg.iterations if cfg.anneal_lr else 1.0
            carry, episodes = agent.collect(vec, storage, carry)
            metrics = agent.update(storage, lr_scale, agent.entropy_scale_after(counters["iteration"]))
            before = counters["env_steps"]
            counters["iteration"] += 1
            counters["env_steps"] += cfg.steps_per_iteration
            counters["episodes"] += len(episodes.lengths)
            step = counters["env_steps"]
            log_scalars(writer, "train", metrics, step)
            writer.add_scalar("charts/env_steps_per_s", cfg.steps_per_iteration / (time.perf_counter() - t0), step)
            if len(episodes.lengths):
                ret = float(episodes.returns.mean())
                train_returns.append((step, ret))
                log_scalars(writer, "charts", {"episode_return": ret, "episode_length": float(episodes.lengths.mean())}, step)
                bar.set_postfix(ret=f"{ret:.2f}", refresh=False)
            if means := mean_metrics(episodes.metrics):  # the sampling policy's episodes: the papers' curves
                train_metrics.append((step, means))
                log_scalars(writer, "charts", means, step)
            if cfg.eval_every and step // cfg.eval_every > before // cfg.eval_every:
                run_eval()
            if cfg.checkpoint_every and step // cfg.checkpoint_every > before // cfg.checkpoint_every:
                final, saved_at = save_checkpoint(run_dir, agent, cfg, spec, counters, run_state(carry)), step
            bar.update(cfg.steps_per_iteration)
        if saved_at != counters["env_steps"]:
            final = save_checkpoint(run_dir, agent, cfg, spec, counters, run_state(carry))
    finally:
        bar.close()
        writer.close()
        vec.close()
    return TrainResult(
        counters["env_steps"], counters["iteration"], eval_returns, train_returns, train_metrics, metrics, str(final)
    )
