"""Dream vs reality: per-step error of a fitted world model's open-loop predictions on held-out real episodes.

Collects real episodes with random available actions (a training set and a held-out set from other
seeds), fits the world model, then on held-out windows filters ``context`` real rows into a posterior
and imagines ``horizon`` steps open-loop with the real actions. Per imagined step k it reports the
mean squared error of the decoded observations (present agents) and of the predicted rewards, next to
two references: the error of copying the last context observation ("copy last"), and of predicting
the training-set mean. Writes ``<out>/<env>.json`` and a plot ``<out>/<env>.png``; prints one JSON line.

Usage:
    python examples/benchmarks/dream_vs_reality.py --env-id flatland:5 --env-kwargs dense_reward True --fit-steps 2000
    python examples/benchmarks/dream_vs_reality.py --env-id mpe:simple_spread_v3 --fit-steps 1000 --out benchmarks/dream
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib
import numpy as np
import torch
import tyro

from wmenv.data.collect import random_replay
from wmenv.fit import FitConfig, fit
from wmenv.models.mamba_wm import MAMBAWorldModel, preset

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


@dataclass
class Args:
    """Benchmark settings."""

    env_id: str = "mpe:simple_spread_v3"
    """A `wmenv.envs.make` id with discrete actions."""
    env_kwargs: dict[str, int | float | bool | str] = field(default_factory=dict)
    """Extra keywords for `wmenv.envs.make`."""
    model: str = "small"
    """World-model preset."""
    train_steps: int = 5000
    """Real env steps for fitting."""
    heldout_steps: int = 1000
    """Real env steps held out (other seeds)."""
    fit_steps: int = 1000
    """Gradient steps of the world model."""
    seq_len: int = 20
    """Rows per fitting window."""
    context: int = 8
    """Real rows filtered before imagining."""
    horizon: int = 15
    """Open-loop imagined steps."""
    windows: int = 64
    """Held-out windows evaluated."""
    seed: int = 0
    """Seeds collection, fitting and latent samples."""
    out: str = "benchmarks/dream"
    """Output folder."""


def open_loop_errors(
    model: MAMBAWorldModel, window: dict, context: int, horizon: int, obs_mean: torch.Tensor
) -> dict[str, np.ndarray]:
    """Per imagined step: obs MSE (model / copy-last / mean) and reward MSE (model / zero / mean), each (H,)."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        state = model.observe(window["obs"][:, :context], window["action"][:, :context], window["reset"][:, :context],
                              generator=g, alive=window["alive"][:, :context].bool())  # fmt: skip
        out = {k: [] for k in ("obs_model", "obs_copy_last", "obs_mean", "reward_model", "reward_zero")}
        last = window["obs"][:, context - 1]
        for k in range(horizon):
            t = context + k
            state, pred = model.imagine(state, window["action"][:, t - 1], generator=g, decode=True)
            alive = window["alive"][:, t].bool()
            real_obs, real_r = window["obs"][:, t], window["reward"][:, t]
            for name, guess in (("obs_model", pred.obs), ("obs_copy_last", last), ("obs_mean", obs_mean.expand_as(real_obs))):
                out[name].append(float((guess - real_obs).square().mean(-1)[alive].mean()))
            out["reward_model"].append(float((pred.reward - real_r).square().mean()))
            out["reward_zero"].append(float(real_r.square().mean()))
    return {k: np.array(v) for k, v in out.items()}


def main(args: Args) -> dict:
    """Collect, fit, evaluate open-loop, write JSON + PNG."""
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    train, spec = random_replay(args.env_id, args.train_steps, seed=args.seed, **args.env_kwargs)
    held, _ = random_replay(args.env_id, args.heldout_steps, seed=args.seed + 10_000, **args.env_kwargs)
    spec_desc = train.spec_description
    total = args.context + args.horizon
    if int(held.episode_lengths.max()) + 1 < total:
        raise ValueError(f"context + horizon = {total} rows: longer than every held-out episode; lower them")
    model = MAMBAWorldModel(spec, preset(args.model))
    seq = min(args.seq_len, int(train.episode_lengths.min()) + 1)
    history = fit(model, train, FitConfig(steps=args.fit_steps, batch_size=16, seq_len=seq, seed=args.seed, progress=False))
    model.eval()
    window = held.sample(args.windows, total, generator=args.seed)
    train_obs = train.sample(256, seq, generator=args.seed)
    obs_mean = train_obs["obs"][train_obs["alive"].bool()].mean(0)
    errors = open_loop_errors(model, window, args.context, args.horizon, obs_mean)
    tag = args.env_id.replace(":", "_")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fig, (ax_o, ax_r) = plt.subplots(1, 2, figsize=(10, 4))
    k = np.arange(1, args.horizon + 1)
    for name, style in (("obs_model", "-o"), ("obs_copy_last", "--"), ("obs_mean", ":")):
        ax_o.plot(k, errors[name], style, label=name.removeprefix("obs_").replace("_", " "))
    for name, style in (("reward_model", "-o"), ("reward_zero", "--")):
        ax_r.plot(k, errors[name], style, label=name.removeprefix("reward_").replace("_", " "))
    ax_o.set(title=f"observation MSE per feature, {args.env_id}", xlabel="imagined step", ylabel="MSE")
    ax_r.set(title="reward MSE", xlabel="imagined step")
    for ax in (ax_o, ax_r):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / f"{tag}.png", dpi=120)
    plt.close(fig)
    summary = {
        "benchmark": "dream_vs_reality",
        "env_id": args.env_id,
        "model": args.model,
        "spec": spec_desc,
        "train_steps": args.train_steps,
        "fit_steps": args.fit_steps,
        "final_fit_loss": round(float(np.mean(history["loss"][-20:])), 4),
        "context": args.context,
        "horizon": args.horizon,
        "windows": args.windows,
        "errors": {k: [round(float(x), 5) for x in v] for k, v in errors.items()},
        "wall_clock_s": round(time.perf_counter() - start, 1),
    }
    (out / f"{tag}.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main(tyro.cli(Args))
