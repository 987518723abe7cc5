"""An independent model-free reference: TorchRL's multi-agent PPO (MAPPO) on our envs, evaluated like our MAPPO.

Built only from TorchRL's own components, following its multi-agent PPO tutorial
(``tutorials/sphinx-tutorials/multiagent_ppo.py``) and example (``sota-implementations/multiagent/mappo_ippo.py``):
`PettingZooWrapper` around ``wmenv.envs.make(env_id)`` (a PettingZoo ``ParallelEnv``; all agents in one
group ``"agents"``), a parameter-shared `MultiAgentMLP` actor in a `ProbabilisticActor`, a centralised shared
`MultiAgentMLP` critic (input: all agents' observations), `GAE`, `ClipPPOLoss`, TorchRL's synchronous
`Collector` (named ``SyncDataCollector`` before TorchRL 0.14) and a `ReplayBuffer` without replacement for
the minibatches. Hyperparameters are the tutorial's (`PPOConfig`): MLP depth 2 × 256 Tanh, lr 3e-4, 30 epochs,
minibatches of 400, grad-norm clip 1.0, clip ε 0.2, γ 0.9, GAE λ 0.9, entropy 1e-4, no advantage
normalization. Changed for the env and the budget, nothing else:

- discrete actions (MPE's 5 moves): a `torch.distributions.Categorical` over logits instead of the tutorial's
  `TanhNormal`;
- 2,000 env steps per batch instead of 6,000 (one env, 80 episodes of 25 steps), so that the policy is
  evaluated at the same 2k-step points as our early curve and a 50k budget gives 25 updates; with 30 epochs
  of 400-sample minibatches the gradient steps per env step stay the tutorial's (0.075);
- per-agent done/terminated keys (``("agents", "done")``, as in ``mappo_ippo.py``): PettingZoo reports them
  per agent, so no done expansion is needed; truncation at 25 steps is not termination, so GAE bootstraps.

Same accounting and evaluation as our model-free curve (``agents/train.py``, ``mappo_baseline.py``):

- real env steps are env steps, not agent-steps: one step of one env with its 3 agents counts 1 (TorchRL's
  ``frames`` of an unbatched multi-agent env are exactly that);
- greedy evaluation (the mode of the categorical, ``ExplorationType.DETERMINISTIC``) at step 0 and whenever
  the step count crosses a multiple of ``--eval-every``, on a fresh env: ``--eval-episodes`` (8) episodes,
  episode ``i`` reset with seed ``seed + 1_000_000 + i`` (`agents.train.evaluate_metrics`' seeds);
- the return is undiscounted, summed over the episode and averaged over agents ("return per agent").

Each seed's curve goes to ``<out>/parts/<env>_seed<k>.json`` when it finishes, so a restarted run skips
finished seeds; ``<out>/<env>.json`` (the format of ``mappo_baseline.py``: ``summary`` + ``runs`` with
``eval_returns`` [[step, return], ...], readable by ``model_based.py --model-free``) collects every finished
seed with the same settings, and ``<out>/<env>.png`` plots them against the ``--reference`` curves (ours). The
summary compares both at the same steps: the mean over evaluations after step 0 and the mean of the last 3
evaluations, over all reference seeds and over the same seeds. Prints the summary as one JSON line.

Usage:
    python examples/benchmarks/torchrl_mappo.py --seeds 0 --total-steps 50000 --eval-every 2000
    python examples/benchmarks/torchrl_mappo.py --seeds 0 1 2 --out benchmarks/torchrl_mappo   # finished seeds are skipped
    python examples/benchmarks/torchrl_mappo.py --seeds 0 --total-steps 400 --eval-every 200 \\
        --ppo.frames-per-batch 200 --ppo.minibatch-size 100 --out /tmp/tr   # smoke test
"""

from __future__ import annotations

