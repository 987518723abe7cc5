"""The model-based loop (MAMBA): collect real episodes -> fit the world model -> train MAPPO inside the dream -> repeat.

Glossary: E real env copies, B dream worlds, N agents, D observation features, F latent features, A actions.

The actor is trained on the dream's *decoded* observations, so the same actor acts on the real env
directly (collection and evaluation need no world-model filter); the critic sees every agent's latent
state through attention (`AttentionCritic`, MAMBA §3.2). Dream rollouts start from posteriors of real
context windows and last ``horizon`` (15) steps. Every iteration logs the greedy real-env return against
the real env steps taken so far (TensorBoard ``eval/episode_return``), the world-model loss terms and
the PPO statistics.

After every iteration ``run_dir/checkpoints/step_<real env steps>`` is written atomically: the MAPPO
agent in the model-free checkpoint format (so `agents.train.policy_from_checkpoint` and the ONNX export
read it), plus ``world_model/``, the world model's optimizer, the replay and the evaluation curve.
``resume=True`` continues from ``checkpoints/latest``; the real envs restart from fresh episodes.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm

from agents.critic import AttentionCritic, CriticConfig
from agents.mappo import MAPPO, MAPPOConfig
from agents.policies import POLICIES, GRUPolicyConfig, MambaPolicyConfig, SPMambaConfig, make_policy
from agents.train import (
    evaluate_and_log,
    latest_checkpoint,
    load_checkpoint,
    optimizer_tensors,
    restore_optimizer,
    save_checkpoint,
    seed_everything,
)
from wmenv.checks import check_choice, check_int
from wmenv.data.collect import Collector
from wmenv.data.replay import EpisodeReplay, ReplayConfig
from wmenv.dream import DreamVecEnv
from wmenv.envs import make
from wmenv.envs.vector import VecEnv
from wmenv.fit import FitConfig, fit, load_model, save_model
from wmenv.models.mamba_wm import PRESETS, MAMBAWorldModel, preset


@dataclass
class ModelBasedConfig:
    """A model-based run (defaults: small and quick on 2 CPU cores)."""

    env_id: str = "mpe:simple_spread_v3"
    """A `wmenv.envs.make` id with discrete actions."""
    env_kwargs: dict[str, int | float | bool | str] = field(default_factory=dict)
    """Extra keywords for `wmenv.envs.make`."""
    iterations: int = 10
    """Loop iterations (collect -> fit -> dream training)."""
    real_steps: int = 1000
    """Real env steps collected per iteration (with the current actor; random-free)."""
    num_envs: int = 4
    """E, real env copies collected in parallel."""
    model: str = "small"
    """World-model preset: "small", "smac" or "flatland"."""
    fit: FitConfig = field(default_factory=lambda: FitConfig(steps=200, batch_size=16, seq_len=20, progress=False))
    """World-model fitting per iteration (steps, windows, ...)."""
    dream_worlds: int = 256
    """B, imagined worlds stepped in one batch."""
    horizon: int = 15
    """Imagined steps per rollout (the MAMBA paper: 15)."""
    context: int = 8
    """Real rows filtered into each dream start."""
    dream_updates: int = 8
    """MAPPO iterations (one horizon-long dream rollout + PPO update each) per loop iteration."""
    policy: Literal["gru", "mamba", "sp-mamba"] = "gru"
    """Actor kind."""
    gru: GRUPolicyConfig = field(default_factory=GRUPolicyConfig)
    """Architecture of the "gru" actor."""
    mamba: MambaPolicyConfig = field(default_factory=MambaPolicyConfig)
    """Architecture of the "mamba" actor."""
    sp_mamba: SPMambaConfig = field(default_factory=SPMambaConfig)
    """Architecture of the "sp-mamba" actor."""
    mappo: MAPPOConfig = field(default_factory=lambda: MAPPOConfig(epochs=5, entropy_coef=0.001))
    """PPO settings for training in the dream (rollout length is set to ``horizon``)."""
    critic: CriticConfig = field(default_factory=CriticConfig)
    """Attention critic widths and value normalization."""
    eval_episodes: int = 8
    """Real episodes per greedy evaluation (after every iteration, and before the first)."""
    capacity: int = 500_000
    """Replay capacity in env steps (Appendix A: 5e5 Flatland)."""
    seed: int = 0
    """Seeds everything."""
    run_dir: str = "runs/model_based"
    """TensorBoard events, checkpoints, the final world model and the result JSON."""
    resume: bool = False
    """Continue from ``run_dir/checkpoints/latest`` if there is one (a fresh run otherwise)."""
    keep_checkpoints: int = 2
    """How many of the newest checkpoints to keep."""
    torch_threads: int = 0
    """torch intra-op threads (0: torch's default)."""
    progress: bool = True
    """Show a progress bar over iterations."""

    def __post_init__(self) -> None:
        for name in (
            "iterations",
            "real_steps",
            "num_envs",
            "dream_worlds",
            "horizon",
            "context",
            "dream_updates",
            "eval_episodes",
            "keep_checkpoints",
        ):
            check_int(f"ModelBasedConfig.{name}", getattr(self, name))
        check_choice("ModelBasedConfig.model", self.model, PRESETS)
        check_choice("ModelBasedConfig.policy", self.policy, POLICIES)


@dataclass
class DreamSpec:
    """What MAPPO needs to know about the dream it trains in."""

    n_agents: int
    obs_dim: int
    state_dim: int
    n_actions: int
    discrete: bool = True


def _acting(agent: MAPPO, num_envs: int, n_agents: int):
    """A `collect` policy: samples from ``agent`` with its recurrent state carried across steps."""
    carry = {"state": agent.policy.initial_state(num_envs * n_agents), "first": True}

    def act(step: Any) -> np.ndarray:
        ended = np.asarray(step.terminated) | np.asarray(step.truncated) | np.asarray(step.done)[:, None]
        resets = torch.ones(num_envs * n_agents, dtype=torch.bool) if carry["first"] else torch.as_tensor(ended).flatten()
        carry["first"] = False
        obs = torch.as_tensor(step.obs, dtype=torch.float32).flatten(0, 1)
        mask = torch.as_tensor(step.action_mask).flatten(0, 1)
        actions, _, carry["state"] = agent.act(obs, carry["state"], resets, mask)
        return actions.view(num_envs, n_agents).cpu().numpy()

    return act


def _save(run_dir: Path, cfg: ModelBasedConfig, spec: Any, agent: MAPPO, model: MAMBAWorldModel,
          wm_optim: torch.optim.Optimizer, replay: EpisodeReplay, counters: dict[str, int],
          curve: list[tuple[int, float]], real_returns: list[tuple[int, float]]) -> Path:  # fmt: skip
    def extra(folder: Path) -> None:
        save_model(folder / "world_model", model)
        tensors, groups = optimizer_tensors(wm_optim)
        tensors["rng.torch"] = torch.get_rng_state()
        save_file(tensors, str(folder / "world_model_optim.safetensors"))
        replay.save(folder / "replay.safetensors")
        loop = {"param_groups": groups, "eval_returns": curve, "real_returns": real_returns}
        (folder / "loop.json").write_text(json.dumps(loop))

    return save_checkpoint(run_dir, agent, cfg, spec, counters, extra)


def _restore(folder: Path, cfg: ModelBasedConfig, spec: Any, agent: MAPPO, model: MAMBAWorldModel,
             wm_optim: torch.optim.Optimizer) -> tuple[dict[str, int], EpisodeReplay, list, list]:  # fmt: skip
    """Load a checkpoint written by `_save` into ``agent``, ``model`` and ``wm_optim``.

    Returns:
        The counters, the replay, the evaluation curve and the real training-episode returns.
    """
    counters = load_checkpoint(folder, agent, spec)
    saved = load_model(folder / "world_model", spec)
    if saved.config != model.config:
        raise ValueError(
            f"path: the world model in {folder} has config {saved.config}, expected the {cfg.model!r} preset {model.config}"
        )
    model.load_state_dict(saved.state_dict())
    try:
        tensors = load_file(str(folder / "world_model_optim.safetensors"))
        loop = json.loads((folder / "loop.json").read_text())
        restore_optimizer(wm_optim, tensors, loop["param_groups"])
        torch.set_rng_state(tensors["rng.torch"])
        curves = [[(int(n), float(r)) for n, r in loop[k]] for k in ("eval_returns", "real_returns")]
    except (SafetensorError, OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise ValueError(
            f"path: {folder} holds no readable world-model optimizer state or curves (corrupt checkpoint?): {e!r}"
        ) from e
    replay = EpisodeReplay.load(folder / "replay.safetensors", spec, ReplayConfig(capacity=cfg.capacity, seed=cfg.seed))
    return counters, replay, *curves


def run(cfg: ModelBasedConfig) -> dict[str, Any]:
    """Run the loop; returns (and writes to ``run_dir/result.json``) the real-env evaluation curve."""
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    seed_everything(cfg.seed)
    run_dir = Path(cfg.run_dir)
    probe, spec = make(cfg.env_id, **cfg.env_kwargs)
    probe.close()
    replay = EpisodeReplay(ReplayConfig(capacity=cfg.capacity, seed=cfg.seed), spec=spec)
    model = MAMBAWorldModel(spec, preset(cfg.model))
    wm_optim = torch.optim.Adam(model.parameters(), lr=model.config.lr)
    policy_cfg = {"gru": cfg.gru, "mamba": cfg.mamba, "sp-mamba": cfg.sp_mamba}[cfg.policy]
    policy = make_policy(cfg.policy, spec.obs_dim, spec.n_actions, policy_cfg)
    state_dim = spec.n_agents * model.rssm.feature_dim
    critic = AttentionCritic(state_dim, spec.n_agents, cfg.critic)
    mappo_cfg = dataclasses.replace(
        cfg.mappo, rollout_length=cfg.horizon, chunk_length=min(cfg.mappo.chunk_length, cfg.horizon)
    )
    agent = MAPPO(
        DreamSpec(spec.n_agents, spec.obs_dim, state_dim, spec.n_actions),
        mappo_cfg,
        policy=policy,
        critic=critic,
        seed=cfg.seed,
    )
    counters = {"iteration": 0, "env_steps": 0, "episodes": 0, "wall_clock_s": 0}
    eval_seed, curve, real_returns = cfg.seed + 1_000_000, [], []
    ckpt = latest_checkpoint(run_dir) if cfg.resume else None
    if ckpt is not None:
        counters, replay, curve, real_returns = _restore(ckpt, cfg, spec, agent, model, wm_optim)
        print(f"resumed from {ckpt} at {counters['env_steps']} real env steps")
    elif cfg.resume:
        print(f"no checkpoint in {run_dir / 'checkpoints'}; starting a fresh run")
    # Copy i of a run (re)started at iteration k gets seed + k*E + i.
    vec = VecEnv(cfg.env_id, num_envs=cfg.num_envs, seed=cfg.seed + counters["iteration"] * cfg.num_envs, **cfg.env_kwargs)
    collector = Collector(vec, replay)
    act = _acting(agent, cfg.num_envs, spec.n_agents)
    dream = DreamVecEnv(model, cfg.dream_worlds, cfg.horizon, start=replay, context=cfg.context, obs="decoded", seed=cfg.seed)
    # a resumed run hides what an interrupted run logged after its checkpoint (scalars at steps > env_steps)
    writer = SummaryWriter(str(run_dir), purge_step=counters["env_steps"] + 1 if ckpt is not None else None)

    def run_eval(step: int) -> float:
        result = evaluate_and_log(agent, writer, step, cfg.env_id, cfg.eval_episodes, eval_seed, **cfg.env_kwargs)
        return result["episode_return"]

    if not curve:
        curve.append((0, run_eval(0)))
    start, elapsed = time.perf_counter(), counters.get("wall_clock_s", 0)
    bar = tqdm(total=cfg.iterations, initial=counters["iteration"], desc="model-based", unit="iter", disable=not cfg.progress)
    try:
        for it in range(counters["iteration"], cfg.iterations):
            returns = collector(cfg.real_steps, act)
            counters["env_steps"] += -(-cfg.real_steps // cfg.num_envs) * cfg.num_envs
            counters["episodes"] += len(returns)
            real_steps = counters["env_steps"]
            if returns:
                real_returns.append((real_steps, float(np.mean(returns))))
                writer.add_scalar("charts/real_episode_return", real_returns[-1][1], real_steps)
            if not len(replay.episode_lengths):
                curve.append((real_steps, curve[-1][1]))  # no finished episode to fit on yet
                writer.add_scalar("eval/episode_return", curve[-1][1], real_steps)
            else:
                seq = min(cfg.fit.seq_len, int(replay.episode_lengths.min()) + 1)
                fit_cfg = dataclasses.replace(cfg.fit, seq_len=seq, seed=cfg.seed + it, run_dir=None)
                history = fit(model, replay, fit_cfg, optimizer=wm_optim)
                for k, v in history.items():
                    writer.add_scalar(f"world_model/{k}", float(np.mean(v[-10:])), real_steps)
                dream.seed(cfg.seed + 10_000 + it)
                storage, carry = agent.new_storage(cfg.dream_worlds), agent.start(dream)
                for _ in range(cfg.dream_updates):
                    carry, _ = agent.collect(dream, storage, carry)
                    metrics = agent.update(storage)
                for k, v in metrics.items():
                    writer.add_scalar(f"dream/{k}", float(v), real_steps)
                curve.append((real_steps, run_eval(real_steps)))
            counters["iteration"] = it + 1
            counters["wall_clock_s"] = elapsed + round(time.perf_counter() - start)
            _save(run_dir, cfg, spec, agent, model, wm_optim, replay, counters, curve, real_returns)
            bar.update(1)
            bar.set_postfix(ret=f"{curve[-1][1]:.2f}", refresh=False)
    finally:
        bar.close()
        writer.close()
        vec.close()
    save_model(run_dir / "world_model", model)
    result = {
        "env_id": cfg.env_id,
        "eval_returns": curve,
        "real_returns": real_returns,
        "real_steps": counters["env_steps"],
        "wall_clock_s": elapsed + time.perf_counter() - start,
        "checkpoint": str(latest_checkpoint(run_dir)),
    }
    (run_dir / "result.json").write_text(json.dumps(result, indent=1))
    return result
