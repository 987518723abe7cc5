"""The dream's verdict on each available action at real decision cells, against reality's (issue 11, item 5: does the
dream rate driving on a clear line above stopping on it, cell by cell, as the real env does?).

For the latest checkpoint of each `agents.model_based` run folder given (or every kept one), plays ``episodes`` real
episodes with the actor sampling as it collects (a latent actor on its filters' features). At rows where an agent is
alive and has more than one available action, each with probability ``rate`` until ``cells`` are taken, the situation
becomes a *cell*, and every available action ``a`` of that agent is scored twice:

- **real**: the env is branched (`VecEnv.get_state` / `set_state`, one copy per sample), the agent takes ``a`` and
  every other agent its sampled action, then all follow the actor (sampling, its recurrent state and filters carried
  on from the episode) for ``steps`` steps (the run's horizon by default); with ``to_end``, also to the episode's end;
- **dream**: the model's posterior of the cell (`WorldModel.observe` over the run's ``context`` real rows up to it, as
  the loop starts its dreams from replay windows) is imagined ``steps`` steps, ``dream_samples`` times, in a
  `DreamVecEnv` with the run's end rule: the agent takes ``a`` first, the actor acts on the imagined states from a
  fresh recurrent state (as it trains).

A value is the mean over samples of a return discounted by the run's γ: the deciding agent's own (``real_own``,
``dream_own``: what its advantage in MAPPO is made of, and what ``verdicts`` compares) and the team's mean per agent
(``real``, ``dream``; ``verdicts_team``); each real one comes with its standard error over the samples (``*_se``).
``dream_own_negative`` is the sum of the agent's negative imagined rewards alone and ``dream_own_ended`` the fraction
of futures that end it (its continuation head): where an imagined penalty comes from. ``dream_value_own`` adds the
run's critic's value of the last imagined state (γ^steps V where the agent was cut by the horizon): the dream's
estimate of the action's value, which with ``to_end`` ``verdicts_value`` compares with the real return to the
episode's end (``real_end_own``). What the dream's mask does not offer at the cell (its predicted
availability) is scored in reality only.

Summaries per pattern of available actions (``"101"``), split by ``info_key`` as `choice_profile.py` does: the mean
value of each action relative to the cell's mean over its compared actions, in reality and in the dream; how often
the two name the same best action; their correlation over cell-actions; and how often the actor's most likely action
is reality's and the dream's best. Prints one JSON line.

Usage:
    python examples/benchmarks/choice_verdict.py --episodes 4 --cells 40 --info-key state \
        --out benchmarks/choice_verdict/flatland_mamba_env.json \
        --runs benchmarks/model_based_flatland100k/mamba_env/parts/seed1/runs/flatland_5_seed1
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import tyro
from choice_profile import info_tags
from dream_gap import over_checkpoints
from einops import repeat
from safetensors.torch import load_file

from agents.critic import AttentionCritic, CriticConfig
from agents.policies.base import index_state, mask_logits, sample_actions
from agents.train import first_episodes, policy_from_checkpoint
from agents.verdict import branched_returns
from wmenv.checks import check_int, check_unit_interval
from wmenv.dream import DreamVecEnv
from wmenv.envs import make
from wmenv.envs.vector import VecEnv, VecStep
from wmenv.fit import load_model
from wmenv.latent.filter import AgentFilters


@dataclass
class Args:
    """Benchmark settings."""

    runs: list[Path] = field(default_factory=list)
    """`agents.model_based` run folders with discrete actions."""
    episodes: int = 4
    """Real episodes per checkpoint (one env copy each) in which cells are taken."""
    cells: int = 40
    """At most this many cells per checkpoint."""
    rate: float = 0.1
    """Each row with a choice becomes a cell with this probability (until ``cells`` are taken): cells spread over the
    episodes instead of crowding their first steps."""
    samples: int = 8
    """Real futures per available action (each a branched env copy)."""
    dream_samples: int | None = 64
    """Imagined futures per available action (one batched dream: cheap); None: as many as ``samples``."""
    steps: int | None = None
    """Steps of each future; None: the run's horizon (what the actor's dream rollouts are)."""
    to_end: bool = False
    """Also play every real future to its episode's end (``real_end``; Flatland: up to the episode's step limit)."""
    all_checkpoints: bool = False
    """Every kept ``checkpoints/step_*`` of each run, not only the latest."""
    info_key: str | None = None
    """Split the cells by this per-agent info value (Flatland: ``state``; `choice_profile.Args.info_key`)."""
    seed: int = 7_000_000
    """Real episode i is seeded ``seed + i``; the actor's samples, the cells and the futures draw from ``seed`` too."""
    out: Path | None = None
    """Where to write the JSON line (None: print only)."""

    def __post_init__(self) -> None:
        for name in ("episodes", "cells", "samples"):
            check_int(name, getattr(self, name))
        for name in ("steps", "dream_samples"):
            if getattr(self, name) is not None:
                check_int(name, getattr(self, name))
        check_unit_interval("rate", self.rate, what="a probability", open_low=True)


