"""Model-based MAPPO (MAMBA): collect real episodes, fit the world model, train the actor inside the dream, repeat.

Prints the greedy real-env return against real env steps after every iteration (also in TensorBoard,
``eval/episode_return``, and in ``<run-dir>/result.json``); the fitted world model is saved to
``<run-dir>/world_model``.

Usage:
    python examples/04_model_based.py --env-id mpe:simple_spread_v3 --iterations 10
    python examples/04_model_based.py --env-id flatland:5 --env-kwargs dense_reward True --policy sp-mamba --model flatland
    python examples/04_model_based.py --fit.steps 500 --dream-worlds 1024 --dream-updates 8 --help
"""

from __future__ import annotations

import tyro

from agents.model_based import ModelBasedConfig, run


def main(cfg: ModelBasedConfig) -> dict:
    """Run the loop and print the evaluation curve."""
    result = run(cfg)
    for steps, ret in result["eval_returns"]:
        print(f"real env steps {steps:>8d}: greedy return per agent {ret:.2f}")
    print(f"wall-clock {result['wall_clock_s']:.0f} s; world model and result.json in {cfg.run_dir}")
    return result


if __name__ == "__main__":
    main(tyro.cli(ModelBasedConfig))
