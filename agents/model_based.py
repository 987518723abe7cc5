"""The model-based loop (MAMBA): collect real episodes -> fit the world model -> train MAPPO inside the dream -> repeat.

Glossary: E real env copies, B dream worlds, N agents, D observation features, F latent features, A actions.

The actor's input is a choice (``actor_input``): the dream's *decoded* observations, so that the same actor
acts on the real env directly (collection and evaluation need no world model), or the model's *latent*
features [h, z], as in MAMBA, where on the real env each agent runs its own copy of the model's filter
(`wmenv.latent.AgentFilters`: own observation plus the present agents' messages). The critic sees every
agent's latent state through attention (`AttentionCritic`, MAMBA §3.2). Dream rollouts start from posteriors of real
context windows and last ``horizon`` (15) steps. Every iteration logs the greedy real-env return against
the real env steps taken so far (TensorBoard ``eval/episode_return``), the world-model loss terms and
the PPO statistics.

After every iteration ``run_dir/checkpoints/step_<real env steps>`` is written atomically: the MAPPO
agent in the model-free checkpoint format (so `agents.train.policy_from_checkpoint` and the ONNX export
read it), plus ``world_model/``, the world model's optimizer, the replay's manifest and the evaluation curve. The
replay itself is saved incrementally in ``run_dir/replay/`` (one segment file per iteration's new episodes), so a
checkpoint writes bytes in proportion to the iteration's new steps, not to the whole replay.
``resume=True`` continues from ``checkpoints/latest`` exactly (`agents.resume`: the real envs mid-episode, the
collector's unfinished episodes, the actor's recurrent state and the filters'), so a run killed anywhere and resumed
gives the uninterrupted run's curve; envs whose state cannot be saved restart from fresh episodes instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch.optim.swa_utils import AveragedModel
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm

from agents.collection import OVERLAPS, RealData
from agents.critic import AttentionCritic, CriticConfig
from agents.mappo import MAPPO, MAPPOConfig
from agents.policies import (
    POLICIES,
    GRUPolicyConfig,
    MambaPolicyConfig,
    MLPPolicyConfig,
    SPMambaConfig,
    make_policy,
    policy_field,
)
from agents.real_ppo import real_rollout
from agents.replay_value import replay_value_targets
from agents.resume import load_run_state, save_run_state
from agents.schedule import achieved_ratios, scheduled_units
from agents.train import (
    EVAL_SEED_OFFSET,
    evaluate_and_log,
    latest_checkpoint,
    load_checkpoint,
    log_scalars,
    optimizer_tensors,
    restore_optimizer,
    save_checkpoint,
    seed_everything,
    torch_threads,
)
from agents.verdict import VerdictConfig, verdict_targets
from wmenv.checks import check_choice, check_device, check_int, check_positive, check_unit_interval
from wmenv.data.collect import mean_metrics
from wmenv.data.persist import remove_temporaries
from wmenv.data.replay import EpisodeReplay, ReplayConfig
from wmenv.data.samplers import DFS, DFSConfig, RecentStarts
from wmenv.dream import DreamVecEnv
from wmenv.dream.mag import ErrorPredictor, MAGConfig, MAGPlanner, fit_error_predictor
from wmenv.dream.vec import TERMINATIONS
from wmenv.envs import make
from wmenv.envs.spec import EnvSpec
from wmenv.fit import FitConfig, fit, fit_learning_rate, fit_window_rows, load_model, model_average, save_model
from wmenv.models.registry import KINDS, build_model, model_kind, with_overrides
from wmenv.models.world_model import WorldModel
from wmenv.optim import adam


@dataclass
class ModelBasedConfig:
    """A model-based run (defaults: small and quick on 2 CPU cores)."""

    env_id: str = "mpe:simple_spread_v3"
    """A `wmenv.envs.make` id (discrete or continuous actions; MAG's rollouts need discrete ones)."""
    env_kwargs: dict[str, int | float | bool | str] = field(default_factory=dict)
    """Extra keywords for `wmenv.envs.make`."""
    schedule: str = "cpu"
    """The named schedule the defaults came from (`SCHEDULES`; set by ``--schedule`` in the example)."""
    iterations: int = 10
    """Loop iterations, i.e. updates (collect -> fit -> dream training)."""
    real_steps: int = 1000
    """Real env steps collected per iteration (with the current actor; rounded up to whole steps of the E copies)."""
    real_episodes: int = 0
    """If > 0, collect until this many episodes have ended instead of ``real_steps`` (the MAMBA paper: 1)."""
    stream: bool = False
    """Also store the rows of episodes still running at the end of each collection (as pieces of them), so that
    updates do not wait for long episodes (Atari) to end. Off: the replay holds whole episodes only."""
    train_ratio: float = 64.0
    """Replayed world-model steps (window rows, B x T per fit step) per real env step (DreamerV3's train ratio).
    Measured against 256 (BENCHMARKS.md, "Train ratio 256 on 64-window fit steps"; 30k real steps, 3 seeds): ahead
    on `mpe:simple_spread_v3`, behind on `mpe:simple_reference_v3` (an earlier plateau on both), at 1.6-2.5x the CPU."""
    dream_ratio: float = 92.16
    """Imagined agent-steps (worlds x horizon x N per PPO iteration) per real env step (default: 8 PPO iterations
    of 256 worlds x 15 steps x 3 MPE agents per 1,000 real steps, the schedule measured in BENCHMARKS.md). Measured
    against 3x (BENCHMARKS.md, "Dream ratio"; 30k real steps, 2 seeds per MPE task): no better actor on
    `mpe:simple_spread_v3`, a worse one on `mpe:simple_reference_v3`, at 1.7x the CPU."""
    fit_steps: int = 0
    """If > 0, exactly this many fit steps per update instead of ``train_ratio`` (the paper's "Number of epochs")."""
    num_envs: int = 4
    """E, real env copies collected in parallel."""
    prefill: int | None = None
    """Real env steps collected with uniformly random actions (available choices, or uniform within a continuous
    space's bounds) before the actor collects: Dreamer's prefill, MBPO's initial exploration, so that the world
    model's first data covers the whole action space. None: the first episode of every copy for continuous actions
    (E x the env's episode limit, or one update's ``real_steps`` without a limit), 0 for discrete ones (a discrete
    actor starts near uniform anyway). Why continuous actions need it: MAPPO's Gaussian starts at std e^-1, and a model
    fitted only on such actions rated large ones highly; the actor learned them and did worse than random on
    MaMuJoCo (BENCHMARKS.md). These steps count as real steps; learning starts as usual when episodes end."""
    explore: float = 0.0
    """Exploration floor of the real collection: after the prefill, each agent's sampled action is replaced by a
    uniformly random one (as the prefill's) with this probability at every real step (0: off). The actor trains in the
    dream only; this keeps actions it has stopped taking in the replay, so the world model goes on being corrected on
    them. Measured once (Flatland in the MAMBA code's settings, 0.05, 25k steps; BENCHMARKS.md): it did not stop the
    actor learning to stay there, and the dream rated driving on worse than without it."""
    model_kind: str = "mamba"
    """World model (`wmenv.models.registry`): "mamba" (MAMBA's RSSM with communication), "mabl" (MABL's bi-level
    model, which reads the env's global state in training) or "drama" (DRAMA's single-agent Mamba-2 model of frames)."""
    model: str = "small"
    """World-model preset of that kind: "small", "smac" or "flatland" ("xs", "s" or "cpu-small" for "drama"; MAMBA also
    "medium", "small-mamba2" and "smac-mamba2")."""
    model_overrides: dict[str, int | float | bool | str] = field(default_factory=dict)
    """Fields of the preset's config replaced, nested ones by dotted names (`wmenv.models.registry.with_overrides`),
    e.g. ``--run.model-overrides head_hidden 128 head_layers 2 rssm.deter 96``; checked when the config is built."""
    reward_event_weight: float | None = None
    """MAMBA's world model: weight of the reward loss on event rows, |reward| >= 1 (`MAMBAConfig.reward_event_weight`;
    BENCHMARKS.md, "Are the events in the observation?"); None keeps the preset's (1)."""
    fit: FitConfig = field(
        default_factory=lambda: FitConfig(steps=200, batch_size=16, seq_len=20, progress=False, compile="steps")
    )
    """World-model fitting per update: windows, learning rate, ... (its ``steps`` is set by the schedule). The
    per-row filtering and the heads are compiled (``compile="steps"``: 1.7x faster fit steps on a 2-core CPU, about
    half a minute of compiling at the first update; ``--fit.compile off`` for eager). Models without a per-row
    recurrence (DRAMA: its loss is parallel over time) are fitted eagerly under ``"steps"``."""
    model_ema: float = 0.0
    """Decay per fit step of an exponential moving average of the world model's weights (`wmenv.fit.model_average`,
    warmed up as TensorFlow's: min(decay, (1 + n) / (10 + n)) at the n-th step); when > 0 the actor imagines, acts on
    the real env (a latent actor's filters) and is evaluated through the average instead of the fitted model, and a
    checkpoint's ``world_model`` is the average (the fitted weights in ``world_model_fit``). 0 (the default): the
    fitted model itself. Measured (BENCHMARKS.md, "A steadier dream: averaged world models"; 0.995, 30k real steps,
    3 seeds on each of `mpe:simple_spread_v3` and `mpe:simple_reference_v3`): the dream's verdict on the actor changes
    by 0.2-0.4 per agent from one iteration to the next instead of 1.2-1.8, but the actor learns no more: level on
    spread (128 fresh episodes per checkpoint: -20.45 against -20.29 over 11-30k), no better on reference (-19.87
    against -19.60; -19.79 against -18.62 at 30k; seeds differ by a std of 1.5). About 0.2 ms of CPU per real step."""
    sampler: Literal["uniform", "dfs"] = "uniform"
    """Where replay windows start: "uniform" over all valid windows, or "dfs", DRAMA's dynamic frequency-based
    sampling (`wmenv.data.DFS`: world-model windows favour rows fitted least; dream starts favour rows the model has
    fitted more than the actor has started from). Its counts are checkpointed with the run. Measured at 30k real steps
    (BENCHMARKS.md, "Where the loop draws from"): no better than uniform on `mpe:simple_spread_v3` (-20.8 against -20.3
    per agent over 11-30k), and on `mpe:simple_reference_v3` one of three seeds collapsed (-55) where the others were
    level."""
    dfs: DFSConfig = field(default_factory=DFSConfig)
    """DFS temperatures and weights (``scale`` None: the run's own ratio of dream starts to fit windows drawn so far,
    0.64 at the default schedule with three agents)."""
    dream_recent: int = 0
    """Dream starts only from the newest episodes holding this many real env steps (`wmenv.data.RecentStarts`), so the
    actor trains from states its latest policies reached rather than from the whole replay's mix of older ones; 0:
    from the whole replay, as the papers do. With ``sampler="uniform"`` only (DFS draws its own dream starts). Measured
    with 5,000 at 30k real steps on two MPE tasks, 3 seeds each (BENCHMARKS.md, "Where the loop draws from"): no
    better than the whole replay (0.4 per agent behind over 11-30k on both)."""
    dream_worlds: int = 256
    """B, imagined worlds stepped in one batch."""
    horizon: int = 15
    """Imagined steps per rollout (the MAMBA paper: 15). Measured at 60 with 64 worlds (the same imagined steps) on
    Flatland-5 in the MAMBA code's settings (BENCHMARKS.md, "A longer horizon, a larger entropy weight"): it did not
    stop the actor learning to stay at the station (one seed of two delayed it past 10k)."""
    context: int = 8
    """Real rows filtered into each dream start."""
    terminations: Literal["sample", "threshold", "expected"] = "sample"
    """How imagined agents end (`DreamVecEnv`): "sample" (a draw from the continuation head), "threshold" (below 0.5),
    or "expected": never, the continuation probability multiplying γ in the dream's GAE instead (MAMBA's and MABL's
    code; the paper schedules use it)."""
    replay_value: float = 0.0
    """Weight of the critic's replay value loss (`agents.replay_value`; DreamerV3's weighs it 0.3): beside the dream's
    targets, the critic regresses λ-returns of real replay windows (their real rewards and terminations, bootstrapped
    from its own values on the windows' filtered posteriors), so that the values the dream's returns end on are
    anchored in real outcomes. 0: off (MAMBA's critic learns in the dream only). Measured once at 0.3 (BENCHMARKS.md,
    "The critic on real returns"): level with off on MPE (30k, 3 seeds), no change to Flatland's collapse (1 seed),
    +8 % CPU per real step."""
    replay_value_windows: int = 64
    """With ``replay_value``: real windows of ``horizon + 1`` rows (fewer where no stored episode is that long), drawn
    afresh for every dream PPO iteration."""
    real_ppo: int = 0
    """PPO updates (each ``mappo.epochs`` passes, clipped against the collecting actor) on each iteration's new real
    episodes (`agents.real_ppo`), right after collecting them (so the actor that collected them learns from them:
    on-policy) and before the world model is fitted (the model that filtered what the actor acted on reads them); then
    the dream's updates follow as usual. 0: off (MAMBA's actor learns in the dream only). Needs in-line collection of
    whole episodes by the actor alone (``overlap="off"``, no ``stream``, no ``explore``); episodes that may hold
    prefill steps are left out. Measured (BENCHMARKS.md, "Real episodes in the actor's updates"): with 1, level on
    MPE (30k, 3 seeds) and Flatland-5's collapse delayed, not stopped (15k, 2 seeds); with 4, one Flatland seed stopped
    departing sooner and the other departed at random play's level: the actor follows what its first real episodes
    rewarded. With 3 (15 passes, model-free MAPPO's epochs) on MPE spread to 100k (3 seeds, "Real PPO beside the
    dream, to 100k"): level with off to ≈ 60k, +0.76 per agent over 70-100k, where off falls behind model-free and 3
    does not; but on MPE reference (2 seeds) 1.0-1.8 per agent worse than off from ≈ 30k on; +10-15 % wall-clock."""
    dream_updates: int = 0
    """If > 0, exactly this many MAPPO iterations (one horizon-long dream rollout + PPO update each) per update
    instead of ``dream_ratio`` (the paper's "Number of updates")."""
    policy: Literal["gru", "mamba", "sp-mamba", "mlp"] = "gru"
    """Actor kind."""
    actor_input: Literal["decoded", "latent"] = "latent"
    """What the actor sees: the world model's "latent" features (acts on the real env through each agent's own
    filter of the model, as MAMBA; the default: measured better on Flatland, equal on MPE, see BENCHMARKS.md) or
    "decoded" observations (acts on the real env with no world model)."""
    gru: GRUPolicyConfig = field(default_factory=GRUPolicyConfig)
    """Architecture of the "gru" actor."""
    mamba: MambaPolicyConfig = field(default_factory=MambaPolicyConfig)
    """Architecture of the "mamba" actor."""
    sp_mamba: SPMambaConfig = field(default_factory=SPMambaConfig)
    """Architecture of the "sp-mamba" actor."""
    mlp: MLPPolicyConfig = field(default_factory=MLPPolicyConfig)
    """Architecture of the "mlp" actor."""
    mappo: MAPPOConfig = field(default_factory=lambda: MAPPOConfig(epochs=5, entropy_coef=0.001))
    """PPO settings for training in the dream (rollout length is set to ``horizon``). The entropy weight is the MAMBA
    paper's 0.001; the model-free default 0.01 was measured once on Flatland-5 in the MAMBA code's settings (BENCHMARKS.md,
    "A longer horizon, a larger entropy weight"): the actor's entropy where it has a choice still fell to 0.07-0.2, and
    its greedy choice was to stay from the first update on, as with 0.001."""
    critic: CriticConfig = field(default_factory=CriticConfig)
    """Attention critic widths and value normalization."""
    verdict: VerdictConfig = field(default_factory=VerdictConfig)
    """Discrete actions: the dream's verdict on every available action at cells of fresh dream starts, as a target for
    the actor beside each dream PPO update (`agents.verdict`: the actor learns the model's verdict on actions it no
    longer samples); ``--verdict.coef`` > 0 turns it on (off by default). Measured at 1 (BENCHMARKS.md, "The verdict
    in the actor's loss"): on Flatland-5 in the MAMBA code's settings it kept the actor departing through 25k on three
    seeds (19.9 % arrived sampled against 12.0 %) but not beyond (25–50k, 2 seeds: level with off or behind), and it
    does not undo a collapse; level on MPE at 30k (3 seeds)."""
    rollout: Literal["sample", "mag"] = "sample"
    """How the dream steps: "sample" draws each next state from the model's prior; "mag" plans it (MAG,
    `wmenv.dream.mag`: the candidate with the lowest predicted model error under the actor; needs a model with
    per-step errors, e.g. MAMBA's)."""
    mag: MAGConfig = field(default_factory=MAGConfig)
    """MAG's candidates L, lookahead H, selection and error predictor (with ``rollout="mag"``)."""
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
    keep_every: int = 0
    """Also keep, for good, every checkpoint taken at a multiple of this many real env steps (0: none), so the run's
    milestones can be measured again later on many fresh episodes (``examples/benchmarks/dream_gap.py
    --all-checkpoints``)."""
    device: str = "cpu"
    """Torch device of the world model, the agent, the dream and MAG's predictor ("cuda" on a GPU; sets
    ``mappo.device``). The envs, the replay and the checkpoints stay on the CPU; an overlapped collection worker's copies
    of the actor and the model are on this device too."""
    torch_threads: int = 1
    """torch intra-op threads (0: torch's default, one per core). One by measurement: this library's small models
    barely split across threads (2 threads alone: 1.2-1.3x faster for 1.5-1.7x the CPU), and with another busy
    process on the cores 2-thread small ops ran 6.8x slower (BENCHMARKS.md, "Model-based loop: cost per real step").
    Raise it on a machine this run has to itself; on CUDA it only affects the CPU-side work."""
    progress: bool = True
    """Show a progress bar over iterations."""
    overlap: Literal["off", "local", "ray"] = "off"
    """Real data collection: "off", in line with learning (each iteration collects with the actor of the moment, then
    learns); "ray", in a worker (a Ray actor; `agents.collection`) that collects the next update's steps while the
    learner fits and trains in the dream, with the actor one update late; "local", the same worker in this process
    (nothing overlaps; the data "ray" gives, without Ray)."""
    ray_address: str | None = None
    """With ``overlap="ray"``: the Ray cluster to join (None: the running Ray, or a local one on this machine)."""

    def __post_init__(self) -> None:
        for name in (
            "iterations",
            "real_steps",
            "num_envs",
            "dream_worlds",
            "horizon",
            "context",
            "eval_episodes",
            "keep_checkpoints",
            "replay_value_windows",
        ):
            check_int(f"ModelBasedConfig.{name}", getattr(self, name))
        for name in ("real_episodes", "fit_steps", "dream_updates", "keep_every", "real_ppo", "dream_recent"):
            check_int(f"ModelBasedConfig.{name}", getattr(self, name), 0)
        if self.prefill is not None:
            check_int("ModelBasedConfig.prefill", self.prefill, 0)
        check_unit_interval("ModelBasedConfig.explore", self.explore, what="a probability", open_high=True)
        for name in ("train_ratio", "dream_ratio"):
            check_positive(f"ModelBasedConfig.{name}", getattr(self, name))
        v = self.replay_value
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (np.isfinite(v) and v >= 0):
            raise ValueError(f"ModelBasedConfig.replay_value: expected a non-negative finite weight, got {v!r}")
        if self.fit.seq_len > self.capacity:
            raise ValueError(
                f"ModelBasedConfig.fit.seq_len: windows of {self.fit.seq_len} rows cannot fit a replay of "
                f"capacity {self.capacity} rows"
            )
        if self.stream and self.real_episodes:
            raise ValueError("ModelBasedConfig.stream: collecting until episodes end (real_episodes) steps one env step "
                             "per call, so streaming would store one-row pieces; use one or the other")  # fmt: skip
        check_choice("ModelBasedConfig.overlap", self.overlap, OVERLAPS)
        self._check_real_ppo()
        device = check_device("ModelBasedConfig.device", self.device)
        if torch.device(self.mappo.device) != device:
            if self.mappo.device != "cpu":  # both set, to different devices
                raise ValueError(f"ModelBasedConfig.mappo.device: {self.mappo.device!r} differs from the run's device "
                                 f"{self.device!r}; set only ModelBasedConfig.device (--device)")  # fmt: skip
            self.mappo = dataclasses.replace(self.mappo, device=self.device)
        check_choice("ModelBasedConfig.model_kind", self.model_kind, tuple(KINDS))
        check_choice("ModelBasedConfig.model", self.model, model_kind(self.model_kind).presets)
        if self.reward_event_weight is not None:
            if self.model_kind != "mamba":
                raise ValueError(f"ModelBasedConfig.reward_event_weight: MAMBA's world model option, the run's model kind "
                                 f"is {self.model_kind!r}")  # fmt: skip
            check_positive("ModelBasedConfig.reward_event_weight", self.reward_event_weight)
        _model_config(self)  # refuses unknown or ill-typed model_overrides now, before any work
        if self.fit.compile == "steps" and not model_kind(self.model_kind).model_cls.steps_compilable:
            self.fit = dataclasses.replace(self.fit, compile="off")  # nothing runs per row: nothing to compile there
        check_choice("ModelBasedConfig.policy", self.policy, POLICIES)
        check_choice("ModelBasedConfig.sampler", self.sampler, ("uniform", "dfs"))
        if self.dream_recent and self.sampler == "dfs":
            raise ValueError(f"ModelBasedConfig.dream_recent: DFS draws its own dream starts; expected 0 with "
                             f"sampler='dfs', got {self.dream_recent}")  # fmt: skip
        check_choice("ModelBasedConfig.actor_input", self.actor_input, ("decoded", "latent"))
        check_choice("ModelBasedConfig.rollout", self.rollout, ("sample", "mag"))
        check_choice("ModelBasedConfig.terminations", self.terminations, TERMINATIONS)
        self._check_model_ema()
        if self.rollout == "mag" and not model_kind(self.model_kind).model_cls.has_step_errors:
            raise ValueError(
                f"ModelBasedConfig.rollout: 'mag' needs a world model with per-step errors, {self.model_kind!r} has none"
            )

    def _check_model_ema(self) -> None:
        """``model_ema`` is a decay in [0, 1), and MAG's planner plans with the errors of the model it steps."""
        check_unit_interval("ModelBasedConfig.model_ema", self.model_ema, what="a decay", open_high=True)
        if self.model_ema and self.rollout == "mag":
            raise ValueError("ModelBasedConfig.model_ema: MAG's error predictor learns the fitted model's errors, and "
                             "with model_ema the dream would step the average; use one or the other")  # fmt: skip

    def _check_real_ppo(self) -> None:
        """``real_ppo`` needs whole episodes collected in line by the current actor alone."""
        why = {"overlap": self.overlap != "off", "stream": self.stream, "explore": self.explore > 0}
        if self.real_ppo and (clash := [k for k, v in why.items() if v]):
            raise ValueError(
                f"ModelBasedConfig.real_ppo: PPO on the real episodes needs them whole and collected by the current "
                f"actor alone; {clash[0]}={getattr(self, clash[0])!r} gives pieces, another actor's or random "
                "actions (use overlap='off', stream=False, explore=0)"
            )


def real_ppo_start(cfg: ModelBasedConfig, spec: EnvSpec, prefill: int) -> int:
    """The real env steps after which every episode that ends was collected by the actor, not the ``prefill``'s random
    actions: where ``real_ppo``'s updates may start (an episode ending then started at most one episode limit per copy
    earlier). Raises ValueError for a prefill on an env without an episode limit (no episode is known to be clean)."""
    if cfg.real_ppo and prefill and spec.episode_limit is None:
        raise ValueError(f"ModelBasedConfig.real_ppo: with {prefill} prefill steps on {cfg.env_id}, whose episodes have "
                         "no step limit, no episode is known to be free of random actions; set prefill=0")  # fmt: skip
    return prefill + cfg.num_envs * spec.episode_limit if prefill else 0


def _model_config(cfg: ModelBasedConfig) -> Any:
    """The world model's config: the run's preset, with its overrides."""
    config = with_overrides(model_kind(cfg.model_kind).preset(cfg.model), cfg.model_overrides,
                            "ModelBasedConfig.model_overrides")  # fmt: skip
    if cfg.reward_event_weight is not None:
        config = dataclasses.replace(config, reward_event_weight=cfg.reward_event_weight)
    return config


def _paper_schedule(env_id: str, env_kwargs: dict, model: str, seq_len: int, fit_steps: int, capacity: int,
                    hidden: int, minibatches: int) -> ModelBasedConfig:  # fmt: skip
    """The MAMBA paper's Appendix A schedule as its code ran it (jbr-ai-labs/mamba, ``configs/dreamer/optimal``).

    After every trajectory: ``fit_steps`` model updates on 40 windows of ``seq_len`` rows (drawn anywhere in the
    replay, across episode ends with the state reset, as the code's ring buffer does); then 4 times,
    imagination from every posterior of 40 fresh windows (40 x (seq_len - 1) worlds, horizon 15, no imagined agent
    ends: the continuation head's probability discounts the λ-returns, ``terminations="expected"``) and 5 PPO
    epochs over minibatches of about 2,000 agent-steps; actor / critic lr 5e-4, entropy 0.001 annealed ×0.99998
    per minibatch step. Its actor is a 2-layer MLP on the agent's features (``Actor``, hidden 400 / 256) and its
    critic attention over the agents' features without recurrence (``AugmentedCritic``). The fit's per-row steps
    are compiled, as in the default schedule (same math; 1.37x faster fit on an H200 at this size, BENCHMARKS.md).
    """
    return ModelBasedConfig(
        schedule="mamba-" + model, env_id=env_id, env_kwargs=env_kwargs, model=model, num_envs=1, real_episodes=1,
        fit_steps=fit_steps,
        fit=FitConfig(batch_size=40, seq_len=seq_len, cross_episodes=True, progress=False, compile="steps"),
        dream_updates=4, terminations="expected",
        dream_worlds=40 * (seq_len - 1), horizon=15, capacity=capacity, policy="mlp",
        mlp=MLPPolicyConfig(hidden=hidden, layers=2), critic=CriticConfig(hidden=hidden, recurrent=False),
        mappo=MAPPOConfig(epochs=5, lr=5e-4, critic_lr=5e-4, entropy_coef=0.001, entropy_decay=0.99998,
                          num_minibatches=minibatches),
    )  # fmt: skip


SCHEDULES: dict[str, Any] = {
    "cpu": ModelBasedConfig,
    # Flatland-5: 1960 worlds x 15 steps x 5 agents / ~2,000 agent-steps per minibatch = 74 minibatches.
    "mamba-flatland": lambda: _paper_schedule("flatland:5", {"dense_reward": True}, "flatland", 50, 40, 500_000, 400, 74),
    # SMAC (5 agents): 760 worlds x 15 x 5 / 2,000 = 29 minibatches.
    "mamba-smac": lambda: _paper_schedule("smacv2:protoss_5_vs_5", {}, "smac", 20, 60, 250_000, 256, 29),
}
"""Named schedules -> a factory of their `ModelBasedConfig`: ``cpu`` (the default, sized for 2 CPU cores) and
the MAMBA paper's (``mamba-flatland``, ``mamba-smac``: paper-size models, for a GPU)."""


def schedule_config(name: str) -> ModelBasedConfig:
    """The `ModelBasedConfig` of a named schedule (a new object each call)."""
    check_choice("schedule", name, tuple(SCHEDULES))
    return SCHEDULES[name]()


def split_schedule(argv: list[str]) -> tuple[ModelBasedConfig, list[str]]:
    """The config of the schedule named by ``--schedule NAME`` in ``argv`` (default ``cpu``), and the other arguments,
    for a command line whose remaining flags override it (``tyro.cli(..., default=config, args=rest)``)."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--schedule", default="cpu", choices=sorted(SCHEDULES))
    known, rest = pre.parse_known_args(argv)
    return schedule_config(known.schedule), rest


@dataclass
class DreamSpec:
    """What MAPPO needs to know about the dream it trains in."""

    n_agents: int
    obs_dim: int
    state_dim: int
    n_actions: int
    discrete: bool = True
    agents: tuple[str, ...] = ()
    """The real env's agent ids (with ``action_spaces``: continuous actions' bounds)."""
    action_spaces: dict[str, Any] | None = None
    """The real env's action spaces."""