import dataclasses
import json
import platform
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib
import numpy as np
import report  # noqa: F401 - this checkout's library first on sys.path
import tensordict
import torch
import torchrl
import tyro
from tensordict.nn import TensorDictModule
from torchrl.collectors import Collector
from torchrl.data import LazyTensorStorage, ReplayBuffer, SamplerWithoutReplacement
from torchrl.envs import PettingZooWrapper, RewardSum, TransformedEnv
from torchrl.envs.utils import ExplorationType, set_exploration_type
from torchrl.modules import MultiAgentMLP, ProbabilisticActor
from torchrl.objectives import ClipPPOLoss, ValueEstimators
from tqdm import tqdm

from agents.train import EVAL_SEED_OFFSET
from wmenv.envs import make

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

GROUP = "agents"


@dataclass
class PPOConfig:
    """TorchRL's multi-agent PPO tutorial settings (frames per batch adjusted, see the module docstring)."""

    frames_per_batch: int = 2_000
    """Env steps collected per iteration (the tutorial: 6,000)."""
    num_epochs: int = 30
    """Passes over each batch."""
    minibatch_size: int = 400
    """Env steps per minibatch (each with all agents)."""
    lr: float = 3e-4
    """Adam learning rate (actor and critic together)."""
    max_grad_norm: float = 1.0
    """Gradient-norm clip."""
    clip_epsilon: float = 0.2
    """PPO ratio clip."""
    gamma: float = 0.9
    """Discount."""
    lmbda: float = 0.9
    """GAE λ."""
    entropy_coeff: float = 1e-4
    """Entropy bonus coefficient."""
    depth: int = 2
    """Hidden layers of actor and critic MLPs."""
    num_cells: int = 256
    """Units per hidden layer."""


@dataclass
class Args:
    """Benchmark settings."""

    env_id: str = "mpe:simple_spread_v3"
    """A `wmenv.envs.make` id (agents must not leave the episode early: no masking)."""
    seeds: list[int] = field(default_factory=lambda: [0])
    """One training run per seed (seeds with a finished part file in ``out`` are skipped)."""
    total_steps: int = 50_000
    """Real env steps per seed (our early model-free curve's budget)."""
    eval_every: int = 2_000
    """Greedy evaluation at step 0 and every this many env steps (our early curve's spacing)."""
    eval_episodes: int = 8
    """Episodes per evaluation (seeded ``seed + 1_000_000 + i``, as ours)."""
    env_kwargs: dict[str, int | float | bool | str] = field(default_factory=dict)
    """Extra keywords for `wmenv.envs.make`."""
    ppo: PPOConfig = field(default_factory=PPOConfig)
    """TorchRL MAPPO settings."""
    reference: list[str] = field(default_factory=lambda: ["benchmarks/mappo_early/mpe_simple_spread_v3.json"])
    """Our model-free result JSONs (``mappo_baseline.py``) to compare with; missing or other-env files are skipped."""
    torch_threads: int = 1
    """torch threads (1 lets two benchmarks share a 2-core machine)."""
    progress: bool = True
    """Show a tqdm bar per seed."""
    out: str = "benchmarks/torchrl_mappo"
    """Output folder."""


def make_env(env_id: str, seed: int | None, env_kwargs: dict) -> PettingZooWrapper:
    """``make(env_id)`` wrapped for TorchRL: every agent in group ``"agents"``, integer actions; reset with ``seed``."""
    env, spec = make(env_id, **env_kwargs)
    with warnings.catch_warnings():  # torchrl warns on any PettingZoo but 1.24.3; ours (1.27) passes `check_env_specs`
        warnings.filterwarnings("ignore", message="PettingZoo in TorchRL is tested")
        wrapped = PettingZooWrapper(env, group_map={GROUP: list(spec.agents)}, categorical_actions=True, seed=seed)
    assert wrapped.parallel, "expected a PettingZoo ParallelEnv"
    return wrapped