def branch_index(world: int, n_agents: int, copies: int) -> torch.Tensor:
    """(copies·N,) row indices that repeat world ``world``'s N agent rows (world-major rows) ``copies`` times."""
    return repeat(torch.arange(n_agents) + world * n_agents, "n -> (c n)", c=copies)


def step_rows(step: VecStep, world: int, copies: int) -> VecStep:
    """``step``'s copy ``world`` repeated ``copies`` times (the `VecStep` a branched `VecEnv` starts at)."""
    lists = ("infos", "episode_metrics")
    arrays = {f.name: np.repeat(getattr(step, f.name)[world : world + 1], copies, axis=0)
              for f in dataclasses.fields(VecStep) if f.name not in lists}  # fmt: skip
    infos = [step.infos[world] if step.infos else {} for _ in range(copies)]
    return VecStep(**arrays, infos=infos, episode_metrics=[{} for _ in range(copies)])


def forced(actions: np.ndarray, agent: int, choices: np.ndarray) -> np.ndarray:
    """(C, N) ``actions`` with agent ``agent``'s replaced by ``choices`` (C,)."""
    out = actions.copy()
    out[:, agent] = choices
    return out


def returns(rewards: list[np.ndarray], agent: int, gamma: float) -> tuple[np.ndarray, np.ndarray]:
    """Per copy, the discounted sum (step t weighed γ^t) of the team's mean reward and of the agent's own, from (C, N)
    per-step rewards already zeroed after a copy's end."""
    if not rewards:
        raise ValueError("rewards: expected at least one step")
    r = np.stack(rewards) * gamma ** np.arange(len(rewards))[:, None, None]  # (T, C, N)
    return r.mean(-1).sum(0), r[:, :, agent].sum(0)


def critic_from_checkpoint(ckpt: Path, train: dict[str, Any], model: Any) -> AttentionCritic:
    """The attention critic a model-based checkpoint trained (on ``model``'s centralized features), in eval mode."""
    critic = AttentionCritic(model.feature_widths()[1], model.spec.n_agents, CriticConfig(**train["critic"]))
    tensors = load_file(str(ckpt / "model.safetensors"))
    critic.load_state_dict({k[len("agent.critic.") :]: v for k, v in tensors.items() if k.startswith("agent.critic.")})
    return critic.eval()


