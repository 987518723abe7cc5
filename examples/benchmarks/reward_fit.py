"""How much of the per-step reward's variance a world model's reward head explains (issue 11, item 5: why the dream
ranks the actor's episodes poorly).

For the latest checkpoint of each `agents.model_based` run folder given, the newest ``held_out`` whole episodes of the
run's replay are filtered through the checkpoint's world model (posteriors from the real observations and actions,
every episode from its first row), and the reward head's predictions are compared with the real rewards on every row
after the first: R² = 1 − MSE / variance, per agent and for the mean over agents (what the dream's return sums), on

- **posterior** features: the head on what the model makes of the real observation (teacher-forced), and
- **one step**: one imagined step from the previous row's posterior with the real action, as the dream's steps see it.

Those episodes are the newest the checkpoint's model was fitted on, so its R² is in-sample. With ``--variants``, fresh
world models (the run's preset with each variant's overrides, `wmenv.models.registry.with_overrides` names, or another
preset) are fitted on the run's replay less those episodes, ``fit_steps`` steps of 16 × 20 windows with compiled rows
as in the loop, and scored the same way on them, held out: does a larger head, or a larger model, learn the reward
better from the same data? With ``--probe-steps``, a plain MLP fitted from the true observations to the rewards on the
same episodes gives the R² such a network reaches without a world model in between. Prints one JSON line.

Usage:
    python examples/benchmarks/reward_fit.py --out benchmarks/reward_fit/spread_default_s0.json \
        --runs benchmarks/model_ema/spread/default/parts/seed0/runs/mpe_simple_spread_v3_seed0 \
        --variants small: heads128x2:head_hidden=128,head_layers=2 medium:preset=medium --fit-steps 3000 --probe-steps 3000
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import tyro
from report import emit, machine

from agents.train import latest_checkpoint
from wmenv.checks import check_int
from wmenv.data.replay import EpisodeReplay, ReplayConfig
from wmenv.envs import make
from wmenv.fit import FitConfig, fit, load_model
from wmenv.models.registry import build_model, model_kind, with_overrides
from wmenv.models.world_model import WorldModel, flat_rows


@dataclass
class Args:
    """Benchmark settings."""

    runs: list[Path] = field(default_factory=list)
    """Run folders of `agents.model_based` (their ``checkpoints/latest`` and ``replay`` are read)."""
    held_out: int = 100
    """The newest whole episodes of the run's replay that are scored (and left out of the variants' fits)."""
    variants: list[str] = field(default_factory=list)
    """Fresh models fitted on the rest of the replay, ``name:key=value,...``: overrides of the run's preset (dotted
    names for nested fields), ``preset=<name>`` for another preset of the run's kind; ``name:`` is the preset as is."""
    fit_steps: int = 3000
    """Fit steps of each variant (B 16 × T 20)."""
    probe_steps: int = 0
    """Also fit a plain MLP (2 × 256, ReLU; Adam 1e-3, 512 rows a step) for this many steps from the true observation
    of each agent and row to its reward, on the episodes the variants fit on, scored on the same held-out ones: how
    much of the reward such a network learns from the observation itself with this data (0: not)."""
    seed: int = 0
    """Seed of the variants' initial weights and fits, and of the latent samples when scoring."""
    out: Path | None = None
    """Where to write the JSON line (None: print only)."""

    def __post_init__(self) -> None:
        for name in ("held_out", "fit_steps"):
            check_int(name, getattr(self, name))
        check_int("probe_steps", self.probe_steps, 0)
        for item in self.variants:
            parse_variant(item)


def parse_value(text: str) -> int | float | bool | str:
    """A command-line override's value: an int, a float, ``true`` / ``false``, or the text itself."""
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def parse_variant(item: str) -> tuple[str, str | None, dict[str, Any]]:
    """``name:key=value,...`` as (name, preset or None, overrides); a ValueError names the malformed item."""
    name, sep, body = item.partition(":")
    pairs = [p.partition("=") for p in body.split(",") if p]
    if not name or not sep or any(not k or not eq or not v for k, eq, v in pairs):
        raise ValueError(f"variants: expected 'name:key=value,...' (or 'name:'), got {item!r}")
    overrides = {k: parse_value(v) for k, _, v in pairs}
    preset = overrides.pop("preset", None)
    return name, None if preset is None else str(preset), overrides


def r2(pred: np.ndarray, real: np.ndarray) -> float | None:
    """1 − mean squared error / variance of ``real``, rounded; None where ``real`` is constant."""
    var = float(np.var(real))
    return None if var == 0 else round(1 - float(np.mean((pred - real) ** 2)) / var, 4)


def newest_episodes(replay: EpisodeReplay, count: int) -> tuple[list[int], dict[str, torch.Tensor]]:
    """The indices of the newest ``count`` whole episodes and those episodes stacked: field -> (E, T+1, ...) tensors
    (they must have one length, as every MPE episode)."""
    picked = [int(i) for i in np.flatnonzero(replay.whole_episodes)[-count:]]
    episodes = [replay.episode(i, ("obs", "action", "reward", "alive")) for i in picked]
    lengths = sorted({len(e["reward"]) for e in episodes})
    if len(picked) < count or len(lengths) != 1:
        raise ValueError(f"held_out: expected {count} whole episodes of one length in the replay, got {len(picked)} "
                         f"of lengths {lengths}")  # fmt: skip
    return picked, {k: torch.as_tensor(np.stack([e[k] for e in episodes])) for k in episodes[0]}


