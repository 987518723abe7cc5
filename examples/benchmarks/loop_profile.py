"""Cost of one model-based iteration per real env step, phase by phase, and how close fit and dream get to a matmul.

Runs `agents.model_based.run` itself on a `ModelBasedConfig` (imported; its defaults unless
overridden) for ``warmup`` + 1 iterations in a temporary run folder, with timers wrapped around the
functions it calls, and reports the last iteration (the first ones warm the replay and allocations).
Phases, in process CPU time (and wall time):

- ``collect``: the real env steps of the update with the sampling actor (env + actor + replay writes);
- ``fit``: the world-model fit (as many Adam steps on replay windows as the schedule's train ratio asks);
- ``dream``: the horizon-long `DreamVecEnv` rollouts, with the actor and critic acting and the rollout
  storage written (the dream's reset included);
- ``ppo``: the MAPPO updates on those rollouts;
- ``replay_value`` (runs with ``--run.replay-value`` > 0 only): the critic's real targets, replay windows filtered
  through the world model and valued (`agents.replay_value`); their term in the critic's loss is in ``ppo``;
- ``real_ppo`` (runs with ``--run.real-ppo`` > 0 only): PPO on the iteration's new real episodes (`agents.real_ppo`:
  scoring them with the actor and critic, then the updates; those updates are not in ``ppo``);
- ``verdict`` (runs with ``--run.verdict.coef`` > 0 only): the dream's verdict on every action at the cells of fresh
  dream starts (`agents.verdict`: the branched imagined futures); its term in the actor's loss is in ``ppo``;
- ``eval``: the greedy evaluation on the real env;
- ``checkpoint``: writing the loop's checkpoint (agent, world model, optimizer, replay).

Every phase is reported as CPU ms per real env step of the iteration. FLOPs of one fit step
(forward + backward), one dream reset, one dream rollout and one PPO update are counted with
``torch.utils.flop_counter.FlopCounterMode`` (matmuls and attention only, elementwise work is not
counted, so the fractions are a lower bound of the work done) on the loop's own objects after the
run, multiplied by the measured iteration's counts and divided by its CPU time: achieved GFLOP/s,
and as a fraction of a square float32 matmul's GFLOP/s measured in the same process
(``matmul_size``, half before and half after the loop). The machine is shared, so compare runs by
those fractions and by ``ms_x_matmul`` (phase ms × matmul GFLOP/s: matmul-equivalent MFLOP per real
step), not by raw ms.

The iteration's train ratio (replayed world-model rows per real step) and dream ratio (imagined
agent-steps per real step) are reported; the total is also given at ``fixed_train_ratio``, scaling the
measured fit cost per replayed row.

Usage:
    python examples/benchmarks/loop_profile.py --out benchmarks/loop_profile/cpu.json
    python examples/benchmarks/loop_profile.py --run.fit.batch-size 64 --out benchmarks/loop_profile/fit_b64.json
    python examples/benchmarks/loop_profile.py --run.real-steps 100 --run.fit-steps 3 --run.dream-updates 1 \
        --run.dream-worlds 8
    python examples/benchmarks/loop_profile.py --schedule mamba-flatland --run.device cuda --warmup 2

``--schedule NAME`` starts ``run`` from a named schedule (`agents.model_based.SCHEDULES`, as
``examples/04_model_based.py``). With ``--run.device cuda`` the device is synchronized around every phase, the
phases' rates and the matmul reference are measured on the GPU, and ms and GFLOP/s are per **wall** second
(``basis: "wall"``; CPU time says little about GPU work); on the CPU they are per CPU second.
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import tyro
from report import emit, flops, machine, matmul_gflops, wall_clock

import agents.collection as collection
import agents.model_based as mb
from agents.mappo import MAPPO
from agents.model_based import ModelBasedConfig, split_schedule

PHASES = ("collect", "fit", "dream", "ppo", "eval", "checkpoint")
"""The phases of every run; runs with a replay value loss add ``"replay_value"``, runs with real PPO ``"real_ppo"``,
runs with the verdict loss ``"verdict"``."""


@dataclass
class Args:
    """Benchmark settings."""

    run: ModelBasedConfig = field(default_factory=lambda: ModelBasedConfig(progress=False, torch_threads=1))
    """The loop measured (`agents.model_based.ModelBasedConfig`); ``iterations``, ``run_dir`` and ``resume`` are set here."""
    warmup: int = 1
    """Unmeasured iterations before the measured one."""
    fixed_train_ratio: float = 64.0
    """Replayed world-model rows per real step at which the total is also reported (today's default: 64)."""
    matmul_size: int = 1024
    """Side of the square float32 matmul whose GFLOP/s is the reference."""
    matmul_seconds: float = 2.0
    """Measuring time of the matmul reference (half before, half after the measured iteration)."""
    count_flops: bool = True
    """Count FLOPs of fit, dream and PPO (extra calls after the measured iteration)."""
    out: Path | None = None
    """Also write the JSON to this file."""


class Probe:
    """Timers around the functions `agents.model_based.run` calls; keeps the objects they saw for FLOP counting."""

    def __init__(self, device: torch.device, phases: tuple[str, ...] = PHASES) -> None:
        """Phases run on ``device``: on a GPU its queued kernels are waited for before each phase's clocks are read."""
        self.phases = phases
        self.iterations: list[dict[str, Any]] = []
        self.seen: dict[str, tuple] = {}
        self.wall_clock = wall_clock(device)
        self.active: str | None = None
        """The phase being timed; a timed call inside it (real PPO's MAPPO updates) is charged to it alone."""

    @contextmanager
    def timed(self, phase: str) -> Iterator[None]:
        """Charge the ``with`` block's CPU and wall time to ``phase`` of the current iteration (to the enclosing phase
        where one is being timed)."""
        if self.active is not None:
            yield
            return
        wall = self.wall_clock()  # first: it waits for the device
        cpu = time.process_time()
        self.active = phase
        try:
            yield
        finally:
            self.active = None
        wall = self.wall_clock() - wall
        it = self.iterations[-1] if self.iterations else self.begin()
        it["cpu"][phase] += time.process_time() - cpu
        it["wall"][phase] += wall

    def begin(self) -> dict[str, Any]:
        """Start a new iteration record (at each collection)."""
        clocks = {"cpu": dict.fromkeys(self.phases, 0.0), "wall": dict.fromkeys(self.phases, 0.0)}
        self.iterations.append({**clocks, "real_steps": 0, "fit_steps": 0, "fit_rows": 0, "dream_rollouts": 0,
                                "dream_resets": 0})  # fmt: skip
        return self.iterations[-1]

    def wrap(self, phase: str, fn: Callable, key: str | None = None) -> Callable:
        """``fn`` timed as ``phase``; its arguments are kept under ``key``."""

        def wrapped(*a: Any, **kw: Any) -> Any:
            if key is not None:
                self.seen[key] = (a, kw)
            with self.timed(phase):
                return fn(*a, **kw)

        return wrapped

    @contextmanager
    def installed(self) -> Iterator[None]:
        """Patch `agents.model_based`'s collaborators (and `MAPPO`'s dream-facing methods) for the block."""
        names = ("fit", "evaluate_and_log", "_save", "replay_value_targets", "_real_ppo", "verdict_targets")
        saved = {k: getattr(mb, k) for k in names}
        saved_collect = collection.collect_for_update  # the loop's in-line collection calls it there
        mappo = {k: getattr(MAPPO, k) for k in ("start", "collect", "update")}

        def collect(*a: Any, **kw: Any) -> Any:
            self.begin()
            with self.timed("collect"):
                returns, steps, metrics = saved_collect(*a, **kw)
            self.iterations[-1]["real_steps"] = steps
            return returns, steps, metrics

        def fit(model: Any, replay: Any, cfg: Any, **kw: Any) -> Any:
            it = self.iterations[-1]
            it["fit_steps"] += cfg.steps
            it["fit_rows"] += cfg.steps * cfg.batch_size * cfg.seq_len
            self.seen["fit"] = (model, replay, cfg)
            with self.timed("fit"):
                return saved["fit"](model, replay, cfg, **kw)

        def count(name: str, fn: Callable) -> Callable:
            def counted(*a: Any, **kw: Any) -> Any:
                if self.iterations:
                    self.iterations[-1][name] += 1
                return fn(*a, **kw)

            return counted

        collection.collect_for_update, mb.fit = collect, fit
        mb.evaluate_and_log, mb._save = self.wrap("eval", saved["evaluate_and_log"]), self.wrap("checkpoint", saved["_save"])
        if "replay_value" in self.phases:
            mb.replay_value_targets = self.wrap("replay_value", saved["replay_value_targets"])
        if "real_ppo" in self.phases:
            mb._real_ppo = self.wrap("real_ppo", saved["_real_ppo"])
        if "verdict" in self.phases:
            mb.verdict_targets = self.wrap("verdict", saved["verdict_targets"])
        MAPPO.start = count("dream_resets", self.wrap("dream", mappo["start"], "start"))
        MAPPO.collect = count("dream_rollouts", self.wrap("dream", mappo["collect"], "collect"))
        MAPPO.update = self.wrap("ppo", mappo["update"], "update")
        try:
            yield
        finally:
            for k, v in saved.items():
                setattr(mb, k, v)
            collection.collect_for_update = saved_collect
            for k, v in mappo.items():
                setattr(MAPPO, k, v)

    def count_flops(self) -> dict[str, int]:
        """FLOPs of one fit step, one dream reset, one dream rollout and one PPO update, on the loop's own objects."""
        out: dict[str, int] = {}
        if "fit" in self.seen:
            model, replay, cfg = self.seen["fit"]
            device = next(model.parameters()).device
            batch = replay.sample(cfg.batch_size, cfg.seq_len, generator=0, device=device)

            def fit_step() -> None:
                model.train()
                loss, _ = model.loss(batch)
                loss.backward()
                model.zero_grad(set_to_none=True)

            out["fit_step"] = flops(fit_step)
        if "collect" in self.seen:
            (agent, dream, storage, _), _ = self.seen["collect"]
            out["dream_reset"] = flops(lambda: MAPPO.start(agent, dream))
            carry = MAPPO.start(agent, dream)  # after the counted reset: the rollout must start from the dream's state
            out["dream_rollout"] = flops(lambda: MAPPO.collect(agent, dream, storage, carry))
            targets = self.seen["update"][1].get("value_targets")  # the critic's real targets, if the run has them
            out["ppo_update"] = flops(lambda: MAPPO.update(agent, storage, value_targets=targets))
        return out


def main(args: Args) -> dict:
    """Run the loop, measure and print the JSON summary."""
    if args.warmup < 0:
        raise ValueError(f"warmup: expected a number of iterations >= 0, got {args.warmup}")
    torch.set_num_threads(args.run.torch_threads or torch.get_num_threads())
    device = torch.device(args.run.device)
    basis = "wall" if device.type == "cuda" else "cpu"  # the clock that ms and GFLOP/s are per
    ref_before = matmul_gflops(args.matmul_size, args.matmul_seconds / 2, device)
    extra = tuple(name for name, on in (("replay_value", args.run.replay_value), ("real_ppo", args.run.real_ppo),
                                        ("verdict", args.run.verdict.coef)) if on)  # fmt: skip
    probe = Probe(device, PHASES + extra)
    with tempfile.TemporaryDirectory(prefix="loop_profile_") as tmp:
        cfg = dataclasses.replace(args.run, iterations=args.warmup + 1, run_dir=tmp, resume=False, progress=False)
        with probe.installed():
            mb.run(cfg)
        counted = probe.count_flops() if args.count_flops else {}
    ref = (ref_before + matmul_gflops(args.matmul_size, args.matmul_seconds / 2, device)) / 2
    it = probe.iterations[-1]
    steps, spent = it["real_steps"], it[basis]
    if not it["fit_steps"] or not it["dream_rollouts"]:
        raise ValueError(f"the measured iteration fitted {it['fit_steps']} steps and ran {it['dream_rollouts']} dream "
                         "rollouts: raise --warmup or the schedule's ratios")  # fmt: skip
    ms = {k: 1e3 * v / steps for k, v in spent.items()}
    n_agents = probe.seen["collect"][0][0].n_agents
    train_ratio = it["fit_rows"] / steps
    fixed = sum(ms.values()) - ms["fit"] + ms["fit"] * args.fixed_train_ratio / train_ratio
    summary: dict[str, Any] = {
        "benchmark": "loop_profile",
        "schedule": cfg.schedule,
        "device": str(device),
        "basis": basis,
        "env_id": cfg.env_id,
        "model": cfg.model,
        "params": sum(p.numel() for p in probe.seen["fit"][0].parameters()),
        "real_steps": steps,
        "fit_steps": it["fit_steps"],
        "dream_rollouts": it["dream_rollouts"],
        "train_ratio": round(train_ratio, 3),
        "dream_ratio": round(it["dream_rollouts"] * cfg.dream_worlds * cfg.horizon * n_agents / steps, 3),
        "matmul_size": args.matmul_size,
        "matmul_gflops": round(ref, 2),
        "cpu_ms_per_real_step": {k: round(1e3 * v / steps, 4) for k, v in it["cpu"].items()},
        "wall_ms_per_real_step": {k: round(1e3 * v / steps, 4) for k, v in it["wall"].items()},
        "ms_x_matmul": {k: round(v * ref, 2) for k, v in ms.items()},
        "total_cpu_ms_per_real_step": round(1e3 * sum(it["cpu"].values()) / steps, 4),
        "total_wall_ms_per_real_step": round(1e3 * sum(it["wall"].values()) / steps, 4),
        "fixed_train_ratio": args.fixed_train_ratio,
        f"total_{basis}_ms_at_fixed_train_ratio": round(fixed, 4),
    }
    if counted:
        work = {
            "fit": counted["fit_step"] * it["fit_steps"],
            "dream": counted["dream_reset"] * it["dream_resets"] + counted["dream_rollout"] * it["dream_rollouts"],
            "ppo": counted["ppo_update"] * it["dream_rollouts"],
        }
        gflops = {k: v / max(spent[k], 1e-9) / 1e9 for k, v in work.items()}
        summary["flops"] = counted
        summary["gflops"] = {k: round(v, 3) for k, v in gflops.items()}
        summary["vs_matmul"] = {k: round(v / ref, 4) for k, v in gflops.items()}
    summary.update(threads=torch.get_num_threads(), torch=torch.__version__, machine=machine())
    return emit(summary, args.out)


def cli(argv: list[str]) -> Args:
    """``--schedule NAME`` chooses the loop's defaults (`SCHEDULES`); every other flag is tyro's over them."""
    config, rest = split_schedule(argv)
    run = dataclasses.replace(config, progress=False, torch_threads=1)
    return tyro.cli(Args, default=Args(run=run), args=rest)


if __name__ == "__main__":
    main(cli(sys.argv[1:]))