class Brancher:
    """Scores a cell's actions in reality and in the dream (module docstring); one per checkpoint."""

    def __init__(self, model: Any, policy: Any, critic: AttentionCritic, train: dict[str, Any], args: Args) -> None:
        self.model, self.policy, self.critic, self.train, self.args = model, policy, critic, train, args
        self.gamma = float(train["mappo"]["gamma"])
        self.spec = model.spec
        self.latent = train["actor_input"] == "latent"
        self.steps = args.steps or int(train["horizon"])
        self.copies = self.spec.n_actions * args.samples
        self.dream_samples = args.dream_samples or args.samples
        self.dream_copies = self.spec.n_actions * self.dream_samples
        self.generator = torch.Generator().manual_seed(args.seed + 1)
        self.vec = VecEnv(train["env_id"], num_envs=self.copies, seed=args.seed, **train["env_kwargs"])
        self.dream = DreamVecEnv(model, self.dream_copies, self.steps, obs=train["actor_input"], seed=args.seed,
                                 terminations=train.get("terminations", "sample"))  # fmt: skip

    def close(self) -> None:
        self.vec.close()

    def choices(self, available: np.ndarray, samples: int) -> np.ndarray:
        """(A·samples,) the forced action of each copy: action a for the samples of a, the first available one for
        the copies of unavailable actions (run, then discarded)."""
        slot = np.repeat(np.arange(self.spec.n_actions), samples)
        return np.where(available[slot], slot, int(np.flatnonzero(available)[0]))

    def real(self, snapshot: bytes, step: VecStep, world: int, agent: int, resets: np.ndarray, filters: Any,
             policy_state: Any) -> dict[str, np.ndarray]:  # fmt: skip
        """(A, samples) real returns of each forced action: over ``steps`` steps and (``to_end``) to the episode's end."""
        C, N = self.copies, self.spec.n_agents
        start = step_rows(step, world, C)
        choose = self.choices(start.action_mask[0, agent], self.args.samples)
        index = branch_index(world, N, C)
        branch_filters = None
        if filters is not None:
            branch_filters = AgentFilters(self.model, C, self.args.seed)
            state = filters.get_state()
            branch_filters.set_state({
                "generator": state["generator"], "state": index_state(state["state"], index),
                "prev_action": state["prev_action"][index],
                "features": repeat(state["features"][world], "n f -> c n f", c=C),
            })  # fmt: skip
        h = index_state(policy_state, index)
        first = True

        def act(inputs: Any, s: VecStep, running: np.ndarray, r: np.ndarray) -> np.ndarray:
            nonlocal h, first
            x = torch.as_tensor(inputs, dtype=torch.float32).flatten(0, 1)
            out, h = self.policy.step(x, h, torch.as_tensor(r).flatten())
            actions = sample_actions(mask_logits(out, torch.as_tensor(s.action_mask).flatten(0, 1)), self.generator)
            actions = actions.view(C, N).numpy()
            if first:  # the cell's agent takes the action its copy scores; the others their sampled ones
                first, actions = False, forced(actions, agent, choose)
            return actions

        rewards: list[np.ndarray] = []
        episodes = first_episodes(self.vec, act, self.model if self.latent else None, filters=branch_filters,
                                  start=([snapshot] * C, start, np.repeat(resets[world : world + 1], C, 0)))  # fmt: skip
        for _, _, after, running in episodes:
            rewards.append(np.where(running[:, None], after.reward, 0.0))
            if len(rewards) == self.steps and not self.args.to_end:
                break
        episodes.close()
        short = returns(rewards[: self.steps], agent, self.gamma)  # fewer steps where every copy's episode ended first
        shape = (self.spec.n_actions, self.args.samples)
        out = {"real": short[0].reshape(shape), "real_own": short[1].reshape(shape)}
        if self.args.to_end:
            team, own = returns(rewards, agent, self.gamma)
            out["real_end"], out["real_end_own"] = team.reshape(shape), own.reshape(shape)
        return out

    @torch.no_grad()
    def imagined(self, window: dict[str, torch.Tensor], agent: int, available: np.ndarray) -> dict[str, Any]:
        """(A, samples) imagined returns of each forced action from the posterior of ``window`` (1, T, ...) rows, and
        the agent's own with the critic's value of the last imagined state added (γ^steps V, where it is alive)."""
        C = self.dream_copies
        posterior = self.model.observe(window["obs"], window["action"], window["reset"], None, self.generator,
                                       window["alive"], global_state=window["state"])  # fmt: skip
        self.dream.seed(int(torch.randint(2**62, (1,), generator=self.generator)))
        s = self.dream.reset(start={k: repeat(v[0], "... -> c ...", c=C) for k, v in posterior.items()})
        offered = s.action_mask[0, agent].numpy() & available
        choose = torch.as_tensor(self.choices(offered if offered.any() else available, self.dream_samples))
        out = branched_returns(self.dream, s, self.policy, self.critic, torch.full((C,), agent), choose, self.gamma,
                               self.generator)  # fmt: skip
        shape = (self.spec.n_actions, self.dream_samples)
        names = {"team": "dream", "own": "dream_own", "valued": "dream_value_own", "negative": "dream_own_negative",
                 "ended": "dream_own_ended"}  # fmt: skip
        return {name: out[k].double().numpy().reshape(shape) for k, name in names.items()} | {"dream_offered": offered}

    def cell(self, cell: dict[str, Any]) -> dict[str, Any]:
        """Score one cell (`cells_of`'s record) in reality and in the dream: its summary record (module docstring)."""
        step, world, agent = cell["step"], cell["world"], cell["agent"]
        available = step.action_mask[world, agent].copy()
        real = self.real(cell["snapshot"], step, world, agent, cell["resets"], cell["filters"], cell["policy_state"])
        dream = self.imagined(cell["window"], agent, available)
        offered = dream.pop("dream_offered")
        out = {"episode": world, "t": cell["t"], "agent": int(agent), "tag": cell["tag"], "available": available.tolist(),
               "probs": [round(float(p), 4) for p in cell["probs"]], "dream_offered": offered.tolist()}  # fmt: skip
        for name, values in {**real, **dream}.items():
            usable = available & offered if name.startswith("dream") else available
            out[name] = [round(float(v.mean()), 4) if ok else None for v, ok in zip(values, usable)]
            if name.startswith("real"):
                out[f"{name}_se"] = [round(float(v.std(ddof=1) / np.sqrt(len(v))), 4) if ok else None
                                     for v, ok in zip(values, usable)]  # fmt: skip
            if values.shape[1] >= 2:  # the means of each half of the samples: how reproducible a verdict is
                half = values.shape[1] // 2
                out[f"{name}_halves"] = [[round(float(v[part].mean()), 4) if ok else None for v, ok in zip(values, usable)]
                                         for part in (slice(None, half), slice(half, None))]  # fmt: skip
        return out


