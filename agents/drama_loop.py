"""DRAMA's training loop on one real single-agent env (Atari): collect with the current actor, fit the DRAMA world
model, train `agents.dreamer_ac.DreamerAC` in its dream, evaluate on the real game; repeat (issue 16, item 4).

DRAMA's code updates the model and the behaviour once per env step (``TrainDynamicsEverySteps`` and
``TrainAgentEverySteps`` 1, from 1,032 warm-up steps of random actions). On a CPU that costs hundreds of hours per 100k
steps (BENCHMARKS.md, "DRAMA's world model on this machine"), so here an iteration collects ``real_steps`` env steps
and then runs ``fit_steps`` fit steps and ``ac_updates`` actor-critic updates: ``real_steps = fit_steps =
ac_updates = 1`` is the code's schedule (with ``eval_every``, ``checkpoint_every`` and ``log_every`` in env steps, so
that a 100k-iteration run does not evaluate and checkpoint after every step). Rows of running episodes are stored as
they come (streamed collection: each iteration's rows are appended to the stored episode, so windows run across
iterations), DFS draws the windows and the imagination starts by default, and the actor acts on the real env through
the model's filter (its features [h, z], as in the dream).

Each iteration (or each ``checkpoint_every`` env steps) writes an atomic checkpoint (``checkpoints/step_<env
steps>``: the world model, the replay, the learner, the optimizers, DFS counts, counters, curve, random streams, and
the real env mid-episode with the filter's state); ``resume`` continues from the latest, as if never stopped (where
the env can be saved, as ALE's can).

Usage::

    python examples/05_drama.py --env-id atari:Pong --iterations 400 --run-dir runs/drama
    # DRAMA's own schedule (a GPU's): an update after every env step, 100k steps
    python examples/05_drama.py --env-id atari:Pong --model xs --iterations 100000 --real-steps 1 --fit-steps 1 \
        --ac-updates 1 --worlds 1024 --seq-len 128 --eval-every 5000 --checkpoint-every 5000 --log-every 250 --device cuda
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
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm

from agents.dreamer_ac import DreamerAC, DreamerACConfig
from agents.resume import load_run_state, resume_envs, save_run_state
from agents.train import EVAL_SEED_OFFSET, latest_checkpoint, log_scalars, seed_everything, write_checkpoint
from wmenv.checks import check_choice, check_device, check_int
from wmenv.data import DFS, EpisodeReplay, ReplayConfig
from wmenv.data.collect import Collector, random_actions
from wmenv.data.persist import remove_temporaries
from wmenv.data.samplers import DFSConfig
from wmenv.dream import DreamVecEnv
from wmenv.envs.vector import VecEnv
from wmenv.fit import FitConfig, fit, load_model, save_model
from wmenv.latent.filter import AgentFilters
from wmenv.models.registry import build_model, model_kind
from wmenv.optim import adam, load_optimizer_state

REPLAY_SEGMENTS = "replay_segments"


@dataclass
class DRAMALoopConfig:
    """A DRAMA run; defaults are sized for a 2-core CPU (see the module docstring for the code's schedule)."""

    env_id: str = "atari:Pong"
    """A single-agent env with frame observations (`wmenv.envs.make` id)."""
    env_kwargs: dict[str, int | float | bool | str] = field(default_factory=dict)
    """Extra keywords for `wmenv.envs.make` (e.g. ``screen_size 32``)."""
    model: str = "cpu-small"
    """DRAMA preset: "xs", "s" or "cpu-small"."""
    iterations: int = 100
    """Iterations (collect -> fit -> actor-critic)."""
    real_steps: int = 256
    """Env steps collected per iteration (DRAMA: 1)."""
    warmup_steps: int = 1032
    """Random actions, and no updates, until this many env steps were collected (DRAMA: 1,032)."""
    fit_steps: int = 16
    """World-model fit steps per iteration (DRAMA: one per env step)."""
    batch_size: int = 16
    """B, windows per fit step (DRAMA: 16)."""
    seq_len: int = 64
    """T, rows per window (DRAMA: 128)."""
    ac_updates: int = 16
    """Actor-critic updates per iteration, each on a fresh imagination batch (DRAMA: one per env step)."""
    worlds: int = 256
    """Imagined worlds per actor-critic update (DRAMA: 1,024)."""
    context: int = 8
    """Real frames filtered before imagining (DRAMA: 8)."""
    terminations: Literal["threshold", "sample"] = "threshold"
    """How imagined episodes end (`DreamVecEnv`): "threshold", as DRAMA's code (terminated where the termination
    head's probability exceeds 0.5), or "sample" (a Bernoulli draw; an ended world restarts from new real context)."""
    ac: DreamerACConfig = field(default_factory=DreamerACConfig)
    """The actor-critic (its ``horizon`` is the imagined steps per update: DRAMA's 16)."""
    sampler: Literal["dfs", "uniform"] = "dfs"
    """Window and imagination starts: DRAMA's DFS, or uniform."""
    capacity: int = 100_000
    """Replay capacity in env steps (rows)."""
    eval_episodes: int = 1
    """Greedy real episodes per evaluation."""
    eval_every: int = 0
    """Evaluate after a trained iteration that reaches a multiple of this many env steps (0: after every trained
    iteration)."""
    checkpoint_every: int = 0
    """Checkpoint after an iteration that reaches a multiple of this many env steps, and after the last (0: after
    every iteration). A resumed run repeats the iterations since the last checkpoint, the same way."""
    log_every: int = 0
    """Write the fit's and the actor-critic's scalars (the last step's) after a trained iteration that reaches a
    multiple of this many env steps (0: after every trained iteration)."""
    eval_max_steps: int = 5000
    """An evaluation episode is cut after this many steps (a policy that never serves can make Breakout endless)."""
    seed: int = 0
    """Seeds every random stream of the run."""
    device: str = "cpu"
    """Torch device of the world model, the actor-critic and the dream ("cuda": mamba-ssm's kernels where installed).
    The env, the replay and the checkpoints stay on the CPU."""
    run_dir: str = "runs/drama"
    """Checkpoints, TensorBoard events and ``result.json``."""
    resume: bool = False
    """Continue from the latest checkpoint in ``run_dir``."""
    keep_checkpoints: int = 2
    """Checkpoints kept in ``run_dir/checkpoints`` (older ones are deleted after each new one)."""
    keep_every: int = 0
    """Also keep, for good, every checkpoint taken at a multiple of this many env steps (0: none)."""
    progress: bool = True
    """Show a progress bar over iterations."""

    def __post_init__(self) -> None:
        for name in ("iterations", "real_steps", "fit_steps", "batch_size", "seq_len", "ac_updates", "worlds",
                     "context", "capacity", "eval_max_steps", "keep_checkpoints"):  # fmt: skip
            check_int(f"DRAMALoopConfig.{name}", getattr(self, name))
        for name in ("warmup_steps", "eval_episodes", "keep_every", "eval_every", "checkpoint_every", "log_every"):
            check_int(f"DRAMALoopConfig.{name}", getattr(self, name), 0)
        check_choice("DRAMALoopConfig.model", self.model, model_kind("drama").presets)
        check_choice("DRAMALoopConfig.sampler", self.sampler, ("dfs", "uniform"))
        check_choice("DRAMALoopConfig.terminations", self.terminations, ("threshold", "sample"))
        check_device("DRAMALoopConfig.device", self.device)


def _reaches(every: int, before: int, now: int) -> bool:
    """Whether env steps ``before`` -> ``now`` reach a multiple of ``every`` (always, for ``every`` 0)."""
    return every == 0 or now // every > before // every


def _act(learner: DreamerAC, filters: AgentFilters, generator: torch.Generator, random_until: int, counters: dict,
         first: bool):  # fmt: skip
    """The collection policy: random actions during warm-up, then the actor on the filter's features. ``first``: the
    env has not been reset yet (its first step restarts the filter; later episodes restart it where they end)."""
    seed = int(torch.randint(2**31, (1,), generator=generator, device=generator.device))
    rng, first = np.random.default_rng(seed), [first]

    def act(step) -> np.ndarray:
        features = filters.observe_vec(step, first=first[0])  # (1, 1, F)
        first[0] = False
        if counters["env_steps"] < random_until:
            actions = random_actions(filters.spec, step.action_mask, rng)
        else:
            actions = learner.act(features[:, 0], generator)[:, None].cpu().numpy()
        filters.record(actions, step.alive)
        counters["env_steps"] += 1
        return actions

    return act


@torch.no_grad()
def evaluate(model, learner: DreamerAC, cfg: DRAMALoopConfig, seed: int) -> float:
    """Mean return of ``cfg.eval_episodes`` greedy real episodes (each cut at ``eval_max_steps``)."""
    returns = []
    for episode in range(cfg.eval_episodes):
        with VecEnv(cfg.env_id, num_envs=1, seed=seed + episode, **cfg.env_kwargs) as vec:
            filters, step, total = AgentFilters(model, 1, seed + episode), vec.reset(), 0.0
            for t in range(cfg.eval_max_steps):
                features = filters.observe_vec(step, first=t == 0)
                actions = learner.act(features[:, 0], greedy=True)[:, None].cpu().numpy()
                filters.record(actions, step.alive)
                step = vec.step(actions)
                total += float(step.reward.sum())
                if bool(step.done.any()):
                    break
        returns.append(total)
    return float(np.mean(returns))


def _save(run_dir: Path, name: str, model, wm_optim, learner: DreamerAC, replay: EpisodeReplay, dfs: DFS | None,
          generator: torch.Generator, counters: dict, curve: list, cpu: dict, cfg: DRAMALoopConfig, vec: VecEnv,
          collector: Collector, filters: AgentFilters) -> Path:  # fmt: skip
    """Write ``checkpoints/<name>`` atomically, point ``checkpoints/latest`` at it, keep the newest
    ``cfg.keep_checkpoints`` and the ``cfg.keep_every`` milestones (`agents.train.write_checkpoint`)."""

    def fill(tmp: Path) -> None:
        save_model(tmp / "world_model", model)
        replay.save_segments(run_dir / REPLAY_SEGMENTS, tmp / "replay.json")
        save_run_state(
            tmp, vec, learner=learner.state_dict(), ac_optim=learner.optimizer.state_dict(),
            scale=learner.scale.state_dict(), wm_optim=wm_optim.state_dict(),
            dfs=None if dfs is None else dfs.state_dict(), generator=generator.get_state(),
            collector=(collector.step, collector.recorder), filters=filters.get_state(),
        )  # fmt: skip
        loop = {"counters": counters, "curve": curve, "cpu": cpu, "config": dataclasses.asdict(cfg)}
        (tmp / "loop.json").write_text(json.dumps(loop))

    return write_checkpoint(run_dir, name, fill, cfg.keep_checkpoints, cfg.keep_every)


def _resume(ckpt: Path, cfg: DRAMALoopConfig, spec, model, wm_optim, learner: DreamerAC,
            generator: torch.Generator) -> tuple[EpisodeReplay, dict[str, Any], dict[str, Any]]:  # fmt: skip
    """Load checkpoint ``ckpt`` into the run's model, optimizers, learner and generator; returns the replay, the run
    state (`agents.resume`) and the loop's ``loop.json`` (counters, curve, CPU seconds)."""
    model.load_state_dict(load_model(ckpt / "world_model", spec, kind="drama").state_dict())
    replay_cfg = ReplayConfig(capacity=cfg.capacity, seed=cfg.seed)
    replay = EpisodeReplay.load_segments(ckpt / "replay.json", Path(cfg.run_dir) / REPLAY_SEGMENTS, spec, replay_cfg)
    state = load_run_state(ckpt)
    if state is None:
        raise ValueError(f"run_dir: {ckpt} holds no run state (not a DRAMA checkpoint?)")
    learner.load_state_dict(state["learner"])
    load_optimizer_state(learner.optimizer, state["ac_optim"])
    learner.scale.load_state_dict(state["scale"])
    load_optimizer_state(wm_optim, state["wm_optim"])
    generator.set_state(state["generator"])
    return replay, state, json.loads((ckpt / "loop.json").read_text())


def run(cfg: DRAMALoopConfig) -> dict[str, Any]:
    """Train (or continue, with ``cfg.resume``) a DRAMA run; returns the evaluation curve, the counters and the CPU
    seconds per phase (collect, fit, actor_critic, evaluate, checkpoint; summed over the processes that resumed the run,
    up to the last checkpoint of each), also in ``result.json``."""
    seed_everything(cfg.seed)
    run_dir = Path(cfg.run_dir)
    for folder in (run_dir, run_dir / "checkpoints", run_dir / REPLAY_SEGMENTS):
        remove_temporaries(folder)
    vec = VecEnv(cfg.env_id, num_envs=1, seed=cfg.seed, **cfg.env_kwargs)
    spec = vec.spec
    device = torch.device(cfg.device)
    model = build_model("drama", spec, cfg.model).to(device)
    wm_optim = adam(model.parameters(), lr=model.config.lr)
    learner = DreamerAC(model.feature_widths()[0], spec.n_actions, cfg.ac).to(device)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)  # the actor's samples, on the actor's device
    counters, curve = {"iteration": 0, "env_steps": 0, "fit_steps": 0, "ac_updates": 0}, []
    cpu = dict.fromkeys(("collect", "fit", "actor_critic", "evaluate", "checkpoint"), 0.0)  # CPU seconds, all processes
    ckpt = latest_checkpoint(run_dir) if cfg.resume else None
    if ckpt is not None:
        replay, state, loop = _resume(ckpt, cfg, spec, model, wm_optim, learner, generator)
        counters, curve = loop["counters"], [tuple(p) for p in loop["curve"]]
        cpu.update(loop.get("cpu", {}))  # checkpoints from before 2026-12-05 did not keep them
    else:
        replay, state = EpisodeReplay(ReplayConfig(capacity=cfg.capacity, seed=cfg.seed), spec=spec), None
    dfs, starts = None, replay
    if cfg.sampler == "dfs":
        dfs = DFS(replay, DFSConfig(scale=cfg.ac_updates * cfg.worlds / (cfg.fit_steps * cfg.batch_size)))  # per iteration
        if state is not None and state["dfs"] is not None:
            dfs.load_state_dict(state["dfs"])
        replay.sampler, starts = dfs.world_model_starts, replay.using(dfs.imagination_starts)
    filters = AgentFilters(model, 1, cfg.seed)
    collector = Collector(vec, replay, stream=True)
    if state is not None and resume_envs(vec, state):  # the env mid-episode, as it was; else a fresh episode
        collector.step, collector.recorder = state["collector"]
        filters.set_state(state["filters"])
    writer = SummaryWriter(str(run_dir), purge_step=counters["env_steps"] + 1 if ckpt is not None else 0)
    start = time.perf_counter()

    def timed(phase: str, fn, *args, **kwargs):
        began = time.process_time()
        out = fn(*args, **kwargs)
        cpu[phase] += time.process_time() - began
        return out

    bar = tqdm(total=cfg.iterations, initial=counters["iteration"], desc="drama", unit="iter", disable=not cfg.progress)
    try:
        for it in range(counters["iteration"], cfg.iterations):
            before = counters["env_steps"]
            act = _act(learner, filters, generator, cfg.warmup_steps, counters, collector.step is None)
            for r in timed("collect", collector, cfg.real_steps, act):
                writer.add_scalar("charts/real_episode_return", r, counters["env_steps"])
            now = counters["env_steps"]
            if now >= cfg.warmup_steps and _has_windows(replay, cfg.seq_len):
                fit_cfg = FitConfig(steps=cfg.fit_steps, batch_size=cfg.batch_size, seq_len=cfg.seq_len,
                                    seed=cfg.seed + it, progress=False)  # fmt: skip
                history = timed("fit", fit, model, replay, fit_cfg, optimizer=wm_optim)
                dream = DreamVecEnv(model, cfg.worlds, horizon=10**9, start=starts, context=cfg.context, seed=cfg.seed + it,
                                    terminations=cfg.terminations)  # fmt: skip
                for _ in range(cfg.ac_updates):
                    trajectory, _ = timed("actor_critic", learner.imagine, dream, generator)
                    stats = timed("actor_critic", learner.update, trajectory)
                if _reaches(cfg.log_every, before, now):
                    log_scalars(writer, "world_model", {k: float(np.mean(v)) for k, v in history.items()}, now)
                    log_scalars(writer, "actor_critic", stats, now)
                counters["fit_steps"] += cfg.fit_steps
                counters["ac_updates"] += cfg.ac_updates
                if _reaches(cfg.eval_every, before, now):
                    curve.append((now, timed("evaluate", evaluate, model, learner, cfg, cfg.seed + EVAL_SEED_OFFSET)))
                    log_scalars(writer, "eval", {"episode_return": curve[-1][1]}, now)
            counters["iteration"] = it + 1
            if _reaches(cfg.checkpoint_every, before, now) or it + 1 == cfg.iterations:
                timed("checkpoint", _save, run_dir, f"step_{now:012d}", model, wm_optim, learner, replay, dfs,
                      generator, counters, curve, cpu, cfg, vec, collector, filters)  # fmt: skip
            bar.update(1)
            if curve:
                bar.set_postfix(ret=f"{curve[-1][1]:.1f}", refresh=False)
    finally:
        bar.close()
        writer.close()
        vec.close()
    result = {"env_id": cfg.env_id, "eval_returns": curve, "counters": counters, "wall_clock_s": time.perf_counter() - start,
              "cpu_seconds": {k: round(v, 3) for k, v in cpu.items()}, "config": dataclasses.asdict(cfg)}  # fmt: skip
    (run_dir / "result.json").write_text(json.dumps(result, indent=1))
    return result


def _has_windows(replay: EpisodeReplay, length: int) -> bool:
    """Whether some stored episode or piece holds a window of ``length`` rows."""
    lengths = replay.episode_lengths
    return bool(len(lengths)) and int(lengths.max()) >= length
