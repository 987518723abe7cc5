"""Per-step cost of exported actors: onnxruntime vs PyTorch eager, batch-1 latency and batch-1024 throughput.

For each policy type (GRU, Mamba, SP-Mamba at the paper's size d = 64), exports the actor with
`export_agent` and times, in the same run and with the same thread count:

- ``torch``: ``policy.step`` in eval mode under ``torch.no_grad`` plus action masking and argmax (what
  the exported graph computes), the recurrent state fed back each step;
- ``ort``: ``InferenceSession.run`` of the exported graph (CPU provider, or CUDA with ``--device cuda``);
- ``agent``: `OnnxAgent.act` (the graph plus its input checks), batch 1 only.

Reports the median microseconds per step at batch 1, agent-steps per second at batch 1024, and the
ratios ort / torch. Goal on a 2-core CPU: SP-Mamba batch-1 step <= 50 us and >= 5x PyTorch eager.
Prints one JSON line.

Usage:
    python examples/benchmarks/onnx_step.py
    python examples/benchmarks/onnx_step.py --policies sp-mamba --seconds 5 --out benchmarks/onnx/onnx_step.json
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
from exports import OnnxAgent, export_agent
from wmenv.envs import make


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


def measure(kind: str, spec, args: Args, folder: Path) -> dict:
    """Times of one policy kind at every batch size, torch vs onnxruntime."""
    torch.manual_seed(0)
    policy = make_policy(kind, spec.obs_dim, spec.n_actions).eval()
    path = export_agent(policy, folder / f"{kind}.onnx", spec=spec)
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    providers = ["CUDAExecutionProvider"] if args.device == "cuda" else ["CPUExecutionProvider"]
    session = ort.InferenceSession(str(path), options, providers=providers)
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

    t_us, o_us = median_us(torch_step, args.seconds), median_us(ort_step, args.seconds)
    row = {"torch_us": round(t_us, 2), "ort_us": round(o_us, 2), "ort_speedup": round(t_us / o_us, 2)}
    row["torch_agent_steps_per_s"] = round(batch / t_us * 1e6, 1)
    row["ort_agent_steps_per_s"] = round(batch / o_us * 1e6, 1)
    if batch == 1:
        agent = OnnxAgent(path, providers=providers, spec=spec, threads=args.threads)
        agent.reset(1)
        row["onnx_agent_us"] = round(median_us(lambda: agent.act(obs, mask), args.seconds), 2)
    return row


def main(args: Args) -> dict:
    """Measure every policy kind; print and return the JSON summary."""
    torch.set_num_threads(args.threads)
    _, spec = make(args.env_id)
    with tempfile.TemporaryDirectory() as tmp:
        results = {kind: measure(kind, spec, args, Path(tmp)) for kind in args.policies}
    goal = None
    if "sp-mamba" in results and "b1" in results["sp-mamba"]:
        b1 = results["sp-mamba"]["b1"]
        goal = {"sp_mamba_b1_ort_us": b1["ort_us"], "le_50us": b1["ort_us"] <= 50.0, "ge_5x_torch": b1["ort_speedup"] >= 5.0}
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
