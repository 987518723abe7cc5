"""How much MAG's per-batch selection selects for each world, against per-world selection, on the same scores.

Fits a world model on random steps of an env and MAG's error predictor after it, then runs one planned dream
(``worlds`` worlds, random available actions, ``steps`` steps) and records the L × B lookahead scores of every step
(`wmenv.dream.MAGPlanner`; the dream keeps the per-batch pick, the statistics compare both picks on the same
scores). Per step and then averaged over the steps:

- ``agreement``: the fraction of worlds whose own lowest-scoring candidate is the per-batch pick (chance: 1 / L);
- ``gain_per_batch`` / ``gain_per_world``: how far the kept candidate's predicted error lies below the mean of the
  world's L candidates, in units of the world's own standard deviation over its candidates, averaged over worlds.

Per-batch selection takes ``argmin_l Σ_b score[l, b]``, where each world is 1 of B terms; if the candidates of
different worlds are independent its per-world gain is about 1/√B of per-world selection's. Prints one JSON line.

Usage:
    python examples/benchmarks/mag_selection.py --out benchmarks/dream_mag/selection_mpe.json
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import tyro
from einops import rearrange
from report import emit, machine
from torch import Tensor

from agents.policies import make_policy
from wmenv.data.collect import random_replay
from wmenv.dream import DreamVecEnv
from wmenv.dream.mag import ErrorPredictor, MAGConfig, MAGPlanner, fit_error_predictor, pick_candidates
from wmenv.fit import FitConfig, fit
from wmenv.models.mamba_wm import MAMBAWorldModel, preset


@dataclass
class Args:
    """Benchmark settings."""

    env_id: str = "mpe:simple_spread_v3"
    """The env whose random steps the model is fitted on (discrete actions)."""
    train_steps: int = 3000
    """Random real env steps to fit on."""
    fit_steps: int = 600
    """World-model fit steps (16 × 20 windows, the MAMBA `small` preset)."""
    worlds: int = 256
    """B, the dream's worlds (the loop's default)."""
    candidates: int = 4
    """L (MAG's default)."""
    lookahead: int = 6
    """H (MAG's default)."""
    steps: int = 15
    """Planned dream steps recorded (the loop's horizon)."""
    seed: int = 0
    """Seeds the data, the fit, the actor and the dream."""
    threads: int = 1
    """torch threads."""
    out: Path | None = None
    """Also write the JSON line here."""


def selection_stats(score: Tensor) -> dict[str, float]:
    """Per-batch against per-world selection on one step's lookahead scores (L, B): the agreement and the two gains
    (module docstring), with the planner's own rule for each pick. Worlds whose candidates all score the same are left
    out of the gains."""
    picks = {s: pick_candidates(score, s) for s in ("per_batch", "per_world")}  # (B,) each
    kept = {s: score.gather(0, pick[None]).squeeze(0) for s, pick in picks.items()}  # (B,) each
    mean, std = score.mean(0), score.std(0)
    spread = std > 0
    return {
        "agreement": float((picks["per_world"] == picks["per_batch"]).float().mean()),
        **{f"gain_{s}": float(((mean - k) / std)[spread].mean()) for s, k in kept.items()},
    }


def main(args: Args) -> dict:
    torch.set_num_threads(args.threads)
    replay, spec = random_replay(args.env_id, args.train_steps, seed=args.seed)
    torch.manual_seed(args.seed)
    model = MAMBAWorldModel(spec, preset("small"))
    fit(model, replay, FitConfig(steps=args.fit_steps, batch_size=16, seq_len=20, seed=args.seed, progress=False))
    model.eval()
    predictor = ErrorPredictor(model)
    history = fit_error_predictor(predictor, model, replay, torch.Generator().manual_seed(args.seed))["loss"]
    actor = make_policy("gru", model.feature_widths()[0], spec.n_actions).eval()
    cfg = MAGConfig(candidates=args.candidates, lookahead=args.lookahead, selection="per_batch")
    planner = MAGPlanner(predictor, actor, cfg, seed=args.seed)
    scores: list[Tensor] = []
    lookahead = planner._lookahead

    def recorded(*a, **kw) -> Tensor:
        score = lookahead(*a, **kw)
        scores.append(rearrange(score, "(l b) -> l b", l=args.candidates).clone())  # as the planner reads it
        return score

    planner._lookahead = recorded
    env = DreamVecEnv(model, args.worlds, start=replay, seed=args.seed, planner=planner)
    step, g = env.reset(), torch.Generator().manual_seed(args.seed)
    for _ in range(args.steps):
        logits = torch.rand(args.worlds, spec.n_agents, spec.n_actions, generator=g)
        step = env.step(logits.masked_fill(~step.action_mask, -1).argmax(-1))  # a random available action
    per_step = [selection_stats(s) for s in scores]
    summary = {k: sum(row[k] for row in per_step) / len(per_step) for k in per_step[0]}
    return emit({
        "benchmark": "mag_selection", "env_id": args.env_id, "worlds": args.worlds, "candidates": args.candidates,
        "lookahead": args.lookahead, "steps": len(per_step), "chance_agreement": 1 / args.candidates,
        "predictor_loss_first_last": [history[0], history[-1]], **summary,
        "per_batch_over_per_world": summary["gain_per_batch"] / summary["gain_per_world"],
        "per_step": per_step, "machine": f"{machine()}, {args.threads} torch thread(s)",
    }, args.out)  # fmt: skip


if __name__ == "__main__":
    main(tyro.cli(Args))
