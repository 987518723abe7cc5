"""DRAMA on an Atari game: collect with the current actor (random at first), fit DRAMA's Mamba-2 world model on the
streamed replay, train its DreamerV3-style actor-critic in the dream, evaluate greedily on the real game through the
model's filter; checkpoints every iteration, or every ``--checkpoint-every`` env steps (``--resume`` continues).

Usage:
    python examples/05_drama.py --env-id atari:Pong --iterations 400 --run-dir runs/drama
    # the code's schedule (a GPU's): 100k iterations of one env step, each followed by one fit step and one update
    python examples/05_drama.py --iterations 100000 --real-steps 1 --fit-steps 1 --ac-updates 1 --worlds 1024 \
        --seq-len 128 --warmup-steps 1032 --model xs --eval-every 5000 --checkpoint-every 5000 --log-every 250 \
        --device cuda
"""

import tyro

from agents.drama_loop import DRAMALoopConfig, run

if __name__ == "__main__":
    result = run(tyro.cli(DRAMALoopConfig))
    print(f"{result['counters']['env_steps']} real env steps; greedy return per evaluation: {result['eval_returns']}")