def window_of(history: list[tuple[np.ndarray, ...]], step: VecStep, world: int, from_start: bool) -> dict[str, torch.Tensor]:
    """One (1, T, ...) real window for `WorldModel.observe`: the ``history`` rows (obs, action, alive, state) of copy
    ``world`` before the cell and the cell's row (its action left 0: the posterior of the last row does not read it);
    ``from_start``: the window's first row is its episode's first (a reset row)."""
    now = (step.obs[world], np.zeros(step.alive.shape[1], dtype=np.int64), step.alive[world], step.state[world])
    rows = [*history, now]
    obs, action, alive, state = (np.stack(x)[None] for x in zip(*rows))
    reset = np.zeros((1, len(rows)), dtype=bool)
    reset[0, 0] = from_start
    return {"obs": torch.as_tensor(obs, dtype=torch.float32), "action": torch.as_tensor(action, dtype=torch.long),
            "reset": torch.as_tensor(reset), "alive": torch.as_tensor(alive, dtype=torch.bool),
            "state": torch.as_tensor(state, dtype=torch.float32)}  # fmt: skip


def take_cells(model: Any, policy: Any, train: dict[str, Any], args: Args, brancher: Brancher) -> list[dict[str, Any]]:
    """Play ``episodes`` real episodes with the actor sampling; score the cells taken on the way (`Brancher.cell`)."""
    E, N = args.episodes, model.spec.n_agents
    latent, context = train["actor_input"] == "latent", int(train["context"])
    rng, generator = np.random.default_rng(args.seed), torch.Generator().manual_seed(args.seed)
    scored: list[dict[str, Any]] = []
    with VecEnv(train["env_id"], num_envs=E, seed=args.seed, **train["env_kwargs"]) as vec:
        filters = AgentFilters(model, E, args.seed) if latent else None
        h = policy.initial_state(E * N)
        history: list[list[tuple[np.ndarray, ...]]] = [[] for _ in range(E)]
        t = np.zeros(E, dtype=np.int64)

        def act(inputs: Any, s: VecStep, running: np.ndarray, resets: np.ndarray) -> np.ndarray:
            nonlocal h
            before = h
            x = torch.as_tensor(inputs, dtype=torch.float32).flatten(0, 1)
            out, h = policy.step(x, h, torch.as_tensor(resets).flatten())
            logits = mask_logits(out, torch.as_tensor(s.action_mask).flatten(0, 1))
            probs = logits.softmax(-1).view(E, N, -1).numpy()
            actions = sample_actions(logits, generator).view(E, N).numpy()
            choice = (s.action_mask.sum(-1) > 1) & s.alive & running[:, None]
            tags = None if args.info_key is None else info_tags(s.infos, vec.spec.agents, args.info_key, s.alive.shape)
            snapshots = None
            for w, i in zip(*np.nonzero(choice)):
                if len(scored) >= args.cells or rng.random() >= args.rate:
                    continue
                snapshots = vec.get_state() if snapshots is None else snapshots
                scored.append(brancher.cell({
                    "snapshot": snapshots[w], "step": s, "world": int(w), "agent": int(i), "t": int(t[w]),
                    "resets": resets, "filters": filters, "policy_state": before, "probs": probs[w, i],
                    "window": window_of(history[w], s, int(w), bool(t[w] < context)),
                    "tag": None if tags is None else str(tags[w, i]),
                }))  # fmt: skip
            return actions

        for before, actions, _, _ in first_episodes(vec, act, model if latent else None, args.seed, filters=filters):
            for w in range(E):
                history[w] = [*history[w], (before.obs[w], actions[w], before.alive[w], before.state[w])][-(context - 1) :]
            t += 1
    return scored


