"""Per-step cost of exported actors: onnxruntime vs PyTorch eager, batch-1 latency and batch-1024 throughput.

For each policy type (GRU, Mamba, SP-Mamba at the paper's size d = 64), exports the actor with
`export_agent` and times, in the same run and with the same thread count:

- ``torch``: ``policy.step`` in eval mode under ``torch.no_grad`` plus action masking and argmax (what
  the exported graph computes), the recurrent state fed back each step;
- ``ort``: ``InferenceSession.run`` of the exported graph (CPU provider, or CUDA with ``--device cuda``);
- ``agent``: `OnnxAgent.act` (the graph plus its input checks), batch 1 only.

Next to them, the world-model agents (`export_wm_agent`: a MAMBA model's own filter, its messages and the
actor on the filter's features, one graph; results under ``"wm:<actor kind>"``): ``torch`` is the exported
module (`WorldModelStep`) run eagerly, ``ort`` the graph, ``agent`` `OnnxAgent.act` with its message checks.
Each step every row receives N messages (all heard) and its states are fed back.

Reports the median microseconds per step at batch 1, agent-steps per second at batch 1024, and the
ratios ort / torch. Goals on a 2-core CPU: SP-Mamba batch-1 step <= 50 us and >= 5x PyTorch eager;
world-model agent (``small`` preset) batch-1 step <= 100 us. Prints one JSON line.

Usage:
    python examples/benchmarks/onnx_step.py
    python examples/benchmarks/onnx_step.py --policies sp-mamba --seconds 5 --out benchmarks/onnx/onnx_step.json
    python examples/benchmarks/onnx_step.py --policies --wm-policies gru sp-mamba --wm-latent mode
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import tyro
from report import emit, machine

from agents.policies import POLICIES, make_policy
from exports import OnnxAgent, export_agent, export_wm_agent
from exports.wm_agent import FILTER_INPUTS, WorldModelStep
from wmenv.envs import make
from wmenv.models.mamba_wm import PRESETS, MAMBAWorldModel, preset


@dataclass
class Args:
    """Benchmark settings."""

    env_id: str = "mpe:simple_spread_v3"
    """Env whose observation and action sizes the actors get."""
    policies: list[str] = field(default_factory=lambda: list(POLICIES))
    """Actor kinds (default configs: GRU hidden 64, Mamba hidden 64, SP-Mamba d 64, expand 2, d_state 16)."""
    batches: list[int] = field(default_factory=lambda: [1, 1024])
    """Batch sizes (agent rows per step)."""
    seconds: float = 3.0
    """Measuring time per (policy, batch, runtime)."""
    wm_policies: list[str] = field(default_factory=lambda: ["gru"])
    """Actor kinds of the world-model agents (empty: none)."""
    wm_preset: str = "small"
    """World-model size (`wmenv.models.mamba_wm.preset`)."""
    wm_latent: str = "sample"
    """World-model agents' posterior: "sample" (Gumbel-max on a noise input) or "mode" (argmax)."""
    threads: int = 1
    """Intra-op threads of torch and of the onnxruntime session."""
    device: str = "cpu"
    """"cpu", or "cuda" (onnxruntime CUDA provider and torch on the GPU)."""
    out: Path | None = None
    """Also write the JSON to this file."""


def median_us(fn: Callable[[], None], seconds: float) -> float:
    """Median wall time of ``fn()`` in microseconds, after 10 warm-up calls, repeated for ``seconds``."""
    for _ in range(10):
        fn()
    times: list[float] = []
    while not times or sum(times) < seconds:
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def open_session(path: Path, args: Args) -> tuple[ort.InferenceSession, list[str]]:
    """An onnxruntime session of ``path`` with ``args.threads`` intra-op threads on ``args.device``, and its providers."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    providers = ["CUDAExecutionProvider"] if args.device == "cuda" else ["CPUExecutionProvider"]
    return ort.InferenceSession(str(path), options, providers=providers), providers


def timing_row(torch_step: Callable[[], None], ort_step: Callable[[], None], batch: int, args: Args) -> dict:
    """Median µs per step of both runtimes, onnxruntime's speed-up, and agent-steps/s of each."""
    t_us, o_us = median_us(torch_step, args.seconds), median_us(ort_step, args.seconds)
    row = {"torch_us": round(t_us, 2), "ort_us": round(o_us, 2), "ort_speedup": round(t_us / o_us, 2)}
    row["torch_agent_steps_per_s"] = round(batch / t_us * 1e6, 1)
    row["ort_agent_steps_per_s"] = round(batch / o_us * 1e6, 1)
    return row


