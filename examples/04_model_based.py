"""Model-based MAPPO (MAMBA): collect real episodes, fit the world model, train the actor inside the dream, repeat.

Prints the greedy real-env return against real env steps after every iteration (also in TensorBoard,
``eval/episode_return``, and in ``<run-dir>/result.json``); the fitted world model is saved to
``<run-dir>/world_model``.

``--schedule`` picks the defaults every other flag overrides: ``cpu`` (sized for 2 CPU cores) or the
MAMBA paper's Appendix A schedule and sizes (``mamba-flatland``, ``mamba-smac``: update after every
trajectory, paper-size models; meant for a GPU, ``--device cuda``). How much is learned per real
env step is set by ``--train-ratio`` (replayed world-model steps) and ``--dream-ratio`` (imagined
agent-steps), or by fixed ``--fit-steps`` / ``--dream-updates`` per update.

Usage:
    python examples/04_model_based.py --env-id mpe:simple_spread_v3 --iterations 10
    python examples/04_model_based.py --env-id flatland:5 --env-kwargs dense_reward True --policy sp-mamba --model flatland
    python examples/04_model_based.py --schedule mamba-flatland --iterations 200
    python examples/04_model_based.py --train-ratio 128 --dream-ratio 200 --help
"""

from __future__ import annotations

import sys

import tyro

from agents.model_based import ModelBasedConfig, run, split_schedule


def main(cfg: ModelBasedConfig) -> dict:
    """Run the loop and print the evaluation curve."""
    result = run(cfg)
    for steps, ret in result["eval_returns"]:
        print(f"real env steps {steps:>8d}: greedy return per agent {ret:.2f}")
    ratios = result["achieved"]
    print(f"achieved train ratio {ratios['train_ratio']:.1f}, dream ratio {ratios['dream_ratio']:.1f} (per real env step)")
    print(f"wall-clock {result['wall_clock_s']:.0f} s; world model and result.json in {cfg.run_dir}")
    return result


def cli(argv: list[str]) -> ModelBasedConfig:
    """``--schedule NAME`` chooses the defaults (`SCHEDULES`); every other flag is tyro's over them."""
    config, rest = split_schedule(argv)
    return tyro.cli(ModelBasedConfig, default=config, args=rest)


if __name__ == "__main__":
    main(cli(sys.argv[1:]))