def make_modules(env: PettingZooWrapper | TransformedEnv, cfg: PPOConfig) -> tuple[ProbabilisticActor, TensorDictModule]:
    """The shared-parameter categorical actor and the centralised shared critic (the tutorial's MAPPO)."""
    obs_dim = env.observation_spec[GROUP, "observation"].shape[-1]
    n_agents = env.observation_spec[GROUP, "observation"].shape[-2]
    n_actions = env.full_action_spec[env.action_key].space.n
    mlp = dict(n_agents=n_agents, share_params=True, depth=cfg.depth, num_cells=cfg.num_cells, activation_class=torch.nn.Tanh)
    actor_net = MultiAgentMLP(n_agent_inputs=obs_dim, n_agent_outputs=n_actions, centralised=False, **mlp)
    policy = ProbabilisticActor(
        module=TensorDictModule(actor_net, in_keys=[(GROUP, "observation")], out_keys=[(GROUP, "logits")]),
        spec=env.full_action_spec_unbatched,
        in_keys={"logits": (GROUP, "logits")},
        out_keys=[env.action_key],
        distribution_class=torch.distributions.Categorical,
        return_log_prob=True,
        log_prob_key=(GROUP, "action_log_prob"),
    )
    critic_net = MultiAgentMLP(n_agent_inputs=obs_dim, n_agent_outputs=1, centralised=True, **mlp)
    critic = TensorDictModule(critic_net, in_keys=[(GROUP, "observation")], out_keys=[(GROUP, "state_value")])
    return policy, critic


@torch.no_grad()
def evaluate(policy: ProbabilisticActor, env_id: str, episodes: int, seed: int, env_kwargs: dict) -> float:
    """Mean undiscounted return per agent of the greedy policy over ``episodes`` episodes, episode ``i`` seeded
    ``seed + i`` on a fresh env (`agents.train.evaluate_metrics`' protocol)."""
    env = make_env(env_id, None, env_kwargs)
    returns = []
    with set_exploration_type(ExplorationType.DETERMINISTIC):  # argmax of the logits
        for i in range(episodes):
            td = env.reset(seed=seed + i)
            roll = env.rollout(100_000, policy, tensordict=td, auto_reset=False, break_when_any_done=True)
            if not roll["next", "done"][-1].all():
                raise RuntimeError(f"evaluate: episode {i} did not end within 100000 steps")
            returns.append(roll["next", GROUP, "reward"].sum(0).mean().item())  # (T, N, 1) -> sum over T, mean over N
    env.close()
    return float(np.mean(returns))