REPLAY_SEGMENTS = "replay"
"""The run folder's replay segments (`EpisodeReplay.save_segments`); each checkpoint's ``replay.json`` names its own."""

Predictor = tuple[ErrorPredictor, torch.optim.Optimizer]
"""MAG's error predictor and its optimizer (``rollout="mag"``)."""


def _save(run_dir: Path, cfg: ModelBasedConfig, spec: Any, agent: MAPPO, model: WorldModel,
          wm_optim: torch.optim.Optimizer, replay: EpisodeReplay, counters: dict[str, int],
          curves: dict[str, list], mag: Predictor | None, live: Callable[[Path], None],
          average: AveragedModel | None = None) -> Path:  # fmt: skip
    """Write the checkpoint; ``curves`` are `run`'s ``eval_returns``, ``real_returns`` and ``real_metrics``; ``live``
    writes the run state (`agents.resume`) into its folder; with ``average`` (``model_ema``) its model is the
    checkpoint's ``world_model`` and the fitted one ``world_model_fit``."""

    def extra(folder: Path) -> None:
        live(folder)
        _save_models(folder, model, average)
        tensors, groups = optimizer_tensors(wm_optim)
        tensors["rng.torch"] = torch.get_rng_state()
        save_file(tensors, str(folder / "world_model_optim.safetensors"))
        replay.save_segments(run_dir / REPLAY_SEGMENTS, folder / "replay.json")
        loop = {"param_groups": groups, **curves}
        if average is not None:
            loop["model_ema_updates"] = int(average.n_averaged)
        if mag is not None:
            predictor, optim = mag
            opt_tensors, loop["mag_param_groups"] = optimizer_tensors(optim)
            weights = {f"weight.{k}": v.contiguous() for k, v in predictor.state_dict().items()}
            save_file(weights | {f"optim.{k}": v for k, v in opt_tensors.items()}, str(folder / "mag_predictor.safetensors"))
        (folder / "loop.json").write_text(json.dumps(loop))

    return save_checkpoint(run_dir, agent, cfg, spec, counters, extra)


