"""Train MAPPO (shared GRU / Mamba / SP-Mamba actor, centralized GRU critic) on a real multi-agent env, model-free.

Writes TensorBoard scalars and checkpoints to ``--run-dir`` (``tensorboard --logdir runs``) and prints
the greedy evaluation return before and after training.

Usage:
    python examples/02_train_mappo.py --env-id mpe:simple_spread_v3 --total-steps 100000
    python examples/02_train_mappo.py --total-steps 20000 --num-envs 4 --mappo.epochs 10 --gru.hidden 128
    python examples/02_train_mappo.py --policy sp-mamba --env-id flatland:5 --env-kwargs dense_reward True
    python examples/02_train_mappo.py --policy sp-mamba --sp-mamba.k 8 --sp-mamba.encoder simnorm --sp-mamba.rep-loss
    python examples/02_train_mappo.py --policy mamba --mamba.d-state 32
    python examples/02_train_mappo.py --run-dir runs/spread --resume          # continue the latest checkpoint
    python examples/02_train_mappo.py --env-id mpe:simple_spread_v3 --env-kwargs max_cycles 50
    python examples/02_train_mappo.py --help
"""

from __future__ import annotations

import time

import tyro

from agents.train import TrainConfig, train


def main(cfg: TrainConfig) -> None:
    """Run `agents.train.train` and print a summary."""
    start = time.perf_counter()
    result = train(cfg)
    wall = time.perf_counter() - start
    print(f"env steps: {result.env_steps}  iterations: {result.iterations}  wall-clock: {wall:.1f} s")
    if result.eval_returns:
        first, last = result.eval_returns[0], result.eval_returns[-1]
        print(f"greedy eval return per agent: {first[1]:.2f} at {first[0]} steps -> {last[1]:.2f} at {last[0]} steps")
    if result.train_returns:
        print(f"training episode return per agent (last iteration): {result.train_returns[-1][1]:.2f}")
    print(f"checkpoint: {result.checkpoint}")


if __name__ == "__main__":
    main(tyro.cli(TrainConfig))