@torch.no_grad()
def score(model: WorldModel, episodes: dict[str, torch.Tensor], seed: int) -> dict[str, float | None]:
    """R² of ``model``'s reward head on ``episodes`` (rows 1..T): on posterior features and one imagined step."""
    model.eval()
    obs, actions, alive = episodes["obs"].float(), episodes["action"], episodes["alive"].bool()
    E, T1, N = episodes["reward"].shape
    resets = torch.zeros(E, T1, dtype=torch.bool)
    resets[:, 0] = True
    g = torch.Generator().manual_seed(seed)
    posts = model.observe_rows(obs, actions, resets, g, alive)
    posterior = model.predict(flat_rows(posts)).reward.view(E, T1, N)[:, 1:]
    previous = {k: v[:, :-1].flatten(0, 1) for k, v in posts.items()}
    _, imagined = model.imagine(previous, actions[:, :-1].flatten(0, 1), g)
    one_step = imagined.reward.view(E, T1 - 1, N)
    real = episodes["reward"][:, 1:].float().numpy()
    out: dict[str, float | None] = {"reward_std": round(float(real.std()), 4)}
    for name, pred in (("posterior", posterior.numpy()), ("one_step", one_step.numpy())):
        out[f"r2_{name}"] = r2(pred, real)
        out[f"r2_{name}_agent_mean"] = r2(pred.mean(-1), real.mean(-1))
    return out


def observation_probe(train: dict[str, torch.Tensor], held: dict[str, torch.Tensor], steps: int, seed: int) -> float | None:
    """Held-out R² of a 2 × 256 MLP fitted for ``steps`` Adam steps (512 rows each) from observations (standardized
    by the training rows' statistics) to rewards, rows 1..T of present agents."""

    def rows(episodes: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        alive = episodes["alive"][:, 1:].bool()
        return episodes["obs"][:, 1:].float()[alive], episodes["reward"][:, 1:].float()[alive]

    (x, y), (x_held, y_held) = rows(train), rows(held)
    mean, std = x.mean(0), x.std(0) + 1e-6
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(x.shape[-1], 256), torch.nn.ReLU(), torch.nn.Linear(256, 256),
                              torch.nn.ReLU(), torch.nn.Linear(256, 1))  # fmt: skip
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        i = torch.randint(len(x), (512,), generator=g)
        loss = (net((x[i] - mean) / std).squeeze(-1) - y[i]).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return r2(net((x_held - mean) / std).squeeze(-1).numpy(), y_held.numpy())


def measure(run: Path, args: Args) -> dict[str, Any]:
    """The checkpoint's model and each variant, scored on the run's newest ``held_out`` episodes."""
    ckpt = latest_checkpoint(run)
    if ckpt is None:
        raise ValueError(f"runs: {run} holds no checkpoint (checkpoints/latest)")
    saved = json.loads((ckpt / "config.json").read_text())
    train = saved["train"]
    env, spec = make(train["env_id"], **train["env_kwargs"])
    env.close()
    replay = EpisodeReplay.load_segments(ckpt / "replay.json", run / "replay", spec)
    held, episodes = newest_episodes(replay, args.held_out)
    kind = train["model_kind"]
    model = load_model(ckpt / "world_model", spec, kind=kind)
    result: dict[str, Any] = {
        "run": str(run), "checkpoint": ckpt.name, "real_steps": saved["counters"]["env_steps"], "env_id": train["env_id"],
        "model": train["model"], "model_kind": kind, "held_out": args.held_out,
        "checkpoint_model": score(model, episodes, args.seed), "variants": [],
    }  # fmt: skip
    others = sorted(set(range(replay.num_episodes)) - set(held))  # what the variants and the probe learn from
    if args.probe_steps:
        fields = ("obs", "reward", "alive")
        kept = [replay.episode(i, fields) for i in others]
        kept = [e for e in kept if len(e["reward"]) == episodes["reward"].shape[1]]  # whole episodes of that length
        train_rows = {k: torch.as_tensor(np.stack([e[k] for e in kept])) for k in fields}
        result["observation_probe_r2"] = observation_probe(train_rows, episodes, args.probe_steps, args.seed)
    if not args.variants:
        return result
    rest = EpisodeReplay(ReplayConfig(capacity=max(2, len(replay))), spec)
    for index in others:
        rest.add(replay.episode(index))
    for item in args.variants:
        name, preset, overrides = parse_variant(item)
        config = with_overrides(model_kind(kind).preset(preset or train["model"]), overrides, f"variants[{name!r}]")
        torch.manual_seed(args.seed)
        fresh = build_model(kind, spec, config)
        start = time.process_time()
        fit(fresh, rest, FitConfig(steps=args.fit_steps, batch_size=16, seq_len=20, progress=False, compile="steps",
                                   seed=args.seed))  # fmt: skip
        result["variants"].append({
            "name": name, "preset": preset or train["model"], "overrides": overrides,
            "parameters": sum(p.numel() for p in fresh.parameters()), "fit_steps": args.fit_steps,
            "fit_cpu_s": round(time.process_time() - start, 1), **score(fresh, episodes, args.seed),
        })  # fmt: skip
    return result


def main(args: Args) -> dict:
    if not args.runs:
        raise ValueError("runs: expected at least one run folder")
    torch.set_num_threads(1)
    results = [measure(Path(r), args) for r in args.runs]
    return emit({"benchmark": "reward_fit", "results": results, "machine": machine()}, args.out)


if __name__ == "__main__":
    main(tyro.cli(Args))
