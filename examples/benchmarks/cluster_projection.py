"""A projection, stated as such, of collection and fit throughput with K Ray actors / K DDP ranks on a cluster,
from the per-worker rates and communication costs measured on this machine by ``vec_env.py`` and ``fit_ddp.py``.

Nothing here is measured on a cluster. The model (weak scaling: each worker keeps its measured share of the work):

- **Collection** (``vec_env.py --backends ray``, E copies on W actors, N agents): the sync backend's rate gives the
  env's time per copy-step, t_env = E·N / sync rate / E; a Ray vector step costs the slowest actor's share plus the
  round trip, T_W = (E/W)·t_env + c_W, so each measured Ray rate gives c_W. The driver sends and gathers one
  request per actor, so the round trip is taken as c_K = a + b·K, fitted through the runs with different W (with
  one run: c_K = c_W·K/W, all of it per actor, the pessimistic case). With K actors of E/W copies each (E/W of the
  run with the most actors), the projected agent-steps/s is K·(E/W)·N / ((E/W)·t_env + c_K).
- **Fit** (``fit_ddp.py``: a step of B windows per rank takes t_1 alone; 2 ranks all-reduce the P-parameter gradient
  in a measured a_2 ms): a ring all-reduce over K ranks moves 2(K−1)/K · 4P bytes per rank through the network and
  takes 2(K−1) latency hops, so a_K = 2(K−1)/K · 4P / bandwidth + 2(K−1)·hop, with the hop calibrated from the
  measured a_2 (on one machine, where the bytes move through memory: hop = a_2 / 2) unless given. Projected
  windows/s: K·B / (t_1 + a_K).

Usage:
    python examples/benchmarks/cluster_projection.py --vec-env benchmarks/vec_env/ray1_idle.json \\
        benchmarks/vec_env/ray2_idle.json --fit-ddp benchmarks/fit_ddp/cpu2_idle.json \\
        --out benchmarks/cluster_projection/cpu2.json
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tyro
from report import emit

from wmenv.envs import make


@dataclass
class Args:
    """Projection settings."""

    vec_env: list[Path] = field(default_factory=lambda: [Path("benchmarks/vec_env/ray_cpu2.json")])
    """``vec_env.py`` results with the sync and ray backends, ideally with different ``--num-workers`` (1 and 2)."""
    fit_ddp: Path = Path("benchmarks/fit_ddp/cpu2.json")
    """A ``fit_ddp.py`` result."""
    workers: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16, 32, 64])
    """K, Ray actors / DDP ranks, each on its own core."""
    network_gbps: float = 10.0
    """Assumed network bandwidth per rank (Gbit/s) for the all-reduce."""
    hop_ms: float | None = None
    """Assumed latency per all-reduce hop (ms); None: half the measured 2-rank all-reduce."""
    out: Path | None = None
    """Also write the JSON here."""


def collection(runs: list[dict], env_id: str, workers: list[int]) -> dict:
    """Projected Ray agent-steps/s for each K from ``vec_env.py`` runs (one per actor count; see the module docstring)."""
    n_agents = make(env_id)[1].n_agents
    points = []
    for run in runs:
        r, num_envs, w = run["results"][env_id], run["num_envs"][0], run["num_workers"]
        t_env = 1 / r["sync_agent_steps_per_s"] * n_agents  # s per copy-step
        t_ray = num_envs * n_agents / r["ray_agent_steps_per_s"]  # s per Ray vector step
        points.append((w, max(t_ray - num_envs / w * t_env, 0.0), t_env, num_envs / w))
    ws = sorted({p[0] for p in points})
    calls = [np.mean([p[1] for p in points if p[0] == w]) for w in ws]
    if len(ws) > 1:
        b, a = np.polyfit(ws, calls, 1)
        if b < 0:  # more actors did not cost more per call: a flat round trip, their mean
            a, b = float(np.mean(calls)), 0.0
        elif a < 0:  # all of it per actor
            a, b = 0.0, float(np.mean(np.divide(calls, ws)))
    else:
        a, b = 0.0, calls[0] / ws[0]
    t_env = float(np.mean([p[2] for p in points]))
    per_actor = [p[3] for p in points if p[0] == ws[-1]][0]
    out = {"t_env_ms": round(1e3 * t_env, 4), "copies_per_actor": per_actor,
           "round_trip_ms_measured": {str(w): round(1e3 * c, 3) for w, c in zip(ws, calls)},
           "round_trip_ms_model": {"fixed": round(1e3 * a, 3), "per_actor": round(1e3 * b, 3)}}  # fmt: skip
    for k in workers:
        out[str(k)] = round(k * per_actor * n_agents / (per_actor * t_env + a + b * k), 1)
    return out


def fitting(result: dict, workers: list[int], gbps: float, hop_ms: float | None) -> dict:
    """Projected DDP windows/s for each K (see the module docstring)."""
    step = result["step_ms_1"]
    hop = hop_ms if hop_ms is not None else result["allreduce_ms_per_step"] / 2
    grad_bytes = 4 * result["params"]
    out = {"step_ms_1": step, "hop_ms": hop, "gradient_mb": grad_bytes / 1e6}
    for k in workers:
        reduce_ms = 0.0 if k == 1 else 2 * (k - 1) / k * grad_bytes * 8 / (gbps * 1e9) * 1e3 + 2 * (k - 1) * hop
        out[str(k)] = {"windows_per_s": round(k * result["batch_per_rank"] / ((step + reduce_ms) / 1e3), 1),
                       "allreduce_ms": round(reduce_ms, 3)}  # fmt: skip
    return out


def main(args: Args) -> dict:
    """Read the measurements, project, print one JSON line."""
    if not args.workers or min(args.workers) < 1:
        raise ValueError(f"workers: expected worker counts >= 1, got {args.workers}")
    if args.network_gbps <= 0:
        raise ValueError(f"network_gbps: expected a positive bandwidth, got {args.network_gbps}")
    vecs, fit = [json.loads(p.read_text()) for p in args.vec_env], json.loads(args.fit_ddp.read_text())
    if any(v.get("benchmark") != "vec_env" for v in vecs) or fit.get("benchmark") != "fit_ddp":
        raise ValueError(
            f"vec_env / fit_ddp: expected results of vec_env.py and fit_ddp.py, got {args.vec_env}, {args.fit_ddp}"
        )
    if any(len(v["num_envs"]) != 1 for v in vecs):
        raise ValueError(f"vec_env: expected runs with one --num-envs each, got {[v['num_envs'] for v in vecs]}")
    env_ids = [e for e in vecs[0]["results"] if all("ray_agent_steps_per_s" in v["results"].get(e, {}) for v in vecs)]
    if not env_ids:
        raise ValueError(f"vec_env: {args.vec_env} share no env measured with the ray backend")
    collect = {env_id: collection(vecs, env_id, args.workers) for env_id in env_ids}
    summary = {
        "benchmark": "cluster_projection",
        "projection": "not measured: per-worker rates measured here, scaled by the model in the script's docstring",
        "sources": [*map(str, args.vec_env), str(args.fit_ddp)],
        "measured_on": vecs[0].get("machine"),
        "assumptions": {"network_gbps": args.network_gbps, "hop_ms": args.hop_ms},
        "collection_agent_steps_per_s": collect,
        "fit_windows_per_s": fitting(fit, args.workers, args.network_gbps, args.hop_ms),
    }
    return emit(summary, args.out)


if __name__ == "__main__":
    main(tyro.cli(Args))
