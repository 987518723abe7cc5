"""Export a trained MAPPO actor to ONNX and play it on the real env with onnxruntime.

Reads the latest checkpoint of ``--run-dir`` (or ``--checkpoint``), rebuilds the actor (GRU, Mamba or
SP-Mamba) from its saved config, writes one ONNX step graph (``--out``), loads it with `OnnxAgent`
(CUDA provider where onnxruntime-gpu sees a GPU) and prints the return of ``--episodes`` real episodes.
A model-based run with latent actors (``--actor-input latent``) exports the whole world-model agent
(its filter of the run's world model + the actor) and plays N such agents exchanging messages.

Usage:
    python examples/03_export_onnx.py --run-dir runs/demo/mappo_spread --out runs/demo/agent.onnx
    python examples/03_export_onnx.py --checkpoint runs/mappo/checkpoints/step_000000100000 --episodes 10 --sampling
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tyro
from safetensors.torch import load_file

from agents.train import latest_checkpoint, policy_from_checkpoint
from exports import OnnxAgent, agent_types, export_agent, export_wm_agent, play_episode
from wmenv.envs import make
from wmenv.fit import load_model


@dataclass
class Args:
    """Export settings."""

    run_dir: str = "runs/demo/mappo_spread"
    """A training run folder; its latest checkpoint is exported."""
    checkpoint: str | None = None
    """A checkpoint folder to export instead of ``run_dir``'s latest."""
    out: str = "runs/demo/agent.onnx"
    """The ONNX file to write."""
    episodes: int = 5
    """Real episodes to play with the exported agent."""
    seed: int = 1000
    """Seed of the first episode (the next ones count up)."""
    sampling: bool = False
    """Also export the sampling input (actor-only graphs: Gumbel-max over the logits, or a Gaussian's normal noise)."""
    per_type: bool = False
    """Actor-only agents: one graph per agent type (heterogeneous agents: each type's own observation width and
    actions), written as ``<out stem>_<type>.onnx`` and played together."""
    neighbours: int | None = None
    """World-model agents: hear only ``env.neighbours(radius)`` (Flatland) instead of every present agent."""


def main(args: Args) -> list[float]:
    """Export, reload with onnxruntime, play; returns the per-episode returns."""
    ckpt = Path(args.checkpoint) if args.checkpoint else latest_checkpoint(args.run_dir)
    if ckpt is None:
        hint = "train one with examples/02_train_mappo.py or examples/04_model_based.py"
        raise SystemExit(f"no checkpoint in {args.run_dir}/checkpoints; {hint}")
    policy, train_cfg = policy_from_checkpoint(ckpt)
    env, spec = make(train_cfg["env_id"], **train_cfg["env_kwargs"])
    what = type(policy).__name__
    if train_cfg.get("actor_input") == "latent":  # the actor reads the world model's features: export both
        path = export_wm_agent(load_model(ckpt / "world_model", spec), policy, args.out, spec=spec)
        what = f"the world model's filter + {what}"
    else:
        log_std = None if spec.discrete else load_file(str(ckpt / "model.safetensors"))["agent.log_std"]  # Gaussian actors
        if args.per_type:
            out = Path(args.out)
            files = {name: export_agent(policy, out.with_name(f"{out.stem}_{name}.onnx"), spec, args.sampling, log_std=log_std,
                                        agents=agents) for name, agents in agent_types(spec).items()}  # fmt: skip
            team = {name: OnnxAgent(f, spec=spec) for name, f in files.items()}
            print(f"exported {what} from {ckpt}, one graph per agent type: {', '.join(str(f) for f in files.values())}")
            returns = [play_episode(team, env, spec, args.seed + i) for i in range(args.episodes)]
            print(f"episode return per agent on {spec.id} over {args.episodes} episodes: {np.mean(returns):.2f} ± "
                  f"{np.std(returns):.2f}")  # fmt: skip
            return returns
        path = export_agent(policy, args.out, spec=spec, sampling=args.sampling, log_std=log_std)
    agent = OnnxAgent(path, spec=spec)
    size, providers = path.stat().st_size / 1024, agent.session.get_providers()
    print(f"exported {what} from {ckpt} to {path} ({size:.0f} KiB); providers {providers}")
    returns = [play_episode(agent, env, spec, args.seed + i, args.neighbours) for i in range(args.episodes)]
    print(
        f"episode return per agent on {spec.id} over {args.episodes} episodes: {np.mean(returns):.2f} ± {np.std(returns):.2f}"
    )
    return returns


if __name__ == "__main__":
    main(tyro.cli(Args))