def _save_models(folder: Path, model: WorldModel, average: AveragedModel | None) -> None:
    """``folder/world_model``: the model the actor acts and imagines through (``average``'s where there is one, else
    ``model``); ``folder/world_model_fit``: the fitted ``model``, where they differ."""
    save_model(folder / "world_model", model if average is None else average.module)
    if average is not None:
        save_model(folder / "world_model_fit", model)


def _restore(folder: Path, cfg: ModelBasedConfig, spec: Any, agent: MAPPO, model: WorldModel,
             wm_optim: torch.optim.Optimizer, mag: Predictor | None,
             average: AveragedModel | None = None) -> tuple[dict[str, int], EpisodeReplay, dict[str, list]]:  # fmt: skip
    """Load a checkpoint written by `_save` into ``agent``, ``model``, ``wm_optim`` (and MAG's predictor, and the
    ``average`` of ``model_ema``).

    Returns:
        The counters, the replay, and the curves `_save` took (``real_metrics`` empty for checkpoints from before it).
    """
    saved = load_model(folder / "world_model", spec, kind=cfg.model_kind)  # first: another kind is the clearest error
    counters = load_checkpoint(folder, agent, spec)
    if saved.config != model.config:
        raise ValueError(
            f"path: the world model in {folder} has config {saved.config}, expected the {cfg.model!r} preset "
            f"(overrides {cfg.model_overrides}) {model.config}"
        )
    fitted = folder / "world_model_fit"
    if fitted.is_dir() != (average is not None):
        raise ValueError(
            f"path: {folder} is a checkpoint of a run with{'' if fitted.is_dir() else 'out'} model_ema (an averaged world "
            f"model), this run has model_ema={cfg.model_ema}; resume it with the setting it was started with"
        )
    if average is None:
        model.load_state_dict(saved.state_dict())
    else:
        model.load_state_dict(load_model(fitted, spec, kind=cfg.model_kind).state_dict())
        average.module.load_state_dict(saved.state_dict())
    try:
        tensors = load_file(str(folder / "world_model_optim.safetensors"))
        loop = json.loads((folder / "loop.json").read_text())
        restore_optimizer(wm_optim, tensors, loop["param_groups"])
        torch.set_rng_state(tensors["rng.torch"])
        curves: dict[str, list] = {k: [(int(n), float(r)) for n, r in loop[k]] for k in ("eval_returns", "real_returns")}
        curves["real_metrics"] = [(int(n), {k: float(v) for k, v in m.items()}) for n, m in loop.get("real_metrics", [])]
        if average is not None:
            average.n_averaged.fill_(int(loop["model_ema_updates"]))
        if mag is not None:
            stored = load_file(str(folder / "mag_predictor.safetensors"))
            pick = lambda prefix: {k[len(prefix) :]: v for k, v in stored.items() if k.startswith(prefix)}  # noqa: E731
            mag[0].load_state_dict(pick("weight."))
            restore_optimizer(mag[1], pick("optim."), loop["mag_param_groups"])
    except (SafetensorError, OSError, json.JSONDecodeError, KeyError, TypeError, ValueError, RuntimeError) as e:
        raise ValueError(
            f"path: {folder} holds no readable world-model optimizer state, curves or MAG predictor (corrupt checkpoint, "
            f"or one of a run without rollout='mag'?): {e!r}"
        ) from e
    replay_cfg = ReplayConfig(capacity=cfg.capacity, seed=cfg.seed)
    if (folder / "replay.safetensors").is_file():  # a checkpoint of a run from before incremental replays
        replay = EpisodeReplay.load(folder / "replay.safetensors", spec, replay_cfg)
    else:
        replay = EpisodeReplay.load_segments(folder / "replay.json", folder.parent.parent / REPLAY_SEGMENTS, spec, replay_cfg)
    return counters, replay, curves


