"""Dream vs reality: per-step error of a fitted world model's open-loop predictions on held-out real episodes.

Collects real episodes with random available actions (a training set and a held-out set from other
seeds), fits the world model, then on held-out windows filters ``context`` real rows into a posterior
and imagines ``horizon`` steps open-loop with the real actions. Per imagined step k it reports the
mean squared error of the decoded observations (present agents) and of the predicted rewards, next to
two references: the error of copying the last context observation ("copy last"), and of predicting
the training-set mean. Writes ``<out>/<env>.json`` and a plot ``<out>/<env>.png``; prints one JSON line.

Rare events (Flatland with ``dense_reward=True``: +10 on arrival, −5 once on deadlock, plus 0.01 ×
distance progress): an agent-step of an imagined step k is a real *arrival* when its real reward is
above ``arrival_threshold`` (5, half of +10) and a predicted one when the predicted reward is; the same
for *deadlocks* below ``deadlock_threshold`` (−2.5, half of −5). Counted over all B windows × H steps ×
N agent slots (same step, same agent: an event predicted one step early is a miss and a false alarm),
``events`` reports real / predicted / matched counts, recall = matched / real and precision = matched /
predicted (None when the count below is 0). On other envs the two keys count rewards beyond the same
thresholds. The same rows are also scored with real observations up to them, to tell "cannot foresee"
from "cannot recognize": ``events_one_step`` (imagined one step from the posterior of the row before,
with the real action) and ``events_filtered`` (from the posterior that has seen the row's observation).

With ``--mag-candidates L`` the same windows are imagined again with MAG's planner (`wmenv.dream.mag`): each step
keeps, per window, the one of L candidates whose H scored states have the lowest predicted model error; the
lookahead acts uniformly at random among the predicted available actions, the policy that collected the data.
The error predictor is fitted on the training replay after the model; ``mag`` in the JSON holds its errors.

Usage:
    python examples/benchmarks/dream_vs_reality.py --env-id flatland:5 --env-kwargs dense_reward True --fit-steps 2000
    python examples/benchmarks/dream_vs_reality.py --env-id mpe:simple_spread_v3 --fit-steps 1000 --out benchmarks/dream
    python examples/benchmarks/dream_vs_reality.py --env-id flatland:5 --env-kwargs dense_reward True --reward-head twohot \
        --event-rate 0.5 --heldout-steps 3000 --windows 512 --out runs/dream_twohot
    python examples/benchmarks/dream_vs_reality.py --env-id mpe:simple_spread_v3 --mag-candidates 4 --mag-lookahead 6
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import matplotlib
import numpy as np
import report  # noqa: F401 - this checkout's library first on sys.path
import torch
import tyro

from wmenv.data.collect import random_replay
from wmenv.data.samplers import EventStarts
from wmenv.dream import DreamVecEnv
from wmenv.dream.mag import ErrorPredictor, ErrorPredictorConfig, MAGConfig, MAGPlanner, UniformPolicy, fit_error_predictor
from wmenv.fit import FitConfig, fit, fit_window_rows
from wmenv.models.registry import build_model, model_kind
from wmenv.models.world_model import WorldModel

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


@dataclass
class Args:
    """Benchmark settings."""

    env_id: str = "mpe:simple_spread_v3"
    """A `wmenv.envs.make` id with discrete actions."""
    env_kwargs: dict[str, int | float | bool | str] = field(default_factory=dict)
    """Extra keywords for `wmenv.envs.make`."""
    model_kind: str = "mamba"
    """World model (`wmenv.models.registry`): "mamba" or "mabl"."""
    model: str = "small"
    """World-model preset of that kind."""
    train_steps: int = 5000
    """Real env steps for fitting."""
    heldout_steps: int = 1000
    """Real env steps held out (other seeds)."""
    fit_steps: int = 1000
    """Gradient steps of the world model."""
    seq_len: int = 20
    """Rows per fitting window (inside episodes: at most the shortest training episode's rows)."""
    cross_episodes: bool = False
    """Fit on windows that run across episode ends (the model's state reset there), as `FitConfig.cross_episodes`."""
    context: int = 8
    """Real rows filtered before imagining."""
    horizon: int = 15
    """Open-loop imagined steps."""
    windows: int = 64
    """Held-out windows evaluated."""
    reward_head: Literal["mse", "twohot"] | None = None
    """The world model's reward head (`MAMBAConfig.reward_head`); None keeps the preset's."""
    reward_event_weight: float | None = None
    """Weight of the reward loss on event rows (|reward| >= 1; `MAMBAConfig.reward_event_weight`); None keeps the
    preset's (1)."""
    event_rate: float | None = None
    """Fit on windows that hold an event (|reward| >= 1 or a termination) with this probability (`EventStarts`);
    None samples windows uniformly."""
    arrival_threshold: float = 5.0
    """A reward above this is an arrival event (Flatland's +10)."""
    deadlock_threshold: float = -2.5
    """A reward below this is a deadlock event (Flatland's −5)."""
    mag_candidates: int = 0
    """If > 0: also imagine with MAG's planner (`wmenv.dream.mag`), this many candidates per step, and report both."""
    mag_lookahead: int = 6
    """MAG's H: states scored per candidate (the candidate and H - 1 steps under a uniform random actor, the data's)."""
    mag_selection: Literal["per_world", "per_batch"] = "per_world"
    """MAG's selection: each window's own best candidate, or one for the batch (the authors' released code)."""
    mag_predictor_steps: int = 300
    """Minibatches (40 x 20) of fitting MAG's error predictor."""
    stream: bool = False
    """Keep the rows of episodes still running when collection stops (as pieces), e.g. for Atari's long episodes."""
    seed: int = 0
    """Seeds collection, fitting and latent samples."""
    out: str = "benchmarks/dream"
    """Output folder."""


def event_scores(real: torch.Tensor, predicted: torch.Tensor, above: float | None = None, below: float | None = None) -> dict:
    """Recall and precision of events (reward > ``above``, or < ``below``) of predicted vs real rewards (any equal shapes).

    Returns ``real``, ``predicted`` and ``matched`` counts (same position in both) and ``recall`` /
    ``precision`` (None where ``real`` / ``predicted`` is 0).
    """
    if (above is None) == (below is None):
        raise ValueError(f"above, below: expected exactly one threshold, got above={above!r}, below={below!r}")
    hit = (lambda r: r > above) if above is not None else (lambda r: r < below)
    is_real, is_pred = hit(real), hit(predicted)
    n_real, n_pred, matched = int(is_real.sum()), int(is_pred.sum()), int((is_real & is_pred).sum())
    return {
        "real": n_real,
        "predicted": n_pred,
        "matched": matched,
        "recall": round(matched / n_real, 4) if n_real else None,
        "precision": round(matched / n_pred, 4) if n_pred else None,
    }


def open_loop_errors(
    model: WorldModel, window: dict, context: int, horizon: int, obs_mean: torch.Tensor, planner: MAGPlanner | None = None
) -> dict[str, np.ndarray]:
    """Per imagined step: obs MSE (model / copy-last / mean) and reward MSE (model / zero), each (H,);
    plus ``reward_real`` and ``reward_pred``, each (B, H, N), the real and the predicted rewards.
    ``planner``: each step is MAG's pick among candidates instead of one prior sample."""
    g = torch.Generator().manual_seed(0)
    n, present = window["obs"].shape[2], torch.ones(window["obs"].shape[0], window["obs"].shape[2], dtype=torch.bool)
    view = DreamVecEnv(model, 1)._view  # what a latent actor sees in the dream: features and the predicted masks
    if planner is not None:
        planner.reset(present.shape[0], n)
    with torch.no_grad():
        state = model.observe(window["obs"][:, :context], window["action"][:, :context], window["reset"][:, :context],
                              generator=g, alive=window["alive"][:, :context].bool(),
                              global_state=window["state"][:, :context])  # fmt: skip
        out = {k: [] for k in ("obs_model", "obs_copy_last", "obs_mean", "reward_model", "reward_zero")}
        rewards: dict[str, list[torch.Tensor]] = {"real": [], "pred": []}  # per step, (B, N) each
        last = window["obs"][:, context - 1]
        for k in range(horizon):
            t = context + k
            if planner is None:
                state, pred = model.imagine(state, window["action"][:, t - 1], generator=g, decode=True)
            else:
                state, pred = planner.imagine(model, state, window["action"][:, t - 1], g, True, present, view)
            alive = window["alive"][:, t].bool()
            real_obs, real_r = window["obs"][:, t], window["reward"][:, t]
            for name, guess in (("obs_model", pred.obs), ("obs_copy_last", last), ("obs_mean", obs_mean.expand_as(real_obs))):
                out[name].append(float((guess - real_obs).square().mean(-1)[alive].mean()))
            out["reward_model"].append(float((pred.reward - real_r).square().mean()))
            out["reward_zero"].append(float(real_r.square().mean()))
            rewards["real"].append(real_r)
            rewards["pred"].append(pred.reward)
    errors = {k: np.array(v) for k, v in out.items()}
    errors.update({f"reward_{k}": torch.stack(v, dim=1).numpy() for k, v in rewards.items()})  # (B, H, N)
    return errors


def fmt(x: float | None) -> str:
    """A score for the plot: two decimals, or a dash for None."""
    return "-" if x is None else f"{x:.2f}"


def short_horizon_rewards(model: WorldModel, window: dict, context: int, horizon: int) -> dict[str, np.ndarray]:
    """Predicted rewards of rows ``context .. context + horizon - 1`` with real observations up to them, each (B, H, N).

    ``filtered``: from the posterior that has seen row t's observation; ``one_step``: imagined one step
    from the posterior of row t-1 with the real action. Both filter the window from row 0.
    """
    g = torch.Generator().manual_seed(1)
    out: dict[str, list[torch.Tensor]] = {"filtered": [], "one_step": []}
    with torch.no_grad():
        for t in range(context, context + horizon + 1):
            state = model.observe(window["obs"][:, :t], window["action"][:, :t], window["reset"][:, :t],
                                  generator=g, alive=window["alive"][:, :t].bool(),
                                  global_state=window["state"][:, :t])  # fmt: skip
            if t > context:
                out["filtered"].append(model.predict(state).reward)  # of row t - 1
            if t < context + horizon:
                out["one_step"].append(model.imagine(state, window["action"][:, t - 1], generator=g)[1].reward)
    return {k: torch.stack(v, dim=1).numpy() for k, v in out.items()}


def main(args: Args) -> dict:
    """Collect, fit, evaluate open-loop, write JSON + PNG."""
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    train, spec = random_replay(args.env_id, args.train_steps, seed=args.seed, stream=args.stream, **args.env_kwargs)
    held, _ = random_replay(args.env_id, args.heldout_steps, seed=args.seed + 10_000, stream=args.stream, **args.env_kwargs)
    spec_desc = train.spec_description
    total = args.context + args.horizon
    for name, replay in (("train_steps", train), ("heldout_steps", held)):
        if not replay.num_episodes:
            raise ValueError(f"{name}: no episode of {args.env_id} ended in that many random steps; collect more, or "
                             "pass --stream to keep the rows of running episodes")  # fmt: skip
    if int(held.episode_lengths.max()) < total:
        raise ValueError(f"context + horizon = {total} rows: longer than every held-out episode; lower them")
    config = model_kind(args.model_kind).preset(args.model)
    if args.reward_head is not None:
        config = dataclasses.replace(config, reward_head=args.reward_head)
    if args.reward_event_weight is not None:
        config = dataclasses.replace(config, reward_event_weight=args.reward_event_weight)
    reward_head = getattr(config, "reward_head", "twohot")  # DRAMA's is always two-hot
    if args.event_rate is not None:
        train.sampler = EventStarts(train, args.event_rate)
    model = build_model(args.model_kind, spec, config)
    fit_cfg = FitConfig(steps=args.fit_steps, batch_size=16, seq_len=args.seq_len, cross_episodes=args.cross_episodes,
                        seed=args.seed, progress=False)  # fmt: skip
    seq = fit_window_rows(fit_cfg, train)
    fit_cpu, fit_wall = time.process_time(), time.perf_counter()
    history = fit(model, train, dataclasses.replace(fit_cfg, seq_len=seq))
    fit_cpu, fit_wall = time.process_time() - fit_cpu, time.perf_counter() - fit_wall
    model.eval()
    window = held.sample(args.windows, total, generator=args.seed)
    train_obs = train.sample(256, seq, cross_episodes=args.cross_episodes, generator=args.seed)
    obs_mean = train_obs["obs"][train_obs["alive"].bool()].mean(0)
    errors = open_loop_errors(model, window, args.context, args.horizon, obs_mean)
    real_r, pred_r = errors.pop("reward_real"), errors.pop("reward_pred")  # (B, H, N)
    mag = None
    if args.mag_candidates:
        mag_start = time.perf_counter()
        predictor = ErrorPredictor(model, ErrorPredictorConfig(minibatches=args.mag_predictor_steps))
        fitted = fit_error_predictor(predictor, model, train, torch.Generator().manual_seed(args.seed))["loss"]
        config_mag = MAGConfig(args.mag_candidates, args.mag_lookahead, args.mag_selection)
        planner = MAGPlanner(predictor, UniformPolicy(spec.n_actions), config_mag, seed=args.seed)
        planned = open_loop_errors(model, window, args.context, args.horizon, obs_mean, planner)
        planned_events = {
            "arrival": event_scores(real_r, planned["reward_pred"], above=args.arrival_threshold),
            "deadlock": event_scores(real_r, planned["reward_pred"], below=args.deadlock_threshold),
        }
        mag = {
            "candidates": args.mag_candidates, "lookahead": args.mag_lookahead, "selection": args.mag_selection,
            "predictor_loss_first_last": [round(float(np.mean(fitted[:10])), 4), round(float(np.mean(fitted[-10:])), 4)],
            "errors": {k: [round(float(x), 5) for x in planned[k]] for k in ("obs_model", "reward_model")},
            "mean_over_horizon": {k: round(float(np.mean(planned[k])), 5) for k in ("obs_model", "reward_model")},
            "events": planned_events, "seconds": round(time.perf_counter() - mag_start, 1),
        }  # fmt: skip
    short = short_horizon_rewards(model, window, args.context, args.horizon)

    def scores(pred: np.ndarray) -> dict:
        return {
            "arrival": {"threshold": args.arrival_threshold, **event_scores(real_r, pred, above=args.arrival_threshold)},
            "deadlock": {"threshold": args.deadlock_threshold, **event_scores(real_r, pred, below=args.deadlock_threshold)},
        }

    events = scores(pred_r)
    tag = args.env_id.replace(":", "_")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fig, (ax_o, ax_r) = plt.subplots(1, 2, figsize=(10, 4))
    k = np.arange(1, args.horizon + 1)
    for name, style in (("obs_model", "-o"), ("obs_copy_last", "--"), ("obs_mean", ":")):
        ax_o.plot(k, errors[name], style, label=name.removeprefix("obs_").replace("_", " "))
    for name, style in (("reward_model", "-o"), ("reward_zero", "--")):
        ax_r.plot(k, errors[name], style, label=name.removeprefix("reward_").replace("_", " "))
    if mag is not None:
        label = f"model, MAG L={args.mag_candidates} H={args.mag_lookahead}"
        ax_o.plot(k, mag["errors"]["obs_model"], "-s", label=label)
        ax_r.plot(k, mag["errors"]["reward_model"], "-s", label=label)
    ax_o.set(title=f"observation MSE per feature, {args.env_id}", xlabel="imagined step", ylabel="MSE")
    legend = ", ".join(f"{k} R {fmt(v['recall'])} P {fmt(v['precision'])}" for k, v in events.items())
    ax_r.set(title=f"reward MSE ({reward_head})\n{legend}", xlabel="imagined step")
    for ax in (ax_o, ax_r):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / f"{tag}.png", dpi=120)
    plt.close(fig)
    summary = {
        "benchmark": "dream_vs_reality",
        "env_id": args.env_id,
        "model_kind": args.model_kind,
        "model": args.model,
        "reward_head": reward_head,
        "event_rate": args.event_rate,
        "reward_event_weight": getattr(config, "reward_event_weight", 1.0),
        "spec": spec_desc,
        "train_steps": args.train_steps,
        "fit_steps": args.fit_steps,
        "fit_window_rows": seq,
        "cross_episodes": args.cross_episodes,
        "final_fit_loss": round(float(np.mean(history["loss"][-20:])), 4),
        "fit_cpu_s": round(fit_cpu, 1),
        "fit_wall_s": round(fit_wall, 1),
        "fit_rows_per_cpu_s": round(args.fit_steps * 16 * seq / fit_cpu),
        "context": args.context,
        "horizon": args.horizon,
        "windows": args.windows,
        "errors": {k: [round(float(x), 5) for x in v] for k, v in errors.items()},
        "mean_over_horizon": {k: round(float(np.mean(v)), 5) for k, v in errors.items()},
        "events": events,
        "events_one_step": scores(short["one_step"]),
        "events_filtered": scores(short["filtered"]),
        "mag": mag,
        "wall_clock_s": round(time.perf_counter() - start, 1),
    }
    (out / f"{tag}.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main(tyro.cli(Args))