def measure(kind: str, spec, args: Args, folder: Path) -> dict:
    """Times of one policy kind at every batch size, torch vs onnxruntime."""
    torch.manual_seed(0)
    policy = make_policy(kind, spec.obs_dim, spec.n_actions).eval()
    path = export_agent(policy, folder / f"{kind}.onnx", spec=spec)
    session, providers = open_session(path, args)
    policy = policy.to(torch.device(args.device))
    result: dict = {"params": sum(p.numel() for p in policy.parameters())}
    for batch in args.batches:
        result[f"b{batch}"] = measure_batch(policy, session, path, spec, batch, providers, args)
    return result


def measure_batch(
    policy, session: ort.InferenceSession, path: Path, spec, batch: int, providers: list[str], args: Args
) -> dict:
    """torch vs onnxruntime (and `OnnxAgent` at batch 1) for one batch size; the state is fed back each step."""
    device = next(policy.parameters()).device
    names = list(policy.initial_state(1))
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(batch, spec.obs_dim)).astype(np.float32)
    mask, reset = np.ones((batch, spec.n_actions), bool), np.zeros(batch, bool)
    t_obs, t_mask, t_reset = (torch.from_numpy(a).to(device) for a in (obs, mask, reset))
    t_state = {"s": policy.initial_state(batch)}

    def torch_step() -> None:
        with torch.no_grad():
            logits, t_state["s"] = policy.step(t_obs, t_state["s"], t_reset)
            logits.masked_fill(~t_mask, float("-inf")).argmax(-1)
        if device.type == "cuda":
            torch.cuda.synchronize()

    feeds = {
        "obs": obs,
        "action_mask": mask,
        "reset": reset,
        **{n: v.cpu().numpy() for n, v in policy.initial_state(batch).items()},
    }

    def ort_step() -> None:
        out = session.run(None, feeds)
        feeds.update({n: out[2 + i] for i, n in enumerate(names)})

    row = timing_row(torch_step, ort_step, batch, args)
    if batch == 1:
        agent = OnnxAgent(path, providers=providers, spec=spec, threads=args.threads)
        agent.reset(1)
        row["onnx_agent_us"] = round(median_us(lambda: agent.act(obs, mask), args.seconds), 2)
    return row


def measure_wm(kind: str, spec, args: Args, folder: Path) -> dict:
    """Times of one world-model agent (``wm_preset`` model, ``kind`` actor) at every batch size, torch vs onnxruntime."""
    torch.manual_seed(0)
    model = MAMBAWorldModel(spec, preset(args.wm_preset)).eval()
    policy = make_policy(kind, model.rssm.feature_dim, spec.n_actions).eval()
    path = export_wm_agent(model, policy, folder / f"wm-{kind}.onnx", latent=args.wm_latent)
    session, providers = open_session(path, args)
    names = list(policy.initial_state(1))
    step = WorldModelStep(model, policy, names, args.wm_latent).eval().to(torch.device(args.device))
    result: dict = {
        "params": sum(p.numel() for p in step.parameters()),
        "preset": args.wm_preset,
        "latent": args.wm_latent,
        "message_dim": model.message_dim,
    }
    for batch in args.batches:
        result[f"b{batch}"] = measure_wm_batch(step, session, path, spec, batch, providers, args)
    return result