def train_seed(args: Args, seed: int) -> dict:
    """Train TorchRL MAPPO for ``args.total_steps`` env steps; the run's curves and timing."""
    cfg = args.ppo
    torch.manual_seed(seed)
    np.random.seed(seed)
    base = make_env(args.env_id, seed, dict(args.env_kwargs))
    env = TransformedEnv(base, RewardSum(in_keys=[base.reward_key], out_keys=[(GROUP, "episode_reward")]))
    policy, critic = make_modules(env, cfg)
    # an MLP policy needs no InitTracker: keep the env as is (the pre-0.15 default, silenced)
    collector = Collector(env, policy, frames_per_batch=cfg.frames_per_batch, total_frames=args.total_steps,
                          auto_register_policy_transforms=False)  # fmt: skip
    buffer = ReplayBuffer(storage=LazyTensorStorage(cfg.frames_per_batch), sampler=SamplerWithoutReplacement(),
                          batch_size=cfg.minibatch_size)  # fmt: skip
    loss_module = ClipPPOLoss(policy, critic, clip_epsilon=cfg.clip_epsilon, entropy_coeff=cfg.entropy_coeff,
                              normalize_advantage=False)  # fmt: skip
    loss_module.set_keys(reward=env.reward_key, action=env.action_key, sample_log_prob=(GROUP, "action_log_prob"),
                         value=(GROUP, "state_value"), done=(GROUP, "done"), terminated=(GROUP, "terminated"))  # fmt: skip
    loss_module.make_value_estimator(ValueEstimators.GAE, gamma=cfg.gamma, lmbda=cfg.lmbda)
    optim = torch.optim.Adam(loss_module.parameters(), cfg.lr)
    eval_seed = seed + EVAL_SEED_OFFSET  # as agents/train.py

    def run_eval(step: int) -> None:
        eval_returns.append((step, evaluate(policy, args.env_id, args.eval_episodes, eval_seed, dict(args.env_kwargs))))

    eval_returns: list[tuple[int, float]] = []
    train_returns: list[tuple[int, float]] = []
    steps, eval_s, start = 0, 0.0, time.perf_counter()
    run_eval(0)
    bar = tqdm(total=args.total_steps, desc=f"seed {seed}", unit="step", dynamic_ncols=True, disable=not args.progress)
    for data in collector:  # (frames_per_batch,) env steps; per-agent entries (frames_per_batch, N, ...)
        with torch.no_grad():
            loss_module.value_estimator(data, params=loss_module.critic_network_params,
                                        target_params=loss_module.target_critic_network_params)  # fmt: skip
        buffer.extend(data.reshape(-1))
        for _ in range(cfg.num_epochs):
            for _ in range(cfg.frames_per_batch // cfg.minibatch_size):
                loss_vals = loss_module(buffer.sample())
                loss = loss_vals["loss_objective"] + loss_vals["loss_critic"] + loss_vals["loss_entropy"]
                loss.backward()
                torch.nn.utils.clip_grad_norm_(loss_module.parameters(), cfg.max_grad_norm)
                optim.step()
                optim.zero_grad()
        collector.update_policy_weights_()
        before, steps = steps, steps + data.numel()
        done = data["next", "done"].squeeze(-1)  # (frames_per_batch,)
        if done.any():
            train_returns.append((steps, data["next", GROUP, "episode_reward"][done].mean().item()))
            bar.set_postfix(ret=f"{train_returns[-1][1]:.2f}", refresh=False)
        if steps // args.eval_every > before // args.eval_every:
            t0 = time.perf_counter()
            run_eval(steps)
            eval_s += time.perf_counter() - t0
        bar.update(data.numel())
    bar.close()
    collector.shutdown()
    wall = time.perf_counter() - start
    return {"seed": seed, "wall_clock_s": wall, "eval_wall_clock_s": eval_s, "env_steps": steps,
            "eval_returns": eval_returns, "train_returns": train_returns,
            "train_env_steps_per_s": steps / max(wall - eval_s, 1e-9)}  # fmt: skip


def last3(run: dict) -> float:
    """A run's final return: the mean of its last 3 evaluations (as ``mappo_baseline.py``)."""
    return float(np.mean([v for _, v in run["eval_returns"][-3:]]))


def curve_stats(runs: list[dict], steps: list[int]) -> dict:
    """Mean over runs of the evaluations at ``steps``: the curve, its mean after step 0, and the last-3 mean."""
    values = np.array([[dict(r["eval_returns"])[s] for s in steps] for r in runs])  # (runs, K)
    mean = values.mean(0)
    trained = np.array(steps) > 0
    return {"seeds": [r["seed"] for r in runs], "curve": [round(float(v), 3) for v in mean],
            "mean_after_step0": round(float(mean[trained].mean()), 3), "last3": round(float(mean[-3:].mean()), 3)}  # fmt: skip


def compare(runs: list[dict], ref_path: str) -> dict | None:
    """TorchRL's curve vs one of our result JSONs at the evaluation steps both have (all our seeds and the same seeds)."""
    ref = json.loads(Path(ref_path).read_text())
    steps = [s for s, _ in runs[0]["eval_returns"]]
    ours = [r for r in ref["runs"] if set(steps) <= {s for s, _ in r["eval_returns"]}]
    if not ours:
        return None
    out = {"reference": ref_path, "steps": steps, "torchrl": curve_stats(runs, steps), "ours": curve_stats(ours, steps)}
    same = [r for r in ours if r["seed"] in {x["seed"] for x in runs}]
    if same:
        out["ours_same_seeds"] = curve_stats(same, steps)
    t, o = out["torchrl"], out["ours"]
    out["ours_at_least_as_good"] = bool(o["mean_after_step0"] >= t["mean_after_step0"] and o["last3"] >= t["last3"])
    return out


def plot(path: Path, env_id: str, runs: list[dict], comparison: dict | None) -> None:
    """Greedy return vs real env steps: each TorchRL seed (thin), their mean, and our mean curve."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for r in runs:
        ax.plot(*zip(*r["eval_returns"]), color="C3", alpha=0.3, lw=0.8)
    if comparison is not None:
        steps = comparison["steps"]
        t, o = comparison["torchrl"], comparison["ours"]
        ax.plot(steps, t["curve"], color="C3", marker="o", ms=3, label=f"TorchRL MAPPO (seeds {t['seeds']}; thin: each)")
        ax.plot(steps, o["curve"], color="C0", marker="o", ms=3, label=f"our MAPPO (seeds {o['seeds']})")
    ax.set_xlabel("real env steps")
    ax.set_ylabel("greedy return per agent")
    ax.set_title(f"Model-free MAPPO on {env_id}: TorchRL vs ours")
    ax.grid(alpha=0.3)
    if comparison is not None:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def settings(args: Args) -> dict:
    """What must match for two seeds' results to belong to one curve."""
    keys = ("env_id", "env_kwargs", "total_steps", "eval_every", "eval_episodes")
    return {**{k: getattr(args, k) for k in keys}, "env_kwargs": dict(args.env_kwargs), "ppo": dataclasses.asdict(args.ppo)}


def main(args: Args) -> dict:
    """Train (or skip) every seed, collect all finished seeds with these settings, write JSON + PNG, return the summary."""
    torch.set_num_threads(args.torch_threads)
    cfg = args.ppo
    if args.total_steps % cfg.frames_per_batch or cfg.frames_per_batch % cfg.minibatch_size:
        raise ValueError(f"total_steps ({args.total_steps}) must be a multiple of frames_per_batch ({cfg.frames_per_batch}),"
                         f" and frames_per_batch of minibatch_size ({cfg.minibatch_size})")  # fmt: skip
    out, tag, own = Path(args.out), args.env_id.replace(":", "_"), settings(args)
    (out / "parts").mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        part = out / "parts" / f"{tag}_seed{seed}.json"
        if part.is_file() and json.loads(part.read_text())["settings"] == own:
            print(f"seed {seed}: finished earlier ({part}), skipped")
            continue
        run = train_seed(args, seed)
        tmp = part.with_suffix(".tmp")
        tmp.write_text(json.dumps({"settings": own, "run": run}))
        tmp.replace(part)
    parts = [json.loads(p.read_text()) for p in sorted(out.glob(f"parts/{tag}_seed*.json"))]
    runs = sorted((p["run"] for p in parts if p["settings"] == own), key=lambda r: r["seed"])
    comparisons = []
    for path in args.reference:
        if Path(path).is_file() and json.loads(Path(path).read_text())["summary"]["env_id"] == args.env_id:
            if (c := compare(runs, path)) is not None:
                comparisons.append(c)
    finals = [r["eval_returns"][-1][1] for r in runs]
    summary = {
        "benchmark": "torchrl_mappo",
        **own,
        "seeds": [r["seed"] for r in runs],
        "wall_clock_s_per_seed": round(float(np.mean([r["wall_clock_s"] for r in runs])), 1),
        "train_env_steps_per_s": round(float(np.mean([r["train_env_steps_per_s"] for r in runs])), 1),
        "first_eval_return": round(float(np.mean([r["eval_returns"][0][1] for r in runs])), 3),
        "final_eval_return_mean": round(float(np.mean(finals)), 3),
        "final_eval_return_std": round(float(np.std(finals)), 3),
        "last3_eval_return_mean": round(float(np.mean([last3(r) for r in runs])), 3),
        "comparison": comparisons,
        "machine": f"{platform.machine()} {torch.get_num_threads()} torch thread(s), torch {torch.__version__}, "
        f"torchrl {torchrl.__version__}, tensordict {tensordict.__version__}",
    }
    (out / f"{tag}.json").write_text(json.dumps({"summary": summary, "runs": runs}, indent=1))
    plot(out / f"{tag}.png", args.env_id, runs, comparisons[0] if comparisons else None)
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main(tyro.cli(Args))