def verdicts(cells: list[dict[str, Any]], real: str = "real", dream: str = "dream") -> dict[str, Any]:
    """Reality's and the dream's verdicts on the cells' actions, per pattern (``"<mask>|<tag>"``) and over all.

    Only the actions scored in both (available and offered by the dream's mask) are compared, relative to the cell's
    mean over them; cells with fewer than two such actions are counted as ``not_compared``. Per group: ``cells``,
    ``compared``; ``real`` and ``dream``, the mean relative value of each action (None where never compared);
    ``best_agree``, the fraction of compared cells where both name the same best action; ``corr``, Pearson's r of
    the relative values over compared cell-actions (None if constant); ``actor_real_best`` / ``actor_dream_best``,
    how often the actor's most likely compared action is reality's / the dream's best; ``real_se``, the mean standard
    error of reality's values (the noise of ``samples`` futures); ``real_split_corr`` / ``dream_split_corr``, the same
    correlation between the two halves of each side's samples (``*_halves``; None with one sample): how much of a
    side's verdicts is reproducible rather than sampling noise, the ceiling for ``corr``.
    """
    groups: dict[str, list[dict[str, Any]]] = {"all": []}
    for c in cells:
        key = "".join("1" if a else "0" for a in c["available"]) + ("" if c.get("tag") is None else f"|{c['tag']}")
        groups.setdefault(key, []).append(c)
        groups["all"].append(c)
    return {
        key: _verdict(group, real, dream)
        for key, group in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0] != "all", kv[0]))
    }