def measure_wm_batch(
    step: WorldModelStep, session: ort.InferenceSession, path: Path, spec, batch: int, providers: list[str], args: Args
) -> dict:
    """torch vs onnxruntime (and `OnnxAgent` at batch 1) of a world-model agent; filter and actor states fed back."""
    device = next(step.parameters()).device
    c, N, A = step.cell, spec.n_agents, spec.n_actions
    rng = np.random.default_rng(0)
    sk = step.post_net[-1].out_features
    feeds = {
        "obs": rng.normal(size=(batch, spec.obs_dim)).astype(np.float32),
        "action_mask": np.ones((batch, A), bool),
        "reset": np.zeros(batch, bool),
        "agent": np.arange(batch, dtype=np.int64) % N,
        "messages": rng.normal(size=(batch, N, sk + A)).astype(np.float32),
        "heard": np.ones((batch, N), bool),
        "deter": np.zeros((batch, c.hidden_size), np.float32),
        "stoch": np.zeros((batch, sk), np.float32),
        "prev_action": np.full(batch, -1, np.int64),
        **{n: v.numpy() for n, v in step.policy.initial_state(batch).items()},
    }
    if args.wm_latent == "sample":
        feeds["noise"] = rng.random((batch, sk // step.classes, step.classes), dtype=np.float32)
    states = ["deter", "stoch", "prev_action", *step.state_names]
    t_in = {k: torch.from_numpy(v).to(device) for k, v in feeds.items()}

    def torch_step() -> None:
        with torch.no_grad():
            out = step(*(t_in[k] for k in FILTER_INPUTS), tuple(t_in[n] for n in step.state_names), t_in.get("noise"))
        t_in.update(zip(states, out[3:]))
        if device.type == "cuda":
            torch.cuda.synchronize()

    outputs = [o.name for o in session.get_outputs()]

    def ort_step() -> None:
        out = dict(zip(outputs, session.run(None, feeds)))
        feeds.update({n: out[f"new_{n}"] for n in states})

    row = timing_row(torch_step, ort_step, batch, args)
    if batch == 1:
        agent = OnnxAgent(path, providers=providers, spec=spec, threads=args.threads)
        agent.reset(1)
        obs, mask, msgs, heard, slot = (feeds[k] for k in ("obs", "action_mask", "messages", "heard", "agent"))
        row["onnx_agent_us"] = round(median_us(lambda: agent.act(obs, mask, None, msgs, heard, slot), args.seconds), 2)
    return row


def main(args: Args) -> dict:
    """Measure every policy kind; print and return the JSON summary."""
    if args.wm_preset not in PRESETS:
        raise ValueError(f"wm_preset: expected one of {list(PRESETS)}, got {args.wm_preset!r}")
    torch.set_num_threads(args.threads)
    _, spec = make(args.env_id)
    with tempfile.TemporaryDirectory() as tmp:
        results = {kind: measure(kind, spec, args, Path(tmp)) for kind in args.policies}
        results.update({f"wm:{kind}": measure_wm(kind, spec, args, Path(tmp)) for kind in args.wm_policies})
    goal = None
    if "sp-mamba" in results and "b1" in results["sp-mamba"]:
        b1 = results["sp-mamba"]["b1"]
        goal = {"sp_mamba_b1_ort_us": b1["ort_us"], "le_50us": b1["ort_us"] <= 50.0, "ge_5x_torch": b1["ort_speedup"] >= 5.0}
    wm = {k: v["b1"]["ort_us"] for k, v in results.items() if k.startswith("wm:") and "b1" in v}
    if wm and args.wm_preset == "small":
        goal = {**(goal or {}), "wm_small_b1_ort_us": wm, "wm_le_100us": max(wm.values()) <= 100.0}
    summary = {
        "benchmark": "onnx_step",
        "env_id": args.env_id,
        "obs_dim": spec.obs_dim,
        "n_actions": spec.n_actions,
        "device": args.device,
        "threads": args.threads,
        "results": results,
        "goal": goal,
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        "machine": machine(),
    }
    return emit(summary, args.out)


if __name__ == "__main__":
    main(tyro.cli(Args))