def _learn(cfg: ModelBasedConfig, it: int, counters: dict[str, int], spec: Any, model: WorldModel,
           wm_optim: torch.optim.Optimizer, replay: EpisodeReplay, agent: MAPPO, dream: DreamVecEnv,
           writer: SummaryWriter, mag: Predictor | None = None, fresh: Sequence[int] = (),
           average: AveragedModel | None = None) -> int:  # fmt: skip
    """One update: with ``fresh`` (the replay positions of episodes the current actor just collected), PPO on them
    (``real_ppo``); then fit the world model (and MAG's error predictor after it; ``average``, the ``model_ema``, after
    every fit step), then train the actor in the dream, as much as the schedule asks. The ``dream/*`` scalars are means
    over the iteration's PPO updates (and rollouts). The actor's side (real PPO's filters, the replay value) reads the
    average where there is one.

    Returns:
        The PPO updates run, real and dream (0: the actor did not change).
    """
    real_steps = counters["env_steps"]
    per_rollout = cfg.dream_worlds * cfg.horizon * spec.n_agents
    acting = model if average is None else average.module  # what the actor acts and imagines through
    # first: the model has not changed since it filtered what the actor acted on
    n_real = _real_ppo(cfg, it, counters, per_rollout, acting, replay, agent, writer, fresh) if len(fresh) else 0
    seq = fit_window_rows(cfg.fit, replay)
    rows = cfg.fit.batch_size * seq
    n_fit = cfg.fit_steps or scheduled_units(cfg.train_ratio, real_steps, counters["replayed_steps"], rows)
    if n_fit:
        fit_cfg = dataclasses.replace(cfg.fit, steps=n_fit, seq_len=seq, seed=cfg.seed + it, run_dir=None)
        history = fit(model, replay, fit_cfg, optimizer=wm_optim, average=average)
        counters["replayed_steps"] += n_fit * rows
        for k, v in history.items():
            writer.add_scalar(f"world_model/{k}", float(np.mean(v[-10:])), real_steps)
        if mag is not None:
            g = torch.Generator().manual_seed(cfg.seed + 20_000 + it)
            errors = fit_error_predictor(mag[0], model, replay, g, optimizer=mag[1])["loss"]
            writer.add_scalar("mag/predictor_loss", float(np.mean(errors[-10:])), real_steps)
    n_dream = cfg.dream_updates or scheduled_units(cfg.dream_ratio, real_steps, counters["imagined_agent_steps"], per_rollout)
    if n_dream:
        dream.seed(cfg.seed + 10_000 + it)
        storage, carry = agent.new_storage(cfg.dream_worlds), agent.start(dream)
        done_updates = counters["imagined_agent_steps"] // per_rollout
        imagined = []  # the dream's reward per present agent and step, per rollout (its verdict on the actor)
        updates: list[dict[str, float]] = []  # each PPO update's stats: the iteration logs their means
        biases = []  # the critic's value minus the real λ-return on replay windows (replay_value)
        # replay_value's windows: horizon + 1 rows, or the longest stored episode's (a return needs two rows)
        length = min(cfg.horizon + 1, int(replay.episode_lengths.max())) if cfg.replay_value else 0
        verdicts = torch.Generator(agent.device).manual_seed(cfg.seed + 60_000 + it) if cfg.verdict.coef > 0 else None
        for i in range(n_dream):
            carry, _ = agent.collect(dream, storage, carry)
            imagined.append(float(storage.data["rewards"][storage.data["alive"]].mean()))
            targets = None
            if length >= 2:
                targets = replay_value_targets(
                    acting, agent.critic, replay, cfg.replay_value_windows, length, cfg.mappo.gamma,
                    cfg.mappo.gae_lambda, cfg.replay_value, seed=cfg.seed + 40_000 + done_updates + i,
                )  # fmt: skip
                biases.append(targets.bias)
            policy_targets, verdict_stats = None, {}
            if cfg.verdict.coef > 0:
                policy_targets, verdict_stats = verdict_targets(
                    agent, dream, cfg.verdict, verdicts, seed=cfg.seed + 70_000 + 2 * (done_updates + i)
                )  # fmt: skip
            stats = agent.update(storage, entropy_scale=agent.entropy_scale_after(done_updates + i), value_targets=targets,
                                 policy_targets=policy_targets)  # fmt: skip
            updates.append({**{k: float(v) for k, v in stats.items()}, **verdict_stats})
        counters["imagined_agent_steps"] += n_dream * per_rollout
        extra = {"replay_value_bias": float(np.mean(biases))} if biases else {}
        for k, v in {**mean_metrics(updates), "reward_per_agent_step": float(np.mean(imagined)), **extra}.items():
            writer.add_scalar(f"dream/{k}", float(v), real_steps)
    for k, v in {"fit_steps": n_fit, "dream_updates": n_dream, **achieved_ratios(counters)}.items():
        writer.add_scalar(f"schedule/{k}", v, real_steps)
    return n_real + n_dream