def _verdict(cells: list[dict[str, Any]], real: str, dream: str) -> dict[str, Any]:
    A = len(cells[0]["available"]) if cells else 0
    rel_real, rel_dream, counts = np.zeros(A), np.zeros(A), np.zeros(A)
    pairs: list[tuple[float, float]] = []
    agree = actor_real = actor_dream = compared = 0
    se: list[float] = []
    split: dict[str, list[tuple[float, float]]] = {real: [], dream: []}
    for c in cells:
        both = [a for a in range(A) if c[real][a] is not None and c[dream][a] is not None]
        se.extend(c[f"{real}_se"][a] for a in both if c.get(f"{real}_se") and c[f"{real}_se"][a] is not None)
        if len(both) < 2:
            continue
        compared += 1
        r, d, p = (np.array([c[k][a] for a in both], dtype=float) for k in (real, dream, "probs"))
        r, d = r - r.mean(), d - d.mean()
        rel_real[both] += r
        rel_dream[both] += d
        counts[both] += 1
        pairs.extend(zip(r.tolist(), d.tolist()))
        for key in (real, dream):
            if f"{key}_halves" in c:
                a, b = (np.array([h[i] for i in both], dtype=float) for h in c[f"{key}_halves"])
                split[key].extend(zip((a - a.mean()).tolist(), (b - b.mean()).tolist()))
        agree += int(r.argmax() == d.argmax())
        actor_real += int(p.argmax() == r.argmax())
        actor_dream += int(p.argmax() == d.argmax())
    mean = lambda x, n: [round(float(v / k), 4) if k else None for v, k in zip(x, n)]  # noqa: E731
    frac = lambda k: round(k / compared, 4) if compared else None  # noqa: E731
    corr = pearson(pairs)
    return {
        "cells": len(cells), "compared": compared, "not_compared": len(cells) - compared,
        "real": mean(rel_real, counts), "dream": mean(rel_dream, counts), "best_agree": frac(agree), "corr": corr,
        "actor_real_best": frac(actor_real), "actor_dream_best": frac(actor_dream),
        "real_se": round(float(np.mean(se)), 4) if se else None, "real_split_corr": pearson(split[real]),
        "dream_split_corr": pearson(split[dream]),
    }  # fmt: skip


def pearson(pairs: list[tuple[float, float]]) -> float | None:
    """Pearson's r of (x, y) pairs, rounded; None with fewer than 3 pairs or a constant side."""
    x = np.array(pairs, dtype=float).reshape(-1, 2)
    if len(x) < 3 or x[:, 0].std() == 0 or x[:, 1].std() == 0:
        return None
    return round(float(np.corrcoef(x.T)[0, 1]), 3)


def measure(run: Path, ckpt: Path, args: Args) -> dict[str, Any]:
    """One checkpoint's cells and verdicts."""
    policy, train = policy_from_checkpoint(ckpt)
    steps = int(json.loads((ckpt / "config.json").read_text())["counters"]["env_steps"])  # before a live run prunes it
    probe, spec = make(train["env_id"], **train["env_kwargs"])
    probe.close()
    if not spec.discrete:
        raise ValueError(f"runs: {run} trains on continuous actions; choice verdicts need discrete ones")
    if not (ckpt / "world_model").is_dir():
        raise ValueError(f"runs: {run} is not a model-based run (no world_model in {ckpt})")
    model = load_model(ckpt / "world_model", spec, kind=train["model_kind"]).eval()
    brancher = Brancher(model, policy.eval(), critic_from_checkpoint(ckpt, train, model), train, args)
    try:
        cells = take_cells(model, policy, train, args, brancher)
    finally:
        brancher.close()
    result = {
        "run": str(run), "checkpoint": ckpt.name, "env_id": train["env_id"], "model_kind": train["model_kind"],
        "real_steps": steps, "steps": brancher.steps, "samples": args.samples, "dream_samples": brancher.dream_samples,
        "verdicts": verdicts(cells, "real_own", "dream_own"), "verdicts_team": verdicts(cells),
    }  # fmt: skip
    if args.to_end:
        result["verdicts_value"] = verdicts(cells, "real_end_own", "dream_value_own")
    return {**result, "cells": cells}


def main(args: Args) -> dict:
    """Measure every run; print (and write) the JSON line."""
    return over_checkpoints("choice_verdict", args, measure)


if __name__ == "__main__":
    main(tyro.cli(Args))