def _real_ppo(cfg: ModelBasedConfig, it: int, counters: dict[str, int], per_rollout: int, model: WorldModel,
              replay: EpisodeReplay, agent: MAPPO, writer: SummaryWriter, fresh: Sequence[int]) -> int:  # fmt: skip
    """``cfg.real_ppo`` PPO updates on the episodes at replay positions ``fresh`` (`agents.real_ppo`), logged as
    ``real_ppo/*`` (the updates' mean stats); returns the updates run."""
    storage = real_rollout(agent, model, [replay.episode(int(i)) for i in fresh], cfg.actor_input, cfg.seed + 50_000 + it)
    scale = agent.entropy_scale_after(counters["imagined_agent_steps"] // per_rollout)  # the dream's annealing so far
    updates = [{k: float(v) for k, v in agent.update(storage, entropy_scale=scale).items()} for _ in range(cfg.real_ppo)]
    stats = {**mean_metrics(updates), "episodes": len(fresh), "agent_steps": int(storage.alive.sum())}
    for k, v in stats.items():
        writer.add_scalar(f"real_ppo/{k}", float(v), counters["env_steps"])
    return cfg.real_ppo


def _check_verdict(cfg: ModelBasedConfig, spec: EnvSpec) -> None:
    """The verdict (`agents.verdict`) scores the available actions of a discrete choice: a ValueError for others."""
    if cfg.verdict.coef > 0 and not spec.discrete:
        raise ValueError(f"ModelBasedConfig.verdict.coef: the verdict scores each available action of a discrete choice; "
                         f"{cfg.env_id} has continuous actions (got coef={cfg.verdict.coef})")  # fmt: skip


def prefill_steps(cfg: ModelBasedConfig, spec: EnvSpec) -> int:
    """The run's random real steps before the actor collects: ``cfg.prefill``, or its default for ``spec``'s actions."""
    if cfg.prefill is not None:
        return cfg.prefill
    if spec.discrete:
        return 0
    return cfg.num_envs * spec.episode_limit if spec.episode_limit else cfg.real_steps


def _samplers(cfg: ModelBasedConfig, replay: EpisodeReplay, state: dict[str, Any] | None) -> tuple[Any, DFS | None]:
    """The dream's start source and, with ``sampler="dfs"``, the `DFS` whose world-model sampler ``replay`` now uses
    (its counts continued from the run ``state``)."""
    if cfg.sampler == "uniform":
        return (replay.using(RecentStarts(cfg.dream_recent)) if cfg.dream_recent else replay), None
    dfs = DFS(replay, cfg.dfs)  # k, unless set: the run's own ratio of dream starts to fit windows drawn
    replay.sampler = dfs.world_model_starts
    if state is not None and state.get("dfs") is not None:
        dfs.load_state_dict(state["dfs"])
    return replay.using(dfs.imagination_starts), dfs


def run(cfg: ModelBasedConfig) -> dict[str, Any]:
    """Run the loop; returns (and writes to ``run_dir/result.json``) the real-env evaluation curve."""
    with torch_threads(cfg.torch_threads):
        return _run(cfg)


def _run(cfg: ModelBasedConfig) -> dict[str, Any]:
    seed_everything(cfg.seed)
    run_dir = Path(cfg.run_dir)
    probe, spec = make(cfg.env_id, **cfg.env_kwargs)
    probe.close()
    per_call = -(-cfg.real_steps // cfg.num_envs)  # steps of each copy per collection
    per_copy = cfg.iterations * per_call
    if cfg.stream and not cfg.real_episodes and per_call < cfg.fit.seq_len:
        raise ValueError(
            f"ModelBasedConfig.stream: {cfg.real_steps} steps over {cfg.num_envs} copies store pieces of "
            f"{per_call} rows per copy, shorter than the fit's windows ({cfg.fit.seq_len} rows)"
        )
    if not cfg.stream and not cfg.real_episodes and spec.episode_limit is not None and per_copy < spec.episode_limit:
        raise ValueError(
            f"ModelBasedConfig.real_steps: {cfg.iterations} iterations x {cfg.real_steps} steps over {cfg.num_envs} copies "
            f"give each copy {per_copy} steps, fewer than one {cfg.env_id} episode ({spec.episode_limit} steps): no "
            "episode could end to fit on; collect more steps, use fewer copies or set real_episodes"
        )
    _check_verdict(cfg, spec)
    prefill = prefill_steps(cfg, spec)
    real_ppo_from = real_ppo_start(cfg, spec, prefill)
    replay = EpisodeReplay(ReplayConfig(capacity=cfg.capacity, seed=cfg.seed), spec=spec)
    model = build_model(cfg.model_kind, spec, _model_config(cfg)).to(cfg.device)
    average = model_average(model, cfg.model_ema) if cfg.model_ema else None
    acting = model if average is None else average.module  # the model the actor acts and imagines through
    wm_optim = adam(model.parameters(), lr=fit_learning_rate(cfg.fit, model))  # --fit.lr, else the model's
    policy_cfg = getattr(cfg, policy_field(cfg.policy))
    feature_dim, state_dim = model.feature_widths()
    actor_dim = spec.obs_dim if cfg.actor_input == "decoded" else feature_dim
    policy = make_policy(cfg.policy, actor_dim, spec.n_actions, policy_cfg)
    critic = AttentionCritic(state_dim, spec.n_agents, cfg.critic)
    mappo_cfg = dataclasses.replace(
        cfg.mappo, rollout_length=cfg.horizon, chunk_length=min(cfg.mappo.chunk_length, cfg.horizon)
    )
    agent = MAPPO(
        DreamSpec(spec.n_agents, actor_dim, state_dim, spec.n_actions, spec.discrete, spec.agents, spec.action_spaces),
        mappo_cfg,
        policy=policy,
        critic=critic,
        seed=cfg.seed,
    )
    counters = {
        "iteration": 0,
        "env_steps": 0,
        "episodes": 0,
        "wall_clock_s": 0,
        "replayed_steps": 0,
        "imagined_agent_steps": 0,
    }
    mag, planner = None, None
    if cfg.rollout == "mag":
        predictor = ErrorPredictor(model, cfg.mag.predictor)
        mag = (predictor, adam(predictor.parameters(), lr=cfg.mag.predictor.lr))
        planner = MAGPlanner(predictor, agent.policy, cfg.mag, seed=cfg.seed + 30_000)
    eval_seed = cfg.seed + EVAL_SEED_OFFSET
    curves: dict[str, list] = {"eval_returns": [], "real_returns": [], "real_metrics": []}
    for folder in (run_dir, run_dir / "checkpoints", run_dir / REPLAY_SEGMENTS):  # writes a kill interrupted
        remove_temporaries(folder)
    ckpt = latest_checkpoint(run_dir) if cfg.resume else None
    state = None
    if ckpt is not None:
        counters, replay, curves = _restore(ckpt, cfg, spec, agent, model, wm_optim, mag, average)
        state = load_run_state(ckpt, agent.device)
        counters.setdefault("replayed_steps", 0)  # checkpoints from before the schedule counted nothing
        counters.setdefault("imagined_agent_steps", 0)
        print(f"resumed from {ckpt} at {counters['env_steps']} real env steps")
    elif cfg.resume:
        print(f"no checkpoint in {run_dir / 'checkpoints'}; starting a fresh run")
    # A resume restores the copies mid-episode where it can; otherwise copy i of a run restarted at iteration k gets
    # seed + k*E + i.
    latent = cfg.actor_input == "latent"
    worker = {"env_id": cfg.env_id, "env_kwargs": cfg.env_kwargs, "num_envs": cfg.num_envs,
              "seed": cfg.seed + counters["iteration"] * cfg.num_envs, "filter_seed": cfg.seed, "stream": cfg.stream,
              "real_steps": cfg.real_steps, "real_episodes": cfg.real_episodes,
              "prefill": prefill, "explore": cfg.explore}  # fmt: skip
    real = RealData(replay, agent, acting if latent else None, cfg.overlap, worker, cfg.ray_address)

    starts, dfs = _samplers(cfg, replay, state)

    def live(folder: Path) -> None:
        vec, parts = real.run_state()
        save_run_state(
            folder, vec, planner=None if planner is None else planner.generator.get_state(),
            dfs=None if dfs is None else dfs.state_dict(), **parts,
        )  # fmt: skip

    dream = DreamVecEnv(
        acting, cfg.dream_worlds, cfg.horizon, start=starts, context=cfg.context, obs=cfg.actor_input, seed=cfg.seed,
        planner=planner, terminations=cfg.terminations,
    )  # fmt: skip
    # a resumed run hides what an interrupted run logged after its checkpoint (scalars at steps > env_steps); a run
    # that starts from step 0 hides everything logged in run_dir before (e.g. by an attempt killed before its first
    # checkpoint)
    writer = SummaryWriter(str(run_dir), purge_step=counters["env_steps"] + 1 if ckpt is not None else 0)
    writer.add_text("config", f"```\n{json.dumps(dataclasses.asdict(cfg), indent=2)}\n```", counters["env_steps"])

    def run_eval(step: int) -> float:
        result = evaluate_and_log(
            agent, writer, step, cfg.env_id, cfg.eval_episodes, eval_seed, acting if latent else None, **cfg.env_kwargs
        )
        return result["episode_return"]

    if ckpt is not None and real.resume(state) and planner is not None:
        planner.generator.set_state(state["planner"].cpu())  # generator states are CPU tensors
    curve, real_returns, real_metrics = curves["eval_returns"], curves["real_returns"], curves["real_metrics"]
    if not curve:
        curve.append((0, run_eval(0)))
    start, elapsed = time.perf_counter(), counters.get("wall_clock_s", 0)
    bar = tqdm(total=cfg.iterations, initial=counters["iteration"], desc="model-based", unit="iter", disable=not cfg.progress)
    try:
        for it in range(counters["iteration"], cfg.iterations):
            newest = int(replay.episode_ids.max()) if replay.num_episodes else -1
            on_policy = cfg.real_ppo and counters["env_steps"] >= real_ppo_from
            returns, steps, metrics = real.collect()
            fresh = np.flatnonzero(replay.episode_ids > newest) if on_policy else ()
            counters["env_steps"] += steps
            counters["episodes"] += len(returns)
            real_steps = counters["env_steps"]
            if returns:
                real_returns.append((real_steps, float(np.mean(returns))))
                writer.add_scalar("charts/real_episode_return", real_returns[-1][1], real_steps)
            if means := mean_metrics(metrics):  # the sampling policy's episodes: the papers' training curves
                real_metrics.append((real_steps, means))
                log_scalars(writer, "charts", {f"real_{k}": v for k, v in means.items()}, real_steps)
            has_data = bool(len(replay.episode_lengths))
            if has_data and _learn(cfg, it, counters, spec, model, wm_optim, replay, agent, dream, writer, mag, fresh,
                                   average):  # fmt: skip
                curve.append((real_steps, run_eval(real_steps)))
            else:  # no finished episode to fit on yet, or the actor did not change: its evaluation would repeat
                curve.append((real_steps, curve[-1][1]))
                writer.add_scalar("eval/episode_return", curve[-1][1], real_steps)
            counters["iteration"] = it + 1
            counters["wall_clock_s"] = elapsed + round(time.perf_counter() - start)
            _save(run_dir, cfg, spec, agent, model, wm_optim, replay, counters, curves, mag, live, average)
            bar.update(1)
            bar.set_postfix(ret=f"{curve[-1][1]:.2f}", refresh=False)
    finally:
        bar.close()
        writer.close()
        real.close()
    _save_models(run_dir, model, average)
    result = {
        "env_id": cfg.env_id,
        "eval_returns": curve,
        "real_returns": real_returns,
        "real_metrics": real_metrics,
        "real_steps": counters["env_steps"],
        "achieved": achieved_ratios(counters),
        "prefill": prefill,
        "config": dataclasses.asdict(cfg),
        "wall_clock_s": elapsed + time.perf_counter() - start,
        "checkpoint": str(latest_checkpoint(run_dir)),
    }
    (run_dir / "result.json").write_text(json.dumps(result, indent=1))
    return result
